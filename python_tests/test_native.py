"""The native transport (``snakepit_bridge_native``, tonic underneath): how it is chosen, and what is its own.

The whole suite runs on both transports (the fixtures' channels follow
``$SNAKEPIT_BRIDGE_TRANSPORT``; scripts/test.sh runs it native on the newest
pins and grpcio on the floor pins). These tests ask for the native transport
by name wherever it matters, so they test it in both runs: the choice
(``transport=``, the environment, what ``auto`` falls back on), TLS through
rustls, the message size limits, a watch's bounded buffer, a fork, and the
grpcio channel a native one opens for what the extension does not do.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import snakepit_bridge.channels as channels_module
from _support import (
    Certificate,
    ServerProcess,
    certificate_authority,
    client_certificate,
    list_services,
    self_signed_certificate,
    server_certificate,
    start_server,
    wait_for_watchers_blocking,
)
from snakepit_bridge import (
    AsyncSessionContext,
    AuthenticationError,
    BridgeError,
    BridgeUnavailableError,
    SessionContext,
    connect,
    connect_async,
)
from snakepit_bridge._native import AsyncNativeChannel, NativeChannel
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc
from snakepit_bridge.channels import TRANSPORT_ENV

C = grpc.StatusCode
TOKEN_ENV = "SNAKEPIT_BRIDGE_TOKEN"


@pytest.fixture
def no_transport_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TRANSPORT_ENV, raising=False)
    monkeypatch.delenv(TOKEN_ENV, raising=False)


# --------------------------------------------------------------------------- choosing


async def test_auto_is_native_for_plaintext_and_still_a_grpc_channel(
    server_address: str, no_transport_env: None
) -> None:
    with connect(server_address) as channel:
        assert isinstance(channel, NativeChannel) and isinstance(channel, grpc.Channel)
        assert SessionContext("native-auto", channel).ping("hi") == "hi"
    async with connect_async(server_address) as aio_channel:
        assert isinstance(aio_channel, AsyncNativeChannel) and isinstance(aio_channel, grpc.aio.Channel)
        assert await AsyncSessionContext("native-auto", aio_channel).ping("hi") == "hi"


def test_grpc_on_request_by_argument_or_environment(
    server_address: str, no_transport_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with connect(server_address, transport="grpc") as channel:
        assert not isinstance(channel, NativeChannel)
        assert SessionContext("grpc-asked", channel).ping("hi") == "hi"
    monkeypatch.setenv(TRANSPORT_ENV, "grpc")
    with connect(server_address) as channel:
        assert not isinstance(channel, NativeChannel)
    with connect(server_address, transport="native") as channel:  # the argument wins over the environment
        assert isinstance(channel, NativeChannel)


def test_an_unknown_transport_is_refused(server_address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="transport must be one of auto, native, grpc; got 'tonic'"):
        connect(server_address, transport="tonic")
    monkeypatch.setenv(TRANSPORT_ENV, "fast")
    with pytest.raises(ValueError, match="got 'fast'"):
        connect_async(server_address)


def test_options_native_does_not_know_go_to_grpc_or_are_refused(server_address: str, no_transport_env: None) -> None:
    keepalive = [("grpc.keepalive_time_ms", 60_000)]
    with connect(server_address, options=keepalive) as channel:
        assert not isinstance(channel, NativeChannel)
        assert SessionContext("opts", channel).ping("hi") == "hi"
    with pytest.raises(ValueError, match="grpc.keepalive_time_ms"):
        connect(server_address, options=keepalive, transport="native")
    sizes = [
        ("grpc.max_receive_message_length", 1 << 20),
        ("grpc.max_send_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),
    ]
    with connect(server_address, options=sizes) as channel:
        assert isinstance(channel, NativeChannel)


def test_without_the_extension_auto_is_grpc_and_native_is_refused(
    server_address: str, no_transport_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a machine where the extension did not install: the package's own switch, not the module, is patched.
    monkeypatch.setattr(channels_module, "NATIVE_AVAILABLE", False)
    with connect(server_address) as channel:
        assert not isinstance(channel, NativeChannel)
        assert SessionContext("no-ext", channel).ping("hi") == "hi"
    with pytest.raises(ValueError, match="snakepit_bridge_native extension is not installed"):
        connect(server_address, transport="native")


# --------------------------------------------------------------------------- TLS (rustls)


@pytest.fixture
def ca_signed(tmp_path: Path) -> tuple[Certificate, Certificate]:
    """(CA, server certificate it signed)."""
    ca = certificate_authority(tmp_path / "ca")
    return ca, server_certificate(tmp_path / "server", ca)


@pytest.fixture
def tls_server(tmp_path: Path, ca_signed: tuple[Certificate, Certificate]) -> Iterator[ServerProcess]:
    _, cert = ca_signed
    proc = start_server(tmp_path, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key), env={TOKEN_ENV: "s" * 40})
    yield proc
    proc.terminate()


def test_tls_is_native_only_when_asked(
    tls_server: ServerProcess, ca_signed: tuple[Certificate, Certificate], no_transport_env: None
) -> None:
    ca, _ = ca_signed
    with connect(tls_server.address, root_certificates=ca.cert_pem(), token="s" * 40) as channel:
        assert not isinstance(channel, NativeChannel)  # auto: grpcio's TLS
    with connect(tls_server.address, root_certificates=ca.cert_pem(), token="s" * 40, transport="native") as channel:
        assert isinstance(channel, NativeChannel)
        ctx = SessionContext("tls-native", channel)
        ctx.initialize()
        ctx.register_variable("x", "integer", 1)
        assert ctx.get_variable("x") == 1
        assert ctx.cleanup() == 1
    with connect(tls_server.address, root_certificates=ca.cert_pem(), token="", transport="native") as channel:
        with pytest.raises(AuthenticationError) as err:
            SessionContext("tls-native", channel).ping()
        assert err.value.code == C.UNAUTHENTICATED


async def test_native_tls_with_connect_async(
    tls_server: ServerProcess, ca_signed: tuple[Certificate, Certificate], no_transport_env: None
) -> None:
    ca, _ = ca_signed
    async with connect_async(
        tls_server.address, root_certificates=ca.cert_pem(), token="s" * 40, transport="native"
    ) as channel:
        assert await AsyncSessionContext("tls-native-aio", channel).ping("tls") == "tls"


def test_native_tls_needs_root_certificates(server_address: str, no_transport_env: None) -> None:
    with pytest.raises(ValueError, match="TLS needs root_certificates"):
        connect(server_address, tls=True, transport="native")


def test_native_tls_refuses_a_self_signed_ca_certificate_as_the_servers_own(
    tmp_path: Path, no_transport_env: None
) -> None:
    """The one difference from grpcio's TLS that a test setup meets: why ``auto`` keeps TLS on grpcio."""
    cert = self_signed_certificate(tmp_path / "self")
    proc = start_server(tmp_path, "--tls-cert", str(cert.cert), "--tls-key", str(cert.key))
    try:
        with connect(proc.address, root_certificates=cert.cert_pem(), transport="native") as channel:
            with pytest.raises(BridgeUnavailableError, match="certificate"):
                SessionContext("self-signed", channel).ping()
        with connect(proc.address, root_certificates=cert.cert_pem()) as channel:  # auto: grpcio accepts it
            assert SessionContext("self-signed", channel).ping("ok") == "ok"
    finally:
        proc.terminate()


