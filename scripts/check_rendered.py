#!/usr/bin/env python3
"""Assertions on rendered Helm manifests (run by scripts/k8s-check.sh).

    check_rendered.py stockmesh RENDERED.yaml [--mode managed|external] [--tls] [--no-web]
    check_rendered.py operator RENDERED.yaml [--rules files/clusterrole-rules.yaml]
    check_rendered.py secrets-generated A.yaml B.yaml    # two renders, same values
    check_rendered.py config-rolls A.yaml B.yaml         # renders with different config
    check_rendered.py cr-against-crd CRD.yaml CR.yaml... # strict structural check
    check_rendered.py rbac-equal RULES.yaml RBAC.yaml    # chart rules == k8s/operator/rbac.yaml

What "right" means comes from docs/deployment-contract.md. Prints one line
per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
import tempfile

import yaml

SERVICES = ["user", "product", "inventory", "order", "notification"]
# The web console (services.web): no database or broker, the public JWT key,
# the five services' HTTP URLs; served under / of the Ingress.
WEB = "web"
GRPC = {"product", "inventory"}
API = {"user": "/api/users", "product": "/api/products", "order": "/api/orders",
       "notification": "/api/notifications"}
JWT = {"user", "product", "order", "notification"}
AMQP = {"order", "notification"}
# Keys of generated Secrets that are not secret (the same in every render).
NON_SECRET_KEYS = {"username"}

problems: list[str] = []


def problem(msg: str) -> None:
    problems.append(msg)


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def find(docs, kind, name=None):
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def one(docs, kind, name):
    found = find(docs, kind, name)
    if len(found) != 1:
        problem(f"{kind}/{name}: expected exactly one, found {len(found)}")
        return None
    return found[0]


# --------------------------------------------------------------------------
# Pods: security context, resources, probes (every workload of both charts)

def pod_specs(docs):
    """(label, pod spec, needs probes) of every workload."""
    for d in docs:
        kind, name = d.get("kind"), d["metadata"]["name"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            yield f"{kind}/{name}", d["spec"]["template"]["spec"], True
        elif kind == "Job":
            yield f"{kind}/{name}", d["spec"]["template"]["spec"], False
        elif kind == "CronJob":
            yield f"{kind}/{name}", d["spec"]["jobTemplate"]["spec"]["template"]["spec"], False
        elif kind == "Pod":
            # helm test hooks run to completion: no probes.
            hook = d["metadata"].get("annotations", {}).get("helm.sh/hook")
            yield f"{kind}/{name}", d["spec"], hook is None


def check_pods(docs):
    count = 0
    for label, spec, needs_probes in pod_specs(docs):
        count += 1
        psc = spec.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            problem(f"{label}: pod securityContext.runAsNonRoot is not true")
        uid = psc.get("runAsUser")
        if not isinstance(uid, int) or uid <= 0:
            problem(f"{label}: pod securityContext.runAsUser must be a non-zero number, is {uid!r}")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problem(f"{label}: pod seccompProfile is not RuntimeDefault")
        if spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC"):
            problem(f"{label}: uses host namespaces")
        for c in spec.get("initContainers", []) + spec["containers"]:
            cl = f"{label} container {c['name']}"
            sc = c.get("securityContext") or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                problem(f"{cl}: allowPrivilegeEscalation is not false")
            if sc.get("readOnlyRootFilesystem") is not True:
                problem(f"{cl}: readOnlyRootFilesystem is not true")
            if sc.get("privileged") not in (False, None):
                problem(f"{cl}: privileged")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problem(f"{cl}: capabilities.drop is not [ALL]")
            if (sc.get("capabilities") or {}).get("add"):
                problem(f"{cl}: adds capabilities")
            if sc.get("runAsUser") == 0:
                problem(f"{cl}: runs as root")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory") if part == "requests" else ("memory",):
                    if r not in (res.get(part) or {}):
                        problem(f"{cl}: no resources.{part}.{r}")
            if needs_probes:
                for p in ("livenessProbe", "readinessProbe"):
                    if p not in c:
                        problem(f"{cl}: no {p}")
            image = c.get("image", "")
            if not image or image.endswith(":latest") or ":" not in image.rsplit("/", 1)[-1]:
                problem(f"{cl}: image {image!r} has no pinned tag")
    if count == 0:
        problem("no workloads rendered")


# --------------------------------------------------------------------------
# The stockmesh chart against the deployment contract

def env_map(container):
    out = {}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = ("value", e["value"])
        else:
            vf = e.get("valueFrom", {})
            if "configMapKeyRef" in vf:
                out[e["name"]] = ("configmap", vf["configMapKeyRef"]["name"], vf["configMapKeyRef"]["key"])
            elif "secretKeyRef" in vf:
                out[e["name"]] = ("secret", vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"])
            elif "fieldRef" in vf:
                out[e["name"]] = ("field", vf["fieldRef"]["fieldPath"])
            else:
                out[e["name"]] = ("other",)
    return out


def expected_env(name, svc, *, tracing, tls, db_ref, amqp_ref, shutdown):
    cm = f"{name}-config"
    e = {
        "HTTP_ADDR": ("value", "0.0.0.0:8080"),
        "LOG_FORMAT": ("value", "json"),
        "RUST_LOG": ("configmap", cm, "RUST_LOG"),
        "DATABASE_URL": ("secret",) + db_ref,
        "DATABASE_ACQUIRE_TIMEOUT_MS": ("value", "1000"),
        "SHUTDOWN_DRAIN_MS": ("value", str(shutdown[0])),
        "SHUTDOWN_GRACE_MS": ("value", str(shutdown[1])),
        "REQUEST_TIMEOUT_MS": ("configmap", cm, "REQUEST_TIMEOUT_MS"),
        "POD_NAME": ("field", "metadata.name"),
        "POD_NAMESPACE": ("field", "metadata.namespace"),
        "OTEL_TRACES_SAMPLER": ("value", "parentbased_traceidratio"),
        "OTEL_TRACES_SAMPLER_ARG": ("configmap", cm, "OTEL_TRACES_SAMPLER_ARG"),
        "OTEL_RESOURCE_ATTRIBUTES": ("value", "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"),
        "DEPLOYMENT_ENVIRONMENT": ("configmap", cm, "DEPLOYMENT_ENVIRONMENT"),
    }
    if tracing:
        e["OTEL_EXPORTER_OTLP_ENDPOINT"] = ("configmap", cm, "OTEL_EXPORTER_OTLP_ENDPOINT")
    if svc in GRPC:
        e["GRPC_ADDR"] = ("value", "0.0.0.0:50051")
    if svc == "user":
        e["JWT_PRIVATE_KEY_FILE"] = ("value", "/etc/stockmesh/jwt/private.pem")
        e["STOCKMESH_ADMIN_EMAIL"] = ("configmap", cm, "STOCKMESH_ADMIN_EMAIL")
        e["STOCKMESH_ADMIN_PASSWORD"] = ("secret", f"{name}-admin", "password")
        e["AUTH_COOKIE_SECURE"] = ("value", "true" if tls else "false")
    if svc in JWT:
        e["JWT_PUBLIC_KEY_FILE"] = ("value", "/etc/stockmesh/jwt/public.pem")
        e["JWT_ISSUER"] = ("value", "stockmesh")
        e["JWT_AUDIENCE"] = ("value", "stockmesh-api")
    if svc in ("product", "order"):
        e["INVENTORY_GRPC_URL"] = ("value", f"http://{name}-inventory-grpc:50051")
    if svc == "order":
        e["PRODUCT_GRPC_URL"] = ("value", f"http://{name}-product-grpc:50051")
    if svc in AMQP:
        e["AMQP_URL"] = ("secret",) + amqp_ref
    return e


def expected_web_env(name, *, tracing, shutdown, jaeger_ui_url):
    """The console's environment: a service's without the database, plus the
    public JWT key and the five services' HTTP URLs."""
    e = expected_env(name, WEB, tracing=tracing, tls=False, db_ref=(), amqp_ref=(), shutdown=shutdown)
    del e["DATABASE_URL"], e["DATABASE_ACQUIRE_TIMEOUT_MS"]
    e["JWT_PUBLIC_KEY_FILE"] = ("value", "/etc/stockmesh/jwt/public.pem")
    e["JWT_ISSUER"] = ("value", "stockmesh")
    e["JWT_AUDIENCE"] = ("value", "stockmesh-api")
    for svc in SERVICES:
        e[f"{svc.upper()}_HTTP_URL"] = ("value", f"http://{name}-{svc}:8080")
    if jaeger_ui_url:
        e["JAEGER_UI_URL"] = ("value", jaeger_ui_url)
    return e


