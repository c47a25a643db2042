"""The fast paths of the client (batch encoding and decoding, lazy watch updates) give what the general code gives.

The first part needs no server: each fast path is compared with a reference
written the straightforward way (``json.dumps`` / ``json.loads`` as the
package did before it had fast paths). The second part runs against the real
server, in both modes.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import pickle
import struct
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from _support import AnyMode, context_for
from google.protobuf import any_pb2
from snakepit_bridge import BatchUpdateResult, BridgeError, ValidationError, VariableInfo, VariableType, VariableUpdate
from snakepit_bridge._cache import WatchHolder
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._update import Deferred
from snakepit_bridge._watchplan import decode_update
from snakepit_bridge.context import SessionContext
from snakepit_bridge.values import (
    BINARY_THRESHOLD,
    decode_batch_values,
    decode_value,
    decode_values_json,
    decode_variable_value,
    encode_compact,
    encode_parts,
    encode_value,
    type_url,
)

KNOWN_TYPES = [t.value for t in VariableType]
_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# --------------------------------------------------------------------------- references


def reference_json(value: Any) -> bytes:
    """The JSON the package wrote before its fast paths (json.dumps of the _jsonable form)."""

    def jsonable(v: Any) -> Any:
        if isinstance(v, float):
            if math.isnan(v):
                return "NaN"
            return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(v, v)
        if isinstance(v, (list, tuple)):
            return [jsonable(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): jsonable(x) for k, x in v.items()}
        return v

    return json.dumps(jsonable(value), allow_nan=False, separators=(",", ":")).encode("utf-8")


def reference_decode(var_type: str, raw: bytes) -> Any:
    """What a JSON-path value decoded to before the fast paths: json.loads, then per type."""

    def flt(x: Any) -> Any:
        if isinstance(x, str):
            return _SPECIAL.get(x, x)
        if isinstance(x, int) and not isinstance(x, bool):
            return float(x)
        return x

    payload = json.loads(raw.decode("utf-8")) if raw else None
    if var_type == "float":
        return flt(payload)
    if var_type == "integer" and isinstance(payload, float) and payload.is_integer():
        return int(payload)
    if var_type == "embedding" and isinstance(payload, list):
        return [flt(x) for x in payload]
    if var_type == "tensor" and isinstance(payload, dict):
        flat: list[Any] = []

        def walk(d: Any) -> None:
            if isinstance(d, list):
                for x in d:
                    walk(x)
            else:
                flat.append(d)

        walk(payload.get("data", []))
        return {"shape": list(payload.get("shape", [])), "data": [flt(x) for x in flat]}
    return payload


def same(got: Any, want: Any) -> bool:
    """Equal, of the same type all the way down, NaN equal to NaN and the sign of zero kept."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        if math.isnan(want):
            return math.isnan(got)
        return got == want and math.copysign(1.0, got) == math.copysign(1.0, want)
    if isinstance(want, list):
        return len(got) == len(want) and all(same(g, w) for g, w in zip(got, want, strict=False))
    if isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in want)
    return bool(got == want)


# --------------------------------------------------------------------------- encoding

SCALARS = [
    0.0,
    -0.0,
    0.1,
    1 / 3,
    -2.5,
    1e300,
    -1e-300,
    5e-324,
    1.7976931348623157e308,
    float(2**53 + 1),
    math.nan,
    math.inf,
    -math.inf,
    0,
    -1,
    42,
    2**53 + 1,
    -(2**63),
    2**63 - 1,
    10**30,
    True,
    False,
    None,
    "",
    "plain",
    "héllo ✓",
    'quote " backslash \\ slash /',
    "new\nline\ttab\rcr\b\f",
    "\x00\x01\x1f\x7f",
    "emoji 🐍 and \u2028\u2029",
    "lone surrogate \ud800",
    "a,b,[c],{d}",
]


@pytest.mark.parametrize("var_type", [*KNOWN_TYPES, "quaternion"])
@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalar_fast_encoding_matches_json_dumps(var_type: str, value: Any) -> None:
    url, payload, binary = encode_parts(var_type, value)
    assert (url, payload, binary) == (type_url(var_type), reference_json(value), None)
    encoded = encode_value(var_type, value)
    assert (encoded.any.type_url, encoded.any.value, encoded.binary) == (url, payload, None)


