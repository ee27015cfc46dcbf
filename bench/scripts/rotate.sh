#!/usr/bin/env bash
# Seconds of two or more cuebox builds, finely interleaved so that a machine whose speed drifts
# from minute to minute weighs on each build alike: N iterations, each running every binary once
# in an order that rotates, each run `drain --rounds 3`, `cycles --no-half --seconds 3` and
# `cycles --rate 4000 --no-half --seconds 3`, on a fresh node and redis-server. The first binary
# is the new one for rotate-ratios.py.
#
#   bench/scripts/rotate.sh OUT.txt 8 target/release/cuebox /tmp/old/target/release/cuebox
#   bench/scripts/rotate-ratios.py OUT.txt target/release/cuebox
set -u
OUT=$1; N=$2; shift 2; BINS=("$@")
B="$(cd "$(dirname "$0")/../.." && pwd)/target/release/cuebox-bench"
echo "# Made by bench/scripts/rotate.sh: $N iterations, each running every binary once in rotating order: cuebox-bench --cuebox BIN drain --rounds 3; cuebox-bench --cuebox BIN cycles --no-half --seconds 3; cuebox-bench --cuebox BIN cycles --rate 4000 --no-half --seconds 3. BINS = ${BINS[*]}; $(date -u '+%m-%d %H:%M UTC')" > $OUT
k=${#BINS[@]}
for i in $(seq $N); do
  for j in $(seq 0 $((k-1))); do
    bin=${BINS[$(( (i + j) % k ))]}
    echo "== $i $bin drain" >> $OUT; $B --cuebox $bin drain --rounds 3 2>&1 | grep '^| redis' >> $OUT
    echo "== $i $bin cycles" >> $OUT; $B --cuebox $bin cycles --no-half --seconds 3 2>&1 | grep '^| redis' >> $OUT
    echo "== $i $bin rate" >> $OUT; $B --cuebox $bin cycles --rate 4000 --no-half --seconds 3 2>&1 | grep '^| redis' >> $OUT
  done
done
echo "# finished $(date -u '+%H:%M UTC')" >> $OUT
