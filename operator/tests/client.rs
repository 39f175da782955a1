//! The operator's API client against a real (local, plain HTTP) server: every
//! request carries the operator's user agent, and the start-up version
//! check reads and judges the server's version.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::get;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use stockmesh_operator::compat::{self, Support};

type Seen = Arc<Mutex<Vec<Vec<String>>>>;

fn agents(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("user-agent")
        .iter()
        .map(|v| v.to_str().unwrap_or("<binary>").to_owned())
        .collect()
}

/// A server answering `/version` with `minor` and listing no Secrets;
/// records the user agents of every request.
async fn server(minor: &'static str) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let app = Router::new()
        .route(
            "/version",
            get(
                move |State(seen): State<Seen>, headers: HeaderMap| async move {
                    seen.lock().expect("lock").push(agents(&headers));
                    axum::Json(json!({
                        "major": "1", "minor": minor, "gitVersion": format!("v1.{minor}.3"),
                        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
                        "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64",
                    }))
                },
            ),
        )
        .route(
            "/api/v1/namespaces/default/secrets",
            get(|State(seen): State<Seen>, headers: HeaderMap| async move {
                seen.lock().expect("lock").push(agents(&headers));
                axum::Json::<Value>(json!({
                    "apiVersion": "v1", "kind": "SecretList",
                    "metadata": {"resourceVersion": "1"}, "items": [],
                }))
            }),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (format!("http://{addr}"), seen)
}

fn client(url: &str) -> kube::Client {
    let config = kube::Config::new(url.parse().expect("uri"));
    compat::client(config).expect("client")
}

#[tokio::test]
async fn every_request_carries_the_operator_user_agent() {
    let (url, seen) = server("33").await;
    let client = client(&url);
    assert_eq!(
        compat::check_server_version(&client).await,
        Support::Supported
    );
    let secrets: Api<Secret> = Api::namespaced(client, "default");
    assert!(
        secrets
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let want = format!("stockmesh-operator/{}", env!("CARGO_PKG_VERSION"));
    for request in seen {
        assert_eq!(request, vec![want.clone()], "exactly one user agent");
    }
}

#[tokio::test]
async fn a_server_older_than_the_minimum_is_reported_as_unsupported() {
    let (url, _) = server("26").await;
    assert_eq!(
        compat::check_server_version(&client(&url)).await,
        Support::TooOld
    );
    let (url, _) = server("29").await;
    assert_eq!(
        compat::check_server_version(&client(&url)).await,
        Support::Supported
    );
    // No server at all: start-up goes on, the version is unknown.
    let gone = client("http://127.0.0.1:9");
    assert_eq!(compat::check_server_version(&gone).await, Support::Unknown);
}
