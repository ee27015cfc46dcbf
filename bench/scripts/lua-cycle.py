# Drives a receiver.lua library straight, with no cuebox node: 20 receivers with a widget each,
# then N alerts through publish, started and done, as a drain makes them. Run by lua-cycle.sh,
# which counts Redis's instructions for them under callgrind. For trying a change to the library
# in a minute, without building cuebox: the FCALLs are made one at a time, so the count per
# alert is higher than a node's (bench/scripts/redis-instructions.sh), and only differences
# between two libraries mean anything.
#   python3 lua-cycle.py PORT LIBRARY.lua VERSION(v3|v4|v5) N [layout3-entries]
import socket, sys, json, time, uuid
port, lib, version, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
def cmd(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    s.sendall(out)
    return read()
def read():
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t in (b"+", b"-", b":"):
        if t == b"-": raise Exception(rest)
        return rest
    if t == b"$":
        l = int(rest)
        if l < 0: return None
        d = f.read(l + 2)[:-2]; return d
    if t == b"*":
        l = int(rest)
        if l < 0: return None
        return [read() for _ in range(l)]
    if t == b"_": return None
    raise Exception(line)
cmd("FUNCTION", "LOAD", "REPLACE", open(lib).read())
v = version
now = int(time.time() * 1000)
def keys(r, widgets=False):
    k = [f"cuebox:{{{r}}}:{x}" for x in ("receiver", "queue", "ids", "priority")]
    if widgets: k.append(f"cuebox:{{{r}}}:widgets")
    return k
def fcall(fn, ks, *args):
    return cmd("FCALL", f"cuebox_{v}_{fn}", len(ks), *ks, *args)
rs = [f"r{i}" for i in range(20)]
for r in rs:
    fcall("widgets", keys(r, True), "node-a", now, "PUBLISH", now + 5000, "joined", 0, 16, 30000)
cmd("SET", "marker", "start")  # measurement starts after this (callgrind -z by caller)
sys.stdout.write("ready\n"); sys.stdout.flush(); sys.stdin.readline()
for i in range(n):
    r = rs[i % len(rs)]
    aid = str(uuid.uuid4())
    js = json.dumps({"id": aid, "receiver": r, "kind": "donation", "from": "Ana", "amount": None,
        "message": "x" * 40, "media": None, "duration_ms": 8000, "priority": "normal", "data": None,
        "created_at": "2026-12-06T02:47:38.354Z"}, separators=(",", ":"))
    now += 1
    entry = f"{aid} 8000 0 {js}" if (v == "v3" or len(sys.argv) > 5) else f"{aid} 8000 0 r{now} {js}"
    fcall("publish", keys(r), "node-a", now, "PUBLISH", now + 5000, aid, entry, 10000, 86400)
    if v in ("v3", "v4"):
        cmd("FCALL", f"cuebox_{v}_started", 1, keys(r)[0], now, aid, now + 15000)
    else:  # from layout 5 a start is the node's SET NX of its mark
        cmd("SET", f"cuebox:{{{r}}}:started:{aid}:1", f"{now} {now + 15000}", "NX", "PX", 86400000)
    if v == "v3":
        fcall("done", keys(r), "node-a", now, "PUBLISH", now + 5000, aid)
    else:
        fcall("done", keys(r), "node-a", now, "PUBLISH", now + 5000, aid, 500)
print("done")
