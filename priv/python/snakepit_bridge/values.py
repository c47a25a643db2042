"""Value encoding: Python values <-> ``google.protobuf.Any`` as the bridge speaks it.

JSON path (every type)
    ``type_url = "type.googleapis.com/snakepit.<type>"`` and ``Any.value`` is
    the UTF-8 JSON of the value. Non-finite floats travel as the JSON strings
    ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (anywhere: plain floats,
    embedding elements, tensor data). A tensor is ``{"shape": [...], "data": [...]}``.

Binary path (embedding and tensor)
    ``type_url`` ends in ``.binary``, ``Any.value`` holds the JSON metadata
    ``{"shape": [...], "dtype": "float64"|"float32", "binary_format": "raw_le"}``
    and the raw little-endian numbers travel in a bytes field next to it. The
    client sends numpy arrays of at least :data:`BINARY_THRESHOLD` elements this
    way; it decodes both paths, with or without numpy installed.

No value is ever pickled. numpy is optional: it is used only when the caller
passes numpy objects, and never imported by this module.
"""

from __future__ import annotations

import array
import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional, Union

import grpc
from google.protobuf import any_pb2

from .errors import BridgeError, ValidationError
from .types import VariableType

__all__ = [
    "BINARY_THRESHOLD",
    "EncodedValue",
    "TYPE_URL_PREFIX",
    "decode_value",
    "encode_value",
    "parse_type_url",
    "type_url",
]

TYPE_URL_PREFIX = "type.googleapis.com/snakepit."
BINARY_SUFFIX = ".binary"
#: numpy arrays with at least this many elements take the binary path.
BINARY_THRESHOLD = 1024

_SPECIAL_TO_JSON = {math.inf: "Infinity", -math.inf: "-Infinity"}
_JSON_TO_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_BINARY_DTYPES = {"float64": ("d", "<f8"), "float32": ("f", "<f4")}
_NUMERIC_TYPES = (VariableType.EMBEDDING, VariableType.TENSOR)


@dataclass(frozen=True)
class EncodedValue:
    """A value ready for the wire.

    Attributes:
        any: the ``google.protobuf.Any`` (JSON value, or JSON metadata on the binary path).
        binary: the raw little-endian numbers on the binary path, else ``None``.
    """

    any: any_pb2.Any
    binary: Optional[bytes] = None


def type_url(var_type: Union[VariableType, str], binary: bool = False) -> str:
    """The ``Any.type_url`` for a variable type, e.g. ``type.googleapis.com/snakepit.float``."""
    return f"{TYPE_URL_PREFIX}{var_type}{BINARY_SUFFIX if binary else ''}"


def parse_type_url(url: str) -> tuple[Optional[str], bool]:
    """Split a type_url into ``(type name, is_binary)``; the name is ``None`` if foreign."""
    if not url.startswith(TYPE_URL_PREFIX):
        return None, False
    name = url[len(TYPE_URL_PREFIX):]
    if name.endswith(BINARY_SUFFIX):
        return name[: -len(BINARY_SUFFIX)], True
    return name, False


# --------------------------------------------------------------------------- encoding


def encode_value(var_type: Union[VariableType, str], value: Any) -> EncodedValue:
    """Encode ``value`` for a variable of type ``var_type``.

    The client does not judge values: the server owns the rules and refuses what
    breaks them (so, e.g., ``True`` for an integer is sent and refused there).
    numpy scalars become Python numbers; numpy arrays become lists, or take the
    binary path for embedding/tensor values of at least :data:`BINARY_THRESHOLD`
    float-convertible elements.

    Raises:
        ValidationError: the value cannot be expressed in JSON at all (an
            arbitrary object, a complex number, ...).
    """
    var_type = VariableType.coerce(var_type)
    if isinstance(var_type, VariableType) and var_type in _NUMERIC_TYPES:
        binary = _encode_binary(var_type, value)
        if binary is not None:
            return binary
    if var_type == VariableType.TENSOR and _is_ndarray(value):
        value = {"shape": list(value.shape), "data": value.reshape(-1).tolist()}
    return EncodedValue(_json_any(type_url(var_type), value))


def encode_json(value: Any) -> bytes:
    """JSON-encode ``value`` the bridge's way (non-finite floats as strings, numpy → lists).

    Raises:
        ValidationError: the value has no JSON form.
    """
    try:
        return json.dumps(_jsonable(value), allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            f"value of type {type(value).__name__} cannot be encoded as JSON: {exc}",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_value",
        ) from exc


def _json_any(url: str, value: Any) -> any_pb2.Any:
    return any_pb2.Any(type_url=url, value=encode_json(value))


