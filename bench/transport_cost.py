"""What each transport of snakepit_bridge costs the client: the native extension (tonic) vs grpcio, in one run.

Starts the standalone server, then for each transport (``native``, ``grpc``)
and each mode (asyncio, blocking) times, in this process:

* unary: ``Ping`` through the generated stub (the transport alone) and
  ``get_variable`` through the package; round-trip p50, and CPU per call of
  this process split by thread (``python``: the interpreter's; ``transport``:
  the extension's tokio thread or grpcio's own threads) and of the server;
* watch (asyncio): an update written every millisecond by another process
  (on grpcio, so the writer is the same for both) and received through
  ``AsyncSessionContext.watch_variables``: CPU per received update, by thread.

Each transport runs in a process of its own (grpcio's asyncio support does
not take well to a second event loop in one process). CPU is read from
``/proc`` (10 ms ticks; every figure is over thousands of calls). Prints a
table and native/grpc ratios::

    .venv/bin/python bench/transport_cost.py [--calls 4000] [--updates 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "priv" / "python"))

from snakepit_bridge import (  # noqa: E402
    AsyncSessionContext,
    SessionContext,
    VariableType,
    connect,
    connect_async,
)
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc  # noqa: E402

SERVER = os.environ.get("SNAKEPIT_SERVER_BIN", str(REPO_ROOT / "target" / "release" / "snakepit-bridge-server"))
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
SESSION = "transport-cost"


def thread_ticks() -> dict[str, int]:
    """utime + stime of this process's threads, summed as 'python' (the main thread) and 'transport' (the rest)."""
    out = {"python": 0, "transport": 0}
    main = str(os.getpid())
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["python" if tid == main else "transport"] += int(fields[11]) + int(fields[12])
    return out


