"""Typed, versioned variables over gRPC, in both modes."""

from __future__ import annotations

import datetime
import math
import uuid
from typing import Any

import grpc
import pytest
from _support import AnyMode
from snakepit_bridge import (
    NOT_APPLIED_ATOMIC,
    AlreadyExistsError,
    BatchGetResult,
    BatchUpdateResult,
    ResourceExhaustedError,
    ValidationError,
    VariableInfo,
    VariableNotFoundError,
    VariableType,
    VersionConflictError,
)

# (type, value sent, value expected back, constraints)
ROUND_TRIPS = [
    ("float", 0.5, 0.5, None),
    ("float", -1e300, -1e300, None),
    ("float", math.inf, math.inf, None),
    ("float", -math.inf, -math.inf, None),
    ("integer", 42, 42, None),
    ("integer", -(2**63), -(2**63), None),
    ("integer", 2**63 - 1, 2**63 - 1, None),
    ("string", 'héllo ✓ "quoted"\n', 'héllo ✓ "quoted"\n', None),
    ("string", "", "", None),
    ("boolean", True, True, None),
    ("boolean", False, False, None),
    ("choice", "beta", "beta", {"choices": ["alpha", "beta"]}),
    ("choice", "anything", "anything", None),
    ("module", "ChainOfThought", "ChainOfThought", {"allowed_modules": ["Predict", "ChainOfThought"]}),
    ("embedding", [0.1, 2, -3.5], [0.1, 2.0, -3.5], {"dimensions": 3}),
    ("embedding", [], [], None),
    ("tensor", {"shape": [2, 2], "data": [[1, 2], [3, 4.5]]}, {"shape": [2, 2], "data": [1.0, 2.0, 3.0, 4.5]}, None),
    ("tensor", {"shape": [3], "data": [1, 2, 3]}, {"shape": [3], "data": [1.0, 2.0, 3.0]}, {"shape": [3]}),
]


def _same(got: Any, want: Any) -> bool:
    return type(got) is type(want) and got == want


@pytest.mark.parametrize(("var_type", "sent", "expected", "constraints"), ROUND_TRIPS)
async def test_register_and_get_every_type(
    ctx: AnyMode, var_type: str, sent: Any, expected: Any, constraints: Any
) -> None:
    var_id = await ctx.register_variable("v", var_type, sent, constraints=constraints)
    assert var_id.startswith("var_v_")
    got = await ctx.get_variable("v")
    assert _same(got, expected), (got, expected)
    assert _same(await ctx.get_variable(var_id), expected)
    if isinstance(expected, list):
        assert all(type(x) is float for x in got)


@pytest.mark.parametrize(("var_type", "sent", "expected", "constraints"), ROUND_TRIPS)
async def test_update_every_type(ctx: AnyMode, var_type: str, sent: Any, expected: Any, constraints: Any) -> None:
    # Register with the value, update with the same value: the update path encodes like register.
    await ctx.register_variable("v", var_type, sent, constraints=constraints)
    assert await ctx.update_variable("v", sent) == 2
    assert _same(await ctx.get_variable("v"), expected)


async def test_nan_round_trips(ctx: AnyMode) -> None:
    await ctx.register_variable("f", VariableType.FLOAT, math.nan)
    assert math.isnan(await ctx.get_variable("f"))
    await ctx.update_variable("f", 1.0)
    await ctx.update_variable("f", float("nan"))
    assert math.isnan(await ctx.get_variable("f"))


async def test_special_floats_bypass_min_max(ctx: AnyMode) -> None:
    await ctx.register_variable("f", "float", 0.5, constraints={"min": 0, "max": 1})
    for special in (math.inf, -math.inf):
        await ctx.update_variable("f", special)
        assert await ctx.get_variable("f") == special


async def test_integer_becomes_float(ctx: AnyMode) -> None:
    await ctx.register_variable("f", VariableType.FLOAT, 3)
    assert _same(await ctx.get_variable("f"), 3.0)
    await ctx.update_variable("f", 4)
    assert _same(await ctx.get_variable("f"), 4.0)


