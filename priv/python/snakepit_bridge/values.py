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

Speed
    Batch calls move thousands of values, so the common cases have fast paths
    that give exactly what the general code gives (the tests compare them):
    plain ``float``/``int``/``str``/``bool``/``None`` values are encoded
    without building a JSON encoder (:func:`encode_parts`), and a JSON value is
    decoded by the json module's scanner without ``json.loads``' per-call
    overhead.

Compact batches
    ``GetVariables`` with ``values_only`` and ``SetVariables`` with
    ``value_identifiers`` carry the JSON-path values of a batch as one JSON
    array (``values_json``), element *i* being exactly what the *i*-th
    value's ``Any.value`` would hold, and the values of floats as packed
    doubles: one parse or one join instead of a protobuf message per value
    (:func:`decode_batch_values`, :func:`encode_compact`). Binary-path values
    keep their ``Any`` form.
"""

from __future__ import annotations

import array
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

import grpc
from google.protobuf import any_pb2

from .errors import BridgeError, ValidationError
from .types import VariableType

__all__ = [
    "BINARY_THRESHOLD",
    "EncodedValue",
    "TYPE_URL_PREFIX",
    "decode_batch_values",
    "decode_value",
    "decode_values_json",
    "decode_variable_value",
    "encode_compact",
    "encode_parts",
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
    binary: bytes | None = None


def type_url(var_type: VariableType | str, binary: bool = False) -> str:
    """The ``Any.type_url`` for a variable type, e.g. ``type.googleapis.com/snakepit.float``."""
    return f"{TYPE_URL_PREFIX}{var_type}{BINARY_SUFFIX if binary else ''}"


def parse_type_url(url: str) -> tuple[str | None, bool]:
    """Split a type_url into ``(type name, is_binary)``; the name is ``None`` if foreign."""
    if not url.startswith(TYPE_URL_PREFIX):
        return None, False
    name = url[len(TYPE_URL_PREFIX) :]
    if name.endswith(BINARY_SUFFIX):
        return name[: -len(BINARY_SUFFIX)], True
    return name, False


#: type name -> its JSON-path type_url, for the known types.
_URL_OF_TYPE: dict[str, str] = {t.value: type_url(t) for t in VariableType}
#: JSON-path type_url of a known type -> the type name.
_TYPE_OF_URL: dict[str, str] = {url: name for name, url in _URL_OF_TYPE.items()}


# --------------------------------------------------------------------------- encoding


def encode_value(var_type: VariableType | str, value: Any) -> EncodedValue:
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
    url, payload, binary = encode_parts(var_type, value)
    return EncodedValue(any_pb2.Any(type_url=url, value=payload), binary)


def encode_parts(var_type: VariableType | str, value: Any) -> tuple[str, bytes, bytes | None]:
    """:func:`encode_value` without the wrapping: ``(type_url, Any.value, binary or None)``.

    For filling a message in place (a batch fills one ``Any`` per key). A
    ``float``, ``int``, ``str``, ``bool`` or ``None`` for a known type takes a
    fast path that gives the very bytes the general one gives.

    Raises:
        ValidationError: as :func:`encode_value`.
    """
    scalar = _SCALAR_JSON.get(type(value))
    if scalar is not None:
        try:
            url = _URL_OF_TYPE.get(var_type)  # anything but a known type name: the general path
            if url is not None:
                return url, scalar(value), None
        except (TypeError, ValueError):
            pass  # an unhashable var_type, an int too long for str(): the general path says why
    coerced = VariableType.coerce(var_type)
    if isinstance(coerced, VariableType) and coerced in _NUMERIC_TYPES:
        binary = _encode_binary(coerced, value)
        if binary is not None:
            return binary
    if coerced == VariableType.TENSOR and _is_ndarray(value):
        value = {"shape": list(value.shape), "data": value.reshape(-1).tolist()}
    return type_url(coerced), encode_json(value), None


def encode_compact(request: Any, values: Mapping[str, Any], types: Mapping[str, str]) -> dict[str, str]:
    """Encode many values into a ``BatchSetVariablesRequest``, mostly in its compact forms.

    For each ``key, value`` of ``values`` (the variable's type is
    ``types[key]``), in order: a ``float`` joins ``float_identifiers`` /
    ``float_values`` (packed doubles); another JSON-path value joins
    ``value_identifiers`` / ``values_json`` (its payload, what
    :func:`encode_parts` gives as ``Any.value``, as an element of one JSON
    array); a binary-path value fills ``request.updates[key]`` and
    ``request.binary_updates[key]``. A value that cannot be encoded goes
    nowhere.

    Returns:
        key -> the reason, for the values that could not be encoded.
    """
    if set(map(type, values.values())) == {float}:  # the usual case: all floats, no loop in Python
        request.float_identifiers.extend(values.keys())
        request.float_values.extend(values.values())
        return {}
    keys: list[str] = []
    payloads: list[bytes] = []
    float_keys: list[str] = []
    floats: list[float] = []
    errors: dict[str, str] = {}
    for key, value in values.items():
        if type(value) is float:  # the hot case
            float_keys.append(key)
            floats.append(value)
            continue
        try:
            url, payload, binary = encode_parts(types[key], value)
        except ValidationError as exc:
            errors[key] = exc.message
            continue
        if binary is not None:
            entry = request.updates[key]
            entry.type_url = url
            entry.value = payload
            request.binary_updates[key] = binary
            continue
        keys.append(key)
        payloads.append(payload)
    if float_keys:
        request.float_identifiers.extend(float_keys)
        request.float_values.extend(floats)
    if keys:
        request.value_identifiers.extend(keys)
        request.values_json = b"[" + b",".join(payloads) + b"]"
    return errors


def _float_json(x: float) -> bytes:
    """``x`` (exactly a float) as :func:`encode_json` writes it."""
    if x - x == 0.0:  # finite (inf - inf and nan - nan are nan)
        return repr(x).encode()  # float.__repr__, what json.dumps writes
    if x != x:
        return b'"NaN"'
    return b'"Infinity"' if x > 0 else b'"-Infinity"'


def _int_json(x: int) -> bytes:
    """``x`` (exactly an int) as :func:`encode_json` writes it."""
    return repr(x).encode()  # ValueError beyond sys.get_int_max_str_digits(), as json.dumps


def _str_json(x: str) -> bytes:
    return encode_basestring_ascii(x).encode()  # json.dumps' default (ensure_ascii)


def _bool_json(x: bool) -> bytes:
    return b"true" if x else b"false"


def _none_json(_: None) -> bytes:
    return b"null"


#: Exact type -> its JSON bytes, as :func:`encode_json` writes them (subclasses take the general path).
_SCALAR_JSON: dict[type, Callable[[Any], bytes]] = {
    float: _float_json,
    int: _int_json,
    str: _str_json,
    bool: _bool_json,
    type(None): _none_json,
}

_JSON_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    """JSON-encode ``value`` the bridge's way (non-finite floats as strings, numpy → lists).

    Raises:
        ValidationError: the value has no JSON form.
    """
    try:
        return _JSON_ENCODER.encode(_jsonable(value)).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(
            f"value of type {type(value).__name__} cannot be encoded as JSON: {exc}",
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid_value",
        ) from exc


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


def _encode_binary(var_type: VariableType, value: Any) -> tuple[str, bytes, bytes | None] | None:
    """The binary-path encoding (parts) of a large numeric numpy array, else ``None``."""
    shape: list[int] | None = None
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
    return type_url(var_type, binary=True), encode_json(meta), raw


# --------------------------------------------------------------------------- decoding

# What json.loads runs: JSONDecoder.__init__ sets it (typeshed does not know the attribute).
_scan_once = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(raw: bytes) -> Any:
    """``json.loads(raw.decode("utf-8"))``: the same value, or the same exception, faster.

    The json module's scanner reads the value; whatever it does not take as a
    whole (surrounding whitespace, malformed text) goes to ``json.loads``,
    which accepts it or raises its usual error.
    """
    text = raw.decode("utf-8")
    try:
        value, end = _scan_once(text, 0)
    except (StopIteration, ValueError):
        return json.loads(text)
    if end != len(text):
        return json.loads(text)
    return value


def decode_value(
    value: any_pb2.Any,
    binary_value: bytes = b"",
    var_type: VariableType | str | None = None,
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
    return _decode(value.type_url, value.value, binary_value, var_type)


def decode_variable_value(var: Any) -> Any:
    """``decode_value(var.value, var.binary_value, var.type)`` of a ``Variable`` message.

    The same result; ``binary_value`` and ``type`` are read only when needed
    (binary path, foreign type_url).
    """
    value = var.value
    url = value.type_url
    raw = value.value
    if raw:
        fast = _FAST_DECODERS.get(url)
        if fast is not None:
            return fast(raw)
    return _decode(url, raw, var.binary_value, var.type)


def _decode(url: str, raw: bytes, binary_value: bytes = b"", var_type: VariableType | str | None = None) -> Any:
    """:func:`decode_value` of an ``Any`` given as its two fields."""
    name: str | None = _TYPE_OF_URL.get(url)
    if name is not None and raw:  # the usual case: a known type on the JSON path
        try:
            payload = _loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BridgeError(f"server sent a malformed {name} value: {exc}") from exc
        return _NORMALISERS.get(name, _same)(payload)
    if not url and not raw:
        return None
    name, is_binary = parse_type_url(url)
    if name is None:
        name = str(var_type) if var_type is not None else ""
    try:
        payload = _loads(raw) if raw else None
    except (UnicodeDecodeError, ValueError) as exc:
        raise BridgeError(f"server sent a malformed {name or 'unknown'} value: {exc}") from exc
    if is_binary:
        return _decode_binary(name, payload, binary_value)
    return _normalise(name, payload)


def decode_batch_values(types: Sequence[str], floats: Sequence[float], values_json: bytes) -> list[Any]:
    """Decode a ``BatchValues``: the value of each variable, given the type of each.

    The values of ``"float"`` variables come in order from ``floats``, the
    others from the JSON array ``values_json`` (see :func:`decode_values_json`).

    Raises:
        BridgeError: the counts do not match the types, or ``values_json`` is malformed.
    """
    count = len(types)
    n_floats = len(floats)
    if n_floats == count and (values_json == b"[]" or not values_json):  # the usual case: all floats
        return list(floats)
    others = [name for name in types if name != "float"]
    if n_floats != count - len(others):
        raise BridgeError(f"server sent {n_floats} float values for a batch of {count - len(others)} floats")
    json_values = iter(decode_values_json(others, values_json))
    float_values = iter(floats)
    return [next(float_values) if name == "float" else next(json_values) for name in types]


def decode_values_json(types: Sequence[str], payload: bytes) -> list[Any]:
    """Decode a compact batch's ``values_json``: a JSON array whose element *i* is a value of type ``types[i]``.

    Each result is what :func:`decode_value` gives for that element's own
    ``Any`` (type names this client does not know leave the JSON as it is).

    Raises:
        BridgeError: ``payload`` is not a JSON array of ``len(types)`` values.
    """
    try:
        items = _loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BridgeError(f"server sent malformed batch values: {exc}") from exc
    count = len(types)
    if type(items) is not list or len(items) != count:
        got = f"{len(items)} values" if type(items) is list else f"a JSON {type(items).__name__}"
        raise BridgeError(f"server sent {got} for a batch of {count} variables")
    if count and types.count(types[0]) == count:  # the usual case: all of one type
        return _normalise_all(types[0], items)
    return [_normalise(name, x) for name, x in zip(types, items, strict=False)]


def _same(x: Any) -> Any:
    return x


def _float(x: Any) -> Any:
    if isinstance(x, str):
        return _JSON_TO_SPECIAL.get(x, x)
    if isinstance(x, int) and not isinstance(x, bool):
        return float(x)
    return x


def _integer(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return x


def _embedding(x: Any) -> Any:
    if isinstance(x, list):
        return [_float(v) for v in x]
    return x


def _tensor(x: Any) -> Any:
    if isinstance(x, dict):
        shape = x.get("shape", [])
        return {"shape": list(shape), "data": [_float(v) for v in _flatten(x.get("data", []))]}
    return x


#: Type name -> what its decoded JSON becomes (types not listed keep it as it is).
_NORMALISERS: dict[str, Callable[[Any], Any]] = {
    VariableType.FLOAT.value: _float,
    VariableType.INTEGER.value: _integer,
    VariableType.EMBEDDING.value: _embedding,
    VariableType.TENSOR.value: _tensor,
}


def _float_fast(x: Any) -> Any:
    return x if type(x) is float else _float(x)


def _integer_fast(x: Any) -> Any:
    return x if type(x) is int else _integer(x)


def _embedding_fast(x: Any) -> Any:
    if type(x) is list:
        return [v if type(v) is float else _float(v) for v in x]
    return _embedding(x)


def _json_decoder(name: str, normalise: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    """What :func:`_decode` does for a non-empty JSON-path value of the known type ``name``, as one call."""
    what = f"server sent a malformed {name} value: "

    def decode(raw: bytes) -> Any:
        try:
            payload = _loads(raw)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BridgeError(what + str(exc)) from exc
        return normalise(payload)

    return decode


#: JSON-path type_url of a known type -> the decoder of its (non-empty) payload, for the receive path.
_FAST_DECODERS: dict[str, Callable[[bytes], Any]] = {
    url: _json_decoder(
        name,
        {"float": _float_fast, "integer": _integer_fast, "embedding": _embedding_fast}.get(
            name, _NORMALISERS.get(name, _same)
        ),
    )
    for url, name in _TYPE_OF_URL.items()
}


def _normalise(name: str, payload: Any) -> Any:
    return _NORMALISERS.get(name, _same)(payload)


def _normalise_all(name: str, items: list[Any]) -> list[Any]:
    """``[_normalise(name, x) for x in items]``, with the common element type tested inline."""
    if name == "float":
        return [x if type(x) is float else _float(x) for x in items]
    if name == "integer":
        return [x if type(x) is int else _integer(x) for x in items]
    norm = _NORMALISERS.get(name)
    if norm is None:
        return items
    return [norm(x) for x in items]


def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    if all(not isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for x in data:
        out.extend(_flatten(x))
    return out


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
            f"server sent binary {name} of {len(raw)} bytes; shape {shape} in {dtype} needs {count * numbers.itemsize}"
        )
    numbers.frombytes(raw)
    if sys.byteorder == "big":
        numbers.byteswap()
    data = numbers.tolist()
    if name == VariableType.TENSOR:
        return {"shape": shape, "data": data}
    return data
