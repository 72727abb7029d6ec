#!/usr/bin/env bash
# Installs the `vista` binary from this checkout (`cargo install --path host
# --locked`: the versions in Cargo.lock, the ones the tests ran with) and
# says where it went and how to put it on the PATH.
# Extra arguments go to `cargo install` (e.g. --debug for a quicker build);
# set CARGO_INSTALL_ROOT to install somewhere else than ~/.cargo.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cargo install --path "$root/host" --locked "$@"
bin="${CARGO_INSTALL_ROOT:-${CARGO_HOME:-$HOME/.cargo}}/bin"
echo
echo "installed $bin/vista: $("$bin/vista" --version)"
case ":$PATH:" in
*":$bin:"*) echo "$bin is on your PATH: try \`vista --help\`" ;;
*)
    echo "$bin is not on your PATH; add it (and put the line in ~/.bashrc or ~/.zshrc):"
    echo "    export PATH=\"$bin:\$PATH\""
    ;;
esac
echo "shell completions: vista completions bash|zsh|fish (e.g. vista completions bash > ~/.local/share/bash-completion/completions/vista)"
echo "manual page:       vista man > ~/.local/share/man/man1/vista.1"
# `vista plugin new` points new plugin crates at this checkout's plugin-api.
echo "new plugins (\`vista plugin new NAME\`) depend on $root/plugin-api: keep this checkout"