def _jsonable(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(allow_nan=False)`` accepts."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return _SPECIAL_TO_JSON.get(value, value)
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(value, np.ndarray):
            return _jsonable(value.tolist())
        if isinstance(value, np.generic):
            return _jsonable(value.item())
    return value  # json.dumps decides (and raises TypeError for the unknown)


def _is_ndarray(value: Any) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, np.ndarray)


def _encode_binary(var_type: VariableType, value: Any) -> Optional[EncodedValue]:
    """The binary-path encoding of a large numeric numpy array, else ``None``."""
    shape: Optional[list[int]] = None
    if var_type == VariableType.TENSOR and isinstance(value, Mapping) and _is_ndarray(value.get("data")):
        shape = [int(d) for d in value.get("shape", value["data"].shape)]
        value = value["data"]
    if not _is_ndarray(value) or value.size < BINARY_THRESHOLD or value.dtype.kind not in "fiu":
        return None
    if var_type == VariableType.EMBEDDING and value.ndim != 1:
        return None  # not an embedding; let the server say so
    if shape is None:
        shape = [int(d) for d in value.shape]
    dtype = "float32" if value.dtype.name == "float32" else "float64"
    raw = value.astype(_BINARY_DTYPES[dtype][1], copy=False).tobytes(order="C")
    meta = {"shape": shape, "dtype": dtype, "binary_format": "raw_le"}
    return EncodedValue(_json_any(type_url(var_type, binary=True), meta), raw)


# --------------------------------------------------------------------------- decoding


def decode_value(
    value: any_pb2.Any,
    binary_value: bytes = b"",
    var_type: Optional[Union[VariableType, str]] = None,
) -> Any:
    """Decode a value sent by the server.

    The type comes from ``value.type_url``; ``var_type`` (the ``Variable.type``)
    is the fallback for a type_url this client does not recognise. An empty Any
    decodes to ``None``. Results: float → ``float`` (incl. nan/inf), integer →
    ``int``, string/choice/module → ``str``, boolean → ``bool``, embedding →
    ``list[float]``, tensor → ``{"shape": [int, ...], "data": [float, ...]}``
    with flat data; the binary path decodes to the same forms.

    Raises:
        BridgeError: the payload is malformed (bad JSON, an unknown binary
            format or dtype, a byte count that does not match the shape).
    """
    if not value.type_url and not value.value:
        return None
    name, is_binary = parse_type_url(value.type_url)
    if name is None:
        name = str(var_type) if var_type is not None else ""
    try:
        payload = json.loads(value.value.decode("utf-8")) if value.value else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BridgeError(f"server sent a malformed {name or 'unknown'} value: {exc}") from exc
    if is_binary:
        return _decode_binary(name, payload, binary_value)
    return _normalise(name, payload)


def _float(x: Any) -> Any:
    if isinstance(x, str):
        return _JSON_TO_SPECIAL.get(x, x)
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x)
    return x


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if all(not isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x))
    return out


def _normalise(name: str, payload: Any) -> Any:
    if name == VariableType.FLOAT:
        return _float(payload)
    if name == VariableType.INTEGER:
        if isinstance(payload, float) and payload.is_integer():
            return int(payload)
        return payload
    if name == VariableType.EMBEDDING and isinstance(payload, list):
        return [_float(x) for x in payload]
    if name == VariableType.TENSOR and isinstance(payload, dict):
        shape = payload.get("shape", [])
        return {"shape": list(shape), "data": [_float(x) for x in _flatten(payload.get("data", []))]}
    return payload


def _decode_binary(name: str, meta: Any, raw: bytes) -> Any:
    if not isinstance(meta, dict):
        raise BridgeError(f"server sent binary {name} metadata that is not a JSON object: {meta!r}")
    fmt = meta.get("binary_format", "raw_le")
    if fmt != "raw_le":
        raise BridgeError(f"server sent binary {name} in unsupported binary_format {fmt!r}")
    dtype = meta.get("dtype", "float64")
    if dtype not in _BINARY_DTYPES:
        raise BridgeError(f"server sent binary {name} with unsupported dtype {dtype!r}")
    shape = meta.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise BridgeError(f"server sent binary {name} with a bad shape {shape!r}")
    numbers = array.array(_BINARY_DTYPES[dtype][0])
    count = math.prod(shape)
    if len(raw) != count * numbers.itemsize:
        raise BridgeError(
            f"server sent binary {name} of {len(raw)} bytes; shape {shape} in {dtype} needs "
            f"{count * numbers.itemsize}"
        )
    numbers.frombytes(raw)
    if sys.byteorder == "big":
        numbers.byteswap()
    data = numbers.tolist()
    if name == VariableType.TENSOR:
        return {"shape": shape, "data": data}
    return data
