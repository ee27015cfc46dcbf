#!/usr/bin/env bash
# Redis instructions per alert cycle (publish, started, done) of a receiver.lua library, run
# straight by lua-cycle.py under callgrind: compare two libraries without building cuebox.
#
#   bench/scripts/lua-cycle.sh LIBRARY.lua VERSION [N]
#   git show 6f712fa:src/store/redis/receiver.lua > /tmp/v3.lua
#   bench/scripts/lua-cycle.sh /tmp/v3.lua v3 && bench/scripts/lua-cycle.sh src/store/redis/receiver.lua v5
#
# Needs valgrind and redis-server.
set -euo pipefail
lib=$1; v=$2; n=${3:-1000}
here="$(cd "$(dirname "$0")" && pwd)"
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
dir=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$dir/out" redis-server --port "$port" \
  --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >/dev/null 2>&1 & vp=$!
for _ in $(seq 150); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.2; done
coproc H { python3 "$here/lua-cycle.py" "$port" "$lib" "$v" "$n" ${4:-}; }
read -r _ <&"${H[0]}"
callgrind_control -z "$vp" >/dev/null 2>&1
echo go >&"${H[1]}"
read -r _ <&"${H[0]}"
callgrind_control -d "$vp" >/dev/null 2>&1
redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; wait "$vp" 2>/dev/null || true
t=$(grep -h '^totals:\|^summary:' "$dir/out.1" | head -1 | awk '{print $2}')
echo "$lib $v: $((t / n)) instructions of Redis per alert cycle"
rm -rf "$dir"
