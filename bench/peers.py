"""The bridge beside its peers: the same four workloads against Redis, NATS and the bridge, in one run.

Starts, on loopback and with no persistence, ``redis-server`` (``--save ''
--appendonly no``), ``nats-server`` (``-js``; the KV bucket has
``storage=memory``), the standalone ``snakepit-bridge-server`` (``--listen
127.0.0.1:0``, no token) and, for W1a, a BEAM that embeds the bridge's server
(``mix run bench/peers_w1a.exs``: ``auth: false``, port 0, driven over its
stdin), drives each with its standard Python client
(redis-py asyncio, nats-py, and ``snakepit_bridge``'s ``AsyncSessionContext``
on ``connect_async``, on its native transport when installed; the generated
stub on a grpcio channel beside it as "bridge raw stub"), and
writes the comparison: ``peers.md`` (every row with its target and MET /
MISSED) and ``peers.png`` (W1 latency CDFs, bars for W2–W4).

Workloads, identical for every system:

* **W1**: 2,000 updates 1 ms apart to one watcher (another process); latency =
  receipt ``time.time_ns()`` − the ``time.time_ns()`` the writer put in the
  value just before the write. Bridge: W1a, ``SessionStore.update_variable/3``
  in the BEAM (through the NIF; the BEAM reads ``:os.system_time(:nanosecond)``,
  the same CLOCK_REALTIME), and W1b, a Python ``update_variable``, both
  watched through ``snakepit_bridge`` exactly alike; Redis PUBLISH →
  SUBSCRIBE; NATS core publish → subscribe; NATS KV put → watch. 3 runs.
* **W2**: 100 watchers on their own connections, from 4 processes of 25
  (asyncio), 200 updates 5 ms apart: per-delivery and last-watcher latency,
  and the server's CPU per update (utime + stime from ``/proc/PID/stat`` over
  the timed phase). 3 runs; worst / best of the last-watcher p50.
* **W3**: one writer as fast as it can (each write awaited) to one watcher
  for 5 s: writes/s, distinct values delivered, server CPU per write.
* **W4**: 1,000 values read and written in one call vs 1,000 single calls
  (bridge: ``get_variables`` / ``update_variables`` vs ``get_variable`` /
  ``update_variable``; Redis: MGET / MSET vs GET / SET; NATS: –). 3 runs.

A watcher that falls behind may be given a later value instead of every one
(the bridge coalesces); an update k then counts as received when the watcher
receives a value written at or after it (the end marker included), and ``got``
says how many arrived one by one.

Usage::

    bench/.venv/bin/python bench/peers.py                      # full (~3-4 min), into bench/results/
    bench/.venv/bin/python bench/peers.py --quick --out /tmp/p  # tiny, a few seconds of workload
    bench/.venv/bin/python bench/peers.py --json /tmp/peers.json

Normally run by ``bash scripts/bench.sh --peers``, which installs the servers
and the clients first. ``redis-server`` / ``nats-server`` are found on PATH
(or ``$REDIS_SERVER_BIN`` / ``$NATS_SERVER_BIN``), the bridge as
``$SNAKEPIT_SERVER_BIN`` or ``target/release/snakepit-bridge-server``, and
``mix`` on PATH runs W1a's BEAM (in the inherited ``MIX_ENV``; ``mix run``
compiles the project and its NIF first if ``mix compile`` has not).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
_PKG = str(REPO_ROOT / "priv" / "python")
if _PKG not in sys.path:
    sys.path.insert(0, _PKG)

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import nats  # noqa: E402
import redis  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402
from nats.js.api import StorageType  # noqa: E402
from snakepit_bridge import AsyncSessionContext, VariableType, connect_async  # noqa: E402
from snakepit_bridge._native import AsyncNativeChannel  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
END_MARKER = -1
#: W3 writes stamps (time.time_ns(), far above this) and warm-up values below it.
STAMP_FLOOR = 10**15
INT_URL = "type.googleapis.com/snakepit.integer"
FLOAT_URL = "type.googleapis.com/snakepit.float"
#: Every gRPC channel gets its own connection (grpc shares subchannels between equal channels otherwise).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
KV_BUCKET = "peers"
WORKERS = 4

SYSTEMS = {
    "bridge_elixir": "bridge, Elixir writer (NIF)",
    "bridge": "bridge (snakepit_bridge)",
    "bridge_raw": "bridge raw stub",
    "redis": "Redis pub/sub",
    "nats": "NATS core",
    "nats_kv": "NATS KV",
}
PEERS = ("redis", "nats", "nats_kv")
W1_SYSTEMS = ("bridge_elixir", "bridge", "bridge_raw", "redis", "nats", "nats_kv")
W1_LABELS = {
    "bridge_elixir": "W1a: Elixir write through the NIF → Python watcher",
    "bridge": "W1b: " + SYSTEMS["bridge"],
    "bridge_raw": "W1b: " + SYSTEMS["bridge_raw"],
}


def say(line: str) -> None:
    print(f"[peers] {line}", flush=True)


# --------------------------------------------------------------------------- servers


def terminate(process: subprocess.Popen[Any]) -> None:
    """SIGTERM by PID, then SIGKILL if it has not exited 10 s later."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class Server:
    """A server process this bench started; stopped by its PID."""

    name: str
    process: subprocess.Popen[bytes]
    address: str  # host:port
    version: str = ""
    log: Any = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu_s(self) -> float:
        """utime + stime of the whole process (all threads), seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} (pid {self.pid}) exited with {self.process.returncode}: {self.tail()}")

    def tail(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")[-1500:]

    def stop(self) -> None:
        terminate(self.process)
        if self.log is not None:
            self.log.close()


def _binary(env: str, name: str, fallback: Path | None = None) -> str:
    found = os.environ.get(env) or shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if not found and fallback is not None and fallback.is_file():
        found = str(fallback)
    if not found:
        raise FileNotFoundError(f"{name} not found (set ${env}); `bash scripts/bench.sh --peers` installs it")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(server: Server, port: int, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        server.check()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{server.name} did not listen on port {port} within {deadline_s:.0f} s") from None
            time.sleep(0.02)


def _version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def start_redis() -> Server:
    binary = _binary("REDIS_SERVER_BIN", "redis-server")
    port = _free_port()
    log = tempfile.TemporaryFile()
    cmd = [binary, "--save", "", "--appendonly", "no", "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--daemonize", "no", "--loglevel", "warning"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server("redis-server", proc, f"127.0.0.1:{port}", _version([binary, "--version"]), log)
    try:
        _wait_port(server, port)
    except BaseException:
        server.stop()
        raise
    return server


def start_nats(store_dir: str) -> Server:
    binary = _binary("NATS_SERVER_BIN", "nats-server")
    port = _free_port()
    log = tempfile.TemporaryFile()
    cmd = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", store_dir]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server("nats-server", proc, f"127.0.0.1:{port}", _version([binary, "--version"]), log)
    try:
        _wait_port(server, port)
    except BaseException:
        server.stop()
        raise
    return server


def start_bridge() -> Server:
    binary = _binary(
        "SNAKEPIT_SERVER_BIN", "snakepit-bridge-server", REPO_ROOT / "target" / "release" / "snakepit-bridge-server"
    )
    env = {k: v for k, v in os.environ.items() if k != "SNAKEPIT_BRIDGE_TOKEN"}
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--log", "error"],
        stdout=subprocess.PIPE,
        stderr=log,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    server = Server("snakepit-bridge-server", proc, "", _version([binary, "--version"]), log)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        os.set_blocking(proc.stdout.fileno(), False)
        while b"\n" not in line:
            server.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the bridge printed no 'listening on' line within 20 s ({line!r})")
            chunk = proc.stdout.read(4096)
            if chunk:
                line += chunk
            else:
                time.sleep(0.01)
        first = line.split(b"\n", 1)[0].decode().strip()
        if not first.startswith("listening on "):
            raise RuntimeError(f"the bridge printed {first!r} first")
        server.address = first.removeprefix("listening on ")
        # The server prints nothing more on stdout; closing our end is safe.
        proc.stdout.close()
    except BaseException:
        server.stop()
        raise
    return server


class ElixirWriter:
    """W1a's writer: a BEAM (``mix run bench/peers_w1a.exs``) embedding the bridge's server, writing through the NIF.

    One per run of this script, driven by line commands on its stdin (the protocol is in that file). A thread
    reads its stdout into a queue, so a wait for a reply has a deadline and the event loop is never blocked.
    ``mix run`` compiles first when needed (``scripts/bench.sh --peers`` has already run ``mix compile``).
    """

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SNAKEPIT_BRIDGE_TOKEN"}
        self.process = subprocess.Popen(
            ["mix", "run", "bench/peers_w1a.exs"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.log: deque[str] = deque(maxlen=40)
        self.address = ""
        self.version = ""
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)

    async def expect(self, reply: str, timeout_s: float) -> str:
        """The rest of the next ``W1A <reply> …`` line; other output is kept for error messages."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no 'W1A {reply}' from the BEAM within {timeout_s:.0f} s: {self.tail()}")
            try:
                # Short waits: a thread blocked in get() would hold up asyncio.run's exit after a failure.
                line = await asyncio.to_thread(self.lines.get, True, min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                code = self.process.wait(10)
                raise RuntimeError(f"the BEAM (pid {self.pid}) exited with {code}: {self.tail()}")
            if line.startswith("W1A ERROR"):
                raise RuntimeError(f"the BEAM failed: {line.removeprefix('W1A ERROR ')}")
            if line.startswith(f"W1A {reply}"):
                return line.removeprefix(f"W1A {reply}").strip()
            self.log.append(line[:500])

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command.encode() + b"\n")
        self.process.stdin.flush()

    async def start(self, timeout_s: float = 300.0) -> None:
        fields = dict(kv.split("=", 1) for kv in (await self.expect("READY", timeout_s)).split())
        self.address = fields["address"]
        self.version = f"Erlang/OTP {fields['otp']}, Elixir {fields['elixir']}, {fields['schedulers']} schedulers"

    async def session(self) -> str:
        sid = f"peers-w1a-{uuid.uuid4().hex[:10]}"
        self.send(f"session {sid}")
        await self.expect(f"SESSION {sid}", 30)
        return sid

    async def write(self, sid: str, warmup: int, updates: int, interval_ms: int) -> dict[str, Any]:
        """Like ``scheduled_writes``, done by the BEAM: the timed updates' stamps and their mean gap."""
        self.send(f"write {sid} {warmup} {updates} {interval_ms}")
        n, *rest = (await self.expect("STAMPS", 60 + 10 * (warmup + updates) * interval_ms / 1000)).split()
        stamps = [int(x) for x in rest]
        if len(stamps) != int(n) or len(stamps) != updates:
            raise RuntimeError(f"the BEAM reported {len(stamps)} stamps (said {n}) for {updates} updates")
        gaps = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:], strict=False)]
        return {"stamps": stamps, "gap_ms": statistics.fmean(gaps) if gaps else None}

    async def delete(self, sid: str) -> None:
        self.send(f"delete {sid}")
        await self.expect(f"DELETED {sid}", 30)

    def tail(self) -> str:
        return "\n".join(self.log)[-1500:]

    def stop(self) -> None:
        """``quit`` (the server stops, the VM halts); SIGTERM, then SIGKILL, by PID if it does not."""
        if self.process.poll() is None:
            try:
                self.send("quit")
                self.process.stdin.close()  # type: ignore[union-attr]
                self.process.wait(15)
            except (OSError, subprocess.TimeoutExpired):
                terminate(self.process)


