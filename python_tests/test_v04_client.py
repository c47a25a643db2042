"""Older clients: a snakepit v0.4 client reads big embeddings and tensors as JSON.

The server sends the binary path only to a client that sends the request
metadata ``snakepit-accept-binary: raw_le``; everyone else gets every value as
JSON in the ``Any``, whatever its size. The v0.4 client here speaks only v0.4:
the generated stubs, no field numbered 100 or more, no metadata at all (the
shared server has no token). ``snakepit_bridge`` sends the header on every
call, so it keeps the binary path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest
from _support import AnyMode, WatchDriver, context_for, is_repeated_field
from google.protobuf import any_pb2
from google.protobuf import message as pb_message
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc

PREFIX = "type.googleapis.com/snakepit."
CALL_DEADLINE = 30.0
ACCEPT_BINARY = ("snakepit-accept-binary", "raw_le")

EMBEDDING = [(i - 2500.5) / 7.0 for i in range(5000)]
CHANGED = [x * -0.5 for x in EMBEDDING]
TENSOR_SHAPE = [3, 2000]
TENSOR = [i / 3.0 - 1000.0 for i in range(6000)]


def v04(message: pb_message.Message) -> Any:
    """``message`` after checking it sets no field of ours (numbered 100 or more), at any depth."""
    for field, value in message.ListFields():
        assert field.number < 100, f"{type(message).__name__}.{field.name} is not in v0.4"
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        for item in value if is_repeated_field(field) else [value]:
            v04(item)
    return message


def json_any(var_type: str, value: Any) -> any_pb2.Any:
    return any_pb2.Any(type_url=PREFIX + var_type, value=json.dumps(value).encode())


def check_embedding(var: pb2.Variable, values: list[float]) -> None:
    assert var.value.type_url == PREFIX + "embedding"
    assert var.binary_value == b""
    assert json.loads(var.value.value) == values


def check_tensor(var: pb2.Variable) -> None:
    assert var.value.type_url == PREFIX + "tensor"
    assert var.binary_value == b""
    assert json.loads(var.value.value) == {"shape": TENSOR_SHAPE, "data": TENSOR}


@pytest.fixture
def v04_stub(server_address: str, session_id: str) -> Iterator[Any]:
    """A raw stub on a plain channel, its session holding a 5,000-element embedding and a 3x2000 tensor."""
    with grpc.insecure_channel(server_address) as channel:
        stub: Any = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        stub.InitializeSession(v04(pb2.InitializeSessionRequest(session_id=session_id)), timeout=CALL_DEADLINE)
        for name, var_type, value in (
            ("emb", "embedding", EMBEDDING),
            ("t", "tensor", {"shape": TENSOR_SHAPE, "data": TENSOR}),
        ):
            registered = stub.RegisterVariable(
                v04(
                    pb2.RegisterVariableRequest(
                        session_id=session_id, name=name, type=var_type, initial_value=json_any(var_type, value)
                    )
                ),
                timeout=CALL_DEADLINE,
            )
            assert registered.success
        yield stub
        stub.CleanupSession(v04(pb2.CleanupSessionRequest(session_id=session_id, force=True)), timeout=CALL_DEADLINE)


def test_get_variable_sends_json(v04_stub: Any, session_id: str) -> None:
    for name in ("emb", "t"):
        request = v04(pb2.GetVariableRequest(session_id=session_id, variable_identifier=name))
        var = v04_stub.GetVariable(request, timeout=CALL_DEADLINE).variable
        if name == "emb":
            check_embedding(var, EMBEDDING)
        else:
            check_tensor(var)


def test_get_variables_sends_json(v04_stub: Any, session_id: str) -> None:
    for include_metadata in (True, False):
        request = v04(
            pb2.BatchGetVariablesRequest(
                session_id=session_id, variable_identifiers=["emb", "t"], include_metadata=include_metadata
            )
        )
        got = v04_stub.GetVariables(request, timeout=CALL_DEADLINE)
        assert not got.HasField("values") and list(got.missing_variables) == []
        check_embedding(got.variables["emb"], EMBEDDING)
        check_tensor(got.variables["t"])


def test_list_variables_sends_json(v04_stub: Any, session_id: str) -> None:
    listed = v04_stub.ListVariables(v04(pb2.ListVariablesRequest(session_id=session_id)), timeout=CALL_DEADLINE)
    by_name = {var.name: var for var in listed.variables}
    assert set(by_name) == {"emb", "t"}
    check_embedding(by_name["emb"], EMBEDDING)
    check_tensor(by_name["t"])


def test_watch_sends_json(v04_stub: Any, session_id: str) -> None:
    request = v04(
        pb2.WatchVariablesRequest(session_id=session_id, variable_identifiers=["emb", "t"], include_initial_values=True)
    )
    call = v04_stub.WatchVariables(request, timeout=CALL_DEADLINE)
    try:
        initial = {}
        for _ in range(2):
            update = next(call)
            assert update.update_type == "initial_value"
            initial[update.variable.name] = update.variable
        check_embedding(initial["emb"], EMBEDDING)
        check_tensor(initial["t"])
        set_request = v04(
            pb2.SetVariableRequest(
                session_id=session_id, variable_identifier="emb", value=json_any("embedding", CHANGED)
            )
        )
        assert v04_stub.SetVariable(set_request, timeout=CALL_DEADLINE).new_version == 2
        update = next(call)
        assert (update.update_type, update.variable.name, update.variable.version) == ("value_change", "emb", 2)
        check_embedding(update.variable, CHANGED)
    finally:
        call.cancel()


def test_the_header_turns_the_binary_path_on(v04_stub: Any, session_id: str) -> None:
    # The same raw call with the header snakepit_bridge sends: raw float64s.
    request = pb2.GetVariableRequest(session_id=session_id, variable_identifier="emb")
    var = v04_stub.GetVariable(request, timeout=CALL_DEADLINE, metadata=(ACCEPT_BINARY,)).variable
    assert var.value.type_url == PREFIX + "embedding.binary"
    assert json.loads(var.value.value) == {"shape": [5000], "dtype": "float64", "binary_format": "raw_le"}
    assert len(var.binary_value) == 8 * 5000


# --------------------------------------------------------------------------- snakepit_bridge asks for binary


def _method(details: Any) -> str:
    method = details.method.decode() if isinstance(details.method, bytes) else details.method
    return str(method).rsplit("/", 1)[-1]


class _Recorder(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Records each call's method and metadata, and the responses of unary calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
        self.responses: list[tuple[str, Any]] = []

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((_method(details), tuple(details.metadata or ())))
        outcome = continuation(details, request)
        if outcome.exception() is None:
            self.responses.append((_method(details), outcome.result()))
        return outcome

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((_method(details), tuple(details.metadata or ())))
        return continuation(details, request)


class _AioRecorder(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Records each unary call's method and metadata (grpc.aio takes one interceptor per kind of call)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
        self.responses: list[tuple[str, Any]] = []
        self.streams = _AioStreamRecorder(self.calls)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((_method(details), tuple(details.metadata or ())))
        return await continuation(details, request)


class _AioStreamRecorder(grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Records each server-streaming call's method and metadata into ``calls``."""

    def __init__(self, calls: list[tuple[str, tuple[tuple[str, Any], ...]]]) -> None:
        self.calls = calls

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.calls.append((_method(details), tuple(details.metadata or ())))
        return await continuation(details, request)


