#!/usr/bin/env python3
"""Check OptiRoute's shipped observability and deployment files, statically and against a live gateway.

Static checks (always run):
  * deploy/prometheus.yml and deploy/alerts.yml: structure, `promtool check config`, `promtool check rules`,
    and `promtool test rules deploy/alerts_test.yml` (alert thresholds actually fire);
  * Grafana provisioning and deploy/grafana/dashboards/optiroute.json: required panels, datasource as a
    `${datasource}` variable, every panel has a PromQL query, every metric it names is a known metric;
  * deploy/Dockerfile, deploy/docker-compose.yml, .dockerignore;
  * deploy/k8s/*.yaml: Deployment probes (/ready, /health), graceful termination, resources, secret refs,
    Service, ConfigMap with a parseable optiroute.toml, HPA on CPU, ServiceMonitor, kustomization.

Live checks (with --gateway URL): fetch the gateway's /metrics; start a real Prometheus on a free loopback
port with a temporary copy of deploy/prometheus.yml pointed at the gateway (1 s scrape and evaluation
interval); wait until the target is up with samples and the alert rules have been evaluated; then evaluate
EVERY `expr` of the dashboard through /api/v1/query and fail if any errors, returns no series, or carries
a stray label-less series from a grouped `... or vector(0)`. With --drive-load N it also sends N rounds of
traffic (cache miss, cache hit, streamed request) while Prometheus scrapes, and then an expression whose
series are all NaN (e.g. a quantile over a histogram that never moved) fails too. With --optiroute-bin it
runs `optiroute check-config` on the shipped gateway configs.

Prints one line per check, then `N passed, M failed`; exits 1 if anything failed, 2 on bad usage.
Python 3.11, standard library plus PyYAML.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import yaml
except ImportError:  # pragma: no cover - reported to the user
    print("check_observability.py needs PyYAML (pip install pyyaml)", file=sys.stderr)
    sys.exit(2)

# The public metric interface (see the gateway README / notes/api.md). Histograms also expose
# _bucket, _sum and _count series.
COUNTERS = {
    "llm_total_cost_usd_total",
    "llm_cache_events_total",
    "http_requests_total",
    "llm_requests_total",
    "llm_tokens_total",
    "llm_retries_total",
    "llm_fallbacks_total",
    "llm_circuit_breaker_transitions_total",
    "llm_routing_decisions_total",
    "llm_cost_saved_usd_total",
    "llm_cache_errors_total",
    "llm_cascade_escalations_total",
    "llm_feedback_total",
    "llm_request_log_dropped_total",
    "llm_limits_redis_errors_total",
}
GAUGES = {"llm_in_flight_requests", "llm_circuit_breaker_state"}
HISTOGRAMS = {
    "http_request_duration_seconds",
    "llm_upstream_duration_seconds",
    "llm_time_to_first_token_seconds",
    "gateway_overhead_seconds",
}
# Families that may legitimately have no series yet (nothing retried, no fallback, no breaker
# transition, no cache backend error): a missing family is only a warning for these.
OPTIONAL_FAMILIES = {
    "llm_retries_total",
    "llm_fallbacks_total",
    "llm_circuit_breaker_transitions_total",
    "llm_cache_errors_total",
    "llm_limits_redis_errors_total",
}
KNOWN_SERIES = (
    COUNTERS
    | GAUGES
    | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    | {"up", "scrape_samples_scraped", "scrape_duration_seconds"}
)
# Labels that would make cardinality explode or leak secrets.
FORBIDDEN_LABELS = {"api_key", "key", "prompt", "user", "user_id", "authorization", "request_id"}

REQUIRED_PANELS = [
    "Total Cost (USD)",
    "Cost by Provider",
    "Cache Hit Rate",
    "Latency P95",
    "Throughput",
    "Cache Events",
    "Error Rate",
    "Cost Savings",
    "Circuit Breaker States",
    "Time To First Token",
    "Gateway Overhead",
]
REQUIRED_ALERTS = {
    "high error rate": "OptiRouteHighErrorRate",
    "circuit breaker open": "OptiRouteCircuitBreakerOpen",
    "p95 latency over SLO": "OptiRouteLatencyP95OverSLO",
    "spend rate over budget": "OptiRouteSpendRateOverBudget",
    "cache error rate": "OptiRouteCacheErrorRate",
}
GATEWAY_JOB = "optiroute"

# Grafana's built-in variables, replaced by concrete values before a query goes to Prometheus.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1m",
    "__range_s": "60",
    "__range_ms": "60000",
    "__interval_ms": "60000",
}
PROMQL_FUNCS_AND_KEYWORDS = {
    # words that may be followed by "(" or "{" but are not metric names
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "le",
    "inf",
    "nan",
}


# --------------------------------------------------------------------------------------------
# result bookkeeping


@dataclass
class Report:
    passed: int = 0
    failed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"PASS  {name}" + (f": {detail}" if detail else ""), flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed.append(f"{name}: {detail}")
        print(f"FAIL  {name}: {detail}", flush=True)

    def warn(self, name: str, detail: str) -> None:
        self.warnings.append(f"{name}: {detail}")
        print(f"WARN  {name}: {detail}", flush=True)

    def check(self, name: str, problems: list[str], detail: str = "") -> None:
        if problems:
            self.fail(name, "; ".join(problems))
        else:
            self.ok(name, detail)


def run_check(report: Report, name: str, fn: Callable[[], list[str] | tuple[list[str], str]]) -> None:
    """Run one static check; an exception inside it is a failure of that check, not a crash."""
    try:
        res = fn()
    except Exception as exc:  # noqa: BLE001 - any error is a failed check
        report.fail(name, f"{type(exc).__name__}: {exc}")
        return
    if isinstance(res, tuple):
        report.check(name, res[0], res[1])
    else:
        report.check(name, res)


# --------------------------------------------------------------------------------------------
# helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def dig(obj: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(obj, dict):
            obj = obj.get(k)
        elif isinstance(obj, list) and isinstance(k, int) and -len(obj) <= k < len(obj):
            obj = obj[k]
        else:
            return None
    return obj


def walk(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Yield (path, dict) for every dict nested anywhere in obj."""
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from walk(v, f"{path}[{i}]")


