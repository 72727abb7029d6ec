#!/usr/bin/env bash
# Same-run comparison of two vista builds (issue 18's "unchanged or better"):
# fan-out host CPU per frame (1,000 subscribers) and ingest throughput (one
# subscriber, batch 100 and 1,000), the builds alternated rep by rep so the
# machine's drift hits both. Uses this checkout's release loadgen.
#
#   BEFORE=/path/to/old/target/release scripts/bench-compare.sh
#   BEFORE=... AFTER_ISOLATION=process REPS=3 TAG=arch scripts/bench-compare.sh
#
# BEFORE is a release target directory holding `vista` and
# `libvista_tokens.so` (e.g. a worktree of the old commit built with
# `cargo build --release -p vista-host -p vista-tokens`). A build older than
# `--isolation` runs with BEFORE_ISOLATION=default (no flag passed); the
# current one with AFTER_ISOLATION (default `thread`: like for like).
# Raw reports: benchmarks/results/$TAG-{fanout,ingest}.json.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BEFORE:?set BEFORE to the target/release directory of the old build}"
REPS=${REPS:-2}
TAG=${TAG:-compare}
OUT=${OUT:-benchmarks/results}
BEFORE_ISOLATION=${BEFORE_ISOLATION:-default}
AFTER_ISOLATION=${AFTER_ISOLATION:-thread}
LG=target/release/loadgen
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    nice -n 10 cargo build --release -p vista-host -p vista-tokens -p example-loadgen
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)" >&2
echo "after: $(git rev-parse --short HEAD); before: $BEFORE" >&2
others() { pgrep -f 'rustc|cargo build|cargo test' | wc -l; }
echo "compiler processes running at start: $(others)" >&2

args_for() { # which -> loadgen flags
    if [[ $1 == before ]]; then
        echo "--vista $BEFORE/vista --plugin $BEFORE/libvista_tokens.so --isolation $BEFORE_ISOLATION"
    else
        echo "--vista target/release/vista --plugin target/release/libvista_tokens.so --isolation $AFTER_ISOLATION"
    fi
}
order_for() { if (($1 % 2)); then echo "before after"; else echo "after before"; fi; }

for rep in $(seq 1 "$REPS"); do
    for which in $(order_for "$rep"); do
        f="$TMP/fanout-$which-$rep.json"
        # shellcheck disable=SC2046
        "$LG" fanout --clients 1000 --events 20000 --no-baseline $(args_for "$which") > "$f"
        jq -c --arg w "$which" --argjson r "$rep" '{build:$w, rep:$r,
            host_cpu_us_per_frame:.result.vista.host_cpu_us_per_frame,
            frames_per_second:.result.vista.frames_per_second, lost:.result.vista.lost_frames, report:.}' "$f" > "$f.row"
        jq -r '"  fanout \(.build) rep \(.rep): \(.host_cpu_us_per_frame*1000|floor/1000) µs CPU/frame, \(.frames_per_second|floor) frames/s, lost \(.lost)"' "$f.row" >&2
        for batch in 100 1000; do
            g="$TMP/ingest-$batch-$which-$rep.json"
            # shellcheck disable=SC2046
            "$LG" fanout --clients 1 --source-addrs 1 --batch "$batch" --events $((batch * 400)) \
                --no-baseline $(args_for "$which") > "$g"
            jq -c --arg w "$which" --argjson b "$batch" --argjson r "$rep" '{build:$w, batch:$b, rep:$r,
                events_per_second:.result.vista.ingest_events_per_second,
                host_cpu_us_per_event:(.result.vista.host_cpu_seconds*1e6/.result.vista.events),
                lost:.result.vista.lost_frames, report:.}' "$g" > "$g.row"
            jq -r '"  ingest batch \(.batch) \(.build) rep \(.rep): \(.events_per_second|floor) ev/s, \(.host_cpu_us_per_event*100|floor/100) µs CPU/event"' "$g.row" >&2
        done
    done
done
jq -s '{runs: .}' "$TMP"/fanout-*.row > "$OUT/$TAG-fanout.json"
jq -s '{runs: .}' "$TMP"/ingest-*.row > "$OUT/$TAG-ingest.json"
echo "== medians" >&2
jq -r '.runs | group_by(.build)[] | "fanout \(.[0].build): median µs CPU/frame \(map(.host_cpu_us_per_frame)|sort|.[length/2|floor]), frames/s \(map(.frames_per_second)|sort|.[length/2|floor]|floor)"' "$OUT/$TAG-fanout.json" >&2
jq -r '.runs | group_by([.batch,.build])[] | "ingest batch \(.[0].batch) \(.[0].build): median ev/s \(map(.events_per_second)|sort|.[length/2|floor]|floor)"' "$OUT/$TAG-ingest.json" >&2