# --------------------------------------------------------------------------- clients: watchers and writers

Values = AsyncIterator[int]
Closer = Callable[[], Awaitable[None]]

#: Errors nats-py reported in this process (a slow consumer drops messages), counted instead of logged.
NATS_ERRORS: dict[str, int] = {}


async def _nats_error(e: Exception) -> None:
    NATS_ERRORS[type(e).__name__] = NATS_ERRORS.get(type(e).__name__, 0) + 1


async def nats_connect(address: str) -> Any:
    return await nats.connect(f"nats://{address}", allow_reconnect=False, error_cb=_nats_error)


async def open_watch(spec: dict[str, Any]) -> tuple[Values, Closer]:
    """Subscribe as ``spec["system"]`` does; returns once the server has the subscription."""
    system, address, key = spec["system"], spec["address"], spec["key"]
    if system == "bridge":
        channel = connect_async(address, options=OWN_CONNECTION)
        watch = AsyncSessionContext(spec["session"], channel).watch_variables([key], include_initial=False)
        await watch.start()

        async def bridge_values() -> Values:
            async for update in watch:
                if update["update_type"] == "value_change":
                    yield update["value"]

        async def bridge_close() -> None:
            await watch.aclose()
            await channel.close()

        return bridge_values(), bridge_close
    if system == "bridge_raw":
        raw_channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        stub = pb2_grpc.BridgeServiceStub(raw_channel)  # type: ignore[no-untyped-call]
        request = pb2.WatchVariablesRequest(
            session_id=spec["session"], variable_identifiers=[key], include_initial_values=False
        )
        call = stub.WatchVariables(request)
        await call.initial_metadata()

        async def raw_values() -> Values:
            async for msg in call:
                if msg.update_type == "value_change":
                    yield int(msg.variable.value.value)

        async def raw_close() -> None:
            call.cancel()
            await raw_channel.close()

        return raw_values(), raw_close
    if system == "redis":
        host, port = address.rsplit(":", 1)
        r = aioredis.Redis(host=host, port=int(port))
        ps = r.pubsub()
        await ps.subscribe(key)
        confirm = await ps.get_message(timeout=10.0)
        if not confirm or confirm["type"] != "subscribe":
            raise RuntimeError(f"redis SUBSCRIBE not confirmed: {confirm!r}")

        async def redis_values() -> Values:
            async for msg in ps.listen():
                if msg["type"] == "message":
                    yield int(msg["data"])

        async def redis_close() -> None:
            await ps.aclose()
            await r.aclose()

        return redis_values(), redis_close
    if system in ("nats", "nats_kv"):
        nc = await nats_connect(address)
        if system == "nats":
            sub = await nc.subscribe(key)
            await nc.flush()  # the server has the SUB

            async def nats_values() -> Values:
                async for msg in sub.messages:
                    yield int(msg.data)

            values = nats_values()
        else:
            kv = await nc.jetstream().key_value(spec["bucket"])
            watcher = await kv.watch(key)

            async def kv_values() -> Values:
                async for entry in watcher:
                    if entry is not None and entry.value is not None and entry.operation is None:
                        yield int(entry.value)

            values = kv_values()

        async def nats_close() -> None:
            await nc.close()

        return values, nats_close
    raise ValueError(f"unknown system {system!r}")


Write = Callable[[int], Awaitable[Any]]


