//! Spawns the real notification application on a random port against a
//! fresh database and the shared test broker, both reached through proxies
//! a test can cut.
//!
//! Isolation on the shared broker: every app consumes its own queue
//! (`notifications-test-<uuid>`, dead letters in `<queue>.dead`) bound only
//! to its own routing keys (`<prefix>.order.*`), and the test publishes with
//! that prefix, so parallel tests never see each other's messages.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use stockmesh_notification::config::NotificationConfig;
use stockmesh_notification::startup::Application;
use stockmesh_platform::Shutdown;
use stockmesh_platform::auth::Role;
use stockmesh_platform::config::EnvReader;
use stockmesh_platform::events::{EXCHANGE, OrderEvent, OrderEventData, Total};
use stockmesh_testkit::{TcpProxy, TestDatabase, TestKeys, host_port, infra};
use uuid::Uuid;

/// Deliveries before a failing message is dead-lettered, in tests.
pub const DELIVERY_LIMIT: i64 = 3;

pub struct TestApp {
    pub db: TestDatabase,
    pub addr: SocketAddr,
    pub keys: TestKeys,
    pub queue: String,
    /// Routing-key prefix this app is bound to.
    pub prefix: String,
    /// Between the app and PostgreSQL.
    pub db_proxy: TcpProxy,
    /// Between the app and RabbitMQ.
    pub amqp_proxy: TcpProxy,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
    /// The test's own broker connection (never through the proxy).
    pub amqp: Connection,
    pub channel: Channel,
}

fn socket_addr(url: &str) -> (SocketAddr, u16) {
    let (host, port) = host_port(url).expect("URL with host and port");
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .expect("resolvable host")
        .next()
        .expect("an address");
    (addr, port)
}

/// A unique name for one test's queue.
pub fn unique_queue() -> String {
    format!("notifications-test-{}", Uuid::new_v4().simple())
}

/// Opens a direct broker connection with a confirming channel.
pub async fn broker_channel() -> (Connection, Channel) {
    broker_channel_on(&infra().amqp_url).await
}

/// [`broker_channel`] on the broker at `amqp_url`.
pub async fn broker_channel_on(amqp_url: &str) -> (Connection, Channel) {
    let amqp = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("test broker reachable");
    let channel = amqp.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    (amqp, channel)
}

/// Publishes `payload` persistently to the events exchange and waits for
/// the broker's confirm.
pub async fn publish_raw(channel: &Channel, routing_key: &str, payload: &[u8]) {
    let confirm = channel
        .basic_publish(
            EXCHANGE.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
        .expect("publish");
    confirm.await.expect("publisher confirm");
}

/// An order event for `user_id`.
pub fn order_event(kind: &str, user_id: Uuid) -> OrderEvent {
    OrderEvent::new(
        kind,
        OrderEventData {
            order_id: Uuid::now_v7(),
            user_id,
            product_id: Uuid::now_v7(),
            product_name: "Mug".into(),
            quantity: 2,
            total: Total {
                amount_minor: 2500,
                currency: "EUR".into(),
            },
        },
    )
}

/// Polls `condition` every 50 ms for up to `secs` seconds.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs} s waiting for {what}");
}

/// Deletes a test queue and its dead-letter queue.
pub async fn delete_queues(channel: &Channel, queue: &str) {
    for name in [queue.to_owned(), format!("{queue}.dead")] {
        let _ = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
}

/// Every message in `<queue>.dead`, taken out of it.
pub async fn drain_dead_letters(channel: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let dead = format!("{queue}.dead");
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get on the dead-letter queue")
    {
        out.push(message.delivery.data);
    }
    out
}

/// `(ready messages, consumers)` of a queue.
pub async fn queue_state(channel: &Channel, queue: &str) -> (u32, u32) {
    let state = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue exists");
    (state.message_count(), state.consumer_count())
}

/// Sums the samples of a Prometheus metric whose labels include all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split(['{', ' '])
                .next()
                .is_some_and(|metric| metric == name)
        })
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Another replica of a [`TestApp`], sharing its database and queue.
pub struct Replica {
    pub addr: SocketAddr,
    pub shutdown: Shutdown,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("joins").expect("stops cleanly");
    }
}

