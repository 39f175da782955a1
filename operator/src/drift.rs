//! Drift detection: does an observed child still carry every field the
//! operator wants it to have?
//!
//! The reconciler server-side applies a child when its applied-hash
//! annotation differs (the desired object changed) **or** when
//! [`first_difference_accepting`] finds a desired field missing or changed
//! in the observed object (someone edited the child: scaled a Deployment,
//! changed an image, ...). The comparison is a recursive subset check driven
//! by the desired object:
//!
//! - objects compare key by key on the desired keys only (the API server adds
//!   defaults, status and other managers' fields, which are not drift);
//! - lists that Kubernetes merges by key (`x-kubernetes-list-type: map`)
//!   compare element by element **by merge key**, in any order: `containers`,
//!   `initContainers`, `ephemeralContainers`, `volumes`, `env` and
//!   `imagePullSecrets` by `name`, `volumeMounts` by `mountPath`, container
//!   `ports` by `containerPort` + `protocol`, Service `spec.ports` by `port` +
//!   `protocol`, `metadata.ownerReferences` by `uid`. Entries only another
//!   field manager added (a sidecar, an injected `env` variable or volume)
//!   are not drift: our apply would leave them in place, so demanding their
//!   absence would re-apply forever; an entry of ours that is missing or
//!   changed is drift, wherever it moved in the list;
//! - every other list is atomic (our apply replaces it whole): it compares
//!   element-wise by index and must have the same length, so an extra
//!   NetworkPolicy rule someone added is drift;
//! - scalars compare equal (numbers by value);
//! - values the API server normalises compare by meaning: resource quantities
//!   (`requests`/`limits` entries and `sizeLimit`: `0.5` == `500m`,
//!   `1024Mi` == `1Gi`), and zero values (`""`, `false`, `0`, `null`, `[]`)
//!   that Go's `omitempty` drops match an absent field;
//! - the top-level `apiVersion`, `kind` and `status`, and the metadata the
//!   server sets (`resourceVersion`, `uid`, `managedFields`,
//!   `creationTimestamp`, `generation`, ...) are never compared (list items
//!   carry no `apiVersion`/`kind`).
//!
//! **Fields the server does not keep.** An API server may drop a field it
//! does not know or has disabled (Kubernetes 1.26 drops a StatefulSet's
//! `spec.persistentVolumeClaimRetentionPolicy`, alpha there) or default and
//! rewrite it in ways the rules above do not foresee. Such a field is missing
//! or different in the object the server returns *right after an apply that
//! succeeded*; that is the server's doing, not drift. The reconciler records
//! these paths with [`served_deviations`] (the value the server returned at
//! each, or `None` when it dropped the field) and passes them to
//! [`first_difference_accepting`], which accepts exactly those values there
//! until the desired object changes. A later edit of such a field to yet
//! another value is drift again.
//!
//! Paths are JSON pointers into the **desired** object (list elements by
//! their index in the desired list), so they stay valid however the server
//! orders a merged list.
//!
//! A field the operator stops setting is caught by the hash, not here.

use std::collections::BTreeMap;

use serde_json::Value;

/// Desired fields the API server did not keep as applied: JSON pointer (into
/// the desired object) -> the value it returned there, `None` when it
/// dropped the field.
pub type Accepted = BTreeMap<String, Option<Value>>;

