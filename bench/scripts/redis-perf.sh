#!/usr/bin/env bash
# Where Redis's CPU goes in a drain, by `perf`: a redis-server of its own, a node on it, a warm-up
# drain, then `perf stat` and `perf record -g` of Redis over `cuebox-bench drain --receivers 50
# --alerts 400` (its fill included), and Redis's `INFO commandstats` of that run.
#
#   bench/scripts/redis-perf.sh OUT [CUEBOX_BINARY [CUEBOX_BENCH_BINARY]]
#
# Writes OUT.data (read it with `perf report -i OUT.data --no-children --sort dso,sym -g none`),
# OUT.stat and OUT.commandstats. Needs perf (apt-get install linux-perf) and a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=$1; bin=${2:-target/release/cuebox}; bench=${3:-target/release/cuebox-bench}
. bench/scripts/common.sh
need perf "apt-get install linux-perf"
start_pair "$bin" "$bench"; b=("${BENCH_ARGS[@]}")
"${b[@]}" drain --receivers 50 --alerts 200 --rounds 1 >/dev/null
redis-cli -p "$REDIS_PORT" config resetstat >/dev/null
perf stat -e task-clock -p "$REDIS_PID" -o "$out.stat" & ps=$!
perf record -g -p "$REDIS_PID" -o "$out.data" 2>/dev/null & pr=$!
"${b[@]}" drain --receivers 50 --alerts 400 --rounds 1 | grep -E '^\| *(store|redis)'
kill -INT "$ps" "$pr"; wait "$ps" "$pr" 2>/dev/null || true
redis-cli -p "$REDIS_PORT" info commandstats >"$out.commandstats"
grep task-clock "$out.stat"
