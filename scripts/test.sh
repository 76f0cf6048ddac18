#!/usr/bin/env bash
# Runs every test of ferrohub: formatting, clippy, the Rust unit and
# integration tests, and the compatibility suites that drive a real
# `ferrohub serve` with the official Azure IoT SDKs (service side: npm
# azure-iothub, PyPI azure-iot-hub; device side: npm azure-iot-device with
# azure-iot-device-mqtt over Mqtt and MqttWs and azure-iot-device-http over
# HTTPS, PyPI azure-iot-device over TCP and WebSockets). It installs what those need first: Debian packages
# with apt-get when a command is missing, npm and pip packages at the exact
# versions pinned under compat/.
#
# Usage: scripts/test.sh            (from any directory; CI runs it as .ci/run)
#
# Every step runs even when an earlier one failed; a summary closes the
# output and the exit status is non-zero when any step failed.
#
# The compatibility suites start the hub on ports 443 and 8883, because the
# official SDKs only dial those (service REST and MQTT over WebSockets on
# 443, MQTT over TLS on 8883). As root (CI) that just works; otherwise the
# script grants the test binary cap_net_bind_service through `sudo -n
# setcap` when it can. The device suites also run the ferrohub CLI
# (`monitor-events`, `c2d-message send`) from FERROHUB_BIN; the tutorial's
# back end gets the `service` policy's connection string in
# FERROHUB_SERVICE_CONNECTION_STRING. The hub's periodic configuration pass is
# set to an hour, so configuration tests see event-driven evaluation only.
#
# Environment:
#   CARGO_TARGET_DIR        build directory (default ~/.cache/ferrohub/target,
#                           outside the clone so a fresh clone builds fast)
#   FERROHUB_CACHE_DIR      cache for the Python virtualenv (default ~/.cache/ferrohub)
#   FERROHUB_BIN            the ferrohub binary the compatibility suites run,
#                           as the hub and as the CLI they call (default: the
#                           debug build this script makes); exported to them
#   FERROHUB_READY_TIMEOUT  seconds to wait for the hub's ready line (default 120)
#   FERROHUB_SUITE_TIMEOUT  seconds each compatibility suite may take (default 600)
#   RUST_LOG                the hub's log filter (default info,tower_http=debug,ferrohub_server=debug)

# Functions run through `step` and traps look unreachable to shellcheck.
# shellcheck disable=SC2317
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferrohub/target}"
CACHE_DIR="${FERROHUB_CACHE_DIR:-$HOME/.cache/ferrohub}"
READY_TIMEOUT="${FERROHUB_READY_TIMEOUT:-120}"
SUITE_TIMEOUT="${FERROHUB_SUITE_TIMEOUT:-600}"
HTTPS_PORT=443
MQTT_PORT=8883
NODE_DIR="$ROOT/compat/node"
PY_DIR="$ROOT/compat/python"
BIN="$(realpath -m "${FERROHUB_BIN:-$CARGO_TARGET_DIR/debug/ferrohub}")"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1
export npm_config_audit=false
export npm_config_fund=false
export npm_config_update_notifier=false

mkdir -p "$CACHE_DIR" "$CARGO_TARGET_DIR"
WORK="$(mktemp -d)"
HUB_PID=""
HUB_DATA=""
HUB_OUT="$WORK/hub.stdout"
HUB_ERR="$WORK/hub.stderr"

RESULTS=()
FAILURES=0

log() { printf '%s\n' "$*"; }
section() { printf '\n==> %s\n' "$*"; }

