"""Fixtures: the real server binary on an ephemeral port, and a fresh session per test.

The server is ``$SNAKEPIT_SERVER_BIN`` or ``<repo>/target/release/snakepit-bridge-server``;
a missing binary fails the tests that need it (it never skips them).

The channels of the fixtures come from ``connect`` / ``connect_async`` on the
transport ``$SNAKEPIT_BRIDGE_TRANSPORT`` names (unset: ``auto``, native for
plaintext), so the whole suite runs on either: scripts/test.sh runs it with
``auto`` on the newest pins and with ``grpc`` on the floor pins.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

# Test the package in this repo even when it is not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "priv" / "python"))

from _support import (  # noqa: E402
    AnyMode,
    RestartableServer,
    ServerProcess,
    TcpProxy,
    context_for,
    free_port,
    start_server,
)
from snakepit_bridge import AsyncSessionContext, SessionContext, connect, connect_async  # noqa: E402

MODES = ["blocking", "aio"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole run, stopped with SIGTERM at the end."""
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    proc.terminate()


@pytest.fixture(scope="session")
def server_address(server: ServerProcess) -> str:
    """``host:port`` of the shared server."""
    return server.address


@pytest.fixture
def session_id(request: pytest.FixtureRequest) -> str:
    """A session id no other test uses."""
    return f"py-{request.node.name[:80]}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def blocking_channel(server_address: str) -> Iterator[grpc.Channel]:
    with connect(server_address, token="") as channel:
        yield channel


@pytest.fixture
async def aio_channel(server_address: str) -> AsyncIterator[grpc.aio.Channel]:
    channel = connect_async(server_address, token="")
    yield channel
    await channel.close()


@pytest.fixture
def blocking_ctx(session_id: str, blocking_channel: grpc.Channel) -> Iterator[SessionContext]:
    """An initialized session on a blocking channel, cleaned up afterwards."""
    ctx = SessionContext(session_id, blocking_channel)
    ctx.initialize()
    yield ctx
    ctx.cleanup(force=True)


@pytest.fixture
async def aio_ctx(session_id: str, aio_channel: grpc.aio.Channel) -> AsyncIterator[AsyncSessionContext]:
    """An initialized session on a grpc.aio channel, cleaned up afterwards."""
    ctx = AsyncSessionContext(session_id, aio_channel)
    await ctx.initialize()
    yield ctx
    await ctx.cleanup(force=True)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def channel_factory(mode: str, server_address: str) -> AsyncIterator[Any]:
    """Makes channels of the test's mode (to the shared server unless ``address`` is given); all closed at the end."""
    opened: list[Any] = []

    def make(address: str | None = None, options: list[tuple[str, Any]] | None = None) -> Any:
        target = address or server_address
        if mode == "aio":
            ch = connect_async(target, token="", options=options)
        else:
            ch = connect(target, token="", options=options)
        opened.append(ch)
        return ch

    yield make
    for ch in opened:
        if mode == "aio":
            await ch.close()
        else:
            ch.close()


@pytest.fixture
async def ctx(mode: str, session_id: str, channel_factory: Any) -> AsyncIterator[AnyMode]:
    """An initialized session in the test's mode (SessionContext, then AsyncSessionContext), every method awaitable.

    Tests using it run twice, once per mode.
    """
    wrapped = AnyMode(context_for(session_id, channel_factory()))
    await wrapped.initialize()
    yield wrapped
    await wrapped.cleanup(force=True)


@pytest.fixture
def other_ctx(mode: str, channel_factory: Any) -> Any:
    """Returns AnyMode contexts on new channels of the test's mode: ``other_ctx(session_id)``."""

    def make(session_id: str) -> AnyMode:
        return AnyMode(context_for(session_id, channel_factory()))

    return make


@pytest.fixture
def restartable_server(tmp_path: Path) -> Iterator[RestartableServer]:
    """A server of this test's own on a fixed free port, which the test may stop and restart."""
    srv = RestartableServer(tmp_path, free_port())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def proxy(server_address: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the shared server that can cut its connections."""
    fwd = TcpProxy(server_address)
    yield fwd
    fwd.close()
