"""The committed stubs must be exactly what generate_proto.py makes from the proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PY_DIR = Path(__file__).resolve().parent.parent / "priv" / "python"
SCRIPT = PY_DIR / "generate_proto.py"
COMMITTED = PY_DIR / "snakepit_bridge" / "_proto"
FILES = ["snakepit_bridge_pb2.py", "snakepit_bridge_pb2.pyi", "snakepit_bridge_pb2_grpc.py"]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("name", FILES)
def test_committed_stub_equals_a_fresh_one(fresh: Path, name: str) -> None:
    assert (COMMITTED / name).read_bytes() == (fresh / name).read_bytes(), (
        f"{name} is out of date with proto/snakepit_bridge.proto: run `python {SCRIPT.relative_to(PY_DIR.parent.parent)}`"
    )


def test_generation_is_deterministic(fresh: Path, tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (fresh / name).read_bytes(), name


def test_grpc_stub_imports_messages_from_the_package(fresh: Path) -> None:
    text = (fresh / "snakepit_bridge_pb2_grpc.py").read_text()
    assert "from . import snakepit_bridge_pb2 as snakepit__bridge__pb2\n" in text
    assert "\nimport snakepit_bridge_pb2" not in text


def test_check_mode_agrees() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
