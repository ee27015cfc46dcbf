# What the scripts here share; sourced, not run.

# Exits unless COMMAND is installed; HINT says how to get it.
need() { command -v "$1" >/dev/null || { echo "needs $1${2:+ ($2)}" >&2; exit 1; }; }

# Exits unless the release build of cuebox-bench is there; sets BENCH to it.
need_release_bench() {
  BENCH=target/release/cuebox-bench
  [ -x "$BENCH" ] || { echo "build it first: cargo build --release --workspace" >&2; exit 1; }
}

# The cuebox-bench command that drives the node on HTTP port PORT over the Redis on REDIS_PORT
# (started by the two functions below, whose pids it watches): sets the array BENCH_ARGS, run as
# "${BENCH_ARGS[@]}" SCENARIO...
bench_args() {
  BENCH_ARGS=("$1" --node "127.0.0.1:$2" --publish-key k --secret s --pid "$NODE_PID"
    --redis-url "redis://127.0.0.1:$3/" --redis-pid "$REDIS_PID")
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Starts `CMD... --port PORT` as a throwaway redis-server (CMD is redis-server, or it under a
# profiler) in DIR; sets REDIS_PID once it answers.
start_redis() {
  local port=$1 dir=$2; shift 2
  "$@" --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 150); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.2; done
}

# Starts `CMD... serve` (a cuebox binary, or it under a profiler) on HTTP port PORT over the Redis
# on REDIS_PORT, publish key k and secret s, no gap between alerts; sets NODE_PID once ready.
start_node() {
  local port=$1 redis_port=$2; shift 2
  CUEBOX_LOG=warn CUEBOX_ALERT_GAP_MS=0 "$@" serve --bind "127.0.0.1:$port" \
    --redis-url "redis://127.0.0.1:$redis_port/" --publish-key k --secret s >/dev/null 2>&1 &
  NODE_PID=$!
  for _ in $(seq 300); do curl -s -o /dev/null "http://127.0.0.1:$port/readyz" && return; sleep 0.1; done
}

# A redis-server and the node BIN on it, both stopped when the script exits, driven by the
# cuebox-bench BENCH: sets REDIS_PORT, REDIS_PID, NODE_PID and BENCH_ARGS (see `bench_args`).
start_pair() {
  local bin=$1 bench=$2 http
  REDIS_PORT=$(free_port); http=$(free_port); PAIR_DIR=$(mktemp -d)
  start_redis "$REDIS_PORT" "$PAIR_DIR" redis-server
  start_node "$http" "$REDIS_PORT" "$bin"
  trap 'kill $NODE_PID 2>/dev/null; redis-cli -p $REDIS_PORT shutdown nosave >/dev/null 2>&1; rm -rf $PAIR_DIR' EXIT
  bench_args "$bench" "$http" "$REDIS_PORT"
}

# 1,000 publishes to 20 receivers that have no widget, one HTTP connection.
publish_1000() {
  python3 - "$1" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(1000):
    body = json.dumps({"receiver": f"pub{i % 20}", "from": "Ana", "message": "x" * 40})
    c.request("POST", "/publish", body, {"Authorization": "Bearer k", "Content-Type": "application/json"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
PY
}

# The instructions a callgrind output file counted.
callgrind_total() { grep -h '^totals:\|^summary:' "$1" | head -1 | awk '{print $2}'; }
