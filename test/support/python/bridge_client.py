"""A real Python client for the ExUnit end-to-end tests.

Usage: bridge_client.py ADDRESS SESSION_ID COMMAND [ARGS...]

Each command prints one JSON line with its result, or one line
``{"error": "<ExceptionClass>", "message": "..."}`` and exits with status 3.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from snakepit_bridge import BridgeError, SessionContext, connect


def plain(value: Any) -> Any:
    """JSON-safe form of a decoded value (special floats as their JSON names)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def enum_value(x: Any) -> Any:
    return getattr(x, "value", x)


def run(ctx: SessionContext, command: str, args: list[str]) -> Any:
    if command == "ping_and_initialize":
        return {"ping": ctx.ping(args[0]), "initialized": bool(ctx.initialize({"by": "python"}) is not None)}
    if command == "get_session":
        info = ctx.get_session()
        return {
            "session_id": info["session_id"],
            "metadata": dict(info["metadata"]),
            "variable_count": info["variable_count"],
        }
    if command == "get_variable":
        info = ctx.get_variable_info(args[0])
        return {
            "value": plain(info.value),
            "version": info.version,
            "type": enum_value(info.type),
            "source": enum_value(info.source),
        }
    if command == "update_variable":
        return {"version": ctx.update_variable(args[0], json.loads(args[1]))}
    if command == "ping_then_wait":
        # Proves the channel works, then waits for the test to stop the server.
        print(json.dumps({"ping": ctx.ping("before")}), flush=True)
        sys.stdin.readline()
        return {"ping": ctx.ping("after")}
    raise SystemExit(f"unknown command {command!r}")


def main() -> int:
    address, session_id, command, *args = sys.argv[1:]
    with connect(address) as channel:
        ctx = SessionContext(session_id, channel)
        try:
            result = run(ctx, command, args)
        except BridgeError as e:
            print(
                json.dumps({"error": type(e).__name__, "code": e.code.name if e.code else None, "message": e.message}),
                flush=True,
            )
            return 3
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
