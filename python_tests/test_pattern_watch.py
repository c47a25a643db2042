"""Pattern watches (``watch_variables(patterns=[...])``) from Python, in both modes, against the real server.

A pattern watch covers every variable whose name matches, now and later: a
variable registered after the watch started arrives as ``registered`` with its
first value, a deleted one as ``deleted``, and the iterator goes on after
deletions (only ``session_closed`` ends it). With ``reconnect``, the patterns
are sent again on a resume, with the versions seen keyed by name, so what was
registered, changed or deleted while away is delivered.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from _support import (
    AnyMode,
    RestartableServer,
    TcpProxy,
    WatchDriver,
    context_for,
    wait_for_watchers,
    watcher_count,
    within,
)
from snakepit_bridge import ResourceExhaustedError, ValidationError

# Reconnect quickly in tests: grpc's own channel backoff (1 s growing to 120 s) would otherwise dominate.
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 500)]


@pytest.fixture
def writer(ctx: AnyMode, other_ctx: Any) -> AnyMode:
    """A second client of the same session, on its own channel."""
    return other_ctx(ctx.session_id)  # type: ignore[no-any-return]


def seen(updates: list[Any]) -> list[tuple[str, str | None, Any]]:
    return [(u.update_type, u.name, u.value) for u in updates]


async def disconnect_while(proxy: TcpProxy, ctx: AnyMode, watch: WatchDriver) -> asyncio.Future[Any]:
    """Start a pending next(), cut the watch off (server side sees it gone), return the pending read."""
    pending = asyncio.ensure_future(watch.next())
    proxy.block()
    await wait_for_watchers(ctx, 0)
    return pending


async def test_a_pattern_covers_existing_and_later_variables(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("model.b", "integer", 2)
    await ctx.register_variable("model.a", "integer", 1)
    await ctx.register_variable("other", "integer", 0)
    watch = WatchDriver(ctx.ctx.watch_variables(patterns=["model.*"]))
    try:
        # Initial values of the variables that match now, by name; "other" is not covered.
        got = [await watch.next(), await watch.next()]
        assert seen(got) == [("initial_value", "model.a", 1), ("initial_value", "model.b", 2)]

        await writer.update_variable("other", 1)  # not delivered
        c_id = await writer.register_variable("model.c", "integer", 3)
        registered = await within(watch.next(), "the registration")
        assert (registered.update_type, registered.name, registered.value, registered.version) == (
            "registered",
            "model.c",
            3,
            1,
        )
        assert registered.variable_id == c_id
        assert registered.variable is not None and registered.variable.name == "model.c"

        await writer.register_variable("not.model", "integer", 9)  # no full match: not delivered
        await writer.update_variable("model.c", 4)
        change = await within(watch.next(), "the change")
        assert (change.update_type, change.name, change.value, change.version) == ("value_change", "model.c", 4, 2)

        # Deleting every matching variable does not end the watch: more may come.
        for name in ("model.a", "model.b", "model.c"):
            await writer.delete_variable(name)
            deleted = await within(watch.next(), f"{name}'s deletion")
            assert (deleted.update_type, deleted.name) == ("deleted", name)
        assert not watch.watch.closed
        await writer.register_variable("model.a", "integer", 10)
        again = await within(watch.next(), "the registration after the deletions")
        assert seen([again]) == [("registered", "model.a", 10)]

        # Only session_closed ends it.
        await writer.cleanup(force=True)
        rest = await within(watch.rest(), "the end")
        assert [u.update_type for u in rest] == ["session_closed"]
        assert watch.watch.closed
    finally:
        await watch.close()


async def test_identifiers_and_patterns_together(ctx: AnyMode, writer: AnyMode) -> None:
    await ctx.register_variable("x", "integer", 0)
    await ctx.register_variable("p1", "integer", 1)
    await ctx.register_variable("q1", "integer", 1)
    watch = WatchDriver(ctx.ctx.watch_variables(["x"], patterns=["p?"], include_initial=False))
    try:
        await watch.start()
        assert "patterns=['p?']" in repr(watch.watch)
        await writer.register_variable("p22", "integer", 0)  # "?" is one character: no match
        await writer.update_variable("q1", 2)  # not covered
        await writer.register_variable("p3", "integer", 3)
        await writer.update_variable("x", 5)
        await writer.update_variable("p1", 6)
        got = [await within(watch.next(), "update") for _ in range(3)]
        assert seen(got) == [("registered", "p3", 3), ("value_change", "x", 5), ("value_change", "p1", 6)]

        # The last identifier deleted: the patterns still stand.
        await writer.delete_variable("x")
        assert seen([await within(watch.next(), "x's deletion")]) == [("deleted", "x", 5)]
        await writer.register_variable("p4", "integer", 4)
        assert seen([await within(watch.next(), "p4")]) == [("registered", "p4", 4)]
    finally:
        await watch.close()
    await wait_for_watchers(ctx, 0)


async def test_since_versions_by_name_with_a_pattern(ctx: AnyMode, writer: AnyMode) -> None:
    """Listing what was seen, by name, makes the opening a resume: unlisted matches get their value."""
    await ctx.register_variable("m.a", "integer", 1)
    await writer.update_variable("m.a", 2)  # version 2
    await ctx.register_variable("m.b", "integer", 7)
    watch = WatchDriver(ctx.ctx.watch_variables(patterns=["m.*"], include_initial=False, since_versions={"m.a": 2}))
    try:
        assert seen([await within(watch.next(), "m.b")]) == [("initial_value", "m.b", 7)]
        await writer.update_variable("m.a", 3)
        assert seen([await within(watch.next(), "m.a's change")]) == [("value_change", "m.a", 3)]
    finally:
        await watch.close()


async def test_pattern_arguments_and_limits(ctx: AnyMode) -> None:
    with pytest.raises(TypeError, match="single string"):
        ctx.ctx.watch_variables(patterns="m.*")
    with pytest.raises(TypeError):
        ctx.ctx.watch_variables(patterns=[1])
    with pytest.raises(ValidationError) as invalid:
        ctx.ctx.watch_variables(patterns=[])
    assert isinstance(invalid.value, ValueError)
    assert await watcher_count(ctx) == 0

    # max_pattern_bytes (1024 by default) counts the patterns together.
    too_long = WatchDriver(ctx.ctx.watch_variables(patterns=["a" * 600 + "*", "b" * 600 + "*"]))
    with pytest.raises(ResourceExhaustedError) as exhausted:
        await too_long.next()
    assert exhausted.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_pattern_bytes" in str(exhausted.value)
    assert too_long.watch.closed

    empty_pattern = WatchDriver(ctx.ctx.watch_variables(patterns=[""]))
    with pytest.raises(ValidationError) as refused:
        await empty_pattern.next()
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert await watcher_count(ctx) == 0

    # Exactly at the limit is fine.
    fits = WatchDriver(ctx.ctx.watch_variables(patterns=["a" * 511 + "*", "b" * 511 + "*"]))
    try:
        await fits.start()
        assert fits.watch.connected
    finally:
        await fits.close()


# --------------------------------------------------------------------------- reconnect and resume


async def test_resume_delivers_what_was_registered_and_changed_while_away(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    await ctx.register_variable("m.a", "integer", 1)
    await ctx.register_variable("m.z", "integer", 26)
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variables(patterns=["m.*"], reconnect=True))
    try:
        got = [await watch.next(), await watch.next()]
        assert seen(got) == [("initial_value", "m.a", 1), ("initial_value", "m.z", 26)]

        pending = await disconnect_while(proxy, ctx, watch)
        await writer.register_variable("m.b", "integer", 5)  # registered while away
        await writer.update_variable("m.a", 2)  # changed while away
        await writer.register_variable("n.x", "integer", 0)  # not covered
        proxy.unblock()
        first = await within(pending, "the resumed stream")
        second = await within(watch.next(), "the resumed stream")
        # m.z, unchanged, is not sent again (since_versions by name).
        assert seen([first, second]) == [("initial_value", "m.a", 2), ("initial_value", "m.b", 5)]
        assert (first.version, second.version) == (2, 1)

        # Live again, patterns and all.
        await wait_for_watchers(ctx, 1)
        await writer.register_variable("m.c", "integer", 3)
        await writer.update_variable("m.z", 27)
        got = [await within(watch.next(), "m.c"), await within(watch.next(), "m.z")]
        assert seen(got) == [("registered", "m.c", 3), ("value_change", "m.z", 27)]
    finally:
        await watch.close()
    await wait_for_watchers(ctx, 0)


async def test_a_watch_that_saw_nothing_still_gets_what_was_registered_while_away(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    """include_initial=False and nothing delivered: the resume asks for initial values (documented)."""
    await ctx.register_variable("m.a", "integer", 1)
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variables(patterns=["m.*"], include_initial=False, reconnect=True))
    try:
        await watch.start()
        pending = await disconnect_while(proxy, ctx, watch)
        await writer.register_variable("m.b", "integer", 5)
        proxy.unblock()
        got = [await within(pending, "the resumed stream"), await within(watch.next(), "m.b")]
        # With no versions to list, every current value comes, m.a's included.
        assert seen(got) == [("initial_value", "m.a", 1), ("initial_value", "m.b", 5)]
        await wait_for_watchers(ctx, 1)
        await writer.update_variable("m.b", 6)
        assert seen([await within(watch.next(), "m.b's change")]) == [("value_change", "m.b", 6)]
    finally:
        await watch.close()


async def test_pattern_variables_deleted_or_replaced_while_away_are_reported_deleted(
    ctx: AnyMode, writer: AnyMode, proxy: TcpProxy, channel_factory: Any
) -> None:
    a_id = await ctx.register_variable("m.a", "integer", 1)
    b_id = await ctx.register_variable("m.b", "integer", 2)
    await writer.update_variable("m.b", 3)  # version 2
    watcher = context_for(ctx.session_id, channel_factory(proxy.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variables(patterns=["m.*"], reconnect=True))
    try:
        assert seen([await watch.next(), await watch.next()]) == [
            ("initial_value", "m.a", 1),
            ("initial_value", "m.b", 3),
        ]
        pending = await disconnect_while(proxy, ctx, watch)
        await writer.delete_variable("m.a")
        await writer.delete_variable("m.b")
        new_b = await writer.register_variable("m.b", "integer", 100)  # version 1 < 2: must still come
        proxy.unblock()
        got = [await within(pending, "m.a's deletion")]
        got += [await within(watch.next(), "more") for _ in range(2)]
        assert [(u.update_type, u.variable_id, u.value) for u in got] == [
            ("deleted", a_id, 1),
            ("deleted", b_id, 3),
            ("initial_value", new_b, 100),
        ]
        assert (got[0].source, got[0].timestamp) == (None, None)  # made by the client
        assert not watch.watch.closed
        await wait_for_watchers(ctx, 1)
        await writer.register_variable("m.a", "integer", 7)
        assert seen([await within(watch.next(), "m.a again")]) == [("registered", "m.a", 7)]
    finally:
        await watch.close()


async def test_a_pattern_watch_survives_a_server_restart(
    mode: str, channel_factory: Any, restartable_server: RestartableServer
) -> None:
    srv = restartable_server
    session_id = f"pattern-restart-{uuid.uuid4().hex}"
    writer = AnyMode(context_for(session_id, channel_factory(srv.address)))
    await writer.initialize()
    await writer.register_variable("t.one", "integer", 1)
    watcher = context_for(session_id, channel_factory(srv.address, FAST_RECONNECT))
    watch = WatchDriver(watcher.watch_variables(patterns=["t.*"], reconnect=True))
    try:
        assert seen([await watch.next()]) == [("initial_value", "t.one", 1)]
        pending = asyncio.ensure_future(watch.until(lambda u: u.name == "t.two"))
        srv.restart()
        again = AnyMode(context_for(session_id, channel_factory(srv.address)))
        await again.initialize()
        await again.register_variable("t.one", "integer", 10)
        await again.register_variable("t.two", "integer", 20)
        after = await within(pending, "the variables of the new session")
        # Registered before or after the watch came back: as initial_value or registered.
        assert {u.update_type for u in after} <= {"initial_value", "registered"}
        assert ("t.two", 20) in [(u.name, u.value) for u in after]
        await wait_for_watchers(again, 1)
        await again.register_variable("t.three", "integer", 30)
        assert seen([await within(watch.next(), "t.three")]) == [("registered", "t.three", 30)]
    finally:
        await watch.close()