def test_the_enum_and_str_name_the_same_type() -> None:
    assert encode_parts(VariableType.FLOAT, 0.5) == encode_parts("float", 0.5)


def test_subclasses_and_numpy_scalars_take_the_general_path_with_the_same_result() -> None:
    class MyFloat(float):
        pass

    class MyStr(str):
        pass

    assert encode_parts("float", MyFloat(0.25))[1] == b"0.25"
    assert encode_parts("string", MyStr("x"))[1] == b'"x"'
    assert encode_parts("float", np.float64(0.1))[1] == reference_json(0.1)
    assert encode_parts("integer", np.int64(-7))[1] == b"-7"
    assert encode_parts("boolean", np.bool_(True))[1] == b"true"


def test_an_int_too_long_to_print_is_still_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="cannot be encoded"):
        encode_parts("integer", 10 ** (sys.get_int_max_str_digits() + 1))


def test_a_bad_var_type_is_still_a_type_error() -> None:
    with pytest.raises(TypeError, match="var_type must be"):
        encode_parts(5, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_parts(["float"], 1.0)  # type: ignore[arg-type]


def test_encode_compact_joins_what_encode_parts_gives() -> None:
    big = np.linspace(0.0, 1.0, BINARY_THRESHOLD)
    values = {
        "f": 0.5,
        "nan": math.nan,
        "i": 2**62,
        "s": "x,y",
        "b": False,
        "e": [1.0, math.inf],
        "big": big,
        "t": {"shape": [2], "data": [1, 2]},
        "bad": object(),
        "bad2": {1j},
    }
    types = {
        "f": "float",
        "nan": "float",
        "i": "integer",
        "s": "string",
        "b": "boolean",
        "e": "embedding",
        "big": "embedding",
        "t": "tensor",
        "bad": "string",
        "bad2": "float",
    }
    request = pb2.BatchSetVariablesRequest(session_id="s")
    errors = encode_compact(request, values, types)
    assert set(errors) == {"bad", "bad2"} and all("cannot be encoded" in m for m in errors.values())
    # Python floats travel packed, as they are (NaN included).
    assert list(request.float_identifiers) == ["f", "nan"]
    assert same(list(request.float_values), [0.5, math.nan])
    keys = list(request.value_identifiers)
    assert keys == ["i", "s", "b", "e", "t"]
    assert request.values_json == b"[" + b",".join(encode_parts(types[k], values[k])[1] for k in keys) + b"]"
    assert json.loads(request.values_json) == [json.loads(reference_json(values[k])) for k in keys]
    # The binary-path value takes the map form, as encode_parts gives it.
    assert set(request.updates) == {"big"} and set(request.binary_updates) == {"big"}
    url, payload, binary = encode_parts("embedding", big)
    assert (request.updates["big"].type_url, request.updates["big"].value, request.binary_updates["big"]) == (
        url,
        payload,
        binary,
    )
    empty = pb2.BatchSetVariablesRequest(session_id="s")
    assert encode_compact(empty, {}, {}) == {} and empty == pb2.BatchSetVariablesRequest(session_id="s")


# --------------------------------------------------------------------------- decoding

DECODE_CASES: list[tuple[str, bytes]] = [
    ("float", b"0.5"),
    ("float", b"-0.0"),
    ("float", b"-0"),  # JSON integer 0: 0.0, as json.loads gives
    ("float", b"0"),
    ("float", b"3"),
    ("float", b"1e300"),
    ("float", b"1E-5"),
    ("float", b"1e400"),  # json.loads gives inf
    ("float", b"0.42857142857142855"),
    ("float", b"123456789012345678901234567890"),
    ("float", b'"NaN"'),
    ("float", b'"Infinity"'),
    ("float", b'"-Infinity"'),
    ("float", b"NaN"),  # json.loads accepts the bare token
    ("float", b'"not special"'),
    ("float", b"true"),  # bools stay bools
    ("float", b" 2.5 "),
    ("integer", b"0"),
    ("integer", b"-9223372036854775808"),
    ("integer", b"9223372036854775807"),
    ("integer", str(2**53 + 1).encode()),
    ("integer", str(10**40 + 1).encode()),
    ("integer", b"3.0"),
    ("integer", b"3.5"),
    ("integer", b"false"),
    ("string", b'""'),
    ("string", b'"plain"'),
    ("string", b'"h\\u00e9llo \\u2713"'),
    ("string", '"héllo ✓ 🐍"'.encode()),
    ("string", b'"tab\\tquote\\"backslash\\\\slash\\/"'),
    ("string", b'"a,b"'),
    ("string", b'"\\ud83d\\udc0d"'),
    ("string", b'"\\ud800"'),
    ("choice", b'"alpha"'),
    ("module", b'"ChainOfThought"'),
    ("boolean", b"true"),
    ("boolean", b"false"),
    ("embedding", b"[]"),
    ("embedding", b"[1]"),
    ("embedding", b'[1,2.5,"NaN","-Infinity"]'),
    ("tensor", b'{"shape":[1],"data":[7]}'),
    ("float", b""),  # an empty value decodes to None
]

MALFORMED: list[tuple[str, bytes]] = [
    ("float", b"{nope"),
    ("float", b"1_0"),  # float() would take these; JSON does not
    ("float", b"+1"),
    ("float", b".5"),
    ("float", b"5."),
    ("float", b"01"),
    ("float", b"inf"),
    ("float", b"1 2"),
    ("integer", b"1,2"),
    ("string", b'"unterminated'),
    ("string", b'"ctrl \x01 char"'),
    ("string", b"\xff\xfe"),
    ("boolean", b"True"),
    ("embedding", b"[1,"),
]


def _any(var_type: str, raw: bytes) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url(var_type), value=raw)


