#!/usr/bin/env bash
# Builds and runs every test: unit tests, black-box integration tests against
# the real `vista` binary and real plugin .so files, and the published
# TypeScript (Node) and Rust HyperStack clients.
set -euo pipefail
cd "$(dirname "$0")/.."
(cd tests/ts-client && npm ci --no-audit --no-fund --loglevel=error)
cargo build --workspace --all-targets
cargo test --workspace
