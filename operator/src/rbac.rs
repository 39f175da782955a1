//! The least-privilege RBAC rules of the operator: exactly the verbs and
//! kinds the reconciler and its watches use. `k8s/operator/rbac.yaml` holds
//! the same rules (a test keeps them equal), and the mocked-API tests check
//! every request the reconciler makes against them.

/// One RBAC rule: API group, resources, verbs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub api_group: &'static str,
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

/// Verbs on every kind the operator creates: `list`/`watch` (the controller's
/// watches and the per-reconcile listing), `create` and `patch` (server-side
/// apply, which needs `create` when the object does not exist yet), `delete`
/// (pruning objects it no longer wants, e.g. the Ingress after
/// `ingress.enabled: false`).
const CHILD_VERBS: &[&str] = &["list", "watch", "create", "patch", "delete"];

pub const RULES: &[Rule] = &[
    Rule {
        api_group: "stockmesh.io",
        resources: &["inventorysystems"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_group: "stockmesh.io",
        resources: &["inventorysystems/status"],
        verbs: &["patch"],
    },
    Rule {
        // `get`: the Secrets referenced by postgres.external / rabbitmq.external.
        api_group: "",
        resources: &["secrets"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    Rule {
        api_group: "",
        resources: &["configmaps", "services"],
        verbs: CHILD_VERBS,
    },
    Rule {
        api_group: "apps",
        resources: &["deployments", "statefulsets"],
        verbs: CHILD_VERBS,
    },
    Rule {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: CHILD_VERBS,
    },
    Rule {
        api_group: "networking.k8s.io",
        resources: &["ingresses", "networkpolicies"],
        verbs: CHILD_VERBS,
    },
    Rule {
        // kube::runtime::events::Recorder creates events and patches repeats.
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// Whether the rules allow `verb` on `resource` (e.g. `deployments`,
/// `inventorysystems/status`) in `api_group`.
pub fn allows(api_group: &str, resource: &str, verb: &str) -> bool {
    RULES.iter().any(|r| {
        r.api_group == api_group && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

/// The rules of the leader-election Role, granted only in the Lease's
/// namespace (a Role, never cluster-wide; the chart and
/// `k8s/operator/rbac.yaml` also restrict `get` and `patch` to the Lease's
/// name). kube-lease-manager reads the Lease, creates it the first time and
/// takes, renews and releases it with patches (server-side apply and
/// strategic merge); it never lists, watches, replaces (`update`) or deletes
/// it. The mocked-API leader-election test checks every Lease request
/// against these rules.
pub const LEASE_RULES: &[Rule] = &[Rule {
    api_group: "coordination.k8s.io",
    resources: &["leases"],
    verbs: &["get", "create", "patch"],
}];

/// Whether the leader-election rules allow `verb` on `resource`.
pub fn lease_allows(api_group: &str, resource: &str, verb: &str) -> bool {
    LEASE_RULES.iter().any(|r| {
        r.api_group == api_group && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}
