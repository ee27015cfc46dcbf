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
. bench/scripts/common.sh
need_release_bench
need valgrind "apt-get install valgrind"

measure() {
  local bin=$1 dir rp hp
  dir=$(mktemp -d); rp=$(free_port); hp=$(free_port)
  start_redis "$rp" "$dir" valgrind --tool=callgrind --callgrind-out-file="$dir/out" redis-server
  start_node "$hp" "$rp" "$bin"
  callgrind_control -z "$REDIS_PID" >/dev/null 2>&1
  publish_1000 "$hp"
  callgrind_control -d "$REDIS_PID" >/dev/null 2>&1; callgrind_control -z "$REDIS_PID" >/dev/null 2>&1
  "$BENCH" --node "127.0.0.1:$hp" --publish-key k --secret s --pid "$NODE_PID" \
    drain --receivers 20 --alerts 50 --rounds 1 >"$dir/drain.txt" 2>&1
  callgrind_control -d "$REDIS_PID" >/dev/null 2>&1
  kill "$NODE_PID"; redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  wait "$REDIS_PID" 2>/dev/null || true
  local p t
  p=$(callgrind_total "$dir/out.1"); t=$(callgrind_total "$dir/out.2")
  echo "$bin: publish $((p / 1000)) drain $(((t - p) / 1000)) instructions of Redis per alert"
  rm -rf "$dir"
}

for bin in "${@:-target/release/cuebox}"; do measure "$bin"; done
