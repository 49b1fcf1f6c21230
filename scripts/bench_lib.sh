# Shared by the benchmark scripts (sourced, not run).

# wait_listening FILE: waits (up to 60 s) until a server started with its stdout in FILE prints its
# `OPTIROUTE_LISTENING http://ADDR` line, then prints the URL.
wait_listening() {
  for _ in $(seq 1 1200); do
    if grep -q OPTIROUTE_LISTENING "$1" 2>/dev/null; then
      awk '/OPTIROUTE_LISTENING/ {print $2; exit}' "$1"
      return
    fi
    sleep 0.05
  done
  echo "server did not start: $1" >&2
  cat "${1%.out}.err" >&2 2>/dev/null || true
  exit 1
}

# proxy_config MOCK_URL: the gateway config the benchmarks measure: cache off, one attempt, and one
# OpenAI-compatible deployment `m` on the mock upstream at MOCK_URL.
proxy_config() {
  cat <<TOML
[cache]
enabled = false
[resilience]
max_attempts = 1
[[providers]]
name = "mock"
kind = "openai"
base_url = "$1/v1"
[[deployments]]
name = "m"
provider = "mock"
model = "mock-model"
tier = "cloud"
TOML
}