async def open_writer(spec: dict[str, Any]) -> tuple[Write, Closer]:
    """A writer of integer values to ``spec["key"]``; ``flush`` is awaited before the end marker."""
    system, address, key = spec["system"], spec["address"], spec["key"]
    if system == "bridge":
        channel = connect_async(address, options=OWN_CONNECTION)
        ctx = AsyncSessionContext(spec["session"], channel)

        async def bridge_write(v: int) -> Any:
            return await ctx.update_variable(key, v)

        return bridge_write, channel.close
    if system == "bridge_raw":
        raw_channel = grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
        stub = pb2_grpc.BridgeServiceStub(raw_channel)  # type: ignore[no-untyped-call]
        session = spec["session"]

        async def raw_write(v: int) -> Any:
            value = any_pb2.Any(type_url=INT_URL, value=b"%d" % v)
            return await stub.SetVariable(
                pb2.SetVariableRequest(session_id=session, variable_identifier=key, value=value)
            )

        return raw_write, raw_channel.close
    if system == "redis":
        host, port = address.rsplit(":", 1)
        r = aioredis.Redis(host=host, port=int(port))

        async def redis_write(v: int) -> Any:
            return await r.publish(key, b"%d" % v)

        return redis_write, r.aclose
    if system in ("nats", "nats_kv"):
        nc = await nats_connect(address)
        if system == "nats":

            async def nats_write(v: int) -> Any:
                await nc.publish(key, b"%d" % v)
                if v == END_MARKER:
                    await nc.flush()  # nothing buffered is left behind

            write: Write = nats_write
        else:
            kv = await nc.jetstream().key_value(spec["bucket"])

            async def kv_write(v: int) -> Any:
                return await kv.put(key, b"%d" % v)

            write = kv_write
        return write, nc.close
    raise ValueError(f"unknown system {system!r}")


# --------------------------------------------------------------------------- watcher processes


def worker_main(conn: Connection) -> None:
    """A watcher process: runs watch jobs sent by the driver until it gets ``None``."""
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        try:
            result = asyncio.run(_watch_job(job, conn))
        except BaseException as e:  # noqa: BLE001 - reported to the driver
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"))
        else:
            conn.send(("done", result))


async def _watch_job(job: dict[str, Any], conn: Connection) -> dict[str, Any]:
    """Open ``job["watchers"]`` watches, say READY, collect until each has the end marker (or the deadline)."""
    opened = await asyncio.gather(*(open_watch(job) for _ in range(job["watchers"])))
    conn.send(("ready", len(opened)))
    NATS_ERRORS.clear()
    cpu0 = time.process_time()
    count_mode = job.get("count", False)
    samples: list[list[tuple[int, int]]] = [[] for _ in opened]
    counts = [0] * len(opened)

    async def collect(i: int, values: Values) -> None:
        out = samples[i]
        last = None
        async for v in values:
            now = time.time_ns()
            if count_mode:
                if v >= STAMP_FLOOR and v != last:
                    counts[i] += 1
                    last = v
                if v < 0:
                    out.append((v, now))
                    return
                continue
            out.append((v, now))
            if v < 0:
                return

    timed_out = False
    try:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(collect(i, values) for i, (values, _c) in enumerate(opened))), job["timeout_s"]
            )
        except asyncio.TimeoutError:
            timed_out = True
        # This process's CPU (all threads) while receiving: the client side of a delivery.
        cpu_s = time.process_time() - cpu0
    finally:
        for _values, close in opened:
            try:
                await asyncio.wait_for(close(), 5)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
    received = sum(len(x) for x in samples) if not count_mode else sum(counts)
    return {
        "samples": samples,
        "counts": counts,
        "timed_out": timed_out,
        "cpu_s": cpu_s,
        "received": received,
        "nats_errors": dict(NATS_ERRORS),
    }


class Pool:
    """``WORKERS`` watcher processes (spawned once, reused by every job); stopped by PID at the end."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child,), daemon=True)
            p.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(p)

    def stop(self) -> None:
        for c in self.conns:
            try:
                c.send(None)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(5)


async def _recv(conn: Connection, deadline: float, what: str) -> tuple[str, Any]:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not await asyncio.to_thread(conn.poll, remaining):
        raise TimeoutError(f"no {what} from a watcher process in time")
    msg: tuple[str, Any] = conn.recv()
    if msg[0] == "error":
        raise RuntimeError(f"watcher process failed: {msg[1]}")
    return msg


async def with_watchers(
    pool: Pool,
    spec: dict[str, Any],
    per_process: list[int],
    drive: Callable[[], Awaitable[dict[str, Any]]],
    *,
    count: bool = False,
    timeout_s: float = 60.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start watch jobs (``per_process[i]`` watchers in process i), run ``drive`` once all are ready, collect."""
    used = [(conn, n) for conn, n in zip(pool.conns, per_process, strict=False) if n > 0]
    for conn, n in used:
        conn.send({**spec, "watchers": n, "count": count, "timeout_s": timeout_s})
    deadline = time.monotonic() + 60
    for conn, _n in used:
        await _recv(conn, deadline, "READY")
    driven = await drive()
    deadline = time.monotonic() + timeout_s + 30
    results = [(await _recv(conn, deadline, "result"))[1] for conn, _n in used]
    return driven, results


# --------------------------------------------------------------------------- the driver's side of W1–W3


async def scheduled_writes(write: Write, warmup: int, updates: int, interval_s: float) -> dict[str, Any]:
    """``warmup`` + ``updates`` writes on a fixed schedule (absolute times); each value is ``time.time_ns()``."""
    stamps: list[int] = []
    start = time.perf_counter() + 0.005
    for i in range(warmup + updates + 1):
        delay = start + i * interval_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if i == warmup + updates:
            await write(END_MARKER)
            break
        stamp = time.time_ns()
        await write(stamp)
        if i >= warmup:
            stamps.append(stamp)
    gaps = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"stamps": stamps, "gap_ms": statistics.fmean(gaps) if gaps else None}


def receipts(stamps: list[int], got: list[tuple[int, int]]) -> tuple[list[int | None], int]:
    """Per sent stamp, the receipt time of the first value at or after it (the marker counts), and how many exactly."""
    at: list[int | None] = [None] * len(stamps)
    exact = 0
    k = 0
    wanted = set(stamps)
    for v, t in got:
        if v in wanted:
            exact += 1
        while k < len(stamps) and (v < 0 or stamps[k] <= v):
            at[k] = t
            k += 1
    return at, exact


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# --------------------------------------------------------------------------- runs


@dataclass
class Env:
    bridge: Server
    redis: Server
    nats: Server
    pool: Pool
    quick: bool
    beam: ElixirWriter

    def server(self, system: str) -> Server:
        return {"bridge": self.bridge, "bridge_raw": self.bridge, "redis": self.redis}.get(system, self.nats)

    async def target(self, system: str, tag: str) -> dict[str, Any]:
        """A fresh key (and, for the bridge, a session with an integer variable) for one run."""
        key = f"{tag}-{uuid.uuid4().hex[:10]}"
        spec = {"system": system, "address": self.server(system).address, "key": key, "bucket": KV_BUCKET}
        if system.startswith("bridge"):
            channel = connect_async(self.bridge.address)
            try:
                ctx = AsyncSessionContext(f"peers-{key}", channel)
                await ctx.initialize()
                await ctx.register_variable("stamp", VariableType.INTEGER, 0)
            finally:
                await channel.close()
            spec.update(session=f"peers-{key}", key="stamp")
        return spec


async def run_w1(env: Env, system: str, updates: int) -> dict[str, Any]:
    if system == "bridge_elixir":
        return await run_w1a(env, updates)
    spec = await env.target(system, "w1")
    write, close = await open_writer(spec)
    try:

        async def drive() -> dict[str, Any]:
            return await scheduled_writes(write, 100, updates, 0.001)

        driven, results = await with_watchers(env.pool, spec, [1], drive, timeout_s=30 + updates * 0.01)
    finally:
        await close()
    return w1_figures(driven, results)


