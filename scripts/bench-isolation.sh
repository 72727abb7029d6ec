#!/usr/bin/env bash
# Benchmarks of issue 17 (plugin isolation): `--isolation process` against
# `--isolation thread`, the two modes alternated within one run so that
# the machine's drift hits both. Figures and discussion: BENCHMARKS.md,
# "Plugin isolation (issue 17)".
#
#   scripts/bench-isolation.sh                 # everything (~15 min on 2 cores)
#   REPS=1 SKIP_SOAK=1 scripts/bench-isolation.sh
#   ONLY="ingest fanout" SKIP_BUILD=1 scripts/bench-isolation.sh
#
# Measurements (each in both modes):
#   ingest  ingest throughput, one subscriber, batch 10 / 100 / 1,000
#           (loadgen fanout --clients 1 --no-baseline)
#   trades  per-event cost by request size and 4,000 trades on one token in
#           one request (loadgen ingest)
#   trades4k  4,000 trades on one token in one request, timed alone
#           (curl) against one host per mode, TRADES_REPS requests each,
#           alternated (loadgen ingest gives the same figure once per run)
#   fanout  host CPU per frame, 1,000 subscribers, with the baseline
#           broadcaster in the same run (loadgen fanout --clients 1000)
#   soak    hot-reload soak, debug build (tests/examples/reload_soak.rs;
#           the mode is chosen with VISTA_ISOLATION, which `vista serve`
#           reads and the test harness passes through)
#   memory  RSS of the host and of each projector child with tokens and
#           games loaded, idle and after N token_created events
#
# Raw reports: benchmarks/results/isolation-*.json (one file per
# measurement, every run in it). A summary is printed at the end.
# Servers this script starts itself are stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."

REPS=${REPS:-3}
ONLY=${ONLY:-"ingest trades trades4k fanout soak memory"}
SKIP_SOAK=${SKIP_SOAK:-0}
SOAK_ARGS=${SOAK_ARGS:-"100 100"}
MEM_ENTITIES=${MEM_ENTITIES:-"10000 100000"}
OUT=${OUT:-benchmarks/results}
TAG=${TAG:-isolation}
# Events per batch size for the ingest-throughput runs (>= 3 s each here).
declare -A INGEST_EVENTS=([10]=${E10:-40000} [100]=${E100:-400000} [1000]=${E1000:-800000})

LG=target/release/loadgen
VISTA=target/release/vista
TMP=$(mktemp -d)
SERVER_PID=
EXTRA_PIDS=()
cleanup() {
    for pid in $SERVER_PID "${EXTRA_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

want() { [[ " $ONLY " == *" $1 "* ]]; }
# Modes in alternating order: rep 1 thread first, rep 2 process first, ...
modes_for() { if (($1 % 2)); then echo "thread process"; else echo "process thread"; fi; }

echo "== machine" >&2
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel: $(uname -r)"
    echo "commit: $(git rev-parse --short HEAD)"
} | tee "$TMP/machine.txt" >&2
others() { pgrep -fa "cargo (test|build|check)|rustc|target/debug/deps" | grep -v pgrep | cut -c1-120 || true; }

echo "== build" >&2
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    nice -n 10 cargo build --release -p vista-host -p vista-tokens -p vista-games -p example-loadgen
fi
echo "other work running at start (should be none):" >&2
others | sed 's/^/  /' >&2

# ---------------------------------------------------------------- ingest
if want ingest; then
    echo "== ingest throughput, one subscriber" >&2
    for rep in $(seq 1 "$REPS"); do
        for batch in 10 100 1000; do
            for mode in $(modes_for "$rep"); do
                f="$TMP/ingest-$batch-$mode-$rep.json"
                "$LG" fanout --clients 1 --source-addrs 1 --batch "$batch" \
                    --events "${INGEST_EVENTS[$batch]}" --no-baseline --isolation "$mode" > "$f"
                jq -c --arg m "$mode" --argjson b "$batch" --argjson r "$rep" \
                    '{mode:$m, batch:$b, rep:$r, events_per_second:.result.vista.ingest_events_per_second,
                      ingest_seconds:.result.vista.ingest_seconds, host_cpu_us_per_event:(.result.vista.host_cpu_seconds*1e6/.result.vista.events),
                      lost:.result.vista.lost_frames, report:.}' "$f" > "$f.row"
                jq -r '"  batch \(.batch) \(.mode) rep \(.rep): \(.events_per_second|floor) ev/s, \(.host_cpu_us_per_event*100|floor/100) µs CPU/event, lost \(.lost)"' "$f.row" >&2
            done
        done
    done
    jq -s '{runs: .}' "$TMP"/ingest-*.row > "$OUT/$TAG-ingest.json"
fi

