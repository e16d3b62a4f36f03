"""Offline checks of the deployment files, run by scripts/validate-deploy.sh.

Schemas say a file is well formed; the checks here say it does what crmsync
needs: the services scripts/services.sh relies on are intact, tiers can be
scaled, probes and drain times agree, KEDA watches the queues the tiers
really consume (unacked included), every dashboard query names a metric the
tiers export. Each failure is printed with the file it concerns; the exit
status is 1 if any check failed.

Usage: validate_deploy.py --kubectl PATH --promtool PATH
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent
FAILURES: list[str] = []
CHECKS = 0

TIERS = ("producer", "matcher", "applier")
SERVICES = ("postgres", "redis", "rabbitmq")
HTTP_PORT = 9464
# The Kubernetes versions the manifests must be valid for: an old one still
# common in managed clusters, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.30.0", "1.37.0")

# Config keys the deployment may set before deploy/crmsync.example.toml lists
# them (none now: keep this empty unless a key is being added in steps).
ANNOUNCED_KEYS: set[str] = set()

# The metrics the tiers export (the list) and their types.
METRICS = {
    "crmsync_records_total": "counter",
    "crmsync_stage_duration_seconds": "histogram",
    "crmsync_sync_lag_seconds": "histogram",
    "crmsync_queue_depth": "gauge",
    "crmsync_batch_backlog_records": "gauge",
    "crmsync_batch_budget_records_per_hour": "gauge",
    "crmsync_batch_used_last_hour_records": "gauge",
    "crmsync_batch_eta_seconds": "gauge",
    "crmsync_lock_contention_total": "counter",
    "crmsync_sync_errors_total": "counter",
    "crmsync_ready": "gauge",
}

# What scripts/services.sh and the integration tests rely on: do not change
# these without changing them too.
EXPECTED_SERVICES = {
    "postgres": {
        "ports": ["127.0.0.1:5432:5432"],
        "healthcheck": {"test": ["CMD-SHELL", "pg_isready -U crmsync -d crmsync"], "interval": "2s", "timeout": "5s", "retries": 30},
        "environment": {"POSTGRES_USER": "crmsync", "POSTGRES_PASSWORD": "crmsync", "POSTGRES_DB": "crmsync"},
    },
    "redis": {
        "ports": ["127.0.0.1:6379:6379"],
        "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "2s", "timeout": "5s", "retries": 30},
    },
    "rabbitmq": {
        "ports": ["127.0.0.1:5672:5672", "127.0.0.1:15672:15672"],
        "healthcheck": {"test": ["CMD", "rabbitmq-diagnostics", "-q", "check_port_connectivity"], "interval": "5s", "timeout": "10s", "retries": 30},
    },
}


def check(ok: bool, where: str, what: str) -> bool:
    global CHECKS
    CHECKS += 1
    if not ok:
        FAILURES.append(f"{where}: {what}")
    return ok


def duration_secs(v) -> float:
    """A compose duration ('45s', '1m30s') in seconds."""
    if isinstance(v, (int, float)):
        return float(v)
    total, unit = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    for num, u in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(v)):
        total += float(num) * unit[u]
    return total


def config_keys() -> set[str]:
    """section.key for every key deploy/crmsync.example.toml documents
    (commented-out ones included), plus the announced ones."""
    keys, section = set(ANNOUNCED_KEYS), None
    for line in (ROOT / "deploy/crmsync.example.toml").read_text().splitlines():
        if m := re.match(r"^\[([a-z_]+)\]", line):
            section = m.group(1)
        elif section and (m := re.match(r"^#?\s*([a-z_]+)\s*[=:]", line)):
            keys.add(f"{section}.{m.group(1)}")
    return keys


KNOWN_KEYS = config_keys()


def check_env_keys(env: dict, where: str) -> None:
    for name in env:
        if name.startswith("CRMSYNC_") and name != "CRMSYNC_CONFIG" and not name.startswith("CRMSYNC_SANDBOX_CLIENT"):
            key = name[len("CRMSYNC_"):].lower().replace("__", ".", 1)
            check(key in KNOWN_KEYS, where, f"{name} is no configuration key ({key}); the config refuses unknown keys")


def check_secret_toml(text: str, where: str) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        check(False, where, f"not TOML: {e}")
        return
    for section, values in doc.items():
        for key in values:
            check(f"{section}.{key}" in KNOWN_KEYS, where, f"{section}.{key} is no configuration key")
    for section in ("database", "amqp", "redis"):
        check("url" in doc.get(section, {}), where, f"[{section}] url missing")


# --- compose -----------------------------------------------------------------

def check_compose() -> None:
    where = "docker-compose.yml"
    doc = yaml.safe_load((ROOT / where).read_text())
    services = doc.get("services", {})
    names = set(services)

    for name, expected in EXPECTED_SERVICES.items():
        svc = services.get(name)
        if not check(svc is not None, where, f"service {name} missing (scripts/services.sh starts it)"):
            continue
        for key, value in expected.items():
            check(svc.get(key) == value, where, f"{name}.{key} is {svc.get(key)!r}; scripts/services.sh and the tests rely on {value!r}")
        check("profiles" not in svc, where, f"{name} must not be behind a profile: `docker compose up -d --wait postgres redis rabbitmq` names it")
        check("depends_on" not in svc, where, f"{name} must depend on nothing, so the services-only command starts only the services")
    services_sh = (ROOT / "scripts/services.sh").read_text()
    check("docker compose up -d --wait postgres redis rabbitmq" in services_sh, "scripts/services.sh", "no longer runs the command this compose file is checked for")

    for name, svc in services.items():
        image = svc.get("image", "")
        check(bool(image) or "build" in svc, where, f"{name} has neither image nor build")
        if image:
            tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
            check(tag not in ("", "latest"), where, f"{name}: image {image} is not pinned to a version")
        if image.startswith("crmsync:"):
            check("build" in svc, where, f"{name}: {image} is built here, give it a build section")
        for port in svc.get("ports", []):
            check(str(port).startswith("127.0.0.1:"), where, f"{name}: port {port} is not bound to loopback")
        deps = svc.get("depends_on", {})
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            if not check(dep in names, where, f"{name} depends on {dep}, which is no service"):
                continue
            cond = spec.get("condition", "service_started")
            check(cond in ("service_started", "service_healthy", "service_completed_successfully"), where, f"{name}: unknown condition {cond}")
            target = services[dep]
            if cond == "service_healthy":
                hc = target.get("healthcheck", {})
                check(bool(hc) and not hc.get("disable"), where, f"{name} waits for {dep} to be healthy, but {dep} has no health check")
            if cond == "service_completed_successfully":
                check(target.get("restart", "no") == "no", where, f"{name} waits for {dep} to complete, but {dep} restarts")
            check(not set(target.get("profiles", [])) - set(svc.get("profiles", [])), where,
                  f"{name} depends on {dep}, which is behind a profile {name} is not in")
        for secret in svc.get("secrets", []):
            sname = secret if isinstance(secret, str) else secret.get("source")
            check(sname in doc.get("secrets", {}), where, f"{name} uses secret {sname}, which is not declared")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                check((ROOT / src).exists(), where, f"{name} mounts {src}, which does not exist")

    for sname, spec in doc.get("secrets", {}).items():
        if "file" in spec:
            path = ROOT / spec["file"]
            if check(path.exists(), where, f"secret {sname}: {spec['file']} does not exist") and path.suffix == ".toml":
                check_secret_toml(path.read_text(), spec["file"])

    otel_ports = set()
    for tier in TIERS:
        svc = services.get(tier)
        if not check(svc is not None, where, f"tier {tier} missing"):
            continue
        check("container_name" not in svc, where, f"{tier} has a container_name: `--scale {tier}=3` would fail")
        check(not svc.get("ports"), where, f"{tier} publishes host ports: `--scale {tier}=3` would collide")
        check("profiles" not in svc, where, f"{tier} must start with a plain `docker compose up`")
        check(svc.get("command") == [tier], where, f"{tier} does not run `crmsync {tier}`")
        env = svc.get("environment", {})
        check_env_keys(env, f"{where} {tier}")
        grace = float(env.get("CRMSYNC_SHUTDOWN__GRACE_SECS", 30))
        check(duration_secs(svc.get("stop_grace_period", "10s")) > grace, where,
              f"{tier}: stop_grace_period must exceed CRMSYNC_SHUTDOWN__GRACE_SECS ({grace:g} s) or Docker kills the drain")
        check(env.get("OTEL_SERVICE_NAME") == f"crmsync-{tier}", where, f"{tier}: OTEL_SERVICE_NAME should be crmsync-{tier}")
        listen = env.get("CRMSYNC_TELEMETRY__HTTP_LISTEN", f"0.0.0.0:{HTTP_PORT}")
        check(listen == f"0.0.0.0:{HTTP_PORT}", where, f"{tier} listens on {listen}; Prometheus scrapes :{HTTP_PORT}")
        m = re.match(r"^https?://([^:/]+):(\d+)", env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
        if check(m is not None, where, f"{tier}: OTEL_EXPORTER_OTLP_ENDPOINT missing"):
            check(m.group(1) in names, where, f"{tier}: the OTLP endpoint host {m.group(1)} is no service")
            otel_ports.add(m.group(2))
        test = " ".join(map(str, svc.get("healthcheck", {}).get("test", [])))
        check("/readyz" in test and str(HTTP_PORT) in test, where, f"{tier}: the health check should ask /readyz on {HTTP_PORT}")
        deps = svc.get("depends_on", {})
        check(deps.get("migrate", {}).get("condition") == "service_completed_successfully", where,
              f"{tier} must wait for migrate to complete")
        for s in SERVICES:
            check(deps.get(s, {}).get("condition") == "service_healthy", where, f"{tier} must wait for {s} to be healthy")
    check(otel_ports == {"4318"}, where, f"tiers should export OTLP/HTTP on 4318, found {sorted(otel_ports)}")
    check(services.get("migrate", {}).get("command") == ["migrate"], where, "migrate does not run `crmsync migrate`")

    # Prometheus scrapes every tier by compose DNS.
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped = {}
    for job in prom.get("scrape_configs", []):
        for sd in job.get("dns_sd_configs", []):
            for n in sd.get("names", []):
                scraped[n] = sd.get("port")
                check(n in names, "deploy/prometheus/prometheus.yml", f"job {job['job_name']} looks up {n}, which is no compose service")
    for tier in TIERS:
        check(scraped.get(tier) == HTTP_PORT, "deploy/prometheus/prometheus.yml",
              f"{tier} is not scraped with dns_sd_configs on port {HTTP_PORT} (scaled replicas would be missed)")

    # Grafana provisioning matches what compose mounts.
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    urls = [d.get("url", "") for d in ds.get("datasources", [])]
    check(any(re.match(r"^http://prometheus:9090/?$", u) for u in urls), "deploy/grafana/provisioning/datasources/prometheus.yml",
          "no data source at http://prometheus:9090")
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/crmsync.yml").read_text())
    mounts = {v.split(":")[1]: v.split(":")[0] for v in services.get("grafana", {}).get("volumes", [])}
    for p in prov.get("providers", []):
        path = p.get("options", {}).get("path")
        check(path in mounts, "deploy/grafana/provisioning/dashboards/crmsync.yml", f"dashboards path {path} is not mounted by compose")


# --- kubernetes ----------------------------------------------------------------

def kustomize(kubectl: str, path: str) -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(ROOT / path)], capture_output=True, text=True)
    if not check(out.returncode == 0, path, f"kubectl kustomize failed: {out.stderr.strip()}"):
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate_k8s(doc: dict, where: str, keda_schema: dict) -> None:
    kind, api = doc.get("kind"), doc.get("apiVersion", "")
    name = f"{kind}/{doc.get('metadata', {}).get('name')}"
    if api.startswith("keda.sh/"):
        errors = sorted(jsonschema.Draft7Validator(keda_schema).iter_errors(doc), key=lambda e: list(e.absolute_path))
        for e in errors:
            check(False, where, f"{name} (KEDA schema) at {'/'.join(map(str, e.absolute_path)) or '.'}: {e.message}")
        check(True, where, "")
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            check(True, where, "")
        except kubernetes_validate.SchemaNotFoundError:
            check(False, where, f"{name}: no Kubernetes {version} schema for {api} {kind}")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(map(str, e.path)) or "."
            check(False, where, f"{name} (Kubernetes {version}) at {path}: {e.message}")


def mem_bytes(q: str) -> float:
    m = re.match(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|K|M|G)?$", str(q))
    if not m:
        return float("inf")
    mult = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9, None: 1}[m.group(2)]
    return float(m.group(1)) * mult


def check_kubernetes(kubectl: str) -> None:
    keda_schema = json.loads((ROOT / "deploy/schemas/keda-v1alpha1.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(keda_schema)

    secrets_file = "deploy/kubernetes/secrets.example.yaml"
    secrets = [d for d in yaml.safe_load_all((ROOT / secrets_file).read_text()) if d]
    secret_keys = {s["metadata"]["name"]: set(s.get("stringData", {})) | set(s.get("data", {})) for s in secrets}
    for s in secrets:
        validate_k8s(s, secrets_file, keda_schema)
        for key, value in s.get("stringData", {}).items():
            if key.endswith(".toml"):
                check_secret_toml(value, f"{secrets_file} {s['metadata']['name']}/{key}")

    for path in ("deploy/kubernetes/base", "deploy/kubernetes/overlays/example"):
        docs = kustomize(kubectl, path)
        if not docs:
            continue
        for d in docs:
            validate_k8s(d, path, keda_schema)
        by_kind: dict[str, dict[str, dict]] = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        check(not by_kind.get("Secret"), path, "renders a Secret: credentials must stay out of the kustomization")
        cms = by_kind.get("ConfigMap", {})
        config = next((c.get("data", {}) for n, c in cms.items() if n.startswith("crmsync-config")), None)
        if not check(config is not None, path, "no crmsync-config ConfigMap"):
            continue
        check_env_keys(config, f"{path} crmsync-config")
        grace = float(config.get("CRMSYNC_SHUTDOWN__GRACE_SECS", 30))
        prefix = config.get("CRMSYNC_AMQP__PREFIX", "crmsync")
        check(config.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").endswith(":4318"), path, "OTEL_EXPORTER_OTLP_ENDPOINT should be OTLP/HTTP on 4318")

        deployments = by_kind.get("Deployment", {})
        jobs = by_kind.get("Job", {})
        workloads = list(deployments.values()) + list(jobs.values())
        for w in workloads:
            wname = f"{w['kind']}/{w['metadata']['name']}"
            pod = w["spec"]["template"]["spec"]
            psc = pod.get("securityContext", {})
            check(psc.get("runAsNonRoot") is True and isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, path,
                  f"{wname}: runAsNonRoot with a numeric non-root runAsUser")
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                csc = c.get("securityContext", {})
                check(csc.get("readOnlyRootFilesystem") is True, path, f"{wname}: readOnlyRootFilesystem")
                check(csc.get("allowPrivilegeEscalation") is False, path, f"{wname}: allowPrivilegeEscalation: false")
                check(csc.get("capabilities", {}).get("drop") == ["ALL"], path, f"{wname}: drop ALL capabilities")
                image = c.get("image", "")
                check(":" in image.split("/")[-1] and not image.endswith(":latest"), path, f"{wname}: image {image} not pinned")
                res = c.get("resources", {})
                check(bool(res.get("requests", {}).get("memory")) and bool(res.get("requests", {}).get("cpu")), path, f"{wname}: cpu and memory requests")
                check(mem_bytes(res.get("limits", {}).get("memory", "")) <= 256 * 2**20, path, f"{wname}: memory limit missing or above 256Mi")
                refs = [e.get("configMapRef", {}).get("name") for e in c.get("envFrom", [])]
                check(any(r in cms for r in refs), path, f"{wname}: envFrom names no ConfigMap of this build ({refs})")
                check_env_keys({e["name"]: e.get("value") for e in c.get("env", [])}, f"{path} {wname}")
                # CRMSYNC_CONFIG must point at the Secret's TOML key through a mount.
                cfg = config.get("CRMSYNC_CONFIG", "")
                found = False
                for m in c.get("volumeMounts", []):
                    v = volumes.get(m["name"], {})
                    sec = v.get("secret", {}).get("secretName")
                    if sec and cfg.startswith(m["mountPath"].rstrip("/") + "/"):
                        key = cfg[len(m["mountPath"].rstrip("/")) + 1:]
                        found = check(key in secret_keys.get(sec, set()), path,
                                      f"{wname}: CRMSYNC_CONFIG reads {key} of Secret {sec}, which {secrets_file} does not define")
                check(found, path, f"{wname}: CRMSYNC_CONFIG={cfg} is not a file of a mounted Secret")
                for v in volumes.values():
                    sec = v.get("secret", {}).get("secretName")
                    if sec:
                        check(sec in secret_keys, path, f"{wname}: mounts Secret {sec}, which {secrets_file} does not describe")

        for tier in TIERS:
            d = deployments.get(f"crmsync-{tier}")
            if not check(d is not None, path, f"no Deployment crmsync-{tier}"):
                continue
            pod = d["spec"]["template"]["spec"]
            c = pod["containers"][0]
            check(c.get("args") == [tier], path, f"crmsync-{tier} does not run `crmsync {tier}`")
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe, route in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                port = ports.get(get.get("port"), get.get("port"))
                check(get.get("path") == route and port == HTTP_PORT, path, f"crmsync-{tier}: {probe} should GET {route} on {HTTP_PORT}")
            check(pod.get("terminationGracePeriodSeconds", 30) > grace, path,
                  f"crmsync-{tier}: terminationGracePeriodSeconds must exceed CRMSYNC_SHUTDOWN__GRACE_SECS ({grace:g})")
            ann = d["spec"]["template"]["metadata"].get("annotations", {})
            check(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(HTTP_PORT), path,
                  f"crmsync-{tier}: prometheus.io scrape annotations")
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            check(env.get("OTEL_SERVICE_NAME") == f"crmsync-{tier}", path, f"crmsync-{tier}: OTEL_SERVICE_NAME")
        check(any(j["spec"]["template"]["spec"]["containers"][0].get("args") == ["migrate"] for j in jobs.values()), path,
              "no Job running `crmsync migrate`")

        # KEDA: matcher and applier scaled on their own queues, unacked included.
        auths = by_kind.get("TriggerAuthentication", {})
        scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in by_kind.get("ScaledObject", {}).values()}
        check("crmsync-producer" not in scaled, path, "the producer has no queue to scale on")
        queues = {
            "crmsync-matcher": ([f"{prefix}.match.immediate", f"{prefix}.match.batch"], [f"{prefix}.match.dead", f"{prefix}.apply.immediate"]),
            "crmsync-applier": ([f"{prefix}.apply.immediate", f"{prefix}.apply.batch.default", f"{prefix}.apply.batch.acme-eu"],
                                [f"{prefix}.apply.dead", f"{prefix}.match.batch", f"{prefix}.apply.batchx"]),
        }
        for target, (must, mustnt) in queues.items():
            so = scaled.get(target)
            if not check(so is not None, path, f"no ScaledObject for {target}"):
                continue
            check(target in deployments, path, f"ScaledObject targets {target}, which is no Deployment")
            check("replicas" not in deployments.get(target, {}).get("spec", {}), path,
                  f"{target} sets spec.replicas, which every apply would reset under KEDA")
            patterns = []
            for t in so["spec"]["triggers"]:
                md = t.get("metadata", {})
                tn = f"{target} trigger {t.get('name', t['type'])}"
                if not check(t["type"] == "rabbitmq", path, f"{tn}: not the rabbitmq scaler"):
                    continue
                check(md.get("protocol") == "http" and md.get("mode") == "QueueLength", path,
                      f"{tn}: protocol http and mode QueueLength, the only way KEDA counts unacked messages")
                check(md.get("excludeUnacknowledged", "false") == "false", path, f"{tn}: must count unacked messages")
                ref = t.get("authenticationRef", {}).get("name")
                check(ref in auths, path, f"{tn}: authenticationRef {ref} is no TriggerAuthentication of this build")
                q = md.get("queueName", "")
                patterns.append(re.compile(q) if md.get("useRegex") == "true" else re.compile(re.escape(q) + "$"))
            for qn in must:
                check(any(p.match(qn) for p in patterns), path, f"{target}: no trigger counts queue {qn}")
            for qn in mustnt:
                check(not any(p.match(qn) for p in patterns), path, f"{target}: a trigger also counts {qn}")
        for a in auths.values():
            for ref in a["spec"].get("secretTargetRef", []):
                check(ref["key"] in secret_keys.get(ref["name"], set()), path,
                      f"TriggerAuthentication {a['metadata']['name']} reads {ref['name']}/{ref['key']}, not in {secrets_file}")


# --- grafana -------------------------------------------------------------------

def check_dashboard(promtool: str) -> None:
    where = "deploy/grafana/dashboards/crmsync.json"
    try:
        dash = json.loads((ROOT / where).read_text())
    except json.JSONDecodeError as e:
        check(False, where, f"not JSON: {e}")
        return
    check(bool(dash.get("uid")) and bool(dash.get("title")), where, "uid and title")
    variables = {v["name"] for v in dash.get("templating", {}).get("list", [])}
    panels = []
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)), where, "panel ids are not unique")
    exprs, used = [], set()
    for p in panels:
        if p.get("type") == "row":
            continue
        title = p.get("title", f"panel {p.get('id')}")
        targets = p.get("targets", [])
        check(bool(targets), where, f"'{title}' has no query")
        check("gridPos" in p, where, f"'{title}' has no gridPos")
        for t in targets:
            expr = t.get("expr", "")
            for ds in (p.get("datasource", {}), t.get("datasource", {})):
                uid = ds.get("uid", "") if isinstance(ds, dict) else ""
                if uid.startswith("$"):
                    check(uid.strip("${}") in variables, where, f"'{title}' uses data source variable {uid}, which is not defined")
            names = set(re.findall(r"\bcrmsync_[a-z0-9_]+", expr))
            metrics = set()
            for n in names:
                base = re.sub(r"_(bucket|sum|count)$", "", n)
                if n in METRICS:
                    metrics.add(n)
                    check(METRICS[n] != "histogram", where, f"'{title}': {n} is a histogram; query its _bucket series")
                elif base in METRICS and METRICS[base] == "histogram":
                    metrics.add(base)
                else:
                    check(False, where, f"'{title}' queries {n}, which no tier exports")
            check(bool(metrics), where, f"'{title}' query names no crmsync metric: {expr!r}")
            for n in metrics:
                if METRICS[n] == "counter":
                    check(re.search(rf"(rate|increase)\(\s*{n}\b", expr) is not None, where, f"'{title}': counter {n} used without rate()/increase()")
            used |= metrics
            exprs.append((title, expr))
    for m in sorted(set(METRICS) - used):
        check(False, where, f"metric {m} is charted by no panel")

    # PromQL syntax of every query, by promtool: each becomes a recording rule
    # with Grafana's variables replaced by values Prometheus accepts.
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for i, (title, expr) in enumerate(exprs):
        e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        e = re.sub(r"\$\{?[a-z_]+\}?", ".*", e)
        rules["groups"][0]["rules"].append({"record": f"dashboard:query_{i}", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    out = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    Path(f.name).unlink()
    check(out.returncode == 0, where, f"promtool rejects a query:\n{out.stdout}{out.stderr}")


# --- dockerfile ----------------------------------------------------------------

def check_dockerfile() -> None:
    where = "Dockerfile"
    text = (ROOT / where).read_text()
    args = dict(re.findall(r"^ARG ([A-Z_]+)=(\S+)", text, re.M))
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    check(len(froms) >= 2, where, "not multi-stage")
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), f)
        if image in ("chef", "planner", "builder") or "${" in image:
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        check(tag and tag != "latest" and re.search(r"\d", tag), where, f"base image {image} is not pinned to a version")
    rust = re.search(r"rust:(\d+)\.(\d+)", args.get("RUST_IMAGE", ""))
    msrv = re.search(r'^rust-version\s*=\s*"(\d+)\.(\d+)', (ROOT / "Cargo.toml").read_text(), re.M)
    if check(rust is not None and msrv is not None, where, "RUST_IMAGE should be rust:<version>-..."):
        check(tuple(map(int, rust.groups())) >= tuple(map(int, msrv.groups())), where,
              f"rust image {rust.group(0)} is older than the workspace's rust-version {msrv.group(1)}.{msrv.group(2)}")
    check(re.search(r"cargo build --release --locked --bin crmsync", text) is not None, where, "cargo build --release --locked --bin crmsync")
    check(re.search(r"cargo chef cook --release --locked", text) is not None, where, "no cached dependency layer (cargo chef cook)")
    check(re.search(r"^ENTRYPOINT \[\"crmsync\"\]", text, re.M) is not None, where, 'ENTRYPOINT ["crmsync"]')
    check(re.search(r"^EXPOSE 9464\b", text, re.M) is not None, where, "EXPOSE 9464")
    users = re.findall(r"^USER (\S+)", text, re.M)
    check(bool(users) and re.match(r"^[1-9]\d*(:\d+)?$", users[-1]) is not None, where, "the last USER must be a numeric non-root UID")
    check("ca-certificates" in text, where, "ca-certificates missing: TLS to Salesforce is verified")
    ignore = (ROOT / ".dockerignore").read_text().split()
    for must in (".git", "**/target", ".demo", ".bench", ".ci-tools"):
        check(must in ignore, ".dockerignore", f"{must} is not excluded from the build context")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--promtool", required=True)
    a = ap.parse_args()
    for name, fn in (("compose", check_compose), ("kubernetes", lambda: check_kubernetes(a.kubectl)),
                     ("grafana", lambda: check_dashboard(a.promtool)), ("dockerfile", check_dockerfile)):
        before = len(FAILURES)
        try:
            fn()
        except Exception as e:  # a file too broken to inspect is a failure, not a crash
            check(False, name, f"could not be checked: {type(e).__name__}: {e}")
        print(f"[validate-deploy] {name}: {'ok' if len(FAILURES) == before else 'FAILED'}", file=sys.stderr)
    for f in FAILURES:
        print(f"[validate-deploy] FAIL {f}", file=sys.stderr)
    print(f"[validate-deploy] semantic checks: {CHECKS - len(FAILURES)} passed, {len(FAILURES)} failed", file=sys.stderr)
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
