#!/usr/bin/env bash
# The main job: the reactive demo. An Elixir app starts the bridge, Python
# workers watch its variables and react, an Elixir optimizer watches their
# feedback; it ends by itself (about 20 s; --seconds N to run longer) with a
# summary, and exits 0 only if every worker ends with the store's values.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
cargo build --release --workspace
export SNAKEPIT_PYTHON="$root/.venv/bin/python"
exec mix run examples/reactive_demo/demo.exs "$@"