/// Metadata fields the API server sets; never drift.
const SERVER_METADATA: [&str; 8] = [
    "resourceVersion",
    "uid",
    "managedFields",
    "creationTimestamp",
    "generation",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Top-level fields never compared.
const TOP_LEVEL_IGNORED: [&str; 3] = ["apiVersion", "kind", "status"];

/// The path (`/spec/replicas`, `/spec/template/spec/containers/0/image`) of
/// the first desired field that the observed object lacks or holds with
/// another value; `None` when the observed object carries all of them.
pub fn first_difference(desired: &Value, observed: &Value) -> Option<String> {
    first_difference_accepting(desired, observed, &Accepted::new())
}

/// [`first_difference`], except that at the paths of `accepted` the value
/// the server returned after the last apply (or the field's absence) is not
/// a difference.
pub fn first_difference_accepting(
    desired: &Value,
    observed: &Value,
    accepted: &Accepted,
) -> Option<String> {
    let mut walk = Walk {
        accepted,
        all: false,
        found: Vec::new(),
    };
    walk.root(desired, observed);
    walk.found.into_iter().next().map(|(path, _)| path)
}

/// Every desired field the `served` object (what the API server returned
/// for an apply of `desired`) lacks or holds with another value, with the
/// value it holds there (`None`: absent). Empty when the server kept
/// everything.
pub fn served_deviations(desired: &Value, served: &Value) -> Accepted {
    let none = Accepted::new();
    let mut walk = Walk {
        accepted: &none,
        all: true,
        found: Vec::new(),
    };
    walk.root(desired, served);
    walk.found.into_iter().collect()
}

/// Whether the observed object lacks a desired field or holds another value.
pub fn drifted(desired: &Value, observed: &Value) -> bool {
    first_difference(desired, observed).is_some()
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The merge keys of a list field, `None` for an atomic list. `key` is the
/// list's field name, `parent` the name of the field holding the object the
/// list is in (list elements carry their list's name).
fn merge_keys(key: &str, parent: &str) -> Option<&'static [&'static str]> {
    const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];
    match key {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets" => Some(&["name"]),
        "volumeMounts" => Some(&["mountPath"]),
        "ports" if CONTAINER_LISTS.contains(&parent) => Some(&["containerPort", "protocol"]),
        // A Service's spec.ports (NetworkPolicy rule ports are atomic).
        "ports" if parent == "spec" => Some(&["port", "protocol"]),
        "ownerReferences" => Some(&["uid"]),
        _ => None,
    }
}

/// Whether two list elements have the same merge key (`protocol` defaults
/// to TCP, as the server fills it in).
fn same_key(a: &Value, b: &Value, keys: &[&str]) -> bool {
    keys.iter().all(|k| {
        let default = (*k == "protocol").then(|| Value::String("TCP".into()));
        let av = a.get(*k).cloned().or_else(|| default.clone());
        let bv = b.get(*k).cloned().or(default);
        av == bv
    })
}

/// One comparison: stops at the first difference unless `all`.
struct Walk<'a> {
    accepted: &'a Accepted,
    all: bool,
    found: Vec<(String, Option<Value>)>,
}

impl Walk<'_> {
    fn done(&self) -> bool {
        !self.all && !self.found.is_empty()
    }

    fn report(&mut self, path: &str, have: Option<&Value>) {
        self.found.push((path.to_owned(), have.cloned()));
    }

    fn root(&mut self, desired: &Value, observed: &Value) {
        let (Value::Object(want), Value::Object(have)) = (desired, observed) else {
            if desired != observed {
                self.report("", Some(observed));
            }
            return;
        };
        for (key, w) in want {
            if self.done() {
                return;
            }
            if TOP_LEVEL_IGNORED.contains(&key.as_str()) {
                continue;
            }
            let path = format!("/{}", escape(key));
            let h = have.get(key);
            if key == "metadata"
                && let (Value::Object(wm), Some(Value::Object(hm))) = (w, h)
            {
                for (mk, mw) in wm {
                    if self.done() {
                        return;
                    }
                    if SERVER_METADATA.contains(&mk.as_str()) {
                        continue;
                    }
                    let mpath = format!("{path}/{}", escape(mk));
                    self.value(mw, hm.get(mk), mk, key, &mpath);
                }
                continue;
            }
            self.value(w, h, key, "", &path);
        }
    }

    /// Compares one desired value with the observed one (if any). `key` is
    /// the field's name and `parent` its parent's (for quantities and merge
    /// keys); `path` the JSON pointer, reported on a difference.
    fn value(&mut self, want: &Value, have: Option<&Value>, key: &str, parent: &str, path: &str) {
        if let Some(served) = self.accepted.get(path)
            && served.as_ref() == have
        {
            return;
        }
        let Some(have) = have else {
            if !is_zero(want) {
                self.report(path, None);
            }
            return;
        };
        match (want, have) {
            (Value::Object(w), Value::Object(h)) => {
                for (k, v) in w {
                    if self.done() {
                        return;
                    }
                    self.value(v, h.get(k), k, key, &format!("{path}/{}", escape(k)));
                }
            }
            (Value::Array(w), Value::Array(h)) => self.list(w, h, key, parent, path),
            (Value::Number(w), Value::Number(h)) => {
                if w != h && w.as_f64() != h.as_f64() {
                    self.report(path, Some(have));
                }
            }
            (Value::String(w), Value::String(h)) if w != h => {
                let quantity = matches!(parent, "requests" | "limits") || key == "sizeLimit";
                let same = quantity
                    && matches!((quantity_value(w), quantity_value(h)), (Some(a), Some(b)) if same_amount(a, b));
                if !same {
                    self.report(path, Some(have));
                }
            }
            (Value::Null, Value::Null) => {}
            (w, Value::Null) if is_zero(w) => {}
            (w, h) => {
                if w != h {
                    self.report(path, Some(have));
                }
            }
        }
    }

    fn list(&mut self, want: &[Value], have: &[Value], key: &str, parent: &str, path: &str) {
        match merge_keys(key, parent) {
            Some(keys) => {
                for (i, w) in want.iter().enumerate() {
                    if self.done() {
                        return;
                    }
                    let h = have.iter().find(|h| same_key(w, h, keys));
                    // Elements keep the list's name (quantities, merge keys).
                    self.value(w, h, key, parent, &format!("{path}/{i}"));
                }
            }
            None if want.len() != have.len() => {
                self.report(path, Some(&Value::Array(have.to_vec())));
            }
            None => {
                for (i, (w, h)) in want.iter().zip(have).enumerate() {
                    if self.done() {
                        return;
                    }
                    self.value(w, Some(h), key, parent, &format!("{path}/{i}"));
                }
            }
        }
    }
}

