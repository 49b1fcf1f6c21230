"""End-to-end: a real Prometheus scrapes a real gateway under mixed load (cache hits and misses, both
tiers, upstream failures), and every PromQL expression of the shipped Grafana dashboard returns data.
The checks themselves live in scripts/check_observability.py."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from gateway import Gateway  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

# Demo deployments, with the cloud tier failing a third of its calls so errors, retries, fallbacks and
# breaker transitions all show up.
CONFIG = """
[resilience]
max_attempts = 2
backoff_base_ms = 1
backoff_max_ms = 5
[resilience.breaker]
consecutive_failures = 3
cooldown_secs = 1
max_cooldown_secs = 2

[[providers]]
name = "sim-local"
kind = "simulated"
[providers.simulated]
latency_ms = 5
tokens_per_s = 2000.0

[[providers]]
name = "sim-cloud"
kind = "simulated"
[providers.simulated]
latency_ms = 20
tokens_per_s = 2000.0
failure_rate = 0.35
seed = 3

[[deployments]]
name = "local"
provider = "sim-local"
model = "sim-local-8b"
tier = "local"
usd_per_request = 0.00002
input_usd_per_mtok = 0.0
output_usd_per_mtok = 0.0

[[deployments]]
name = "cloud"
provider = "sim-cloud"
model = "sim-cloud-large"
tier = "cloud"
input_usd_per_mtok = 2.5
output_usd_per_mtok = 10.0
"""


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def drive(url):
    statuses = {}
    hard = "Explain step by step, with a rigorous proof and Python code, why the halting problem is undecidable."
    for i in range(40):
        for prompt, model in ((f"hi {i % 5}", "auto"), (f"{hard} ({i % 7})", "auto"), (f"direct {i}", "cloud")):
            s, _ = post(url + "/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": prompt}]})
            statuses[s] = statuses.get(s, 0) + 1
        s, _ = post(url + "/v1/chat/completions", {"model": "auto", "stream": True, "messages": [{"role": "user", "content": f"stream {i % 3}"}]})
        statuses[s] = statuses.get(s, 0) + 1
    print("load statuses:", statuses)
    return statuses


def main():
    prometheus = shutil.which("prometheus")
    promtool = shutil.which("promtool")
    if not prometheus or not promtool:
        print("prometheus/promtool missing: run scripts/test.sh, which installs them")
        print("0 passed, 1 failed")
        return 1
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(CONFIG)
        cfg = f.name
    try:
        with Gateway("--config", cfg) as gw:
            statuses = drive(gw.url)
            assert statuses.get(200, 0) > 100, statuses
            cmd = [
                sys.executable, os.path.join(ROOT, "scripts", "check_observability.py"),
                "--gateway", gw.url, "--prometheus-bin", prometheus, "--promtool-bin", promtool,
                "--optiroute-bin", os.environ.get("OPTIROUTE_BIN", os.path.join(ROOT, "target/debug/optiroute")),
                "--drive-load", "3", "--repo-root", ROOT,
            ]
            return subprocess.call(cmd)
    finally:
        os.unlink(cfg)


if __name__ == "__main__":
    sys.exit(main())