# ---------------------------------------------------------------- trades
if want trades; then
    echo "== loadgen ingest (per-event cost, 4,000 trades in one request)" >&2
    for rep in $(seq 1 "$REPS"); do
        for mode in $(modes_for "$rep"); do
            f="$TMP/trades-$mode-$rep.json"
            "$LG" ingest --events 20000 --isolation "$mode" > "$f" 2> "$TMP/trades-$mode-$rep.err"
            jq -c --arg m "$mode" --argjson r "$rep" '{mode:$m, rep:$r,
                four_thousand_trades_ms:.result.four_thousand_trades_one_request_ms, report:.}' "$f" > "$f.row"
            echo "  $mode rep $rep: $(tail -1 "$TMP/trades-$mode-$rep.err")" >&2
        done
    done
    jq -s '{runs: .}' "$TMP"/trades-*.row > "$OUT/$TAG-trades.json"
fi

# ---------------------------------------------------------------- trades4k
post() { # stream file
    local code
    code=$(curl -s -o "$TMP/post.out" -w '%{http_code}' -X POST --data-binary @"$2" \
        -H 'content-type: application/x-ndjson' "http://$ADDR/ingest/$1")
    [[ $code == 200 ]] || { echo "POST /ingest/$1 answered $code: $(head -c 300 "$TMP/post.out")" >&2; exit 1; }
}
start_vista() { # mode dir extra-args... -> SERVER_PID, ADDR
    local mode=$1 dir=$2; shift 2
    mkdir -p "$dir/plugins"
    cp target/release/libvista_tokens.so "$dir/plugins/tokens.so"
    [[ ${WITH_GAMES:-0} == 1 ]] && cp target/release/libvista_games.so "$dir/plugins/games.so"
    "$VISTA" serve --plugins "$dir/plugins" --cache-dir "$dir/cache" \
        --listen 127.0.0.1:0 --max-body-bytes 67108864 --isolation "$mode" "$@" \
        > "$dir/stdout" 2> "$dir/stderr" &
    SERVER_PID=$!
    for _ in $(seq 1 200); do grep -qs "listening on" "$dir/stdout" && break; sleep 0.05; done
    ADDR=$(grep -o 'listening on .*' "$dir/stdout" | awk '{print $3}')
}
if want trades4k; then
    echo "== 4,000 trades on one token in one request (durable host, --fsync always)" >&2
    TRADES_REPS=${TRADES_REPS:-5}
    declare -A T4K_ADDR T4K_PID
    for mode in thread process; do
        start_vista "$mode" "$TMP/t4k-$mode" --data "$TMP/t4k-$mode/data"
        T4K_ADDR[$mode]=$ADDR; T4K_PID[$mode]=$SERVER_PID; EXTRA_PIDS+=("$SERVER_PID"); SERVER_PID=
    done
    for rep in $(seq 1 "$TRADES_REPS"); do
        for mode in $(modes_for "$rep"); do
            ADDR=${T4K_ADDR[$mode]}
            mint="fresh$rep"
            printf '{"type":"token_created","mint":"%s","symbol":"S","decimals":0,"supply":1}\n' "$mint" > "$TMP/t4k-create"
            post tokens "$TMP/t4k-create"
            python3 -c "import sys
for i in range(4000): print('{\"type\":\"trade\",\"id\":\"t%d-%d\",\"mint\":\"$mint\",\"price\":%d,\"amount\":1}' % ($rep, i, i))" > "$TMP/t4k-body"
            ms=$(curl -s -o "$TMP/t4k-out" -w '%{http_code} %{time_total}' -X POST --data-binary @"$TMP/t4k-body" \
                -H 'content-type: application/x-ndjson' "http://$ADDR/ingest/tokens" | awk '$1 == 200 {printf "%.1f", $2 * 1000}')
            [[ -n $ms ]] || { echo "4,000 trades refused: $(head -c 300 "$TMP/t4k-out")" >&2; exit 1; }
            echo "  $mode rep $rep: $ms ms" >&2
            jq -nc --arg m "$mode" --argjson r "$rep" --argjson ms "$ms" '{mode:$m, rep:$r, ms:$ms}' > "$TMP/t4k-$mode-$rep.row"
        done
    done
    for mode in thread process; do kill "${T4K_PID[$mode]}"; wait "${T4K_PID[$mode]}" 2>/dev/null || true; done
    EXTRA_PIDS=()
    jq -s '{runs: .}' "$TMP"/t4k-*.row > "$OUT/$TAG-trades4k.json"
fi

