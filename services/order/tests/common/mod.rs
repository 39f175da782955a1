//! A real inventory, product and order (each with its own fresh database)
//! in-process on random ports, the order service's upstreams and broker
//! behind proxies the test can cut, and a private queue on the real
//! RabbitMQ that receives every event the order service publishes.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stockmesh_order::config::OrderConfig;
use stockmesh_order::startup::Application;
use stockmesh_platform::Shutdown;
use stockmesh_platform::auth::Role;
use stockmesh_platform::config::EnvReader;
use stockmesh_platform::grpc_client::Upstream;
use stockmesh_testkit::{TcpProxy, TestDatabase, TestKeys, host_port, infra};
use tokio::sync::mpsc;
use uuid::Uuid;

fn vars(pairs: &[(&str, &str)]) -> EnvReader {
    EnvReader::from_map(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<HashMap<_, _>>(),
    )
}

pub struct System {
    pub keys: TestKeys,
    pub inventory_db: TestDatabase,
    pub product_db: TestDatabase,
    pub order_db: TestDatabase,
    pub inventory_proxy: TcpProxy,
    pub broker_proxy: TcpProxy,
    pub product_http: SocketAddr,
    pub order_http: SocketAddr,
    pub inventory_upstream: Upstream,
    pub shutdowns: Vec<Shutdown>,
    pub order_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub events: mpsc::UnboundedReceiver<Value>,
    pub http: reqwest::Client,
    pub admin: String,
}