async def test_whole_float_becomes_integer(ctx: AnyMode) -> None:
    await ctx.register_variable("i", VariableType.INTEGER, 3.0)
    assert _same(await ctx.get_variable("i"), 3)
    with pytest.raises(ValidationError) as info:
        await ctx.update_variable("i", 3.5)
    assert info.value.kind == "invalid_value"
    assert "3.5" in info.value.message
    assert await ctx.get_variable("i") == 3


async def test_variable_info(ctx: AnyMode) -> None:
    before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=2)
    var_id = await ctx.register_variable(
        "temperature", VariableType.FLOAT, 0.7, constraints={"min": 0.0, "max": 2.0}, metadata={"unit": "none"}
    )
    info = await ctx.get_variable_info("temperature")
    assert isinstance(info, VariableInfo)
    assert info.id == var_id and info.name == "temperature"
    assert info.type is VariableType.FLOAT
    assert info.value == 0.7 and info.version == 1
    assert info.source == "python"
    assert info.metadata == {"unit": "none"}
    assert info.constraints == {"min": 0.0, "max": 2.0}
    assert info.last_updated_at is not None and info.last_updated_at >= before
    assert await ctx.get_variable_info(var_id) == info


async def test_update_bumps_version_and_records_metadata(ctx: AnyMode) -> None:
    var_id = await ctx.register_variable("n", "integer", 1)
    assert await ctx.update_variable("n", 2) == 2
    assert await ctx.update_variable(var_id, 3, metadata={"why": "test"}) == 3
    info = await ctx.get_variable_info("n")
    assert (info.value, info.version, info.source) == (3, 3, "python")
    assert info.metadata.get("why") == "test"


async def test_expected_version(ctx: AnyMode) -> None:
    await ctx.register_variable("n", "integer", 1)
    assert await ctx.update_variable("n", 2, expected_version=1) == 2
    with pytest.raises(VersionConflictError) as info:
        await ctx.update_variable("n", 99, expected_version=1)
    err = info.value
    assert err.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.kind == "version_conflict"
    assert err.current_version == 2
    assert "expected version 1" in err.message and "current version is 2" in err.message
    assert await ctx.get_variable("n") == 2
    assert await ctx.update_variable("n", 3, expected_version=2) == 3
    assert await ctx.update_variable("n", 4, expected_version=None) == 4


async def test_get_with_default(ctx: AnyMode) -> None:
    assert await ctx.get_variable("nope", default=None) is None
    assert await ctx.get_variable("nope", default=5) == 5
    await ctx.register_variable("yes", "integer", 1)
    assert await ctx.get_variable("yes", default=5) == 1


async def test_batch_get_found_and_missing(ctx: AnyMode) -> None:
    a_id = await ctx.register_variable("a", "integer", 1)
    await ctx.register_variable("b", "string", "two")
    result = await ctx.get_variables(["b", "missing_1", a_id, "missing_2"])
    assert isinstance(result, BatchGetResult)
    assert result == {"b": "two", a_id: 1}
    assert list(result) == ["b", a_id]
    assert sorted(result.missing) == ["missing_1", "missing_2"]
    empty = await ctx.get_variables([])
    assert empty == {} and empty.missing == []


async def test_batch_update_non_atomic_applies_what_is_valid(ctx: AnyMode) -> None:
    await ctx.register_variable("ok", "integer", 1)
    await ctx.register_variable("bounded", "float", 0.5, constraints={"max": 1.0})
    await ctx.register_variable("s", "string", "x")
    result = await ctx.update_variables({"ok": 2, "bounded": 1.5, "s": "y", "ghost": 1})
    assert isinstance(result, BatchUpdateResult)
    assert result["ok"] is True and result["s"] is True
    assert isinstance(result["bounded"], str)
    assert result["bounded"].endswith("value 1.5 is above maximum 1.0")
    assert result["ghost"] == f'variable "ghost" not found in session "{ctx.session_id}"'
    assert set(result.errors) == {"bounded", "ghost"}
    assert result.success is False
    assert result.new_versions == {"ok": 2, "s": 2}
    values = await ctx.get_variables(["ok", "bounded", "s"])
    assert values == {"ok": 2, "bounded": 0.5, "s": "y"}


