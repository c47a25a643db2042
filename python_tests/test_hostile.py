"""A hostile client against the real standalone server: each finding, replayed.

Every test starts its own ``snakepit-bridge-server`` with small limits, speaks
the raw protocol (generated stubs, plain ``grpc`` channels, raw sockets) and
checks three things besides the finding itself: the server is still running
and answers Ping, its resident memory stays under ``RSS_BOUND_MIB``, and where
a request was refused the store is unchanged (version and value read back).

The server is embedded in BEAM nodes in production, so a crash, an abort or
a stall here would take the user's node down with it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import selectors
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _support import ServerProcess, server_binary, start_server
from google.protobuf import any_pb2
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc

C = grpc.StatusCode
RSS_BOUND_MIB = 300
CALL_DEADLINE = 10.0  # a generous gRPC deadline: a liveness check, never a speed claim
TYPE_PREFIX = "type.googleapis.com/snakepit."
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_VALUE_BYTES = DEFAULT_MAX_MESSAGE_BYTES - 212_992  # 3,981,312
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)

# The client must never be the one enforcing a size: it accepts far more than
# the server may send, so an oversized answer shows up as the server's fault.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    # Its own TCP connection: gRPC Python shares one between channels with equal arguments.
    ("grpc.use_local_subchannel_pool", 1),
]

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS_ACK = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00"


# --------------------------------------------------------------------------- helpers


class Bridge:
    """One server of a test's own, with a default channel and stub to it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.address = server.address
        self.pid = server.process.pid
        self._channels: list[grpc.Channel] = []
        self.channel = self.new_channel()
        self.stub = pb2_grpc.BridgeServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def new_channel(self) -> grpc.Channel:
        """A channel on a TCP connection of its own."""
        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._channels.append(channel)
        return channel

    def new_stub(self) -> Any:
        """A stub on a new channel (and so a new connection)."""
        return pb2_grpc.BridgeServiceStub(self.new_channel())  # type: ignore[no-untyped-call]

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.address.rsplit(":", 1)
        return host, int(port)

    def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            channel.close()

    def assert_healthy(self, stub: Any = None) -> None:
        """The process runs, answers Ping (on a fresh connection) and stays under RSS_BOUND_MIB."""
        code = self.server.process.poll()
        assert code is None, f"the server exited with {code}; log:\n{self.server.log()[-4000:]}"
        ping = (
            _ping_until_ok(self, CALL_DEADLINE)
            if stub is None
            else stub.Ping(pb2.PingRequest(message="alive?"), timeout=CALL_DEADLINE)
        )
        assert ping.message == "alive?"
        rss = rss_mib(self.pid)
        assert rss < RSS_BOUND_MIB, f"server RSS {rss:.0f} MiB is over the bound of {RSS_BOUND_MIB} MiB"


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """Starts servers with the given flags; at the end each must still be running, then is stopped."""
    started: list[Bridge] = []

    def start(*flags: str) -> Bridge:
        bridge = Bridge(start_server(tmp_path, *flags))
        started.append(bridge)
        return bridge

    yield start
    dead = []
    for bridge in started:
        bridge.close()
        if bridge.server.process.poll() is not None:
            dead.append(f"exit {bridge.server.process.returncode}; log:\n{bridge.server.log()[-4000:]}")
        bridge.server.terminate()
    assert not dead, "a server died during the test: " + "\n".join(dead)