async def run_w1a(env: Env, updates: int) -> dict[str, Any]:
    """W1 with the BEAM as the writer (SessionStore.update_variable/3) and its embedded server; same watcher code."""
    sid = await env.beam.session()
    spec = {"system": "bridge", "address": env.beam.address, "session": sid, "key": "stamp"}
    try:

        async def drive() -> dict[str, Any]:
            return await env.beam.write(sid, 100, updates, 1)

        driven, results = await with_watchers(env.pool, spec, [1], drive, timeout_s=30 + updates * 0.01)
    finally:
        await env.beam.delete(sid)
    return w1_figures(driven, results)


def w1_figures(driven: dict[str, Any], results: list[dict[str, Any]]) -> dict[str, Any]:
    got = results[0]["samples"][0]
    at, exact = receipts(driven["stamps"], got)
    lat = [(t - s) / 1000 for s, t in zip(driven["stamps"], at, strict=True) if t is not None]
    return {
        "samples_us": lat,
        "p50_us": pct(lat, 0.5),
        "p99_us": pct(lat, 0.99),
        "got": exact,
        "received": len(lat),
        "sent": len(driven["stamps"]),
        "gap_ms": driven["gap_ms"],
        "timed_out": results[0]["timed_out"],
        "watcher_cpu_per_msg_us": results[0]["cpu_s"] / max(1, results[0]["received"]) * 1e6,
    }


async def run_w2(env: Env, system: str, watchers: int, updates: int) -> dict[str, Any]:
    spec = await env.target(system, "w2")
    server = env.server(system)
    per = [watchers // WORKERS + (1 if i < watchers % WORKERS else 0) for i in range(WORKERS)]
    write, close = await open_writer(spec)
    cpu: dict[str, float] = {}
    try:
        # Like scheduled_writes, with the server's CPU read at the first timed write.
        async def drive_one() -> dict[str, Any]:
            stamps: list[int] = []
            start = time.perf_counter() + 0.005
            warmup = 10
            for i in range(warmup + updates + 1):
                delay = start + i * 0.005 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                if i == warmup:
                    cpu["start"] = server.cpu_s()
                if i == warmup + updates:
                    await write(END_MARKER)
                    break
                stamp = time.time_ns()
                await write(stamp)
                if i >= warmup:
                    stamps.append(stamp)
            gaps = [(b - a) / 1e6 for a, b in zip(stamps, stamps[1:], strict=False)]
            elapsed = (time.time_ns() - stamps[0]) / 1e9 if stamps else 0.0
            return {"stamps": stamps, "gap_ms": statistics.fmean(gaps) if gaps else None, "elapsed_s": elapsed}

        driven, results = await with_watchers(env.pool, spec, per, drive_one, timeout_s=60)
        cpu["end"] = server.cpu_s()
    finally:
        await close()
    stamps = driven["stamps"]
    per_delivery: list[float] = []
    last_at: list[int | None] = [0] * len(stamps)
    exact_total = 0
    timed_out = False
    for res in results:
        timed_out = timed_out or res["timed_out"]
        for got in res["samples"]:
            at, exact = receipts(stamps, got)
            exact_total += exact
            for k, t in enumerate(at):
                if t is None:
                    last_at[k] = None
                    continue
                per_delivery.append((t - stamps[k]) / 1e6)
                if last_at[k] is not None:
                    last_at[k] = max(last_at[k] or 0, t)
    last = [(t - s) / 1e6 for s, t in zip(stamps, last_at, strict=True) if t is not None]
    cpu_s = cpu["end"] - cpu["start"]
    watcher_cpu = sum(r["cpu_s"] for r in results)
    watcher_msgs = sum(r["received"] for r in results)
    return {
        "watcher_cpu_per_msg_us": watcher_cpu / max(1, watcher_msgs) * 1e6,
        "watcher_cpu_share": watcher_cpu / max(1e-9, driven["elapsed_s"]),
        "per_delivery_p50_ms": pct(per_delivery, 0.5),
        "per_delivery_p99_ms": pct(per_delivery, 0.99),
        "last_p50_ms": pct(last, 0.5),
        "last_p99_ms": pct(last, 0.99),
        "cpu_s": cpu_s,
        "cpu_per_update_us": cpu_s / len(stamps) * 1e6,
        "deliveries_exact": exact_total,
        "deliveries_expected": len(stamps) * watchers,
        "complete_updates": len(last),
        "gap_ms": driven["gap_ms"],
        "timed_out": timed_out,
    }


async def run_w3(env: Env, system: str, seconds: float) -> dict[str, Any]:
    spec = await env.target(system, "w3")
    server = env.server(system)
    write, close = await open_writer(spec)
    cpu: dict[str, float] = {}
    try:

        async def drive() -> dict[str, Any]:
            for i in range(1, 101):  # warm-up, below STAMP_FLOOR: not counted
                await write(i)
            cpu["start"] = server.cpu_s()
            cpu["writer_start"] = time.process_time()
            n = 0
            t0 = time.perf_counter()
            end = t0 + seconds
            while True:
                for _ in range(50):
                    await write(time.time_ns())
                n += 50
                if time.perf_counter() >= end:
                    break
            await write(END_MARKER)  # NATS core: flushes what the client still buffers
            elapsed = time.perf_counter() - t0
            cpu["writer"] = time.process_time() - cpu["writer_start"]
            return {"writes": n, "elapsed_s": elapsed}

        driven, results = await with_watchers(env.pool, spec, [1], drive, count=True, timeout_s=seconds + 60)
        cpu["end"] = server.cpu_s()
    finally:
        await close()
    cpu_s = cpu["end"] - cpu["start"]
    return {
        "writes": driven["writes"],
        "elapsed_s": driven["elapsed_s"],
        "writes_per_s": driven["writes"] / driven["elapsed_s"],
        "delivered": results[0]["counts"][0],
        "cpu_s": cpu_s,
        "cpu_per_write_us": cpu_s / driven["writes"] * 1e6,
        "writer_cpu_per_write_us": cpu["writer"] / driven["writes"] * 1e6,
        "watcher_cpu_per_msg_us": results[0]["cpu_s"] / max(1, results[0]["received"]) * 1e6,
        "nats_errors": results[0]["nats_errors"],
        "timed_out": results[0]["timed_out"],
    }


async def run_w4(env: Env, system: str, n: int, batch_reps: int) -> dict[str, Any]:
    """One run: batch get/set (median of ``batch_reps``) and ``n`` single gets/sets (total / n)."""
    names = [f"k{i:05d}" for i in range(n)]
    t = time.perf_counter_ns
    out: dict[str, list[float]] = {"batch_get_ms": [], "batch_set_ms": [], "single_get_us": [], "single_set_us": []}
    closers: list[Closer] = []
    try:
        if system in ("bridge", "bridge_raw"):
            channel = connect_async(env.bridge.address, options=OWN_CONNECTION)
            closers.append(channel.close)
            ctx = AsyncSessionContext(f"peers-w4-{uuid.uuid4().hex[:10]}", channel)
            await ctx.initialize()
            for name in names:
                await ctx.register_variable(name, VariableType.FLOAT, 0.0)
            sid = ctx.session_id
            if system == "bridge":

                async def bget() -> Any:
                    return await ctx.get_variables(names)

                async def bset(k: int) -> Any:
                    return await ctx.update_variables({name: k + i / n for i, name in enumerate(names)})

                async def sget(name: str) -> Any:
                    return await ctx.get_variable(name)

                async def sset(name: str, v: float) -> Any:
                    return await ctx.update_variable(name, v)
            else:
                stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]

                async def bget() -> Any:
                    req = pb2.BatchGetVariablesRequest(session_id=sid, variable_identifiers=names, values_only=True)
                    return await stub.GetVariables(req)

                async def bset(k: int) -> Any:
                    values_json = ("[" + ",".join(repr(k + i / n) for i in range(n)) + "]").encode()
                    req = pb2.BatchSetVariablesRequest(session_id=sid, value_identifiers=names, values_json=values_json)
                    return await stub.SetVariables(req)

                async def sget(name: str) -> Any:
                    return await stub.GetVariable(pb2.GetVariableRequest(session_id=sid, variable_identifier=name))

                async def sset(name: str, v: float) -> Any:
                    value = any_pb2.Any(type_url=FLOAT_URL, value=repr(v).encode())
                    return await stub.SetVariable(
                        pb2.SetVariableRequest(session_id=sid, variable_identifier=name, value=value)
                    )
        elif system == "redis":
            host, port = env.redis.address.rsplit(":", 1)
            r = aioredis.Redis(host=host, port=int(port))
            closers.append(r.aclose)
            prefix = f"w4-{uuid.uuid4().hex[:8]}-"
            keys = [prefix + name for name in names]
            await r.mset({k: "0.0" for k in keys})

            async def bget() -> Any:
                return await r.mget(keys)

            async def bset(k: int) -> Any:
                return await r.mset({key: repr(k + i / n) for i, key in enumerate(keys)})

            async def sget(name: str) -> Any:
                return await r.get(prefix + name)

            async def sset(name: str, v: float) -> Any:
                return await r.set(prefix + name, repr(v))
        else:
            raise ValueError(system)

        for k in range(3):  # warm-up
            await bget()
            await bset(k)
            for name in names[:100]:
                await sget(name)
                await sset(name, 0.5)
        batch_get, batch_set = [], []
        for rep in range(batch_reps):
            t0 = t()
            await bget()
            batch_get.append((t() - t0) / 1e6)
            t0 = t()
            await bset(rep + 10)
            batch_set.append((t() - t0) / 1e6)
        t0 = t()
        for name in names:
            await sget(name)
        single_get = (t() - t0) / 1e3 / n
        t0 = t()
        for i, name in enumerate(names):
            await sset(name, i + 0.25)
        single_set = (t() - t0) / 1e3 / n
        out = {
            "batch_get_ms": statistics.median(batch_get),
            "batch_set_ms": statistics.median(batch_set),
            "single_get_us": single_get,
            "single_set_us": single_set,
            "sequential_get_ms": single_get * n / 1e3,
            "sequential_set_ms": single_set * n / 1e3,
        }
        if system.startswith("bridge"):
            await ctx.cleanup(force=True)
        elif system == "redis":
            await r.delete(*keys)
    finally:
        for c in closers:
            await c()
    return out