@pytest.mark.parametrize(("var_type", "raw"), DECODE_CASES, ids=repr)
def test_decode_value_matches_json_loads(var_type: str, raw: bytes) -> None:
    assert same(decode_value(_any(var_type, raw)), reference_decode(var_type, raw))


@pytest.mark.parametrize(("var_type", "raw"), MALFORMED, ids=repr)
def test_malformed_values_raise_bridge_errors_with_json_loads_message(var_type: str, raw: bytes) -> None:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        expected = f"server sent a malformed {var_type} value: {exc}"
    else:  # pragma: no cover - the case list is wrong
        pytest.fail(f"{raw!r} is valid JSON")
    with pytest.raises(BridgeError) as single:
        decode_value(_any(var_type, raw))
    assert single.value.message == expected
    # As a whole compact batch, it is a malformed batch.
    with pytest.raises(BridgeError, match="server sent malformed batch values"):
        decode_values_json([var_type], raw)


def _array(payloads: list[bytes]) -> bytes:
    return b"[" + b",".join(payloads) + b"]"


# Empty payloads (an empty Any) never appear in a JSON array.
ARRAY_CASES = [(t, raw) for t, raw in DECODE_CASES if raw]


def test_decode_values_json_of_one_type_match_decode_value() -> None:
    for var_type in KNOWN_TYPES:
        cases = [raw for t, raw in ARRAY_CASES if t == var_type]
        if not cases:
            continue
        got = decode_values_json([var_type] * len(cases), _array(cases))
        want = [reference_decode(var_type, raw) for raw in cases]
        assert all(same(g, w) for g, w in zip(got, want, strict=False)), (var_type, got, want)


def test_decode_values_json_of_mixed_types_keep_their_order() -> None:
    got = decode_values_json([t for t, _ in ARRAY_CASES], _array([raw for _, raw in ARRAY_CASES]))
    want = [reference_decode(t, raw) for t, raw in ARRAY_CASES]
    assert len(got) == len(want)
    for (t, raw), g, w in zip(ARRAY_CASES, got, want, strict=False):
        assert same(g, w), (t, raw, g, w)
    # A type this client does not know keeps its JSON as it is.
    assert decode_values_json(["quaternion", "float"], b"[[1,2],3]") == [[1, 2], 3.0]


def test_one_parse_of_many_floats_is_exact() -> None:
    values = [i / 7 for i in range(-500, 500)] + [-0.0, 5e-324, 1e308, math.nan, math.inf, -math.inf]
    got = decode_values_json(["float"] * len(values), _array([encode_parts("float", v)[1] for v in values]))
    assert all(same(g, w) for g, w in zip(got, values, strict=False))
    ints = [2**63 - 1, -(2**63), 2**53 + 1, 0, -1]
    got_ints = decode_values_json(["integer"] * len(ints), _array([str(i).encode() for i in ints]))
    assert all(same(g, w) for g, w in zip(got_ints, ints, strict=False))


