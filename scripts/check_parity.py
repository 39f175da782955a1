#!/usr/bin/env python3
"""Parity of the Helm chart and the operator (issue 7), run by scripts/k8s-check.sh.

    check_parity.py OPERATOR.yaml CHART.yaml [--name shop] [--only SECTIONS]

SECTIONS is a comma-separated subset of deployments, networkpolicies, stores
(default: all three).

OPERATOR.yaml is what the operator's builders make for an InventorySystem
(`render k8s/examples/full.yaml --redact`), CHART.yaml what `helm template`
makes with the equivalent values (charts/stockmesh/ci/parity-values.yaml,
release named like the resource). For each of the five service Deployments
`<name>-<service>` and the web console's `<name>-web` (compared when either
side renders it: both must, or neither) both must agree on
(docs/deployment-contract.md is the reference for both):

  - container ports: name, containerPort, protocol;
  - startup/liveness/readiness probes: handler (httpGet path + port + scheme,
    or grpc port + service) and timings (Kubernetes defaults filled in);
  - env: the set of variable names, and for each its source: literal value,
    ConfigMap key (compared by the value the ConfigMap holds in each render),
    Secret name + key (values are generated, never compared), fieldRef;
  - pod and container securityContext (exactly);
  - image, imagePullPolicy, replicas, resources, the pod flags
    (automountServiceAccountToken, enableServiceLinks,
    terminationGracePeriodSeconds), the selector, volumes and mounts;
  - the container's lifecycle hooks (the preStop drain: httpGet /drain on
    port http), and, on each side by itself, that the shutdown numbers agree:
    terminationGracePeriodSeconds == ceil((SHUTDOWN_DRAIN_MS +
    SHUTDOWN_GRACE_MS) / 1000) + 5 (issue 14), so kubelet never kills a pod
    inside its own drain and grace.

The NetworkPolicies `<name>-<service>`, `<name>-web`, `<name>-postgres` and
`<name>-rabbitmq`: the same names, pod selector and policy types, and the
same edges: each rule is expanded into (peer, port) pairs (peers and ports
canonicalised, protocol TCP by default, a rule without peers or ports
meaning "any"), so two renderings that group peers into rules differently
still compare equal, while a widened rule (an ipBlock 0.0.0.0/0 where the
other names a pod, another port) is a difference. Chart only, on purpose:
the `<name>-default-deny`, `<name>-jaeger` and `<name>-api-clients` policies
and the `stockmesh.io/api-client` peer (the `helm test` pod and the load
generator reach the API).

The store StatefulSets `<name>-postgres` and `<name>-rabbitmq` (when both
render them): pod and container securityContext, the writable mounts (the
paths of emptyDir and claim-template volumes; the root filesystem is
read-only, operator/src/resources/stores.rs STORE_WRITABLE_PATHS lists what the
images write and the operator's manifest tests hold it to its mounts) and
the environment that points the images at those paths (PGDATA,
RABBITMQ_LOGS, RABBITMQ_LOG_BASE). Their other settings (probes, how the
broker gets its user) differ on purpose.

Not compared, on purpose: labels and annotations (managed-by, helm.sh/chart,
the config-hash is computed differently), serviceAccountName, scheduling
(topology spread, node selector, tolerations), rollout strategy, and the
external-mode Secret handling (the chart reads the external Secret, the
operator copies it), which is why the parity values use managed stores.

Prints one line per difference and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

SERVICES = ["user", "product", "inventory", "order", "notification"]
# The web console: compared like a service when either side renders it.
WEB = "web"
PROBES = ["startupProbe", "livenessProbe", "readinessProbe"]
PROBE_DEFAULTS = {"initialDelaySeconds": 0, "timeoutSeconds": 1, "periodSeconds": 10,
                  "successThreshold": 1, "failureThreshold": 3}

# Seconds a pod needs after drain + grace (exit, span flush); both sides add it.
TERMINATION_MARGIN_SECONDS = 5

problems: list[str] = []


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind_name(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def norm_probe(p):
    if p is None:
        return None
    out = {k: p.get(k, v) for k, v in PROBE_DEFAULTS.items()}
    handlers = [k for k in ("httpGet", "grpc", "tcpSocket", "exec") if k in p]
    out["handler"] = handlers
    if "httpGet" in p:
        h = p["httpGet"]
        out["httpGet"] = {"path": h.get("path"), "port": h.get("port"),
                          "scheme": h.get("scheme", "HTTP")}
    if "grpc" in p:
        out["grpc"] = {"port": p["grpc"].get("port"), "service": p["grpc"].get("service", "")}
    if "tcpSocket" in p:
        out["tcpSocket"] = {"port": p["tcpSocket"].get("port")}
    if "exec" in p:
        out["exec"] = p["exec"]
    return out


def norm_lifecycle(lc):
    """Hooks with the API server's defaults filled in (httpGet scheme)."""
    out = {}
    for hook, handler in sorted((lc or {}).items()):
        h = dict(handler)
        if "httpGet" in h:
            g = h["httpGet"]
            h["httpGet"] = {"path": g.get("path"), "port": g.get("port"),
                            "scheme": g.get("scheme", "HTTP")}
        out[hook] = h
    return out


