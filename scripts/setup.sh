#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, idempotently:
# Debian's elixir, erlang-dev and openssl (the Python TLS tests make their
# certificates with it), a Python venv (.venv) with the pinned
# development packages and snakepit_bridge installed from priv/python, and
# the stubs' generator in a venv of its own (.venv-tools, see
# priv/python/generate_proto.py).
# The Rust toolchain is expected to be there already (cargo on PATH).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf '[setup] %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "[setup] cargo is not on PATH; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
missing=()
command -v mix >/dev/null 2>&1 || missing+=(elixir)
dpkg -s erlang-dev >/dev/null 2>&1 || missing+=(erlang-dev)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash scripts/ensure_venv.sh "$root/.venv" priv/python/requirements-dev.txt
bash scripts/ensure_venv.sh --no-package "$root/.venv-tools" priv/python/requirements-tools.txt
say "ready"
