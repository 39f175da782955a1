//! A stateful fake Kubernetes API server on `tower-test` (in the spirit of
//! kube-rs/controller-rs `fixtures.rs`): it answers list/get/create/apply/
//! delete from an in-memory store, records every call with its body, and
//! checks every call against the operator's RBAC rules.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use stockmesh_operator::controller::Context;
use stockmesh_operator::rbac;
use stockmesh_operator::{InventorySystem, Kind};

pub const NS: &str = "default";
/// The five services (each with its own database).
pub const SVCS: [&str; 5] = ["user", "product", "inventory", "order", "notification"];
/// Every Deployment of a default spec: the five services and the web console.
pub const DEPLOYABLES: [&str; 6] = [
    "user",
    "product",
    "inventory",
    "order",
    "notification",
    "web",
];
pub const UID: &str = "5f0c2b1e-0000-4000-8000-000000000001";

#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

impl Call {
    /// `METHOD path` — what the tests compare sequences on.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// The parsed target of a request.
struct Target {
    group: String,
    resource: String,
    collection: String,
    name: Option<String>,
    status: bool,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => ((*group).to_owned(), rest),
        _ => return None,
    };
    match rest {
        ["namespaces", _ns, resource, tail @ ..] => {
            let collection = path
                .split(&format!("/{resource}"))
                .next()
                .map(|p| format!("{p}/{resource}"))?;
            Some(Target {
                group,
                resource: (*resource).to_owned(),
                collection,
                name: tail.first().map(|s| (*s).to_owned()),
                status: tail.get(1) == Some(&"status"),
            })
        }
        _ => None,
    }
}

#[derive(Default)]
pub struct State {
    /// collection path -> name -> object
    pub objects: BTreeMap<String, BTreeMap<String, Value>>,
    pub calls: Vec<Call>,
    pub rbac_violations: Vec<String>,
    /// `METHOD path` prefixes that answer 403 Forbidden.
    pub forbidden: Vec<String>,
    /// (kind, JSON pointer): fields this server drops from applied objects
    /// of that kind, as an API server does with a field it does not know or
    /// has disabled (Kubernetes 1.26 and a StatefulSet's
    /// `/spec/persistentVolumeClaimRetentionPolicy`).
    pub drop_on_apply: Vec<(String, String)>,
    /// Serve watches (`?watch=true`) as an API server does: the changes
    /// since the given resourceVersion, as watch events. Off: a watch gets
    /// the list (which the watcher cannot read, so it backs off).
    pub serve_watches: bool,
    /// (resourceVersion, collection, event type, object) of every change.
    pub events: Vec<(u64, String, &'static str, Value)>,
    counter: u64,
}

impl State {
    pub fn insert(&mut self, collection: &str, obj: Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        self.objects
            .entry(collection.to_owned())
            .or_default()
            .insert(name, obj);
    }

    pub fn get(&self, collection: &str, name: &str) -> Option<&Value> {
        self.objects.get(collection)?.get(name)
    }

    pub fn get_mut(&mut self, collection: &str, name: &str) -> Option<&mut Value> {
        self.objects.get_mut(collection)?.get_mut(name)
    }

    /// Records a change the test made to a stored object (a new
    /// resourceVersion and a MODIFIED event), as the API server would.
    pub fn touch(&mut self, collection: &str, name: &str) {
        self.counter += 1;
        let rv = self.counter;
        if let Some(obj) = self.get_mut(collection, name) {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            let obj = obj.clone();
            self.events
                .push((rv, collection.to_owned(), "MODIFIED", obj));
        }
    }

    fn record(&mut self, rv: &str, collection: &str, type_: &'static str, obj: &Value) {
        if let Ok(rv) = rv.parse() {
            self.events
                .push((rv, collection.to_owned(), type_, obj.clone()));
        }
    }

