"""Server CPU per delivered watch message and per unary call, A/B between server binaries.

For each round and each binary (alternating order round to round), starts
``snakepit-bridge-server --listen 127.0.0.1:0 --log error``, registers an
integer variable and measures the server's CPU (utime + stime from
``/proc/PID/stat``) over the timed phase of each mode:

* ``py``: ``--watchers`` WatchVariables streams, each on its own connection,
  from ``--procs`` Python grpcio asyncio processes (raw stubs); ``--updates``
  SetVariable calls ``--interval-ms`` apart from a Python writer, then an end
  marker; timed until every watcher has the marker. Per delivery = CPU /
  (updates x watchers); per update = CPU / updates.
* ``tonic``: the same with the watchers of ``watch_load hold`` (tonic, one
  connection per stream).
* ``write``: one Python writer as fast as it can (each SetVariable awaited)
  for ``--seconds``, with one Python watcher on the variable. Per write.
* ``get``: one Python caller of GetVariable as fast as it can. Per call.

Usage::

    /work/main/.venv/bin/python bench/server_cpu.py --bin A=target/release/snakepit-bridge-server \\
        --bin B=/tmp/old-server --rounds 3 --modes py,tonic,write,get

``--env LABEL:KEY=VALUE`` sets an environment variable for that label's server
(e.g. ``--bin w1=PATH --env w1:TOKIO_WORKER_THREADS=1``, the same binary under
two labels). ``--trace strace|perf`` attaches ``strace -c -f`` or ``perf
record --call-graph dwarf`` (Rust frames have no frame pointers) to the
server for each timed phase (files in ``--trace-dir``; the CPU figures of
such a run include the tracer's overhead). CPU is counted in
clock ticks (10 ms), so use enough updates (``--updates 800``) for the sums.

Prints one line per measurement and a summary (median per binary and mode).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "priv" / "python"))

import grpc  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc  # noqa: E402

INT_URL = "type.googleapis.com/snakepit.integer"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu_s(pid: int, name: str) -> float:
    """CPU of the server's threads called `name` (the watch dispatcher: snakepit-watch)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() == name:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
        except FileNotFoundError:
            continue
    return total


# ------------------------------------------------------------------ worker: Python watchers


