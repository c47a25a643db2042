#!/usr/bin/env python3
"""Regenerate the Python gRPC stubs from ``proto/snakepit_bridge.proto``.

This is the one command that produces the committed files in
``priv/python/snakepit_bridge/_proto/``::

    .venv/bin/python priv/python/generate_proto.py

It needs ``grpcio-tools`` (pinned in ``requirements-dev.txt``, at the same
version as ``grpcio``: stubs from a newer grpcio-tools refuse to import under an
older grpcio). It writes three files:

- ``snakepit_bridge_pb2.py``       messages
- ``snakepit_bridge_pb2.pyi``      type stubs for the messages
- ``snakepit_bridge_pb2_grpc.py``  the service stub, with its import of
  ``snakepit_bridge_pb2`` rewritten to a package-relative import

The output depends only on the proto and the grpcio-tools version: the same
inputs give the same bytes. ``--out DIR`` writes to another directory (the test
suite uses it to prove the committed stubs match the proto); ``--check`` writes
nothing and exits 1 when the committed stubs are out of date.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PROTO_FILE = REPO_ROOT / "proto" / "snakepit_bridge.proto"
DEFAULT_OUT = HERE / "snakepit_bridge" / "_proto"
STEM = "snakepit_bridge"
GENERATED = (f"{STEM}_pb2.py", f"{STEM}_pb2.pyi", f"{STEM}_pb2_grpc.py")

_ABSOLUTE_IMPORT = f"import {STEM}_pb2 as snakepit__bridge__pb2\n"
_RELATIVE_IMPORT = f"from . import {STEM}_pb2 as snakepit__bridge__pb2\n"


def generate(out_dir: Path, proto_file: Path = PROTO_FILE) -> list[Path]:
    """Generate the stubs for ``proto_file`` into ``out_dir``; return the written paths.

    Raises ``RuntimeError`` when protoc fails or its output is not what this
    script knows how to post-process (for example a grpcio-tools that changed
    the import line it emits).
    """
    import grpc_tools
    from grpc_tools import protoc  # imported here so --help works without grpcio-tools

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snakepit-protoc-") as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{proto_file.parent}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            # Relative to the -I root, so the generated "source:" comment and the
            # descriptor's file name never contain a machine-specific path.
            proto_file.name,
        ]
        code = protoc.main(args)
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
