"""gRPC health checking and server reflection on the standalone server, with no new dependency.

The requests are encoded by hand (a few protobuf fields) and sent with grpc's
generic ``unary_unary`` / ``unary_stream`` / ``stream_stream`` calls, which pass
bytes through when no serializer is given; answers are decoded the same way.
Reflection's file descriptors decode with ``descriptor_pb2`` (protobuf is
already installed with grpc's stubs).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _support import ServerProcess, health_check, list_services, pb_fields, pb_string_field, start_server
from google.protobuf import descriptor_pb2

BRIDGE = "snakepit.bridge.BridgeService"
HEALTH = "grpc.health.v1.Health"
SERVING = 1
NOT_SERVING = 2
DEADLINE = 10.0  # seconds a call may take before the test fails (never a timing claim)
REFLECTION_METHODS = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
]


# --------------------------------------------------------------------------- protobuf by hand


def _field(data: bytes, number: int) -> list[int | bytes]:
    return [value for n, value in pb_fields(data) if n == number]


def _bytes_field(data: bytes, number: int) -> list[bytes]:
    values = _field(data, number)
    assert all(isinstance(v, bytes) for v in values), values
    return [v for v in values if isinstance(v, bytes)]


def _status(response: bytes) -> int:
    """HealthCheckResponse.status (field 1, a varint; absent means 0, UNKNOWN)."""
    values = _field(response, 1)
    assert all(isinstance(v, int) for v in values), values
    return int(values[-1]) if values else 0


# --------------------------------------------------------------------------- fixtures and calls


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of this test's own (so it can be stopped), which must exit 0 on SIGTERM."""
    proc = start_server(tmp_path)
    yield proc
    assert proc.terminate() == 0, proc.log()


@pytest.fixture
def channel(own_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(own_server.address) as ch:
        yield ch


def _reflect(channel: grpc.Channel, method: str, request: bytes) -> bytes:
    """One ServerReflectionInfo exchange: send ``request``, close our side, return the one answer."""
    info = channel.stream_stream(method)
    responses = list(info(iter([request]), timeout=DEADLINE))
    assert len(responses) == 1, responses
    answer: bytes = responses[0]
    return answer


def _files_containing(channel: grpc.Channel, method: str, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
    # file_containing_symbol is request field 4; file_descriptor_response is response field 4,
    # a FileDescriptorResponse with the encoded FileDescriptorProtos in field 1.
    response = _reflect(channel, method, pb_string_field(4, symbol))
    [files] = _bytes_field(response, 4)
    return [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in _bytes_field(files, 1)]


# --------------------------------------------------------------------------- tests


def test_hand_encoding_matches_protobuf() -> None:
    """The helpers agree with protobuf's own encoder, so the tests below send what they mean."""
    message = descriptor_pb2.FileDescriptorProto(name="x" * 200, package="p")
    encoded = message.SerializeToString()
    assert pb_string_field(1, "x" * 200) + pb_string_field(2, "p") == encoded
    assert pb_fields(encoded) == [(1, b"x" * 200), (2, b"p")]
    # Field 1 as a varint: tag (1 << 3 | 0), then the value (both one byte).
    assert _status(bytes([1 << 3, NOT_SERVING])) == NOT_SERVING


def test_health_check_is_serving(channel: grpc.Channel) -> None:
    assert health_check(channel, "") == SERVING
    assert health_check(channel, BRIDGE) == SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_check(channel, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_turns_not_serving_on_sigterm(own_server: ServerProcess, channel: grpc.Channel) -> None:
    """SIGTERM: the watch gets NOT_SERVING, then ends with UNAVAILABLE, and the server exits 0."""
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    statuses = watch(pb_string_field(1, BRIDGE), timeout=DEADLINE)
    assert _status(next(statuses)) == SERVING
    own_server.process.send_signal(signal.SIGTERM)
    assert _status(next(statuses)) == NOT_SERVING
    with pytest.raises(grpc.RpcError) as err:
        next(statuses)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert own_server.process.wait(DEADLINE) == 0, own_server.log()


@pytest.mark.parametrize("method", REFLECTION_METHODS)
def test_reflection_lists_services(channel: grpc.Channel, method: str) -> None:
    services = list_services(channel, method, DEADLINE)
    assert BRIDGE in services
    assert HEALTH in services
    assert len(services) == len(set(services)), services


@pytest.mark.parametrize("method", REFLECTION_METHODS)
def test_reflection_describes_the_bridge_service(channel: grpc.Channel, method: str) -> None:
    files = _files_containing(channel, method, BRIDGE)
    ours = files[0]
    assert (ours.name, ours.package) == ("snakepit_bridge.proto", "snakepit.bridge")
    [service] = [s for s in ours.service if s.name == "BridgeService"]
    methods = {m.name: m for m in service.method}
    assert methods["WatchVariables"].server_streaming
    assert methods["GetVariable"].input_type == ".snakepit.bridge.GetVariableRequest"
    assert list(ours.dependency) == ["google/protobuf/any.proto", "google/protobuf/timestamp.proto"]
