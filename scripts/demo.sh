#!/usr/bin/env bash
# Builds the host and the example plugins, drops the plugins into ./plugins.d
# and starts `vista` on 127.0.0.1:8877 with a live demo feed of `tokens` events.
# Extra arguments go to `vista serve` (e.g. --listen 127.0.0.1:9000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p vista-host -p vista-tokens -p vista-games
mkdir -p plugins.d
for plugin in vista_tokens vista_games; do
    cp "target/debug/lib${plugin}.so" "plugins.d/${plugin}.so"
done
exec target/debug/vista serve --plugins plugins.d --demo-feed "$@"
