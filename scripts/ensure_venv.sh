#!/usr/bin/env bash
# Makes a Python venv with snakepit_bridge (editable, from priv/python) and the
# given requirement files, idempotently: it reinstalls only when those files
# or the package metadata change.
#
# Usage: scripts/ensure_venv.sh VENV_DIR REQUIREMENTS_FILE...
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="$1"
shift
label="${venv#"$root"/}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating the Python venv in $label"
  python3 -m venv "$venv"
fi
stamp="$venv/.snakepit-installed"
want="$(cat "$@" priv/python/pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages into $label"
  reqs=()
  for r in "$@"; do reqs+=(-r "$r"); done
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${reqs[@]}" -e priv/python
  echo "$want" > "$stamp"
fi
