"""Access control of the standalone server, through ``snakepit_bridge.connect`` / ``connect_async``.

Real binary, real grpc. The promises:

- with a token (``SNAKEPIT_BRIDGE_TOKEN`` or ``--token-file``) every BridgeService
  call needs ``authorization: Bearer <token>``: without it, or with a wrong
  one, it is UNAUTHENTICATED, with one message whatever the session id, and
  nothing changes; with it (``connect(token=...)``) everything works;
- a session token (``snakepit-bridge-server session-token SID``) allows that
  session's calls only: others are PERMISSION_DENIED;
- ``connect()`` takes address, token and root certificates from the environment;
- TLS (``--tls-cert``/``--tls-key``) and mutual TLS (``--tls-client-ca``);
- a non-loopback ``--listen`` needs TLS and a token, or ``--allow-insecure``;
- health checking needs no token, server reflection does;
- a refused call is logged once, with the peer and without the token.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import snakepit_bridge
from _support import (
    HEALTH_SERVING,
    STARTUP_DEADLINE,
    Certificate,
    ServerProcess,
    TcpProxy,
    certificate_authority,
    client_certificate,
    health_check,
    list_services,
    self_signed_certificate,
    server_binary,
    server_env,
    start_server,
    within,
)
from google.protobuf import any_pb2
from snakepit_bridge import (
    AsyncSessionContext,
    AuthenticationError,
    BridgeUnavailableError,
    PermissionDeniedError,
    SessionContext,
    connect,
    connect_async,
)
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc

TOKEN_ENV = "SNAKEPIT_BRIDGE_TOKEN"
ADDRESS_ENV = "SNAKEPIT_BRIDGE_ADDRESS"
ROOTS_ENV = "SNAKEPIT_BRIDGE_ROOT_CERTIFICATES"
NO_TOKEN = {TOKEN_ENV: None}  # server_env change: the server starts without a token
DEADLINE = 10.0  # seconds a call may take before the test fails (never a timing claim)
BRIDGE = "snakepit.bridge.BridgeService"
C = grpc.StatusCode


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here sees the caller's SNAKEPIT_BRIDGE_* settings (connect() would read them)."""
    for name in (TOKEN_ENV, ADDRESS_ENV, ROOTS_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server_token() -> str:
    return secrets.token_urlsafe(32)  # 43 visible ASCII characters


@pytest.fixture
def token_server(tmp_path: Path, server_token: str) -> Iterator[ServerProcess]:
    """A server with a token (from the environment), plaintext on loopback."""
    proc = start_server(tmp_path, env={TOKEN_ENV: server_token})
    yield proc
    proc.terminate()


@pytest.fixture
def admin(token_server: ServerProcess, server_token: str) -> Iterator[grpc.Channel]:
    """A channel with the server token."""
    with connect(token_server.address, token=server_token) as channel:
        yield channel


@pytest.fixture
def session_with_x(admin: grpc.Channel) -> Iterator[str]:
    """A session (made with the server token) holding the integer variable ``x`` = 1."""
    ctx = SessionContext(f"sec-{uuid.uuid4().hex[:12]}", admin)
    ctx.initialize()
    ctx.register_variable("x", "integer", 1)
    yield ctx.session_id
    ctx.cleanup(force=True)


@pytest.fixture
def certs(tmp_path: Path) -> Certificate:
    """A self-signed certificate for localhost / 127.0.0.1."""
    return self_signed_certificate(tmp_path / "certs")


@pytest.fixture
def tls_server(tmp_path: Path, certs: Certificate) -> Iterator[ServerProcess]:
    """A TLS server without a token, on loopback."""
    proc = start_server(tmp_path, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), env=NO_TOKEN)
    yield proc
    proc.terminate()


