#!/usr/bin/env bash
# The node's own cost per alert, counted in instructions rather than seconds: repeatable
# whatever else the machine is doing, so two builds can be compared on a noisy machine.
#
#   bench/scripts/node-instructions.sh [CUEBOX_BINARY ...]
#   SCENARIO=drain bench/scripts/node-instructions.sh [CUEBOX_BINARY ...]
#
# For each binary (default target/release/cuebox): a redis-server of its own, a node on it under
# callgrind, then `cuebox-bench cycles --rate 100 --seconds 10` (every alert an HTTP publish, a
# send, a start and a done at 50 widgets), or with SCENARIO=drain `cuebox-bench drain --receivers
# 20 --alerts 50` after 1,000 publishes to receivers with no widget, the drain's own part being its
# run less what its fill's publishes cost. Prints the node's instructions per alert shown (the
# node's `cuebox_alerts_total{outcome="shown"}` before and after). Reads the profile with
# `callgrind_annotate DIR/out.1` when KEEP=1. Needs valgrind and a release build of cuebox-bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=target/release/cuebox-bench
[ -x "$bench" ] || { echo "build it first: cargo build --release --workspace" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
total() { grep -h '^totals:\|^summary:' "$1" | head -1 | awk '{print $2}'; }
shown() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^cuebox_alerts_total\{outcome="shown"\}/ {print $2}'; }

measure() {
  local bin=$1 dir rp hp vp rpid
  dir=$(mktemp -d); rp=$(free_port); hp=$(free_port)
  redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null & rpid=$!
  for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
  CUEBOX_LOG=warn CUEBOX_ALERT_GAP_MS=0 valgrind --tool=callgrind --callgrind-out-file="$dir/out" \
    "$bin" serve --bind "127.0.0.1:$hp" --redis-url "redis://127.0.0.1:$rp/" \
    --publish-key k --secret s >/dev/null 2>&1 & vp=$!
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$hp/readyz" && break; sleep 0.2; done
  local b=("$bench" --node "127.0.0.1:$hp" --publish-key k --secret s --pid "$vp"
    --redis-url "redis://127.0.0.1:$rp/" --redis-pid "$rpid")
  "${b[@]}" cycles --rate 100 --seconds 2 --warmup 1 --no-half >/dev/null 2>&1
  local before after
  before=$(shown "$hp"); callgrind_control -z "$vp" >/dev/null 2>&1
  if [ "${SCENARIO:-cycles}" = drain ]; then
    python3 - "$hp" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(1000):
    body = json.dumps({"receiver": f"pub{i % 20}", "from": "Ana", "message": "x" * 40})
    c.request("POST", "/publish", body, {"Authorization": "Bearer k", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
PY
    callgrind_control -d "$vp" >/dev/null 2>&1; callgrind_control -z "$vp" >/dev/null 2>&1
    before=$(shown "$hp")
    "${b[@]}" drain --receivers 20 --alerts 50 --rounds 1 >"$dir/run.txt" 2>&1
    callgrind_control -d "$vp" >/dev/null 2>&1; after=$(shown "$hp")
    kill "$vp" 2>/dev/null; wait "$vp" 2>/dev/null || true
    redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
    local p t n; p=$(total "$dir/out.1"); t=$(total "$dir/out.2")
    n=$(python3 -c "print(int(float('$after') - float('$before')))")
    echo "$bin: publish $((p / 1000000))k, drain $(((t - p * n / 1000) / n / 1000))k instructions of the node per alert ($n drained)"
    if [ "${KEEP:-0}" = 1 ]; then echo "  profiles: $dir/out.1 (publish) $dir/out.2 (drain)"; else rm -rf "$dir"; fi
    return
  else
    "${b[@]}" cycles --rate 100 --seconds 10 --warmup 1 --no-half >"$dir/run.txt" 2>&1
  fi
  callgrind_control -d "$vp" >/dev/null 2>&1; after=$(shown "$hp")
  kill "$vp" 2>/dev/null; wait "$vp" 2>/dev/null || true
  redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  local n t; n=$(python3 -c "print(int(float('$after') - float('$before')))"); t=$(total "$dir/out.1")
  echo "$bin: $((t / n / 1000))k instructions of the node per alert shown ($n shown)"
  if [ "${KEEP:-0}" = 1 ]; then echo "  profile: $dir/out.1"; else rm -rf "$dir"; fi
}

for bin in "${@:-target/release/cuebox}"; do measure "$bin"; done
