#!/usr/bin/env bash
# Three Vista hosts sharing one NATS JetStream stream (see README, "Scale-out").
#
# Starts a local `nats-server -js` (Debian: apt-get install nats-server) on
# 127.0.0.1:4222 with its store in ./cluster-demo/nats, and three hosts on
# 127.0.0.1:8871, :8872 and :8873, each with its own plugins directory and
# checkpoints under ./cluster-demo/hostN, the demo feed running on the first.
# Subscribe on any of them; ingest through any of them. Ctrl-C stops all
# four (by PID). Extra arguments go to every `vista serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nats-server >/dev/null || {
    echo "nats-server not found: apt-get install nats-server" >&2
    exit 1
}
cargo build -p vista-host -p vista-tokens -p vista-games
root=cluster-demo
mkdir -p "$root/nats"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM
nats-server -js -a 127.0.0.1 -p 4222 -sd "$root/nats" 2>"$root/nats.log" &
pids+=($!)
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null && break
    sleep 0.1
done
for n in 1 2 3; do
    dir="$root/host$n"
    mkdir -p "$dir/plugins"
    for plugin in vista_tokens vista_games; do
        cp "target/debug/lib${plugin}.so" "$dir/plugins/${plugin}.so"
    done
    feed=()
    [ "$n" = 1 ] && feed=(--demo-feed)
    target/debug/vista serve --plugins "$dir/plugins" --data "$dir/data" \
        --cache-dir "$dir/cache" --listen "127.0.0.1:887$n" \
        --cluster nats://127.0.0.1:4222 "${feed[@]}" "$@" 2>"$dir/vista.log" &
    pids+=($!)
done
echo "nats-server on 127.0.0.1:4222; vista on 127.0.0.1:8871 (demo feed), :8872, :8873"
echo "logs in $root/*.log and $root/host*/vista.log; Ctrl-C stops everything"
wait