def mint_session_token(session_id: str, secret: str | None = None, token_file: Path | None = None) -> str:
    """``snakepit-bridge-server session-token SESSION_ID``, the secret from the environment or ``--token-file``."""
    args = [str(server_binary()), "session-token", session_id]
    if token_file is not None:
        args += ["--token-file", str(token_file)]
    result = subprocess.run(
        args, env=server_env({TOKEN_ENV: secret}), capture_output=True, stdin=subprocess.DEVNULL, timeout=DEADLINE
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    token = result.stdout.decode().strip()
    assert token and len(token.split()) == 1, result.stdout
    return token


# --------------------------------------------------------------------------- every BridgeService call


def _value(n: int) -> any_pb2.Any:
    return any_pb2.Any(type_url="type.googleapis.com/snakepit.integer", value=json.dumps(n).encode())


# A valid request of every BridgeService method, for a session id (variable "x" is an integer).
REQUESTS: dict[str, Callable[[str], Any]] = {
    "Ping": lambda sid: pb2.PingRequest(message="hello"),
    "InitializeSession": lambda sid: pb2.InitializeSessionRequest(session_id=sid),
    "CleanupSession": lambda sid: pb2.CleanupSessionRequest(session_id=sid, force=True),
    "GetSession": lambda sid: pb2.GetSessionRequest(session_id=sid),
    "Heartbeat": lambda sid: pb2.HeartbeatRequest(session_id=sid),
    "GetVariable": lambda sid: pb2.GetVariableRequest(session_id=sid, variable_identifier="x"),
    "SetVariable": lambda sid: pb2.SetVariableRequest(session_id=sid, variable_identifier="x", value=_value(99)),
    "GetVariables": lambda sid: pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=["x"]),
    "SetVariables": lambda sid: pb2.BatchSetVariablesRequest(session_id=sid, updates={"x": _value(98)}),
    "RegisterVariable": lambda sid: pb2.RegisterVariableRequest(
        session_id=sid, name="y", type="integer", initial_value=_value(1)
    ),
    "ListVariables": lambda sid: pb2.ListVariablesRequest(session_id=sid),
    "DeleteVariable": lambda sid: pb2.DeleteVariableRequest(session_id=sid, variable_identifier="x"),
    "WatchVariables": lambda sid: pb2.WatchVariablesRequest(
        session_id=sid, variable_identifiers=["x"], include_initial_values=True
    ),
}
METHODS = sorted(REQUESTS)


def refused(channel: grpc.Channel, method: str, session_id: str) -> grpc.RpcError:
    """Make the call (for WatchVariables: open the stream and read); it must fail: returns the error."""
    stub: Any = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
    request = REQUESTS[method](session_id)
    try:
        if method == "WatchVariables":
            stream = stub.WatchVariables(request, timeout=DEADLINE)
            try:
                next(stream)
            finally:
                stream.cancel()
        else:
            getattr(stub, method)(request, timeout=DEADLINE)
    except grpc.RpcError as err:
        return err
    pytest.fail(f"{method} succeeded", pytrace=False)


def assert_untouched(admin: grpc.Channel, session_id: str) -> None:
    """The session still holds exactly x = 1 at version 1: the refused calls changed nothing."""
    ctx = SessionContext(session_id, admin)
    info = ctx.get_variable_info("x")
    assert (info.value, info.version) == (1, 1)
    assert [v.name for v in ctx.list_variables()] == ["x"]


def test_there_are_thirteen_bridge_methods() -> None:
    """REQUESTS covers BridgeService: a method added to the proto must be added here."""
    service = pb2.DESCRIPTOR.services_by_name["BridgeService"]
    assert sorted(m.name for m in service.methods) == METHODS
    assert len(METHODS) == 13


@pytest.mark.parametrize("method", METHODS)
def test_every_call_without_a_token_is_unauthenticated(
    token_server: ServerProcess, admin: grpc.Channel, session_with_x: str, method: str
) -> None:
    with grpc.insecure_channel(token_server.address) as bare:
        err = refused(bare, method, session_with_x)
    assert err.code() == C.UNAUTHENTICATED, (err.code(), err.details())
    assert isinstance(snakepit_bridge.errors.error_from_rpc_error(err), AuthenticationError)
    assert_untouched(admin, session_with_x)


@pytest.mark.parametrize("method", METHODS)
def test_a_wrong_token_is_unauthenticated_alike_for_existing_and_missing_sessions(
    token_server: ServerProcess, admin: grpc.Channel, session_with_x: str, server_token: str, method: str
) -> None:
    wrong = secrets.token_urlsafe(32)
    with connect(token_server.address, token=wrong) as channel:
        existing = refused(channel, method, session_with_x)
        missing = refused(channel, method, f"no-such-{uuid.uuid4().hex[:12]}")
    for err in (existing, missing):
        assert err.code() == C.UNAUTHENTICATED, (err.code(), err.details())
        assert wrong not in (err.details() or "") and server_token not in (err.details() or "")
    # Nothing tells the caller whether the session exists.
    assert existing.details() == missing.details()
    # Every trailer alike, save the HTTP `date` hyper stamps on the response (whole seconds: the two
    # calls may straddle one); it says when, never what.
    assert _without_date(existing.trailing_metadata()) == _without_date(missing.trailing_metadata())
    assert_untouched(admin, session_with_x)


def _without_date(metadata: Any) -> dict[str, Any]:
    return {k: v for k, v in (metadata or ()) if k != "date"}