async def test_snakepit_bridge_sends_the_header_on_every_call(mode: str, session_id: str, server_address: str) -> None:
    if mode == "aio":
        recorder: Any = _AioRecorder()
        channel: Any = grpc.aio.insecure_channel(server_address, interceptors=[recorder, recorder.streams])
    else:
        recorder = _Recorder()
        channel = grpc.intercept_channel(grpc.insecure_channel(server_address), recorder)
    ctx = AnyMode(context_for(session_id, channel))
    try:
        await ctx.initialize()
        await ctx.register_variable("emb", "embedding", EMBEDDING)
        await ctx.register_variable("t", "tensor", {"shape": TENSOR_SHAPE, "data": TENSOR})
        assert await ctx.get_variable("emb") == EMBEDDING
        got = await ctx.get_variables(["emb", "t"])
        assert got["emb"] == EMBEDDING and got["t"] == {"shape": TENSOR_SHAPE, "data": TENSOR}
        assert {info.name for info in await ctx.list_variables()} == {"emb", "t"}
        watch = WatchDriver(ctx.ctx.watch_variables(["emb"]))
        try:
            update = await watch.next()
            assert update.update_type == "initial_value" and update.value == EMBEDDING
        finally:
            await watch.close()
        await ctx.cleanup(force=True)
    finally:
        if mode == "aio":
            await channel.close()
        else:
            channel.close()
    methods = {method for method, _ in recorder.calls}
    assert {"GetVariable", "GetVariables", "ListVariables", "WatchVariables", "RegisterVariable"} <= methods
    for method, metadata in recorder.calls:
        assert ACCEPT_BINARY in metadata, f"{method} was sent without the header: {metadata}"
    # What the blocking context actually received: the binary path.
    got_variable = [response for method, response in recorder.responses if method == "GetVariable"]
    assert len(got_variable) == (1 if mode == "blocking" else 0)
    for response in got_variable:
        assert response.variable.value.type_url == PREFIX + "embedding.binary"
        assert len(response.variable.binary_value) == 8 * 5000