# --------------------------------------------------------------------------- the whole run


def _median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(xs) if xs else None


async def run_all(env: Env, args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    w1_updates = 100 if q else 2000
    w2_watchers, w2_updates = (8, 20) if q else (100, 200)
    w3_seconds = 1.0 if q else 5.0
    w4_n, w4_reps = (100, 3) if q else (1000, 7)
    runs = 1 if q else 3
    data: dict[str, Any] = {
        "config": {
            "w1_updates": w1_updates,
            "w2_watchers": w2_watchers,
            "w2_updates": w2_updates,
            "w3_seconds": w3_seconds,
            "w4_n": w4_n,
            "w4_batch_reps": w4_reps,
            "runs": runs,
            "quick": q,
        }
    }
    # Setup: the NATS KV bucket (memory storage).
    nc = await nats_connect(env.nats.address)
    try:
        await nc.jetstream().create_key_value(bucket=KV_BUCKET, storage=StorageType.MEMORY, history=1)
    finally:
        await nc.close()

    w1_systems = list(W1_SYSTEMS)
    w1: dict[str, list[dict[str, Any]]] = {s: [] for s in w1_systems}
    for r in range(runs):
        order = w1_systems[r % len(w1_systems) :] + w1_systems[: r % len(w1_systems)]
        for s in order:
            t0 = time.monotonic()
            res = await run_w1(env, s, w1_updates)
            w1[s].append(res)
            say(
                f"W1 run {r + 1}/{runs} {SYSTEMS[s]}: p50 {res['p50_us']:.0f} µs, p99 {res['p99_us']:.0f} µs, "
                f"got {res['got']}/{res['sent']} ({time.monotonic() - t0:.1f} s)"
            )
    data["w1"] = {
        s: {
            "runs": rs,
            "p50_us": _median_of(rs, "p50_us"),
            "p99_us": _median_of(rs, "p99_us"),
            "got": sum(x["got"] for x in rs),
            "sent": sum(x["sent"] for x in rs),
            "gap_ms": _median_of(rs, "gap_ms"),
            "watcher_cpu_per_msg_us": _median_of(rs, "watcher_cpu_per_msg_us"),
        }
        for s, rs in w1.items()
    }

    w2_systems = ["bridge", "redis", "nats", "nats_kv"]
    w2: dict[str, list[dict[str, Any]]] = {s: [] for s in w2_systems}
    for r in range(runs):
        order = w2_systems[r % len(w2_systems) :] + w2_systems[: r % len(w2_systems)]
        for s in order:
            t0 = time.monotonic()
            res = await run_w2(env, s, w2_watchers, w2_updates)
            w2[s].append(res)
            say(
                f"W2 run {r + 1}/{runs} {SYSTEMS[s]}: last watcher p50 {res['last_p50_ms']:.2f} ms, "
                f"p99 {res['last_p99_ms']:.2f} ms, server CPU {res['cpu_per_update_us']:.0f} µs/update "
                f"({time.monotonic() - t0:.1f} s)"
            )
    data["w2"] = {}
    for s, rs in w2.items():
        lasts = [x["last_p50_ms"] for x in rs if x["last_p50_ms"]]
        cpu_total = sum(x["cpu_s"] for x in rs)
        data["w2"][s] = {
            "runs": rs,
            "per_delivery_p50_ms": _median_of(rs, "per_delivery_p50_ms"),
            "per_delivery_p99_ms": _median_of(rs, "per_delivery_p99_ms"),
            "last_p50_ms": _median_of(rs, "last_p50_ms"),
            "last_p99_ms": _median_of(rs, "last_p99_ms"),
            # Summed over the runs first: /proc/PID/stat counts in clock ticks (10 ms).
            "cpu_per_update_us": cpu_total / (w2_updates * len(rs)) * 1e6,
            "worst_over_best": max(lasts) / min(lasts) if lasts else None,
            "watcher_cpu_per_msg_us": _median_of(rs, "watcher_cpu_per_msg_us"),
            "watcher_cpu_share": _median_of(rs, "watcher_cpu_share"),
            "deliveries_exact": sum(x["deliveries_exact"] for x in rs),
            "deliveries_expected": sum(x["deliveries_expected"] for x in rs),
        }

    w3: dict[str, Any] = {}
    for s in ("bridge", "bridge_raw", "redis", "nats", "nats_kv"):
        res = await run_w3(env, s, w3_seconds)
        w3[s] = res
        say(
            f"W3 {SYSTEMS[s]}: {res['writes_per_s']:,.0f} writes/s, {res['delivered']:,} of {res['writes']:,} "
            f"delivered, server CPU {res['cpu_per_write_us']:.1f} µs/write"
        )
    data["w3"] = w3

    w4_systems = ["bridge", "bridge_raw", "redis"]
    w4: dict[str, list[dict[str, Any]]] = {s: [] for s in w4_systems}
    for r in range(runs):
        for s in w4_systems:
            res = await run_w4(env, s, w4_n, w4_reps)
            w4[s].append(res)
            say(
                f"W4 run {r + 1}/{runs} {'Redis (redis-py)' if s == 'redis' else SYSTEMS[s]}: batch get {res['batch_get_ms']:.2f} ms, "
                f"set {res['batch_set_ms']:.2f} ms; single get {res['single_get_us']:.0f} µs, "
                f"set {res['single_set_us']:.0f} µs"
            )
    data["w4"] = {s: {"runs": rs, **{k: _median_of(rs, k) for k in rs[0] if k != "runs"}} for s, rs in w4.items()}
    return data


def _bridge_transport() -> str:
    """Which transport ``connect_async`` gives the bridge's clients here (the native one when installed)."""
    if isinstance(connect_async("127.0.0.1:1", token=""), AsyncNativeChannel):  # nothing is sent: it connects lazily
        return "native transport (snakepit_bridge_native, tonic)"
    return f"grpcio {grpc.__version__} transport"


def machine(env: Env) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = "unknown"
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "bridge_transport": _bridge_transport(),
        "redis_py": redis.__version__,
        "nats_py": getattr(nats.aio.client, "__version__", "?"),
        "redis_server": env.redis.version,
        "nats_server": env.nats.version,
        "bridge_server": env.bridge.version,
        "beam": env.beam.version,
        "commit": commit,
        "load_before": None,
        "load_after": None,
    }