@pytest.mark.parametrize(
    ("types", "payload", "says"),
    [
        (["float", "float"], b"[1]", "server sent 1 values for a batch of 2 variables"),
        (["float"], b"[1,2]", "server sent 2 values for a batch of 1 variables"),
        (["float"], b'{"a":1}', "server sent a JSON dict for a batch of 1 variables"),
        (["float"], b"1", "server sent a JSON int for a batch of 1 variables"),
        (["float"], b"[1,", "server sent malformed batch values"),
        (["float"], b"", "server sent malformed batch values"),
    ],
)
def test_a_compact_batch_of_the_wrong_shape_is_a_bridge_error(types: list[str], payload: bytes, says: str) -> None:
    with pytest.raises(BridgeError, match=says):
        decode_values_json(types, payload)


def test_decode_batch_values_merges_packed_floats_and_json_in_order() -> None:
    types = ["float", "string", "float", "integer", "quaternion"]
    got = decode_batch_values(types, [0.5, math.inf], b'["a,b",3,[1]]')
    assert got == [0.5, "a,b", math.inf, 3, [1]]
    assert decode_batch_values(["float"] * 3, [1.0, 2.0, 3.0], b"[]") == [1.0, 2.0, 3.0]
    assert decode_batch_values([], [], b"[]") == []
    with pytest.raises(BridgeError, match="server sent 1 float values for a batch of 2 floats"):
        decode_batch_values(["float", "string", "float"], [1.0], b'["a"]')
    with pytest.raises(BridgeError, match="server sent 2 values for a batch of 1 variables"):
        decode_batch_values(["float", "string"], [1.0], b'["a","b"]')


def test_commas_inside_values_and_the_empty_batch() -> None:
    assert decode_values_json(["string", "string", "embedding"], b'["a,b","c",[1,2]]') == ["a,b", "c", [1.0, 2.0]]
    assert decode_values_json([], b"[]") == []


def test_decode_variable_value_covers_both_paths() -> None:
    raw = struct.pack("<2d", 1.5, -2.0)
    meta = b'{"shape":[2],"dtype":"float64","binary_format":"raw_le"}'
    binary = pb2.Variable(
        type="embedding", value=any_pb2.Any(type_url=type_url("embedding", True), value=meta), binary_value=raw
    )
    assert decode_variable_value(binary) == [1.5, -2.0]
    foreign = pb2.Variable(
        type="float", value=any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Value", value=b"2")
    )
    assert same(decode_variable_value(foreign), 2.0)
    assert decode_variable_value(pb2.Variable(type="float")) is None
    plain = pb2.Variable(type="integer", value=_any("integer", b"3.0"))
    assert same(decode_variable_value(plain), 3)


# --------------------------------------------------------------------------- records


def test_coerce_is_unchanged() -> None:
    assert VariableType.coerce("float") is VariableType.FLOAT
    assert VariableType.coerce(VariableType.TENSOR) is VariableType.TENSOR
    assert VariableType.coerce("quaternion") == "quaternion"
    assert VariableType.coerce("FLOAT") == "FLOAT"
    with pytest.raises(TypeError, match="var_type must be"):
        VariableType.coerce(3)  # type: ignore[arg-type]


def test_batch_update_result_materialises_new_versions_once() -> None:
    response = pb2.BatchSetVariablesResponse(success=True, new_versions={"a": 3, "b": 7})
    result = BatchUpdateResult({"a": True, "b": True}, True, response.new_versions)
    versions = result.new_versions
    assert type(versions) is dict and versions == {"a": 3, "b": 7}
    assert result.new_versions is versions
    for clone in (pickle.loads(pickle.dumps(result)), copy.copy(result), copy.deepcopy(result)):
        assert clone == result and clone.success and clone.new_versions == {"a": 3, "b": 7}
        assert type(clone.new_versions) is dict
    result.new_versions = {"a": 4}
    assert result.new_versions == {"a": 4}
    assert "new_versions={'a': 4}" in repr(result)
    plain = BatchUpdateResult({}, False, {})
    assert plain.new_versions == {} and plain.errors == {}