cleanup() {
  local rc=$?
  if [[ -n "$HUB_PID" ]] && kill -0 "$HUB_PID" 2>/dev/null; then
    kill -TERM "$HUB_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$HUB_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$HUB_PID" 2>/dev/null || true
    wait "$HUB_PID" 2>/dev/null || true
  fi
  [[ -n "$HUB_DATA" ]] && rm -rf "$HUB_DATA"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record() { # record NAME RC SECONDS
  if [[ "$2" -eq 0 ]]; then
    RESULTS+=("ok      $1 (${3}s)")
  else
    RESULTS+=("FAILED  $1 (exit $2, ${3}s)")
    FAILURES=$((FAILURES + 1))
  fi
}

# step NAME COMMAND...: runs COMMAND in a subshell with `set -e` in force
# (a function called in an `if` would lose it), records the outcome and
# never stops the script.
step() {
  local name="$1" start=$SECONDS rc
  shift
  section "$name"
  set +e
  (
    set -e
    "$@"
  )
  rc=$?
  set -e
  record "$name" "$rc" $((SECONDS - start))
  return 0
}

# --- installing what the tests need ------------------------------------------

APT_UPDATED=""
apt_install() {
  local sudo=()
  if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo -n)
    else
      log "need root to run: apt-get install $*" >&2
      return 1
    fi
  fi
  if [[ -z "$APT_UPDATED" ]]; then
    "${sudo[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

install_system_packages() {
  local missing=()
  command -v node >/dev/null 2>&1 || missing+=(nodejs)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-venv)
  # The Rust integration tests make and inspect certificates with openssl
  # and drop privileges with setpriv (util-linux).
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
  # The telemetry benchmark's smoke run compares against Debian's Mosquitto.
  [[ -x /usr/sbin/mosquitto ]] || command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
  # The /metrics test lints the hub's exposition with promtool.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  else
    log "node $(node --version), npm $(npm --version), $(python3 --version): present"
  fi
}

# npm packages: compat/node/package-lock.json pins every package exactly and
# `npm ci` installs exactly that into compat/node/node_modules (gitignored:
# Node resolves require() from the test files' folder). A stamp with the
# lockfile's hash skips the reinstall when nothing changed.
install_node_packages() {
  local stamp="$NODE_DIR/node_modules/.ferrohub-installed" want
  want="$(cat "$NODE_DIR/package-lock.json" <(node --version) | sha256sum | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    log "compat/node/node_modules is up to date with package-lock.json"
    return 0
  fi
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" >"$stamp"
  (cd "$NODE_DIR" && npm ls --depth=0)
}

# pip packages: compat/python/requirements.txt pins every package exactly;
# they go into a virtualenv under the cache directory, named after the hash of
# requirements.txt and the Python version, so a fresh clone (CI) reuses it and
# a changed pin makes a new one. Building it under a lock keeps two runs apart.
PY_KEY="$(cat "$PY_DIR/requirements.txt" <(python3 -c 'import sys,platform; print(sys.version, platform.machine())' 2>/dev/null || true) | sha256sum | cut -c1-16)"
VENV="$CACHE_DIR/venv-$PY_KEY"

install_python_packages() {
  exec 9>"$CACHE_DIR/venv.lock"
  flock 9
  if [[ -f "$VENV/.ferrohub-installed" ]]; then
    log "virtualenv $VENV is up to date with requirements.txt"
  else
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV"; then
      # Debian's python3 ships venv without ensurepip: that is python3-venv.
      rm -rf "$VENV"
      apt_install python3-venv
      python3 -m venv "$VENV"
    fi
    "$VENV/bin/python" -m pip install --quiet -r "$PY_DIR/requirements.txt"
    touch "$VENV/.ferrohub-installed"
  fi
  "$VENV/bin/python" -m pip freeze | grep -E '^(azure-iot-hub|azure-iot-device|paho-mqtt|six|pytest)=='
}

# --- Rust ---------------------------------------------------------------------

rust_tests() {
  if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace
  else
    log "cargo-nextest not found: using cargo test"
    cargo test --workspace
  fi
}

# --- the hub for the compatibility suites ---------------------------------------

# Lets a non-root user bind 443: nothing to do as root or when unprivileged
# ports start low enough, else setcap on the test binary through sudo -n.
allow_low_ports() {
  [[ "$(id -u)" -eq 0 ]] && return 0
  local start
  start="$(sysctl -n net.ipv4.ip_unprivileged_port_start 2>/dev/null || echo 1024)"
  ((start <= HTTPS_PORT)) && return 0
  if command -v sudo >/dev/null 2>&1 && sudo -n setcap cap_net_bind_service=+ep "$BIN" 2>/dev/null; then
    log "granted cap_net_bind_service to $BIN"
    return 0
  fi
  log "cannot bind port $HTTPS_PORT as $(id -un): run as root or 'sudo setcap cap_net_bind_service=+ep $BIN'" >&2
  return 1
}

