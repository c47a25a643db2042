"""Sessions over gRPC: ping, initialize, get_session, heartbeat, cleanup (both modes)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import grpc
import pytest
from _support import AnyMode
from snakepit_bridge import (
    AlreadyExistsError,
    AsyncSessionContext,
    SessionContext,
    SessionNotFoundError,
    ValidationError,
    VariableType,
)


async def test_ping_echoes(ctx: AnyMode) -> None:
    assert await ctx.ping("hello ✓") == "hello ✓"
    assert await ctx.ping() == ""


async def test_initialize_then_get_session(other_ctx: Any, session_id: str) -> None:
    fresh = other_ctx(session_id)
    before = datetime.datetime.now(datetime.timezone.utc)
    assert await fresh.initialize({"owner": "pytest", "lang": "python"}) == {}
    after = datetime.datetime.now(datetime.timezone.utc)
    try:
        info = await fresh.get_session()
        assert info["session_id"] == session_id
        assert info["metadata"] == {"owner": "pytest", "lang": "python"}
        created = info["created_at"]
        assert isinstance(created, datetime.datetime) and created.tzinfo is not None
        slack = datetime.timedelta(seconds=2)
        assert before - slack <= created <= after + slack
        assert info["variable_count"] == 0
        assert info["watcher_count"] == 0
    finally:
        await fresh.cleanup()


async def test_variable_count_follows_registrations(ctx: AnyMode) -> None:
    await ctx.register_variable("a", VariableType.FLOAT, 1.0)
    await ctx.register_variable("b", VariableType.INTEGER, 1)
    assert (await ctx.get_session())["variable_count"] == 2
    await ctx.delete_variable("a")
    assert (await ctx.get_session())["variable_count"] == 1


async def test_initialize_twice_is_already_exists(ctx: AnyMode) -> None:
    with pytest.raises(AlreadyExistsError) as info:
        await ctx.initialize()
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert info.value.kind == "already_exists"
    assert ctx.session_id in info.value.message


async def test_heartbeat(ctx: AnyMode, other_ctx: Any) -> None:
    assert await ctx.heartbeat() is True
    assert await other_ctx(f"never-created-{uuid.uuid4().hex}").heartbeat() is False


async def test_cleanup_removes_the_session_and_is_idempotent(ctx: AnyMode) -> None:
    await ctx.register_variable("x", "float", 1.0)
    await ctx.register_variable("y", "string", "s")
    assert await ctx.cleanup() == 2
    assert await ctx.heartbeat() is False
    with pytest.raises(SessionNotFoundError):
        await ctx.get_session()
    assert await ctx.cleanup() == 0
    assert await ctx.cleanup(force=True) == 0


async def test_unknown_session_is_session_not_found_everywhere(other_ctx: Any) -> None:
    ghost = other_ctx(f"ghost-{uuid.uuid4().hex}")
    calls = [
        ghost.get_session(),
        ghost.register_variable("x", "float", 1.0),
        ghost.get_variable("x"),
        ghost.get_variable_info("x"),
        ghost.update_variable("x", 1.0),
        ghost.get_variables(["x"]),
        ghost.update_variables({"x": 1.0}),
        ghost.list_variables(),
        ghost.delete_variable("x"),
        ghost.has_variable("x"),
    ]
    for call in calls:
        with pytest.raises(SessionNotFoundError) as info:
            await call
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert info.value.kind == "session_not_found"
        assert ghost.session_id in info.value.message


@pytest.mark.parametrize("bad_id", ["", "tab\there", "x" * 257, "é" * 129])
async def test_invalid_session_id_is_refused(other_ctx: Any, bad_id: str) -> None:
    with pytest.raises(ValidationError) as info:
        await other_ctx(bad_id).initialize()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.kind == "invalid_argument"
    assert info.value.message


@pytest.mark.parametrize("odd_id", ["with spaces/and.dots-ü", "x" * 256])
async def test_any_printable_session_id_up_to_256_bytes_is_fine(other_ctx: Any, odd_id: str) -> None:
    odd_id = odd_id[:-12] + uuid.uuid4().hex[:12]
    session = other_ctx(odd_id)
    await session.initialize()
    try:
        assert (await session.get_session())["session_id"] == odd_id
    finally:
        assert await session.cleanup() == 0


def test_context_needs_a_grpc_channel() -> None:
    with pytest.raises(TypeError, match="grpc.Channel or grpc.aio.Channel"):
        SessionContext("s", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="session_id"):
        SessionContext(b"s", grpc.insecure_channel("127.0.0.1:1"))  # type: ignore[arg-type]


async def test_each_class_refuses_the_other_mode_and_names_the_one_to_use() -> None:
    aio_channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(TypeError, match="with a grpc.aio.Channel use AsyncSessionContext"):
            SessionContext("s", aio_channel)  # type: ignore[arg-type]
    finally:
        await aio_channel.close()
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(TypeError, match="with a blocking grpc.Channel use SessionContext"):
            AsyncSessionContext("s", channel)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="grpc.Channel or grpc.aio.Channel"):
        AsyncSessionContext("s", object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="session_id"):
        AsyncSessionContext(b"s", grpc.aio.insecure_channel("127.0.0.1:1"))  # type: ignore[arg-type]


def test_blocking_methods_return_values(blocking_ctx: SessionContext) -> None:
    assert blocking_ctx.is_async is False
    assert blocking_ctx.ping("b") == "b"
    assert blocking_ctx.heartbeat() is True


async def test_aio_methods_are_coroutines(aio_ctx: AsyncSessionContext) -> None:
    assert aio_ctx.is_async is True
    pending = aio_ctx.ping("a")
    assert hasattr(pending, "__await__")
    assert await pending == "a"
    assert await aio_ctx.heartbeat() is True
