#!/usr/bin/env bash
# The benchmark report: runs every benchmark of issues 3 and 4 at full size and
# writes bench/results/latest.md, latest.png and latest.json.
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

# The bench's own venv (no system site-packages), reinstalled only when the
# pins or the package metadata change, as setup.sh does for .venv.
venv="$root/bench/.venv"
if [ ! -x "$venv/bin/python" ]; then
  say "creating the bench's Python venv in bench/.venv"
  python3 -m venv "$venv"
fi
stamp="$venv/.snakepit-bench-installed"
want="$(cat priv/python/requirements-dev.txt priv/python/pyproject.toml bench/requirements.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing Python packages into bench/.venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    -r priv/python/requirements-dev.txt -r bench/requirements.txt -e priv/python
  echo "$want" > "$stamp"
fi

export SNAKEPIT_PYTHON="$venv/bin/python"
export SNAKEPIT_SERVER_BIN="$root/target/release/snakepit-bridge-server"
export SNAKEPIT_WATCH_LOAD="$root/target/release/watch_load"

say "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (rerun when the machine is idle if it is high)"
exec mix run bench/report.exs "$@"