def process_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class Meter:
    """CPU of this process's threads and of the server, over a span of ``n`` operations."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = thread_ticks()
        self.server = process_ticks(server_pid)

    def per_op(self, n: int) -> dict[str, float]:
        now = thread_ticks()
        return {
            "python": (now["python"] - self.start["python"]) * TICK_US / n,
            "transport": (now["transport"] - self.start["transport"]) * TICK_US / n,
            "server": (process_ticks(self.server_pid) - self.server) * TICK_US / n,
        }


def p50(samples: list[int]) -> float:
    samples.sort()
    return samples[len(samples) // 2] / 1000


async def unary_aio(address: str, transport: str, calls: int, server_pid: int) -> dict[str, dict[str, float]]:
    out = {}
    async with connect_async(address, token="", transport=transport) as channel:
        stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        ctx = AsyncSessionContext(SESSION, channel)
        ping = pb2.PingRequest(message="")
        cases: dict[str, Callable[[], Awaitable[Any]]] = {
            "Ping (stub)": lambda: stub.Ping(ping),
            "get_variable": lambda: ctx.get_variable("x"),
        }
        for name, call in cases.items():
            for _ in range(calls // 10):
                await call()
            samples = []
            meter = Meter(server_pid)
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                await call()
                samples.append(time.perf_counter_ns() - t0)
            out[f"asyncio {name}"] = {"p50_us": p50(samples), **meter.per_op(calls)}
    return out


def unary_blocking(address: str, transport: str, calls: int, server_pid: int) -> dict[str, dict[str, float]]:
    out = {}
    with connect(address, token="", transport=transport) as channel:
        stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        ctx = SessionContext(SESSION, channel)
        ping = pb2.PingRequest(message="")
        cases: dict[str, Callable[[], Any]] = {
            "Ping (stub)": lambda: stub.Ping(ping),
            "get_variable": lambda: ctx.get_variable("x"),
        }
        for name, call in cases.items():
            for _ in range(calls // 10):
                call()
            samples = []
            meter = Meter(server_pid)
            for _ in range(calls):
                t0 = time.perf_counter_ns()
                call()
                samples.append(time.perf_counter_ns() - t0)
            out[f"blocking {name}"] = {"p50_us": p50(samples), **meter.per_op(calls)}
    return out


async def watch_receive(address: str, transport: str, updates: int, server_pid: int) -> dict[str, float]:
    async with connect_async(address, token="", transport=transport) as channel:
        ctx = AsyncSessionContext(SESSION, channel)
        watch = ctx.watch_variables(["n"], include_initial=False)
        await watch.start()
        writer = subprocess.Popen([sys.executable, __file__, "--write", address, str(updates)])
        meter = Meter(server_pid)
        received = 0
        try:
            async for update in watch:
                received += 1
                if update.value == updates:
                    break
        finally:
            await watch.aclose()
            writer.wait(60)
        figures = meter.per_op(received)
        figures.pop("server")  # the writer's calls are in it too
        return {"received": received, **figures}


def write_paced(address: str, updates: int) -> None:
    """The watch phase's writer: ``n`` = 1..updates, 1 ms apart, on grpcio (the same writer for both transports)."""
    with connect(address, token="", transport="grpc") as channel:
        ctx = SessionContext(SESSION, channel)
        time.sleep(0.2)
        start = time.perf_counter()
        for i in range(1, updates + 1):
            while time.perf_counter() < start + i * 0.001:
                time.sleep(0.0002)
            ctx.update_variable("n", i)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--write", nargs=2, metavar=("ADDRESS", "UPDATES"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=3, metavar=("ADDRESS", "TRANSPORT", "SERVER_PID"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_paced(args.write[0], int(args.write[1]))
        return 0
    if args.measure:
        address, transport, server_pid = args.measure[0], args.measure[1], int(args.measure[2])
        rows = asyncio.run(unary_aio(address, transport, args.calls, server_pid))
        rows.update(unary_blocking(address, transport, args.calls, server_pid))
        rows["asyncio watch, per update"] = asyncio.run(watch_receive(address, transport, args.updates, server_pid))
        print(json.dumps(rows))
        return 0

    server = subprocess.Popen([SERVER, "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert server.stdout is not None
        found = re.search(rb"(127\.0\.0\.1:\d+)", server.stdout.readline())
        if not found:
            raise SystemExit("the server did not print its address")
        address = found.group(1).decode()
        with connect(address, token="", transport="grpc") as channel:
            ctx = SessionContext(SESSION, channel)
            ctx.initialize()
            ctx.register_variable("x", VariableType.FLOAT, 1.0)
            ctx.register_variable("n", VariableType.INTEGER, 0)
        results: dict[str, dict[str, dict[str, float]]] = {}
        for transport in ("native", "grpc"):
            measured = subprocess.run(
                [sys.executable, __file__, "--calls", str(args.calls), "--updates", str(args.updates)]
                + ["--measure", address, transport, str(server.pid)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            results[transport] = json.loads(measured.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(10)

    print(f"client CPU by thread and server CPU, µs per call or per received update ({os.cpu_count()} cores)")
    header = "| case | transport | p50 µs | python | transport thread(s) | client total | server |"
    print(header)
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for case in results["native"]:
        for transport in ("native", "grpc"):
            r = results[transport][case]
            total = r["python"] + r["transport"]
            p = f"{r['p50_us']:.0f}" if "p50_us" in r else "–"
            s = f"{r['server']:.0f}" if "server" in r else "–"
            print(f"| {case} | {transport} | {p} | {r['python']:.0f} | {r['transport']:.0f} | {total:.0f} | {s} |")
    print()
    print("native / grpc:")
    for case in results["native"]:
        n, g = results["native"][case], results["grpc"][case]
        parts = [f"client CPU {(n['python'] + n['transport']) / (g['python'] + g['transport']):.2f}x"]
        if "p50_us" in n:
            parts.insert(0, f"p50 {n['p50_us'] / g['p50_us']:.2f}x")
        print(f"  {case}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
