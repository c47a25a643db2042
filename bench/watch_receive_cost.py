"""CPU per update of the package's receive path, without the network.

Feeds ``AsyncVariableWatch`` / ``VariableWatch`` pre-parsed ``VariableUpdate``
messages from a fake stream and times (``time.process_time``) the path from a
received message to the yielded update, per value kind; ``floor`` is reading
the fake stream alone. Best of ``--repeat`` runs, µs per update::

    .venv/bin/python bench/watch_receive_cost.py [--n 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "priv" / "python"))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from google.protobuf import any_pb2, timestamp_pb2  # noqa: E402
from snakepit_bridge import AsyncSessionContext, SessionContext  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge.values import encode_parts  # noqa: E402

CASES: dict[str, tuple[str, Any, dict[str, str]]] = {
    "float": ("float", 3.14159, {}),
    "integer": ("integer", 1234567890123, {}),
    "string": ("string", "hello world", {}),
    "embedding[16]": ("embedding", [0.1 * i for i in range(16)], {}),
    "float+metadata": ("float", 2.5, {"writer": "bench", "reason": "tick"}),
}


def messages(var_type: str, value: Any, metadata: dict[str, str], n: int) -> list[Any]:
    url, payload, _ = encode_parts(var_type, value)
    out = []
    for i in range(n):
        stamp = timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=i)
        var = pb2.Variable(id="var_1", name="x", type=var_type, version=i + 1, last_updated_at=stamp)
        var.value.CopyFrom(any_pb2.Any(type_url=url, value=payload))
        msg = pb2.VariableUpdate(
            variable_id="var_1", update_type="value_change", update_source="python", variable=var, timestamp=stamp
        )
        msg.update_metadata.update(metadata)
        out.append(pb2.VariableUpdate.FromString(msg.SerializeToString()))  # as grpc hands it over
    return out


class FakeCall:
    """A started grpc.aio WatchVariables call whose stream holds ``msgs``."""

    def __init__(self, msgs: list[Any]) -> None:
        self._it = iter(msgs)

    async def initial_metadata(self) -> tuple[()]:
        return ()

    def done(self) -> bool:
        return False

    def cancel(self) -> None:
        pass

    async def read(self) -> Any:
        return next(self._it, grpc.aio.EOF)


class BlockingFakeCall(FakeCall):
    def initial_metadata(self) -> tuple[()]:  # type: ignore[override]
        return ()

    def __next__(self) -> Any:
        return next(self._it)


class FakeLink:
    def __init__(self, call: FakeCall) -> None:
        self.call = call

    def invoke(self, rpc: Any) -> Any:
        raise AssertionError("no unary calls without reconnect")

    def open_stream(self, request: Any) -> FakeCall:
        return self.call

    def channel_closed(self) -> bool:
        return False


async def run_async(msgs: list[Any]) -> float:
    watch = AsyncSessionContext("s", grpc.aio.insecure_channel("127.0.0.1:1")).watch_variables(["x"])
    watch._link = FakeLink(FakeCall(msgs))  # type: ignore[assignment]
    t0 = time.process_time()
    async for update in watch:
        update.value  # noqa: B018
    return (time.process_time() - t0) / len(msgs) * 1e6


def run_blocking(msgs: list[Any]) -> float:
    watch = SessionContext("s", grpc.insecure_channel("127.0.0.1:1")).watch_variables(["x"])
    watch._link = FakeLink(BlockingFakeCall(msgs))  # type: ignore[assignment]
    t0 = time.process_time()
    for update in watch:
        update.value  # noqa: B018
    return (time.process_time() - t0) / len(msgs) * 1e6


async def run_floor(msgs: list[Any]) -> float:
    call = FakeCall(msgs)
    t0 = time.process_time()
    while (msg := await call.read()) is not grpc.aio.EOF:
        msg.variable.value.value  # noqa: B018
    return (time.process_time() - t0) / len(msgs) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'value':16} {'asyncio':>8} {'blocking':>8} {'floor':>8}   µs/update, best of {args.repeat}")
    for name, case in CASES.items():
        a = min(asyncio.run(run_async(messages(*case, args.n))) for _ in range(args.repeat))
        b = min(run_blocking(messages(*case, args.n)) for _ in range(args.repeat))
        f = min(asyncio.run(run_floor(messages(*case, args.n))) for _ in range(args.repeat))
        print(f"{name:16} {a:8.2f} {b:8.2f} {f:8.2f}")


if __name__ == "__main__":
    main()