# --------------------------------------------------------------------------- targets and the report


def targets(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target: row, measured, target, met (ratios within this run)."""
    out: list[dict[str, Any]] = []

    def best(section: str, key: str, systems: tuple[str, ...] = PEERS, high: bool = False) -> tuple[str, float]:
        vals = [(s, d[section][s][key]) for s in systems if d[section].get(s, {}).get(key) is not None]
        s, v = (max if high else min)(vals, key=lambda x: x[1])
        return s, v

    def add(row: str, measured: float | None, limit: float, unit: str, rule: str, le: bool = True) -> None:
        met = None if measured is None else (measured <= limit if le else measured >= limit)
        out.append({"row": row, "measured": measured, "limit": limit, "unit": unit, "rule": rule, "met": met})

    s, v = best("w1", "p50_us")
    # W1a's target has two conditions, against the same best peer (by p50) as W1b's: a row each, both counted.
    w1a = d["w1"]["bridge_elixir"]
    add(
        "W1a p50, Elixir update_variable/3 → Python watcher",
        w1a["p50_us"],
        0.8 * v,
        "µs",
        f"≤ 0.8 × best peer ({SYSTEMS[s]})",
    )
    add(
        "W1a p99, Elixir update_variable/3 → Python watcher",
        w1a["p99_us"],
        d["w1"][s]["p99_us"],
        "µs",
        f"≤ the best peer's p99 ({SYSTEMS[s]})",
    )
    add(
        "W1b p50, Python update_variable → watcher", d["w1"]["bridge"]["p50_us"], v, "µs", f"≤ best peer ({SYSTEMS[s]})"
    )
    s, v = best("w2", "last_p50_ms")
    add("W2 last-watcher p50", d["w2"]["bridge"]["last_p50_ms"], v, "ms", f"≤ best peer ({SYSTEMS[s]})")
    add(
        f"W2 server CPU per {d['config']['w2_watchers']}-way update",
        d["w2"]["bridge"]["cpu_per_update_us"],
        d["w2"]["redis"]["cpu_per_update_us"],
        "µs",
        "≤ Redis",
    )
    add(
        "W2 stable: worst / best of the runs' last-watcher p50", d["w2"]["bridge"]["worst_over_best"], 1.5, "×", "≤ 1.5"
    )
    s, v = best("w3", "writes_per_s", high=True)
    add("W3 writes/s", d["w3"]["bridge"]["writes_per_s"], v, "/s", f"≥ best peer ({SYSTEMS[s]})", le=False)
    add(
        "W3 server CPU per write",
        d["w3"]["bridge"]["cpu_per_write_us"],
        d["w3"]["redis"]["cpu_per_write_us"],
        "µs",
        "≤ Redis",
    )
    w4b, w4r = d["w4"]["bridge"], d["w4"]["redis"]
    n = d["config"]["w4_n"]
    add(
        f"W4 read of {n:,} in one call (get_variables)",
        w4b["batch_get_ms"],
        0.5 * w4r["batch_get_ms"],
        "ms",
        "≤ 0.5 × Redis MGET",
    )
    add(
        f"W4 write of {n:,} in one call (update_variables)",
        w4b["batch_set_ms"],
        0.5 * w4r["batch_set_ms"],
        "ms",
        "≤ 0.5 × Redis MSET",
    )
    add("W4 single get (get_variable)", w4b["single_get_us"], w4r["single_get_us"], "µs", "≤ redis-py GET")
    add("W4 single update (update_variable)", w4b["single_set_us"], w4r["single_set_us"], "µs", "≤ redis-py SET")
    return out


def fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    sep = ["---"] + ["---:"] * (len(header) - 1)
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, sep, *rows]) + "\n"


def render(d: dict[str, Any], plot_note: str) -> str:
    m, c = d["machine"], d["config"]
    ts = d["targets"]
    runs = c["runs"]
    lines = [
        "# The bridge beside Redis and NATS: same workloads, one run",
        "",
        f"`bash scripts/bench.sh --peers` (bench/peers.py) on {m['cores']} cores, {m['cpu_model']}, Linux "
        f"{m['kernel']}, at commit {m['commit']}, {d['started_at']}{' — QUICK run' if c['quick'] else ''}. "
        f"Load average {m['load_before']} before, {m['load_after']} after; the whole run took {d['elapsed_s']:.0f} s.",
        "",
        f"Servers on 127.0.0.1, started by the bench and stopped by PID: {m['bridge_server']} (standalone binary, "
        f"`--listen 127.0.0.1:0`, no token); {m['redis_server']} (`--save '' --appendonly no`); "
        f"{m['nats_server']} (`-js`, KV bucket `{KV_BUCKET}` with storage=memory, history 1); for W1a, the "
        f"bridge's server embedded in a BEAM (`mix run bench/peers_w1a.exs`, {m['beam']}; `auth: false`, port 0). "
        f"Clients: snakepit_bridge (`AsyncSessionContext` on `connect_async`, {m['bridge_transport']}; "
        f"the raw stub on grpcio {m['grpcio']}), "
        f"redis-py {m['redis_py']} asyncio (no hiredis), nats-py {m['nats_py']}; Python {m['python']}. "
        "Everything (servers, the BEAM, writer, watcher processes) shares the same cores.",
        "",
        "## Targets",
        "",
        "Ratios within this run; best peer = the fastest of Redis, NATS core and NATS KV on that row (for the W1 "
        "rows, by W1 p50: W1a's p99 limit is that peer's p99).",
        "",
    ]
    rows = []
    for t in ts:
        rows.append(
            [t["row"], f"{fmt(t['measured'], 2)} {t['unit']}", f"{t['rule']}: {fmt(t['limit'], 2)} {t['unit']}"]
            + [{True: "**MET**", False: "**MISSED**", None: "–"}[t["met"]]]
        )
    lines.append(table(["row", "bridge (snakepit_bridge)", "target", "verdict"], rows))
    met = sum(1 for t in ts if t["met"])
    lines.append(f"{met} of {len(ts)} targets met.\n")
    acked = [(s, d["w3"][s]["writes_per_s"]) for s in ("redis", "nats_kv")]
    s_ack, v_ack = max(acked, key=lambda x: x[1])
    lines.append(
        "W3's NATS core publish is fire-and-forget (no reply per write); among the peers whose writes are "
        f"acknowledged, the best is {SYSTEMS[s_ack]} at {fmt(v_ack, 0)} writes/s: the bridge's "
        f"{fmt(d['w3']['bridge']['writes_per_s'], 0)} is {d['w3']['bridge']['writes_per_s'] / v_ack:.2f}× that.\n"
    )

    w1 = d["w1"]
    lines += [
        "## W1: one watcher, updates 1 ms apart",
        "",
        f"{c['w1_updates']:,} updates 1 ms apart (absolute schedule, after 100 warm-up updates) to one watcher in "
        "another process; latency = receipt `time.time_ns()` − the `time.time_ns()` the writer put in the value "
        f"just before the write. p50 / p99 are medians of {runs} runs' figures; `got` = updates received one by one "
        "(of all runs). Writer: W1a `Snakepit.Bridge.SessionStore.update_variable/3` in the BEAM that embeds the "
        "server (a NIF call, no network), W1b bridge `update_variable` (a SetVariable round trip), Redis PUBLISH "
        "(a round trip), "
        "NATS core publish (no reply: buffered and sent by the client's flusher), NATS KV put (a round trip to "
        "JetStream); watcher: `watch_variables` / the raw WatchVariables stream, SUBSCRIBE, subscribe, KV watch.",
        "",
    ]
    rows = []
    for s in W1_SYSTEMS:
        e = w1[s]
        rows.append(
            [
                W1_LABELS.get(s, SYSTEMS[s]),
                fmt(e["p50_us"], 0),
                fmt(e["p99_us"], 0),
                f"{e['got']:,} / {e['sent']:,}",
                fmt(e["gap_ms"], 3),
                fmt(e["watcher_cpu_per_msg_us"], 0),
            ]
        )
    lines.append(table(["system", "p50 µs", "p99 µs", "got", "mean gap ms", "watcher CPU µs / update"], rows))

    w2 = d["w2"]
    lines += [
        f"## W2: {c['w2_watchers']} watchers on their own connections",
        "",
        f"{c['w2_watchers']} watchers, each on its own connection, from {WORKERS} processes (asyncio, "
        f"{c['w2_watchers'] // WORKERS} connections each); {c['w2_updates']} updates 5 ms apart after 10 warm-up "
        "ones. Per delivery: every (watcher, update) pair; last watcher: per update, the time until the last "
        f"watcher had it. Latencies are medians of {runs} runs' figures; server CPU = utime + stime of the server "
        "process from the first timed write until every watcher had the end marker, summed over the runs, per "
        "update (clock ticks of 10 ms; all its threads). `worst / best` = the runs' largest last-watcher p50 over "
        "their smallest. The watchers' CPU is the 4 watcher processes' own (all threads, `time.process_time()`) while "
        "receiving, per message received and in cores busy (of 2 on this machine): when it nears the cores the "
        "machine has, deliveries queue in the receivers and latencies measure the Python clients, not the server.",
        "",
    ]
    rows = []
    for s in ("bridge", "redis", "nats", "nats_kv"):
        e = w2[s]
        runs_p50 = ", ".join(fmt(x["last_p50_ms"], 2) for x in e["runs"])
        rows.append(
            [
                SYSTEMS[s],
                fmt(e["per_delivery_p50_ms"], 2),
                fmt(e["per_delivery_p99_ms"], 2),
                fmt(e["last_p50_ms"], 2),
                fmt(e["last_p99_ms"], 2),
                runs_p50,
                fmt(e["worst_over_best"], 2),
                fmt(e["cpu_per_update_us"], 0),
                f"{e['deliveries_exact']:,} / {e['deliveries_expected']:,}",
                fmt(e["watcher_cpu_per_msg_us"], 0),
                fmt(e["watcher_cpu_share"], 2),
            ]
        )
    lines.append(
        table(
            [
                "system",
                "per delivery p50 ms",
                "p99 ms",
                "last watcher p50 ms",
                "p99 ms",
                "runs' last p50 ms",
                "worst / best",
                "server CPU µs / update",
                "delivered one by one",
                "watchers' CPU µs / message",
                "watchers' CPU, cores",
            ],
            rows,
        )
    )

    w3 = d["w3"]
    lines += [
        "## W3: one writer as fast as it can, one watcher",
        "",
        f"One asyncio writer awaiting each write in turn for {c['w3_seconds']:.0f} s (after 100 warm-up writes), one "
        "watcher in another process counting distinct values; server CPU = utime + stime over the timed phase, per "
        "write. NATS core publish is fire-and-forget (the client buffers; the elapsed time includes the final "
        "flush), so its writes/s is the client's publish rate, not a round trip's.",
        "",
    ]
    rows = []
    for s in ("bridge", "bridge_raw", "redis", "nats", "nats_kv"):
        e = w3[s]
        rows.append(
            [
                SYSTEMS[s],
                fmt(e["writes_per_s"], 0),
                f"{e['delivered']:,} / {e['writes']:,}",
                fmt(e["cpu_per_write_us"], 1),
                fmt(e["writer_cpu_per_write_us"], 1),
                fmt(e["watcher_cpu_per_msg_us"], 1),
            ]
        )
    lines.append(
        table(
            [
                "system",
                "writes/s",
                "distinct values delivered",
                "server CPU µs / write",
                "writer CPU µs / write",
                "watcher CPU µs / message",
            ],
            rows,
        )
    )
    errs = {s: e["nats_errors"] for s, e in w3.items() if e.get("nats_errors")}
    if errs:
        lines.append(f"nats-py errors in the watcher: {errs} (a slow consumer drops messages).\n")

    w4 = d["w4"]
    n = c["w4_n"]
    lines += [
        f"## W4: {n:,} values in one call vs {n:,} single calls",
        "",
        f"Float values in one session (bridge) or as {n:,} string keys (Redis). Batch: median of "
        f"{c['w4_batch_reps']} calls; single: {n:,} sequential awaited calls, total / {n:,}. Each figure is the "
        f"median of {runs} runs. redis-py returns raw bytes (no float parsing); the package returns decoded "
        "values. NATS has no multi-key KV call: –.",
        "",
    ]
    rows = []
    labels = {
        "bridge": ("bridge (snakepit_bridge)", "get_variables / update_variables", "get_variable / update_variable"),
        "bridge_raw": ("bridge raw stub", "GetVariables / SetVariables", "GetVariable / SetVariable"),
        "redis": ("Redis (redis-py asyncio)", "MGET / MSET", "GET / SET"),
    }
    for s in ("bridge", "bridge_raw", "redis"):
        e = w4[s]
        name, batch, single = labels[s]
        rows.append(
            [
                name,
                batch,
                fmt(e["batch_get_ms"], 2),
                fmt(e["batch_set_ms"], 2),
                single,
                fmt(e["single_get_us"], 0),
                fmt(e["single_set_us"], 0),
                fmt(e["sequential_get_ms"] / e["batch_get_ms"], 0) + "×",
            ]
        )
    rows.append(["NATS (core / KV)", "–", "–", "–", "–", "–", "–", "–"])
    lines.append(
        table(
            [
                "system",
                "batch calls",
                "read ms",
                "write ms",
                "single calls",
                "get µs",
                "set µs",
                "sequential / batch (read)",
            ],
            rows,
        )
    )
    lines += [
        "## Plot",
        "",
        f"![W1 latency CDFs and W2–W4 bars](peers.png)\n\n{plot_note}" if d.get("plotted") else plot_note,
        "",
    ]
    return "\n".join(lines)


COLORS = {"bridge_elixir": "C9", "bridge": "C0", "bridge_raw": "C1", "redis": "C3", "nats": "C2", "nats_kv": "C4"}


def plot(d: dict[str, Any], png: Path) -> tuple[bool, str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator
    except Exception as e:  # noqa: BLE001 - no plot, tables only
        return False, f"Plot skipped: matplotlib could not be imported ({type(e).__name__}: {e})."
    try:
        fig, axes = plt.subplots(2, 2, figsize=(15, 10))
        ax = axes[0][0]
        lowest = 1.0
        for s in W1_SYSTEMS:
            xs = sorted(x for run in d["w1"][s]["runs"] for x in run["samples_us"])
            if not xs:
                continue
            ys = [(i + 0.5) / len(xs) for i in range(len(xs))]
            lowest = min(lowest, ys[0])
            e = d["w1"][s]
            ax.step(
                xs,
                ys,
                where="post",
                color=COLORS[s],
                linewidth=2.2 if s in ("bridge_elixir", "bridge") else 1.2,
                label=f"{W1_LABELS.get(s, SYSTEMS[s])}: p50 {e['p50_us']:.0f}, p99 {e['p99_us']:.0f} µs",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_yscale("logit")
        edge = min(lowest * 0.8, 0.004)
        ticks = [q for q in (0.01, 0.1, 0.5, 0.9, 0.99, 0.999) if edge < q < 1 - edge]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v * 100:g}%"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(edge, 1 - edge)
        ax.set_xlabel("latency, µs (log scale): write (W1a: Elixir, else Python) → Python watcher receipt")
        ax.set_ylabel("updates received within x (logit scale)")
        ax.set_title(f"(a) W1: {d['config']['w1_updates']:,} updates 1 ms apart, one watcher (all runs)", fontsize=11)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")

        def bars(
            ax: Any, systems: list[str], groups: list[tuple[str, str]], section: str, ylabel: str, names: dict[str, str]
        ) -> None:
            width = 0.8 / len(systems)
            for j, s in enumerate(systems):
                vals = [d[section][s].get(k) or 0 for _label, k in groups]
                xs = [i + (j - (len(systems) - 1) / 2) * width for i in range(len(groups))]
                rects = ax.bar(xs, vals, width, color=COLORS[s], label=names[s])
                ax.bar_label(rects, labels=[f"{v:,.3g}" for v in vals], fontsize=7, rotation=90, padding=2)
            ax.set_xticks(range(len(groups)), [label for label, _k in groups], fontsize=9)
            ax.set_ylabel(ylabel)
            ax.grid(True, axis="y", alpha=0.3)
            ax.margins(y=0.2)

        ax = axes[0][1]
        w2s = ["bridge", "redis", "nats", "nats_kv"]
        bars(
            ax,
            w2s,
            [
                ("per delivery p50", "per_delivery_p50_ms"),
                ("last watcher p50", "last_p50_ms"),
                ("last watcher p99", "last_p99_ms"),
            ],
            "w2",
            "ms",
            {s: f"{SYSTEMS[s]} (server CPU {d['w2'][s]['cpu_per_update_us']:,.0f} µs / update)" for s in w2s},
        )
        ax.legend(fontsize=8, loc="upper left")
        c = d["config"]
        ax.set_title(
            f"(b) W2: {c['w2_watchers']} watchers, {c['w2_updates']} updates 5 ms apart (median of runs)", fontsize=11
        )

        ax = axes[1][0]
        w3s = ["bridge", "bridge_raw", "redis", "nats", "nats_kv"]
        vals = [d["w3"][s]["writes_per_s"] for s in w3s]
        rects = ax.bar(range(len(w3s)), vals, color=[COLORS[s] for s in w3s])
        ax.bar_label(
            rects,
            labels=[
                f"{v:,.0f}/s\nCPU {d['w3'][s]['cpu_per_write_us']:.1f} µs/write" for v, s in zip(vals, w3s, strict=True)
            ],
            fontsize=8,
        )
        ax.set_yscale("log")
        ax.set_xticks(range(len(w3s)), [SYSTEMS[s] for s in w3s], fontsize=8)
        ax.set_ylabel("writes/s (log scale)")
        ax.margins(y=0.25)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"(c) W3: one writer as fast as it can, {d['config']['w3_seconds']:.0f} s", fontsize=11)

        ax = axes[1][1]
        n = d["config"]["w4_n"]
        bars(
            ax,
            ["bridge", "bridge_raw", "redis"],
            [
                (f"read {n:,}\nin one call", "batch_get_ms"),
                (f"write {n:,}\nin one call", "batch_set_ms"),
                (f"{n:,} single\ngets", "sequential_get_ms"),
                (f"{n:,} single\nsets", "sequential_set_ms"),
            ],
            "w4",
            "ms (log scale)",
            {"bridge": SYSTEMS["bridge"], "bridge_raw": SYSTEMS["bridge_raw"], "redis": "Redis (redis-py asyncio)"},
        )
        ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper left")
        ax.set_title("(d) W4: batch vs single calls (NATS: –)", fontsize=11)
        m = d["machine"]
        fig.suptitle(f"Bridge vs Redis vs NATS — {m['cpu_model']}, {m['cores']} cores — {d['started_at']}", fontsize=10)
        fig.tight_layout()
        tmp = png.with_suffix(".png.tmp")
        fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        os.replace(tmp, png)
    except Exception as e:  # noqa: BLE001 - a plotting failure must not cost the report
        return False, f"Plot skipped: plotting failed ({type(e).__name__}: {e})."
    return True, f"matplotlib {matplotlib.__version__}."


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    servers: list[Server] = []
    pool: Pool | None = None
    beam: ElixirWriter | None = None
    store = tempfile.mkdtemp(prefix="peers-nats-")
    try:
        # First: the BEAM takes the longest to come up, and starts meanwhile.
        beam = ElixirWriter()
        say("starting the watcher processes")
        pool = Pool(WORKERS)
        bridge = start_bridge()
        servers.append(bridge)
        say(f"bridge: {bridge.address} (pid {bridge.pid})")
        rs = start_redis()
        servers.append(rs)
        say(f"redis-server: {rs.address} (pid {rs.pid})")
        ns = start_nats(store)
        servers.append(ns)
        say(f"nats-server: {ns.address} (pid {ns.pid})")
        await beam.start()
        say(f"BEAM for W1a: {beam.address} (pid {beam.pid}; {beam.version})")
        env = Env(bridge, rs, ns, pool, args.quick, beam)
        m = machine(env)
        m["load_before"] = round(os.getloadavg()[0], 2)
        data = {
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            **await asyncio.wait_for(run_all(env, args), args.deadline_s),
        }
        for s in servers:
            s.check()
        if beam.process.poll() is not None:
            raise RuntimeError(f"the BEAM (pid {beam.pid}) exited with {beam.process.returncode}: {beam.tail()}")
        m["load_after"] = round(os.getloadavg()[0], 2)
        data["machine"] = m
    finally:
        for s in servers:
            s.stop()
        if beam is not None:
            beam.stop()
        if pool is not None:
            pool.stop()
        shutil.rmtree(store, ignore_errors=True)
    data["elapsed_s"] = time.monotonic() - started
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads, one run each")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results"), help="where peers.md / peers.png go")
    parser.add_argument("--json", metavar="PATH", help="also write every figure (all samples) as JSON")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--deadline-s", type=float, default=540.0, help="the workloads' time limit (default 540)")
    args = parser.parse_args(argv)

    def on_term(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # so every finally runs and each child is stopped by PID

    signal.signal(signal.SIGTERM, on_term)
    data = asyncio.run(amain(args))
    data["targets"] = targets(data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / "peers.png"
    if args.no_plot:
        data["plotted"], note = False, "Plot skipped (--no-plot)."
    else:
        data["plotted"], note = plot(data, png)
    if not data["plotted"] and png.exists():
        png.unlink()
    (out / "peers.md").write_text(render(data, note))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    say(f"wrote {out / 'peers.md'}" + (f" and {png}" if data["plotted"] else ""))
    for t in data["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "–"}[t["met"]]
        say(f"{verdict:>6}  {t['row']}: {fmt(t['measured'], 2)} {t['unit']} ({t['rule']}: {fmt(t['limit'], 2)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
