"""What a token costs: the same calls against two servers, one with a token and one without.

Starts two standalone servers on loopback in one run (``--listen 127.0.0.1:0``;
one with ``SNAKEPIT_BRIDGE_TOKEN`` set, one without), and measures, through the
``snakepit_bridge`` package as users call it (``SessionContext`` on a
``connect()`` channel):

* **unary**: one ``get_variable`` round trip, client-side latency, and the
  server's CPU per call (its utime + stime from ``/proc``, over the block);
* **raw unary**: the same ``GetVariable`` through the generated stub on a plain
  channel, the header passed as call metadata (no client interceptor), so the
  difference is the server's check plus the header's bytes, and the gap to
  the package's figure is the package's own cost (its token channel among it);
* **watch push**: a write (``update_variable``) to a variable watched on
  another connection of the same process, from just before the write to the
  update's arrival in the watcher's thread. A token is checked once, when the
  stream opens, so pushes should not differ.

Rounds alternate between the two servers in ABBA order (none, token, token,
none, ...), so drift of a shared machine and any advantage of going first
fall on both; figures are medians over all rounds.

Usage::

    .venv/bin/python bench/auth_cost.py              # 5 rounds x 2,000 calls and 1,000 pushes
    .venv/bin/python bench/auth_cost.py --quick      # a few seconds
    .venv/bin/python bench/auth_cost.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
_PKG = str(REPO_ROOT / "priv" / "python")
if _PKG not in sys.path:
    sys.path.insert(0, _PKG)

import grpc  # noqa: E402
from snakepit_bridge import SessionContext, VariableType, connect  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A server binary started for this bench; ``token`` is None for the one without."""

    label: str
    token: str | None
    process: subprocess.Popen[bytes] = field(repr=False)
    address: str = ""

    @classmethod
    def start(cls, label: str, token: str | None) -> Server:
        binary = os.environ.get("SNAKEPIT_SERVER_BIN") or str(REPO_ROOT / "target/release/snakepit-bridge-server")
        env = {k: v for k, v in os.environ.items() if k != "SNAKEPIT_BRIDGE_TOKEN"}
        if token:
            env["SNAKEPIT_BRIDGE_TOKEN"] = token
        process = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--log", "error"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode().strip()
        if not line.startswith("listening on "):
            process.kill()
            raise RuntimeError(f"{binary} did not start: {line!r}")
        return cls(label, token, process, line.removeprefix("listening on "))

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@dataclass
class Client:
    """A session on one server: a package context, a raw stub, and a watcher thread."""

    server: Server
    ctx: SessionContext
    stub: pb2_grpc.BridgeServiceStub
    metadata: tuple[tuple[str, str], ...]
    arrivals: queue.Queue[int]
    closers: list[Any]

    @classmethod
    def open(cls, server: Server) -> Client:
        writer = connect(server.address, token=server.token or "")
        watcher = connect(server.address, token=server.token or "")
        ctx = SessionContext(f"auth-bench-{secrets.token_hex(4)}", writer)
        ctx.initialize()
        ctx.register_variable("x", VariableType.INTEGER, 0)
        watch = SessionContext(ctx.session_id, watcher).watch_variables(["x"], include_initial=False)
        arrivals: queue.Queue[int] = queue.Queue()

        def receive() -> None:
            for _ in watch:
                arrivals.put(time.perf_counter_ns())

        threading.Thread(target=receive, daemon=True).start()
        metadata = (("authorization", f"Bearer {server.token}"),) if server.token else ()
        plain = grpc.insecure_channel(server.address)
        stub = pb2_grpc.BridgeServiceStub(plain)
        return cls(server, ctx, stub, metadata, arrivals, [watch, writer, watcher, plain])

    def unary(self, n: int) -> tuple[list[float], float]:
        cpu0 = self.server.cpu_seconds()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            self.ctx.get_variable("x")
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples, (self.server.cpu_seconds() - cpu0) / n * 1e6

    def raw_unary(self, n: int) -> list[float]:
        request = pb2.GetVariableRequest(session_id=self.ctx.session_id, variable_identifier="x")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            self.stub.GetVariable(request, metadata=self.metadata)
            samples.append((time.perf_counter_ns() - t0) / 1000)
        return samples

    def pushes(self, n: int) -> list[float]:
        # The first write makes sure the watch is registered before timing starts.
        self.ctx.update_variable("x", -1)
        self.arrivals.get(timeout=10)
        samples = []
        for i in range(n):
            t0 = time.perf_counter_ns()
            self.ctx.update_variable("x", i)
            samples.append((self.arrivals.get(timeout=10) - t0) / 1000)
            time.sleep(0.001)
        return samples

    def close(self) -> None:
        for c in self.closers:
            c.close()


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(rounds: int, calls: int, pushes: int) -> dict[str, Any]:
    servers = [Server.start("none", None), Server.start("token", secrets.token_hex(32))]
    try:
        clients = [Client.open(s) for s in servers]
        data: dict[str, dict[str, list[float]]] = {
            c.server.label: {"unary": [], "unary_cpu": [], "raw": [], "push": []} for c in clients
        }
        for c in clients:  # warm-up, not recorded
            c.unary(200)
            c.raw_unary(200)
        for r in range(rounds):
            for c in clients if r % 2 == 0 else clients[::-1]:
                d = data[c.server.label]
                samples, cpu = c.unary(calls)
                d["unary"] += samples
                d["unary_cpu"].append(cpu)
                d["raw"] += c.raw_unary(calls)
                d["push"] += c.pushes(pushes)
        for c in clients:
            c.close()
    finally:
        for s in servers:
            s.stop()
    summary: dict[str, Any] = {"rounds": rounds, "calls": calls, "pushes": pushes}
    for label, d in data.items():
        summary[label] = {
            "unary_p50_us": statistics.median(d["unary"]),
            "unary_p99_us": p(d["unary"], 0.99),
            "unary_server_cpu_us": statistics.median(d["unary_cpu"]),
            "raw_p50_us": statistics.median(d["raw"]),
            "raw_p99_us": p(d["raw"], 0.99),
            "push_p50_us": statistics.median(d["push"]),
            "push_p99_us": p(d["push"], 0.99),
        }
    return summary


def format_result(r: dict[str, Any]) -> str:
    none, token = r["none"], r["token"]
    rows = [
        ("unary get_variable through the package, p50 µs", "unary_p50_us"),
        ("unary get_variable through the package, p99 µs", "unary_p99_us"),
        ("server CPU per unary call, µs", "unary_server_cpu_us"),
        ("raw GetVariable (header as call metadata), p50 µs", "raw_p50_us"),
        ("raw GetVariable, p99 µs", "raw_p99_us"),
        ("watch push (write → watcher), p50 µs", "push_p50_us"),
        ("watch push, p99 µs", "push_p99_us"),
    ]
    lines = [
        f"{r['rounds']} alternating rounds of {r['calls']} calls and {r['pushes']} pushes per server",
        "",
        "| figure | no token | token | token / none |",
        "| --- | ---: | ---: | ---: |",
    ]
    for title, key in rows:
        lines.append(f"| {title} | {none[key]:.1f} | {token[key]:.1f} | {token[key] / none[key]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 200 calls and 100 pushes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--pushes", type=int, default=1000)
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.calls, args.pushes = 2, 200, 100
    result = run(args.rounds, args.calls, args.pushes)
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
