#!/usr/bin/env bash
# Redis's own cost per alert, counted in instructions rather than seconds: repeatable to 0.1 %
# whatever else the machine is doing, so two builds can be compared on a noisy machine.
#
#   bench/scripts/redis-instructions.sh [CUEBOX_BINARY ...]
#
# For each binary (default target/release/cuebox): a redis-server of its own under callgrind, a
# node on it, then 1,000 publishes to 20 receivers with no widget (the publish cost), then
# `cuebox-bench drain --receivers 20 --alerts 50` (1,000 published and drained). Prints Redis's
# instructions per alert for publishing, and for draining (the second phase less the first).
# Needs valgrind (apt-get install valgrind) and a release build of cuebox-bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
bench=target/release/cuebox-bench
[ -x "$bench" ] || { echo "build it first: cargo build --release --workspace" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "needs valgrind" >&2; exit 1; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
total() { grep -h '^totals:\|^summary:' "$1" | head -1 | awk '{print $2}'; }

measure() {
  local bin=$1 dir rp hp vp np
  dir=$(mktemp -d); rp=$(free_port); hp=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$dir/out" redis-server --port "$rp" \
    --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null 2>&1 & vp=$!
  for _ in $(seq 150); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.2; done
  CUEBOX_LOG=warn CUEBOX_ALERT_GAP_MS=0 "$bin" serve --bind "127.0.0.1:$hp" --redis-url "redis://127.0.0.1:$rp/" \
    --publish-key k --secret s >/dev/null 2>&1 & np=$!
  for _ in $(seq 150); do curl -s -o /dev/null "http://127.0.0.1:$hp/readyz" && break; sleep 0.1; done
  callgrind_control -z "$vp" >/dev/null 2>&1
  python3 - "$hp" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(1000):
    body = json.dumps({"receiver": f"pub{i % 20}", "from": "Ana", "message": "x" * 40})
    c.request("POST", "/publish", body, {"Authorization": "Bearer k", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
PY
  callgrind_control -d "$vp" >/dev/null 2>&1; callgrind_control -z "$vp" >/dev/null 2>&1
  "$bench" --node "127.0.0.1:$hp" --publish-key k --secret s --pid "$np" \
    drain --receivers 20 --alerts 50 --rounds 1 >"$dir/drain.txt" 2>&1
  callgrind_control -d "$vp" >/dev/null 2>&1
  kill "$np"; redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true; wait "$vp" 2>/dev/null || true
  local p t
  p=$(total "$dir/out.1"); t=$(total "$dir/out.2")
  echo "$bin: publish $((p / 1000)) drain $(((t - p) / 1000)) instructions of Redis per alert"
  rm -rf "$dir"
}

for bin in "${@:-target/release/cuebox}"; do measure "$bin"; done
