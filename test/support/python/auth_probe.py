"""Raw gRPC calls for the security tests: every BridgeService method, and health.

Usage: auth_probe.py ADDRESS COMMAND [ARGS...] [--token T] [--root-certs PEM]
                     [--client-cert PEM --client-key PEM]

    calls SESSION_ID    every BridgeService method once, about SESSION_ID
                        (Ping about none), in an order that lets each succeed
                        when allowed: Initialize, Register `probe`, reads,
                        writes, Watch (first update), Delete, Cleanup
    ping                one Ping
    health              grpc.health.v1.Health/Check of the whole server
    health-watch        grpc.health.v1.Health/Watch of the whole server: one JSON
                        line per status as it arrives, then {"end": "<grpc status>"}
    reflection          grpc.reflection.v1 list_services: {"services": [...]}
                        or {"code": "<grpc status>"}

With --root-certs the channel is TLS (grpc.ssl_channel_credentials with those
roots, and the client certificate if given); otherwise plaintext. The token,
if any, travels as `authorization: Bearer <token>` metadata on each call.

Prints one JSON line: for `calls` {"Method": "OK" or "<grpc status>", ...};
for `ping` {"code": "OK" or "<grpc status>"}; for `health` {"status":
"SERVING"|...} or {"code": "<grpc status>", "details": ...}.
Exits 0 either way (the test judges the outcomes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb_grpc

TIMEOUT = 10
HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def integer(n: int) -> any_pb2.Any:
    return any_pb2.Any(type_url="type.googleapis.com/snakepit.integer", value=json.dumps(n).encode())


def code_of(call: Callable[[], Any]) -> str:
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def calls(channel: grpc.Channel, metadata: list[tuple[str, str]], sid: str) -> dict[str, str]:
    stub = pb_grpc.BridgeServiceStub(channel)
    kw: dict[str, Any] = {"metadata": metadata, "timeout": TIMEOUT}

    def watch() -> None:
        stream = stub.WatchVariables(
            pb.WatchVariablesRequest(session_id=sid, variable_identifiers=["probe"], include_initial_values=True), **kw
        )
        try:
            next(stream)
        finally:
            stream.cancel()

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("Ping", lambda: stub.Ping(pb.PingRequest(message="probe"), **kw)),
        ("InitializeSession", lambda: stub.InitializeSession(pb.InitializeSessionRequest(session_id=sid), **kw)),
        (
            "RegisterVariable",
            lambda: stub.RegisterVariable(
                pb.RegisterVariableRequest(session_id=sid, name="probe", type="integer", initial_value=integer(1)),
                **kw,
            ),
        ),
        ("GetSession", lambda: stub.GetSession(pb.GetSessionRequest(session_id=sid), **kw)),
        ("Heartbeat", lambda: stub.Heartbeat(pb.HeartbeatRequest(session_id=sid), **kw)),
        (
            "GetVariable",
            lambda: stub.GetVariable(pb.GetVariableRequest(session_id=sid, variable_identifier="probe"), **kw),
        ),
        (
            "GetVariables",
            lambda: stub.GetVariables(
                pb.BatchGetVariablesRequest(session_id=sid, variable_identifiers=["probe"]), **kw
            ),
        ),
        ("ListVariables", lambda: stub.ListVariables(pb.ListVariablesRequest(session_id=sid), **kw)),
        (
            "SetVariable",
            lambda: stub.SetVariable(
                pb.SetVariableRequest(session_id=sid, variable_identifier="probe", value=integer(2)), **kw
            ),
        ),
        (
            "SetVariables",
            lambda: stub.SetVariables(pb.BatchSetVariablesRequest(session_id=sid, updates={"probe": integer(3)}), **kw),
        ),
        ("WatchVariables", watch),
        (
            "DeleteVariable",
            lambda: stub.DeleteVariable(pb.DeleteVariableRequest(session_id=sid, variable_identifier="probe"), **kw),
        ),
        ("CleanupSession", lambda: stub.CleanupSession(pb.CleanupSessionRequest(session_id=sid), **kw)),
    ]
    return {name: code_of(step) for name, step in steps}


def health(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> dict[str, Any]:
    # grpc.health.v1 without grpcio-health-checking: an empty HealthCheckRequest
    # is zero bytes, and the response is field 1 (status, a varint).
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        reply: bytes = check(b"", metadata=metadata, timeout=TIMEOUT)
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}
    status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
    return {"status": HEALTH_STATUS.get(status, str(status))}


def health_watch(channel: grpc.Channel) -> dict[str, Any]:
    """Prints each status of a Health/Watch stream as it comes; returns how the stream ended."""
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    try:
        for reply in watch(b""):
            status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
            print(json.dumps({"status": HEALTH_STATUS.get(status, str(status))}), flush=True)
    except grpc.RpcError as e:
        return {"end": e.code().name}
    return {"end": "OK"}


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        shift += 7
        pos += 1
        if not byte & 0x80:
            return value, pos


def _submessages(data: bytes, number: int) -> list[bytes]:
    """The length-delimited fields `number` of a message (other fields skipped; all are varints or bytes here)."""
    found, pos = [], 0
    while pos < len(data):
        key, pos = _varint_at(data, pos)
        if key & 7 == 0:
            _, pos = _varint_at(data, pos)
            continue
        length, pos = _varint_at(data, pos)
        if key >> 3 == number:
            found.append(data[pos : pos + length])
        pos += length
    return found


def reflection(channel: grpc.Channel, metadata: list[tuple[str, str]]) -> dict[str, Any]:
    # ServerReflectionRequest.list_services is field 7 (a string; tag 0x3a); the
    # response's list_services_response is field 6, holding services (field 1)
    # named by their field 1.
    info = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )
    try:
        [reply] = list(info(iter([b"\x3a\x00"]), metadata=metadata, timeout=TIMEOUT))
    except grpc.RpcError as e:
        return {"code": e.code().name}
    [listing] = _submessages(reply, 6)
    return {"services": [name.decode() for s in _submessages(listing, 1) for name in _submessages(s, 1)]}


def channel_for(args: argparse.Namespace) -> grpc.Channel:
    if args.root_certs is None:
        return grpc.insecure_channel(args.address)
    key = Path(args.client_key).read_bytes() if args.client_key else None
    chain = Path(args.client_cert).read_bytes() if args.client_cert else None
    credentials = grpc.ssl_channel_credentials(Path(args.root_certs).read_bytes(), key, chain)
    return grpc.secure_channel(args.address, credentials)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("command", choices=["calls", "ping", "health", "health-watch", "reflection"])
    parser.add_argument("session_id", nargs="?")
    parser.add_argument("--token")
    parser.add_argument("--root-certs")
    parser.add_argument("--client-cert")
    parser.add_argument("--client-key")
    args = parser.parse_args()
    metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
    with channel_for(args) as channel:
        if args.command == "calls":
            result: dict[str, Any] = calls(channel, metadata, args.session_id)
        elif args.command == "ping":
            stub = pb_grpc.BridgeServiceStub(channel)
            result = {
                "code": code_of(lambda: stub.Ping(pb.PingRequest(message="probe"), metadata=metadata, timeout=TIMEOUT))
            }
        elif args.command == "health-watch":
            result = health_watch(channel)
        elif args.command == "reflection":
            result = reflection(channel, metadata)
        else:
            result = health(channel, metadata)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
