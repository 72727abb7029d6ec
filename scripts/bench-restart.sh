#!/usr/bin/env bash
# Issue 20: restart of 1,000,000 entities from a checkpoint. Fills a data
# directory with 1,000,000 `token_created` events (distinct mints, requests
# of 10,000, `--fsync always`), kills the host with SIGKILL, then starts it
# on the same directory REPS times (killed with SIGKILL each time), timed
# from spawn to its `listening on` line. Builds are alternated when several
# binaries are given; the directory is filled by the first.
#
#   scripts/bench-restart.sh                         # target/release/vista
#   REPS=6 scripts/bench-restart.sh OLD/vista NEW/vista
#
# Needs a release build (`cargo build --release -p vista-host -p vista-tokens`)
# and curl. Prints per binary its start times in seconds, sorted, and the
# host's RSS a second after its last start.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
BINS=("$@")
[[ ${#BINS[@]} -gt 0 ]] || BINS=(target/release/vista)
WORK=$(mktemp -d)
PORT=${PORT:-18891}
PID=
cleanup() {
    [[ -n $PID ]] && kill -9 "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$WORK/plugins" "$WORK/bodies"
cp target/release/libvista_tokens.so "$WORK/plugins/"
for r in $(seq 0 99); do
    awk -v r="$r" 'BEGIN { for (i = 0; i < 10000; i++) { n = r * 10000 + i;
        printf "{\"type\":\"token_created\",\"mint\":\"m%07d\",\"symbol\":\"S%d\",\"decimals\":6,\"supply\":%d}\n", n, n % 1000, 1000000 + n } }' \
        > "$WORK/bodies/$r.ndjson"
done

serve() {
    "$1" serve --plugins "$WORK/plugins" --cache-dir "$WORK/cache" --data "$WORK/data" \
        --listen "127.0.0.1:$PORT" --max-body-bytes 67108864 > "$WORK/log" 2>&1 &
    PID=$!
}

serve "${BINS[0]}"
until curl -sf "localhost:$PORT/readyz" > /dev/null; do sleep 0.2; done
for r in $(seq 0 99); do
    curl -sf -XPOST "localhost:$PORT/ingest/tokens" --data-binary @"$WORK/bodies/$r.ndjson" > /dev/null
done
# The log's writer checkpoints every 100,000 events, after the answers: wait
# for the one covering the last record, so a start loads it and replays none.
until grep -q 'checkpoint written rec=100 ' "$WORK/log"; do sleep 0.2; done
sleep 1 # settled, as after a restart below
echo "host RSS with 1,000,000 tokens: $(awk '/VmRSS/ {print $2, $3}' /proc/$PID/status)" >&2
kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=

declare -A times rss
for rep in $(seq "$REPS"); do
    for bin in "${BINS[@]}"; do
        start=$(date +%s%N)
        serve "$bin"
        until grep -q "listening on" "$WORK/log"; do sleep 0.01; done
        end=$(date +%s%N)
        grep -q 'state recovered records=0 ' "$WORK/log" || { echo "$bin replayed records: not a checkpoint-only start" >&2; exit 1; }
        times[$bin]+=" $(awk -v ns=$((end - start)) 'BEGIN { printf "%.2f", ns / 1e9 }')"
        if [[ $rep == "$REPS" ]]; then
            sleep 1 # settled: what a restarted host holds
            rss[$bin]=$(awk '/VmRSS/ {print $2, $3}' /proc/$PID/status)
        fi
        kill -9 "$PID"; wait "$PID" 2>/dev/null || true; PID=
    done
done
for bin in "${BINS[@]}"; do
    echo "$bin:$(tr ' ' '\n' <<< "${times[$bin]}" | sort -n | tr '\n' ' ')"
    echo "$bin: host RSS after restart: ${rss[$bin]}"
done