def check_shutdown(label, pod, container):
    """One renderer's shutdown numbers agree with each other."""
    env = {e["name"]: e.get("value") for e in container.get("env", []) if "value" in e}
    try:
        drain, grace = int(env["SHUTDOWN_DRAIN_MS"]), int(env["SHUTDOWN_GRACE_MS"])
    except (KeyError, TypeError, ValueError):
        problems.append(f"{label}: SHUTDOWN_DRAIN_MS / SHUTDOWN_GRACE_MS not set as literal numbers")
        return
    want = -(-(drain + grace) // 1000) + TERMINATION_MARGIN_SECONDS
    have = pod.get("terminationGracePeriodSeconds", 30)
    if have != want:
        problems.append(f"{label}: terminationGracePeriodSeconds {have}, want {want} "
                        f"(drain {drain} ms + grace {grace} ms + {TERMINATION_MARGIN_SECONDS} s)")
    pre_stop = norm_lifecycle(container.get("lifecycle")).get("preStop")
    want_hook = {"httpGet": {"path": "/drain", "port": "http", "scheme": "HTTP"}}
    if pre_stop != want_hook:
        problems.append(f"{label}: preStop {pre_stop!r}, want {want_hook!r}")


def env_sources(container, configmaps):
    """name -> where its value comes from, with ConfigMap keys resolved."""
    out = {}
    for e in container.get("env", []):
        name = e["name"]
        if name in out:
            problems.append(f"{container['name']}: env {name} defined twice")
        if "valueFrom" not in e:
            out[name] = ("value", str(e.get("value", "")))
            continue
        vf = e["valueFrom"]
        if "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            data = (configmaps.get(ref["name"]) or {}).get("data") or {}
            value = data.get(ref["key"], f"<missing key {ref['key']} in ConfigMap {ref['name']}>")
            out[name] = ("configMap", ref["name"], ref["key"], str(value))
        elif "secretKeyRef" in vf:
            ref = vf["secretKeyRef"]
            out[name] = ("secret", ref["name"], ref["key"])
        elif "fieldRef" in vf:
            out[name] = ("field", vf["fieldRef"]["fieldPath"])
        else:
            out[name] = ("other", repr(vf))
    return out


def norm_volume(v):
    v = dict(v)
    if "emptyDir" in v:
        v["emptyDir"] = dict(v["emptyDir"] or {})
    if "secret" in v:
        s = dict(v["secret"])
        s.setdefault("defaultMode", 0o644)
        s["items"] = sorted(s.get("items", []), key=lambda i: i["key"])
        v["secret"] = s
    return v


def norm_mount(m):
    return {"name": m["name"], "mountPath": m["mountPath"], "readOnly": m.get("readOnly", False),
            "subPath": m.get("subPath", "")}


def compare(what, op, ch):
    if op != ch:
        problems.append(f"{what}: operator {op!r} != chart {ch!r}")


def compare_deployment(svc, op_dep, ch_dep, op_cms, ch_cms):
    label = f"Deployment {op_dep['metadata']['name']}"
    op_pod, ch_pod = op_dep["spec"]["template"]["spec"], ch_dep["spec"]["template"]["spec"]
    compare(f"{label}: replicas", op_dep["spec"].get("replicas"), ch_dep["spec"].get("replicas"))
    compare(f"{label}: selector", op_dep["spec"]["selector"], ch_dep["spec"]["selector"])
    for flag, default in (("automountServiceAccountToken", True), ("enableServiceLinks", True),
                          ("terminationGracePeriodSeconds", 30)):
        compare(f"{label}: pod {flag}", op_pod.get(flag, default), ch_pod.get(flag, default))
    compare(f"{label}: pod securityContext", op_pod.get("securityContext"), ch_pod.get("securityContext"))
    compare(f"{label}: volumes",
            sorted((norm_volume(v) for v in op_pod.get("volumes", [])), key=lambda v: v["name"]),
            sorted((norm_volume(v) for v in ch_pod.get("volumes", [])), key=lambda v: v["name"]))
    op_cs = {c["name"]: c for c in op_pod["containers"]}
    ch_cs = {c["name"]: c for c in ch_pod["containers"]}
    compare(f"{label}: containers", sorted(op_cs), sorted(ch_cs))
    if svc not in op_cs or svc not in ch_cs:
        return
    oc, cc = op_cs[svc], ch_cs[svc]
    cl = f"{label} container {svc}"
    for key in ("image", "imagePullPolicy", "resources", "securityContext"):
        compare(f"{cl}: {key}", oc.get(key), cc.get(key))

    def ports(c):
        return sorted((p.get("name"), p["containerPort"], p.get("protocol", "TCP")) for p in c.get("ports", []))

    compare(f"{cl}: ports (name, port, protocol)", ports(oc), ports(cc))
    for p in PROBES:
        compare(f"{cl}: {p}", norm_probe(oc.get(p)), norm_probe(cc.get(p)))
    compare(f"{cl}: lifecycle", norm_lifecycle(oc.get("lifecycle")), norm_lifecycle(cc.get("lifecycle")))
    check_shutdown(f"{cl} (operator)", op_pod, oc)
    check_shutdown(f"{cl} (chart)", ch_pod, cc)
    oe, ce = env_sources(oc, op_cms), env_sources(cc, ch_cms)
    only_op, only_ch = sorted(set(oe) - set(ce)), sorted(set(ce) - set(oe))
    if only_op:
        problems.append(f"{cl}: env only set by the operator: {', '.join(only_op)}")
    if only_ch:
        problems.append(f"{cl}: env only set by the chart: {', '.join(only_ch)}")
    for name in sorted(set(oe) & set(ce)):
        compare(f"{cl}: env {name}", oe[name], ce[name])
    compare(f"{cl}: volumeMounts",
            sorted((norm_mount(m) for m in oc.get("volumeMounts", [])), key=lambda m: m["mountPath"]),
            sorted((norm_mount(m) for m in cc.get("volumeMounts", [])), key=lambda m: m["mountPath"]))


# NetworkPolicies only the chart renders (see the docstring).
CHART_ONLY_POLICIES = ["default-deny", "jaeger", "api-clients"]
CHART_ONLY_PEER_LABEL = "stockmesh.io/api-client"


def canon(v):
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def policy_edges(np, direction):
    """The (peer, port) pairs a NetworkPolicy allows in one direction."""
    key = "from" if direction == "ingress" else "to"
    edges = set()
    for rule in np["spec"].get(direction) or []:
        peers = [p for p in (rule.get(key) or [])
                 if CHART_ONLY_PEER_LABEL not in ((p.get("podSelector") or {}).get("matchLabels") or {})]
        if rule.get(key) and not peers:
            continue  # only chart-only peers
        ports = [f"{p.get('protocol', 'TCP')}/{p.get('port', '*')}"
                 + (f"-{p['endPort']}" if "endPort" in p else "")
                 for p in (rule.get("ports") or [])]
        for peer in (peers or [None]):
            for port in (ports or ["*"]):
                edges.add(("*" if peer is None else canon(peer), port))
    return edges


def compare_network_policy(op_np, ch_np):
    label = f"NetworkPolicy {op_np['metadata']['name']}"
    compare(f"{label}: podSelector", op_np["spec"].get("podSelector"), ch_np["spec"].get("podSelector"))
    compare(f"{label}: policyTypes", sorted(op_np["spec"].get("policyTypes") or []),
            sorted(ch_np["spec"].get("policyTypes") or []))
    for direction in ("ingress", "egress"):
        op, ch = policy_edges(op_np, direction), policy_edges(ch_np, direction)
        for peer, port in sorted(op - ch):
            problems.append(f"{label}: {direction} {port} {'from' if direction == 'ingress' else 'to'} "
                            f"{peer}: only the operator allows it")
        for peer, port in sorted(ch - op):
            problems.append(f"{label}: {direction} {port} {'from' if direction == 'ingress' else 'to'} "
                            f"{peer}: only the chart allows it")


def compare_network_policies(name, op_docs, ch_docs):
    op_nps, ch_nps = by_kind_name(op_docs, "NetworkPolicy"), by_kind_name(ch_docs, "NetworkPolicy")
    if not op_nps:
        problems.append("the operator renders no NetworkPolicy (networkPolicy.enabled?)")
    chart_only = {f"{name}-{p}" for p in CHART_ONLY_POLICIES}
    for np_name in sorted(set(op_nps) | set(ch_nps)):
        if np_name not in ch_nps:
            problems.append(f"NetworkPolicy {np_name}: not rendered by the chart")
        elif np_name not in op_nps:
            if np_name not in chart_only:
                problems.append(f"NetworkPolicy {np_name}: not rendered by the operator")
        else:
            compare_network_policy(op_nps[np_name], ch_nps[np_name])
    return len(set(op_nps) & set(ch_nps))


STORE_PATH_ENV = ["PGDATA", "RABBITMQ_LOGS", "RABBITMQ_LOG_BASE"]


def writable_mounts(sts, container):
    """mountPaths of emptyDir and claim-template volumes (the only writable
    places with a read-only root filesystem)."""
    pod = sts["spec"]["template"]["spec"]
    writable = {v["name"] for v in pod.get("volumes") or [] if "emptyDir" in v}
    writable |= {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates") or []}
    return sorted(m["mountPath"].rstrip("/") for m in container.get("volumeMounts") or []
                  if m["name"] in writable and not m.get("readOnly"))


def compare_store(component, op_sts, ch_sts):
    label = f"StatefulSet {op_sts['metadata']['name']}"
    op_pod, ch_pod = op_sts["spec"]["template"]["spec"], ch_sts["spec"]["template"]["spec"]
    compare(f"{label}: pod securityContext", op_pod.get("securityContext"), ch_pod.get("securityContext"))
    oc = next((c for c in op_pod["containers"] if c["name"] == component), None)
    cc = next((c for c in ch_pod["containers"] if c["name"] == component), None)
    if oc is None or cc is None:
        problems.append(f"{label}: no container {component} (operator {oc is not None}, chart {cc is not None})")
        return
    compare(f"{label}: container securityContext", oc.get("securityContext"), cc.get("securityContext"))
    compare(f"{label}: writable mounts", writable_mounts(op_sts, oc), writable_mounts(ch_sts, cc))

    def path_env(c):
        return {e["name"]: e.get("value") for e in c.get("env") or [] if e["name"] in STORE_PATH_ENV}

    compare(f"{label}: {'/'.join(STORE_PATH_ENV)}", path_env(oc), path_env(cc))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("operator")
    ap.add_argument("chart")
    ap.add_argument("--name", default="shop", help="the InventorySystem / release name")
    ap.add_argument("--only", default="deployments,networkpolicies,stores",
                    help="comma-separated sections: deployments, networkpolicies, stores")
    a = ap.parse_args()
    sections = set(a.only.split(","))
    unknown = sections - {"deployments", "networkpolicies", "stores"}
    if unknown:
        ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    op_docs, ch_docs = load(a.operator), load(a.chart)
    op_deps, ch_deps = by_kind_name(op_docs, "Deployment"), by_kind_name(ch_docs, "Deployment")
    op_cms, ch_cms = by_kind_name(op_docs, "ConfigMap"), by_kind_name(ch_docs, "ConfigMap")
    compared = 0
    web_name = f"{a.name}-{WEB}"
    web = [WEB] if "deployments" in sections and (web_name in op_deps or web_name in ch_deps) else []
    for svc in (SERVICES + web if "deployments" in sections else []):
        name = f"{a.name}-{svc}"
        if name not in op_deps:
            problems.append(f"Deployment {name}: not rendered by the operator")
        if name not in ch_deps:
            problems.append(f"Deployment {name}: not rendered by the chart")
        if name in op_deps and name in ch_deps:
            compare_deployment(svc, op_deps[name], ch_deps[name], op_cms, ch_cms)
            compared += 1
    policies = compare_network_policies(a.name, op_docs, ch_docs) if "networkpolicies" in sections else 0
    op_sts, ch_sts = by_kind_name(op_docs, "StatefulSet"), by_kind_name(ch_docs, "StatefulSet")
    stores = 0
    for component in (("postgres", "rabbitmq") if "stores" in sections else ()):
        name = f"{a.name}-{component}"
        if (name in op_sts) != (name in ch_sts):
            problems.append(f"StatefulSet {name}: rendered by the {'operator' if name in op_sts else 'chart'} only")
        elif name in op_sts:
            compare_store(component, op_sts[name], ch_sts[name])
            stores += 1
    for p in problems:
        print(f"  - {p}")
    print(f"compared {compared} Deployments (services{' and web' if web else ''}), "
          f"{policies} NetworkPolicies, "
          f"{stores} store StatefulSets: "
          f"{'no differences' if not problems else f'{len(problems)} difference(s)'}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    try:
        main()
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        print(f"  - cannot compare: {type(e).__name__}: {e} (did a render fail?)")
        sys.exit(1)