def test_a_token_that_differs_only_in_the_last_character_is_refused(
    token_server: ServerProcess, server_token: str
) -> None:
    almost = server_token[:-1] + ("A" if server_token[-1] != "A" else "B")
    for token in (almost, server_token + "x", server_token[:-1]):
        with connect(token_server.address, token=token) as channel, pytest.raises(AuthenticationError) as err:
            SessionContext("s", channel).ping()
        assert err.value.code == C.UNAUTHENTICATED
        assert not isinstance(err.value, PermissionDeniedError)


# --------------------------------------------------------------------------- the server token works


def test_the_server_token_opens_every_call(token_server: ServerProcess, server_token: str) -> None:
    """A full SessionContext round trip, including a watch that receives an update."""
    with (
        connect(token_server.address, token=server_token) as channel,
        connect(token_server.address, token=server_token) as other,
    ):
        ctx = SessionContext(f"round-{uuid.uuid4().hex[:12]}", channel)
        writer = SessionContext(ctx.session_id, other)
        assert ctx.ping("hi") == "hi"
        assert ctx.initialize({"who": "python"}) == {}
        ctx.register_variable("x", "integer", 1)
        ctx.register_variable("gone", "string", "bye")
        assert ctx.get_variable("x") == 1 and "x" in ctx and ctx.heartbeat()
        assert ctx.get_session()["metadata"] == {"who": "python"}
        with ctx.watch_variable("x") as watch:
            assert next(watch).value == 1
            writer.update_variable("x", 2)
            update = next(watch)
        assert (update.update_type, update.value, update.version) == ("value_change", 2, 2)
        assert dict(writer.update_variables({"x": 3})) == {"x": True}
        assert dict(ctx.get_variables(["x"])) == {"x": 3}
        assert sorted(v.name for v in ctx.list_variables()) == ["gone", "x"]
        ctx.delete_variable("gone")
        assert ctx.cleanup() == 1


async def test_the_server_token_opens_every_call_with_connect_async(
    token_server: ServerProcess, server_token: str
) -> None:
    async with (
        connect_async(token_server.address, token=server_token) as channel,
        connect_async(token_server.address, token=server_token) as other,
    ):
        ctx = AsyncSessionContext(f"round-{uuid.uuid4().hex[:12]}", channel)
        writer = AsyncSessionContext(ctx.session_id, other)
        assert await ctx.ping("hi") == "hi"
        await ctx.initialize()
        await ctx.register_variable("x", "integer", 1)
        assert await ctx.get_variable("x") == 1
        watch = ctx.watch_variable("x")
        try:
            assert (await within(anext(watch), "the initial value")).value == 1
            await writer.update_variable("x", 2)
            update = await within(anext(watch), "the update")
        finally:
            await watch.aclose()
        assert (update.update_type, update.value, update.version) == ("value_change", 2, 2)
        assert dict(await ctx.get_variables(["x"])) == {"x": 2}
        assert await ctx.cleanup() == 1


async def test_connect_async_without_a_token_is_unauthenticated(token_server: ServerProcess) -> None:
    async with connect_async(token_server.address, token="") as channel:
        ctx = AsyncSessionContext("s", channel)
        with pytest.raises(AuthenticationError) as err:
            await ctx.ping()
        assert err.value.code == C.UNAUTHENTICATED
        watch = ctx.watch_variable("x")
        with pytest.raises(AuthenticationError):
            await within(anext(watch), "the refusal")
        await watch.aclose()