def _update_message(kind: str = "value_change") -> pb2.VariableUpdate:
    var = pb2.Variable(
        id="var_x_1",
        name="x",
        type="float",
        value=_any("float", b"0.25"),
        constraints_json='{"min":0}',
        metadata={"k": "v"},
        source=pb2.Variable.PYTHON,
        version=4,
    )
    var.last_updated_at.FromDatetime(datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc))
    message = pb2.VariableUpdate(
        variable_id=var.id, variable=var, update_source="python", update_type=kind, update_metadata={"by": "test"}
    )
    message.timestamp.FromDatetime(datetime.datetime(2026, 1, 2, 3, 4, 6, tzinfo=datetime.timezone.utc))
    return message


def _context() -> SessionContext:
    import grpc

    return SessionContext("s", grpc.insecure_channel("127.0.0.1:1"))


def test_a_received_update_builds_variable_and_timestamp_on_first_access() -> None:
    ctx = _context()

    update = decode_update(ctx._core, _update_message(), WatchHolder())
    # Nothing but the value decoded so far.
    assert type(update.__dict__["_lazy_variable"]) is Deferred
    assert type(update.__dict__["_lazy_timestamp"]) is Deferred
    assert (update.value, update.version, update.name, update.type) == (0.25, 4, "x", VariableType.FLOAT)
    assert update.metadata == {"by": "test"} and update.source == "python"
    ts = update.timestamp
    assert ts == datetime.datetime(2026, 1, 2, 3, 4, 6, tzinfo=datetime.timezone.utc)
    info = update.variable
    assert isinstance(info, VariableInfo)
    assert update.variable is info and update["timestamp"] is ts  # built once
    assert info == VariableInfo(
        id="var_x_1",
        name="x",
        type=VariableType.FLOAT,
        value=0.25,
        version=4,
        source="python",
        metadata={"k": "v"},
        constraints={"min": 0},
        last_updated_at=datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    )
    # The type cache learnt it.
    assert ctx._core.types["x"] == ctx._core.types["var_x_1"] == "float"


def test_a_received_update_behaves_like_a_constructed_one() -> None:
    ctx = _context()

    received = decode_update(ctx._core, _update_message(), WatchHolder())
    made = VariableUpdate(
        update_type="value_change",
        variable_id="var_x_1",
        name="x",
        value=0.25,
        version=4,
        type=VariableType.FLOAT,
        metadata={"by": "test"},
        source="python",
        timestamp=received.timestamp,
        variable=received.variable,
    )
    assert received == made == dict(made)
    assert repr(received) == repr(made) and "variable=" not in repr(made)
    assert [f.name for f in dataclasses.fields(received)] == [
        "update_type",
        "variable_id",
        "name",
        "value",
        "version",
        "type",
        "metadata",
        "source",
        "timestamp",
        "variable",
    ]
    assert dataclasses.replace(received, value=1.0).value == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.variable = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(received)
    # Pickling and copying compute what is still deferred (the message itself is not picklable).
    for clone in (
        pickle.loads(pickle.dumps(decode_update(ctx._core, _update_message(), WatchHolder()))),
        copy.copy(decode_update(ctx._core, _update_message(), WatchHolder())),
        copy.deepcopy(decode_update(ctx._core, _update_message(), WatchHolder())),
    ):
        assert clone == received and clone.variable == received.variable
        assert clone.timestamp == received.timestamp
    # Defaults as before: variable is optional, timestamp is not.
    assert VariableUpdate("session_closed", None, None, None, None, None, {}, None, None).variable is None
    with pytest.raises(TypeError):
        VariableUpdate("session_closed", None, None, None, None, None, {}, None)  # type: ignore[call-arg]


def test_session_closed_and_deleted_updates_from_messages() -> None:
    ctx = _context()

    closed = pb2.VariableUpdate(update_type="session_closed")
    closed.timestamp.GetCurrentTime()
    update = decode_update(ctx._core, closed, WatchHolder())
    assert (update.variable_id, update.name, update.value, update.version, update.type, update.variable) == (None,) * 6
    assert isinstance(update.timestamp, datetime.datetime)
    no_time = decode_update(ctx._core, pb2.VariableUpdate(update_type="session_closed"), WatchHolder())
    assert no_time.timestamp is None

    decode_update(ctx._core, _update_message(), WatchHolder())
    assert ctx._core.types["x"] == ctx._core.types["var_x_1"] == "float"
    deleted = decode_update(ctx._core, _update_message("deleted"), WatchHolder())
    assert (deleted.update_type, deleted.value, deleted.variable.name) == ("deleted", 0.25, "x")  # type: ignore[union-attr]
    assert "x" not in ctx._core.types and "var_x_1" not in ctx._core.types


