#!/usr/bin/env bash
# Runs every test: the format and lint gates, cargo (Rust core), ExUnit
# (Elixir + NIF + real Python processes) and pytest (Python package against
# the standalone server), twice: on the newest pins (.venv,
# requirements-dev.txt) with the default transport choice (native, the
# snakepit_bridge_native extension, for plaintext; grpcio for TLS), and on
# the floor of the range pyproject.toml declares (.venv-floor,
# requirements-floor.txt) with grpcio for everything, so both transports
# pass the whole suite. test_native.py asks for the native one by name.
# Exits non-zero if any suite fails; all suites run either way.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh || exit 1
# The oldest grpcio and protobuf snakepit_bridge supports (no lint tools here:
# the gates run once, on .venv).
bash scripts/ensure_venv.sh "$root/.venv-floor" priv/python/requirements-floor.txt || exit 1

# One release build of the whole workspace (NIF, server binary); cargo test,
# mix compile and pytest all reuse it.
echo "[test] cargo build --release"
cargo build --release --workspace || exit 1

export SNAKEPIT_PYTHON="$root/.venv/bin/python"
export SNAKEPIT_SERVER_BIN="$root/target/release/snakepit-bridge-server"

failed=()
# The format and lint gates: what CI keeps clean. Formatters, not reviewers,
# decide layout (`cargo fmt --all`, `mix format`, `.venv/bin/ruff format .`
# fix what these report).
echo "[test] format and lint gates"
gates_ok=true
cargo fmt --all --check || gates_ok=false
cargo clippy --release --workspace --all-targets --quiet -- -D warnings || gates_ok=false
MIX_ENV=test mix format --check-formatted || gates_ok=false
"$root/.venv/bin/ruff" check --quiet . || gates_ok=false
"$root/.venv/bin/ruff" format --check --quiet . || gates_ok=false
(cd "$root/priv/python" && "$root/.venv/bin/mypy" --strict snakepit_bridge) || gates_ok=false
$gates_ok || failed+=(gates)

echo "[test] cargo test"
cargo test --release --workspace || failed+=(cargo)

echo "[test] mix test"
MIX_ENV=test mix test || failed+=(mix)

echo "[test] pytest (newest pins: .venv; transport auto: native for plaintext)"
SNAKEPIT_BRIDGE_TRANSPORT=auto "$SNAKEPIT_PYTHON" -m pytest python_tests -q || failed+=(pytest)

echo "[test] pytest (floor pins: .venv-floor; grpcio transport)"
SNAKEPIT_PYTHON="$root/.venv-floor/bin/python" SNAKEPIT_BRIDGE_TRANSPORT=grpc \
  "$root/.venv-floor/bin/python" -m pytest python_tests -q || failed+=(pytest-floor)

if [ "${#failed[@]}" -gt 0 ]; then
  echo "[test] FAILED: ${failed[*]}"
  exit 1
fi
echo "[test] all suites passed"
