#!/usr/bin/env bash
# The benchmark report: runs every benchmark at full size and writes
# bench/results/latest.md and latest.png (and the figures to latest.json, not committed).
#
#     bash scripts/bench.sh                  # full size (a few minutes), into bench/results/
#     bash scripts/bench.sh --quick          # every bench tiny, into a temp directory
#     bash scripts/bench.sh --out DIR        # somewhere else
#
# Installs what is missing (scripts/setup.sh), builds the Rust tree once, makes
# the bench's own Python environment (bench/.venv: the project's pinned dev
# packages, snakepit_bridge, and the pinned matplotlib of bench/requirements.txt),
# then runs bench/report.exs. Exits non-zero if a bench failed or timed out
# (the report is written either way and says which).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[bench] %s\n' "$*"; }

bash scripts/setup.sh

say "cargo build --release --workspace"
cargo build --release --workspace

# The bench's own venv (no system site-packages), with matplotlib besides.
venv="$root/bench/.venv"
bash scripts/ensure_venv.sh "$venv" priv/python/requirements-dev.txt bench/requirements.txt

export SNAKEPIT_PYTHON="$venv/bin/python"
export SNAKEPIT_SERVER_BIN="$root/target/release/snakepit-bridge-server"
export SNAKEPIT_WATCH_LOAD="$root/target/release/watch_load"

say "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (rerun when the machine is idle if it is high)"
exec mix run bench/report.exs "$@"