def test_a_malformed_value_in_an_update_raises_at_once() -> None:
    ctx = _context()

    message = _update_message()
    message.variable.value.value = b"{nope"
    with pytest.raises(BridgeError, match="malformed float"):
        decode_update(ctx._core, message, WatchHolder())


# --------------------------------------------------------------------------- against the server

BATCH_VALUES: dict[str, tuple[str, Any]] = {
    "f": ("float", 0.1),
    "f_neg_zero": ("float", -0.0),
    "f_nan": ("float", math.nan),
    "f_inf": ("float", math.inf),
    "f_ninf": ("float", -math.inf),
    "f_tiny": ("float", 5e-324),
    "f_from_int": ("float", 3),
    "i_big": ("integer", 2**63 - 1),
    "i_beyond_2_53": ("integer", 2**53 + 1),
    "i_neg": ("integer", -(2**63)),
    "s": ("string", 'comma, "quote" \\ back\nslash é ✓ 🐍'),
    "s_empty": ("string", ""),
    "b_true": ("boolean", True),
    "b_false": ("boolean", False),
    "c": ("choice", "a,b"),
    "m": ("module", "Predict"),
    "e": ("embedding", [0.5, -1.0, math.inf]),
    "e_one": ("embedding", [2.0]),
    "t": ("tensor", {"shape": [2, 1], "data": [1.0, 2.0]}),
}


def _expected(var_type: str, value: Any) -> Any:
    if var_type == "float":
        return float(value)
    return value


async def test_batch_get_decodes_every_type_like_get_variable(ctx: AnyMode) -> None:
    ids = {}
    for name, (var_type, value) in BATCH_VALUES.items():
        ids[name] = await ctx.register_variable(name, var_type, value)
    big = np.arange(BINARY_THRESHOLD, dtype=np.float64) / 3
    await ctx.register_variable("e_binary", "embedding", big)
    names = [*BATCH_VALUES, "e_binary"]
    for fresh in (False, True):
        reader = ctx if not fresh else AnyMode(context_for(ctx.session_id, ctx.ctx.channel))
        asked = ["missing", *reversed(names), names[0], ids["s"]]  # a duplicate, an id, a missing name
        got = await reader.get_variables(asked)
        assert list(got) == [*reversed(names), ids["s"]]
        assert got.missing == ["missing"]
        for name, (var_type, value) in BATCH_VALUES.items():
            assert same(got[name], _expected(var_type, value)), (name, got[name])
            assert same(await reader.get_variable(name), got[name])
        assert got["e_binary"] == big.tolist()
        assert same(got[ids["s"]], BATCH_VALUES["s"][1])
        # The type cache learnt every variable, under the names and the ids.
        for name, (var_type, _) in BATCH_VALUES.items():
            assert reader.ctx._core.types[name] == var_type
            assert reader.ctx._core.types[ids[name]] == var_type
            assert reader.ctx._core.aliases[name] == ids[name] and reader.ctx._core.aliases[ids[name]] == name


async def test_batch_get_by_ids_on_a_fresh_context(ctx: AnyMode) -> None:
    a = await ctx.register_variable("a", "integer", 2**53 + 1)
    b = await ctx.register_variable("b", "float", -0.0)
    reader = AnyMode(context_for(ctx.session_id, ctx.ctx.channel))
    got = await reader.get_variables([b, a])
    assert list(got.items()) == [(b, -0.0), (a, 2**53 + 1)]
    assert math.copysign(1.0, got[b]) == -1.0
    assert reader.ctx._core.types == {a: "integer", "a": "integer", b: "float", "b": "float"}
    # Second time through the known-variable path: same answer.
    again = await reader.get_variables([b, a])
    assert list(again.items()) == list(got.items())


