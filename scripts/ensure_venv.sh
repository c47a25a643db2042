#!/usr/bin/env bash
# Makes a Python venv with snakepit_bridge (editable, from priv/python), its
# native transport snakepit_bridge_native (built by maturin from
# native/snakepit_py, with cargo) and the given requirement files,
# idempotently: it reinstalls only when those files, the package metadata or
# the extension's sources change. With --no-package, only the requirement
# files are installed (the code-generation venv, .venv-tools, needs no
# snakepit_bridge).
#
# Usage: scripts/ensure_venv.sh [--no-package] VENV_DIR REQUIREMENTS_FILE...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
with_package=true
if [ "${1:-}" = "--no-package" ]; then
  with_package=false
  shift
fi
venv="$1"
shift
label="${venv#"$root"/}"

mkdir -p "$venv"
# One installer at a time per venv (generate_proto.py may call this while a
# test run does). Without flock, go on unlocked.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$venv/.snakepit-lock"
  flock 9
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating the Python venv in $label"
  python3 -m venv "$venv"
fi
stamp="$venv/.snakepit-installed"
native=(native/snakepit_py/Cargo.toml native/snakepit_py/pyproject.toml native/snakepit_py/snakepit_bridge_native.pyi Cargo.lock)
while IFS= read -r f; do native+=("$f"); done < <(find native/snakepit_py/src -name '*.rs' | sort)
if $with_package; then
  want="$(cat "$@" priv/python/pyproject.toml "${native[@]}" | sha256sum | cut -d' ' -f1)"
else
  want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages into $label"
  args=()
  for r in "$@"; do args+=(-r "$r"); done
  if $with_package; then args+=(-e priv/python ./native/snakepit_py); fi
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${args[@]}"
  echo "$want" > "$stamp"
fi