async def test_batch_update_atomic_is_all_or_nothing(ctx: AnyMode) -> None:
    await ctx.register_variable("a", "integer", 1)
    await ctx.register_variable("b", "integer", 1, constraints={"min": 0})
    await ctx.register_variable("c", "string", "x")
    result = await ctx.update_variables({"a": 2, "b": -5, "c": "y"}, atomic=True)
    assert isinstance(result["b"], str)
    assert result["b"].endswith("value -5 is below minimum 0")
    assert result["a"] == NOT_APPLIED_ATOMIC and result["c"] == NOT_APPLIED_ATOMIC
    assert result.success is False and result.new_versions == {}
    assert await ctx.get_variables(["a", "b", "c"]) == {"a": 1, "b": 1, "c": "x"}
    assert [(await ctx.get_variable_info(k)).version for k in "abc"] == [1, 1, 1]

    ok = await ctx.update_variables({"a": 2, "b": 3, "c": "z"}, atomic=True, metadata={"batch": "1"})
    assert dict(ok) == {"a": True, "b": True, "c": True}
    assert ok.success is True and ok.new_versions == {"a": 2, "b": 2, "c": 2}
    assert await ctx.get_variables(["a", "b", "c"]) == {"a": 2, "b": 3, "c": "z"}
    assert (await ctx.get_variable_info("c")).metadata.get("batch") == "1"


async def test_batch_update_atomic_with_an_unknown_key_applies_nothing(ctx: AnyMode) -> None:
    await ctx.register_variable("a", "integer", 1)
    result = await ctx.update_variables({"a": 2, "ghost": 3}, atomic=True)
    assert result["a"] == NOT_APPLIED_ATOMIC
    assert "ghost" in result["ghost"] and "not found" in result["ghost"]
    assert await ctx.get_variable("a") == 1


async def test_batch_update_every_type(ctx: AnyMode) -> None:
    updates: dict[str, Any] = {}
    expected: dict[str, Any] = {}
    for i, (var_type, sent, want, constraints) in enumerate(ROUND_TRIPS):
        name = f"v{i}_{var_type}"
        await ctx.register_variable(name, var_type, sent, constraints=constraints)
        updates[name] = sent
        expected[name] = want
    result = await ctx.update_variables(updates, atomic=True)
    assert all(v is True for v in result.values()), result.errors
    got = await ctx.get_variables(list(updates))
    for name, want in expected.items():
        assert _same(got[name], want), name


async def test_list_with_glob(ctx: AnyMode) -> None:
    for name in ["temp_a", "temp_b", "temp_long", "other", "xtemp_c"]:
        await ctx.register_variable(name, "integer", 1)

    async def names(pattern: Any) -> list[str]:
        return sorted(v.name for v in await ctx.list_variables(pattern))

    assert await names("temp_*") == ["temp_a", "temp_b", "temp_long"]
    assert await names("temp_?") == ["temp_a", "temp_b"]
    assert await names("*temp_*") == ["temp_a", "temp_b", "temp_long", "xtemp_c"]
    assert await names("nomatch*") == []
    assert await names(None) == ["other", "temp_a", "temp_b", "temp_long", "xtemp_c"]
    assert await names("") == await names("*")
    infos = await ctx.list_variables("other")
    assert [(i.type, i.value, i.version) for i in infos] == [(VariableType.INTEGER, 1, 1)]


async def test_delete_then_not_found(ctx: AnyMode) -> None:
    var_id = await ctx.register_variable("gone", "float", 1.0)
    assert await ctx.has_variable("gone") is True
    await ctx.delete_variable("gone")
    assert await ctx.has_variable("gone") is False
    for call in (ctx.get_variable("gone"), ctx.get_variable(var_id), ctx.update_variable("gone", 2.0)):
        with pytest.raises(VariableNotFoundError) as info:
            await call
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.kind == "variable_not_found"
        assert isinstance(info.value, KeyError)
    with pytest.raises(VariableNotFoundError, match="gone"):
        await ctx.delete_variable("gone")


async def test_delete_by_id(ctx: AnyMode) -> None:
    var_id = await ctx.register_variable("byid", "string", "s")
    await ctx.delete_variable(var_id)
    assert await ctx.has_variable("byid") is False
    # The name is free again, and the new variable has a new id.
    new_id = await ctx.register_variable("byid", "integer", 5)
    assert new_id != var_id
    assert await ctx.get_variable("byid") == 5


