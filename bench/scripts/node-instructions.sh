#!/usr/bin/env bash
# The node's own cost per alert, counted in instructions rather than seconds: repeatable
# whatever else the machine is doing, so two builds can be compared on a noisy machine.
#
#   bench/scripts/node-instructions.sh [CUEBOX_BINARY ...]
#   SCENARIO=drain bench/scripts/node-instructions.sh [CUEBOX_BINARY ...]
#
# For each binary (default target/release/cuebox): a redis-server of its own, a node on it under
# callgrind, then `cuebox-bench cycles --rate 100 --seconds 10` (every alert an HTTP publish, a
# send, a start and a done at 50 widgets), or with SCENARIO=drain 1,000 publishes to receivers
# with no widget, then `cuebox-bench drain --receivers 20 --alerts 50`, the drain's own part being
# its run less what its fill's publishes cost. Prints the node's instructions per alert shown (the
# node's `cuebox_alerts_total{outcome="shown"}` before and after). KEEP=1 keeps the profiles for
# `callgrind_annotate`. Mind what callgrind cannot see: valgrind hides the CPU's SHA extensions
# (HMAC is counted in software), and counts `rep stosb`/`movsb` per byte.
# Needs valgrind and a release build of cuebox-bench.
set -euo pipefail
cd "$(dirname "$0")/../.."
. bench/scripts/common.sh
need_release_bench
need valgrind "apt-get install valgrind"
shown() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^cuebox_alerts_total\{outcome="shown"\}/ {print $2}'; }

measure() {
  local bin=$1 dir rp hp before after
  dir=$(mktemp -d); rp=$(free_port); hp=$(free_port)
  start_redis "$rp" "$dir" redis-server
  start_node "$hp" "$rp" valgrind --tool=callgrind --callgrind-out-file="$dir/out" "$bin"
  bench_args "$BENCH" "$hp" "$rp"; local b=("${BENCH_ARGS[@]}")
  "${b[@]}" cycles --rate 100 --seconds 2 --warmup 1 --no-half >/dev/null 2>&1
  callgrind_control -z "$NODE_PID" >/dev/null 2>&1
  if [ "${SCENARIO:-cycles}" = drain ]; then
    publish_1000 "$hp"
    callgrind_control -d "$NODE_PID" >/dev/null 2>&1; callgrind_control -z "$NODE_PID" >/dev/null 2>&1
    before=$(shown "$hp")
    "${b[@]}" drain --receivers 20 --alerts 50 --rounds 1 >"$dir/run.txt" 2>&1
  else
    before=$(shown "$hp")
    "${b[@]}" cycles --rate 100 --seconds 10 --warmup 1 --no-half >"$dir/run.txt" 2>&1
  fi
  callgrind_control -d "$NODE_PID" >/dev/null 2>&1; after=$(shown "$hp")
  kill "$NODE_PID" 2>/dev/null; wait "$NODE_PID" 2>/dev/null || true
  redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  local n; n=$(python3 -c "print(int(float('$after') - float('$before')))")
  if [ "${SCENARIO:-cycles}" = drain ]; then
    local p t; p=$(callgrind_total "$dir/out.1"); t=$(callgrind_total "$dir/out.2")
    echo "$bin: publish $((p / 1000000))k, drain $(((t - p * n / 1000) / n / 1000))k instructions of the node per alert ($n drained)"
  else
    echo "$bin: $(($(callgrind_total "$dir/out.1") / n / 1000))k instructions of the node per alert shown ($n shown)"
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "  profiles: $dir/out.*"; else rm -rf "$dir"; fi
}

for bin in "${@:-target/release/cuebox}"; do measure "$bin"; done