    /// The watch events of `collection` after resourceVersion `since`, as
    /// the lines of a watch response.
    fn watch_lines(&self, collection: &str, since: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (rv, c, type_, obj) in &self.events {
            if *rv > since && c == collection {
                let line = json!({"type": type_, "object": obj});
                out.extend(serde_json::to_vec(&line).unwrap_or_default());
                out.push(b'\n');
            }
        }
        out
    }

    /// A watch request, when this fake serves watches: its collection and
    /// the resourceVersion it starts after.
    fn watch_target(&mut self, method: &Method, path: &str, query: &str) -> Option<(String, u64)> {
        if !self.serve_watches || method != Method::GET || !query.contains("watch=true") {
            return None;
        }
        let t = parse_path(path)?;
        if t.name.is_some() {
            return None;
        }
        self.calls.push(Call {
            method: method.to_string(),
            path: path.to_owned(),
            query: query.to_owned(),
            body: None,
        });
        self.check_rbac(&t, "watch");
        let since = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("resourceVersion="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        Some((t.collection, since))
    }

    pub fn names(&self, collection: &str) -> Vec<String> {
        self.objects
            .get(collection)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn check_rbac(&mut self, t: &Target, verb: &str) {
        let resource = if t.status {
            format!("{}/status", t.resource)
        } else {
            t.resource.clone()
        };
        if !rbac::allows(&t.group, &resource, verb) {
            self.rbac_violations
                .push(format!("{verb} {}/{resource}", t.group));
        }
    }

    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> (StatusCode, Value) {
        let body_json: Option<Value> = serde_json::from_slice(body).ok();
        self.calls.push(Call {
            method: method.to_string(),
            path: path.to_owned(),
            query: query.to_owned(),
            body: body_json.clone(),
        });
        let line = format!("{method} {path}");
        if self.forbidden.iter().any(|f| line.starts_with(f.as_str())) {
            return status(StatusCode::FORBIDDEN, "Forbidden", "forbidden by the test");
        }
        let Some(t) = parse_path(path) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "unknown path");
        };
        self.counter += 1;
        let rv = self.counter.to_string();
        match (method.clone(), &t.name) {
            (Method::GET, None) => {
                self.check_rbac(
                    &t,
                    if query.contains("watch=true") {
                        "watch"
                    } else {
                        "list"
                    },
                );
                // Like the API server, list items carry no apiVersion/kind.
                let items: Vec<Value> = self
                    .objects
                    .get(&t.collection)
                    .map(|m| {
                        m.values()
                            .cloned()
                            .map(|mut o| {
                                if let Some(o) = o.as_object_mut() {
                                    o.remove("apiVersion");
                                    o.remove("kind");
                                }
                                o
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    StatusCode::OK,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            (Method::GET, Some(name)) => {
                self.check_rbac(&t, "get");
                match self.get(&t.collection, name) {
                    Some(o) => (StatusCode::OK, o.clone()),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    ),
                }
            }
            (Method::POST, None) => {
                self.check_rbac(&t, "create");
                let mut obj = body_json.unwrap_or(Value::Null);
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if self.get(&t.collection, &name).is_some() {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{name} already exists"),
                    );
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                self.insert(&t.collection, obj.clone());
                self.record(&rv, &t.collection, "ADDED", &obj);
                (StatusCode::CREATED, obj)
            }
            (Method::PATCH, Some(name)) if t.status => {
                self.check_rbac(&t, "patch");
                let Some(current) = self.get_mut(&t.collection, name) else {
                    return status(StatusCode::NOT_FOUND, "NotFound", "no such object");
                };
                if let Some(st) = body_json.as_ref().and_then(|b| b.get("status")) {
                    current["status"] = st.clone();
                }
                current["metadata"]["resourceVersion"] = json!(rv);
                let current = current.clone();
                self.record(&rv, &t.collection, "MODIFIED", &current);
                (StatusCode::OK, current)
            }
            (Method::PATCH, Some(name)) => {
                self.check_rbac(&t, "patch");
                let mut obj = body_json.unwrap_or(Value::Null);
                let existing = self.get(&t.collection, name).cloned();
                if existing.is_none() {
                    // Server-side apply creating an object is authorised as create too.
                    self.check_rbac(&t, "create");
                }
                if let Some(st) = existing.as_ref().and_then(|e| e.get("status")) {
                    obj["status"] = st.clone();
                }
                serve(&mut obj, existing.as_ref());
                for (kind, pointer) in &self.drop_on_apply {
                    if obj["kind"] == kind.as_str() {
                        remove_pointer(&mut obj, pointer);
                    }
                }
                obj["metadata"]["resourceVersion"] = json!(rv);
                self.insert(&t.collection, obj.clone());
                let type_ = if existing.is_some() {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                self.record(&rv, &t.collection, type_, &obj);
                (StatusCode::OK, obj)
            }
            (Method::DELETE, Some(name)) => {
                self.check_rbac(&t, "delete");
                let removed = self
                    .objects
                    .get_mut(&t.collection)
                    .and_then(|m| m.remove(name));
                match removed {
                    Some(obj) => {
                        self.record(&rv, &t.collection, "DELETED", &obj);
                        status(StatusCode::OK, "", "deleted")
                    }
                    None => status(StatusCode::NOT_FOUND, "NotFound", "no such object"),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "unsupported",
            ),
        }
    }
}

/// What the API server does to an applied object before storing it, as far
/// as drift detection must cope with: server metadata, defaults, canonical
/// resource quantities, empty strings dropped (`omitempty`).
fn serve(obj: &mut Value, existing: Option<&Value>) {
    let meta = &mut obj["metadata"];
    let kept = |k: &str| existing.and_then(|e| e["metadata"].get(k)).cloned();
    meta["uid"] = kept("uid").unwrap_or_else(|| json!(format!("uid-{}", meta["name"])));
    meta["creationTimestamp"] = kept("creationTimestamp").unwrap_or(json!("2025-01-01T00:00:00Z"));
    meta["generation"] = json!(kept("generation").and_then(|g| g.as_i64()).unwrap_or(0) + 1);
    meta["managedFields"] = json!([{"manager": "stockmesh-operator", "operation": "Apply"}]);
    if obj["kind"] == "Deployment" {
        obj["spec"]["progressDeadlineSeconds"] = json!(600);
        obj["spec"]["template"]["metadata"]["creationTimestamp"] = Value::Null;
    }
    canonicalise(obj, "");
}

/// Removes the field a JSON pointer names, if it is there.
pub fn remove_pointer(obj: &mut Value, pointer: &str) {
    let Some((parent, field)) = pointer.rsplit_once('/') else {
        return;
    };
    if let Some(Value::Object(m)) = obj.pointer_mut(parent) {
        m.remove(field);
    }
}

fn canonicalise(v: &mut Value, key: &str) {
    match v {
        Value::Object(m) => {
            if key == "env" {
                // `value: ""` is dropped (omitempty).
                if m.get("value") == Some(&json!("")) {
                    m.remove("value");
                }
            }
            for (k, child) in m.iter_mut() {
                if matches!(key, "requests" | "limits")
                    && let Value::String(q) = child
                {
                    // A few of the server's canonical forms.
                    let canonical = match q.as_str() {
                        "0.5" => "500m",
                        "0.25" => "250m",
                        "1000m" => "1",
                        "1024Mi" => "1Gi",
                        "2048Mi" => "2Gi",
                        other => other,
                    };
                    *q = canonical.to_owned();
                } else {
                    canonicalise(child, k);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| canonicalise(c, key)),
        _ => {}
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    let ok = code.is_success();
    (
        code,
        json!({
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": if ok { "Success" } else { "Failure" },
            "reason": reason,
            "message": message,
            "code": code.as_u16(),
        }),
    )
}

/// A fake API server and a kube `Client` talking to it.
pub struct Fake {
    pub state: Arc<Mutex<State>>,
}

impl Fake {
    pub fn new() -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// A client whose requests this fake answers (until the client is dropped).
    pub fn client(&self) -> (Client, tokio::task::JoinHandle<()>) {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let state = self.state.clone();
        let server = tokio::spawn(async move {
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let watch = state.lock().expect("state lock").watch_target(
                    &parts.method,
                    parts.uri.path(),
                    parts.uri.query().unwrap_or_default(),
                );
                if let Some((collection, since)) = watch {
                    // The changes since `since`, once there are any or after
                    // 100 ms (an empty watch: the watcher watches again).
                    let state = state.clone();
                    tokio::spawn(async move {
                        let mut lines = Vec::new();
                        for _ in 0..10 {
                            lines = state
                                .lock()
                                .expect("state lock")
                                .watch_lines(&collection, since);
                            if !lines.is_empty() {
                                break;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        }
                        let response = Response::builder()
                            .status(StatusCode::OK)
                            .header("content-type", "application/json")
                            .body(Body::from(lines))
                            .expect("response");
                        send.send_response(response);
                    });
                    continue;
                }
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let (code, value) = {
                    let mut st = state.lock().expect("state lock");
                    st.handle(
                        &parts.method,
                        parts.uri.path(),
                        parts.uri.query().unwrap_or_default(),
                        &bytes,
                    )
                };
                let response = Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap_or_default()))
                    .expect("response");
                send.send_response(response);
            }
        });
        (Client::new(mock, NS), server)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state lock")
    }

    /// Calls recorded so far, and clears them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }
}

/// Fills the reconciler's watch caches with what the fake holds (every
/// owned kind, every namespace), as the controller's watches would once
/// they caught up: the reconciler then reads its children without a request.
pub fn prime(ctx: &Context, fake: &Fake) {
    let st = fake.lock();
    let mut objects = Vec::new();
    for (collection, items) in &st.objects {
        let resource = collection.rsplit('/').next().unwrap_or_default();
        let Some(kind) = Kind::ALL
            .into_iter()
            .find(|k| k.api_resource().plural == resource)
        else {
            continue;
        };
        for item in items.values() {
            let labels = &item["metadata"]["labels"];
            if labels["app.kubernetes.io/managed-by"] != "stockmesh-operator" {
                continue;
            }
            let obj = serde_json::from_value(item.clone()).expect("object parses");
            objects.push((kind, obj));
        }
    }
    ctx.caches().prime(None, objects);
}

pub fn coll(group_version: &str, resource: &str) -> String {
    if group_version == "v1" {
        format!("/api/v1/namespaces/{NS}/{resource}")
    } else {
        format!("/apis/{group_version}/namespaces/{NS}/{resource}")
    }
}

pub fn cr_collection() -> String {
    coll("stockmesh.io/v1alpha1", "inventorysystems")
}

/// An InventorySystem as the API server would hand it to the controller.
pub fn system(name: &str, spec: Value, generation: i64) -> InventorySystem {
    serde_json::from_value(json!({
        "apiVersion": "stockmesh.io/v1alpha1",
        "kind": "InventorySystem",
        "metadata": {"name": name, "namespace": NS, "uid": UID, "generation": generation},
        "spec": spec,
    }))
    .expect("valid InventorySystem")
}

/// The workspace root (where `scripts/` and `k8s/` live).
pub fn repo_root() -> std::path::PathBuf {
    // Run time, not `env!`: the binary may have been built in another checkout.
    std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
    )
    .parent()
    .expect("operator/ has a parent")
    .to_path_buf()
}

/// Path of a checking tool installed by `scripts/tools.sh` (which installs
/// it on first use). Fails the test, loudly, when it cannot be had.
pub fn tool(name: &str) -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<Result<std::path::PathBuf, String>> =
        std::sync::OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let script = repo_root().join("scripts/tools.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(std::path::PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim(),
        ))
    });
    match bin {
        Ok(dir) => {
            let path = dir.join(name);
            assert!(
                path.exists(),
                "{name} is missing from {} after scripts/tools.sh; this check cannot be skipped",
                dir.display()
            );
            path
        }
        Err(e) => {
            panic!("the checking tools are not available ({e}); this check cannot be skipped")
        }
    }
}