# ---------------------------------------------------------------- fanout
if want fanout; then
    echo "== fan-out, 1,000 subscribers (baseline in every run)" >&2
    for rep in $(seq 1 "$REPS"); do
        for mode in $(modes_for "$rep"); do
            f="$TMP/fanout-$mode-$rep.json"
            "$LG" fanout --clients 1000 --events 20000 --isolation "$mode" > "$f"
            jq -c --arg m "$mode" --argjson r "$rep" '{mode:$m, rep:$r,
                vista_cpu_us_per_frame:.result.vista.host_cpu_us_per_frame,
                baseline_cpu_us_per_frame:.result.baseline.host_cpu_us_per_frame,
                ratio_to_baseline:.result.ratio_vista_to_baseline.host_cpu_per_frame,
                delivered:.result.vista.delivered_frames, lost:.result.vista.lost_frames, report:.}' "$f" > "$f.row"
            jq -r '"  \(.mode) rep \(.rep): vista \(.vista_cpu_us_per_frame*1000|floor/1000) µs/frame, baseline \(.baseline_cpu_us_per_frame*1000|floor/1000), ratio \(.ratio_to_baseline*100|floor/100), lost \(.lost)"' "$f.row" >&2
        done
    done
    jq -s '{runs: .}' "$TMP"/fanout-*.row > "$OUT/$TAG-fanout.json"
fi

# ---------------------------------------------------------------- soak
if want soak && [[ $SKIP_SOAK != 1 ]]; then
    echo "== hot-reload soak (debug build), reload_soak $SOAK_ARGS" >&2
    nice -n 10 cargo build -p vista-tests --example reload_soak
    for mode in thread process; do
        f="$TMP/soak-$mode.json"
        # The example exits 1 if anything was lost or disconnected; keep
        # its report either way.
        # shellcheck disable=SC2086
        VISTA_ISOLATION=$mode cargo run -q -p vista-tests --example reload_soak -- $SOAK_ARGS > "$f" || true
        jq -c --arg m "$mode" '{mode:$m} + .' "$f" > "$f.row"
        jq -r '"  \(.mode): p50 \(.latency_ms_median) ms, p99 \(.latency_ms_p99) ms, max \(.latency_ms_max) ms, lost \(.events_lost), doubled \(.events_doubled), disconnects \(.disconnects)"' "$f.row" >&2
    done
    jq -s '{runs: .}' "$TMP"/soak-*.row > "$OUT/$TAG-soak.json"
fi

# ---------------------------------------------------------------- memory
rss_of() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
children_json() { # each child of the host, named by GET /plugins' pid
    local pid=$1 plugins
    plugins=$(curl -s "http://$ADDR/plugins")
    ps --ppid "$pid" -o pid=,rss=,args= | while read -r cpid crss cargs; do
        jq -nc --argjson pid "$cpid" --argjson rss "$crss" --arg cmd "$cargs" --argjson p "$plugins" \
            '{pid:$pid, plugin:([$p | .. | objects | select(.pid? == $pid) | .name][0]), rss_kib:$rss, cmd:$cmd}'
    done | jq -sc .
}
snapshot() { # label -> JSON {label, host_rss_kib, children:[...]}
    jq -nc --arg l "$1" --argjson h "$(rss_of "$SERVER_PID")" --argjson c "$(children_json "$SERVER_PID")" \
        '{label:$l, host_rss_kib:$h, children:$c, children_rss_kib:([$c[].rss_kib]|add // 0)}'
}
mem_run() { # mode entities
    local mode=$1 entities=$2 dir="$TMP/mem-$1-$2"
    mkdir -p "$dir/plugins"
    cp target/release/libvista_tokens.so "$dir/plugins/tokens.so"
    cp target/release/libvista_games.so "$dir/plugins/games.so"
    "$VISTA" serve --plugins "$dir/plugins" --cache-dir "$dir/cache" --in-memory \
        --listen 127.0.0.1:0 --max-body-bytes 67108864 --isolation "$mode" \
        > "$dir/stdout" 2> "$dir/stderr" &
    SERVER_PID=$!
    for _ in $(seq 1 200); do grep -qs "listening on" "$dir/stdout" && break; sleep 0.05; done
    ADDR=$(grep -o 'listening on .*' "$dir/stdout" | awk '{print $3}')
    # Wait until both plugins are loaded (a child each in process mode).
    for _ in $(seq 1 200); do
        [[ $(curl -s "http://$ADDR/plugins" | jq '[.. | objects | select(has("fingerprint") and .fingerprint != null)] | length' 2>/dev/null || echo 0) -ge 2 ]] && break
        sleep 0.05
    done
    sleep 1
    local idle loaded
    idle=$(snapshot idle)
    # One request per plugin first, so each child has projected once.
    echo '{"type":"game_started","game":"g0","players":["p"],"startedAt":0}' > "$dir/g.ndjson"
    post games "$dir/g.ndjson"
    python3 - "$entities" "$dir/t" <<'EOF'
import sys
n, prefix = int(sys.argv[1]), sys.argv[2]
batch = 1000
for b in range(0, n, batch):
    with open(f"{prefix}{b // batch:05d}.ndjson", "w") as f:
        for i in range(b, min(n, b + batch)):
            f.write('{"type":"token_created","mint":"m%d","symbol":"S%d","decimals":6,"supply":1000000}\n' % (i, i))
EOF
    for f in "$dir"/t*.ndjson; do post tokens "$f"; done
    sleep 1
    loaded=$(snapshot "after_${entities}_tokens")
    jq -nc --arg m "$mode" --argjson n "$entities" --argjson a "$idle" --argjson b "$loaded" \
        '{mode:$m, entities:$n, idle:$a, loaded:$b}' > "$TMP/mem-$mode-$entities.row"
    jq -r '"  \(.mode) \(.entities) tokens: host RSS \(.idle.host_rss_kib) -> \(.loaded.host_rss_kib) KiB; children \(.loaded.children | map("\(.plugin) \(.rss_kib) KiB") | join(", ")) (idle \(.idle.children | map("\(.rss_kib)") | join(", ")))"' \
        "$TMP/mem-$mode-$entities.row" >&2
    kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}
