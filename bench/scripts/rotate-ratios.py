# The medians of a rotate.sh output, per build, and the median over its iterations of the new
# build's figure over each other's in the same iteration.
#   python3 bench/scripts/rotate-ratios.py OUT.txt NEW_BINARY
import sys, re, statistics as st, collections
lines = open(sys.argv[1]).read().split("\n")
data = collections.defaultdict(lambda: collections.defaultdict(list))  # bin -> metric -> [(iter, value)]
cur = None
for line in lines:
    m = re.match(r"== (\d+) (\S+) (drain|cycles|rate)", line)
    if m: cur = (int(m[1]), m[2], m[3]); continue
    if cur and line.startswith("| redis"):
        x = [c.strip() for c in line.strip("|").split("|")]
        i, b, kind = cur
        if kind == "drain":
            data[b]["drain cycles/s"].append((i, float(x[5]))); data[b]["drain Redis CPU s/1k"].append((i, float(x[7]))); data[b]["drain cuebox CPU s/1k"].append((i, float(x[6])))
        elif kind == "cycles":
            data[b]["cycles max"].append((i, float(x[4]))); data[b]["cycles Redis CPU s/1k"].append((i, float(x[9]))); data[b]["cycles cuebox CPU s/1k"].append((i, float(x[8])))
        else:
            data[b]["4,000/s p99 ms"].append((i, float(x[6]))); data[b]["4,000/s Redis CPU s/1k"].append((i, float(x[9]))); data[b]["4,000/s cuebox CPU s/1k"].append((i, float(x[8])))
bins = list(data)
new = bins[0] if len(sys.argv) < 3 else sys.argv[2]
others = [b for b in bins if b != new]
metrics = list(data[new])
name = lambda b: b.split("/")[2] if b.startswith("/tmp/") else b
print("| | " + " | ".join(f"{name(b)} (median)" for b in [new] + others) + " | " + " | ".join(f"new / {name(o)}: median of per-iteration ratios" for o in others) + " |")
print("|---|" + "---|" * (len(bins) + len(others)))
for m in metrics:
    meds = [st.median(v for _, v in data[b][m]) for b in [new] + others]
    ratios = []
    for o in others:
        per = []
        for i in sorted(set(i for i, _ in data[new][m])):
            a = [v for j, v in data[new][m] if j == i]; c = [v for j, v in data[o][m] if j == i]
            if a and c and st.median(c): per.append(st.median(a) / st.median(c))
        ratios.append(st.median(per) if per else float('nan'))
    print(f"| {m} | " + " | ".join(f"{v:g}" for v in meds) + " | " + " | ".join(f"**{r:.2f}**" for r in ratios) + " |")
