"""The Python side of bench/push_latency.exs: receives pushed updates and measures their latency.

Not a benchmark of its own: ``mix run bench/push_latency.exs`` starts it. It
connects one ``grpc.aio`` channel to the bridge and, for each mode in
``--modes``, watches one integer variable whose values are the writer's
CLOCK_REALTIME stamps (``:os.system_time(:nanosecond)``, taken just before
each write); on receipt it computes ``time.time_ns() - value``. A negative
value (the end marker) ends a phase; its pair is reported too, so the driver
knows when it arrived. Modes:

* ``client``: the package's own iterator, what users write::

      async for update in ctx.watch_variables([name], include_initial=False): ...

* ``raw``: the generated stub's stream, ``BridgeServiceStub(channel).WatchVariables(...)``,
  with the value parsed from the message by hand (no AsyncSessionContext).

Around each phase it times ``Ping`` round trips on the same channel (half
before the watch opens, half after it closed), so the push and the round trip
are measured on the same channel in the same run.

Protocol (one line each, on stdout; the driver reads them):

    READY                           channel up, warm-up pings done
    WATCHING <mode>                 the watch is open and the server accepted it
    SAMPLES <mode> <n> v:ns v:ns…   version and time_ns() - value of each value_change, in order (marker last)
    PINGS <mode> <n> ns ns…         Ping round trips (ns) of this phase
    DONE key=value…                 versions of Python and grpcio; exits 0
    ERROR <message>                 on failure; exits 1

Usage (normally by the driver)::

    .venv/bin/python bench/push_receiver.py --address 127.0.0.1:PORT --session SID \\
        --variable stamp --modes client,raw --pings 1000
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
_PKG = str(REPO_ROOT / "priv" / "python")
if _PKG not in sys.path:
    sys.path.insert(0, _PKG)

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from google.protobuf import __version__ as protobuf_version  # noqa: E402
from snakepit_bridge import AsyncSessionContext  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc  # noqa: E402

MODES = ("client", "raw")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def pings(stub: Any, n: int) -> list[int]:
    """``n`` sequential Ping round trips, ns each."""
    request = pb2.PingRequest(message="")
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await stub.Ping(request)
        out.append(time.perf_counter_ns() - t0)
    return out


async def phase_client(channel: grpc.aio.Channel, session_id: str, variable: str) -> list[tuple[int, int]]:
    """Through AsyncSessionContext.watch_variables: the user-facing path."""
    ctx = AsyncSessionContext(session_id, channel)
    samples: list[tuple[int, int]] = []
    watch = ctx.watch_variables([variable], include_initial=False)
    try:
        await watch.start()
        say("WATCHING client")
        async for update in watch:
            now = time.time_ns()
            if update["update_type"] != "value_change":
                continue
            value = update["value"]
            samples.append((update["version"], now - value))
            if value < 0:  # the end marker (its pair is reported too: its receipt time)
                break
    finally:
        await watch.aclose()
    return samples


async def phase_raw(channel: grpc.aio.Channel, session_id: str, variable: str) -> list[tuple[int, int]]:
    """Through the generated stub: the same stream without the client library."""
    stub = pb2_grpc.BridgeServiceStub(channel)
    call = stub.WatchVariables(
        pb2.WatchVariablesRequest(session_id=session_id, variable_identifiers=[variable], include_initial_values=False)
    )
    samples: list[tuple[int, int]] = []
    try:
        await call.initial_metadata()  # the server accepted (and registered) the watch
        say("WATCHING raw")
        async for msg in call:
            now = time.time_ns()
            if msg.update_type != "value_change":
                continue
            value = int(msg.variable.value.value)  # an integer travels as JSON text
            samples.append((msg.variable.version, now - value))
            if value < 0:
                break
    finally:
        call.cancel()
    return samples


PHASES = {"client": phase_client, "raw": phase_raw}


async def main_async(args: argparse.Namespace) -> None:
    modes = [m for m in args.modes.split(",") if m]
    for m in modes:
        if m not in PHASES:
            raise ValueError(f"unknown mode {m!r}; known: {', '.join(PHASES)}")
    channel = grpc.aio.insecure_channel(args.address)
    try:
        await asyncio.wait_for(channel.channel_ready(), timeout=20)
        stub = pb2_grpc.BridgeServiceStub(channel)
        await pings(stub, args.warmup_pings)
        say("READY")
        for mode in modes:
            half = args.pings // 2
            before = await pings(stub, half)
            samples = await PHASES[mode](channel, args.session, args.variable)
            say(f"SAMPLES {mode} {len(samples)} " + " ".join(f"{v}:{ns}" for v, ns in samples))
            after = await pings(stub, args.pings - half)
            both = before + after
            say(f"PINGS {mode} {len(both)} " + " ".join(map(str, both)))
    finally:
        await channel.close()
    say(f"DONE client=grpcio python={platform.python_version()} grpcio={grpc.__version__} protobuf={protobuf_version}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="host:port of the bridge")
    parser.add_argument("--session", required=True)
    parser.add_argument("--variable", required=True, help="an integer variable the driver writes stamps to")
    parser.add_argument("--modes", default="client,raw", help="comma-separated: client, raw (default both)")
    parser.add_argument("--pings", type=int, default=1000, help="timed Ping round trips per phase (default 1000)")
    parser.add_argument("--warmup-pings", type=int, default=100)
    args = parser.parse_args(argv)
    try:
        asyncio.run(main_async(args))
    except Exception as e:  # report, so the driver shows why
        say("ERROR " + " | ".join(f"{type(e).__name__}: {e}".splitlines()))
        traceback.print_exc(file=sys.stdout)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
