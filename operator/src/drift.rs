//! Drift detection: does an observed child still carry every field the
//! operator wants it to have?
//!
//! The reconciler server-side applies a child when its applied-hash
//! annotation differs (the desired object changed) **or** when
//! [`first_difference`] finds a desired field missing or changed in the
//! observed object (someone edited the child: scaled a Deployment, changed
//! an image, ...). The comparison is a recursive subset check driven by the
//! desired object:
//!
//! - objects compare key by key on the desired keys only (the API server adds
//!   defaults, status and other managers' fields, which are not drift);
//! - lists compare element-wise by index with the same rule; the observed list
//!   may be longer (elements another field manager added stay after an apply
//!   anyway, so demanding their absence would re-apply forever);
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
//! A field the operator stops setting is caught by the hash, not here.

use serde_json::Value;

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
    let (Value::Object(want), Value::Object(have)) = (desired, observed) else {
        return (desired != observed).then(String::new);
    };
    for (key, w) in want {
        if TOP_LEVEL_IGNORED.contains(&key.as_str()) {
            continue;
        }
        let path = format!("/{}", escape(key));
        let h = have.get(key);
        if key == "metadata"
            && let (Value::Object(wm), Some(Value::Object(hm))) = (w, h)
        {
            for (mk, mw) in wm {
                if SERVER_METADATA.contains(&mk.as_str()) {
                    continue;
                }
                let mpath = format!("{path}/{}", escape(mk));
                if let Some(p) = diff(mw, hm.get(mk), mk, key, &mpath) {
                    return Some(p);
                }
            }
            continue;
        }
        if let Some(p) = diff(w, h, key, "", &path) {
            return Some(p);
        }
    }
    None
}

/// Whether the observed object lacks a desired field or holds another value.
pub fn drifted(desired: &Value, observed: &Value) -> bool {
    first_difference(desired, observed).is_some()
}

fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Compares one desired value with the observed one (if any). `key` is the
/// field's name and `parent` its parent's (for quantity detection); `path`
/// the JSON pointer, returned on a difference.
fn diff(want: &Value, have: Option<&Value>, key: &str, parent: &str, path: &str) -> Option<String> {
    let Some(have) = have else {
        return (!is_zero(want)).then(|| path.to_owned());
    };
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w
            .iter()
            .find_map(|(k, v)| diff(v, h.get(k), k, key, &format!("{path}/{}", escape(k)))),
        (Value::Array(w), Value::Array(h)) => {
            if w.len() > h.len() {
                return Some(format!("{path}/{}", h.len()));
            }
            w.iter().zip(h).enumerate().find_map(|(i, (wv, hv))| {
                // Elements of a list keep the list's key for quantity detection.
                diff(wv, Some(hv), key, parent, &format!("{path}/{i}"))
            })
        }
        (Value::Number(w), Value::Number(h)) => {
            (w != h && w.as_f64() != h.as_f64()).then(|| path.to_owned())
        }
        (Value::String(w), Value::String(h)) if w != h => {
            let quantity = matches!(parent, "requests" | "limits") || key == "sizeLimit";
            let same = quantity
                && matches!((quantity_value(w), quantity_value(h)), (Some(a), Some(b)) if same_amount(a, b));
            (!same).then(|| path.to_owned())
        }
        (Value::Null, Value::Null) => None,
        (w, Value::Null) if is_zero(w) => None,
        (w, h) => (w != h).then(|| path.to_owned()),
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

    #[test]
    fn added_list_elements_and_fields_of_others_are_not_drift() {
        let mut more = as_served();
        more["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array_mut()
            .expect("env")
            .push(json!({"name": "DEBUG", "value": "1"}));
        assert!(!drifted(&deployment(), &more));
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