# start_hub [DIR]: a new hub on a fresh data dir, or again on DIR (a restart).
start_hub() {
  [[ -x "$BIN" ]] || { log "no ferrohub binary at $BIN (the build failed)" >&2; return 1; }
  allow_low_ports || return 1
  HUB_DATA="${1:-$(mktemp -d)}"
  # A restart starts new logs (the ready line is looked for in them); the
  # earlier run's are kept beside them.
  if [[ -s "$HUB_OUT" ]]; then
    cat "$HUB_OUT" >>"$HUB_OUT.before-restart"
    cat "$HUB_ERR" >>"$HUB_ERR.before-restart"
  fi
  : >"$HUB_OUT"
  : >"$HUB_ERR"
  # The configuration engine's periodic full pass is set to an hour: the
  # suites' configuration tests must pass on event-driven evaluation alone.
  log "starting: ferrohub serve --data-dir $HUB_DATA --https-port $HTTPS_PORT --mqtt-port $MQTT_PORT --config-eval-interval 3600"
  RUST_LOG="${RUST_LOG:-info,tower_http=debug,ferrohub_server=debug}" \
    "$BIN" serve --data-dir "$HUB_DATA" --https-port "$HTTPS_PORT" --mqtt-port "$MQTT_PORT" \
    --config-eval-interval 3600 \
    >"$HUB_OUT" 2>"$HUB_ERR" </dev/null &
  HUB_PID=$!
  # Wait for the ready line: poll the output as it is written, bounded by a
  # timeout, and stop early when the process exits.
  local deadline=$((SECONDS + READY_TIMEOUT)) line="" rc
  while ((SECONDS < deadline)); do
    line="$(grep -m1 -E '^ready https=[0-9]+ mqtt=[0-9]+' "$HUB_OUT" || true)"
    [[ -n "$line" ]] && break
    if ! kill -0 "$HUB_PID" 2>/dev/null; then
      wait "$HUB_PID" && rc=0 || rc=$?
      HUB_PID=""
      log "ferrohub serve exited with status $rc before it was ready" >&2
      show_hub_log
      return 1
    fi
    sleep 0.1
  done
  if [[ -z "$line" ]]; then
    log "no ready line from ferrohub serve within ${READY_TIMEOUT}s" >&2
    show_hub_log
    return 1
  fi
  log "hub (pid $HUB_PID): $line"
  if [[ "$line" != "ready https=$HTTPS_PORT mqtt=$MQTT_PORT" ]]; then
    log "expected: ready https=$HTTPS_PORT mqtt=$MQTT_PORT" >&2
    return 1
  fi
  local env_lines
  env_lines="$("$BIN" env --data-dir "$HUB_DATA")" || { log "ferrohub env failed" >&2; return 1; }
  eval "$env_lines"
  # The device suites run the CLI (monitor-events, c2d-message send).
  export FERROHUB_BIN="$BIN"
  # The tutorial's back end authenticates with the `service` policy.
  FERROHUB_SERVICE_CONNECTION_STRING="$("$BIN" connection-string show --policy-name service \
    --data-dir "$HUB_DATA" -o tsv)" || { log "ferrohub connection-string show --policy-name service failed" >&2; return 1; }
  export FERROHUB_SERVICE_CONNECTION_STRING
  local var absent=0
  for var in IOTHUB_CONNECTION_STRING NODE_EXTRA_CA_CERTS REQUESTS_CA_BUNDLE SSL_CERT_FILE \
    FERROHUB_HTTPS_PORT FERROHUB_MQTT_PORT FERROHUB_CA FERROHUB_SERVICE_CONNECTION_STRING; do
    if [[ -z "${!var:-}" ]]; then
      log "ferrohub env did not export $var" >&2
      absent=1
    fi
  done
  ((absent == 0)) || return 1
  log "ferrohub env: HostName=$(sed -n 's/.*HostName=\([^;]*\).*/\1/p' <<<"$IOTHUB_CONNECTION_STRING"), CA $FERROHUB_CA"
}

# The hub's output for a failure report: colour codes stripped, keys hidden.
show_hub_log() {
  local clean='s/\x1b\[[0-9;]*m//g; s/(SharedAccessKey=)[^;[:space:]]+/\1<hidden>/g'
  log "--- ferrohub serve stdout (last 50 lines) ---"
  tail -n 50 "$HUB_OUT" 2>/dev/null | sed -E "$clean" || true
  log "--- ferrohub serve stderr (last 200 lines) ---"
  tail -n 200 "$HUB_ERR" 2>/dev/null | sed -E "$clean" || true
  log "--- end of ferrohub serve output ---"
}