def rss_mib(pid: int) -> float:
    """VmRSS of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


def fd_count(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def _ping_until_ok(bridge: Bridge, deadline: float) -> Any:
    """Ping on fresh channels until one answers (connections may be refused for a moment)."""
    end = time.monotonic() + deadline
    last: grpc.RpcError | None = None
    while time.monotonic() < end:
        with grpc.insecure_channel(bridge.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
            try:
                return stub.Ping(pb2.PingRequest(message="alive?"), timeout=min(3.0, max(0.5, end - time.monotonic())))
            except grpc.RpcError as err:
                last = err
        time.sleep(0.05)
    pytest.fail(f"no Ping answered within {deadline}s; last error: {last!r}", pytrace=False)


def any_json(var_type: str, value: Any, binary: bool = False) -> any_pb2.Any:
    """A JSON-path Any (``value`` as JSON, or raw bytes as given)."""
    payload = value if isinstance(value, bytes) else json.dumps(value).encode()
    suffix = ".binary" if binary else ""
    return any_pb2.Any(type_url=f"{TYPE_PREFIX}{var_type}{suffix}", value=payload)


def new_session(stub: Any, prefix: str = "hostile") -> str:
    sid = f"{prefix}-{uuid.uuid4().hex[:12]}"
    stub.InitializeSession(pb2.InitializeSessionRequest(session_id=sid), timeout=CALL_DEADLINE)
    return sid


def register(
    stub: Any,
    sid: str,
    name: str,
    var_type: str,
    value: Any,
    constraints: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
) -> str:
    response = stub.RegisterVariable(
        pb2.RegisterVariableRequest(
            session_id=sid,
            name=name,
            type=var_type,
            initial_value=any_json(var_type, value),
            constraints_json=json.dumps(constraints) if constraints else "",
            metadata=metadata or {},
        ),
        timeout=CALL_DEADLINE,
    )
    assert response.success, response.error_message
    return str(response.variable_id)


def read(stub: Any, sid: str, name: str) -> pb2.Variable:
    return stub.GetVariable(
        pb2.GetVariableRequest(session_id=sid, variable_identifier=name), timeout=CALL_DEADLINE
    ).variable


def read_value(stub: Any, sid: str, name: str) -> tuple[int, Any]:
    """``(version, value decoded from its JSON)`` of a variable on the JSON path."""
    var = read(stub, sid, name)
    return var.version, json.loads(var.value.value)


def set_value(stub: Any, sid: str, name: str, var_type: str, value: Any, metadata: dict[str, str] | None = None) -> int:
    response = stub.SetVariable(
        pb2.SetVariableRequest(
            session_id=sid, variable_identifier=name, value=any_json(var_type, value), metadata=metadata or {}
        ),
        timeout=CALL_DEADLINE,
    )
    assert response.success, response.error_message
    return int(response.new_version)


def refused(
    call: Callable[..., Any], *args: Any, codes: tuple[grpc.StatusCode, ...] = (C.RESOURCE_EXHAUSTED,), **kwargs: Any
) -> grpc.RpcError:
    """Runs a call that must end with one of ``codes``; returns the error."""
    kwargs.setdefault("timeout", CALL_DEADLINE)
    try:
        result = call(*args, **kwargs)
    except grpc.RpcError as err:
        assert err.code() in codes, f"expected one of {codes}, got {err.code()}: {err.details()!r}"
        return err
    pytest.fail(f"expected one of {codes}, but the call succeeded with {str(result)[:300]!r}", pytrace=False)


def assert_over_limit(err: Any, setting: str, value: int) -> None:
    """RESOURCE_EXHAUSTED naming the setting and its value, with the error kind in the trailers."""
    assert err.code() == C.RESOURCE_EXHAUSTED, (err.code(), err.details())
    details = err.details() or ""
    assert f"over the limit {setting} = {value}" in details, details
    kinds = [v for k, v in (err.trailing_metadata() or ()) if k == "snakepit-error-kind"]
    assert kinds == ["resource_exhausted"], err.trailing_metadata()


class Watch:
    """A WatchVariables stream read on a thread into a queue; its end is ``("end", code, details)``."""

    def __init__(self, stub: Any, sid: str, names: list[str], include_initial: bool = True) -> None:
        self.call = stub.WatchVariables(
            pb2.WatchVariablesRequest(
                session_id=sid, variable_identifiers=names, include_initial_values=include_initial
            )
        )
        self.items: queue.Queue[Any] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for update in self.call:
                self.items.put(update)
            self.items.put(("end", C.OK, ""))
        except grpc.RpcError as err:
            self.items.put(("end", err.code(), err.details()))

    def next(self, timeout: float = CALL_DEADLINE) -> Any:
        """The next update or the end marker; fails the test after ``timeout`` seconds."""
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no watch message within {timeout}s", pytrace=False)

    def update(self, timeout: float = CALL_DEADLINE) -> pb2.VariableUpdate:
        """The next message, which must be an update (not the stream's end)."""
        item = self.next(timeout)
        assert not isinstance(item, tuple), f"the watch ended: {item}"
        return item

    def quiet_for(self, seconds: float) -> None:
        """Asserts that nothing (no update, no end) arrives for ``seconds``."""
        try:
            item = self.items.get(timeout=seconds)
        except queue.Empty:
            return
        pytest.fail(f"the watch got {item} while it should have stayed quiet", pytrace=False)

    def ended_with(self, timeout: float = CALL_DEADLINE) -> tuple[Any, str]:
        """The status the stream ends with (skipping updates)."""
        end = time.monotonic() + timeout
        while True:
            item = self.next(max(0.01, end - time.monotonic()))
            if isinstance(item, tuple):
                return item[1], item[2]

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(CALL_DEADLINE)


def poll(condition: Callable[[], Any], what: str, deadline: float = CALL_DEADLINE, interval: float = 0.02) -> Any:
    """Polls until ``condition()`` is truthy; fails after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline}s waiting for {what}", pytrace=False)
        time.sleep(interval)


def watcher_count(stub: Any, sid: str) -> int:
    return int(stub.GetSession(pb2.GetSessionRequest(session_id=sid), timeout=CALL_DEADLINE).watcher_count)


# --------------------------------------------------------------------------- 1. huge tensor shapes

HUGE_SHAPES: list[Any] = [
    {"shape": [1099511627776], "data": []},
    {"shape": [4294967296, 4294967296, 4294967296], "data": []},  # the product overflows 64 bits
    {"shape": [18446744073709551615], "data": []},
]


def test_huge_tensor_shapes_are_refused_without_allocating(launch: Callable[..., Bridge]) -> None:
    """A tensor claiming 2^40 elements with no data (before the fix: SIGABRT on allocation) is refused
    on every door (RegisterVariable, SetVariable, the compact and the map form of SetVariables, the
    binary path) with INVALID_ARGUMENT or RESOURCE_EXHAUSTED, and the existing tensor is unchanged."""
    b = launch()
    sid = new_session(b.stub)
    small = {"shape": [2], "data": [1.0, 2.0]}
    register(b.stub, sid, "t", "tensor", small)
    bad = (C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED)

    for i, huge in enumerate(HUGE_SHAPES):
        refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid, name=f"t{i}", type="tensor", initial_value=any_json("tensor", huge)
            ),
            codes=bad,
        )
        refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(session_id=sid, variable_identifier="t", value=any_json("tensor", huge)),
            codes=bad,
        )
        # The binary path: metadata claiming the shape, no numbers.
        meta = {"shape": huge["shape"], "dtype": "float64", "binary_format": "raw_le"}
        refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(
                session_id=sid, variable_identifier="t", value=any_json("tensor", meta, binary=True)
            ),
            codes=bad,
        )
        refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid, name=f"tb{i}", type="tensor", initial_value=any_json("tensor", meta, binary=True)
            ),
            codes=bad,
        )

    for huge in HUGE_SHAPES:
        payload = json.dumps([huge]).encode()
        for atomic in (True, False):
            compact = pb2.BatchSetVariablesRequest(
                session_id=sid, value_identifiers=["t"], values_json=payload, atomic=atomic
            )
            mapped = pb2.BatchSetVariablesRequest(
                session_id=sid, updates={"t": any_json("tensor", huge)}, atomic=atomic
            )
            for request in (compact, mapped):
                try:
                    response = b.stub.SetVariables(request, timeout=CALL_DEADLINE)
                except grpc.RpcError as err:
                    assert err.code() in bad, (err.code(), err.details())
                else:
                    assert not response.success and "t" in response.errors, response

    version, value = read_value(b.stub, sid, "t")
    assert version == 1 and value == small, (version, value)
    listed = b.stub.ListVariables(pb2.ListVariablesRequest(session_id=sid), timeout=CALL_DEADLINE).variables
    assert [v.name for v in listed] == ["t"], [v.name for v in listed]
    b.assert_healthy(b.stub)


# --------------------------------------------------------------------------- 2. connections


def _wait_for_eof(
    socks: list[socket.socket], deadline: float, on_tick: Callable[[], None] = lambda: None, ack_settings: bool = False
) -> list[socket.socket]:
    """Reads every socket until the server closes it (EOF or reset); returns those still open at the deadline.

    With ``ack_settings``, a SETTINGS frame from the server is acknowledged, as a real HTTP/2 client does.
    """
    sel = selectors.DefaultSelector()
    pending: dict[socket.socket, bytes] = {}
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
        pending[sock] = b""
    end = time.monotonic() + deadline
    try:
        while pending and time.monotonic() < end:
            on_tick()
            for key, _ in sel.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(sock)
                    del pending[sock]
                    continue
                if ack_settings:
                    buf = pending[sock] + data
                    while len(buf) >= 9:
                        length = int.from_bytes(buf[:3], "big")
                        if len(buf) < 9 + length:
                            break
                        frame_type, flags = buf[3], buf[4]
                        if frame_type == 0x4 and not flags & 0x1:
                            try:
                                sock.sendall(SETTINGS_ACK)
                            except OSError:
                                pass
                        buf = buf[9 + length :]
                    pending[sock] = buf
    finally:
        sel.close()
    return list(pending)


def _connect_silent(bridge: Bridge, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection(bridge.host_port, timeout=CALL_DEADLINE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        socks.append(sock)
    return socks


def test_silent_connections_are_capped_and_closed(launch: Callable[..., Bridge]) -> None:
    """300 raw TCP connections that never send the HTTP/2 preface cannot make the server hold more than
    --max-connections descriptors for them, are all closed by the server within a few seconds
    (over the limit at once, the rest after --handshake-timeout), and a real client is served after."""
    b = launch("--max-connections", "20", "--handshake-timeout", "1")
    baseline = fd_count(b.pid)  # no connection yet: channels connect on their first call
    peak = baseline

    def sample() -> None:
        nonlocal peak
        peak = max(peak, fd_count(b.pid))

    socks = []
    try:
        for _ in range(300):
            socks.extend(_connect_silent(b, 1))
            sample()
        still_open = _wait_for_eof(socks, deadline=15.0, on_tick=sample)
        assert not still_open, f"{len(still_open)} of 300 silent connections were still open after 15 s"
    finally:
        for sock in socks:
            sock.close()
    assert peak <= 20 + 30, f"the server held {peak} descriptors (baseline {baseline}) for silent connections"
    b.assert_healthy()


def test_connections_over_the_limit_are_refused_and_freed(launch: Callable[..., Bridge]) -> None:
    """With every connection slot held (by silent clients under a long handshake timeout), a real client
    is refused at once with UNAVAILABLE rather than queued; once the holders leave it is served."""
    b = launch("--max-connections", "3", "--handshake-timeout", "60")
    baseline = fd_count(b.pid)  # no connection yet: channels connect on their first call
    holders = _connect_silent(b, 3)
    try:
        poll(lambda: fd_count(b.pid) >= baseline + 3, "the server to accept the three holders")
        with grpc.insecure_channel(b.address, options=CHANNEL_OPTIONS) as channel:
            stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
            err = refused(stub.Ping, pb2.PingRequest(message="x"), codes=(C.UNAVAILABLE,), timeout=CALL_DEADLINE)
            assert err.code() == C.UNAVAILABLE
    finally:
        for sock in holders:
            sock.close()
    b.assert_healthy()


def test_idle_connection_is_closed_but_a_watching_one_stays(launch: Callable[..., Bridge]) -> None:
    """With --idle-timeout 1, an HTTP/2 connection that never makes a call is closed by the server, while
    a channel whose only activity is an open WatchVariables stream stays up past the timeout and
    still receives updates."""
    b = launch("--idle-timeout", "1")
    sid = new_session(b.stub)
    register(b.stub, sid, "x", "integer", 1)

    idle = socket.create_connection(b.host_port, timeout=CALL_DEADLINE)
    try:
        idle.sendall(HTTP2_PREFACE + EMPTY_SETTINGS)
        still_open = _wait_for_eof([idle], deadline=10.0, ack_settings=True)
        assert not still_open, "an HTTP/2 connection with no call was not closed within 10 s of --idle-timeout 1"
    finally:
        idle.close()

    watch_stub = b.new_stub()
    watch = Watch(watch_stub, sid, ["x"])
    try:
        first = watch.update()
        assert (first.update_type, first.variable.version) == ("initial_value", 1)
        watch.quiet_for(3.0)  # three idle timeouts with nothing but the open stream
        assert set_value(b.new_stub(), sid, "x", "integer", 2) == 2
        update = watch.update()
        assert (update.update_type, update.variable.version, json.loads(update.variable.value.value)) == (
            "value_change",
            2,
            2,
        )
    finally:
        watch.cancel()
    b.assert_healthy()


# --------------------------------------------------------------------------- 3. ListVariables patterns


def test_list_pattern_is_bounded_and_cannot_stall_the_server(launch: Callable[..., Bridge]) -> None:
    """A glob longer than --max-pattern-bytes (counted in bytes) is RESOURCE_EXHAUSTED; in a session of
    5,000 variables a pathological pattern of the maximum length answers within a generous deadline,
    correctly, and a Ping on another connection answers while two such calls run."""
    b = launch("--max-pattern-bytes", "1024")
    sid = new_session(b.stub)
    for pattern in ("a" * 1025, "*" * 1025, "é" * 513):
        err = refused(b.stub.ListVariables, pb2.ListVariablesRequest(session_id=sid, pattern=pattern))
        assert_over_limit(err, "max_pattern_bytes", 1024)
    for pattern in ("a" * 1024, "é" * 512):
        assert (
            len(
                b.stub.ListVariables(
                    pb2.ListVariablesRequest(session_id=sid, pattern=pattern), timeout=CALL_DEADLINE
                ).variables
            )
            == 0
        )

    names = [f"{'a' * 40}{i:05d}" for i in range(5000)]
    for start in range(0, len(names), 500):
        futures = [
            b.stub.RegisterVariable.future(
                pb2.RegisterVariableRequest(
                    session_id=sid, name=name, type="integer", initial_value=any_json("integer", 0)
                ),
                timeout=60,
            )
            for name in names[start : start + 500]
        ]
        for future in futures:
            assert future.result().success

    evil = "*a" * 511 + "b"  # 1,023 bytes; no name ends in b
    assert len(evil.encode()) <= 1024
    list_stub = b.new_stub()
    calls = [
        list_stub.ListVariables.future(pb2.ListVariablesRequest(session_id=sid, pattern=evil), timeout=CALL_DEADLINE)
        for _ in range(2)
    ]
    ping = b.new_stub().Ping(pb2.PingRequest(message="during"), timeout=CALL_DEADLINE)
    assert ping.message == "during"
    for call in calls:
        assert list(call.result().variables) == []
    many = "*a" * 40 + "*"  # every name has 40 a's
    assert (
        len(
            b.stub.ListVariables(
                pb2.ListVariablesRequest(session_id=sid, pattern=many), timeout=CALL_DEADLINE
            ).variables
        )
        == 5000
    )
    one = b.stub.ListVariables(
        pb2.ListVariablesRequest(session_id=sid, pattern="*a?0042"), timeout=CALL_DEADLINE
    ).variables
    assert [v.name for v in one] == [names[42]]
    b.assert_healthy(b.stub)


# --------------------------------------------------------------------------- 4. value and metadata sizes


def test_value_at_the_size_limit_goes_through_every_door(launch: Callable[..., Bridge]) -> None:
    """With the default limits, a string whose JSON is exactly max_value_bytes (3,981,312) is accepted
    and readable by GetVariable, ListVariables, GetVariables (both forms) and delivered by
    WatchVariables; one character more is RESOURCE_EXHAUSTED naming max_value_bytes and changes
    nothing. Two such values in one answer are RESOURCE_EXHAUSTED naming max_message_bytes."""
    b = launch()
    sid = new_session(b.stub)
    register(b.stub, sid, "s", "string", "init")
    watch = Watch(b.new_stub(), sid, ["s"])
    try:
        assert watch.update().update_type == "initial_value"
        biggest = "x" * (DEFAULT_MAX_VALUE_BYTES - 2)
        assert set_value(b.stub, sid, "s", "string", biggest) == 2

        assert read_value(b.stub, sid, "s") == (2, biggest)
        listed = b.stub.ListVariables(
            pb2.ListVariablesRequest(session_id=sid, pattern="s"), timeout=CALL_DEADLINE
        ).variables
        assert len(listed) == 1 and json.loads(listed[0].value.value) == biggest
        got = b.stub.GetVariables(
            pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=["s"]), timeout=CALL_DEADLINE
        )
        assert json.loads(got.variables["s"].value.value) == biggest
        compact = b.stub.GetVariables(
            pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=["s"], values_only=True),
            timeout=CALL_DEADLINE,
        )
        assert json.loads(compact.values.values_json) == [biggest]
        update = watch.update()
        assert (update.update_type, update.variable.version) == ("value_change", 2)
        assert json.loads(update.variable.value.value) == biggest
        late = Watch(b.new_stub(), sid, ["s"])
        try:
            assert json.loads(late.update().variable.value.value) == biggest
        finally:
            late.cancel()

        err = refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(session_id=sid, variable_identifier="s", value=any_json("string", biggest + "y")),
        )
        assert_over_limit(err, "max_value_bytes", DEFAULT_MAX_VALUE_BYTES)
        assert len(err.details()) < 1024
        err = refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid, name="s_over", type="string", initial_value=any_json("string", biggest + "y")
            ),
        )
        assert_over_limit(err, "max_value_bytes", DEFAULT_MAX_VALUE_BYTES)
        version, value = read_value(b.stub, sid, "s")
        assert version == 2 and value == biggest
        watch.quiet_for(0.3)

        # Two values of the maximum size do not fit in one answer of max_message_bytes.
        register(b.stub, sid, "s2", "string", biggest)
        for request, call in (
            (pb2.ListVariablesRequest(session_id=sid), b.stub.ListVariables),
            (pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=["s", "s2"]), b.stub.GetVariables),
            (
                pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=["s", "s2"], values_only=True),
                b.stub.GetVariables,
            ),
        ):
            err = refused(call, request)
            assert "max_message_bytes" in (err.details() or ""), err.details()
        assert read_value(b.stub, sid, "s2") == (1, biggest)
    finally:
        watch.cancel()
    b.assert_healthy(b.stub)


def test_value_size_is_measured_as_json(launch: Callable[..., Bridge]) -> None:
    """The value limit counts a string's JSON-escaped length (quotes and escapes included) and an
    embedding or tensor at 25 bytes an element, on the JSON and on the binary path alike."""
    b = launch("--max-value-bytes", "1000")
    sid = new_session(b.stub)
    register(b.stub, sid, "s", "string", "")
    register(b.stub, sid, "e", "embedding", [0.0])
    register(b.stub, sid, "t", "tensor", {"shape": [1], "data": [0.0]})

    assert set_value(b.stub, sid, "s", "string", '"' * 499) == 2  # 2 + 2 × 499 = 1000
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(session_id=sid, variable_identifier="s", value=any_json("string", '"' * 500)),
    )
    assert_over_limit(err, "max_value_bytes", 1000)
    assert set_value(b.stub, sid, "s", "string", "\x01" * 166) == 3  # 2 + 6 × 166 = 998
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(session_id=sid, variable_identifier="s", value=any_json("string", "\x01" * 167)),
    )
    assert_over_limit(err, "max_value_bytes", 1000)
    assert read_value(b.stub, sid, "s") == (3, "\x01" * 166)

    assert set_value(b.stub, sid, "e", "embedding", [0.5] * 30) == 2  # 750 bytes
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(session_id=sid, variable_identifier="e", value=any_json("embedding", [0.5] * 41)),
    )
    assert_over_limit(err, "max_value_bytes", 1000)
    meta = {"shape": [41], "dtype": "float64", "binary_format": "raw_le"}
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(
            session_id=sid,
            variable_identifier="e",
            value=any_json("embedding", meta, binary=True),
            binary_value=b"\0" * 8 * 41,
        ),
    )
    assert_over_limit(err, "max_value_bytes", 1000)
    assert read_value(b.stub, sid, "e") == (2, [0.5] * 30)

    meta = {"shape": [10, 10], "dtype": "float32", "binary_format": "raw_le"}
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(
            session_id=sid,
            variable_identifier="t",
            value=any_json("tensor", meta, binary=True),
            binary_value=b"\0" * 4 * 100,
        ),
    )
    assert_over_limit(err, "max_value_bytes", 1000)
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(
            session_id=sid, variable_identifier="t", value=any_json("tensor", {"shape": [50], "data": [0] * 50})
        ),
    )
    assert_over_limit(err, "max_value_bytes", 1000)
    assert read_value(b.stub, sid, "t") == (1, {"shape": [1], "data": [0.0]})
    b.assert_healthy(b.stub)


def test_metadata_accumulation_is_refused_whole(launch: Callable[..., Bridge]) -> None:
    """Writes that keep adding new metadata keys are refused, value and version unchanged, once the
    merged metadata would pass --max-metadata-entries or --max-metadata-bytes; overwriting existing
    keys and plain writes still work; the variable stays readable and its watcher keeps working and
    never sees a refused write. Oversized metadata on a session, a registration or one change is
    refused as well."""
    b = launch("--max-metadata-entries", "16", "--max-metadata-bytes", "2048")
    sid = new_session(b.stub)
    register(b.stub, sid, "m", "integer", 0)
    register(b.stub, sid, "n", "integer", 0)
    watch = Watch(b.new_stub(), sid, ["m"])
    try:
        assert watch.update().variable.version == 1
        for i in range(5):
            assert set_value(b.stub, sid, "m", "integer", i + 1, {f"k{i}_{j}": "v" for j in range(3)}) == i + 2
        err = refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(
                session_id=sid,
                variable_identifier="m",
                value=any_json("integer", 999),
                metadata={f"k5_{j}": "v" for j in range(3)},
            ),
        )
        assert_over_limit(err, "max_metadata_entries", 16)
        var = read(b.stub, sid, "m")
        assert (var.version, json.loads(var.value.value), len(var.metadata)) == (6, 5, 15)
        assert set_value(b.stub, sid, "m", "integer", 6, {"k5_0": "v"}) == 7  # 16 entries: at the limit
        assert set_value(b.stub, sid, "m", "integer", 7, {"k0_0": "w", "k1_1": "w"}) == 8  # overwrites only
        err = refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(
                session_id=sid, variable_identifier="m", value=any_json("integer", 999), metadata={"one_more": "v"}
            ),
        )
        assert_over_limit(err, "max_metadata_entries", 16)
        assert set_value(b.stub, sid, "m", "integer", 8) == 9  # a plain write still goes through
        var = read(b.stub, sid, "m")
        assert (var.version, json.loads(var.value.value), len(var.metadata)) == (9, 8, 16)
        assert var.metadata["k0_0"] == "w"

        seen: list[tuple[int, int]] = []
        while not seen or seen[-1][0] < 9:
            update = watch.update()
            seen.append((update.variable.version, json.loads(update.variable.value.value)))
        versions = [v for v, _ in seen]
        assert versions == sorted(set(versions)) and seen[-1] == (9, 8), seen
        assert all(value != 999 for _, value in seen), seen

        for i in range(6):  # 6 × (2 + 300) = 1,812 bytes
            assert set_value(b.stub, sid, "n", "integer", i + 1, {f"b{i}": "v" * 300}) == i + 2
        err = refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(
                session_id=sid, variable_identifier="n", value=any_json("integer", 999), metadata={"b6": "v" * 300}
            ),
        )
        assert_over_limit(err, "max_metadata_bytes", 2048)
        var = read(b.stub, sid, "n")
        assert (var.version, json.loads(var.value.value), len(var.metadata)) == (7, 6, 6)
        # The batch doors merge metadata into every variable they write: refused as a whole too.
        try:
            response = b.stub.SetVariables(
                pb2.BatchSetVariablesRequest(
                    session_id=sid, updates={"n": any_json("integer", 999)}, metadata={"b7": "v" * 300}, atomic=True
                ),
                timeout=CALL_DEADLINE,
            )
        except grpc.RpcError as batch_err:
            assert_over_limit(batch_err, "max_metadata_bytes", 2048)
        else:
            assert not response.success and "max_metadata_bytes" in response.errors["n"], response
        assert read_value(b.stub, sid, "n") == (7, 6)

        big = {f"e{j}": "v" for j in range(17)}
        err = refused(b.stub.InitializeSession, pb2.InitializeSessionRequest(session_id="meta-session", metadata=big))
        assert_over_limit(err, "max_metadata_entries", 16)
        refused(b.stub.GetSession, pb2.GetSessionRequest(session_id="meta-session"), codes=(C.NOT_FOUND,))
        err = refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid, name="r", type="integer", initial_value=any_json("integer", 0), metadata=big
            ),
        )
        assert_over_limit(err, "max_metadata_entries", 16)
        err = refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid,
                name="r",
                type="integer",
                initial_value=any_json("integer", 0),
                metadata={"k": "v" * 2048},
            ),
        )
        assert_over_limit(err, "max_metadata_bytes", 2048)
        refused(
            b.stub.GetVariable, pb2.GetVariableRequest(session_id=sid, variable_identifier="r"), codes=(C.NOT_FOUND,)
        )
        register(b.stub, sid, "fresh", "integer", 0)
        err = refused(
            b.stub.SetVariable,
            pb2.SetVariableRequest(
                session_id=sid, variable_identifier="fresh", value=any_json("integer", 1), metadata=big
            ),
        )
        assert_over_limit(err, "max_metadata_entries", 16)
        assert read_value(b.stub, sid, "fresh") == (1, 0)

        assert set_value(b.stub, sid, "m", "integer", 10) == 10
        update = watch.update()
        assert (update.variable.version, json.loads(update.variable.value.value)) == (10, 10)
    finally:
        watch.cancel()
    b.assert_healthy(b.stub)


# --------------------------------------------------------------------------- 5. quotas


def test_session_and_variable_quotas(launch: Callable[..., Bridge]) -> None:
    """--max-sessions and --max-variables-per-session refuse the one over with RESOURCE_EXHAUSTED naming
    the limit, change nothing, and free their slot when a session or variable goes."""
    b = launch("--max-sessions", "20", "--max-variables-per-session", "10")
    sessions = [new_session(b.stub, f"q{i}") for i in range(20)]
    err = refused(b.stub.InitializeSession, pb2.InitializeSessionRequest(session_id="one-too-many"))
    assert_over_limit(err, "max_sessions", 20)
    refused(b.stub.GetSession, pb2.GetSessionRequest(session_id="one-too-many"), codes=(C.NOT_FOUND,))
    b.stub.CleanupSession(pb2.CleanupSessionRequest(session_id=sessions.pop(), force=True), timeout=CALL_DEADLINE)
    sessions.append(new_session(b.stub, "again"))

    sid = sessions[0]
    for i in range(10):
        register(b.stub, sid, f"v{i}", "integer", i)
    err = refused(
        b.stub.RegisterVariable,
        pb2.RegisterVariableRequest(session_id=sid, name="v10", type="integer", initial_value=any_json("integer", 10)),
    )
    assert_over_limit(err, "max_variables_per_session", 10)
    info = b.stub.GetSession(pb2.GetSessionRequest(session_id=sid), timeout=CALL_DEADLINE)
    assert info.variable_count == 10
    refused(b.stub.GetVariable, pb2.GetVariableRequest(session_id=sid, variable_identifier="v10"), codes=(C.NOT_FOUND,))
    assert b.stub.DeleteVariable(
        pb2.DeleteVariableRequest(session_id=sid, variable_identifier="v0"), timeout=CALL_DEADLINE
    ).success
    register(b.stub, sid, "v10", "integer", 10)
    register(b.stub, sessions[1], "other", "integer", 0)  # the quota is per session
    b.assert_healthy(b.stub)


def test_watcher_quotas(launch: Callable[..., Bridge]) -> None:
    """The (N+1)th WatchVariables stream on one connection is RESOURCE_EXHAUSTED naming
    max_watchers_per_connection while the first N keep receiving updates; streams over --max-watchers
    server-wide are refused likewise, and a slot frees when a stream is cancelled."""
    b = launch("--max-watchers-per-connection", "3", "--max-watchers", "5")
    sid = new_session(b.stub)
    register(b.stub, sid, "x", "integer", 0)
    stub_a = b.new_stub()
    watches: list[Watch] = []
    try:
        for _ in range(3):
            watches.append(Watch(stub_a, sid, ["x"]))
            assert watches[-1].update().update_type == "initial_value"
        extra = Watch(stub_a, sid, ["x"])
        code, details = extra.ended_with()
        assert code == C.RESOURCE_EXHAUSTED and "over the limit max_watchers_per_connection = 3" in details, (
            code,
            details,
        )
        kinds = [v for k, v in (extra.call.trailing_metadata() or ()) if k == "snakepit-error-kind"]
        assert kinds == ["resource_exhausted"]
        assert set_value(b.stub, sid, "x", "integer", 1) == 2
        for watch in watches:
            assert watch.update().variable.version == 2

        stub_b = b.new_stub()
        for _ in range(2):
            watches.append(Watch(stub_b, sid, ["x"]))
            assert watches[-1].update().update_type == "initial_value"
        stub_c = b.new_stub()
        over = Watch(stub_c, sid, ["x"])
        code, details = over.ended_with()
        assert code == C.RESOURCE_EXHAUSTED and "over the limit max_watchers = 5" in details, (code, details)
        poll(lambda: watcher_count(b.stub, sid) == 5, "watcher_count == 5")

        watches.pop(0).cancel()
        poll(lambda: watcher_count(b.stub, sid) == 4, "the cancelled watch to leave")
        watches.append(Watch(stub_c, sid, ["x"]))
        assert watches[-1].update().update_type == "initial_value"
        assert set_value(b.stub, sid, "x", "integer", 2) == 3
        for watch in watches:
            update = watch.update()
            while update.variable.version < 3:
                update = watch.update()
            assert update.variable.version == 3
    finally:
        for watch in watches:
            watch.cancel()
    b.assert_healthy(b.stub)


def test_batch_quota(launch: Callable[..., Bridge]) -> None:
    """GetVariables and SetVariables (map, compact, float and mixed forms) with more identifiers than
    --max-batch are RESOURCE_EXHAUSTED naming max_batch and write nothing; exactly max_batch works."""
    b = launch("--max-batch", "5")
    sid = new_session(b.stub)
    names = [f"v{i}" for i in range(6)]
    for name in names:
        register(b.stub, sid, name, "integer", 0)
    register(b.stub, sid, "f", "float", 0.0)

    err = refused(b.stub.GetVariables, pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=names))
    assert_over_limit(err, "max_batch", 5)
    err = refused(
        b.stub.GetVariables, pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=names, values_only=True)
    )
    assert_over_limit(err, "max_batch", 5)
    assert (
        len(
            b.stub.GetVariables(
                pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=names[:5]), timeout=CALL_DEADLINE
            ).variables
        )
        == 5
    )

    over = [
        pb2.BatchSetVariablesRequest(session_id=sid, updates={n: any_json("integer", 7) for n in names}, atomic=False),
        pb2.BatchSetVariablesRequest(
            session_id=sid, value_identifiers=names, values_json=b"[7,7,7,7,7,7]", atomic=False
        ),
        pb2.BatchSetVariablesRequest(
            session_id=sid,
            updates={n: any_json("integer", 7) for n in names[:3]},
            value_identifiers=names[3:],
            values_json=b"[7,7,7]",
        ),
        pb2.BatchSetVariablesRequest(
            session_id=sid,
            value_identifiers=names[:5],
            values_json=b"[7,7,7,7,7]",
            float_identifiers=["f"],
            float_values=[7.0],
        ),
    ]
    for request in over:
        err = refused(b.stub.SetVariables, request)
        assert_over_limit(err, "max_batch", 5)
    for name in names:
        assert read_value(b.stub, sid, name) == (1, 0)
    assert read_value(b.stub, sid, "f") == (1, 0.0)
    response = b.stub.SetVariables(
        pb2.BatchSetVariablesRequest(
            session_id=sid,
            value_identifiers=names[:4],
            values_json=b"[7,7,7,7]",
            float_identifiers=["f"],
            float_values=[7.0],
            atomic=True,
        ),
        timeout=CALL_DEADLINE,
    )
    assert response.success and len(response.new_versions) == 5
    b.assert_healthy(b.stub)


def test_constraint_size_quota(launch: Callable[..., Bridge]) -> None:
    """Constraints over --max-constraint-bytes (a huge regex pattern, a huge choices list) are
    RESOURCE_EXHAUSTED naming max_constraint_bytes and register nothing; a short regex whose compiled
    form is enormous is refused too (INVALID_ARGUMENT or RESOURCE_EXHAUSTED) without harming the server."""
    b = launch("--max-constraint-bytes", "1024")
    sid = new_session(b.stub)
    huge_regex = "(a|b|c)*" * 300
    cases = [
        ("p", "string", "a", {"pattern": huge_regex}),
        ("c", "choice", "x", {"choices": ["x"] + [f"choice-{i}" for i in range(200)]}),
        ("m", "module", "x", {"allowed_modules": ["x", "y" * 2000]}),
    ]
    for name, var_type, value, constraints in cases:
        err = refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid,
                name=name,
                type=var_type,
                initial_value=any_json(var_type, value),
                constraints_json=json.dumps(constraints),
            ),
        )
        assert_over_limit(err, "max_constraint_bytes", 1024)
        assert len(err.details()) < 1024
        refused(
            b.stub.GetVariable, pb2.GetVariableRequest(session_id=sid, variable_identifier=name), codes=(C.NOT_FOUND,)
        )

    for bomb in ("(?:a{1000}){1000}", "\\w{1000}{1000}"):
        refused(
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid,
                name="bomb",
                type="string",
                initial_value=any_json("string", "a"),
                constraints_json=json.dumps({"pattern": bomb}),
            ),
            codes=(C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED),
        )
    register(b.stub, sid, "ok", "string", "ab", {"pattern": "^[ab]+$"})
    info = b.stub.GetSession(pb2.GetSessionRequest(session_id=sid), timeout=CALL_DEADLINE)
    assert info.variable_count == 1
    b.assert_healthy(b.stub)


# --------------------------------------------------------------------------- 7. TTL and watchers


def test_watched_session_does_not_expire(launch: Callable[..., Bridge]) -> None:
    """With --session-ttl 2, a session whose only activity is an open WatchVariables stream stays valid
    after 4 s (the stream gets no session_closed); once the stream is cancelled the session expires
    after the TTL, counted from when the watcher left."""
    b = launch("--session-ttl", "2")
    sid = new_session(b.stub)
    register(b.stub, sid, "x", "integer", 5)
    watch = Watch(b.new_stub(), sid, ["x"])
    assert watch.update().update_type == "initial_value"
    watch.quiet_for(4.0)  # twice the TTL without touching the session
    assert b.stub.Heartbeat(pb2.HeartbeatRequest(session_id=sid), timeout=CALL_DEADLINE).session_valid
    assert read_value(b.stub, sid, "x") == (1, 5)

    watch.cancel()
    # Heartbeat touches the session, so it is asked less often than the TTL.
    end = time.monotonic() + 10.0
    while b.stub.Heartbeat(pb2.HeartbeatRequest(session_id=sid), timeout=CALL_DEADLINE).session_valid:
        if time.monotonic() > end:
            pytest.fail("the session did not expire within 10 s after its last watcher left", pytrace=False)
        time.sleep(2.5)
    refused(b.stub.GetVariable, pb2.GetVariableRequest(session_id=sid, variable_identifier="x"), codes=(C.NOT_FOUND,))
    b.assert_healthy(b.stub)


# --------------------------------------------------------------------------- 8. odds and ends


@pytest.mark.parametrize(
    "literal", [b"-9223372036854775809", b"9223372036854775808", b"-1e400", b"18446744073709551616"]
)
def test_integers_outside_64_bits_are_refused(launch: Callable[..., Bridge], literal: bytes) -> None:
    """A JSON integer outside the signed 64-bit range, above or below, is INVALID_ARGUMENT for an integer
    variable on every door; the 64-bit extremes themselves are accepted."""
    b = launch()
    sid = new_session(b.stub)
    register(b.stub, sid, "i", "integer", 0)
    bad = any_pb2.Any(type_url=f"{TYPE_PREFIX}integer", value=literal)
    refused(
        b.stub.RegisterVariable,
        pb2.RegisterVariableRequest(session_id=sid, name="j", type="integer", initial_value=bad),
        codes=(C.INVALID_ARGUMENT,),
    )
    refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(session_id=sid, variable_identifier="i", value=bad),
        codes=(C.INVALID_ARGUMENT,),
    )
    for request in (
        pb2.BatchSetVariablesRequest(session_id=sid, updates={"i": bad}, atomic=True),
        pb2.BatchSetVariablesRequest(
            session_id=sid, value_identifiers=["i"], values_json=b"[" + literal + b"]", atomic=True
        ),
    ):
        try:
            response = b.stub.SetVariables(request, timeout=CALL_DEADLINE)
        except grpc.RpcError as err:
            assert err.code() == C.INVALID_ARGUMENT, (err.code(), err.details())
        else:
            assert not response.success and "i" in response.errors, response
    assert read_value(b.stub, sid, "i") == (1, 0)
    assert set_value(b.stub, sid, "i", "integer", I64_MIN) == 2
    assert set_value(b.stub, sid, "i", "integer", I64_MAX) == 3
    assert read_value(b.stub, sid, "i") == (3, I64_MAX)
    b.assert_healthy(b.stub)


def _run_binary(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(server_binary()), "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=CALL_DEADLINE,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (("--max-message-bytes", "0"), ("max-message-bytes", "max_message_bytes")),
        (("--max-connections", "0"), ("max-connections", "max_connections")),
        (("--max-sessions", "0"), ("max-sessions", "max_sessions")),
        (("--max-watchers", "0"), ("max-watchers", "max_watchers")),
        (("--max-batch", "0"), ("max-batch", "max_batch")),
        (("--max-value-bytes", str(DEFAULT_MAX_MESSAGE_BYTES)), ("max-value-bytes", "max_value_bytes")),
        (("--max-message-bytes", "100000", "--max-value-bytes", "100000"), ("max-value-bytes", "max_value_bytes")),
    ],
)
def test_nonsense_settings_exit_nonzero(args: tuple[str, ...], names: tuple[str, ...]) -> None:
    """A nonsense setting (a zero limit, a value limit no message can carry) makes the binary exit
    non-zero at once with a message on stderr naming the setting, instead of serving."""
    done = _run_binary(*args)
    assert done.returncode != 0, f"{args} started a server: {done.stdout!r}"
    assert "unknown option" not in done.stderr, done.stderr
    assert "listening on" not in done.stdout
    assert any(name in done.stderr for name in names), f"stderr does not name {names[0]}: {done.stderr!r}"


def test_help_lists_every_limit_with_its_default() -> None:
    """--help lists each limit flag with its default value."""
    done = subprocess.run([str(server_binary()), "--help"], capture_output=True, text=True, timeout=CALL_DEADLINE)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    defaults = {
        "--max-connections": "256",
        "--max-sessions": "10000",
        "--max-variables-per-session": "10000",
        "--max-watchers-per-connection": "1024",
        "--max-watchers": "16384",
        "--max-value-bytes": None,
        "--max-metadata-entries": "256",
        "--max-metadata-bytes": "65536",
        "--max-constraint-bytes": "65536",
        "--max-batch": "10000",
        "--max-pattern-bytes": "1024",
        "--handshake-timeout": "10",
        "--idle-timeout": "300",
        "--max-message-bytes": "4194304",
        "--session-ttl": "3600",
    }
    for flag, default in defaults.items():
        match = re.search(rf"^\s*{re.escape(flag)}(?![\w-])(.*(?:\n(?!\s*-).*)*)", text, re.MULTILINE)
        assert match, f"--help does not list {flag}:\n{text}"
        if default is not None:
            entry = re.sub(r"(?<=\d)[,_](?=\d{3})", "", match.group(1))
            assert re.search(rf"\b{default}\b", entry), (
                f"--help gives no default {default} for {flag}: {match.group(0)!r}"
            )


def test_huge_inputs_give_short_errors(launch: Callable[..., Bridge]) -> None:
    """1 MiB type_urls, types, names, identifiers, session ids and patterns are answered with a status
    (a 1 MiB type_url: INVALID_ARGUMENT) whose details stay under 1 KiB, never a transport error."""
    b = launch()
    sid = new_session(b.stub)
    register(b.stub, sid, "x", "integer", 1)
    mib = "u" * (1024 * 1024)
    err = refused(
        b.stub.SetVariable,
        pb2.SetVariableRequest(session_id=sid, variable_identifier="x", value=any_pb2.Any(type_url=mib, value=b"2")),
        codes=(C.INVALID_ARGUMENT,),
    )
    assert len((err.details() or "").encode()) < 1024, len(err.details())
    err = refused(
        b.stub.RegisterVariable,
        pb2.RegisterVariableRequest(
            session_id=sid, name="y", type="integer", initial_value=any_pb2.Any(type_url=mib, value=b"2")
        ),
        codes=(C.INVALID_ARGUMENT,),
    )
    assert len((err.details() or "").encode()) < 1024, len(err.details())

    anything = tuple(c for c in C if c not in (C.OK, C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.INTERNAL, C.UNKNOWN))
    calls: list[tuple[Callable[..., Any], Any]] = [
        (
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(session_id=sid, name="y", type=mib, initial_value=any_json("integer", 1)),
        ),
        (
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(session_id=sid, name=mib, type="integer", initial_value=any_json("integer", 1)),
        ),
        (
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid, name="y", type="integer", initial_value=any_json("integer", 1), constraints_json=mib
            ),
        ),
        (
            b.stub.RegisterVariable,
            pb2.RegisterVariableRequest(
                session_id=sid,
                name="y",
                type="integer",
                initial_value=any_pb2.Any(type_url=f"{TYPE_PREFIX}integer", value=mib.encode()),
            ),
        ),
        (b.stub.GetVariable, pb2.GetVariableRequest(session_id=sid, variable_identifier=mib)),
        (b.stub.GetVariable, pb2.GetVariableRequest(session_id=mib, variable_identifier="x")),
        (b.stub.GetSession, pb2.GetSessionRequest(session_id=mib)),
        (b.stub.InitializeSession, pb2.InitializeSessionRequest(session_id=mib)),
        (b.stub.DeleteVariable, pb2.DeleteVariableRequest(session_id=sid, variable_identifier=mib)),
        (b.stub.ListVariables, pb2.ListVariablesRequest(session_id=sid, pattern=mib)),
        (
            b.stub.SetVariables,
            pb2.BatchSetVariablesRequest(session_id=sid, value_identifiers=["x"], values_json=mib.encode()),
        ),
        (b.stub.SetVariables, pb2.BatchSetVariablesRequest(session_id=sid, updates={mib: any_json("integer", 1)})),
    ]
    for call, request in calls:
        try:
            call(request, timeout=CALL_DEADLINE)
        except grpc.RpcError as err:
            assert err.code() in anything, (call, err.code(), (err.details() or "")[:200])
            assert len((err.details() or "").encode()) < 1024, (call, len(err.details()))
    # SetVariables reports per identifier: those messages are short too.
    response = b.stub.SetVariables(
        pb2.BatchSetVariablesRequest(
            session_id=sid, updates={"x": any_pb2.Any(type_url=mib, value=b"2")}, atomic=False
        ),
        timeout=CALL_DEADLINE,
    )
    assert not response.success and all(len(m.encode()) < 1024 for m in response.errors.values()), {
        k[:40]: len(v) for k, v in response.errors.items()
    }
    assert read_value(b.stub, sid, "x") == (1, 1)
    b.assert_healthy(b.stub)


def test_bytes_that_do_not_decode_are_invalid_argument(launch: Callable[..., Bridge]) -> None:
    """A request that is not a valid protobuf message is the client's fault: INVALID_ARGUMENT, not INTERNAL."""
    b = launch()
    for method in ("GetVariable", "SetVariables", "WatchVariables"):
        path = f"/snakepit.bridge.BridgeService/{method}"
        # Field 1 claims 100 bytes of string and the message ends after 2.
        garbage = b"\x0a\x64ab"
        if method == "WatchVariables":
            stream = b.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            err = refused(
                lambda req, stream=stream, **kw: list(stream(req, **kw)), garbage, codes=(C.INVALID_ARGUMENT,)
            )
        else:
            call = b.channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            err = refused(call, garbage, codes=(C.INVALID_ARGUMENT,))
        assert "does not decode" in (err.details() or ""), err.details()
    b.assert_healthy()