def test_native_mutual_tls(tmp_path: Path, ca_signed: tuple[Certificate, Certificate], no_transport_env: None) -> None:
    ca, cert = ca_signed
    clients_ca = certificate_authority(tmp_path / "clients-ca", "clients-ca")
    proc = start_server(
        tmp_path,
        "--tls-cert",
        str(cert.cert),
        "--tls-key",
        str(cert.key),
        "--tls-client-ca",
        str(clients_ca.cert),
    )
    try:
        client = client_certificate(tmp_path / "client", clients_ca)
        with connect(
            proc.address,
            root_certificates=ca.cert_pem(),
            private_key=client.key_pem(),
            certificate_chain=client.cert_pem(),
            transport="native",
        ) as channel:
            assert SessionContext("mtls", channel).ping("mtls") == "mtls"
        with connect(proc.address, root_certificates=ca.cert_pem(), transport="native") as channel:
            with pytest.raises(BridgeUnavailableError):
                SessionContext("mtls", channel).ping()
    finally:
        proc.terminate()


# --------------------------------------------------------------------------- limits, buffering, lifecycle


def test_message_size_limits_are_resource_exhausted_as_on_grpcio(server_address: str, session_id: str) -> None:
    with connect(server_address, token="") as setup:
        ctx = SessionContext(session_id, setup)
        ctx.initialize()
        ctx.register_variable("big", "string", "x" * 5000)
    try:
        for transport in ("native", "grpc"):
            small = [("grpc.max_receive_message_length", 1000), ("grpc.max_send_message_length", 2000)]
            with connect(server_address, token="", options=small, transport=transport) as channel:
                ctx = SessionContext(session_id, channel)
                with pytest.raises(BridgeError) as received:
                    ctx.get_variable("big")
                assert received.value.code == C.RESOURCE_EXHAUSTED, transport
                with pytest.raises(BridgeError) as sent:
                    ctx.update_variable("big", "y" * 3000)
                assert sent.value.code == C.RESOURCE_EXHAUSTED, transport
    finally:
        with connect(server_address, token="") as cleanup:
            ctx = SessionContext(session_id, cleanup)
            assert ctx.get_variable("big") == "x" * 5000  # the refused write changed nothing
            ctx.cleanup(force=True)


