#!/usr/bin/env bash
# Where the node's CPU goes under a steady publish load, by `perf`: a redis-server of its own, a
# node on it, a warm-up, then `perf stat` and `perf record -g` of the node over `cuebox-bench
# cycles --rate RATE --no-half` (each alert an HTTP publish, a send, a start and a done).
#
#   bench/scripts/node-perf.sh OUT [CUEBOX_BINARY [RATE [CUEBOX_BENCH_BINARY]]]
#
# Writes OUT.data (read it with `perf report -i OUT.data --no-children --sort sym -g none`) and
# OUT.stat. Needs perf (apt-get install linux-perf) and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1; bin=${2:-target/release/cuebox}; rate=${3:-4000}; bench=${4:-target/release/cuebox-bench}
. bench/scripts/common.sh
need perf "apt-get install linux-perf"
start_pair "$bin" "$bench"; b=("${BENCH_ARGS[@]}")
"${b[@]}" cycles --rate "$rate" --no-half --seconds 2 >/dev/null
perf stat -e task-clock -p "$NODE_PID" -o "$out.stat" & ps=$!
perf record -g -p "$NODE_PID" -o "$out.data" 2>/dev/null & pr=$!
"${b[@]}" cycles --rate "$rate" --no-half --seconds 8 | grep -E '^\| *(cycles|cuebox|store|redis)' || true
kill -INT "$ps" "$pr"; wait "$ps" "$pr" 2>/dev/null || true
grep task-clock "$out.stat"