async def test_batch_get_follows_a_name_registered_again(ctx: AnyMode, other_ctx: Any) -> None:
    other = other_ctx(ctx.session_id)
    old_id = await ctx.register_variable("x", "integer", 1)
    assert await ctx.get_variables(["x"]) == {"x": 1}
    await other.delete_variable("x")
    new_id = await other.register_variable("x", "string", "now a string")
    assert await ctx.get_variables(["x"]) == {"x": "now a string"}
    assert ctx.ctx._core.types["x"] == "string" and ctx.ctx._core.aliases["x"] == new_id and new_id != old_id
    # The same type again, under a new id: the aliases follow too.
    await other.delete_variable("x")
    newest = await other.register_variable("x", "string", "again")
    assert await ctx.get_variables(["x"]) == {"x": "again"}
    assert ctx.ctx._core.aliases["x"] == newest and ctx.ctx._core.aliases[newest] == "x"
    # And a batch update then uses the right type.
    result = await ctx.update_variables({"x": "updated"})
    assert result == {"x": True} and result.success


async def test_batch_get_asks_without_metadata_and_values_are_current(ctx: AnyMode, other_ctx: Any) -> None:
    other = other_ctx(ctx.session_id)
    await ctx.register_variable("x", "float", 1.0, constraints={"min": 0}, metadata={"k": "v"})
    sent: list[Any] = []
    invoke = ctx.ctx._invoke

    def spy(rpc: Any) -> Any:
        sent.append(rpc.request)
        return invoke(rpc)

    ctx.ctx._invoke = spy  # type: ignore[method-assign]
    assert await ctx.get_variables(["x"]) == {"x": 1.0}
    await other.update_variable("x", 2.0)
    assert await ctx.get_variables(["x"]) == {"x": 2.0}  # never a value cached across calls
    assert [r.include_metadata for r in sent] == [False, False]
    # The full info still has constraints and metadata (GetVariable sends them).
    info = await ctx.get_variable_info("x")
    assert (info.constraints, info.metadata) == ({"min": 0}, {"k": "v"})


async def test_batch_update_of_every_type_reads_back(ctx: AnyMode) -> None:
    for name, (var_type, value) in BATCH_VALUES.items():
        await ctx.register_variable(name, var_type, value)
    await ctx.register_variable("e_binary", "embedding", [0.0] * BINARY_THRESHOLD)
    new: dict[str, Any] = {
        "f": 0.7,
        "f_neg_zero": 1.5,
        "f_nan": -0.0,
        "f_inf": math.nan,
        "f_ninf": math.inf,
        "f_tiny": 2,
        "f_from_int": -math.inf,
        "i_big": -5,
        "i_beyond_2_53": 2**62 + 1,
        "i_neg": 0,
        "s": 'x,"y"\\z ✓',
        "s_empty": "é",
        "b_true": False,
        "b_false": True,
        "c": "c",
        "m": "Other",
        "e": [1.0, math.nan],
        "e_one": [3],
        "t": {"shape": [1], "data": [9]},
        "e_binary": np.full(BINARY_THRESHOLD, 0.5),
    }
    result = await ctx.update_variables(new)
    assert result.success and result == dict.fromkeys(new, True)
    assert type(result.new_versions) is dict and result.new_versions == dict.fromkeys(new, 2)
    got = await ctx.get_variables(list(new))
    for name, value in new.items():
        var_type = BATCH_VALUES[name][0] if name in BATCH_VALUES else "embedding"
        if name == "e_binary":
            assert got[name] == [0.5] * BINARY_THRESHOLD
        elif var_type == "embedding":
            assert same(got[name], [float(x) for x in value])
        elif var_type == "tensor":
            assert got[name] == {"shape": [1], "data": [9.0]}
        else:
            assert same(got[name], _expected(var_type, value)), (name, got[name])


async def test_batch_update_mixes_fast_and_refused_values(ctx: AnyMode) -> None:
    await ctx.register_variable("i", "integer", 1)
    await ctx.register_variable("f", "float", 0.5, constraints={"max": 1.0})
    await ctx.register_variable("s", "string", "x")
    result = await ctx.update_variables({"i": True, "f": 2.0, "s": object(), "nope": 1.0, "i2": 3}, atomic=False)
    assert result.success is False
    assert set(result.errors) == {"i", "f", "s", "nope", "i2"}
    assert "cannot be encoded" in result["s"]
    assert "not found" in result["nope"]
    assert await ctx.get_variables(["i", "f", "s"]) == {"i": 1, "f": 0.5, "s": "x"}
    ok = await ctx.update_variables({"i": 2, "f": 0.75})
    assert ok == {"i": True, "f": True} and ok.new_versions == {"i": 2, "f": 2}
