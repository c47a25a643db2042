#!/usr/bin/env bash
# The main job: builds the bridge and starts the standalone server, which
# prints the address it listens on. Ctrl-C stops it.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo build --release --workspace
exec "$root/target/release/snakepit-bridge-server" --listen 127.0.0.1:0 "$@"