async def worker(address: str, session: str, key: str, n: int) -> None:
    channels = [grpc.aio.insecure_channel(address, options=OWN_CONNECTION) for _ in range(n)]
    calls = []
    for ch in channels:
        stub = pb2_grpc.BridgeServiceStub(ch)
        call = stub.WatchVariables(
            pb2.WatchVariablesRequest(session_id=session, variable_identifiers=[key], include_initial_values=False)
        )
        await call.initial_metadata()
        calls.append(call)
    got = [0] * n

    async def watch(i: int) -> None:
        async for msg in calls[i]:
            got[i] += 1
            if int(msg.variable.value.value) < 0:
                return

    tasks = [asyncio.create_task(watch(i)) for i in range(n)]
    print("LIVE", flush=True)
    await asyncio.gather(*tasks)
    print(f"DRAINED {sum(got)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for ch in channels:
        await ch.close()


# ------------------------------------------------------------------ driver


class Server:
    def __init__(self, binary: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [binary, "--listen", "127.0.0.1:0", "--log", "error"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**{k: v for k, v in os.environ.items() if k != "SNAKEPIT_BRIDGE_TOKEN"}, **env},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        assert line.startswith("listening on "), line
        self.address = line.removeprefix("listening on ")
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def any_int(v: int) -> any_pb2.Any:
    return any_pb2.Any(type_url=INT_URL, value=b"%d" % v)


async def setup(stub: pb2_grpc.BridgeServiceStub, session: str, key: str) -> None:
    await stub.InitializeSession(pb2.InitializeSessionRequest(session_id=session))
    await stub.RegisterVariable(
        pb2.RegisterVariableRequest(session_id=session, name=key, type="integer", initial_value=any_int(0))
    )


def spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def expect(p: subprocess.Popen[bytes], word: str) -> str:
    assert p.stdout is not None
    while True:
        line = p.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"watcher process ended before {word}")
        if line.startswith(word):
            return line.strip()


def start_trace(server: Server, args: argparse.Namespace, tag: str) -> subprocess.Popen[bytes] | None:
    """With --trace strace|perf, attaches to the server for the timed phase (figures then include its cost)."""
    if not args.trace:
        return None
    out = f"{args.trace_dir}/{args.trace}-{tag}"
    if args.trace == "strace":
        cmd = ["strace", "-c", "-f", "-p", str(server.pid), "-o", out + ".txt"]
    else:
        cmd = [
            "perf",
            "record",
            "-F",
            "1000",
            "--call-graph",
            "dwarf,16384",
            "-p",
            str(server.pid),
            "-o",
            out + ".data",
        ]
    p = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return p


def stop_trace(p: subprocess.Popen[bytes] | None) -> None:
    if p is not None:
        p.send_signal(2)
        p.wait(30)


async def fan_out(server: Server, args: argparse.Namespace, kind: str) -> dict[str, float]:
    session, key = "bench", "x"
    async with grpc.aio.insecure_channel(server.address, options=OWN_CONNECTION) as ch:
        stub = pb2_grpc.BridgeServiceStub(ch)
        await setup(stub, session, key)
        if kind == "py":
            per = args.watchers // args.procs
            procs = [
                spawn([sys.executable, __file__, "--worker", server.address, session, key, str(per)])
                for _ in range(args.procs)
            ]
            watchers = per * args.procs
        else:
            cmd = [args.watch_load, "hold", "--address", server.address, "--session", session, "--variable", key]
            cmd += ["--connections", str(args.watchers), "--streams", str(args.watchers)]
            procs = [spawn(cmd)]
            watchers = args.watchers
        for p in procs:
            expect(p, "LIVE")
        await asyncio.sleep(0.3)
        trace = start_trace(server, args, f"{args.label}-{kind}")
        c0 = cpu_s(server.pid)
        d0 = thread_cpu_s(server.pid, "snakepit-watch")
        t0 = time.monotonic()
        for i in range(args.updates):
            target = t0 + i * args.interval_ms / 1000
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await stub.SetVariable(
                pb2.SetVariableRequest(session_id=session, variable_identifier=key, value=any_int(i + 1))
            )
        await stub.SetVariable(pb2.SetVariableRequest(session_id=session, variable_identifier=key, value=any_int(-1)))
        for p in procs:
            await asyncio.get_running_loop().run_in_executor(None, expect, p, "DRAINED")
        c1 = cpu_s(server.pid)
        d1 = thread_cpu_s(server.pid, "snakepit-watch")
        stop_trace(trace)
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        for p in procs:
            p.wait(10)
    cpu = c1 - c0
    n = args.updates + 1
    return {
        "us_per_update": cpu / n * 1e6,
        "us_per_delivery": cpu / (n * watchers) * 1e6,
        "dispatcher_us_per_delivery": (d1 - d0) / (n * watchers) * 1e6,
    }


async def flat_out(server: Server, args: argparse.Namespace, kind: str) -> dict[str, float]:
    session, key = "bench", "x"
    async with grpc.aio.insecure_channel(server.address, options=OWN_CONNECTION) as ch:
        stub = pb2_grpc.BridgeServiceStub(ch)
        await setup(stub, session, key)
        procs = []
        if kind == "write":
            procs = [spawn([sys.executable, __file__, "--worker", server.address, session, key, "1"])]
            expect(procs[0], "LIVE")
        get = pb2.GetVariableRequest(session_id=session, variable_identifier=key)
        for _ in range(200):  # warm-up
            await stub.GetVariable(get)
        trace = start_trace(server, args, f"{args.label}-{kind}")
        c0 = cpu_s(server.pid)
        t0 = time.monotonic()
        calls = 0
        while time.monotonic() - t0 < args.seconds:
            if kind == "write":
                await stub.SetVariable(
                    pb2.SetVariableRequest(session_id=session, variable_identifier=key, value=any_int(calls + 1))
                )
            else:
                await stub.GetVariable(get)
            calls += 1
        c1 = cpu_s(server.pid)
        stop_trace(trace)
        if kind == "write":
            await stub.SetVariable(
                pb2.SetVariableRequest(session_id=session, variable_identifier=key, value=any_int(-1))
            )
            expect(procs[0], "DRAINED")
            assert procs[0].stdin is not None
            procs[0].stdin.close()
            procs[0].wait(10)
    return {"us_per_call": (c1 - c0) / calls * 1e6, "calls_per_s": calls / args.seconds}


async def measure(binary: str, mode: str, args: argparse.Namespace) -> dict[str, float]:
    server = Server(binary, args.envs.get(args.label, {}))
    try:
        if mode in ("py", "tonic"):
            return await fan_out(server, args, mode)
        return await flat_out(server, args, mode)
    finally:
        server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        address, session, key, n = sys.argv[2:6]
        asyncio.run(worker(address, session, key, int(n)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", required=True, help="LABEL=PATH of a server binary; repeat for A/B")
    ap.add_argument("--env", action="append", default=[], help="LABEL:KEY=VALUE, set for that binary's server")
    ap.add_argument("--modes", default="py,tonic,write,get")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--watchers", type=int, default=100)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--updates", type=int, default=200)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument(
        "--trace",
        choices=["strace", "perf"],
        help="attach strace -c or perf record (dwarf call graphs) during each timed phase",
    )
    ap.add_argument("--trace-dir", default="/tmp")
    ap.add_argument("--watch-load", default=str(ROOT / "target" / "release" / "watch_load"))
    args = ap.parse_args()
    bins = [b.split("=", 1) for b in args.bin]
    args.envs = {}
    for e in args.env:
        label, kv = e.split(":", 1)
        k, v = kv.split("=", 1)
        args.envs.setdefault(label, {})[k] = v
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = bins if r % 2 == 0 else list(reversed(bins))
        for mode in args.modes.split(","):
            for label, path in order:
                args.label = label
                res = asyncio.run(measure(path, mode, args))
                results.setdefault((mode, label), []).append(res)
                figures = ", ".join(f"{k} {v:.1f}" for k, v in res.items())
                print(f"round {r} {mode:5} {label:8} {figures}", flush=True)
    print("\nmedians:")
    for (mode, label), rs in results.items():
        keys = rs[0].keys()
        med = ", ".join(f"{k} {statistics.median(x[k] for x in rs):.1f}" for k in keys)
        print(f"  {mode:5} {label:8} {med}   (n={len(rs)})")


if __name__ == "__main__":
    main()