def test_a_token_file_works_like_the_environment(tmp_path: Path, server_token: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(server_token + "\n")
    proc = start_server(tmp_path, "--token-file", str(token_file), env=NO_TOKEN)
    try:
        with grpc.insecure_channel(proc.address) as bare, pytest.raises(AuthenticationError):
            SessionContext("s", bare).ping()
        with connect(proc.address, token=server_token) as channel:
            assert SessionContext("s", channel).ping("ok") == "ok"
        session_token = mint_session_token("file-session", token_file=token_file)
        with connect(proc.address, token=session_token) as channel:
            ctx = SessionContext("file-session", channel)
            ctx.initialize()
            assert ctx.get_session()["session_id"] == "file-session"
    finally:
        proc.terminate()


@pytest.mark.parametrize("token", ["short", "x" * 31, "has a space in it and is long enough to pass"])
def test_an_unacceptable_token_stops_the_server_at_startup(token: str) -> None:
    result = subprocess.run(
        [str(server_binary()), "--listen", "127.0.0.1:0"],
        env=server_env({TOKEN_ENV: token}),
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=STARTUP_DEADLINE,
    )
    assert result.returncode != 0
    assert b"listening on" not in result.stdout
    assert token.encode() not in result.stderr


# --------------------------------------------------------------------------- session tokens


def test_a_session_token_opens_its_session_only(
    token_server: ServerProcess, admin: grpc.Channel, session_with_x: str, server_token: str
) -> None:
    other = SessionContext(f"other-{uuid.uuid4().hex[:12]}", admin)
    other.initialize()
    other.register_variable("x", "integer", 1)
    token = mint_session_token(session_with_x, secret=server_token)
    assert token != server_token

    with connect(token_server.address, token=token) as channel:
        ctx = SessionContext(session_with_x, channel)
        assert ctx.get_variable("x") == 1
        ctx.update_variable("x", 2)
        assert ctx.heartbeat() and ctx.get_session()["variable_count"] == 1
        with ctx.watch_variable("x") as watch:
            assert next(watch).value == 2
            SessionContext(session_with_x, admin).update_variable("x", 3)
            assert next(watch).value == 3

        for sid in (other.session_id, f"no-such-{uuid.uuid4().hex[:12]}"):
            elsewhere = SessionContext(sid, channel)
            with pytest.raises(PermissionDeniedError) as denied:
                elsewhere.get_variable("x")
            assert denied.value.code == C.PERMISSION_DENIED
            assert isinstance(denied.value, AuthenticationError)  # catching AuthenticationError catches both
            with pytest.raises(PermissionDeniedError):
                elsewhere.update_variable("x", 5)
            with pytest.raises(PermissionDeniedError), elsewhere.watch_variable("x") as watch:
                next(watch)
        with pytest.raises(PermissionDeniedError):
            ctx.ping()
        with pytest.raises(grpc.RpcError) as err:
            list_services(channel)
        assert err.value.code() == C.PERMISSION_DENIED
        # The calls refused for the session token: UNAUTHENTICATED for none of them.
        for method in METHODS:
            if method != "Ping":
                assert refused(channel, method, other.session_id).code() == C.PERMISSION_DENIED, method
        assert refused(channel, "Ping", session_with_x).code() == C.PERMISSION_DENIED

    assert other.get_variable_info("x").version == 1  # the refusals changed nothing
    assert SessionContext(session_with_x, admin).get_variable("x") == 3


async def test_a_session_token_with_connect_async(
    token_server: ServerProcess, admin: grpc.Channel, session_with_x: str, server_token: str
) -> None:
    token = mint_session_token(session_with_x, secret=server_token)
    async with connect_async(token_server.address, token=token) as channel:
        ctx = AsyncSessionContext(session_with_x, channel)
        await ctx.update_variable("x", 2)
        watch = ctx.watch_variable("x")
        try:
            assert (await within(anext(watch), "the initial value")).value == 2
            await asyncio.to_thread(SessionContext(session_with_x, admin).update_variable, "x", 3)
            assert (await within(anext(watch), "the update")).value == 3
        finally:
            await watch.aclose()
        with pytest.raises(PermissionDeniedError):
            await AsyncSessionContext("another", channel).get_variable("x")
        with pytest.raises(PermissionDeniedError):
            await ctx.ping()


def test_a_session_token_of_another_secret_is_unauthenticated(token_server: ServerProcess, session_with_x: str) -> None:
    token = mint_session_token(session_with_x, secret=secrets.token_urlsafe(32))
    with connect(token_server.address, token=token) as channel, pytest.raises(AuthenticationError) as err:
        SessionContext(session_with_x, channel).get_variable("x")
    assert err.value.code == C.UNAUTHENTICATED


# --------------------------------------------------------------------------- connect(): defaults and arguments


def test_connect_reads_address_and_token_from_the_environment(
    token_server: ServerProcess, server_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADDRESS_ENV, token_server.address)
    monkeypatch.setenv(TOKEN_ENV, server_token)
    with connect() as channel:
        assert SessionContext("s", channel).ping("env") == "env"
    monkeypatch.setenv(TOKEN_ENV, "")  # empty: no token
    with connect() as channel, pytest.raises(AuthenticationError):
        SessionContext("s", channel).ping()


async def test_connect_async_reads_address_and_token_from_the_environment(
    token_server: ServerProcess, server_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADDRESS_ENV, token_server.address)
    monkeypatch.setenv(TOKEN_ENV, server_token)
    async with connect_async() as channel:
        assert await AsyncSessionContext("s", channel).ping("env") == "env"


@pytest.mark.parametrize("make", [connect, connect_async])
def test_connect_without_an_address_names_the_variable(make: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match=ADDRESS_ENV):
        make()


@pytest.mark.parametrize("make", [connect, connect_async])
def test_connect_refuses_contradictory_arguments(make: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="certificate_chain"):
        make("127.0.0.1:1", private_key=b"key")
    with pytest.raises(ValueError, match="certificate_chain"):
        make("127.0.0.1:1", certificate_chain=b"chain")
    with pytest.raises(ValueError, match="tls=False"):
        make("127.0.0.1:1", root_certificates=b"roots", tls=False)
    secret = "sec ret" + "x" * 40
    with pytest.raises(ValueError) as err:
        make("127.0.0.1:1", token=secret)
    assert secret not in str(err.value)


class _Recorder(grpc.GenericRpcHandler):
    """A grpc server handler that answers every call and records the metadata it came with.

    Methods by name: ``/t.S/Unary`` echoes, ``/t.S/Stream`` (unary-stream) and
    ``/t.S/Both`` (stream-stream) answer ``b"a"``, ``/t.S/StreamIn`` (stream-unary) ``b"s"``.
    """

    def __init__(self) -> None:
        self.seen: list[list[tuple[str, str | bytes]]] = []

    def _record(self, context: grpc.ServicerContext) -> None:
        self.seen.append([(key, value) for key, value in context.invocation_metadata()])

    def _unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self._record(context)
        return request

    def _stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        yield b"a"

    def _stream_in(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        self._record(context)
        list(requests)
        return b"s"

    def _both(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        self._record(context)
        list(requests)
        yield b"a"

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method == "/t.S/Stream":
            return grpc.unary_stream_rpc_method_handler(self._stream)
        if method == "/t.S/StreamIn":
            return grpc.stream_unary_rpc_method_handler(self._stream_in)
        if method == "/t.S/Both":
            return grpc.stream_stream_rpc_method_handler(self._both)
        return grpc.unary_unary_rpc_method_handler(self._unary)


@pytest.fixture
def recorder() -> Iterator[tuple[str, _Recorder]]:
    """An in-process grpc server recording every call's metadata: (address, recorder)."""
    handler = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", handler
    server.stop(None)


def _authorization(metadata: list[tuple[str, str | bytes]]) -> list[str | bytes]:
    return [value for key, value in metadata if key == "authorization"]


def _mine(handler: _Recorder) -> list[list[str | bytes]]:
    return [[value for key, value in seen if key == "x-mine"] for seen in handler.seen]


def test_the_plaintext_token_header_keeps_the_callers_metadata(recorder: tuple[str, _Recorder]) -> None:
    """Every call kind and way to call carries the header, after the caller's metadata, which is not changed."""
    address, handler = recorder
    caller_list = [("x-mine", "1")]
    with connect(address, token="t0ken-value") as channel:
        unary = channel.unary_unary("/t.S/Unary")
        assert unary(b"x", metadata=caller_list, timeout=DEADLINE) == b"x"
        assert unary(b"x", timeout=DEADLINE) == b"x"
        assert list(channel.unary_stream("/t.S/Stream")(b"x", metadata=(("x-mine", "2"),), timeout=DEADLINE)) == [b"a"]
        assert channel.stream_unary("/t.S/StreamIn")(iter([b"x"]), metadata=[("x-mine", "3")], timeout=DEADLINE)
        assert list(channel.stream_stream("/t.S/Both")(iter([b"x"]), timeout=DEADLINE)) == [b"a"]
        response, call = unary.with_call(b"w", metadata=[("x-mine", "4")], timeout=DEADLINE)
        assert response == b"w" and call.code() == C.OK
        assert unary.future(b"f", timeout=DEADLINE, metadata=[("x-mine", "5")]).result(DEADLINE) == b"f"
        assert unary.future(b"f", timeout=DEADLINE).result(DEADLINE) == b"f"
        assert unary(b"p", DEADLINE, [("x-mine", "6")]) == b"p"  # metadata given positionally
        stream_in = channel.stream_unary("/t.S/StreamIn")
        assert stream_in.with_call(iter([b"x"]), metadata=[("x-mine", "7")], timeout=DEADLINE)[0] == b"s"
        assert stream_in.future(iter([b"x"]), timeout=DEADLINE).result(DEADLINE) == b"s"
    assert caller_list == [("x-mine", "1")]  # the caller's object is not changed
    assert _mine(handler) == [["1"], [], ["2"], ["3"], [], ["4"], ["5"], [], ["6"], ["7"], []]
    assert [_authorization(seen) for seen in handler.seen] == [["Bearer t0ken-value"]] * 11


async def test_the_plaintext_token_header_keeps_the_callers_metadata_aio(recorder: tuple[str, _Recorder]) -> None:
    address, handler = recorder
    caller_metadata = grpc.aio.Metadata(("x-mine", "1"))
    caller_list = [("x-mine", "2")]
    async with connect_async(address, token="t0ken-value") as channel:
        assert await channel.unary_unary("/t.S/Unary")(b"x", metadata=caller_metadata, timeout=DEADLINE) == b"x"
        assert await channel.unary_unary("/t.S/Unary")(b"x", timeout=DEADLINE) == b"x"
        got = [m async for m in channel.unary_stream("/t.S/Stream")(b"x", metadata=caller_list)]
        assert got == [b"a"]
        assert await channel.stream_unary("/t.S/StreamIn")(iter([b"x"]), metadata=[("x-mine", "3")])
        assert [m async for m in channel.stream_stream("/t.S/Both")(iter([b"x"]))] == [b"a"]
        both = channel.stream_stream("/t.S/Both")(iter([b"x"]), DEADLINE, caller_metadata)  # given positionally
        assert [m async for m in both] == [b"a"]
    # The caller's objects are not changed.
    assert list(caller_metadata) == [("x-mine", "1")] and len(caller_metadata) == 1
    assert caller_list == [("x-mine", "2")]
    assert _mine(handler) == [["1"], [], ["2"], ["3"], [], ["1"]]
    assert [_authorization(seen) for seen in handler.seen] == [["Bearer t0ken-value"]] * 6


def test_a_token_channel_is_a_grpc_channel(recorder: tuple[str, _Recorder]) -> None:
    """What SessionContext checks, and what typing promises: grpc's own classes, and a working subscribe."""
    address, handler = recorder
    with connect(address, token="t0ken-value") as channel:
        assert isinstance(channel, grpc.Channel)
        assert isinstance(channel.unary_unary("/t.S/Unary"), grpc.UnaryUnaryMultiCallable)
        assert isinstance(channel.unary_stream("/t.S/Stream"), grpc.UnaryStreamMultiCallable)
        assert isinstance(channel.stream_unary("/t.S/StreamIn"), grpc.StreamUnaryMultiCallable)
        assert isinstance(channel.stream_stream("/t.S/Both"), grpc.StreamStreamMultiCallable)
        ready = threading.Event()

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state == grpc.ChannelConnectivity.READY:
                ready.set()

        channel.subscribe(watch, try_to_connect=True)
        assert ready.wait(DEADLINE)  # the inner channel's states reach the callback
        channel.unsubscribe(watch)
        # Generated stubs pass grpc's own keywords through (the recorder echoes a Ping's bytes: a PingResponse).
        assert SessionContext("s", channel).ping("hi") == "hi"
    assert _authorization(handler.seen[0]) == ["Bearer t0ken-value"]


async def test_a_token_channel_is_a_grpc_aio_channel(recorder: tuple[str, _Recorder]) -> None:
    address, handler = recorder
    channel = connect_async(address, token="t0ken-value")
    assert isinstance(channel, grpc.aio.Channel)
    assert isinstance(channel.unary_unary("/t.S/Unary"), grpc.aio.UnaryUnaryMultiCallable)
    assert isinstance(channel.unary_stream("/t.S/Stream"), grpc.aio.UnaryStreamMultiCallable)
    assert isinstance(channel.stream_unary("/t.S/StreamIn"), grpc.aio.StreamUnaryMultiCallable)
    assert isinstance(channel.stream_stream("/t.S/Both"), grpc.aio.StreamStreamMultiCallable)
    assert channel.get_state(try_to_connect=True) in set(grpc.ChannelConnectivity)
    await asyncio.wait_for(channel.channel_ready(), DEADLINE)
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    assert await AsyncSessionContext("s", channel).ping("hi") == "hi"  # the recorder echoes: a PingResponse
    await channel.close()
    assert channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.SHUTDOWN
    assert _authorization(handler.seen[0]) == ["Bearer t0ken-value"]


def test_no_token_sends_no_header(recorder: tuple[str, _Recorder]) -> None:
    address, handler = recorder
    with connect(address, token="") as channel:
        channel.unary_unary("/t.S/Unary")(b"x", timeout=DEADLINE)
    assert _authorization(handler.seen[0]) == []


# --------------------------------------------------------------------------- TLS


def test_tls_with_root_certificates(tls_server: ServerProcess, certs: Certificate) -> None:
    with connect(tls_server.address, root_certificates=certs.cert_pem(), token="") as channel:
        assert SessionContext("s", channel).ping("tls") == "tls"


async def test_tls_with_root_certificates_aio(tls_server: ServerProcess, certs: Certificate) -> None:
    async with connect_async(tls_server.address, root_certificates=certs.cert_pem()) as channel:
        assert await AsyncSessionContext("s", channel).ping("tls") == "tls"


def test_tls_roots_from_the_environment_turn_tls_on(
    tls_server: ServerProcess, certs: Certificate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ADDRESS_ENV, tls_server.address)
    monkeypatch.setenv(ROOTS_ENV, str(certs.cert))
    with connect() as channel:
        assert SessionContext("s", channel).ping("env") == "env"


def test_a_plaintext_client_cannot_talk_to_a_tls_server(tls_server: ServerProcess) -> None:
    with grpc.insecure_channel(tls_server.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            pb2_grpc.BridgeServiceStub(channel).Ping(pb2.PingRequest(), timeout=DEADLINE)  # type: ignore[no-untyped-call]
        assert err.value.code() == C.UNAVAILABLE
        with pytest.raises(BridgeUnavailableError):
            SessionContext("s", channel).ping()


def test_a_tls_client_refuses_a_server_certificate_it_does_not_trust(tls_server: ServerProcess, tmp_path: Path) -> None:
    stranger = self_signed_certificate(tmp_path / "stranger")
    with connect(tls_server.address, root_certificates=stranger.cert_pem()) as channel:
        with pytest.raises(BridgeUnavailableError) as err:
            SessionContext("s", channel).ping()
        assert err.value.code == C.UNAVAILABLE


def test_tls_with_a_token(tmp_path: Path, certs: Certificate, server_token: str) -> None:
    """Over TLS the token travels as call credentials."""
    proc = start_server(
        tmp_path, "--tls-cert", str(certs.cert), "--tls-key", str(certs.key), env={TOKEN_ENV: server_token}
    )
    try:
        with connect(proc.address, root_certificates=certs.cert_pem(), token=server_token) as channel:
            ctx = SessionContext("tls-token", channel)
            ctx.initialize()
            assert ctx.cleanup() == 0
        with connect(proc.address, root_certificates=certs.cert_pem(), token="") as channel:
            with pytest.raises(AuthenticationError) as err:
                SessionContext("tls-token", channel).ping()
            assert err.value.code == C.UNAUTHENTICATED
    finally:
        proc.terminate()


@pytest.fixture
def mtls(tmp_path: Path, certs: Certificate) -> Iterator[tuple[ServerProcess, Certificate]]:
    """A server requiring client certificates signed by a test CA: (server, CA)."""
    ca = certificate_authority(tmp_path / "ca")
    proc = start_server(
        tmp_path,
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        "--tls-client-ca",
        str(ca.cert),
        env=NO_TOKEN,
    )
    yield proc, ca
    proc.terminate()


def test_mutual_tls_accepts_a_client_certificate_of_its_ca(
    mtls: tuple[ServerProcess, Certificate], certs: Certificate, tmp_path: Path
) -> None:
    proc, ca = mtls
    client = client_certificate(tmp_path / "client", ca)
    with connect(
        proc.address,
        root_certificates=certs.cert_pem(),
        private_key=client.key_pem(),
        certificate_chain=client.cert_pem(),
    ) as channel:
        assert SessionContext("s", channel).ping("mtls") == "mtls"


async def test_mutual_tls_with_connect_async(
    mtls: tuple[ServerProcess, Certificate], certs: Certificate, tmp_path: Path
) -> None:
    proc, ca = mtls
    client = client_certificate(tmp_path / "client", ca)
    async with connect_async(
        proc.address,
        root_certificates=certs.cert_pem(),
        private_key=client.key_pem(),
        certificate_chain=client.cert_pem(),
    ) as channel:
        assert await AsyncSessionContext("s", channel).ping("mtls") == "mtls"


def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls: tuple[ServerProcess, Certificate], certs: Certificate
) -> None:
    proc, _ = mtls
    with connect(proc.address, root_certificates=certs.cert_pem()) as channel:
        with pytest.raises(BridgeUnavailableError) as err:
            SessionContext("s", channel).ping()
        assert err.value.code == C.UNAVAILABLE


def test_mutual_tls_refuses_a_client_certificate_of_another_ca(
    mtls: tuple[ServerProcess, Certificate], certs: Certificate, tmp_path: Path
) -> None:
    proc, _ = mtls
    client = client_certificate(tmp_path / "client", certificate_authority(tmp_path / "other-ca", "other"))
    with connect(
        proc.address,
        root_certificates=certs.cert_pem(),
        private_key=client.key_pem(),
        certificate_chain=client.cert_pem(),
    ) as channel:
        with pytest.raises(BridgeUnavailableError) as err:
            SessionContext("s", channel).ping()
        assert err.value.code == C.UNAVAILABLE


# --------------------------------------------------------------------------- binding beyond loopback


def _refused_start(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [str(server_binary()), "--listen", "0.0.0.0:0", *args],
            env=server_env(env),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=STARTUP_DEADLINE,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the server did not exit; stdout: {exc.stdout!r}", pytrace=False)


@pytest.mark.parametrize("setup", ["nothing", "token only", "tls only"])
def test_a_non_loopback_address_needs_tls_and_a_token(
    setup: str, certs: Certificate, server_token: str, tmp_path: Path
) -> None:
    tls = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)] if setup == "tls only" else []
    result = _refused_start(*tls, env={TOKEN_ENV: server_token if setup == "token only" else None})
    assert result.returncode != 0
    assert b"listening on" not in result.stdout
    assert b"--allow-insecure" in result.stderr, result.stderr


def test_allow_insecure_serves_on_a_non_loopback_address(tmp_path: Path) -> None:
    proc = start_server(tmp_path, "--allow-insecure", listen="0.0.0.0:0", env=NO_TOKEN)
    try:
        port = proc.address.rsplit(":", 1)[1]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert SessionContext("s", channel).ping("open") == "open"
    finally:
        assert proc.terminate() == 0, proc.log()


def test_tls_and_a_token_serve_on_a_non_loopback_address(tmp_path: Path, certs: Certificate, server_token: str) -> None:
    proc = start_server(
        tmp_path,
        "--tls-cert",
        str(certs.cert),
        "--tls-key",
        str(certs.key),
        listen="0.0.0.0:0",
        env={TOKEN_ENV: server_token},
    )
    try:
        port = proc.address.rsplit(":", 1)[1]
        with connect(f"127.0.0.1:{port}", root_certificates=certs.cert_pem(), token=server_token) as channel:
            assert SessionContext("s", channel).ping("safe") == "safe"
    finally:
        assert proc.terminate() == 0, proc.log()


# --------------------------------------------------------------------------- health and reflection


def test_health_checking_needs_no_token(token_server: ServerProcess) -> None:
    with grpc.insecure_channel(token_server.address) as bare:
        assert health_check(bare) == HEALTH_SERVING
        assert health_check(bare, BRIDGE) == HEALTH_SERVING


def test_reflection_needs_the_token(token_server: ServerProcess, server_token: str) -> None:
    with grpc.insecure_channel(token_server.address) as bare:
        with pytest.raises(grpc.RpcError) as err:
            list_services(bare)
        assert err.value.code() == C.UNAUTHENTICATED
    with connect(token_server.address, token=server_token) as channel:
        assert BRIDGE in list_services(channel)


# --------------------------------------------------------------------------- logs


def _unauthenticated_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "unauthenticated" in line.lower()]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_refused_call_is_logged_once_with_the_peer_and_without_the_token(
    tmp_path: Path, server_token: str, log_format: str
) -> None:
    proc = start_server(tmp_path, "--log-format", log_format, env={TOKEN_ENV: server_token})
    proxy = TcpProxy(proc.address)
    wrong = secrets.token_urlsafe(32)
    try:
        with connect(proxy.address, token=wrong) as channel, pytest.raises(AuthenticationError):
            SessionContext("s", channel).get_variable("x")
        [peer] = proxy.upstream_addresses
    finally:
        proxy.close()
        assert proc.terminate() == 0  # the log is complete once the process has exited
    log = proc.log()
    [line] = _unauthenticated_lines(log)
    if log_format == "json":
        for raw in log.splitlines():
            if raw.strip():
                json.loads(raw)  # every line is a JSON object
        assert json.loads(line).get("level") == "WARN", line
    else:
        assert re.search(r"\bWARN\b", line), line
    assert peer in line, (peer, line)
    assert wrong not in log and server_token not in log


def test_without_a_token_on_loopback_the_server_warns(tmp_path: Path) -> None:
    proc = start_server(tmp_path, env=NO_TOKEN)
    with grpc.insecure_channel(proc.address) as channel:
        assert SessionContext("s", channel).ping("open") == "open"  # served without authentication
    assert proc.terminate() == 0
    assert any(re.search(r"\bWARN\b", line) for line in proc.log().splitlines()), proc.log()
