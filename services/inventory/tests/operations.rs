//! Health, reflection, readiness, metrics and graceful shutdown of the real
//! service.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{TestApp, connect};
use futures::future::join_all;
use stockmesh_proto::inventory::v1 as pb;
use stockmesh_testkit::{TcpProxy, TestDatabase, host_port};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use uuid::Uuid;

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn health(channel: Channel, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers");
    ServingStatus::try_from(response.into_inner().status).unwrap()
}

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn grpc_health_and_reflection_answer() {
    let app = TestApp::spawn().await;
    let channel = channel(app.grpc_addr).await;
    let service = "stockmesh.inventory.v1.InventoryService";
    wait_for("SERVING", || {
        let channel = channel.clone();
        async move { health(channel, service).await == ServingStatus::Serving }
    })
    .await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&service.to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );
    app.stop().await;
}

/// The database is a dependency every replica shares: while it is down the
/// process stays ready (gRPC SERVING, `/readyz` 200, so it stays in the load
/// balancer) and answers UNAVAILABLE with `retry-after`; `/readyz` reports the
/// database as failing, quickly, and `stockmesh_dependency_up` says so.
#[tokio::test]
async fn a_database_outage_is_reported_but_keeps_the_process_ready() {
    let db = TestDatabase::create().await;
    let (_, port) = host_port(&db.url).expect("database url has a port");
    let proxy = TcpProxy::start(([127, 0, 0, 1], port).into()).await;
    let proxied_url = proxy.url_for(&db.url, port);
    // As the chart and the operator set it: a call waits at most this long
    // for a connection, then answers UNAVAILABLE (the tests' default is
    // longer, for bursts of connection set-up on a loaded machine).
    let app =
        TestApp::spawn_with(db, &proxied_url, &[("DATABASE_ACQUIRE_TIMEOUT_MS", "1000")]).await;
    let http = reqwest::Client::new();
    let readyz = app.http("/readyz");
    let report = |http: reqwest::Client, url: String| async move {
        let response = http.get(url).send().await.expect("/readyz answers");
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.expect("a JSON report");
        (status, body)
    };
    let (status, body) = report(http.clone(), readyz.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"][0]["name"], "database");
    assert_eq!(body["checks"][0]["ok"], true);
    assert_eq!(body["checks"][0]["required"], false);

    proxy.cut();
    wait_for("/readyz to report the database down", || {
        let (http, readyz) = (http.clone(), readyz.clone());
        async move {
            let start = std::time::Instant::now();
            let (status, body) = report(http, readyz).await;
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "/readyz answers within a probe's timeout"
            );
            assert_eq!(status, 200, "still ready: {body}");
            body["checks"][0]["ok"] == false
        }
    })
    .await;
    // Liveness does not depend on the database: no restart loop for an outage.
    assert_eq!(
        http.get(app.http("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let channel = channel(app.grpc_addr).await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    let metrics = http
        .get(app.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"stockmesh_dependency_up{service="inventory",dependency="database"} 0"#),
        "{metrics}"
    );
    // A call during the outage is UNAVAILABLE with retry-after, not INTERNAL.
    let refused = connect(app.grpc_addr)
        .await
        .get_stock(pb::GetStockRequest {
            product_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.metadata().get("retry-after").is_some());

    proxy.restore();
    wait_for("/readyz to report the database up", || {
        let (http, readyz) = (http.clone(), readyz.clone());
        async move { report(http, readyz).await.1["checks"][0]["ok"] == true }
    })
    .await;
    assert_eq!(health(channel, "").await, ServingStatus::Serving);
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_calls_per_method_and_code() {
    let app = TestApp::spawn().await;
    let mut client = app.client().await;
    let _ = client
        .get_stock(pb::GetStockRequest {
            product_id: Uuid::now_v7().to_string(),
        })
        .await;
    let text = reqwest::get(app.http("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(r#"stockmesh_grpc_server_handled_total{service="inventory",grpc_service="stockmesh.inventory.v1.InventoryService",grpc_method="GetStock",grpc_code="NOT_FOUND"} 1"#)
            || text.contains(r#"method="GetStock",code="NOT_FOUND"} 1"#),
        "{text}"
    );
    assert!(text.contains("stockmesh_db_pool_connections_max"), "{text}");
    assert!(
        text.contains("stockmesh_grpc_server_handling_seconds_bucket"),
        "{text}"
    );
    app.stop().await;
}

/// SIGTERM while calls are in flight: they all complete, then the process
/// exits 0. The calls are held in flight deterministically by a row lock
/// the test owns, so the signal surely lands while they are running.
#[tokio::test]
async fn sigterm_drains_in_flight_calls() {
    let db = TestDatabase::create().await;
    let grpc_port = free_port();
    let http_port = free_port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_inventory"))
        .env("DATABASE_URL", &db.url)
        .env("DATABASE_MAX_CONNECTIONS", "32")
        .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
        .env("SHUTDOWN_GRACE_MS", "15000")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("inventory binary starts");
    let ready_url = format!("http://127.0.0.1:{http_port}/readyz");
    wait_for("the binary to be ready", || {
        let url = ready_url.clone();
        async move {
            reqwest::get(url)
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        }
    })
    .await;
    let client = connect(([127, 0, 0, 1], grpc_port).into()).await;
    let product = Uuid::now_v7().to_string();
    client
        .clone()
        .set_stock(pb::SetStockRequest {
            product_id: product.clone(),
            quantity: 100,
        })
        .await
        .unwrap();

    // Hold the stock row so every Reserve blocks inside its transaction.
    let pool = db.pool().await;
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM stock WHERE product_id = $1::uuid FOR UPDATE")
        .bind(&product)
        .execute(&mut *lock)
        .await
        .unwrap();

    const BURST: usize = 20;
    let calls: Vec<_> = (0..BURST)
        .map(|_| {
            let mut client = client.clone();
            let request = pb::ReserveRequest {
                order_id: Uuid::now_v7().to_string(),
                product_id: product.clone(),
                quantity: 1,
            };
            tokio::spawn(async move { client.reserve(request).await })
        })
        .collect();
    wait_for("the burst to be blocked in the database", || {
        let pool = pool.clone();
        async move {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&pool)
            .await
            .unwrap_or(0);
            waiting as usize == BURST
        }
    })
    .await;

    let pid = child.id().expect("child pid") as i32;
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { kill(pid, 15) }, 0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "still draining while calls are in flight"
    );
    lock.commit().await.unwrap();

    let results = join_all(calls).await;
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    assert_eq!(ok, BURST, "every in-flight call completed: {results:?}");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("process exits within the grace period")
        .unwrap();
    assert!(status.success(), "clean exit, got {status:?}");
    let reserved: i64 =
        sqlx::query_scalar("SELECT reserved FROM stock WHERE product_id = $1::uuid")
            .bind(&product)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(reserved, BURST as i64);
}

unsafe extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
