"""A server that goes away: calls fail promptly with BridgeUnavailableError, never hang."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import grpc
import grpc.aio
import pytest
from _support import start_server
from snakepit_bridge import AsyncSessionContext, BridgeUnavailableError, SessionContext, SessionNotFoundError

PROMPT = 5.0  # seconds; the default per-call deadline is 30


def test_blocking_calls_after_the_server_is_gone(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        with grpc.insecure_channel(server.address) as channel:
            ctx = SessionContext(f"gone-{uuid.uuid4().hex}", channel)
            ctx.initialize()
            assert ctx.ping("up") == "up"
            assert server.terminate() == 0, server.log()
            for call in (lambda: ctx.ping("down"), ctx.heartbeat, lambda: ctx.get_variable("x")):
                started = time.monotonic()
                with pytest.raises(BridgeUnavailableError) as info:
                    call()
                assert time.monotonic() - started < PROMPT
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.terminate()


async def test_aio_calls_after_the_server_is_gone(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            ctx = AsyncSessionContext(f"gone-{uuid.uuid4().hex}", channel)
            await ctx.initialize()
            assert await ctx.ping("up") == "up"
            assert server.terminate() == 0, server.log()
            for call in (lambda: ctx.ping("down"), ctx.heartbeat, lambda: ctx.get_variable("x")):
                started = time.monotonic()
                with pytest.raises(BridgeUnavailableError) as info:
                    await call()
                assert time.monotonic() - started < PROMPT
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        server.terminate()


def test_nothing_listening_is_unavailable() -> None:
    with grpc.insecure_channel("127.0.0.1:1") as channel:
        started = time.monotonic()
        with pytest.raises(BridgeUnavailableError):
            SessionContext("s", channel).ping()
        assert time.monotonic() - started < PROMPT


def test_closed_channel_is_unavailable(server_address: str) -> None:
    channel = grpc.insecure_channel(server_address)
    ctx = SessionContext("s", channel)
    assert ctx.ping("open") == "open"
    channel.close()
    with pytest.raises(BridgeUnavailableError, match="closed"):
        ctx.ping()


async def test_closed_aio_channel_is_unavailable(server_address: str) -> None:
    channel = grpc.aio.insecure_channel(server_address)
    ctx = AsyncSessionContext("s", channel)
    assert await ctx.ping("open") == "open"
    await channel.close()
    with pytest.raises(BridgeUnavailableError):
        await ctx.ping()


def test_session_ttl_expires_idle_sessions(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--session-ttl", "1")
    try:
        with grpc.insecure_channel(server.address) as channel:
            ctx = SessionContext(f"ttl-{uuid.uuid4().hex}", channel)
            ctx.initialize()
            ctx.register_variable("x", "integer", 1)
            # Heartbeats keep it alive past the TTL ...
            for _ in range(4):
                time.sleep(0.4)
                assert ctx.heartbeat() is True
            # ... and idleness ends it. (Polling would refresh it: look once.)
            time.sleep(2.5)
            assert ctx.heartbeat() is False
            with pytest.raises(SessionNotFoundError):
                ctx.get_variable("x")
    finally:
        server.terminate()
