#!/usr/bin/env bash
# Issue 20's ingest workload (`loadgen reference --parts ingest`: one
# subscriber, one request in flight, ticks and the tokens plugin's
# token_created events) for two or more vista builds, alternated rep by rep
# so the machine's drift hits them all, then the median of each figure per
# build. On this noisy 2-core machine single runs of one build vary by
# 20-40%; only alternated medians of many reps tell a change of 5% apart.
#
#   scripts/bench-ingest-ab.sh DIR_A DIR_B [DIR ...]
#   REPS=12 BATCHES=1000,100 TARGETS=memory,durable EVENTS=300000 scripts/bench-ingest-ab.sh ...
#
# Each DIR holds a release build: `vista`, `libvista_tokens.so` and
# `libvista_ticks.so` (e.g. `target/release` of a worktree, or copies made
# before a rebuild), so each build runs with its own plugins. Prints one
# line per run and per build, then the medians: events/s (k) and CPU per
# event (µs, host and projector processes) for each target (m/d: memory,
# durable), event kind (t/tc: ticks, token_created) and batch.
set -euo pipefail
cd "$(dirname "$0")/.."
(($# >= 2)) || { echo "usage: $0 DIR_A DIR_B [DIR ...]" >&2; exit 2; }
REPS=${REPS:-8}
BATCHES=${BATCHES:-1000}
TARGETS=${TARGETS:-memory}
EVENTS=${EVENTS:-300000}
LG=target/release/loadgen
[[ -x $LG ]] || nice -n 10 cargo build --release -p example-loadgen
RUNS=$(mktemp)
trap 'rm -f "$RUNS"' EXIT

for ((rep = 1; rep <= REPS; rep++)); do
    for dir in "$@"; do
        line=$("$LG" reference --parts ingest --targets "$TARGETS" --ingest-batches "$BATCHES" \
            --ingest-events "$EVENTS" --reps 1 --vista "$dir/vista" \
            --tokens-plugin "$dir/libvista_tokens.so" --ticks-plugin "$dir/libvista_ticks.so" \
            2>&1 >/dev/null | sed -nE 's/^ *ingest vista_(.)[a-z]* ([a-z_]+) batch ([0-9]+): ([0-9]+) events\/s, ([0-9.]+) µs.*/\1 \2 \3 \4 \5/p' |
            sed -e 's/ token_created / tc /' -e 's/ ticks / t /' |
            awk '{printf "%s%s%s=%d %s%s%scpu=%s ", $1, $2, $3, $4 / 1000, $1, $2, $3, $5}')
        echo "$dir $line" | tee -a "$RUNS"
    done
done
echo "medians of $REPS:"
python3 - "$RUNS" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1]):
    build, *figures = line.split()
    for figure in figures:
        name, value = figure.split("=")
        runs[build][name].append(float(value))
for build, figures in runs.items():
    print(build, " ".join(
        f"{name}={statistics.median(v):.2f}" if name.endswith("cpu") else f"{name}={statistics.median(v):.0f}k"
        for name, v in figures.items()))
EOF