if want memory; then
    echo "== memory: host and projector children, tokens + games, --in-memory" >&2
    for n in $MEM_ENTITIES; do
        for mode in thread process; do mem_run "$mode" "$n"; done
    done
    jq -s '{runs: .}' "$TMP"/mem-*.row > "$OUT/$TAG-memory.json"
fi

# ---------------------------------------------------------------- summary
echo
echo "== summary ($(head -1 "$TMP/machine.txt"))"
cat "$TMP/machine.txt"
echo "other work running at the end: $(others | wc -l) processes"
med='def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;'
if [[ -f $OUT/$TAG-ingest.json ]] && want ingest; then
    echo "-- ingest throughput, one subscriber (median of $REPS)"
    jq -r "$med"' .runs | group_by(.batch)[] | . as $g |
        ([$g[] | select(.mode=="thread") | .events_per_second] | median) as $t |
        ([$g[] | select(.mode=="process") | .events_per_second] | median) as $p |
        "batch \($g[0].batch): thread \($t|floor) ev/s, process \($p|floor) ev/s, process/thread \($p/$t*1000|floor/1000)"' \
        "$OUT/$TAG-ingest.json"
fi
if [[ -f $OUT/$TAG-trades.json ]] && want trades; then
    echo "-- 4,000 trades on one token in one request (median of $REPS)"
    jq -r "$med"' .runs | group_by(.mode)[] | "\(.[0].mode): \([.[].four_thousand_trades_ms] | median * 10 | floor / 10) ms (runs: \([.[].four_thousand_trades_ms * 10 | floor / 10] | join(", ")))"' \
        "$OUT/$TAG-trades.json"
fi
if [[ -f $OUT/$TAG-trades4k.json ]] && want trades4k; then
    echo "-- 4,000 trades on one token in one request, alone (median of ${TRADES_REPS:-5})"
    jq -r "$med"' .runs | group_by(.mode)[] | "\(.[0].mode): \([.[].ms] | median) ms (runs: \([.[].ms] | join(", ")))"' "$OUT/$TAG-trades4k.json"
fi
if [[ -f $OUT/$TAG-fanout.json ]] && want fanout; then
    echo "-- fan-out, 1,000 subscribers: host CPU µs per frame (median of $REPS)"
    jq -r "$med"' .runs | group_by(.mode)[] | "\(.[0].mode): vista \([.[].vista_cpu_us_per_frame] | median * 1000 | floor / 1000), baseline \([.[].baseline_cpu_us_per_frame] | median * 1000 | floor / 1000), vista/baseline \([.[].ratio_to_baseline] | median * 100 | floor / 100)"' \
        "$OUT/$TAG-fanout.json"
    jq -r "$med"' .runs | ([.[] | select(.mode=="process") | .vista_cpu_us_per_frame] | median) / ([.[] | select(.mode=="thread") | .vista_cpu_us_per_frame] | median) | "process/thread CPU per frame: \(. * 1000 | floor / 1000)"' \
        "$OUT/$TAG-fanout.json"
fi
if [[ -f $OUT/$TAG-soak.json ]] && want soak && [[ $SKIP_SOAK != 1 ]]; then
    echo "-- hot-reload soak"
    jq -r '.runs[] | "\(.mode): p50 \(.latency_ms_median) ms, p99 \(.latency_ms_p99) ms, max \(.latency_ms_max) ms, RSS/reload \(.rss_kib_per_reload) KiB"' "$OUT/$TAG-soak.json"
fi
if [[ -f $OUT/$TAG-memory.json ]] && want memory; then
    echo "-- memory (KiB)"
    jq -r '.runs[] | "\(.mode) \(.entities): host \(.idle.host_rss_kib) -> \(.loaded.host_rss_kib); children idle \([.idle.children[].rss_kib]) loaded \([.loaded.children[].rss_kib])"' "$OUT/$TAG-memory.json"
fi