def strip_promql_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)


def metric_names_in(expr: str) -> set[str]:
    """Best-effort list of metric names an expression selects (identifiers not used as
    functions, keywords, label names or durations)."""
    s = strip_promql_strings(expr)
    s = re.sub(r"\{[^}]*\}", "{}", s)  # drop label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\[[^\]]*\]", "", s)  # drop range selectors
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", s):
        word = m.group(0)
        rest = s[m.end() :].lstrip()
        if rest.startswith("("):
            continue  # function call
        if word.lower() in PROMQL_FUNCS_AND_KEYWORDS:
            continue
        before = s[: m.start()]
        if re.search(r"[0-9.]$", before):
            continue  # part of a number like 1e-9
        names.add(word)
    return names


def substitute_grafana_vars(expr: str, custom: dict[str, str]) -> tuple[str, list[str]]:
    """Replace $var, ${var} and ${var:fmt} with concrete values; return unknown variables."""
    unknown: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_BUILTINS:
            return GRAFANA_BUILTINS[name]
        if name in custom:
            return custom[name]
        unknown.append(name)
        return m.group(0)

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", repl, expr)
    return out, unknown


def http_get_json(url: str, timeout: float = 5.0) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def http_get_text(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Accept": "text/plain"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return (
            exc.code,
            exc.headers.get("Content-Type", "") if exc.headers else "",
            exc.read().decode("utf-8", "replace"),
        )


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Abort(Exception):
    """Stop polling at once (e.g. the process being waited for has exited)."""


def poll(deadline: float, interval: float, fn: Callable[[], Any]) -> Any:
    """Call fn every `interval` seconds until it returns a truthy value or the deadline passes;
    return the last value. Connection errors count as "not yet"; Abort propagates."""
    last = None
    while True:
        try:
            last = fn()
        except (OSError, ValueError) as exc:  # URLError is an OSError
            last = None
            del exc
        if last:
            return last
        if time.monotonic() >= deadline:
            return last
        time.sleep(interval)


def run_cmd(argv: list[str], timeout: float = 60.0) -> tuple[int, str]:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, f"command not found: {argv[0]}"
    except subprocess.TimeoutExpired:
        return 124, f"timed out after {timeout}s: {' '.join(argv)}"
    return proc.returncode, (proc.stdout + proc.stderr).strip()


# --------------------------------------------------------------------------------------------
# static checks: Prometheus and alerts


def find_gateway_job(cfg: dict[str, Any]) -> dict[str, Any] | None:
    for job in cfg.get("scrape_configs") or []:
        if isinstance(job, dict) and job.get("job_name") == GATEWAY_JOB:
            return dict(job)
    return None


def check_prometheus_yml(deploy: Path) -> list[str]:
    cfg = load_yaml(deploy / "prometheus.yml")
    problems = []
    job = find_gateway_job(cfg)
    if job is None:
        return [f"no scrape job named {GATEWAY_JOB!r}"]
    if job.get("metrics_path", "/metrics") != "/metrics":
        problems.append(f"metrics_path is {job.get('metrics_path')!r}, want /metrics")
    targets = [t for sc in job.get("static_configs") or [] for t in sc.get("targets") or []]
    if "gateway:8000" not in targets:
        problems.append(f"gateway job targets {targets}, want gateway:8000 (the compose service)")
    rules = cfg.get("rule_files") or []
    if not any(Path(r).name == "alerts.yml" for r in rules):
        problems.append(f"rule_files {rules} does not load alerts.yml")
    return problems


def check_alert_names(deploy: Path) -> list[str]:
    rules = load_yaml(deploy / "alerts.yml")
    names = {r.get("alert") for g in rules.get("groups") or [] for r in g.get("rules") or []}
    problems = [f"no {what} alert ({name})" for what, name in REQUIRED_ALERTS.items() if name not in names]
    for g in rules.get("groups") or []:
        for r in g.get("rules") or []:
            if "alert" in r and not dig(r, "labels", "severity"):
                problems.append(f"{r['alert']} has no severity label")
            if "alert" in r and not dig(r, "annotations", "summary"):
                problems.append(f"{r['alert']} has no summary annotation")
    return problems


def alert_exprs(deploy: Path) -> list[tuple[str, str]]:
    rules = load_yaml(deploy / "alerts.yml")
    return [
        (r.get("alert") or r.get("record") or "?", str(r.get("expr", "")))
        for g in rules.get("groups") or []
        for r in g.get("rules") or []
    ]


def check_known_metrics(exprs: list[tuple[str, str]]) -> list[str]:
    problems = []
    for where, expr in exprs:
        unknown = sorted(n for n in metric_names_in(expr) if n not in KNOWN_SERIES)
        if unknown:
            problems.append(f"{where} uses unknown metric(s) {', '.join(unknown)}")
    return problems


