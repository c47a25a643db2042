"""Raw gRPC calls for the hostile-input tests, with the generated stubs only.

Usage: hostile_grpc.py ADDRESS COMMAND [ARGS...]

    ping TIMEOUT_S              one Ping with that deadline
    huge_tensor SESSION_ID      RegisterVariable and SetVariable (on the
                                existing tensor `t`) with a tensor whose shape
                                product is 2**40, by the JSON and binary paths

Prints one JSON line. Each call's outcome is {"ok": ...} or
{"code": "<grpc status>", "details": "..."}; the process exits 0 either way
(the test judges the outcomes) and non-zero only if it could not run.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from snakepit_bridge import connect
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb_grpc

HUGE = 1099511627776  # 2**40 elements: 8 TiB of float64 if anyone believed it
JSON_URL = "type.googleapis.com/snakepit.tensor"
BINARY_URL = "type.googleapis.com/snakepit.tensor.binary"


def outcome(call: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": call()}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def huge_tensor(stub: pb_grpc.BridgeServiceStub, session_id: str) -> dict[str, Any]:
    json_value = any_pb2.Any(type_url=JSON_URL, value=json.dumps({"shape": [HUGE], "data": []}).encode())
    binary_meta = {"shape": [HUGE], "dtype": "float64", "binary_format": "raw_le"}
    binary_value = any_pb2.Any(type_url=BINARY_URL, value=json.dumps(binary_meta).encode())

    def register(name: str, value: any_pb2.Any) -> Any:
        r = stub.RegisterVariable(
            pb.RegisterVariableRequest(session_id=session_id, name=name, type="tensor", initial_value=value),
            timeout=15,
        )
        return {"success": r.success, "error_message": r.error_message}

    def set_t(value: any_pb2.Any) -> Any:
        r = stub.SetVariable(
            pb.SetVariableRequest(session_id=session_id, variable_identifier="t", value=value),
            timeout=15,
        )
        return {"success": r.success, "error_message": r.error_message}

    return {
        "register_json": outcome(lambda: register("huge_json", json_value)),
        "register_binary": outcome(lambda: register("huge_binary", binary_value)),
        "set_json": outcome(lambda: set_t(json_value)),
        "set_binary": outcome(lambda: set_t(binary_value)),
        "ping_after": outcome(lambda: stub.Ping(pb.PingRequest(message="after"), timeout=15).message),
    }


def main() -> int:
    address, command, *args = sys.argv[1:]
    with connect(address) as channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        if command == "ping":
            timeout = float(args[0])
            result = outcome(lambda: stub.Ping(pb.PingRequest(message="hostile"), timeout=timeout).message)
        elif command == "huge_tensor":
            result = huge_tensor(stub, args[0])
        else:
            raise SystemExit(f"unknown command {command!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
