"""Unit tests of the value encoding (no server needed)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import any_pb2
from snakepit_bridge import BridgeError, ValidationError, VariableType
from snakepit_bridge.values import BINARY_THRESHOLD, decode_value, encode_value, parse_type_url, type_url

PREFIX = "type.googleapis.com/snakepit."


def _json(encoded_any: any_pb2.Any) -> Any:
    return json.loads(encoded_any.value.decode("utf-8"))


@pytest.mark.parametrize("var_type", [t.value for t in VariableType])
def test_type_url_names_the_type(var_type: str) -> None:
    assert type_url(var_type) == PREFIX + var_type
    assert type_url(VariableType(var_type), binary=True) == PREFIX + var_type + ".binary"
    assert parse_type_url(PREFIX + var_type) == (var_type, False)
    assert parse_type_url(PREFIX + var_type + ".binary") == (var_type, True)
    assert parse_type_url("type.googleapis.com/other.float") == (None, False)


@pytest.mark.parametrize(
    ("var_type", "value", "wire"),
    [
        ("float", 0.5, 0.5),
        ("float", 3, 3),
        ("float", math.nan, "NaN"),
        ("float", math.inf, "Infinity"),
        ("float", -math.inf, "-Infinity"),
        ("integer", 42, 42),
        ("integer", -(2**63), -(2**63)),
        ("string", "héllo ✓", "héllo ✓"),
        ("boolean", True, True),
        ("choice", "b", "b"),
        ("module", "Predict", "Predict"),
        ("embedding", [0.1, 2, math.inf], [0.1, 2, "Infinity"]),
        ("tensor", {"shape": [2, 2], "data": [[1, 2], [3, 4]]}, {"shape": [2, 2], "data": [[1, 2], [3, 4]]}),
        ("tensor", {"shape": [2], "data": (1.0, math.nan)}, {"shape": [2], "data": [1.0, "NaN"]}),
    ],
)
def test_encode_json_path(var_type: str, value: object, wire: object) -> None:
    encoded = encode_value(var_type, value)
    assert encoded.binary is None
    assert encoded.any.type_url == PREFIX + var_type
    assert _json(encoded.any) == wire
    # Strict JSON: no bare NaN / Infinity tokens.
    json.loads(encoded.any.value, parse_constant=lambda c: pytest.fail(f"non-standard JSON token {c}"))


def test_encode_accepts_the_enum_and_numpy_scalars() -> None:
    assert _json(encode_value(VariableType.FLOAT, np.float32(0.25)).any) == 0.25
    assert _json(encode_value("integer", np.int64(7)).any) == 7
    assert _json(encode_value("boolean", np.bool_(True)).any) is True


def test_unknown_type_is_passed_to_the_server() -> None:
    encoded = encode_value("quaternion", [1, 2])
    assert encoded.any.type_url == PREFIX + "quaternion"
    assert _json(encoded.any) == [1, 2]


def test_unencodable_value_is_a_validation_error() -> None:
    with pytest.raises(ValidationError) as info:
        encode_value("string", object())
    assert info.value.kind == "invalid_value"
    assert "cannot be encoded" in info.value.message


def test_small_numpy_arrays_take_the_json_path() -> None:
    emb = encode_value("embedding", np.array([1.0, 2.5], dtype=np.float32))
    assert emb.binary is None and _json(emb.any) == [1.0, 2.5]
    ten = encode_value("tensor", np.arange(6, dtype=np.float64).reshape(2, 3))
    assert ten.binary is None
    assert _json(ten.any) == {"shape": [2, 3], "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]}


def test_large_float64_embedding_takes_the_binary_path() -> None:
    arr = np.linspace(-1.0, 1.0, BINARY_THRESHOLD)
    encoded = encode_value("embedding", arr)
    assert encoded.any.type_url == PREFIX + "embedding.binary"
    assert _json(encoded.any) == {"shape": [BINARY_THRESHOLD], "dtype": "float64", "binary_format": "raw_le"}
    assert encoded.binary == struct.pack(f"<{BINARY_THRESHOLD}d", *arr.tolist())


def test_large_float32_tensor_keeps_its_dtype_on_the_binary_path() -> None:
    arr = np.arange(2048, dtype=np.float32).reshape(32, 64)
    encoded = encode_value("tensor", arr)
    assert encoded.any.type_url == PREFIX + "tensor.binary"
    assert _json(encoded.any) == {"shape": [32, 64], "dtype": "float32", "binary_format": "raw_le"}
    assert encoded.binary == arr.astype("<f4").tobytes()


def test_large_integer_array_is_sent_as_float64() -> None:
    arr = np.arange(BINARY_THRESHOLD, dtype=np.int32)
    encoded = encode_value("embedding", arr)
    assert _json(encoded.any)["dtype"] == "float64"
    assert encoded.binary == arr.astype("<f8").tobytes()


def test_tensor_mapping_with_numpy_data_takes_the_binary_path() -> None:
    data = np.ones(2048)
    encoded = encode_value("tensor", {"shape": [2, 1024], "data": data})
    assert _json(encoded.any)["shape"] == [2, 1024]
    assert encoded.binary == data.astype("<f8").tobytes()


def test_two_dimensional_array_is_not_sent_binary_as_an_embedding() -> None:
    # Not an embedding: sent as nested JSON for the server to refuse with its own message.
    encoded = encode_value("embedding", np.zeros((32, 64)))
    assert encoded.binary is None
    assert len(_json(encoded.any)) == 32


def _any(var_type: str, payload: object, binary: bool = False) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url(var_type, binary), value=json.dumps(payload).encode())


@pytest.mark.parametrize(
    ("var_type", "payload", "expected"),
    [
        ("float", 1, 1.0),
        ("float", 2.5, 2.5),
        ("float", "Infinity", math.inf),
        ("float", "-Infinity", -math.inf),
        ("integer", 3, 3),
        ("integer", 3.0, 3),
        ("string", "x", "x"),
        ("boolean", False, False),
        ("choice", "a", "a"),
        ("module", "M", "M"),
        ("embedding", [1, 2.5, "-Infinity"], [1.0, 2.5, -math.inf]),
        ("tensor", {"shape": [2, 2], "data": [[1, 2], [3, 4]]}, {"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.0]}),
        ("tensor", {"shape": [3], "data": [1, 2, 3]}, {"shape": [3], "data": [1.0, 2.0, 3.0]}),
    ],
)
def test_decode_json_path(var_type: str, payload: object, expected: object) -> None:
    value = decode_value(_any(var_type, payload))
    assert value == expected
    assert type(value) is type(expected)


def test_decode_nan() -> None:
    assert math.isnan(decode_value(_any("float", "NaN")))
    assert math.isnan(decode_value(_any("embedding", ["NaN"]))[0])


def test_decode_falls_back_to_the_variable_type_for_a_foreign_type_url() -> None:
    foreign = any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Value", value=b"2")
    assert decode_value(foreign, var_type="float") == 2.0


def test_decode_empty_any_is_none() -> None:
    assert decode_value(any_pb2.Any()) is None


def test_decode_binary_path_without_numpy() -> None:
    raw = struct.pack("<3d", 1.5, -2.0, math.inf)
    meta = {"shape": [3], "dtype": "float64", "binary_format": "raw_le"}
    assert decode_value(_any("embedding", meta, binary=True), raw) == [1.5, -2.0, math.inf]
    tensor_meta = {"shape": [2, 2], "dtype": "float32", "binary_format": "raw_le"}
    raw32 = struct.pack("<4f", 1, 2, 3, 4)
    assert decode_value(_any("tensor", tensor_meta, binary=True), raw32) == {
        "shape": [2, 2],
        "data": [1.0, 2.0, 3.0, 4.0],
    }


def test_binary_round_trip_of_the_encoder() -> None:
    arr = np.random.default_rng(7).standard_normal(3000)
    encoded = encode_value("embedding", arr)
    assert decode_value(encoded.any, encoded.binary or b"") == arr.tolist()


@pytest.mark.parametrize(
    ("meta", "raw", "message"),
    [
        ({"shape": [2], "dtype": "float64", "binary_format": "pickle"}, b"\0" * 16, "binary_format"),
        ({"shape": [2], "dtype": "int8", "binary_format": "raw_le"}, b"\0" * 2, "dtype"),
        ({"shape": [3], "dtype": "float64", "binary_format": "raw_le"}, b"\0" * 16, "16 bytes"),
        ({"shape": "3", "dtype": "float64", "binary_format": "raw_le"}, b"\0" * 24, "shape"),
    ],
)
def test_malformed_binary_from_the_server_is_a_bridge_error(meta: dict[str, object], raw: bytes, message: str) -> None:
    with pytest.raises(BridgeError, match=message):
        decode_value(_any("embedding", meta, binary=True), raw)


def test_malformed_json_from_the_server_is_a_bridge_error() -> None:
    bad = any_pb2.Any(type_url=type_url("float"), value=b"{nope")
    with pytest.raises(BridgeError, match="malformed float"):
        decode_value(bad)


def test_the_package_works_without_numpy() -> None:
    script = """
import sys, struct, json
sys.modules["numpy"] = None  # any "import numpy" now fails
import snakepit_bridge
from snakepit_bridge.values import encode_value, decode_value, type_url
from google.protobuf import any_pb2
assert "numpy" not in [m for m in sys.modules if sys.modules[m] is not None]
assert json.loads(encode_value("embedding", [1, 2.5]).any.value) == [1, 2.5]
meta = any_pb2.Any(type_url=type_url("embedding", True),
                   value=b'{"shape":[2],"dtype":"float64","binary_format":"raw_le"}')
assert decode_value(meta, struct.pack("<2d", 1.0, 2.0)) == [1.0, 2.0]
print("ok")
"""
    pkg = Path(__file__).resolve().parent.parent / "priv" / "python"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(pkg)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