impl System {
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        Self::start_routed(extra, |url| url.to_owned()).await
    }

    /// Like [`System::start`], but the order service reaches its database
    /// through `route(url)` (a proxy a test controls).
    pub async fn start_routed(extra: &[(&str, &str)], route: impl FnOnce(&str) -> String) -> Self {
        let keys = TestKeys::generate();
        let mut shutdowns = Vec::new();

        let inventory_db = TestDatabase::create().await;
        let config = stockmesh_inventory::config::InventoryConfig::read(vars(&[
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", &inventory_db.url),
            ("DATABASE_MAX_CONNECTIONS", "20"),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "15000"),
            ("REQUEST_TIMEOUT_MS", "30000"),
        ]))
        .unwrap();
        let inventory = stockmesh_inventory::startup::Application::build(config)
            .await
            .unwrap();
        let inventory_grpc = inventory.grpc_addr();
        let s = Shutdown::new();
        tokio::spawn(inventory.run_until_stopped(s.clone()));
        shutdowns.push(s);
        let inventory_proxy = TcpProxy::start(inventory_grpc).await;
        let inventory_url = format!("http://127.0.0.1:{}", inventory_proxy.port);

        let product_db = TestDatabase::create().await;
        let config = stockmesh_product::config::ProductConfig::read(vars(&[
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", &product_db.url),
            ("JWT_PUBLIC_KEY", &keys.public_pem),
            ("INVENTORY_GRPC_URL", &format!("http://{inventory_grpc}")),
            ("DATABASE_MAX_CONNECTIONS", "20"),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "15000"),
            ("REQUEST_TIMEOUT_MS", "30000"),
        ]))
        .unwrap();
        let product = stockmesh_product::startup::Application::build(config)
            .await
            .unwrap();
        let product_http = product.http_addr();
        let product_grpc = product.grpc_addr();
        let s = Shutdown::new();
        tokio::spawn(product.run_until_stopped(s.clone()));
        shutdowns.push(s);

        let amqp = infra().amqp_url.clone();
        let (_, amqp_port) = host_port(&amqp).expect("AMQP URL has a port");
        let broker_proxy = TcpProxy::start(([127, 0, 0, 1], amqp_port).into()).await;
        let proxied_amqp = broker_proxy.url_for(&amqp, amqp_port);
        let events = listen_for_events(&amqp).await;

        let order_db = TestDatabase::create().await;
        let order_db_url = route(&order_db.url);
        let product_url = format!("http://{product_grpc}");
        let mut pairs = vec![
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", order_db_url.as_str()),
            ("DATABASE_MAX_CONNECTIONS", "20"),
            ("JWT_PUBLIC_KEY", keys.public_pem.as_str()),
            ("AMQP_URL", proxied_amqp.as_str()),
            ("PRODUCT_GRPC_URL", product_url.as_str()),
            ("INVENTORY_GRPC_URL", inventory_url.as_str()),
            ("INVENTORY_CONNECT_TIMEOUT_MS", "300"),
            // Generous budgets: 300 concurrent debug-build orders on two
            // shared cores must not turn into timeouts (the oversell test
            // asserts exact counts; its subject is atomicity, not speed).
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "15000"),
            ("REQUEST_TIMEOUT_MS", "30000"),
            ("INVENTORY_TIMEOUT_MS", "15000"),
            ("PRODUCT_TIMEOUT_MS", "15000"),
            ("OUTBOX_POLL_MS", "200"),
            ("SWEEP_INTERVAL_MS", "300"),
        ];
        pairs.extend_from_slice(extra);
        let config = OrderConfig::read(vars(&pairs)).unwrap();
        let order = Application::build(config).await.unwrap();
        let order_http = order.http_addr();
        let (_, inventory_upstream) = order.upstreams();
        let s = Shutdown::new();
        let order_task = tokio::spawn(order.run_until_stopped(s.clone()));
        shutdowns.push(s);

        let admin = keys.token(Uuid::now_v7(), Role::Admin);
        Self {
            keys,
            inventory_db,
            product_db,
            order_db,
            inventory_proxy,
            broker_proxy,
            product_http,
            order_http,
            inventory_upstream,
            shutdowns,
            order_task,
            events,
            http: reqwest::Client::new(),
            admin,
        }
    }

    pub fn user(&self) -> String {
        self.keys.token(Uuid::now_v7(), Role::User)
    }

    pub async fn call(
        &self,
        addr: SocketAddr,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        key: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self.http.request(method, format!("http://{addr}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }

    /// The order service's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.order_http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The order service's metric `name`, summed over its series (0 when
    /// absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics_text()
            .await
            .lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Places an order as `token`.
    pub async fn order(
        &self,
        token: &str,
        product: &str,
        quantity: i64,
        key: Option<&str>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        self.call(
            self.order_http,
            Method::POST,
            "/api/orders",
            Some(token),
            Some(json!({"product_id": product, "quantity": quantity})),
            key,
        )
        .await
    }

    /// Creates a product with `stock` units; returns its id.
    pub async fn product(&self, name: &str, stock: i64) -> String {
        let (status, body, _) = self
            .call(
                self.product_http,
                Method::POST,
                "/api/products",
                Some(&self.admin),
                Some(json!({"name": name, "price": {"amount_minor": 250, "currency": "EUR"}, "initial_stock": stock})),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["stock"], stock);
        body["id"].as_str().unwrap().to_owned()
    }

    pub async fn stock(&self, product: &str) -> (i64, i64) {
        let pool = self.inventory_db.pool().await;
        sqlx::query_as("SELECT available, reserved FROM stock WHERE product_id = $1::uuid")
            .bind(product)
            .fetch_one(&pool)
            .await
            .unwrap()
    }

    /// The stock once every confirmed order's reservation was committed in
    /// the background (nothing reserved any more), within 10 s.
    pub async fn settled_stock(&self, product: &str) -> (i64, i64) {
        let mut stock = self.stock(product).await;
        for _ in 0..100 {
            if stock.1 == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            stock = self.stock(product).await;
        }
        stock
    }

    /// The next event for `order_id` of type `kind`, within 10 s.
    pub async fn event_for(&mut self, order_id: &str, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} event for {order_id}"))
                .expect("event stream open");
            if event["data"]["order_id"] == order_id && event["type"] == kind {
                return event;
            }
        }
    }

    pub async fn stop(self) {
        for s in self.shutdowns.iter().rev() {
            s.trigger();
        }
        self.order_task
            .await
            .expect("joins")
            .expect("order stops cleanly");
    }
}

/// A private, auto-deleted queue bound to every order event.
async fn listen_for_events(amqp: &str) -> mpsc::UnboundedReceiver<Value> {
    let connection = lapin::Connection::connect(amqp, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    stockmesh_platform::broker::declare_exchanges(&channel)
        .await
        .unwrap();
    let name = format!("order-test-{}", Uuid::new_v4().simple());
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            name.as_str().into(),
            "stockmesh.events".into(),
            "order.*".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            name.as_str().into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _keep = connection;
        while let Some(Ok(delivery)) = consumer.next().await {
            if let Ok(value) = serde_json::from_slice::<Value>(&delivery.data) {
                let _ = tx.send(value);
            }
            let _ = delivery.ack(BasicAckOptions::default()).await;
        }
    });
    rx
}