/// One server-sent event as a browser's EventSource sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

/// A client of `/api/notifications/stream`, reading events as they come.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// Opens the stream at `url` with `token` (and `Last-Event-ID` when given);
    /// the status and error body when it is refused.
    pub async fn open(
        url: &str,
        token: &str,
        last_event_id: Option<&str>,
    ) -> Result<Self, (StatusCode, String)> {
        let mut request = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("stream request sent");
        if response.status() != StatusCode::OK {
            let status = response.status();
            return Err((status, response.text().await.unwrap_or_default()));
        }
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    /// The next event (keep-alive comments skipped), `None` when the stream
    /// ended; panics after `secs` seconds without one.
    pub async fn next(&mut self, secs: u64) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        event.event = value.trim().to_owned();
                        any = true;
                    } else if let Some(value) = line.strip_prefix("id:") {
                        event.id = Some(value.trim().to_owned());
                    } else if let Some(value) = line.strip_prefix("data:") {
                        event.data.push_str(value.trim());
                        any = true;
                    }
                }
                if any {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no event within {secs} s"));
            match chunk {
                Ok(Some(bytes)) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// The next event, which must be of type `kind`.
    pub async fn expect(&mut self, kind: &str, secs: u64) -> SseEvent {
        let event = self
            .next(secs)
            .await
            .unwrap_or_else(|| panic!("stream ended while waiting for {kind}"));
        assert_eq!(event.event, kind, "unexpected event {event:?}");
        event
    }
}

pub fn config(vars: HashMap<String, String>) -> NotificationConfig {
    NotificationConfig::read(EnvReader::from_map(vars)).expect("valid test configuration")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    pub async fn spawn_with(extra: &[(&str, &str)]) -> Self {
        Self::spawn_on(&infra().amqp_url, extra).await
    }

    /// An app (and the test's own connection) on the broker at `broker_url`
    /// instead of the shared one: a private node a test may restart.
    pub async fn spawn_on(broker_url: &str, extra: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create().await;
        let keys = TestKeys::generate();
        let (pg_addr, pg_port) = socket_addr(&db.url);
        let (amqp_addr, amqp_port) = socket_addr(broker_url);
        let db_proxy = TcpProxy::start(pg_addr).await;
        let amqp_proxy = TcpProxy::start(amqp_addr).await;
        let queue = unique_queue();
        let prefix = format!("test-{}", Uuid::new_v4().simple());
        let bindings = format!("{prefix}.order.*");
        let db_url = db_proxy.url_for(&db.url, pg_port);
        let amqp_url = amqp_proxy.url_for(broker_url, amqp_port);
        let delivery_limit = DELIVERY_LIMIT.to_string();
        let mut vars: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", db_url.as_str()),
            ("DATABASE_ACQUIRE_TIMEOUT_MS", "500"),
            ("AMQP_URL", amqp_url.as_str()),
            ("JWT_PUBLIC_KEY", keys.public_pem.as_str()),
            ("NOTIFICATION_QUEUE", queue.as_str()),
            ("NOTIFICATION_BINDINGS", bindings.as_str()),
            ("NOTIFICATION_DELIVERY_LIMIT", delivery_limit.as_str()),
            ("NOTIFICATION_RETRY_DELAY_MS", "50"),
            ("NOTIFICATION_RECONNECT_MAX_MS", "400"),
            ("SHUTDOWN_GRACE_MS", "5000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        let app = Application::build(config(vars))
            .await
            .expect("application builds");
        let addr = app.http_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let (amqp, channel) = broker_channel_on(broker_url).await;
        let app = Self {
            db,
            addr,
            keys,
            queue,
            prefix,
            db_proxy,
            amqp_proxy,
            shutdown,
            task,
            http: reqwest::Client::new(),
            amqp,
            channel,
        };
        // Consuming means the queue is declared and bound: safe to publish.
        wait_for("the app to be ready", 20, || async {
            app.ready_status().await == StatusCode::OK
        })
        .await;
        // Live streams get every notification once the replica listens.
        wait_for("the app to listen for notifications", 20, || async {
            metric(
                &app.metrics().await,
                "stockmesh_notification_live_listener_up",
                &[],
            ) == 1.0
        })
        .await;
        app
    }

    /// A second replica of this app: the same database (directly, not
    /// through the proxy), queue and bindings, on its own port.
    pub async fn spawn_replica(&self) -> Replica {
        let delivery_limit = DELIVERY_LIMIT.to_string();
        let bindings = format!("{}.order.*", self.prefix);
        let vars: HashMap<String, String> = [
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("DATABASE_URL", self.db.url.as_str()),
            ("AMQP_URL", infra().amqp_url.as_str()),
            ("JWT_PUBLIC_KEY", self.keys.public_pem.as_str()),
            ("NOTIFICATION_QUEUE", self.queue.as_str()),
            ("NOTIFICATION_BINDINGS", bindings.as_str()),
            ("NOTIFICATION_DELIVERY_LIMIT", delivery_limit.as_str()),
            ("SHUTDOWN_GRACE_MS", "5000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let app = Application::build(config(vars))
            .await
            .expect("replica builds");
        let addr = app.http_addr();
        let shutdown = Shutdown::new();
        let task = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let http = reqwest::Client::new();
        wait_for("the replica to be ready", 20, || async {
            http.get(format!("http://{addr}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        wait_for("the replica to listen for notifications", 20, || async {
            let text = match http.get(format!("http://{addr}/metrics")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            metric(&text, "stockmesh_notification_live_listener_up", &[]) == 1.0
        })
        .await;
        Replica {
            addr,
            shutdown,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, user: Uuid) -> String {
        self.keys.token(user, Role::User)
    }

    pub async fn ready_status(&self) -> StatusCode {
        match self.http.get(self.url("/readyz")).send().await {
            Ok(response) => response.status(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub async fn readiness(&self) -> (StatusCode, Value) {
        self.call(Method::GET, "/readyz", None).await
    }

    /// `(status, json body)` of a request, with a bearer token when given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The first page of `user`'s notifications.
    pub async fn list(&self, user: Uuid) -> Value {
        let (status, body) = self
            .call(
                Method::GET,
                "/api/notifications?limit=100",
                Some(&self.token(user)),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Publishes an event with this app's routing prefix.
    pub async fn publish(&self, event: &OrderEvent) {
        let payload = serde_json::to_vec(event).expect("serialisable");
        self.publish_raw(&event.kind, &payload).await;
    }

    /// Publishes any payload with routing key `<prefix>.<kind>`.
    pub async fn publish_raw(&self, kind: &str, payload: &[u8]) {
        publish_raw(&self.channel, &format!("{}.{kind}", self.prefix), payload).await;
    }

    /// Rows stored for an event id (read directly, not through the proxy).
    pub async fn rows_for_event(&self, event_id: Uuid) -> i64 {
        let pool = self.db.pool().await;
        let count = sqlx::query_scalar("SELECT count(*) FROM notifications WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        count
    }

    /// Waits until the event's notification is stored.
    pub async fn wait_stored(&self, event_id: Uuid) {
        wait_for("the notification to be stored", 20, || async {
            self.rows_for_event(event_id).await > 0
        })
        .await;
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn dead_letters(&self) -> Vec<Vec<u8>> {
        drain_dead_letters(&self.channel, &self.queue).await
    }

    /// Takes dead letters until there are at least `n` (or `secs` pass).
    pub async fn wait_dead_letters(&self, n: usize, secs: u64) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let mut dead = Vec::new();
        loop {
            dead.extend(self.dead_letters().await);
            if dead.len() >= n {
                return dead;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {secs} s waiting for {n} dead letters, got {}",
                dead.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the app (it must stop cleanly) and removes its queues.
    pub async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("joins").expect("stops cleanly");
        delete_queues(&self.channel, &self.queue).await;
        let _ = self.amqp.close(200, "test over".into()).await;
    }
}