/// Values Go's `omitempty` drops: absent on the server means the same.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    }
}

/// The amount of a Kubernetes quantity (`500m`, `1.5Gi`, `2`, `1e3`).
pub fn quantity_value(q: &str) -> Option<f64> {
    let q = q.trim();
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * multiplier)
}

fn same_amount(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "shop-user", "labels": {"a": "b"}, "annotations": {"h": "1"}},
            "spec": {
                "replicas": 2,
                "template": {"spec": {
                    "containers": [{
                        "name": "user",
                        "image": "stockmesh/user:1",
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": ""}],
                        "resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "1000m"}},
                        "securityContext": {"privileged": false},
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                }},
            },
        })
    }

    /// What a list returns: no apiVersion/kind, server metadata, defaults,
    /// canonical quantities, empty values dropped, other managers' fields.
    fn as_served() -> Value {
        json!({
            "metadata": {
                "name": "shop-user", "labels": {"a": "b", "extra": "x"},
                "annotations": {"h": "1", "deployment.kubernetes.io/revision": "3"},
                "uid": "u", "resourceVersion": "7", "generation": 4,
                "creationTimestamp": "2025-01-01T00:00:00Z", "managedFields": [],
            },
            "spec": {
                "replicas": 2,
                "progressDeadlineSeconds": 600,
                "template": {
                    "metadata": {"creationTimestamp": null, "annotations": {"kubectl.kubernetes.io/restartedAt": "now"}},
                    "spec": {
                    "containers": [{
                        "name": "user",
                        "image": "stockmesh/user:1",
                        "env": [{"name": "A", "value": "1"}, {"name": "B"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "1"}},
                        "securityContext": {"privileged": false},
                        "terminationMessagePath": "/dev/termination-log",
                    }],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
                    "dnsPolicy": "ClusterFirst",
                }},
            },
            "status": {"replicas": 2},
        })
    }

    #[test]
    fn the_served_form_of_the_desired_object_is_not_drift() {
        assert_eq!(first_difference(&deployment(), &as_served()), None);
        assert_eq!(first_difference(&deployment(), &deployment()), None);
    }

    #[test]
    fn manual_edits_are_drift_with_their_path() {
        let mut scaled = as_served();
        scaled["spec"]["replicas"] = json!(5);
        assert_eq!(
            first_difference(&deployment(), &scaled).as_deref(),
            Some("/spec/replicas")
        );
        let mut image = as_served();
        image["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
        assert_eq!(
            first_difference(&deployment(), &image).as_deref(),
            Some("/spec/template/spec/containers/0/image")
        );
        let mut cpu = as_served();
        cpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("2");
        assert!(drifted(&deployment(), &cpu));
        let mut privileged = as_served();
        privileged["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] =
            json!(true);
        assert!(drifted(&deployment(), &privileged));
        let mut env = as_served();
        env["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("2");
        assert!(drifted(&deployment(), &env));
        let mut label = as_served();
        label["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("a");
        assert_eq!(
            first_difference(&deployment(), &label).as_deref(),
            Some("/metadata/labels/a")
        );
        let mut hash = as_served();
        hash["metadata"]["annotations"]["h"] = json!("2");
        assert!(drifted(&deployment(), &hash));
        let mut shorter = as_served();
        shorter["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .expect("env")
            .pop();
        assert_eq!(
            first_difference(&deployment(), &shorter).as_deref(),
            Some("/spec/template/spec/containers/0/env/1")
        );
        let mut volume = as_served();
        volume["spec"]["template"]["spec"]["volumes"][0] =
            json!({"name": "tmp", "hostPath": {"path": "/"}});
        assert!(drifted(&deployment(), &volume));
    }

    fn pod(v: &mut Value) -> &mut Value {
        &mut v["spec"]["template"]["spec"]
    }

    #[test]
    fn added_list_elements_and_fields_of_others_are_not_drift() {
        let mut more = as_served();
        pod(&mut more)["containers"][0]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!({"name": "DEBUG", "value": "1"}));
        assert!(!drifted(&deployment(), &more));
    }

    #[test]
    fn entries_another_manager_inserted_anywhere_in_a_merged_list_are_not_drift() {
        // A mutating webhook or `kubectl set env` puts its entries first:
        // comparing by index would see every one of ours shifted.
        let mut served = as_served();
        let p = pod(&mut served);
        p["containers"][0]["env"]
            .as_array_mut()
            .expect("env")
            .insert(0, json!({"name": "INJECTED", "value": "x"}));
        p["containers"]
            .as_array_mut()
            .expect("containers")
            .insert(0, json!({"name": "istio-proxy", "image": "proxy:1"}));
        p["volumes"]
            .as_array_mut()
            .expect("volumes")
            .insert(0, json!({"name": "istio-data", "emptyDir": {}}));
        assert_eq!(first_difference(&deployment(), &served), None);

        // ... while a missing or changed entry of ours is drift, reported
        // at its index in the desired list.
        let mut lost = served.clone();
        pod(&mut lost)["containers"][1]["env"]
            .as_array_mut()
            .expect("env")
            .retain(|e| e["name"] != "A");
        assert_eq!(
            first_difference(&deployment(), &lost).as_deref(),
            Some("/spec/template/spec/containers/0/env/0")
        );
        let mut changed = served.clone();
        pod(&mut changed)["containers"][1]["env"][1]["value"] = json!("2");
        assert_eq!(
            first_difference(&deployment(), &changed).as_deref(),
            Some("/spec/template/spec/containers/0/env/0/value")
        );
    }

    #[test]
    fn ports_mounts_and_owner_references_merge_by_their_keys() {
        let want = json!({
            "metadata": {"ownerReferences": [{"uid": "u1", "kind": "InventorySystem"}]},
            "spec": {
                "ports": [{"name": "http", "port": 8080}, {"name": "grpc", "port": 50051}],
                "template": {"spec": {"containers": [{
                    "name": "c",
                    "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }]}},
            },
        });
        let have = json!({
            "metadata": {"ownerReferences": [{"uid": "u0", "kind": "Other"}, {"uid": "u1", "kind": "InventorySystem"}]},
            "spec": {
                // Service ports in another order, protocol defaulted.
                "ports": [
                    {"name": "grpc", "port": 50051, "protocol": "TCP"},
                    {"name": "metrics", "port": 9090, "protocol": "TCP"},
                    {"name": "http", "port": 8080, "protocol": "TCP"},
                ],
                "template": {"spec": {"containers": [{
                    "name": "c",
                    "ports": [{"name": "dbg", "containerPort": 9229, "protocol": "TCP"},
                              {"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                    "volumeMounts": [{"name": "certs", "mountPath": "/certs"},
                                     {"name": "tmp", "mountPath": "/tmp"}],
                }]}},
            },
        });
        assert_eq!(first_difference(&want, &have), None);
        let mut moved = have.clone();
        moved["spec"]["template"]["spec"]["containers"][0]["volumeMounts"][1]["mountPath"] =
            json!("/scratch");
        assert_eq!(
            first_difference(&want, &moved).as_deref(),
            Some("/spec/template/spec/containers/0/volumeMounts/0")
        );
        let mut udp = have.clone();
        udp["spec"]["ports"][2]["protocol"] = json!("UDP");
        assert_eq!(
            first_difference(&want, &udp).as_deref(),
            Some("/spec/ports/0")
        );
    }

    #[test]
    fn atomic_lists_must_match_whole() {
        // A NetworkPolicy's rules are one atomic list: a rule someone added
        // is replaced by our apply, so it is drift.
        let want = json!({"spec": {"ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 8080}]}]}});
        let mut have = want.clone();
        have["spec"]["ingress"]
            .as_array_mut()
            .expect("rules")
            .push(json!({"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}));
        assert_eq!(
            first_difference(&want, &have).as_deref(),
            Some("/spec/ingress")
        );
        assert_eq!(first_difference(&want, &want), None);
    }

    #[test]
    fn fields_the_server_did_not_keep_are_accepted_until_they_change() {
        let want = json!({"spec": {
            "replicas": 1,
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "template": {"spec": {"containers": [{"name": "c", "image": "i:1", "env": [{"name": "A", "value": "x"}]}]}},
        }});
        // Kubernetes 1.26: the retention policy is dropped; a (hypothetical)
        // admission webhook rewrites the image and an env value.
        let served = json!({"spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{"name": "c", "image": "mirror/i:1", "env": [{"name": "A", "value": "y"}]}]}},
        }});
        let accepted = served_deviations(&want, &served);
        assert_eq!(
            accepted,
            Accepted::from([
                (
                    "/spec/persistentVolumeClaimRetentionPolicy".to_owned(),
                    None
                ),
                (
                    "/spec/template/spec/containers/0/env/0/value".to_owned(),
                    Some(json!("y"))
                ),
                (
                    "/spec/template/spec/containers/0/image".to_owned(),
                    Some(json!("mirror/i:1"))
                ),
            ])
        );
        assert!(served_deviations(&want, &want).is_empty());
        // Without the record every resync sees drift; with it, none.
        assert_eq!(
            first_difference(&want, &served).as_deref(),
            Some("/spec/persistentVolumeClaimRetentionPolicy")
        );
        assert_eq!(first_difference_accepting(&want, &served, &accepted), None);
        // Real drift elsewhere, or another value at an accepted path, still counts.
        let mut scaled = served.clone();
        scaled["spec"]["replicas"] = json!(3);
        assert_eq!(
            first_difference_accepting(&want, &scaled, &accepted).as_deref(),
            Some("/spec/replicas")
        );
        let mut edited = served.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:1");
        assert_eq!(
            first_difference_accepting(&want, &edited, &accepted).as_deref(),
            Some("/spec/template/spec/containers/0/image")
        );
    }

    #[test]
    fn quantities_compare_by_amount_only_where_they_are_quantities() {
        for (a, b) in [
            ("0.5", "500m"),
            ("1000m", "1"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("1e3", "1k"),
            ("100m", "0.1"),
        ] {
            assert!(
                same_amount(quantity_value(a).expect(a), quantity_value(b).expect(b)),
                "{a} == {b}"
            );
        }
        assert!(!same_amount(
            quantity_value("1Gi").expect("q"),
            quantity_value("1G").expect("q")
        ));
        assert_eq!(quantity_value("lots"), None);
        // Elsewhere, "1" and "1.0" are different strings.
        let want = json!({"data": {"RATIO": "1.0"}});
        let have = json!({"data": {"RATIO": "1"}});
        assert_eq!(
            first_difference(&want, &have).as_deref(),
            Some("/data/RATIO")
        );
    }
}
