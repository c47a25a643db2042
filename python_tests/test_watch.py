"""WatchVariables from Python: every promise of the watch iterators, in both modes, against the real server.

Tests taking ``mode`` (directly or through ``ctx``) run once with a blocking
channel and once with a grpc.aio channel. The watcher is ``ctx.ctx`` (the raw
SessionContext or AsyncSessionContext); writes come from a second context on its own channel.
No test sleeps blindly or asserts timings: conditions are polled with a
deadline (``eventually``), and watcher_count from GetSession shows whether a
watch is live.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import gc
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import grpc
import grpc.aio
import pytest
import snakepit_bridge
from _support import (
    AnyMode,
    RestartableServer,
    TcpProxy,
    WatchDriver,
    context_for,
    eventually,
    start_server,
    wait_for_watchers,
    wait_for_watchers_blocking,
    watcher_count,
    within,
)
from snakepit_bridge import (
    AsyncSessionContext,
    AsyncVariableWatch,
    BridgeUnavailableError,
    SessionContext,
    SessionNotFoundError,
    ValidationError,
    VariableInfo,
    VariableNotFoundError,
    VariableType,
    VariableUpdate,
    VariableWatch,
)

KEYS = {"variable_id", "name", "value", "version", "type", "metadata", "source", "timestamp", "update_type"}
# Reconnect quickly in tests: grpc's own channel backoff (1 s growing to 120 s) would otherwise dominate.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 500)]


@pytest.fixture
def writer(ctx: AnyMode, other_ctx: Any) -> AnyMode:
    """A second client of the same session, on its own channel."""
    return other_ctx(ctx.session_id)  # type: ignore[no-any-return]


def watch_of(ctx: AnyMode, *args: Any, **kwargs: Any) -> WatchDriver:
    identifiers = args[0]
    if isinstance(identifiers, str):
        return WatchDriver(ctx.ctx.watch_variable(*args, **kwargs))
    return WatchDriver(ctx.ctx.watch_variables(*args, **kwargs))


def assert_strictly_increasing(updates: list[Any]) -> None:
    last: dict[str, int] = {}
    for u in updates:
        if u.update_type == "session_closed":
            continue
        assert u.version > last.get(u.variable_id, 0), f"version went back or repeated: {updates}"
        last[u.variable_id] = u.version


# --------------------------------------------------------------------------- the API surface


def test_public_names_are_exported() -> None:
    for name in ("VariableUpdate", "VariableWatch", "AsyncVariableWatch", "UpdateType", "DEFAULT_BACKOFF"):
        assert name in snakepit_bridge.__all__
        assert getattr(snakepit_bridge, name) is not None


async def test_the_iterator_type_follows_the_channel(ctx: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 0)
    watch = ctx.ctx.watch_variable("x")
    try:
        if ctx.mode == "aio":
            assert isinstance(watch, AsyncVariableWatch)
            assert watch.__aiter__() is watch
            assert not hasattr(watch, "__next__")
        else:
            assert isinstance(watch, VariableWatch)
            assert iter(watch) is watch
            assert not hasattr(watch, "__anext__")
        # Nothing is sent before the first next/anext.
        assert await watcher_count(ctx) == 0
    finally:
        await WatchDriver(watch).close()


async def test_bad_arguments_raise_at_once(ctx: AnyMode) -> None:
    with pytest.raises(TypeError, match="single string"):
        ctx.ctx.watch_variables("temperature")
    with pytest.raises(TypeError):
        ctx.ctx.watch_variables([1])
    with pytest.raises(TypeError):
        ctx.ctx.watch_variable(["temperature"])
    with pytest.raises(ValueError, match="backoff"):
        ctx.ctx.watch_variable("temperature", backoff=(0, 1))
    with pytest.raises(ValueError, match="backoff"):
        ctx.ctx.watch_variable("temperature", backoff=(2, 1))


# --------------------------------------------------------------------------- what arrives


async def test_initial_values_then_changes_in_order(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("temperature", "float", 0.5)
    await ctx.register_variable("strategy", "choice", "greedy", constraints={"choices": ["greedy", "random"]})
    watch = watch_of(ctx, ["temperature", "strategy"])
    try:
        first, second = await watch.next(), await watch.next()
        assert [(u.update_type, u.name, u.value, u.version) for u in (first, second)] == [
            ("initial_value", "temperature", 0.5, 1),
            ("initial_value", "strategy", "greedy", 1),
        ]
        # Lock-step writes from the other client: every change arrives, in order.
        steps = [("temperature", 0.6, 2), ("strategy", "random", 2), ("temperature", 0.7, 3), ("temperature", 0.8, 4)]
        for name, value, version in steps:
            assert await writer.update_variable(name, value) == version
            update = await watch.next()
            assert (update.update_type, update.name, update.value, update.version) == (
                "value_change",
                name,
                value,
                version,
            )
            assert update.source == "python"
    finally:
        await watch.close()


async def test_an_update_is_a_mapping_with_attribute_access(ctx: AnyMode, writer: AnyMode) -> None:
    var_id = await ctx.register_variable("temperature", VariableType.FLOAT, 0.5, constraints={"min": 0, "max": 2})
    watch = watch_of(ctx, "temperature")
    try:
        initial = await watch.next()
        await writer.update_variable("temperature", 0.9, metadata={"by": "optimizer"})
        update = await watch.next()
    finally:
        await watch.close()

    assert isinstance(update, VariableUpdate)
    assert isinstance(dict(update), dict) and issubclass(VariableUpdate, Mapping)
    assert set(update) == KEYS and len(update) == len(KEYS)
    assert update["value"] == update.value == 0.9
    for key in KEYS:
        assert update[key] == getattr(update, key)
        assert key in update
    assert "nope" not in update
    with pytest.raises(KeyError):
        update["nope"]
    assert update == dict(update)
    assert update["variable_id"] == var_id
    assert update["name"] == "temperature"
    assert update["version"] == 2
    assert update["type"] == VariableType.FLOAT == "float"
    assert update["metadata"] == {"by": "optimizer"}
    assert update["source"] == "python"
    assert update["update_type"] == "value_change"
    ts = update["timestamp"]
    assert isinstance(ts, datetime.datetime) and ts.utcoffset() == datetime.timedelta(0)
    assert initial["timestamp"] <= ts
    assert initial["metadata"] == {}
    # The whole variable rides along as an attribute (not a key).
    assert isinstance(update.variable, VariableInfo)
    assert update.variable.constraints == {"min": 0, "max": 2}
    assert "variable" not in update
    with pytest.raises(AttributeError):
        update.value = 1  # frozen


async def test_values_decode_like_get_variable(ctx: AnyMode, writer: AnyMode) -> None:
    cases = [
        ("f", "float", float("inf")),
        ("i", "integer", 2**62),
        ("b", "boolean", True),
        ("e", "embedding", [0.5, -1.0]),
        ("t", "tensor", {"shape": [2, 1], "data": [1.0, 2.0]}),
    ]
    for name, var_type, value in cases:
        await ctx.register_variable(name, var_type, value)
    watch = watch_of(ctx, [name for name, _, _ in cases])
    try:
        for name, _, value in cases:
            update = await watch.next()
            assert update.name == name
            assert update.value == value
            assert update.value == await writer.get_variable(name)
    finally:
        await watch.close()


async def test_include_initial_false_starts_with_the_next_change(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 0)
    watch = watch_of(ctx, "x", include_initial=False)
    try:
        await watch.start()  # live once this returns: the next write cannot be missed
        assert await watcher_count(ctx) == 1
        await writer.update_variable("x", 1)
        await watch.start()  # already live: returns at once, reads nothing
        update = await watch.next()
        assert (update.update_type, update.value, update.version) == ("value_change", 1, 2)
        await writer.update_variable("x", 2)
        assert (await watch.next()).value == 2
        assert await watcher_count(ctx) == 1
    finally:
        await watch.close()


async def test_since_versions_sends_only_what_is_newer(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("a", "integer", 0)
    await ctx.register_variable("b", "integer", 0)
    await writer.update_variable("a", 1)  # a: version 2, b: version 1
    watch = watch_of(ctx, ["a", "b"], since_versions={"a": 1, "b": 1})
    try:
        first = await watch.next()
        assert (first.update_type, first.name, first.version) == ("initial_value", "a", 2)  # b is not newer
        await writer.update_variable("b", 5)
        second = await watch.next()
        assert (second.update_type, second.name, second.value, second.version) == ("value_change", "b", 5, 2)
    finally:
        await watch.close()
    single = watch_of(ctx, "a", since_version=2, include_initial=True)
    try:
        await single.start()
        await writer.update_variable("a", 7)
        update = await single.next()
        assert (update.update_type, update.value, update.version) == ("value_change", 7, 3)
    finally:
        await single.close()


async def test_watching_by_id(ctx: AnyMode, writer: AnyMode) -> None:
    var_id = await ctx.register_variable("x", "string", "a")
    watch = watch_of(ctx, var_id)
    try:
        initial = await watch.next()
        assert (initial.variable_id, initial.name, initial.value) == (var_id, "x", "a")
        await writer.update_variable("x", "b")
        assert (await watch.next()).value == "b"
    finally:
        await watch.close()


async def test_a_slow_reader_is_coalesced_and_ends_with_the_final_value(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("n", "integer", 0)
    watch = watch_of(ctx, "n", include_initial=False)
    try:
        await watch.start()
        result = await writer.update_variables({"n": 1})
        assert result.new_versions == {"n": 2}
        for i in range(2, 301):  # nothing is read meanwhile
            await writer.update_variable("n", i)
        updates = await watch.until(lambda u: u.value == 300)
    finally:
        await watch.close()
    assert_strictly_increasing(updates)
    assert all(u.update_type == "value_change" and u.version == u.value + 1 for u in updates)
    assert updates[-1].version == 301


async def test_an_atomic_batch_arrives_adjacent(ctx: AnyMode, writer: AnyMode) -> None:
    for name in ("a", "b", "c"):
        await ctx.register_variable(name, "integer", 0)
    watch = watch_of(ctx, ["a", "b", "c"], include_initial=False)
    try:
        await watch.start()
        for i in range(1, 41):  # not read meanwhile: batches coalesce, but stay whole and adjacent
            result = await writer.update_variables({"a": i, "b": i}, atomic=True)
            assert result.success
            await writer.update_variable("c", i)
        finals: set[str] = set()

        def all_final(update: Any) -> bool:
            if update.value == 40:
                finals.add(update.name)
            return finals == {"a", "b", "c"}

        updates = await watch.until(all_final)
    finally:
        await watch.close()
    assert_strictly_increasing(updates)
    batch = [u for u in updates if u.name in ("a", "b")]
    assert batch, updates
    for index, update in enumerate(updates):
        if update.name not in ("a", "b"):
            continue
        partner = "b" if update.name == "a" else "a"
        neighbours = updates[max(index - 1, 0) : index] + updates[index + 1 : index + 2]
        assert any(n.name == partner and n.value == update.value for n in neighbours), (update, updates)


# --------------------------------------------------------------------------- lifecycle


async def test_deleted_arrives_once_then_nothing_more_for_it(ctx: AnyMode, writer: AnyMode) -> None:
    a_id = await ctx.register_variable("a", "integer", 1)
    await ctx.register_variable("b", "integer", 1)
    watch = watch_of(ctx, ["a", "b"], include_initial=False)
    try:
        await watch.start()
        await writer.update_variable("a", 2)
        assert (await watch.next()).value == 2
        await writer.delete_variable("a")
        deleted = await watch.next()
        assert (deleted.update_type, deleted.variable_id, deleted.name) == ("deleted", a_id, "a")
        assert (deleted.value, deleted.version) == (2, 2)  # the variable as it was last
        assert deleted.source == "python"
        # A new "a" is another variable: this watch does not follow it.
        await writer.register_variable("a", "integer", 100)
        await writer.update_variable("a", 101)
        await writer.update_variable("b", 2)
        nxt = await watch.next()
        assert (nxt.update_type, nxt.name, nxt.value) == ("value_change", "b", 2)
        # Deleting the last watched variable ends the iteration (nothing else could come).
        await writer.delete_variable("b")
        rest = await watch.rest()
        assert [(u.update_type, u.name) for u in rest] == [("deleted", "b")]
        assert watch.watch.closed
    finally:
        await watch.close()
    await wait_for_watchers(ctx, 0)


async def test_watch_variable_ends_after_deleted(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 1)
    watch = watch_of(ctx, "x")
    assert (await watch.next()).update_type == "initial_value"
    await writer.delete_variable("x")
    assert [u.update_type for u in await watch.rest()] == ["deleted"]
    with pytest.raises(StopAsyncIteration):
        await watch.next()
    await wait_for_watchers(ctx, 0)


async def test_cleanup_by_another_client_yields_session_closed_and_ends(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 1)
    watch = watch_of(ctx, ["x"])
    assert (await watch.next()).update_type == "initial_value"
    await writer.cleanup()
    rest = await watch.rest()
    assert len(rest) == 1
    closed = rest[0]
    assert closed.update_type == "session_closed"
    assert (closed.variable_id, closed.name, closed.value, closed.version, closed.type) == (None,) * 5
    assert closed.variable is None
    assert closed["update_type"] == "session_closed"
    assert isinstance(closed.timestamp, datetime.datetime)
    assert watch.watch.closed
    with pytest.raises(StopAsyncIteration):
        await watch.next()


async def test_a_pending_read_gets_session_closed(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 1)
    watch = watch_of(ctx, ["x"], include_initial=False)
    await watch.start()
    pending = asyncio.ensure_future(watch.rest())
    await writer.cleanup()
    assert [u.update_type for u in await pending] == ["session_closed"]


# --------------------------------------------------------------------------- refusals


async def test_unknown_session_raises_session_not_found(mode: str, channel_factory: Any) -> None:
    ghost = context_for(f"ghost-{uuid.uuid4().hex}", channel_factory())
    for reconnect in (False, True):  # the first opening's refusal is never retried
        watch = WatchDriver(ghost.watch_variables(["x"], reconnect=reconnect))
        with pytest.raises(SessionNotFoundError) as info:
            await watch.next()
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert watch.watch.closed
        with pytest.raises(StopAsyncIteration):
            await watch.next()


async def test_unknown_variable_raises_variable_not_found(ctx: AnyMode) -> None:
    await ctx.register_variable("known", "integer", 1)
    for reconnect in (False, True):
        watch = watch_of(ctx, ["known", "unknown"], reconnect=reconnect)
        with pytest.raises(VariableNotFoundError, match="unknown") as info:
            await watch.next()
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        assert isinstance(info.value, KeyError)
    assert await watcher_count(ctx) == 0


async def test_empty_identifier_list_raises_validation_error(ctx: AnyMode) -> None:
    """Neither identifiers nor patterns: refused at once, before any call, as the server would."""
    for args in ([[]], [()], []):
        with pytest.raises(ValidationError) as info:
            ctx.ctx.watch_variables(*args)
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(info.value, ValueError)
    with pytest.raises(ValidationError):
        ctx.ctx.watch_variables([], patterns=[])
    assert await watcher_count(ctx) == 0


async def test_start_raises_the_refusal_too(ctx: AnyMode) -> None:
    watch = watch_of(ctx, ["missing"])
    with pytest.raises(VariableNotFoundError):
        await watch.start()


# --------------------------------------------------------------------------- cleanup: the RPC ends


async def test_close_cancels_the_rpc(ctx: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 1)
    baseline = await watcher_count(ctx)
    watch = watch_of(ctx, "x")
    await watch.next()
    assert await watcher_count(ctx) == baseline + 1
    await watch.close()
    assert watch.watch.closed
    await wait_for_watchers(ctx, baseline)
    with pytest.raises(StopAsyncIteration):
        await watch.next()
    await watch.close()  # idempotent


async def test_many_watches_opened_and_closed_leave_none(ctx: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 1)
    watches = [watch_of(ctx, "x") for _ in range(20)]
    for watch in watches:
        await watch.next()
    assert await watcher_count(ctx) == 20
    for watch in watches:
        await watch.close()
    await wait_for_watchers(ctx, 0)


def test_blocking_context_manager_is_live_inside_and_closed_after(blocking_ctx: SessionContext) -> None:
    blocking_ctx.register_variable("x", "integer", 1)
    with blocking_ctx.watch_variable("x", include_initial=False) as watch:
        assert watch.connected
        assert blocking_ctx.get_session()["watcher_count"] == 1
        blocking_ctx.update_variable("x", 2)
        assert next(watch).value == 2
    assert watch.closed and not watch.connected
    wait_for_watchers_blocking(blocking_ctx, 0)


def test_blocking_close_from_another_thread_ends_a_blocked_next(blocking_ctx: SessionContext) -> None:
    blocking_ctx.register_variable("x", "integer", 1)
    watch = blocking_ctx.watch_variable("x", include_initial=False).start()
    outcome: list[Any] = []

    def consume() -> None:
        try:
            outcome.append(next(watch))
        except StopIteration:
            outcome.append("stopped")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    wait_for_watchers_blocking(blocking_ctx, 1)
    watch.close()
    thread.join(30)
    assert not thread.is_alive()
    assert outcome == ["stopped"]
    wait_for_watchers_blocking(blocking_ctx, 0)


def test_blocking_watch_dropped_without_close_is_cancelled_by_gc(blocking_ctx: SessionContext) -> None:
    blocking_ctx.register_variable("x", "integer", 1)
    for update in blocking_ctx.watch_variable("x"):
        assert update.value == 1
        assert blocking_ctx.get_session()["watcher_count"] == 1
        break
    gc.collect()
    wait_for_watchers_blocking(blocking_ctx, 0)


async def test_aclose_cancels_the_rpc(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    watch = aio_ctx.watch_variable("x")
    assert (await watch.__anext__()).value == 1
    assert await watcher_count(aio_ctx) == 1
    await watch.aclose()
    await wait_for_watchers(aio_ctx, 0)
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()


async def test_async_with_is_live_inside_and_closed_after(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    async with aio_ctx.watch_variable("x", include_initial=False) as watch:
        assert watch.connected
        assert await watcher_count(aio_ctx) == 1
        await aio_ctx.update_variable("x", 2)
        assert (await watch.__anext__()).value == 2
    assert watch.closed
    await wait_for_watchers(aio_ctx, 0)


async def test_break_out_of_async_for_cancels_the_rpc(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    async for update in aio_ctx.watch_variables(["x"]):
        assert update.value == 1
        assert await watcher_count(aio_ctx) == 1
        break
    gc.collect()
    await wait_for_watchers(aio_ctx, 0)


async def test_cancelling_the_consuming_task_cancels_the_rpc(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    watch = aio_ctx.watch_variable("x")
    seen: list[Any] = []

    async def consume() -> None:
        async for update in watch:
            seen.append(update.value)

    task = asyncio.create_task(consume())
    await eventually(lambda: seen == [1], "the initial value")
    assert await watcher_count(aio_ctx) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert watch.closed
    await wait_for_watchers(aio_ctx, 0)


async def test_cancelling_a_pending_anext_cancels_the_rpc(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    watch = aio_ctx.watch_variable("x", include_initial=False)
    pending = asyncio.ensure_future(watch.__anext__())
    await wait_for_watchers(aio_ctx, 1)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await wait_for_watchers(aio_ctx, 0)
    with pytest.raises(StopAsyncIteration):
        await watch.__anext__()


async def test_aclose_from_another_task_ends_a_pending_anext(aio_ctx: AsyncSessionContext) -> None:
    await aio_ctx.register_variable("x", "integer", 1)
    watch = await aio_ctx.watch_variable("x", include_initial=False).start()
    pending = asyncio.ensure_future(watch.__anext__())
    await wait_for_watchers(aio_ctx, 1)
    with pytest.raises(RuntimeError, match="already iterating"):
        await watch.__anext__()
    await watch.aclose()
    with pytest.raises(StopAsyncIteration):
        await pending
    await wait_for_watchers(aio_ctx, 0)


# --------------------------------------------------------------------------- the local cache


class _Counter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls[_method(details)] += 1
        return continuation(details, request)


class _AioCounter(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls[_method(details)] += 1
        return await continuation(details, request)


def _method(details: Any) -> str:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return str(method).rsplit("/", 1)[-1]


@pytest.fixture
async def counted(mode: str, session_id: str, server_address: str) -> Any:
    """(AnyMode watcher context whose unary calls are counted, the counter)."""
    if mode == "aio":
        counter: Any = _AioCounter()
        channel: Any = grpc.aio.insecure_channel(server_address, interceptors=[counter])
    else:
        counter = _Counter()
        channel = grpc.intercept_channel(grpc.insecure_channel(server_address), counter)
    ctx = AnyMode(context_for(session_id, channel))
    await ctx.initialize()
    yield ctx, counter
    await ctx.cleanup(force=True)
    if mode == "aio":
        await channel.close()
    else:
        channel.close()


async def test_get_variable_is_served_locally_while_watched(counted: Any, other_ctx: Any) -> None:
    ctx, counter = counted
    writer = other_ctx(ctx.session_id)
    x_id = await ctx.register_variable("x", "integer", 1)
    await ctx.register_variable("unwatched", "integer", 5)
    watch = watch_of(ctx, ["x"])
    try:
        assert (await watch.next()).value == 1
        counter.calls.clear()
        assert await ctx.get_variable("x") == 1
        assert await ctx.get_variable(x_id) == 1
        info = await ctx.get_variable_info("x")
        assert (info.id, info.version, info.value) == (x_id, 1, 1)
        assert await ctx.has_variable("x") is True
        assert await ctx.__getitem__("x") == 1
        assert counter.calls["GetVariable"] == 0, counter.calls

        # Another client's change refreshes the cache once the watch delivers it.
        await writer.update_variable("x", 2)
        assert (await watch.next()).value == 2
        counter.calls.clear()
        assert await ctx.get_variable("x") == 2
        assert counter.calls["GetVariable"] == 0

        # Only watched variables are served locally.
        assert await ctx.get_variable("unwatched") == 5
        assert counter.calls["GetVariable"] == 1

        # Read-your-writes: this context's own write is never hidden by the cache ...
        assert await ctx.update_variable("x", 3) == 3
        assert await ctx.get_variable("x") == 3
        # ... and once the watch has delivered it, it is served locally again.
        update = await watch.next()
        assert (update.value, update.version) == (3, 3)
        counter.calls.clear()
        assert await ctx.get_variable("x") == 3
        assert counter.calls["GetVariable"] == 0
    finally:
        await watch.close()
    # Not after the watch ended.
    counter.calls.clear()
    assert await ctx.get_variable("x") == 3
    assert counter.calls["GetVariable"] == 1


async def test_batch_writes_are_read_back_through_the_cache(counted: Any) -> None:
    ctx, counter = counted
    await ctx.register_variable("x", "integer", 1)
    watch = watch_of(ctx, ["x"])
    try:
        await watch.next()
        result = await ctx.update_variables({"x": 9})
        assert result.new_versions == {"x": 2}
        assert await ctx.get_variable("x") == 9
        assert (await watch.next()).value == 9
        counter.calls.clear()
        assert await ctx.get_variable("x") == 9
        assert counter.calls["GetVariable"] == 0
    finally:
        await watch.close()


async def test_the_cache_forgets_a_deleted_variable(counted: Any, other_ctx: Any) -> None:
    ctx, counter = counted
    writer = other_ctx(ctx.session_id)
    await ctx.register_variable("x", "integer", 1)
    await ctx.register_variable("y", "integer", 1)
    watch = watch_of(ctx, ["x", "y"])
    try:
        await watch.next()
        await watch.next()
        await writer.delete_variable("x")
        assert (await watch.next()).update_type == "deleted"
        counter.calls.clear()
        with pytest.raises(VariableNotFoundError):
            await ctx.get_variable("x")
        assert counter.calls["GetVariable"] == 1
        assert await ctx.get_variable("x", default=None) is None
        assert await ctx.get_variable("y") == 1  # still watched
        assert counter.calls["GetVariable"] == 2
        # This context's own delete drops the entry at once.
        await ctx.delete_variable("y")
        with pytest.raises(VariableNotFoundError):
            await ctx.get_variable("y")
    finally:
        await watch.close()


async def test_the_cache_ends_with_the_session(counted: Any, other_ctx: Any) -> None:
    ctx, counter = counted
    writer = other_ctx(ctx.session_id)
    await ctx.register_variable("x", "integer", 1)
    watch = watch_of(ctx, ["x"])
    await watch.next()
    await writer.cleanup()
    assert [u.update_type for u in await watch.rest()] == ["session_closed"]
    counter.calls.clear()
    with pytest.raises(SessionNotFoundError):
        await ctx.get_variable("x")
    assert counter.calls["GetVariable"] == 1


# --------------------------------------------------------------------------- server and channel going away


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_without_reconnect_a_stopped_server_raises_unavailable(
    mode: str, channel_factory: Any, tmp_path: Any, kill: bool
) -> None:
    server = start_server(tmp_path)
    try:
        ctx = context_for(f"stop-{uuid.uuid4().hex}", channel_factory(server.address))
        session = AnyMode(ctx)
        await session.initialize()
        await session.register_variable("x", "integer", 1)
        watch = WatchDriver(ctx.watch_variable("x"))
        assert (await watch.next()).value == 1
        pending = asyncio.ensure_future(watch.next())
        if kill:
            server.process.kill()
            server.process.wait()
        else:
            assert server.terminate() == 0, server.log()
        with pytest.raises(BridgeUnavailableError) as info:
            await within(pending, "the stream to fail")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert watch.watch.closed
    finally:
        server.terminate()


async def test_a_closed_channel_raises_unavailable_even_with_reconnect(mode: str, server_address: str) -> None:
    channel: Any = grpc.aio.insecure_channel(server_address) if mode == "aio" else grpc.insecure_channel(server_address)
    owner = AnyMode(context_for(f"chan-{uuid.uuid4().hex}", grpc.insecure_channel(server_address)))
    await owner.initialize()
    try:
        await owner.register_variable("x", "integer", 1)
        ctx = context_for(owner.session_id, channel)
        watch = WatchDriver(ctx.watch_variable("x", reconnect=True))
        assert (await watch.next()).value == 1
        pending = asyncio.ensure_future(watch.next())
        await wait_for_watchers(owner, 1)
        if mode == "aio":
            await channel.close()
        else:
            channel.close()
        with pytest.raises(BridgeUnavailableError):
            await within(pending, "the stream to fail")
        assert watch.watch.closed
        await wait_for_watchers(owner, 0)
        # Opening on a closed channel fails the same way.
        with pytest.raises(BridgeUnavailableError):
            await WatchDriver(ctx.watch_variable("x", reconnect=True)).next()
    finally:
        await owner.cleanup()
        owner.ctx.channel.close()


async def test_reconnect_resumes_after_a_dropped_connection_without_duplicates(
    mode: str, ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    await ctx.register_variable("x", "integer", 0)
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variable("x", reconnect=True))
    got: list[Any] = []
    try:
        got.append(await watch.next())  # initial, version 1
        await writer.update_variable("x", 1)
        got.append(await watch.next())  # version 2

        # Dropped with nothing changing meanwhile: the resumed stream sends nothing
        # old (since_versions), only the next change.
        pending = asyncio.ensure_future(watch.next())
        proxy.drop()
        await eventually(lambda: proxy.accepted >= 2 and watch.watch.connected, "the watch to reconnect")
        await wait_for_watchers(ctx, 1)
        await writer.update_variable("x", 2)
        got.append(await within(pending, "the change after reconnecting"))  # version 3, as a change

        # Dropped while changes happen: the resumed stream starts with the latest value.
        pending = asyncio.ensure_future(watch.next())
        proxy.block()
        await wait_for_watchers(ctx, 0)
        await writer.update_variable("x", 3)
        await writer.update_variable("x", 4)
        proxy.unblock()
        got.append(await within(pending, "the resumed value"))  # version 5, coalesced, as the resumed initial value
        await writer.update_variable("x", 5)
        got.append(await watch.next())  # version 6
    finally:
        await watch.close()
    assert [(u.update_type, u.value, u.version) for u in got] == [
        ("initial_value", 0, 1),
        ("value_change", 1, 2),
        ("value_change", 2, 3),
        ("initial_value", 4, 5),
        ("value_change", 5, 6),
    ]
    await wait_for_watchers(ctx, 0)


async def test_reconnect_sends_unseen_variables_their_current_value(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    """include_initial=False and nothing delivered yet: after a drop the current value is owed."""
    await ctx.register_variable("x", "integer", 0)
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variable("x", include_initial=False, reconnect=True))
    try:
        await watch.start()
        pending = asyncio.ensure_future(watch.next())
        proxy.block()
        await wait_for_watchers(ctx, 0)
        await writer.update_variable("x", 1)  # happens while disconnected
        proxy.unblock()
        update = await within(pending, "the value changed while disconnected")
        assert (update.update_type, update.value, update.version) == ("initial_value", 1, 2)
    finally:
        await watch.close()


async def disconnect_while(proxy: TcpProxy, ctx: AnyMode, watch: WatchDriver) -> asyncio.Future[Any]:
    """Start a pending next(), cut the watch off (server side sees it gone), return the pending read."""
    pending = asyncio.ensure_future(watch.next())
    proxy.block()
    await wait_for_watchers(ctx, 0)
    return pending


async def test_a_variable_deleted_while_disconnected_is_reported_deleted(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    a_id = await ctx.register_variable("a", "integer", 1)
    await ctx.register_variable("b", "integer", 1)
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variables(["a", "b"], reconnect=True))
    try:
        assert [u.name for u in (await watch.next(), await watch.next())] == ["a", "b"]
        pending = await disconnect_while(proxy, ctx, watch)
        await writer.delete_variable("a")
        proxy.unblock()
        deleted = await within(pending, "the deletion")
        assert (deleted.update_type, deleted.variable_id, deleted.name, deleted.value) == ("deleted", a_id, "a", 1)
        assert (deleted.source, deleted.timestamp) == (None, None)  # made by the client: unknown
        await within(watch.start(), "the stream to reopen")  # reopens (for b only) and waits until live
        await wait_for_watchers(ctx, 1)
        await writer.update_variable("b", 2)
        update = await within(watch.next(), "b's change")
        assert (update.name, update.value, update.update_type) == ("b", 2, "value_change")
    finally:
        await watch.close()


async def test_a_name_registered_again_while_disconnected_is_another_variable(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    """As on a live stream: the old variable is deleted, and the watch does not follow the new one."""
    old_id = await ctx.register_variable("x", "integer", 7)
    await writer.update_variable("x", 8)  # version 2
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variable("x", reconnect=True))
    try:
        assert (await watch.next()).version == 2
        pending = await disconnect_while(proxy, ctx, watch)
        await writer.delete_variable("x")
        new_id = await writer.register_variable("x", "integer", 100)  # version 1 < 2
        assert new_id != old_id
        proxy.unblock()
        deleted = await within(pending, "the deletion")
        assert (deleted.update_type, deleted.variable_id, deleted.value) == ("deleted", old_id, 8)
        assert await within(watch.rest(), "the end") == []
    finally:
        await watch.close()
    await wait_for_watchers(ctx, 0)


async def test_a_variable_never_delivered_and_deleted_while_disconnected_raises(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    await ctx.register_variable("x", "integer", 1)
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variable("x", include_initial=False, reconnect=True))
    try:
        await watch.start()
        pending = await disconnect_while(proxy, ctx, watch)
        await writer.delete_variable("x")
        proxy.unblock()
        with pytest.raises(VariableNotFoundError, match="while the watch was disconnected"):
            await within(pending, "the failure")
        assert watch.watch.closed
    finally:
        await watch.close()


async def test_the_cache_is_not_served_while_disconnected(
    mode: str, session_id: str, server_address: str, writer: AnyMode, ctx: AnyMode, proxy: TcpProxy
) -> None:
    await ctx.register_variable("x", "integer", 0)
    if mode == "aio":
        counter: Any = _AioCounter()
        channel: Any = grpc.aio.insecure_channel(proxy.address, options=FAST_RECONNECT, interceptors=[counter])
    else:
        counter = _Counter()
        channel = grpc.intercept_channel(grpc.insecure_channel(proxy.address, options=FAST_RECONNECT), counter)
    watcher = AnyMode(context_for(ctx.session_id, channel))
    direct = AnyMode(context_for(ctx.session_id, grpc.insecure_channel(server_address)))
    watch = WatchDriver(watcher.ctx.watch_variable("x", reconnect=True))
    try:
        await watch.next()
        pending = asyncio.ensure_future(watch.next())
        proxy.block()
        await eventually(lambda: not watch.watch.connected, "the watch to notice the drop")
        counter.calls.clear()
        with pytest.raises(BridgeUnavailableError):  # not served from the cache: it asks, and cannot
            await watcher.get_variable("x")
        assert counter.calls["GetVariable"] == 1
        proxy.unblock()
        await eventually(lambda: watch.watch.connected, "the watch to reconnect")
        await direct.update_variable("x", 1)
        assert (await within(pending, "the change after reconnecting")).value == 1
        counter.calls.clear()
        assert await watcher.get_variable("x") == 1
        assert counter.calls["GetVariable"] == 0
    finally:
        await watch.close()
        direct.ctx.channel.close()
        if mode == "aio":
            await channel.close()
        else:
            channel.close()


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_reconnect_survives_a_server_restart(
    mode: str, channel_factory: Any, restartable_server: RestartableServer, kill: bool
) -> None:
    """The server keeps no state across a restart: the session and its variable are
    created again (versions restart at 1), and the watch picks them up."""
    srv = restartable_server
    session_id = f"restart-{uuid.uuid4().hex}"
    writer = AnyMode(context_for(session_id, channel_factory(srv.address)))
    await writer.initialize()
    await writer.register_variable("temperature", "float", 0.0)
    for value in (1.0, 2.0, 3.0, 4.0):
        await writer.update_variable("temperature", value)  # version 5

    watcher = context_for(session_id, channel_factory(srv.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variable("temperature", reconnect=True))
    try:
        before = [await watch.next()]
        await writer.update_variable("temperature", 5.0)
        before.append(await watch.next())
        assert [(u.value, u.version) for u in before] == [(4.0, 5), (5.0, 6)]

        pending = asyncio.ensure_future(watch.until(lambda u: u.value == 12.0))
        srv.restart(kill=kill)
        # The owner creates the session again on the new server (fewer versions than before).
        # It stands for another process, so its channel does not share the subchannel of the
        # writer's dead connection (older grpcio fails the first call on it with "Socket closed").
        again = AnyMode(context_for(session_id, channel_factory(srv.address, [("grpc.use_local_subchannel_pool", 1)])))
        await again.initialize()
        await again.register_variable("temperature", "float", 10.0)
        await again.update_variable("temperature", 11.0)
        await again.update_variable("temperature", 12.0)  # version 3 < 6
        after = await within(pending, "the value written after the restart")

        assert after[0].update_type == "initial_value"
        assert all(u.value in (10.0, 11.0, 12.0) for u in after), after
        assert_strictly_increasing(after)
        assert (after[-1].value, after[-1].version) == (12.0, 3)
        # Still live on the new server: later changes arrive once each.
        await wait_for_watchers(again, 1)
        await again.update_variable("temperature", 13.0)
        update = await watch.next()
        assert (update.update_type, update.value, update.version) == ("value_change", 13.0, 4)
        assert watch.watch.connected
    finally:
        await watch.close()
    await wait_for_watchers(again, 0)


async def test_reconnect_keeps_trying_while_the_server_is_down(
    mode: str, channel_factory: Any, restartable_server: RestartableServer
) -> None:
    srv = restartable_server
    session_id = f"down-{uuid.uuid4().hex}"
    owner = AnyMode(context_for(session_id, channel_factory(srv.address)))
    await owner.initialize()
    await owner.register_variable("x", "integer", 1)
    watcher = context_for(session_id, channel_factory(srv.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variable("x", reconnect=True, backoff=(0.01, 0.05)))
    try:
        assert (await watch.next()).value == 1
        pending = asyncio.ensure_future(watch.next())
        srv.stop()
        await eventually(lambda: not watch.watch.connected, "the watch to notice")
        assert not pending.done()  # retrying, not failed
        srv.start()
        again = AnyMode(context_for(session_id, channel_factory(srv.address)))
        await again.initialize()
        await again.register_variable("x", "integer", 2)
        update = await within(pending, "the value on the restarted server")
        assert (update.update_type, update.value, update.version) == ("initial_value", 2, 1)
    finally:
        await watch.close()


async def test_a_watched_session_does_not_expire(mode: str, channel_factory: Any, tmp_path: Any) -> None:
    """A live watch keeps its session alive; the TTL counts from when the watch left."""
    server = start_server(tmp_path, "--session-ttl", "1")
    try:
        ctx = context_for(f"ttl-{uuid.uuid4().hex}", channel_factory(server.address))
        session = AnyMode(ctx)
        await session.initialize()
        await session.register_variable("x", "integer", 1)
        watch = WatchDriver(ctx.watch_variable("x", reconnect=False))
        assert (await watch.next()).update_type == "initial_value"
        # Twice the TTL without any call: only the watch keeps it alive.
        await asyncio.sleep(2.2)
        assert await session.heartbeat() is True
        await session.update_variable("x", 2)
        assert ((await watch.next()).update_type, (await session.get_variable("x"))) == ("value_change", 2)
        await watch.close()
        await asyncio.sleep(2.2)
        assert await session.heartbeat() is False
    finally:
        server.terminate()


async def test_cached_values_are_copies(ctx: AnyMode) -> None:
    """Mutating what get_variable or an update returned never changes what the cache serves."""
    await ctx.register_variable("e", "embedding", [1.0, 2.0])
    await ctx.register_variable("t", "tensor", {"shape": [2], "data": [1.0, 2.0]}, metadata={"k": "v"})
    watch = watch_of(ctx, ["e", "t"])
    try:
        first, second = await watch.next(), await watch.next()
        first.value.append(99.0)
        second.value["data"][0] = 99.0
        got = await ctx.get_variable("e")
        assert got == [1.0, 2.0]
        got.append(3.0)
        assert await ctx.get_variable("e") == [1.0, 2.0]
        tensor = await ctx.get_variable("t")
        tensor["data"].clear()
        info = await ctx.get_variable_info("t")
        info.metadata["k"] = "changed"
        info2 = await ctx.get_variable_info("t")
        assert info2.value == {"shape": [2], "data": [1.0, 2.0]}
        assert info2.metadata == {"k": "v"}
    finally:
        await watch.close()