def test_a_watch_that_is_not_read_holds_a_bounded_buffer_and_ends_on_the_latest_value(
    server_address: str, session_id: str
) -> None:
    """The extension stops reading at its buffer, flow control reaches the server, and the server coalesces.

    5,000 writes while the watcher reads nothing: several times what the
    buffer (64 messages) and the HTTP/2 stream window (64 KiB, some 500 such
    messages) hold, so most must have been coalesced away by the server, and
    the last value read is the last written.
    """
    with connect(server_address, token="", transport="native") as channel:
        ctx = SessionContext(session_id, channel)
        ctx.initialize()
        ctx.register_variable("n", "integer", 0)
        watch = ctx.watch_variables(["n"], include_initial=False).start()
        wait_for_watchers_blocking(ctx, 1)
        writes = 5_000
        for v in range(1, writes + 1):
            ctx.update_variable("n", v)
        received = 0
        last = None
        while last != writes:
            last = next(watch).value
            received += 1
        watch.close()
        assert received < writes / 2, received
        ctx.cleanup(force=True)


def test_closing_a_native_channel_ends_its_watches(server_address: str, session_id: str) -> None:
    channel = connect(server_address, token="", transport="native")
    ctx = SessionContext(session_id, channel)
    ctx.initialize()
    ctx.register_variable("x", "integer", 1)
    watch = ctx.watch_variables(["x"])
    assert next(watch).value == 1
    channel.close()
    with pytest.raises(BridgeUnavailableError):
        next(watch)
    with connect(server_address, token="") as other:
        checker = SessionContext(session_id, other)
        wait_for_watchers_blocking(checker, 0)  # the server dropped the subscription
        checker.cleanup(force=True)


def _ping_in_child(channel: NativeChannel, out: Any) -> None:
    try:
        SessionContext("forked", channel).ping()
        out.put("no error")
    except RuntimeError as exc:
        out.put(str(exc))


def test_a_channel_made_before_a_fork_says_so_in_the_child(server_address: str) -> None:
    with connect(server_address, token="", transport="native") as channel:
        assert SessionContext("forked", channel).ping("parent") == "parent"  # the runtime runs in the parent
        fork = multiprocessing.get_context("fork")
        out = fork.Queue()
        child = fork.Process(target=_ping_in_child, args=(channel, out))
        child.start()
        child.join(30)
        assert out.get(timeout=5) == "this channel was made before a fork; make a new one in this process"
        with connect(server_address, token="", transport="native") as fresh:  # and a new channel works, here too
            assert SessionContext("forked", fresh).ping("again") == "again"


