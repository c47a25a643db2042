"""The committed stubs must be exactly what generate_proto.py makes from the proto,
with the generator of the oldest end of the supported range (so they import at
both ends of it: scripts/test.sh runs this file on the newest pins and on the floor)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

PY_DIR = Path(__file__).resolve().parent.parent / "priv" / "python"
SCRIPT = PY_DIR / "generate_proto.py"
COMMITTED = PY_DIR / "snakepit_bridge" / "_proto"
FILES = ["snakepit_bridge_pb2.py", "snakepit_bridge_pb2.pyi", "snakepit_bridge_pb2_grpc.py"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _floor(package: str) -> tuple[int, ...]:
    """The lower bound pyproject.toml declares for ``package`` (``"package>=X.Y,<Z"``)."""
    found = re.search(rf'"{package}>=([0-9.]+)', (PY_DIR / "pyproject.toml").read_text())
    assert found, f"pyproject.toml declares no {package}>= lower bound"
    return _version(found.group(1))


def _pin(requirements: str, package: str) -> tuple[int, ...]:
    found = re.search(rf"^{package}==([0-9.]+)\s*$", (PY_DIR / requirements).read_text(), re.MULTILINE)
    assert found, f"{requirements} pins no {package}"
    return _version(found.group(1))


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


def test_check_mode_fails_on_a_stale_stub(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("snakepit_generate_proto", SCRIPT)
    assert spec is not None and spec.loader is not None
    script: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in FILES:
        shutil.copy(COMMITTED / name, tmp_path / name)
    assert script.check(tmp_path) == []
    stale = tmp_path / "snakepit_bridge_pb2_grpc.py"
    stale.write_bytes(stale.read_bytes() + b"\n")
    (tmp_path / "snakepit_bridge_pb2.pyi").unlink()
    assert script.check(tmp_path) == ["snakepit_bridge_pb2.pyi", "snakepit_bridge_pb2_grpc.py"]


def test_the_generator_is_the_oldest_of_the_declared_range() -> None:
    """Stubs from a newer generator would refuse the floor pyproject.toml promises."""
    grpcio, protobuf = _floor("grpcio"), _floor("protobuf")
    assert _pin("requirements-tools.txt", "grpcio-tools")[:2] == grpcio[:2]
    # The floor the test suite runs on is the declared one.
    assert _pin("requirements-floor.txt", "grpcio")[:2] == grpcio[:2]
    assert _pin("requirements-floor.txt", "protobuf")[:2] == protobuf[:2]


def test_the_stubs_version_guards_accept_the_floor() -> None:
    """Newer gencode checks the runtime at import: any check must pass at the declared floor."""
    grpc_stub = (COMMITTED / "snakepit_bridge_pb2_grpc.py").read_text()
    guard = re.search(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", grpc_stub, re.MULTILINE)
    if guard:
        assert _version(guard.group(1)) <= _floor("grpcio"), guard.group(0)
    messages = (COMMITTED / "snakepit_bridge_pb2.py").read_text()
    gencode = re.search(r"^# Protobuf Python Version: ([0-9.]+)$", messages, re.MULTILINE)
    assert gencode, "no '# Protobuf Python Version:' line in snakepit_bridge_pb2.py"
    assert _version(gencode.group(1))[:2] <= _floor("protobuf")[:2], gencode.group(0)
    check = re.search(r"ValidateProtobufRuntimeVersion\(\s*\S+,\s*(\d+),\s*(\d+),\s*(\d+),", messages)
    if check:
        assert tuple(int(part) for part in check.groups()) <= _floor("protobuf"), check.group(0)


def test_the_stubs_import_without_a_warning_here() -> None:
    """Under this interpreter's grpcio and protobuf (the floor or the newest pins): no error, no warning."""
    code = "import snakepit_bridge._proto.snakepit_bridge_pb2_grpc"
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=PY_DIR, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