def shutdown_numbers(container, label):
    """(SHUTDOWN_DRAIN_MS, SHUTDOWN_GRACE_MS) as the container sets them."""
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    try:
        return int(env["SHUTDOWN_DRAIN_MS"]), int(env["SHUTDOWN_GRACE_MS"])
    except (KeyError, TypeError, ValueError):
        problem(f"{label}: SHUTDOWN_DRAIN_MS / SHUTDOWN_GRACE_MS are not literal numbers")
        return 5000, 20000


def probe_is(probe, kind, *, path=None, period, failure, label):
    if not probe:
        problem(f"{label}: missing")
        return
    if kind == "http":
        hg = probe.get("httpGet") or {}
        if hg.get("path") != path or hg.get("port") != "http":
            problem(f"{label}: want httpGet {path} on port http, got {probe}")
    else:
        g = probe.get("grpc") or {}
        if g.get("port") != 50051 or g.get("service", "") != "":
            problem(f"{label}: want grpc probe on 50051 service \"\", got {probe}")
    if probe.get("periodSeconds") != period or probe.get("failureThreshold") != failure:
        problem(f"{label}: want period {period}s failureThreshold {failure}, got "
                f"{probe.get('periodSeconds')}/{probe.get('failureThreshold')}")


def check_stockmesh(docs, mode, tls, web=True):
    ingress = find(docs, "Ingress")
    name = ingress[0]["metadata"]["name"] if ingress else None
    deps = {d["metadata"]["name"]: d for d in find(docs, "Deployment")}
    if name is None:
        # the release name: <name>-user exists
        name = next(n[: -len("-user")] for n in deps if n.endswith("-user"))
    cm = one(docs, "ConfigMap", f"{name}-config")
    cmdata = (cm or {}).get("data", {})
    tracing = "OTEL_EXPORTER_OTLP_ENDPOINT" in cmdata
    for key in ("RUST_LOG", "REQUEST_TIMEOUT_MS", "OTEL_TRACES_SAMPLER_ARG",
                "DEPLOYMENT_ENVIRONMENT", "STOCKMESH_ADMIN_EMAIL"):
        if key not in cmdata:
            problem(f"ConfigMap {name}-config: no {key}")

    if web:
        check_web(docs, name, deps, tracing)
    else:
        stray = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs
                       if d["metadata"]["name"] == f"{name}-web")
        if stray:
            problem(f"web console disabled but rendered: {stray}")

    for svc in SERVICES:
        d = deps.get(f"{name}-{svc}")
        if d is None:
            problem(f"Deployment/{name}-{svc} missing")
            continue
        label = f"Deployment/{name}-{svc}"
        pod = d["spec"]["template"]["spec"]
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        if not re.fullmatch(r"[0-9a-f]{64}", ann.get("stockmesh.io/config-hash", "")):
            problem(f"{label}: pod template has no stockmesh.io/config-hash annotation")
        psc = pod.get("securityContext", {})
        for k, v in (("runAsNonRoot", True), ("runAsUser", 65532), ("runAsGroup", 65532), ("fsGroup", 65532)):
            if psc.get(k) != v:
                problem(f"{label}: pod securityContext.{k} is {psc.get(k)!r}, want {v!r}")
        if pod.get("automountServiceAccountToken") is not False:
            problem(f"{label}: automountServiceAccountToken is not false")
        # Shutdown (issue 14): the preStop drain, then the grace period, then
        # 5 s for the exit; kubelet must not kill a pod inside its sequence.
        shutdown = shutdown_numbers(pod["containers"][0], label)
        want_grace = -(-sum(shutdown) // 1000) + 5
        if pod.get("terminationGracePeriodSeconds") != want_grace:
            problem(f"{label}: terminationGracePeriodSeconds is "
                    f"{pod.get('terminationGracePeriodSeconds')}, want {want_grace} "
                    f"(drain {shutdown[0]} ms + grace {shutdown[1]} ms + 5 s)")
        pre_stop = ((pod["containers"][0].get("lifecycle") or {}).get("preStop") or {}).get("httpGet") or {}
        if pre_stop.get("path") != "/drain" or pre_stop.get("port") != "http":
            problem(f"{label}: preStop is not httpGet /drain on port http")
        c = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        want_ports = {"http": 8080, **({"grpc": 50051} if svc in GRPC else {})}
        if ports != want_ports:
            problem(f"{label}: ports {ports}, want {want_ports}")
        # environment
        if mode == "managed":
            db_ref = (f"{name}-{svc}-db", "url")
            amqp_ref = (f"{name}-rabbitmq", "url")
        else:
            db_ref = ("stockmesh-database-urls", f"{svc}-url")
            amqp_ref = ("stockmesh-amqp", "url")
        got = env_map(c)
        want = expected_env(name, svc, tracing=tracing, tls=tls, db_ref=db_ref, amqp_ref=amqp_ref,
                            shutdown=shutdown)
        for k, v in want.items():
            if k not in got:
                problem(f"{label}: env {k} missing (contract: {v})")
            elif got[k] != v:
                problem(f"{label}: env {k} is {got[k]}, contract says {v}")
        if not tracing and "OTEL_EXPORTER_OTLP_ENDPOINT" in got:
            problem(f"{label}: OTEL_EXPORTER_OTLP_ENDPOINT set while tracing is off")
        # Behind the Ingress the user service must know its proxies (else all
        # shoppers share the controller's rate-limit bucket); without one it
        # must trust nobody's X-Forwarded-For.
        if svc == "user":
            proxies = got.get("TRUSTED_PROXIES")
            if ingress and (not proxies or proxies[0] != "value" or not proxies[1]):
                problem(f"{label}: Ingress rendered but no literal TRUSTED_PROXIES")
            if not ingress and proxies:
                problem(f"{label}: TRUSTED_PROXIES set without an Ingress")
        elif "TRUSTED_PROXIES" in got:
            problem(f"{label}: TRUSTED_PROXIES is for the user service only")
        for k, v in got.items():
            if v[0] == "value" and re.search(r"(?i)(password|secret|token|key)=|://[^/@]+:[^/@]+@", str(v[1])):
                problem(f"{label}: env {k} carries a credential in plain text")
        # probes
        if svc == "inventory":
            probe_is(c.get("startupProbe"), "grpc", period=2, failure=30, label=f"{label} startupProbe")
            probe_is(c.get("readinessProbe"), "grpc", period=5, failure=2, label=f"{label} readinessProbe")
        else:
            probe_is(c.get("startupProbe"), "http", path="/healthz", period=2, failure=30,
                     label=f"{label} startupProbe")
            probe_is(c.get("readinessProbe"), "http", path="/readyz", period=5, failure=2,
                     label=f"{label} readinessProbe")
        probe_is(c.get("livenessProbe"), "http", path="/healthz", period=10, failure=3,
                 label=f"{label} livenessProbe")
        # JWT key mounts: only user gets the private key
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        if svc in JWT:
            m = mounts.get("/etc/stockmesh/jwt")
            if not m or not m.get("readOnly"):
                problem(f"{label}: JWT keys not mounted read-only at /etc/stockmesh/jwt")
            vol = next((v for v in pod.get("volumes", []) if m and v["name"] == m["name"]), {})
            sec = vol.get("secret", {})
            keys = sorted(i["key"] for i in sec.get("items", []))
            want_keys = ["private.pem", "public.pem"] if svc == "user" else ["public.pem"]
            if sec.get("secretName") != f"{name}-jwt" or keys != want_keys:
                problem(f"{label}: JWT volume is {sec}, want Secret {name}-jwt keys {want_keys}")

        # Services
        s = one(docs, "Service", f"{name}-{svc}")
        if s:
            sp = {p["name"]: p["port"] for p in s["spec"]["ports"]}
            if sp != want_ports or s["spec"].get("type", "ClusterIP") != "ClusterIP":
                problem(f"Service/{name}-{svc}: ports {sp}, want ClusterIP {want_ports}")
        if svc in GRPC:
            h = one(docs, "Service", f"{name}-{svc}-grpc")
            if h and (h["spec"].get("clusterIP") != "None"
                      or {p["name"]: p["port"] for p in h["spec"]["ports"]} != {"grpc": 50051}):
                problem(f"Service/{name}-{svc}-grpc: must be headless with port grpc 50051")
        if find(docs, "PodDisruptionBudget") and not find(docs, "PodDisruptionBudget", f"{name}-{svc}"):
            problem(f"PodDisruptionBudget/{name}-{svc} missing")

    # Ingress: prefix paths, no rewriting
    if ingress:
        ing = ingress[0]
        paths = {}
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                paths[p["path"]] = (p["pathType"], p["backend"]["service"]["name"],
                                    p["backend"]["service"]["port"].get("name"))
        want = {prefix: ("Prefix", f"{name}-{svc}", "http") for svc, prefix in API.items()}
        if web:
            # Everything no /api prefix claims (the longest prefix wins).
            want["/"] = ("Prefix", f"{name}-{WEB}", "http")
        if paths != want:
            problem(f"Ingress/{name}: paths {paths}, want {want}")
        annotations = ing["metadata"].get("annotations") or {}
        if any("rewrite-target" in k for k in annotations):
            problem(f"Ingress/{name}: rewrites paths")

    # Secrets: generated (checked across renders by secrets-generated), never
    # in a ConfigMap, never from stringData.
    secrets = find(docs, "Secret")
    secret_values = set()
    for s in secrets:
        if "stringData" in s:
            problem(f"Secret/{s['metadata']['name']}: uses stringData (values must be generated)")
        for k, v in (s.get("data") or {}).items():
            if k not in NON_SECRET_KEYS:
                secret_values.add(base64.b64decode(v).decode(errors="replace").strip())
    for c in find(docs, "ConfigMap"):
        for k, v in (c.get("data") or {}).items():
            for sv in secret_values:
                if len(sv) >= 8 and sv in v:
                    problem(f"ConfigMap/{c['metadata']['name']} key {k} contains a secret value")
    names = {s["metadata"]["name"] for s in secrets}
    want_secrets = {f"{name}-admin", f"{name}-jwt"}
    if mode == "managed":
        want_secrets |= {f"{name}-postgres", f"{name}-rabbitmq"} | {f"{name}-{s}-db" for s in SERVICES}
    if names != want_secrets:
        problem(f"Secrets {sorted(names)}, want {sorted(want_secrets)}")
    jwt = one(docs, "Secret", f"{name}-jwt")
    if jwt:
        check_jwt(jwt)

    check_test_pod(docs, name, deps)

    # NetworkPolicies: the contract's edges (when enabled)
    if find(docs, "NetworkPolicy"):
        check_netpol(docs, name, mode, web)


def check_web(docs, name, deps, tracing):
    """The web console: a service's pod (probes, drain, security, /tmp) with
    the public JWT key only, no database or broker, the five services' URLs;
    its Service and disruption budget."""
    label = f"Deployment/{name}-{WEB}"
    d = deps.get(f"{name}-{WEB}")
    if d is None:
        problem(f"{label} missing (services.web.enabled is the default)")
        return
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    if c["name"] != WEB or not re.split(r"[:@]", c.get("image", "").rpartition("/")[2])[0] == WEB:
        problem(f"{label}: container {c['name']} image {c.get('image')!r}, want the web image")
    ann = d["spec"]["template"]["metadata"].get("annotations", {})
    if not re.fullmatch(r"[0-9a-f]{64}", ann.get("stockmesh.io/config-hash", "")):
        problem(f"{label}: pod template has no stockmesh.io/config-hash annotation")
    psc = pod.get("securityContext", {})
    if psc.get("runAsUser") != 65532 or pod.get("automountServiceAccountToken") is not False:
        problem(f"{label}: pod securityContext {psc}, automountServiceAccountToken "
                f"{pod.get('automountServiceAccountToken')}")
    shutdown = shutdown_numbers(c, label)
    want_grace = -(-sum(shutdown) // 1000) + 5
    if pod.get("terminationGracePeriodSeconds") != want_grace:
        problem(f"{label}: terminationGracePeriodSeconds is {pod.get('terminationGracePeriodSeconds')}, "
                f"want {want_grace}")
    pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("httpGet") or {}
    if pre_stop.get("path") != "/drain" or pre_stop.get("port") != "http":
        problem(f"{label}: preStop is not httpGet /drain on port http")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports != {"http": 8080}:
        problem(f"{label}: ports {ports}, want {{'http': 8080}}")
    probe_is(c.get("startupProbe"), "http", path="/healthz", period=2, failure=30, label=f"{label} startupProbe")
    probe_is(c.get("readinessProbe"), "http", path="/readyz", period=5, failure=2, label=f"{label} readinessProbe")
    probe_is(c.get("livenessProbe"), "http", path="/healthz", period=10, failure=3, label=f"{label} livenessProbe")
    got = env_map(c)
    jaeger = got.get("JAEGER_UI_URL", ("value", ""))[1] if got.get("JAEGER_UI_URL", ("",))[0] == "value" else None
    want = expected_web_env(name, tracing=tracing, shutdown=shutdown, jaeger_ui_url=jaeger)
    if got != want:
        for k in sorted(set(got) | set(want)):
            if got.get(k) != want.get(k):
                problem(f"{label}: env {k} is {got.get(k)}, contract says {want.get(k)}")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    m = mounts.get("/etc/stockmesh/jwt")
    vol = next((v for v in pod.get("volumes", []) if m and v["name"] == m["name"]), {})
    sec = vol.get("secret", {})
    keys = sorted(i["key"] for i in sec.get("items", []))
    if not m or not m.get("readOnly") or sec.get("secretName") != f"{name}-jwt" or keys != ["public.pem"]:
        problem(f"{label}: want Secret {name}-jwt key public.pem (only) mounted read-only, got {sec}")
    if "/tmp" not in mounts:
        problem(f"{label}: /tmp is not a volume (read-only root filesystem)")
    s = one(docs, "Service", f"{name}-{WEB}")
    if s and {p["name"]: p["port"] for p in s["spec"]["ports"]} != {"http": 8080}:
        problem(f"Service/{name}-{WEB}: ports {s['spec']['ports']}, want http 8080")
    if find(docs, "PodDisruptionBudget") and not find(docs, "PodDisruptionBudget", f"{name}-{WEB}"):
        problem(f"PodDisruptionBudget/{name}-{WEB} missing")


def check_test_pod(docs, name, deps):
    """`helm test`: the project's own loadgen image (same registry and
    repository as the services, no external image), in smoke mode, against
    every service's own Service, with the first admin from the chart's
    ConfigMap and generated Secret."""
    tests = [d for d in find(docs, "Pod")
             if (d["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"]
    if [t["metadata"]["name"] for t in tests] != [f"{name}-test-api"]:
        problem(f"helm test pods {[t['metadata']['name'] for t in tests]}, want [{name}-test-api]")
        return
    pod = tests[0]
    label = f"Pod/{name}-test-api"
    spec = pod["spec"]
    if pod["metadata"]["labels"].get("stockmesh.io/api-client") != "true":
        problem(f"{label}: no stockmesh.io/api-client label (the NetworkPolicies would block it)")
    if spec.get("automountServiceAccountToken") is not False:
        problem(f"{label}: automountServiceAccountToken is not false")
    if len(spec["containers"]) != 1:
        problem(f"{label}: {len(spec['containers'])} containers, want 1")
        return
    c = spec["containers"][0]
    image = c.get("image", "")
    user_image = ((deps.get(f"{name}-user") or {}).get("spec", {}).get("template", {})
                  .get("spec", {}).get("containers", [{}])[0].get("image", ""))
    repo, _, last = image.rpartition("/")
    if re.split(r"[:@]", last)[0] != "loadgen":
        problem(f"{label}: image {image!r} is not the project's loadgen image")
    if repo != user_image.rpartition("/")[0]:
        problem(f"{label}: image {image!r} is not from the services' repository "
                f"({user_image.rpartition('/')[0]!r}): an external image")
    for job in find(docs, "Job"):
        if job["metadata"]["name"].startswith(f"{name}-loadgen"):
            job_image = job["spec"]["template"]["spec"]["containers"][0].get("image")
            if job_image != image:
                problem(f"{label}: image {image!r} differs from the loadgen Job's {job_image!r}")
    user_pod = (deps.get(f"{name}-user") or {}).get("spec", {}).get("template", {}).get("spec", {})
    if spec.get("imagePullSecrets") != user_pod.get("imagePullSecrets"):
        problem(f"{label}: imagePullSecrets {spec.get('imagePullSecrets')}, "
                f"the services use {user_pod.get('imagePullSecrets')}")
    args = c.get("args") or []
    if c.get("command") or "--smoke" not in args:
        problem(f"{label}: does not run `loadgen --smoke` (command {c.get('command')}, args {args})")
    env = env_map(c)
    for svc in SERVICES:
        var = f"LOADGEN_{svc.upper()}_URL"
        if env.get(var) != ("value", f"http://{name}-{svc}:8080"):
            problem(f"{label}: env {var} is {env.get(var)}, want http://{name}-{svc}:8080")
    want_admin = {
        "STOCKMESH_ADMIN_EMAIL": ("configmap", f"{name}-config", "STOCKMESH_ADMIN_EMAIL"),
        "STOCKMESH_ADMIN_PASSWORD": ("secret", f"{name}-admin", "password"),
    }
    for k, v in want_admin.items():
        if env.get(k) != v:
            problem(f"{label}: env {k} is {env.get(k)}, want {v}")


def check_jwt(secret):
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    priv, pub = data.get("private.pem", ""), data.get("public.pem", "")
    if "BEGIN PRIVATE KEY" not in priv or "BEGIN PUBLIC KEY" not in pub:
        problem("Secret jwt: private.pem/public.pem are not PEM keys")
        return
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as f:
        f.write(priv)
        f.flush()
        out = subprocess.run(["openssl", "pkey", "-in", f.name, "-pubout"], capture_output=True, text=True)
        text = subprocess.run(["openssl", "pkey", "-in", f.name, "-noout", "-text"],
                              capture_output=True, text=True).stdout
    if out.returncode != 0:
        problem(f"Secret jwt: private.pem does not parse: {out.stderr.strip()}")
    elif out.stdout.strip() != pub.strip():
        problem("Secret jwt: public.pem is not the public key of private.pem")
    if "ED25519" not in text.upper():
        problem("Secret jwt: key is not Ed25519")


def check_netpol(docs, name, mode, web=True):
    pols = {p["metadata"]["name"]: p for p in find(docs, "NetworkPolicy")}
    deny = pols.get(f"{name}-default-deny")
    if not deny or deny["spec"].get("ingress") or deny["spec"].get("egress") \
            or sorted(deny["spec"]["policyTypes"]) != ["Egress", "Ingress"]:
        problem("NetworkPolicy default-deny missing or not denying")

    def ports_of(rules):
        return {(p.get("port"), p.get("protocol", "TCP")) for r in rules for p in r.get("ports", [])}

    def from_components(rule):
        return {f.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                for f in rule.get("from", rule.get("to", []))}

    for svc in SERVICES:
        p = pols.get(f"{name}-{svc}")
        if not p:
            problem(f"NetworkPolicy/{name}-{svc} missing")
            continue
        ing, eg = p["spec"].get("ingress", []), p["spec"].get("egress", [])
        grpc_clients = {"product": {"order"}, "inventory": {"order", "product"}}.get(svc, set())
        got_clients = set()
        for r in ing:
            if any(pt.get("port") == 50051 for pt in r.get("ports", [])):
                got_clients |= from_components(r)
        if got_clients != grpc_clients:
            problem(f"NetworkPolicy/{name}-{svc}: gRPC clients {got_clients}, contract {grpc_clients}")
        ingress_ctrl = any(
            any("namespaceSelector" in f and "ingress" in str(f) for f in r.get("from", [])) for r in ing)
        if ingress_ctrl != (svc in API):
            problem(f"NetworkPolicy/{name}-{svc}: ingress controller access is {ingress_ctrl}, "
                    f"contract {svc in API}")
        eg_ports = ports_of(eg)
        want = {(53, "UDP"), (53, "TCP")}
        want.add((5432 if mode == "managed" else 5432, "TCP"))
        if svc in AMQP:
            want.add((5672 if mode == "managed" else 5671, "TCP"))
        if svc in ("order", "product"):
            want.add((50051, "TCP"))
        missing = want - eg_ports
        extra = eg_ports - want - {(4317, "TCP")}
        if missing or extra:
            problem(f"NetworkPolicy/{name}-{svc}: egress ports missing {missing}, not in contract {extra}")
        upstreams = {"order": {"product", "inventory"}, "product": {"inventory"}}.get(svc, set())
        got_up = set()
        for r in eg:
            if any(pt.get("port") == 50051 for pt in r.get("ports", [])):
                got_up |= from_components(r)
        if got_up != upstreams:
            problem(f"NetworkPolicy/{name}-{svc}: gRPC upstreams {got_up}, contract {upstreams}")
        # The web console's system page reads every service's /readyz and
        # /metrics on 8080.
        admits_web = any(WEB in from_components(r) and (8080, "TCP") in ports_of([r]) for r in ing)
        if admits_web != web:
            problem(f"NetworkPolicy/{name}-{svc}: ingress on 8080 from the web console is {admits_web}, "
                    f"want {web}")
        # The `helm test` pod (label stockmesh.io/api-client) reads every
        # service's /readyz, inventory's included.
        if not any(any((f.get("podSelector") or {}).get("matchLabels", {}).get("stockmesh.io/api-client") == "true"
                       and "namespaceSelector" not in f for f in r.get("from", []))
                   and (8080, "TCP") in ports_of([r]) for r in ing):
            problem(f"NetworkPolicy/{name}-{svc}: no ingress on 8080 from the api-client pods (helm test)")

    if web:
        p = pols.get(f"{name}-{WEB}")
        if not p:
            problem(f"NetworkPolicy/{name}-{WEB} missing")
        else:
            ing, eg = p["spec"].get("ingress", []), p["spec"].get("egress", [])
            ingress_ctrl = any(any("namespaceSelector" in f and "ingress" in str(f) for f in r.get("from", []))
                               for r in ing)
            if not ingress_ctrl or ports_of(ing) != {(8080, "TCP")}:
                problem(f"NetworkPolicy/{name}-{WEB}: ingress {ing}, want the ingress controller "
                        "(and Prometheus) on 8080 only")
            extra = ports_of(eg) - {(53, "UDP"), (53, "TCP"), (8080, "TCP"), (4317, "TCP")}
            if extra:
                problem(f"NetworkPolicy/{name}-{WEB}: egress ports {extra} not in the contract "
                        "(no database, broker or gRPC)")
            reach = set()
            for r in eg:
                if (8080, "TCP") in ports_of([r]):
                    reach |= from_components(r)
            if reach != set(SERVICES):
                problem(f"NetworkPolicy/{name}-{WEB}: egress on 8080 to {sorted(c for c in reach if c)}, "
                        f"the system page needs all of {SERVICES}")

    clients = pols.get(f"{name}-api-clients")
    if not clients:
        problem(f"NetworkPolicy/{name}-api-clients missing")
    else:
        reach = set()
        for r in clients["spec"].get("egress", []):
            if (8080, "TCP") in ports_of([r]):
                reach |= from_components(r)
        if reach != set(SERVICES):
            problem(f"NetworkPolicy/{name}-api-clients: egress on 8080 to {sorted(c for c in reach if c)}, "
                    f"the helm test needs all of {SERVICES}")


# --------------------------------------------------------------------------

def check_operator(docs, rules_file):
    deps = find(docs, "Deployment")
    if len(deps) != 1:
        problem(f"operator chart: {len(deps)} Deployments, want 1")
        return
    c = deps[0]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if ports != {"http": 8080}:
        problem(f"operator: ports {ports}, want http 8080")
    if not c["image"].split("/")[-1].startswith("stockmesh-operator:"):
        problem(f"operator: image {c['image']} is not stockmesh-operator")
    probe_is(c.get("livenessProbe"), "http", path="/healthz", period=10, failure=3, label="operator livenessProbe")
    probe_is(c.get("readinessProbe"), "http", path="/readyz", period=5, failure=2, label="operator readinessProbe")
    with open(rules_file) as f:
        want = yaml.safe_load(f)

    def rules_ok(role, label):
        if role.get("rules") != want:
            problem(f"{label} rules differ from files/clusterrole-rules.yaml")
        for r in role.get("rules", []):
            if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
                problem(f"{label}: wildcard rule {r}")
            if {"escalate", "bind", "impersonate"} & set(r.get("verbs", [])):
                problem(f"{label}: privilege-escalating verb in {r}")

    sa = find(docs, "ServiceAccount")
    sa_name = sa[0]["metadata"]["name"] if sa else None
    check_leader_election(docs, deps[0], c, sa_name)
    # The leader-election Role is checked above; the rest are the
    # reconciler's.
    lease_roles = {r["metadata"]["name"] for r in find(docs, "Role") if grants_leases(r)}

    def reconciler(kind):
        if kind == "RoleBinding":
            return [b for b in find(docs, kind) if b["roleRef"]["name"] not in lease_roles]
        return [r for r in find(docs, kind) if r["metadata"]["name"] not in lease_roles]

    watched = [a.split("=", 1)[1] for a in c.get("args", []) if a.startswith("--namespace=")]
    if watched:
        # Namespaced install: a Role + RoleBinding in each watched namespace
        # and nothing cluster-wide.
        namespaces = sorted(watched[0].split(","))
        if find(docs, "ClusterRole") or find(docs, "ClusterRoleBinding"):
            problem(f"operator watching {namespaces} still renders a ClusterRole/ClusterRoleBinding")
        roles = {r["metadata"].get("namespace"): r for r in reconciler("Role")}
        bindings = {b["metadata"].get("namespace"): b for b in reconciler("RoleBinding")}
        if sorted(roles) != namespaces or sorted(bindings) != namespaces:
            problem(f"operator: Roles in {sorted(roles)}, RoleBindings in {sorted(bindings)}, "
                    f"want one of each in {namespaces}")
        for ns, role in roles.items():
            rules_ok(role, f"operator Role in {ns}")
        for ns, b in bindings.items():
            if b["roleRef"]["kind"] != "Role" or b["roleRef"]["name"] != roles.get(ns, {}).get("metadata", {}).get("name"):
                problem(f"operator RoleBinding in {ns} does not bind its Role")
            if not sa_name or b["subjects"][0]["name"] != sa_name:
                problem(f"operator RoleBinding in {ns} does not bind the operator's ServiceAccount")
    else:
        roles = find(docs, "ClusterRole")
        if len(roles) != 1:
            problem(f"operator chart: {len(roles)} ClusterRoles, want 1")
        else:
            rules_ok(roles[0], "operator ClusterRole")
        binding = find(docs, "ClusterRoleBinding")
        if not binding or not sa_name or binding[0]["subjects"][0]["name"] != sa_name:
            problem("operator: ClusterRoleBinding does not bind the operator's ServiceAccount")
        if reconciler("Role") or reconciler("RoleBinding"):
            problem("operator: cluster-wide install renders namespaced Roles too")
    if not any(s["metadata"]["name"].endswith("-metrics") for s in find(docs, "Service")):
        problem("operator: no metrics Service")


def grants_leases(role):
    return any("leases" in r.get("resources", []) for r in role.get("rules", []))


# What kube-lease-manager sends: it reads the Lease, creates it once, and
# takes/renews/releases it with patches (operator/src/rbac.rs LEASE_RULES).
LEASE_VERBS = {"get", "create", "patch"}


def check_leader_election(docs, dep, c, sa_name):
    """Leader election (issue 16 item 4): a Role in the operator's namespace
    only, limited to the one Lease; more than one replica only with it, and
    then a PodDisruptionBudget."""
    args = c.get("args", [])
    flag = [a.split("=", 1)[1] for a in args if a.startswith("--leader-election")]
    enabled = not flag or flag[-1] == "true"  # the binary's default is on
    replicas = dep["spec"].get("replicas", 1)
    strategy = dep["spec"].get("strategy", {}).get("type")
    for role in find(docs, "ClusterRole"):
        if grants_leases(role):
            problem(f"ClusterRole/{role['metadata']['name']} grants Leases cluster-wide "
                    "(leader election needs a Role in the operator's namespace)")
    lease_roles = [r for r in find(docs, "Role") if grants_leases(r)]
    if not enabled:
        if replicas > 1:
            problem(f"operator: {replicas} replicas without leader election would all reconcile")
        if strategy != "Recreate":
            problem(f"operator without leader election: strategy {strategy}, want Recreate")
        if lease_roles:
            problem("operator without leader election still grants Leases")
        return
    names = [a.split("=", 1)[1] for a in args if a.startswith("--lease-name=")]
    if not names:
        problem("operator: leader election without --lease-name")
        return
    lease = names[-1]
    if len(lease_roles) != 1:
        problem(f"operator: leader election with {len(lease_roles)} namespaced Lease Roles, want 1")
        return
    role = lease_roles[0]
    ns = role["metadata"].get("namespace")
    if not ns:
        problem(f"Role/{role['metadata']['name']}: no namespace (the Lease's, the operator's own)")
    verbs = set()
    for r in role.get("rules", []):
        if r.get("apiGroups") != ["coordination.k8s.io"] or r.get("resources") != ["leases"]:
            problem(f"Role/{role['metadata']['name']}: rule {r} grants more than Leases")
        rv = set(r.get("verbs", []))
        verbs |= rv
        if rv - {"create"} and r.get("resourceNames") != [lease]:
            problem(f"Role/{role['metadata']['name']}: {sorted(rv)} not limited to the Lease {lease} "
                    f"(resourceNames {r.get('resourceNames')})")
    if verbs != LEASE_VERBS:
        problem(f"Role/{role['metadata']['name']}: verbs {sorted(verbs)}, want {sorted(LEASE_VERBS)}")
    bindings = [b for b in find(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    if len(bindings) != 1 or bindings[0]["roleRef"]["kind"] != "Role":
        problem(f"Role/{role['metadata']['name']}: not bound once by a RoleBinding")
    else:
        b = bindings[0]
        subject = b["subjects"][0]
        if b["metadata"].get("namespace") != ns:
            problem(f"RoleBinding/{b['metadata']['name']} in {b['metadata'].get('namespace')}, its Role in {ns}")
        if not sa_name or subject["name"] != sa_name:
            problem(f"RoleBinding/{b['metadata']['name']} does not bind the operator's ServiceAccount")
        elif subject.get("namespace") != ns:
            problem(f"the Lease Role is in {ns}, the operator (its ServiceAccount) in {subject.get('namespace')}")
    env = {e["name"]: e for e in c.get("env", [])}
    pod_ns = env.get("POD_NAMESPACE", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if pod_ns != "metadata.namespace" and not any(a.startswith("--lease-namespace=") for a in args):
        problem("operator: the Lease's namespace is neither POD_NAMESPACE (downward API) nor --lease-namespace")
    if replicas > 1:
        pdbs = [p for p in find(docs, "PodDisruptionBudget")
                if p["spec"].get("selector", {}).get("matchLabels")
                == dep["spec"]["selector"]["matchLabels"]]
        if len(pdbs) != 1 or pdbs[0]["spec"].get("minAvailable", 0) < 1:
            problem(f"operator with {replicas} replicas: no PodDisruptionBudget keeping one")


def secrets_generated(a_docs, b_docs):
    """Two renders with the same values: every secret value must differ."""
    a = {s["metadata"]["name"]: s.get("data", {}) for s in find(a_docs, "Secret")}
    b = {s["metadata"]["name"]: s.get("data", {}) for s in find(b_docs, "Secret")}
    if not a:
        problem("no Secrets rendered")
    for name, data in a.items():
        for k, v in data.items():
            if k in NON_SECRET_KEYS:
                continue
            if b.get(name, {}).get(k) == v:
                problem(f"Secret/{name} key {k}: same value in two renders: not generated")


def config_rolls(a_docs, b_docs):
    """Renders with different configuration: every service pod template's config hash changes."""
    a = {d["metadata"]["name"]: d for d in find(a_docs, "Deployment")}
    for d in find(b_docs, "Deployment"):
        n = d["metadata"]["name"]
        ha = a[n]["spec"]["template"]["metadata"].get("annotations", {}).get("stockmesh.io/config-hash")
        hb = d["spec"]["template"]["metadata"].get("annotations", {}).get("stockmesh.io/config-hash")
        if n.endswith("-jaeger"):
            continue
        if not ha or ha == hb:
            problem(f"Deployment/{n}: config-hash does not change with the configuration")


def strictify(schema):
    """A CRD structural schema as JSON Schema that rejects unknown fields
    (what the API server's strict field validation does)."""
    if isinstance(schema, dict):
        out = {k: strictify(v) for k, v in schema.items()
               if not k.startswith("x-kubernetes-") or k == "x-kubernetes-preserve-unknown-fields"}
        if schema.get("type") == "object" and "properties" in schema \
                and not schema.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in schema:
            out["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            out.pop("type", None)
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        out.pop("x-kubernetes-preserve-unknown-fields", None)
        return out
    if isinstance(schema, list):
        return [strictify(v) for v in schema]
    return schema


def cr_against_crd(crd_file, cr_files):
    import jsonschema

    with open(crd_file) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d)
    kind = crd["spec"]["names"]["kind"]
    versions = {f"{crd['spec']['group']}/{v['name']}": v["schema"]["openAPIV3Schema"]
                for v in crd["spec"]["versions"]}
    checked = 0
    for path in cr_files:
        for doc in load(path):
            if doc.get("kind") != kind:
                continue
            schema = versions.get(doc.get("apiVersion"))
            if schema is None:
                problem(f"{path}: {kind} apiVersion {doc.get('apiVersion')} not served by the CRD")
                continue
            schema = strictify(schema)
            schema.setdefault("properties", {})
            for k in ("apiVersion", "kind", "metadata"):
                schema["properties"].setdefault(k, {})
            v = jsonschema.Draft7Validator(schema)
            for err in sorted(v.iter_errors(doc), key=lambda e: list(e.path)):
                problem(f"{path}: {kind}/{doc['metadata'].get('name')}: "
                        f"{'.'.join(map(str, err.path)) or '<root>'}: {err.message}")
            checked += 1
    if checked == 0:
        problem(f"no {kind} found in {cr_files}")


def rbac_equal(rules_file, rbac_file):
    with open(rules_file) as f:
        chart_rules = yaml.safe_load(f)
    roles = [d for d in load(rbac_file) if d.get("kind") == "ClusterRole"]
    if len(roles) != 1:
        problem(f"{rbac_file}: {len(roles)} ClusterRoles, want 1")
        return

    def norm(rules):
        return sorted(
            (tuple(sorted(r.get("apiGroups", []))), tuple(sorted(r.get("resources", []))),
             tuple(sorted(r.get("resourceNames", []))), tuple(sorted(r.get("verbs", []))))
            for r in rules)

    if norm(roles[0].get("rules", [])) != norm(chart_rules):
        problem(f"chart ClusterRole rules differ from {rbac_file} (run scripts/sync-operator-chart.sh)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["stockmesh", "operator", "secrets-generated", "config-rolls",
                                     "cr-against-crd", "rbac-equal"])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--mode", choices=["managed", "external"], default="managed")
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--no-web", action="store_true", help="services.web.enabled=false: no console")
    ap.add_argument("--rules", default="charts/stockmesh-operator/files/clusterrole-rules.yaml")
    a = ap.parse_args()
    if a.what == "stockmesh":
        docs = load(a.files[0])
        check_pods(docs)
        check_stockmesh(docs, a.mode, a.tls, web=not a.no_web)
    elif a.what == "operator":
        docs = load(a.files[0])
        check_pods(docs)
        check_operator(docs, a.rules)
    elif a.what == "secrets-generated":
        secrets_generated(load(a.files[0]), load(a.files[1]))
    elif a.what == "config-rolls":
        config_rolls(load(a.files[0]), load(a.files[1]))
    elif a.what == "cr-against-crd":
        cr_against_crd(a.files[0], a.files[1:])
    elif a.what == "rbac-equal":
        rbac_equal(a.files[0], a.files[1])
    for p in problems:
        print(f"  - {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    try:
        main()
    except (OSError, yaml.YAMLError, KeyError, StopIteration, TypeError) as e:
        print(f"  - cannot check: {type(e).__name__}: {e} (did the render fail?)")
        sys.exit(1)