# SIGTERM must end the hub cleanly: exit status 0 within 30 seconds.
stop_hub() {
  local pid="$HUB_PID" rc
  HUB_PID=""
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "ferrohub serve still running 30s after SIGTERM: killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return 1
  fi
  wait "$pid" && rc=0 || rc=$?
  log "ferrohub serve exited with status $rc after SIGTERM"
  if [[ -f "$HUB_DATA/hub.json" ]]; then
    log "hub.json is still there after a clean exit" >&2
    rc=1
  fi
  return "$rc"
}

# --- the compatibility suites --------------------------------------------------

node_suite() {
  local summary="$WORK/node-summary" rc runner_opts=()
  rm -f "$summary"
  cd "$NODE_DIR"
  # A time limit where this Node has it (20.11 and later). Node 20 applies it
  # to each test file as a whole, and the tutorial file runs for a while.
  if node --help | grep -q -- '--test-timeout'; then
    runner_opts=(--test-timeout=300000)
  fi
  # One test file at a time: the tutorial's configuration targets every
  # device tagged chiller, as registry.test.js tags its device.
  if node --help | grep -q -- '--test-concurrency'; then
    runner_opts+=(--test-concurrency=1)
  fi
  set +e
  timeout --kill-after=10 "$SUITE_TIMEOUT" node --test "${runner_opts[@]}" \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=./summary-reporter.mjs --test-reporter-destination="$summary" \
    test/
  rc=$?
  set -e
  # The closing `N passed, N failed` line (mocha-style runners print none).
  if [[ -s "$summary" ]]; then
    cat "$summary"
  else
    log "0 passed, 1 failed"
  fi
  ((rc == 0)) || show_hub_log
  return "$rc"
}

# The one Node test that needs the hub restarted under connected devices
# (compat/node/restart/): it creates FERROHUB_RESTART_REQUEST when its
# devices are ready; the hub is then stopped with SIGTERM (it must exit 0)
# and started again on the same data dir, and FERROHUB_RESTART_DONE tells
# the test to go on. Runs in this shell, not through `step`'s subshell, so
# that the restarted hub is this shell's child (stop_hub waits for it).
node_restart_suite() {
  local summary="$WORK/node-restart-summary" request="$WORK/restart-request" done_file="$WORK/restart-done"
  local node_pid rc deadline
  rm -f "$summary" "$request" "$done_file"
  (cd "$NODE_DIR" && FERROHUB_RESTART_REQUEST="$request" FERROHUB_RESTART_DONE="$done_file" \
    exec timeout --kill-after=10 "$SUITE_TIMEOUT" node --test \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=./summary-reporter.mjs --test-reporter-destination="$summary" \
    restart/) &
  node_pid=$!
  deadline=$((SECONDS + 120))
  while [[ ! -e "$request" ]] && kill -0 "$node_pid" 2>/dev/null && ((SECONDS < deadline)); do
    sleep 0.1
  done
  rc=0
  if [[ -e "$request" ]]; then
    log "restarting the hub on $HUB_DATA, as the test asked"
    if stop_hub && start_hub "$HUB_DATA"; then
      touch "$done_file"
    else
      log "the hub restart failed" >&2
      rc=1
    fi
  fi
  wait "$node_pid" || rc=$?
  if [[ -s "$summary" ]]; then
    cat "$summary"
  else
    log "0 passed, 1 failed"
  fi
  ((rc == 0)) || show_hub_log
  return "$rc"
}

python_suite() {
  local rc
  cd "$PY_DIR"
  set +e
  timeout --kill-after=10 "$SUITE_TIMEOUT" "$VENV/bin/python" -m pytest
  rc=$?
  set -e
  ((rc == 0)) || show_hub_log
  return "$rc"
}