async def test_duplicate_name_is_already_exists(ctx: AnyMode) -> None:
    await ctx.register_variable("dup", "float", 1.0)
    with pytest.raises(AlreadyExistsError) as info:
        await ctx.register_variable("dup", "integer", 1)
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.kind == "already_exists"
    assert "dup" in info.value.message
    assert await ctx.get_variable("dup") == 1.0


# (type, initial value, constraints, kind, words the server's message must contain)
BAD_REGISTRATIONS = [
    ("float", 1.5, {"min": 0.0, "max": 1.0}, "invalid_value", "value 1.5 is above maximum 1.0"),
    ("integer", 0, {"min": 1}, "invalid_value", "value 0 is below minimum 1"),
    ("integer", True, None, "invalid_value", "bool"),
    ("integer", "12", None, "invalid_value", "string"),
    ("integer", 2**64, None, "invalid_value", ""),
    ("float", "1.0", None, "invalid_value", "string"),
    ("string", 5, None, "invalid_value", ""),
    ("string", "abc", {"pattern": "^[0-9]+$"}, "invalid_value", "does not match pattern"),
    ("string", "toolong", {"max_length": 3}, "invalid_value", "above max_length 3"),
    ("string", "c", {"enum": ["a", "b"]}, "invalid_value", "enum"),
    ("boolean", "true", None, "invalid_value", ""),
    ("choice", "gamma", {"choices": ["alpha", "beta"]}, "invalid_value", "not one of the choices"),
    ("module", "Evil", {"allowed_modules": ["Predict"]}, "invalid_value", "allowed_modules"),
    ("embedding", [1.0, 2.0], {"dimensions": 3}, "invalid_value", "embedding has 2 dimensions, expected 3"),
    ("embedding", [1.0, "x"], None, "invalid_value", ""),
    ("tensor", {"shape": [2, 2], "data": [1, 2, 3]}, None, "invalid_value", ""),
    ("tensor", {"shape": [3], "data": [1, 2, 3]}, {"shape": [2]}, "invalid_value", "does not match required shape"),
    ("float", 0.5, {"min": 2.0, "max": 1.0}, "invalid_constraints", "min 2.0 is greater than max 1.0"),
    ("string", "a", {"pattern": "(unclosed"}, "invalid_constraints", "not a valid regular expression"),
    ("choice", "a", {"choices": "a,b"}, "invalid_constraints", "choices"),
    ("float", 0.5, {"choices": ["a"]}, "invalid_constraints", "choices"),
    ("quaternion", [1, 0, 0, 0], None, "invalid_type", "quaternion"),
]


@pytest.mark.parametrize(("var_type", "value", "constraints", "kind", "words"), BAD_REGISTRATIONS)
async def test_bad_registration_is_a_validation_error(
    ctx: AnyMode, var_type: str, value: Any, constraints: Any, kind: str, words: str
) -> None:
    with pytest.raises(ValidationError) as info:
        await ctx.register_variable("bad", var_type, value, constraints=constraints)
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.kind == kind
    assert err.message and words in err.message, err.message
    assert await ctx.has_variable("bad") is False


async def test_bad_update_is_a_validation_error_and_changes_nothing(ctx: AnyMode) -> None:
    await ctx.register_variable("t", "float", 0.5, constraints={"min": 0.0, "max": 1.0})
    with pytest.raises(ValidationError) as info:
        await ctx.update_variable("t", 1.5)
    assert info.value.message.endswith("value 1.5 is above maximum 1.0")
    with pytest.raises(ValidationError):
        await ctx.update_variable("t", "high")
    info_after = await ctx.get_variable_info("t")
    assert (info_after.value, info_after.version) == (0.5, 1)


@pytest.mark.parametrize("bad_name", ["", "new\nline", "n" * 257])
async def test_bad_variable_name_is_refused(ctx: AnyMode, bad_name: str) -> None:
    with pytest.raises(ValidationError) as info:
        await ctx.register_variable(bad_name, "integer", 1)
    assert info.value.kind == "invalid_argument"


async def test_any_printable_name_is_fine(ctx: AnyMode) -> None:
    for name in ["with space", "a/b.c-d", "ünï", "n" * 256]:
        await ctx.register_variable(name, "integer", 1)
        assert await ctx.get_variable(name) == 1


