#!/usr/bin/env bash
# The benchmark report: runs every benchmark at full size and writes
# bench/results/latest.md and latest.png (and the figures to latest.json, not committed).
#
#     bash scripts/bench.sh                  # full size (a few minutes), into bench/results/
#     bash scripts/bench.sh --quick          # every bench tiny, into a temp directory
#     bash scripts/bench.sh --out DIR        # somewhere else
#     bash scripts/bench.sh --peers          # the bridge beside Redis and NATS (bench/peers.py, ~4 min):
#                                            # bench/results/peers.md and peers.png
#     bash scripts/bench.sh --peers --quick  # the same, tiny, into a temp directory (or --out DIR)
#
# Installs what is missing (scripts/setup.sh), builds the Rust tree once (--peers:
# only the standalone server and the NIF), makes
# the bench's own Python environment (bench/.venv: the project's pinned dev
# packages, snakepit_bridge, and the pinned matplotlib of bench/requirements.txt),
# then runs bench/report.exs. Exits non-zero if a bench failed or timed out
# (the report is written either way and says which).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[bench] %s\n' "$*"; }

peers=false
if [ "${1:-}" = "--peers" ]; then
  peers=true
  shift
fi

bash scripts/setup.sh

if $peers; then
  # Debian's redis-server and nats-server, when missing. The bench starts its
  # own on loopback ports; a service the package starts is stopped and
  # disabled, so nothing depends on a system daemon.
  export PATH="$PATH:/usr/sbin:/sbin"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  missing=()
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    for svc in "${missing[@]}"; do
      if [ -d /run/systemd/system ]; then
        $sudo systemctl disable --now "$svc" >/dev/null 2>&1 || true
      elif [ -x "/etc/init.d/$svc" ]; then
        $sudo service "$svc" stop >/dev/null 2>&1 || true
        $sudo update-rc.d "$svc" disable >/dev/null 2>&1 || true
      fi
    done
  fi
  # The standalone server, and the NIF that W1a's BEAM (mix run
  # bench/peers_w1a.exs) loads, in one cargo run: built apart, the NIF's
  # rustler changes the features of shared dependencies (syn, so tokio and
  # tonic) and they would be compiled twice. mix compile's own
  # `cargo build -p snakepit_nif` then finds everything fresh, and copies the
  # library to priv/native/ before the run's timeout starts.
  say "cargo build --release -p snakepit_core -p snakepit_nif --lib --bin snakepit-bridge-server"
  cargo build --release -p snakepit_core -p snakepit_nif --lib --bin snakepit-bridge-server
  say "mix compile"
  mix compile
else
  say "cargo build --release --workspace"
  cargo build --release --workspace
fi

# The bench's own venv (no system site-packages), with matplotlib besides.
venv="$root/bench/.venv"
bash scripts/ensure_venv.sh "$venv" priv/python/requirements-dev.txt bench/requirements.txt

export SNAKEPIT_PYTHON="$venv/bin/python"
export SNAKEPIT_SERVER_BIN="$root/target/release/snakepit-bridge-server"
export SNAKEPIT_WATCH_LOAD="$root/target/release/watch_load"

if $peers; then
  args=("$@")
  # --quick writes into a new temp directory unless --out is given, like the report.
  if [[ " $* " == *" --quick "* && " $* " != *" --out "* ]]; then
    args+=(--out "$(mktemp -d -t snakepit-peers.XXXXXX)")
  fi
  say "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
  exec timeout --kill-after=30 900 "$venv/bin/python" bench/peers.py "${args[@]}"
fi

say "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (rerun when the machine is idle if it is high)"
exec mix run bench/report.exs "$@"
