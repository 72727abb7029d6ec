#!/usr/bin/env bash
# Issue 20: vista against the reference broadcaster, in one run, targets
# alternated rep by rep (vista --in-memory, vista durable with --fsync
# always, the reference). Fan-out: 1,000 `Tick/list` subscribers, 10 events
# per request back to back for 10 s; latency: 100 subscribers at 2,000
# events/s; ingest: one subscriber, batch 100 and 1,000, ticks and the tokens
# plugin's token_created events. Host CPU per frame is user+sys of the
# server process (and its projector children) from /proc over the run,
# divided by frames delivered.
#
#   VISTA_REFERENCE=/path/to/ideal scripts/bench-reference.sh
#   VISTA_REFERENCE=... REPS=3 TAG=alloc scripts/bench-reference.sh
#   SMOKE=1 scripts/bench-reference.sh     # seconds-long run, vista only unless VISTA_REFERENCE is set
#
# VISTA_REFERENCE is the reference broadcaster's binary, built from its own
# source (`ideal --bind ADDR`); without it only vista is measured. Extra
# arguments go to `loadgen reference`. Raw report:
# benchmarks/results/reference-$TAG.json (SMOKE: not written unless TAG is set).
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-1}
TAG=${TAG:-}
PROFILE=${PROFILE:-release}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    flag=(--release)
    [[ $PROFILE == debug ]] && flag=()
    nice -n 10 cargo build "${flag[@]}" -p vista-host -p vista-tokens -p vista-ticks -p example-loadgen
fi
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $(nproc);$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-); commit $(git rev-parse --short HEAD)" >&2
echo "compiler processes running at start: $(pgrep -x rustc | wc -l)" >&2
args=(--reps "$REPS")
if [[ ${SMOKE:-0} == 1 ]]; then
    args+=(--seconds 1 --clients 50 --latency-clients 10 --rate 1000 --ingest-events 5000)
fi
OUT=
if [[ -n $TAG ]]; then
    OUT=benchmarks/results/reference-$TAG.json
elif [[ ${SMOKE:-0} != 1 ]]; then
    OUT=benchmarks/results/reference-$(date -u +%Y%m%d-%H%M).json
fi
TMP=$(mktemp)
trap 'rm -f "$TMP"' EXIT
"target/$PROFILE/loadgen" reference "${args[@]}" "$@" > "$TMP"
lost=$(jq .result.lost_frames "$TMP")
if [[ -n $OUT ]]; then cp "$TMP" "$OUT"; echo "report: $OUT" >&2; else cat "$TMP"; fi
# Timing is never a failure; a lost frame is.
[[ $lost == 0 ]] || { echo "frames lost: $lost" >&2; exit 1; }