# No secret reaches the hub's log: after the SDK suites (thousands of
# authenticated requests and connections, failed ones included), neither
# the stderr log nor the one kept from before the restart holds a SAS
# token, a connection string's key or any policy key. Matches are counted,
# never printed.
no_secrets_in_logs() {
  local logs=("$HUB_ERR") found=0 pattern
  [[ -s "$HUB_ERR.before-restart" ]] && logs+=("$HUB_ERR.before-restart")
  local patterns=('SharedAccessSignature' 'sig=' 'SharedAccessKey=')
  mapfile -t -O "${#patterns[@]}" patterns < <("$VENV/bin/python" -c '
import json, sys
for p in json.load(open(sys.argv[1])):
    for k in ("primaryKey", "secondaryKey", "primary_key", "secondary_key"):
        if p.get(k): print(p[k])
' "$HUB_DATA/policies.json")
  ((${#patterns[@]} > 3)) || { log "no policy keys read from $HUB_DATA/policies.json" >&2; return 1; }
  for pattern in "${patterns[@]}"; do
    local n
    n="$(cat "${logs[@]}" | grep -cF -- "$pattern" || true)"
    if ((n > 0)); then
      log "the hub's log holds a secret ($n lines match pattern #$(( found + 1 )))" >&2
      found=$((found + 1))
    fi
  done
  log "checked $(cat "${logs[@]}" | wc -l) log lines for ${#patterns[@]} secret patterns"
  ((found == 0))
}

# Each benchmark scenario at a tiny size, for seconds: keeps them building and
# working. Their numbers mean nothing here (debug build, tiny sizes); the
# measured ones are in BENCHMARKS.md.
BENCH_SCENARIOS=(probe connect reported rollout telemetry query startup soak)
bench_smoke() {
  local bench="$CARGO_TARGET_DIR/debug/ferrohub-bench" scenario
  for scenario in "${BENCH_SCENARIOS[@]}"; do
    log "ferrohub-bench $scenario --smoke"
    timeout --kill-after=10 300 "$bench" "$scenario" --smoke --out "$WORK/bench"
  done
}

# --- run everything --------------------------------------------------------------

step "install Debian packages (only what is missing)" install_system_packages
step "install npm packages (compat/node, npm ci)" install_node_packages
step "install pip packages (compat/python/requirements.txt)" install_python_packages
step "cargo fmt --all -- --check" cargo fmt --all -- --check
step "cargo clippy --workspace --all-targets -- -D warnings" \
  cargo clippy --workspace --all-targets -- -D warnings
step "cargo build -p ferrohub -p ferrohub-bench (the binaries the suites run)" \
  cargo build -p ferrohub --bin ferrohub -p ferrohub-bench --bin ferrohub-bench
step "Rust tests (cargo nextest run --workspace)" rust_tests

step "benchmark smoke runs (ferrohub-bench SCENARIO --smoke)" bench_smoke

section "start ferrohub serve for the SDK compatibility suites"
start=$SECONDS
if start_hub; then
  record "ferrohub serve on :$HTTPS_PORT/:$MQTT_PORT is ready" 0 $((SECONDS - start))
  step "Node SDK compatibility (azure-iothub, azure-iot-device)" node_suite
  section "Node SDK persistent sessions across a hub restart"
  start=$SECONDS
  restart_rc=0
  node_restart_suite || restart_rc=$?
  record "Node SDK persistent sessions across a hub restart" "$restart_rc" $((SECONDS - start))
  step "Python SDK compatibility (azure-iot-hub, azure-iot-device)" python_suite
  section "stop ferrohub serve with SIGTERM"
  start=$SECONDS
  stop_rc=0
  stop_hub || stop_rc=$?
  ((stop_rc == 0)) || show_hub_log
  record "ferrohub serve exits 0 on SIGTERM" "$stop_rc" $((SECONDS - start))
  step "no key or token in the hub's log" no_secrets_in_logs
else
  record "ferrohub serve on :$HTTPS_PORT/:$MQTT_PORT is ready" 1 $((SECONDS - start))
  record "Node SDK compatibility (azure-iothub, azure-iot-device): not run, no hub" 1 0
  record "Python SDK compatibility (azure-iot-hub, azure-iot-device): not run, no hub" 1 0
fi

section "summary"
for line in "${RESULTS[@]}"; do
  log "  $line"
done
if ((FAILURES == 0)); then
  log "every step succeeded (${#RESULTS[@]} steps)"
  exit 0
fi
log "$FAILURES of ${#RESULTS[@]} steps FAILED"
exit 1