def rewrite_prometheus_config(
    src: Path, rules_path: Path, target: str, scheme: str, metrics_path: str, own_port: int
) -> dict[str, Any]:
    """Copy of the shipped config pointed at the gateway under test, scraping every second."""
    cfg: dict[str, Any] = load_yaml(src)
    cfg.setdefault("global", {})
    cfg["global"]["scrape_interval"] = "1s"
    cfg["global"]["scrape_timeout"] = "1s"
    cfg["global"]["evaluation_interval"] = "1s"
    cfg["rule_files"] = [str(rules_path)]
    cfg.pop("alerting", None)
    jobs = []
    for job in cfg.get("scrape_configs") or []:
        job = dict(job)
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        if job.get("job_name") == GATEWAY_JOB:
            labels: dict[str, Any] = {}
            for sc in job.get("static_configs") or []:
                labels.update(sc.get("labels") or {})
            job["static_configs"] = [{"targets": [target], **({"labels": labels} if labels else {})}]
            job["scheme"] = scheme
            job["metrics_path"] = metrics_path
            job.pop("file_sd_configs", None)
            job.pop("kubernetes_sd_configs", None)
            jobs.append(job)
        elif job.get("job_name") == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{own_port}"]}]
            jobs.append(job)
        # any other job (e.g. exporters only present in compose) is dropped
    cfg["scrape_configs"] = jobs
    return cfg


# --------------------------------------------------------------------------------------------
# static checks: Grafana


