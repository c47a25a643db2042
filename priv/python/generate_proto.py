#!/usr/bin/env python3
"""Regenerate the Python gRPC stubs from ``proto/snakepit_bridge.proto``.

This is the one command that produces the committed files in
``priv/python/snakepit_bridge/_proto/``::

    .venv/bin/python priv/python/generate_proto.py

Run it with any Python >= 3.10 (the dev venv's is fine): it does not use the
grpcio-tools of the interpreter running it. Stubs carry the version of their
generator (stubs from a newer grpcio-tools refuse to import under an older
grpcio, and a newer protoc's ``_pb2.py`` refuses an older protobuf), so they
are made by the OLDEST generator of the supported range, pinned in
``requirements-tools.txt`` and installed in a venv of its own, ``.venv-tools``
at the repository root (made or updated by ``scripts/ensure_venv.sh``, which
this script runs first; it is a no-op when the venv is current). It writes
three files:

- ``snakepit_bridge_pb2.py``       messages
- ``snakepit_bridge_pb2.pyi``      type stubs for the messages
- ``snakepit_bridge_pb2_grpc.py``  the service stub, with its import of
  ``snakepit_bridge_pb2`` rewritten to a package-relative import

The output depends only on the proto and the pinned grpcio-tools version (the
script refuses a tools venv holding another version): the same inputs give
the same bytes. ``--out DIR`` writes to another directory (the test suite uses
it to prove the committed stubs match the proto); ``--check`` writes nothing
and exits 1 when the committed stubs are out of date.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PROTO_FILE = REPO_ROOT / "proto" / "snakepit_bridge.proto"
DEFAULT_OUT = HERE / "snakepit_bridge" / "_proto"
STEM = "snakepit_bridge"
GENERATED = (f"{STEM}_pb2.py", f"{STEM}_pb2.pyi", f"{STEM}_pb2_grpc.py")

# The generator: its pins, and the venv they are installed in.
TOOLS_REQUIREMENTS = HERE / "requirements-tools.txt"
TOOLS_VENV = REPO_ROOT / ".venv-tools"
ENSURE_VENV = REPO_ROOT / "scripts" / "ensure_venv.sh"

# Runs inside the tools venv: refuses another grpcio-tools than the pinned one
# (argv[1]), then runs protoc with the remaining arguments plus the include
# directory of the well-known protos bundled with that grpcio-tools.
_PROTOC_RUNNER = """
import importlib.metadata, pathlib, sys
want, args = sys.argv[1], sys.argv[2:]
have = importlib.metadata.version("grpcio-tools")
if have != want:
    sys.exit(f"{sys.executable}: grpcio-tools {have} installed, {want} pinned")
import grpc_tools
from grpc_tools import protoc
well_known = pathlib.Path(grpc_tools.__file__).resolve().parent / "_proto"
sys.exit(protoc.main(["grpc_tools.protoc", *args, f"-I{well_known}"]))
"""

_ABSOLUTE_IMPORT = f"import {STEM}_pb2 as snakepit__bridge__pb2\n"
_RELATIVE_IMPORT = f"from . import {STEM}_pb2 as snakepit__bridge__pb2\n"


def pinned_tools_version(requirements: Path = TOOLS_REQUIREMENTS) -> str:
    """The grpcio-tools version pinned in ``requirements-tools.txt``."""
    found = re.search(r"^grpcio-tools==(\S+)\s*$", requirements.read_text(), re.MULTILINE)
    if not found:
        raise RuntimeError(f"{requirements}: no grpcio-tools==VERSION line")
    return found.group(1)


def tools_python() -> Path:
    """The interpreter of the tools venv, made or brought up to date first (idempotent)."""
    done = subprocess.run(
        ["bash", str(ENSURE_VENV), "--no-package", str(TOOLS_VENV), str(TOOLS_REQUIREMENTS)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Progress lines ("[setup] ...") go to stderr: --check's answer stays on its own.
    if done.stdout:
        sys.stderr.write(done.stdout)
    if done.returncode != 0:
        raise RuntimeError(f"could not make the tools venv {TOOLS_VENV} (exit code {done.returncode})")
    return TOOLS_VENV / "bin" / "python"


def generate(out_dir: Path, proto_file: Path = PROTO_FILE) -> list[Path]:
    """Generate the stubs for ``proto_file`` into ``out_dir``; return the written paths.

    Raises ``RuntimeError`` when protoc fails, when the tools venv holds another
    grpcio-tools than the pinned one, or when protoc's output is not what this
    script knows how to post-process (for example a grpcio-tools that changed
    the import line it emits).
    """
    python = tools_python()
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snakepit-protoc-") as tmp:
        args = [
            f"-I{proto_file.parent}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            # Relative to the -I root, so the generated "source:" comment and the
            # descriptor's file name never contain a machine-specific path.
            proto_file.name,
        ]
        # -I: isolated, so no PYTHONPATH or user site can swap in another grpc_tools.
        command = [str(python), "-I", "-c", _PROTOC_RUNNER, pinned_tools_version(), *args]
        code = subprocess.run(command).returncode
        if code != 0:
            raise RuntimeError(f"protoc failed with exit code {code}: {' '.join(args)}")

        written = []
        for name in GENERATED:
            data = (Path(tmp) / name).read_bytes().decode("utf-8")
            if name.endswith("_grpc.py"):
                if _ABSOLUTE_IMPORT not in data:
                    raise RuntimeError(
                        f"{name}: expected the line {_ABSOLUTE_IMPORT.strip()!r} to rewrite; "
                        "grpcio-tools changed its output, update generate_proto.py"
                    )
                data = data.replace(_ABSOLUTE_IMPORT, _RELATIVE_IMPORT, 1)
            target = out_dir / name
            # Always "\n" line endings and UTF-8, whatever the platform.
            target.write_bytes(data.encode("utf-8"))
            written.append(target)
    return written


def check(committed_dir: Path = DEFAULT_OUT) -> list[str]:
    """Return the names of committed stubs that differ from freshly generated ones."""
    with tempfile.TemporaryDirectory(prefix="snakepit-stubs-") as tmp:
        generate(Path(tmp))
        stale = []
        for name in GENERATED:
            committed = committed_dir / name
            fresh = Path(tmp) / name
            if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
                stale.append(name)
        return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the snakepit_bridge gRPC stubs from proto/snakepit_bridge.proto."
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"directory to write the stubs to (default: {os.path.relpath(DEFAULT_OUT)})",
    )
    group.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the committed stubs differ from the proto",
    )
    args = parser.parse_args(argv)

    if args.check:
        stale = check()
        if stale:
            print(
                "out of date with proto/snakepit_bridge.proto: "
                + ", ".join(stale)
                + f"\nrun: python {os.path.relpath(__file__)}",
                file=sys.stderr,
            )
            return 1
        print("generated stubs are up to date")
        return 0

    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