async def test_a_streams_code_and_trailers_come_at_its_end_with_messages_still_unread(
    server_address: str, session_id: str
) -> None:
    async with connect_async(server_address, token="", transport="native") as channel:
        ctx = AsyncSessionContext(session_id, channel)
        await ctx.initialize()
        await ctx.register_variable("x", "integer", 1)
        stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.WatchVariables(
            pb2.WatchVariablesRequest(session_id=session_id, variable_identifiers=["x"], include_initial_values=True)
        )
        await call.initial_metadata()
        await ctx.cleanup(force=True)  # the server sends session_closed, then ends the stream
        assert await asyncio.wait_for(call.code(), 10) == C.OK  # nothing read yet
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)
        kinds = [message.update_type async for message in call]
        assert kinds == ["initial_value", "session_closed"]


async def test_a_cancelled_await_cancels_the_call(server_address: str, session_id: str) -> None:
    async with connect_async(server_address, token="", transport="native") as channel:
        ctx = AsyncSessionContext(session_id, channel)
        await ctx.initialize()
        await ctx.register_variable("x", "integer", 1)
        watch = ctx.watch_variables(["x"])
        assert (await watch.__anext__()).value == 1
        pending = asyncio.ensure_future(watch.__anext__())
        await asyncio.sleep(0.05)
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        for _ in range(200):
            if (await ctx.get_session())["watcher_count"] == 0:
                break
            await asyncio.sleep(0.025)
        assert (await ctx.get_session())["watcher_count"] == 0
        await ctx.cleanup(force=True)


_BLOCKED_WATCHER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from snakepit_bridge import SessionContext, connect
    with connect(sys.argv[1], token="", transport="native") as channel:
        watch = SessionContext(sys.argv[2], channel).watch_variables(["x"], include_initial=False).start()
        try:
            print("ready", flush=True)
            next(watch)  # nothing is ever written: blocks in the extension, without the GIL
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """
)


def test_ctrl_c_interrupts_a_blocked_native_call(server_address: str, session_id: str) -> None:
    with connect(server_address, token="", transport="native") as channel:
        ctx = SessionContext(session_id, channel)
        ctx.initialize()
        ctx.register_variable("x", "integer", 1)
        package = str(Path(__file__).resolve().parent.parent / "priv" / "python")
        child = subprocess.Popen(
            [sys.executable, "-c", _BLOCKED_WATCHER, server_address, session_id, package],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            time.sleep(0.5)  # let it reach the blocking next(): what this test is about
            child.send_signal(signal.SIGINT)
            out, _ = child.communicate(timeout=10)
            assert out.strip() == "interrupted" and child.returncode == 0
        finally:
            child.kill()
        ctx.cleanup(force=True)


def test_what_the_extension_does_not_do_goes_to_a_grpcio_channel(tmp_path: Path, no_transport_env: None) -> None:
    """Reflection is a bidirectional stream: the native channel opens grpcio for it, with the same token."""
    proc = start_server(tmp_path, env={TOKEN_ENV: "r" * 40})
    try:
        with connect(proc.address, token="r" * 40, transport="native") as channel:
            assert "snakepit.bridge.BridgeService" in list_services(channel)
            assert SessionContext("fallback", channel).ping("still native") == "still native"
        with connect(proc.address, token="wrong" * 8, transport="native") as channel:
            with pytest.raises(grpc.RpcError) as err:
                list_services(channel)
            assert err.value.code() == C.UNAUTHENTICATED
    finally:
        proc.terminate()


def test_one_waker_per_event_loop_however_many_watches(server_address: str, session_id: str) -> None:
    """A busy asyncio process pays one socket pair for all its native calls, not one per call."""

    async def main() -> int:
        fds_before = len(os.listdir("/proc/self/fd"))
        async with connect_async(server_address, token="", transport="native") as channel:
            ctx = AsyncSessionContext(session_id, channel)
            await ctx.initialize()
            await ctx.register_variable("x", "integer", 1)
            watches = [ctx.watch_variables(["x"]) for _ in range(20)]
            for watch in watches:
                assert (await watch.__anext__()).value == 1
            await ctx.update_variable("x", 2)
            for watch in watches:
                assert (await watch.__anext__()).value == 2
            opened = len(os.listdir("/proc/self/fd")) - fds_before
            for watch in watches:
                await watch.aclose()
            await ctx.cleanup(force=True)
        return opened

    # One TCP connection, one waker socket pair, and whatever the loop itself holds: not 20 of anything.
    assert asyncio.run(main()) <= 6