def dashboard_exprs(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """Every `expr` anywhere in the dashboard (panels, nested row panels, library panels...)."""
    titles: dict[str, str] = {}
    out = []
    for path, d in walk(dash):
        if "title" in d and "gridPos" in d:
            titles[path] = str(d["title"])
        if isinstance(d.get("expr"), str):
            owner = max((p for p in titles if path.startswith(p + ".")), key=len, default="")
            label = f"{titles.get(owner, path)} [{d.get('refId', '?')}]"
            out.append((label, d["expr"]))
    return out


def custom_variables(dash: dict[str, Any]) -> dict[str, str]:
    """Non-datasource dashboard variables, mapped to a value that selects everything."""
    out = {}
    for v in dig(dash, "templating", "list") or []:
        if v.get("type") in ("query", "custom", "textbox", "constant", "interval", "adhoc"):
            name = v.get("name")
            if v.get("type") == "interval":
                out[name] = "1m"
            elif v.get("type") in ("textbox", "constant"):
                out[name] = str(v.get("query", ""))
            else:
                out[name] = v.get("allValue") or ".*"
    return out


def check_dashboard(dash: dict[str, Any]) -> list[str]:
    problems = []
    panels = [d for _, d in walk(dash.get("panels") or []) if "gridPos" in d and "type" in d]
    titles = [p.get("title") for p in panels]
    for t in REQUIRED_PANELS:
        if t not in titles:
            problems.append(f"missing panel {t!r}")
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append("duplicate panel ids")
    ds_vars = [v for v in dig(dash, "templating", "list") or [] if v.get("type") == "datasource"]
    if not any(v.get("name") == "datasource" and v.get("query") == "prometheus" for v in ds_vars):
        problems.append("no `datasource` variable of type datasource with query prometheus")
    allowed = {"${datasource}", "$datasource", "-- Grafana --"}
    for path, d in walk(dash):
        ds = d.get("datasource")
        if isinstance(ds, dict):
            if ds.get("uid") not in allowed:
                problems.append(f"{path}: hard-coded datasource uid {ds.get('uid')!r}")
        elif isinstance(ds, str) and ds not in allowed:
            problems.append(f"{path}: hard-coded datasource {ds!r}")
    for p in panels:
        if p.get("type") in ("row", "text"):
            continue
        targets = p.get("targets") or []
        if not any(isinstance(t.get("expr"), str) and t["expr"].strip() for t in targets):
            problems.append(f"panel {p.get('title')!r} has no PromQL expr")
        if dig(p, "datasource", "uid") not in ("${datasource}", "$datasource"):
            problems.append(f"panel {p.get('title')!r} does not use the ${{datasource}} variable")
    for where, expr in dashboard_exprs(dash):
        _, unknown = substitute_grafana_vars(expr, custom_variables(dash))
        if unknown:
            problems.append(f"{where}: unknown variable(s) {unknown}")
    return problems


def check_grafana_provisioning(deploy: Path) -> list[str]:
    problems = []
    ds = load_yaml(deploy / "grafana/provisioning/datasources/prometheus.yml")
    entries = ds.get("datasources") or []
    if not any(e.get("type") == "prometheus" and e.get("url") for e in entries):
        problems.append("datasources: no prometheus datasource with a url")
    prov = load_yaml(deploy / "grafana/provisioning/dashboards/dashboards.yml")
    providers = prov.get("providers") or []
    if not any(p.get("type") == "file" and dig(p, "options", "path") for p in providers):
        problems.append("dashboards: no file provider with options.path")
    return problems


# --------------------------------------------------------------------------------------------
# static checks: containers


def check_dockerfile(root: Path) -> list[str]:
    text = (root / "deploy/Dockerfile").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    problems = []
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    if len(froms) < 2:
        problems.append("not multi-stage (fewer than two FROM lines)")
    # USER of the final stage
    last_from = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM ")) if froms else 0
    users = [ln.split(None, 1)[1] for ln in lines[last_from:] if ln.upper().startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("final stage does not switch to a non-root USER")
    if not any(ln.upper().startswith("EXPOSE ") and "8000" in ln for ln in lines):
        problems.append("no EXPOSE 8000")
    if "0.0.0.0" not in text or "serve" not in text:
        problems.append("does not run `optiroute serve --host 0.0.0.0`")
    dockerignore = root / ".dockerignore"
    if not dockerignore.is_file():
        problems.append("no .dockerignore at the repository root")
    elif "target" not in dockerignore.read_text(encoding="utf-8"):
        problems.append(".dockerignore does not exclude target/")
    return problems


def check_compose(root: Path) -> tuple[list[str], str]:
    compose_file = root / "deploy/docker-compose.yml"
    doc = load_yaml(compose_file)
    problems = []
    services = doc.get("services") or {}
    for name in ("gateway", "prometheus", "grafana", "redis"):
        if name not in services:
            problems.append(f"no service {name!r}")
    build = dig(services, "gateway", "build") or {}
    if isinstance(build, dict):
        context = (compose_file.parent / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            problems.append(f"gateway build dockerfile {dockerfile} does not exist")
    # every bind-mounted file or directory that the repository ships must exist
    for sname, svc in services.items():
        for vol in svc.get("volumes") or []:
            src = vol.get("source") if isinstance(vol, dict) else str(vol).split(":")[0]
            if src and (src.startswith(".") or src.startswith("/")):
                p = (compose_file.parent / src).resolve()
                if not p.exists():
                    problems.append(f"{sname}: mounted path {src} does not exist")
    detail = ""
    # Validate with a compose client where one is installed (the daemon is not needed).
    clients = []
    docker = shutil.which("docker")
    if docker and run_cmd([docker, "compose", "version"], timeout=30)[0] == 0:
        clients.append([docker, "compose"])
    legacy = shutil.which("docker-compose")
    if legacy:
        clients.append([legacy])
    for client in clients:
        argv = client + ["-f", str(compose_file), "config", "-q"]
        rc, out = run_cmd(argv, timeout=60)
        name = " ".join(Path(a).name for a in client)
        if rc != 0:
            problems.append(f"`{name} config` failed: {out[-500:]}")
        else:
            detail += f"`{name} config` ok; "
    if not clients:
        detail = "no docker compose client here: checked structure only"
    return problems, detail.rstrip("; ")


# --------------------------------------------------------------------------------------------
# static checks: Kubernetes


def load_k8s(root: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    k8s = root / "deploy/k8s"
    kinds: dict[str, list[dict[str, Any]]] = {}
    kustomization: dict[str, Any] = {}
    for path in sorted(k8s.glob("*.y*ml")):
        for doc in load_yaml_all(path):
            if path.name == "kustomization.yaml":
                kustomization = doc
                continue
            doc["__file__"] = path.name
            kinds.setdefault(doc.get("kind", "?"), []).append(doc)
    return kinds, kustomization


def check_k8s(root: Path) -> list[str]:
    kinds, kust = load_k8s(root)
    problems = []
    for kind in ("Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "ServiceMonitor"):
        if kind not in kinds:
            problems.append(f"no {kind}")
    for kind, docs in kinds.items():
        for d in docs:
            if not d.get("apiVersion") or not dig(d, "metadata", "name"):
                problems.append(f"{d['__file__']}: {kind} without apiVersion or metadata.name")
    if problems:
        return problems

    dep = kinds["Deployment"][0]
    spec = dig(dep, "spec", "template", "spec") or {}
    containers = spec.get("containers") or []
    c = next((c for c in containers if c.get("name") == "optiroute"), containers[0] if containers else {})
    if dig(c, "readinessProbe", "httpGet", "path") != "/ready":
        problems.append("Deployment readinessProbe.httpGet.path is not /ready")
    if dig(c, "livenessProbe", "httpGet", "path") != "/health":
        problems.append("Deployment livenessProbe.httpGet.path is not /health")
    if not dig(c, "lifecycle", "preStop"):
        problems.append("Deployment container has no lifecycle.preStop")
    grace = spec.get("terminationGracePeriodSeconds")
    if not isinstance(grace, int) or grace <= 0:
        problems.append("Deployment has no terminationGracePeriodSeconds")
    else:
        pre_sleep = dig(c, "lifecycle", "preStop", "sleep", "seconds")
        if isinstance(pre_sleep, int) and pre_sleep >= grace:
            problems.append("preStop sleep is not shorter than terminationGracePeriodSeconds")
    for part in ("requests", "limits"):
        res = dig(c, "resources", part) or {}
        if "cpu" not in res and part == "requests":
            problems.append("container resources.requests.cpu missing (the HPA needs it)")
        if "memory" not in res:
            problems.append(f"container resources.{part}.memory missing")
    env = c.get("env") or []
    if not any(dig(e, "valueFrom", "secretKeyRef", "name") for e in env) and not any(
        dig(e, "secretRef", "name") for e in c.get("envFrom") or []
    ):
        problems.append("no provider key taken from a Secret (secretKeyRef / secretRef)")
    ports = c.get("ports") or []
    if not any(p.get("containerPort") == 8000 for p in ports):
        problems.append("container does not expose port 8000")
    if (
        dig(spec, "securityContext", "runAsNonRoot") is not True
        and dig(c, "securityContext", "runAsNonRoot") is not True
    ):
        problems.append("pod does not set runAsNonRoot")
    pod_labels = dig(dep, "spec", "template", "metadata", "labels") or {}
    sel = dig(dep, "spec", "selector", "matchLabels") or {}
    if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
        problems.append("Deployment selector does not match its pod labels")

    # ConfigMap holds a parseable optiroute.toml, mounted into the pod
    cms = kinds["ConfigMap"]
    cm = next((m for m in cms if "optiroute.toml" in (m.get("data") or {})), None)
    if cm is None:
        problems.append("no ConfigMap with data key optiroute.toml")
    else:
        try:
            tomllib.loads(cm["data"]["optiroute.toml"])
        except tomllib.TOMLDecodeError as exc:
            problems.append(f"ConfigMap optiroute.toml is not valid TOML: {exc}")
        vols = [v for v in spec.get("volumes") or [] if dig(v, "configMap", "name") == dig(cm, "metadata", "name")]
        if not vols:
            problems.append("ConfigMap is not mounted as a volume")
        elif not any(m.get("name") == vols[0].get("name") for m in c.get("volumeMounts") or []):
            problems.append("ConfigMap volume is not mounted in the container")
        args = " ".join(str(a) for a in (c.get("args") or []) + (c.get("command") or []))
        if "--config" not in args:
            problems.append("container args do not pass --config")

    # Service selects the pods and names the port the ServiceMonitor scrapes
    svc = kinds["Service"][0]
    svc_sel = dig(svc, "spec", "selector") or {}
    if not svc_sel or any(pod_labels.get(k) != v for k, v in svc_sel.items()):
        problems.append("Service selector does not match the Deployment's pod labels")
    svc_ports = dig(svc, "spec", "ports") or []
    port_names = {p.get("name") for p in svc_ports}
    if not any(p.get("targetPort") in (8000, "http") for p in svc_ports):
        problems.append("Service does not target port 8000/http")

    hpa = kinds["HorizontalPodAutoscaler"][0]
    if not str(hpa.get("apiVersion", "")).startswith("autoscaling/v2"):
        problems.append("HPA is not autoscaling/v2")
    if dig(hpa, "spec", "scaleTargetRef", "name") != dig(dep, "metadata", "name"):
        problems.append("HPA scaleTargetRef does not name the Deployment")
    if not any(dig(m, "resource", "name") == "cpu" for m in dig(hpa, "spec", "metrics") or []):
        problems.append("HPA does not scale on CPU")
    if (dig(hpa, "spec", "minReplicas") or 1) > (dig(hpa, "spec", "maxReplicas") or 0):
        problems.append("HPA minReplicas > maxReplicas")

    sm = kinds["ServiceMonitor"][0]
    endpoints = dig(sm, "spec", "endpoints") or []
    if not any(e.get("path", "/metrics") == "/metrics" and e.get("port") in port_names for e in endpoints):
        problems.append(f"ServiceMonitor has no endpoint scraping /metrics on a Service port {sorted(port_names)}")
    sm_sel = dig(sm, "spec", "selector", "matchLabels") or {}
    svc_labels = dig(svc, "metadata", "labels") or {}
    if not sm_sel or any(svc_labels.get(k) != v for k, v in sm_sel.items()):
        problems.append("ServiceMonitor selector does not match the Service's labels")

    # kustomization lists every manifest that exists
    k8s_dir = root / "deploy/k8s"
    resources = kust.get("resources") or []
    if not resources:
        problems.append("kustomization.yaml has no resources")
    for r in resources:
        if not (k8s_dir / r).exists():
            problems.append(f"kustomization resource {r} does not exist")
    listed = {Path(r).name for r in resources}
    for kind in ("Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "ServiceMonitor"):
        for d in kinds[kind]:
            if d["__file__"] not in listed:
                problems.append(f"{d['__file__']} ({kind}) is not in kustomization.yaml resources")
    return problems


def check_configs_with_gateway(root: Path, optiroute_bin: str, tmp: Path) -> tuple[list[str], str]:
    """`optiroute check-config` on the shipped gateway configs (k8s ConfigMap and compose)."""
    kinds, _ = load_k8s(root)
    files = [root / "deploy/optiroute.compose.toml"]
    for cm in kinds.get("ConfigMap", []):
        text = (cm.get("data") or {}).get("optiroute.toml")
        if text:
            path = tmp / f"{dig(cm, 'metadata', 'name')}.toml"
            path.write_text(text, encoding="utf-8")
            files.append(path)
    env = dict(os.environ, OPTIROUTE_REDIS_URL="redis://127.0.0.1:6379/0")
    problems = []
    for f in files:
        try:
            proc = subprocess.run(
                [optiroute_bin, "check-config", "--config", str(f)],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [f"cannot run {optiroute_bin}: {exc}"], ""
        if proc.returncode != 0:
            out = (proc.stderr or proc.stdout).strip()[-400:]
            problems.append(f"{f.name}: exit code {proc.returncode}" + (f": {out}" if out else ""))
    return problems, f"{len(files)} configs accepted"


# --------------------------------------------------------------------------------------------
# live checks


def parse_exposition(text: str) -> tuple[dict[str, str], set[str], dict[str, set[str]]]:
    """Return (declared family -> type, sample names, sample name -> label names)."""
    declared: dict[str, str] = {}
    samples: set[str] = set()
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                declared[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if m:
            samples.add(m.group(1))
            names = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            labels.setdefault(m.group(1), set()).update(names)
    return declared, samples, labels


def check_gateway_metrics(report: Report, metrics_url: str) -> None:
    try:
        status, ctype, body = http_get_text(metrics_url)
    except (OSError, urllib.error.URLError) as exc:
        report.fail("gateway /metrics", f"cannot fetch {metrics_url}: {exc}")
        return
    if status != 200:
        report.fail("gateway /metrics", f"HTTP {status} from {metrics_url}")
        return
    report.ok("gateway /metrics", f"HTTP 200, {ctype or 'no content-type'}, {len(body)} bytes")
    declared, samples, labels = parse_exposition(body)
    missing, undeclared, empty = [], [], []
    for fam in sorted(COUNTERS | GAUGES | HISTOGRAMS):
        sample_names = {fam + s for s in ("_bucket", "_sum", "_count")} if fam in HISTOGRAMS else {fam}
        base = fam[: -len("_total")] if fam.endswith("_total") else fam
        if sample_names & samples:
            continue
        if fam in declared or base in declared:
            empty.append(fam)
        elif fam in OPTIONAL_FAMILIES:
            undeclared.append(fam)
        else:
            missing.append(fam)
    # names that look like ours but are not in the contract (likely misnamed)
    ours = re.compile(r"^(llm_|gateway_|http_request)")
    known_samples = KNOWN_SERIES | {f + "_created" for f in COUNTERS | HISTOGRAMS}
    unexpected = sorted(n for n in samples if ours.match(n) and n not in known_samples)
    if missing:
        report.fail("metric families present", f"missing (not even declared): {', '.join(missing)}")
    else:
        report.ok("metric families present")
    if undeclared:
        report.warn("optional metric families", f"not exposed yet: {', '.join(undeclared)}")
    if empty:
        report.warn("metric families without series", ", ".join(empty))
    if unexpected:
        report.warn("metrics outside the documented contract", ", ".join(unexpected))
    bad = sorted(f"{n}{{{lab}}}" for n, labs in labels.items() for lab in labs & FORBIDDEN_LABELS)
    report.check("metric labels are low-cardinality", [f"forbidden label(s): {', '.join(bad)}"] if bad else [])


def _die_with_parent() -> None:
    """In the child before exec: on Linux, have the kernel send SIGTERM to Prometheus if this
    script dies without running its cleanup (e.g. SIGKILL from a test harness)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class PrometheusProcess:
    def __init__(self, binary: str, config: Path, data_dir: Path, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.base = f"http://127.0.0.1:{port}"
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={data_dir}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-n:]
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def api(self, path: str, **params: str) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        return http_get_json(url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def wait_ready(prom: PrometheusProcess, deadline: float) -> bool:
    def ready() -> bool:
        if not prom.alive():
            raise Abort(f"prometheus exited with code {prom.proc.returncode}")
        status, _, _ = http_get_text(prom.base + "/-/ready", timeout=2)
        return status == 200

    return bool(poll(deadline, 0.1, ready))


def wait_scraped(prom: PrometheusProcess, deadline: float, min_scrapes: int) -> tuple[bool, str]:
    """Wait until the gateway target is up, has samples, and has been scraped min_scrapes times
    (so rate() over the substituted windows has at least two points)."""
    state = {"detail": "no answer from Prometheus"}

    def scraped() -> bool:
        if not prom.alive():
            raise Abort(f"prometheus exited with code {prom.proc.returncode}")
        targets = prom.api("/api/v1/targets", state="active")
        ours = [t for t in dig(targets, "data", "activeTargets") or [] if dig(t, "labels", "job") == GATEWAY_JOB]
        if not ours:
            state["detail"] = "gateway target not discovered yet (Prometheus applies discovered targets every 5 s)"
            return False
        t = ours[0]
        if t.get("health") != "up":
            state["detail"] = f"target {t.get('scrapeUrl')} health={t.get('health')} lastError={t.get('lastError')!r}"
            return False
        q = prom.api(
            "/api/v1/query",
            query=f'min(count_over_time(up{{job="{GATEWAY_JOB}"}}[5m])) >= {min_scrapes}'
            f' and min(scrape_samples_scraped{{job="{GATEWAY_JOB}"}}) > 0',
        )
        if dig(q, "data", "result"):
            state["detail"] = f"target {t.get('scrapeUrl')} up"
            return True
        state["detail"] = f"target {t.get('scrapeUrl')} up, waiting for {min_scrapes} scrapes with samples"
        return False

    ok = bool(poll(deadline, 0.2, scraped))
    return ok, state["detail"]


def scrape_count(prom: PrometheusProcess) -> int:
    q = prom.api("/api/v1/query", query=f'sum(count_over_time(up{{job="{GATEWAY_JOB}"}}[10m]))')
    res = dig(q, "data", "result") or []
    return int(float(res[0]["value"][1])) if res else 0


def scraped_since(prom: PrometheusProcess, count: int) -> bool:
    return scrape_count(prom) > count


def post_completion(base: str, body: dict[str, Any]) -> int:
    """POST one chat completion, read the whole body (JSON or SSE); return the HTTP status."""
    req = urllib.request.Request(
        base.rstrip("/") + "/v1/chat/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def drive_load(prom: PrometheusProcess, base: str, rounds: int, model: str, deadline: float) -> tuple[list[str], str]:
    """Send a little mixed traffic (cache miss, cache hit, streamed request) in each of `rounds`
    scrape intervals, so rate() windows hold real increases and histogram quantiles are numbers."""
    statuses: dict[int, int] = {}
    run = f"{os.getpid()}-{int(time.time())}"
    for i in range(rounds):
        before = scrape_count(prom)
        prompt = f"observability check {run} round {i}: say something short"
        bodies: list[dict[str, Any]] = [
            {"model": model, "messages": [{"role": "user", "content": prompt}]},
            {"model": model, "messages": [{"role": "user", "content": prompt}]},  # cache hit
            {
                "model": model,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": prompt + " (streamed)"}],
            },
        ]
        for body in bodies:
            try:
                code = post_completion(base, body)
            except (OSError, ValueError) as exc:
                return [f"request to {base} failed: {exc}"], ""
            statuses[code] = statuses.get(code, 0) + 1
        # one scrape between rounds, and one after the last, so every round is recorded
        if not poll(deadline, 0.1, functools.partial(scraped_since, prom, before)):
            return [f"no scrape after load round {i} before the deadline"], ""
    if not poll(deadline, 0.1, functools.partial(scraped_since, prom, scrape_count(prom))):
        return ["no scrape after the last load round before the deadline"], ""
    summary = ", ".join(f"{n}x HTTP {code}" for code, n in sorted(statuses.items()))
    return [], f"{rounds} rounds: {summary}"


def wait_rules(prom: PrometheusProcess, deadline: float, expected_groups: int) -> tuple[bool, list[str]]:
    state: dict[str, list[str]] = {"problems": ["rules not loaded"]}

    def evaluated() -> bool:
        data = prom.api("/api/v1/rules")
        groups = dig(data, "data", "groups") or []
        problems = []
        if len(groups) != expected_groups:
            problems.append(f"{len(groups)} rule groups loaded, want {expected_groups}")
        for g in groups:
            for r in g.get("rules") or []:
                if r.get("health") != "ok":
                    problems.append(f"{r.get('name')}: health={r.get('health')} {r.get('lastError', '')}".strip())
        state["problems"] = problems
        return not problems

    ok = bool(poll(deadline, 0.2, evaluated))
    return ok, state["problems"]


def result_summary(data: dict[str, Any]) -> tuple[int, int]:
    """Number of series and how many of them have a non-NaN value."""
    rtype = data.get("resultType")
    result: Any = data.get("result") or []
    if rtype == "scalar":
        return 1, int(not math.isnan(float(result[1])))
    if rtype == "vector":
        return len(result), sum(1 for r in result if not math.isnan(float(r["value"][1])))
    if rtype == "matrix":
        return len(result), sum(1 for r in result if any(not math.isnan(float(v[1])) for v in r["values"]))
    return 0, 0


def stray_fallback(data: dict[str, Any]) -> bool:
    """True when a grouped result also holds a series without labels: the mark of `X or vector(0)`
    where X is grouped `by (...)`, which adds a bogus `{}` series whenever X is not empty."""
    result = data.get("result") or [] if data.get("resultType") in ("vector", "matrix") else []
    labelled = [r for r in result if r.get("metric")]
    return bool(labelled) and len(labelled) < len(result)


def sample_values(data: dict[str, Any], limit: int = 4) -> str:
    """A short `{labels} value` rendering of an instant-query result, for --verbose."""
    out = []
    for r in (data.get("result") or [])[:limit] if data.get("resultType") == "vector" else []:
        labels = ",".join(f"{k}={v}" for k, v in sorted((r.get("metric") or {}).items()))
        out.append(f"{{{labels}}} {r['value'][1]}")
    return "; ".join(out)


def evaluate_exprs(
    report: Report,
    prom: PrometheusProcess,
    exprs: list[tuple[str, str]],
    custom: dict[str, str],
    nan_is_failure: bool,
    verbose: bool = False,
) -> None:
    """Evaluate every expression; NaN-only results fail when traffic was driven during scraping."""
    empty, errors, nan_only = [], [], []
    for where, raw in exprs:
        expr, unknown = substitute_grafana_vars(raw, custom)
        if unknown:
            errors.append(f"{where}: unknown variable(s) {unknown}")
            continue
        try:
            resp = prom.api("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read().decode("utf-8"))
                msg = body.get("error", str(exc))
            except (ValueError, OSError):
                msg = str(exc)
            errors.append(f"{where}: {msg}  <<{expr}>>")
            continue
        except (OSError, ValueError) as exc:
            errors.append(f"{where}: {exc}  <<{expr}>>")
            continue
        if resp.get("status") != "success":
            errors.append(f"{where}: {resp.get('error')}  <<{expr}>>")
            continue
        n, real = result_summary(resp.get("data") or {})
        if verbose:
            print(f"      {where}: {n} series, {real} with values: {sample_values(resp.get('data') or {})}", flush=True)
        if n == 0:
            empty.append(f"{where}  <<{expr}>>")
        elif stray_fallback(resp.get("data") or {}):
            errors.append(
                f"{where}: a label-less series next to labelled ones (`or vector(0)` needs `or on() vector(0)`)"
                f"  <<{expr}>>"
            )
        elif real == 0:
            nan_only.append(where)
    total = len(exprs)
    bad = len(errors) + len(empty)
    if errors:
        report.fail("dashboard exprs valid", f"{len(errors)} of {total} failed:\n    " + "\n    ".join(errors))
    else:
        report.ok("dashboard exprs valid", f"all {total} accepted by Prometheus")
    if empty:
        report.fail(
            "dashboard exprs return series", f"{len(empty)} of {total} returned no series:\n    " + "\n    ".join(empty)
        )
    else:
        report.ok("dashboard exprs return series", f"all {total} returned at least one series")
    if nan_only and nan_is_failure:
        report.fail("dashboard exprs have values", f"only NaN despite traffic during scraping: {'; '.join(nan_only)}")
    elif nan_only:
        report.warn(
            "dashboard exprs with only NaN values",
            "(no traffic inside the rate window while Prometheus was scraping; see --drive-load) "
            + "; ".join(nan_only),
        )
    elif nan_is_failure:
        report.ok("dashboard exprs have values", "no expression is NaN-only")
    if bad == 0:
        print(f"      evaluated {total} dashboard expressions", flush=True)


def parse_gateway(url: str) -> tuple[str, str, str, str]:
    """Return (scheme, host:port, metrics_path, metrics_url)."""
    u = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"bad --gateway URL {url!r}")
    port = u.port or (443 if u.scheme == "https" else 80)
    host = f"[{u.hostname}]" if ":" in u.hostname else u.hostname
    metrics_path = (u.path.rstrip("/") or "") + "/metrics"
    return u.scheme, f"{host}:{port}", metrics_path, f"{u.scheme}://{host}:{port}{metrics_path}"


def live_checks(report: Report, root: Path, args: argparse.Namespace, dash: dict[str, Any] | None, tmp: Path) -> None:
    deploy = root / "deploy"
    try:
        scheme, target, metrics_path, metrics_url = parse_gateway(args.gateway)
    except ValueError as exc:
        report.fail("gateway URL", str(exc))
        return
    check_gateway_metrics(report, metrics_url)

    rules_copy = tmp / "alerts.yml"
    shutil.copyfile(deploy / "alerts.yml", rules_copy)
    port = free_loopback_port()
    cfg = rewrite_prometheus_config(deploy / "prometheus.yml", rules_copy, target, scheme, metrics_path, port)
    cfg_path = tmp / "prometheus.yml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    rc, out = run_cmd([args.promtool_bin, "check", "config", str(cfg_path)])
    report.check(f"promtool check config (rewritten for {target})", [out] if rc else [])
    if rc:
        return
    expected_groups = len(load_yaml(deploy / "alerts.yml").get("groups") or [])

    data_dir = tmp / "tsdb"
    data_dir.mkdir()
    prom = PrometheusProcess(args.prometheus_bin, cfg_path, data_dir, port, tmp / "prometheus.log")
    try:
        deadline = time.monotonic() + args.timeout
        if not wait_ready(prom, deadline):
            report.fail("prometheus ready", f"not ready on {prom.base} within {args.timeout}s; log:\n{prom.log_tail()}")
            return
        report.ok("prometheus ready", prom.base)
        ok, detail = wait_scraped(prom, deadline, args.min_scrapes)
        if not ok:
            report.fail("gateway scraped", f"{detail} (after {args.timeout}s)")
            return
        report.ok("gateway scraped", detail)
        strict = args.drive_load > 0
        if strict:
            problems, detail = drive_load(prom, args.gateway, args.drive_load, args.load_model, deadline)
            report.check(f"drive load (model {args.load_model!r}) while Prometheus scrapes", problems, detail)
        ok, problems = wait_rules(prom, deadline, expected_groups)
        report.check(
            "alert rules loaded and evaluated",
            problems if not ok else [],
            f"{expected_groups} groups, all rules healthy",
        )
        if dash is not None:
            evaluate_exprs(report, prom, dashboard_exprs(dash), custom_variables(dash), strict, args.verbose)
    finally:
        prom.stop()
        if not prom.alive():
            print(f"      prometheus (pid {prom.proc.pid}) stopped", flush=True)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--gateway",
        help="base URL of a running gateway, e.g. http://127.0.0.1:8000 (without it only the static checks run)",
    )
    ap.add_argument("--prometheus-bin", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--promtool-bin", default=shutil.which("promtool") or "promtool")
    ap.add_argument(
        "--optiroute-bin",
        help="gateway binary: also run `optiroute check-config` on the shipped configs (k8s ConfigMap, compose)",
    )
    ap.add_argument("--repo-root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Prometheus (default 60)")
    ap.add_argument(
        "--min-scrapes", type=int, default=3, help="scrapes of the gateway to wait for before querying (default 3)"
    )
    ap.add_argument(
        "--drive-load",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="send ROUNDS rounds of traffic (miss, hit, stream) to the gateway while Prometheus scrapes; "
        "then an expression whose series are all NaN also fails (default 0: off)",
    )
    ap.add_argument("--load-model", default="auto", help="model for --drive-load requests (default auto)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every dashboard query's result")
    args = ap.parse_args(argv)

    # SIGTERM/SIGINT unwind through the finally blocks, so Prometheus is always stopped.
    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    root: Path = args.repo_root.resolve()
    deploy = root / "deploy"
    report = Report()

    # --- Prometheus and alert rules
    run_check(report, "prometheus.yml structure", lambda: check_prometheus_yml(deploy))
    rc, out = run_cmd([args.promtool_bin, "check", "config", str(deploy / "prometheus.yml")])
    report.check("promtool check config deploy/prometheus.yml", [out] if rc else [])
    rc, out = run_cmd([args.promtool_bin, "check", "rules", str(deploy / "alerts.yml")])
    report.check(
        "promtool check rules deploy/alerts.yml", [out] if rc else [], out.splitlines()[-1].strip() if out else ""
    )
    run_check(report, "alerts.yml required alerts", lambda: check_alert_names(deploy))
    if (deploy / "alerts_test.yml").is_file():
        rc, out = run_cmd([args.promtool_bin, "test", "rules", str(deploy / "alerts_test.yml")], timeout=120)
        report.check("promtool test rules deploy/alerts_test.yml", [out] if rc else [])

    # --- Grafana
    dash: dict[str, Any] | None = None
    try:
        dash = json.loads((deploy / "grafana/dashboards/optiroute.json").read_text(encoding="utf-8"))
        report.ok("dashboard JSON parses", f"{len(dashboard_exprs(dash))} expressions")
    except (OSError, ValueError) as exc:
        report.fail("dashboard JSON parses", str(exc))
    if dash is not None:
        run_check(report, "dashboard panels and datasource variable", lambda: check_dashboard(dash))
        run_check(
            report,
            "dashboard and alerts use documented metric names",
            lambda: check_known_metrics(dashboard_exprs(dash) + alert_exprs(deploy)),
        )
    run_check(report, "grafana provisioning", lambda: check_grafana_provisioning(deploy))

    # --- containers and Kubernetes
    run_check(report, "Dockerfile and .dockerignore", lambda: check_dockerfile(root))
    run_check(report, "docker-compose.yml", lambda: check_compose(root))
    run_check(report, "kubernetes manifests", lambda: check_k8s(root))
    if args.optiroute_bin:
        with tempfile.TemporaryDirectory(prefix="optiroute-cfg-") as tmp:
            run_check(
                report,
                "optiroute check-config on shipped configs",
                lambda: check_configs_with_gateway(root, args.optiroute_bin, Path(tmp)),
            )

    # --- live
    if args.gateway:
        with tempfile.TemporaryDirectory(prefix="optiroute-obs-") as tmp:
            try:
                live_checks(report, root, args, dash, Path(tmp))
            except Abort as exc:
                report.fail("live checks", str(exc))
            except Exception as exc:  # noqa: BLE001 - report, never hide
                report.fail("live checks", f"{type(exc).__name__}: {exc}")
    else:
        print("SKIP  live checks (no --gateway given)", flush=True)

    if report.failed:
        print("\nFailures:", flush=True)
        for f in report.failed:
            print(f"  - {f.splitlines()[0]}", flush=True)
    print(f"{report.passed} passed, {len(report.failed)} failed", flush=True)
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