async def test_a_second_context_learns_the_type_on_first_update(ctx: AnyMode, other_ctx: Any) -> None:
    await ctx.register_variable("shared", "embedding", [1.0, 2.0])
    second = other_ctx(ctx.session_id)  # empty type cache
    assert await second.update_variable("shared", [3, 4]) == 2
    assert await ctx.get_variable("shared") == [3.0, 4.0]
    assert await second.update_variables({"shared": [5, 6]}) == {"shared": True}
    assert await ctx.get_variable("shared") == [5.0, 6.0]


async def test_stale_type_after_someone_else_re_registers(ctx: AnyMode, other_ctx: Any) -> None:
    await ctx.register_variable("morph", "integer", 1)
    await ctx.update_variable("morph", 2)  # type cached as integer
    second = other_ctx(ctx.session_id)
    await second.delete_variable("morph")
    await second.register_variable("morph", "string", "now a string")
    # ctx's cache says integer; the refused set makes it re-read the type once.
    assert await ctx.update_variable("morph", "still a string") == 2
    assert await second.get_variable("morph") == "still a string"


async def test_variable_names_are_per_session(ctx: AnyMode, other_ctx: Any) -> None:
    await ctx.register_variable("same", "integer", 1)
    elsewhere = other_ctx(f"other-{uuid.uuid4().hex}")
    await elsewhere.initialize()
    try:
        await elsewhere.register_variable("same", "string", "s")
        assert await elsewhere.get_variable("same") == "s"
        assert await ctx.get_variable("same") == 1
    finally:
        await elsewhere.cleanup()


@pytest.mark.parametrize(
    "x",
    [0.1, 1 / 3, 90.33333333333333, 2.2250738585072014e-308, 5e-324, 1.7976931348623157e308, 123456.78901234567],
)
async def test_floats_round_trip_exactly(ctx: AnyMode, x: float) -> None:
    # Python sends the shortest repr that round-trips; the server must parse it
    # to the same double and send it back so it parses to the same double again.
    await ctx.register_variable("f", "float", x)
    assert await ctx.get_variable("f") == x
    await ctx.register_variable("e", "embedding", [x, -x])
    assert await ctx.get_variable("e") == [x, -x]


async def test_atomic_failure_names_every_offending_key(ctx: AnyMode) -> None:
    await ctx.register_variable("lo", "integer", 5, constraints={"min": 0})
    await ctx.register_variable("hi", "float", 0.5, constraints={"max": 1.0})
    await ctx.register_variable("fine", "boolean", False)
    result = await ctx.update_variables({"lo": -1, "hi": 2.0, "fine": True}, atomic=True)
    assert set(result.errors) == {"lo", "hi", "fine"}
    assert "below minimum 0" in result["lo"]
    assert "above maximum 1.0" in result["hi"]
    assert result["fine"] == NOT_APPLIED_ATOMIC
    assert await ctx.get_variables(["lo", "hi", "fine"]) == {"lo": 5, "hi": 0.5, "fine": False}


async def test_type_mismatch_in_a_non_atomic_batch_is_per_key(ctx: AnyMode) -> None:
    await ctx.register_variable("n", "integer", 1)
    await ctx.register_variable("m", "integer", 1)
    result = await ctx.update_variables({"n": "not a number", "m": 2})
    assert result["m"] is True
    assert isinstance(result["n"], str) and "expected" in result["n"]
    assert await ctx.get_variables(["n", "m"]) == {"n": 1, "m": 2}


async def test_oversized_request_is_refused_and_changes_nothing(ctx: AnyMode) -> None:
    await ctx.register_variable("s", "string", "small")
    huge = "x" * (5 << 20)  # over the default 4 MiB message limit
    with pytest.raises(ResourceExhaustedError) as info:
        await ctx.update_variable("s", huge)
    assert info.value.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OUT_OF_RANGE)
    with pytest.raises(ResourceExhaustedError):
        await ctx.update_variables({"s": huge})
    with pytest.raises(ResourceExhaustedError):
        await ctx.register_variable("big", "string", huge)
    info_after = await ctx.get_variable_info("s")
    assert (info_after.value, info_after.version) == ("small", 1)
    assert await ctx.has_variable("big") is False
