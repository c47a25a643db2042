"""Batch vs sequential reads and writes from Python, against the standalone server.

Registers ``n`` float variables (default 1,000) in a fresh session, then times,
per repetition:

* one ``GetVariables`` of all ``n`` vs ``n`` sequential ``GetVariable`` calls;
* one ``SetVariables`` of all ``n`` vs ``n`` sequential ``SetVariable`` calls;

each twice: through the blocking ``SessionContext`` API (what users call:
``get_variables`` / ``get_variable`` / ``update_variables`` /
``update_variable``), and through the raw generated stub
(``BridgeServiceStub``: the same RPCs without the client's encoding, decoding
and type cache, so the difference is the client's own cost). ``n`` sequential
``Ping`` calls give the floor of one unary round trip.

Usage::

    .venv/bin/python bench/python_batch.py                 # full run (n=1000), starts its own server
    .venv/bin/python bench/python_batch.py --quick         # tiny, a second or two
    .venv/bin/python bench/python_batch.py --address 127.0.0.1:50051 --n 1000 --repeats 9 --json

From code: ``run(address_or_None, n, repeats) -> dict`` (see :func:`run`);
``format_result(result)`` renders it as the table the CLI prints.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_BIN = REPO_ROOT / "target" / "release" / "snakepit-bridge-server"
STARTUP_DEADLINE_S = 20.0

# Use the package in this repo even when it is not pip-installed.
_PKG = str(REPO_ROOT / "priv" / "python")
if _PKG not in sys.path:
    sys.path.insert(0, _PKG)

import grpc  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402
from snakepit_bridge import SessionContext, VariableType  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb2_grpc  # noqa: E402

#: Targets for the batch calls: at least 100× faster than sequential calls, within 2.5 ms.
TARGET_RATIO = 100.0
TARGET_BATCH_MS = 2.5

FLOAT_URL = "type.googleapis.com/snakepit.float"
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
]

Progress = Callable[[str], None]


# --------------------------------------------------------------------------- server


def server_binary() -> Path:
    """``$SNAKEPIT_SERVER_BIN``, else ``target/release/snakepit-bridge-server``."""
    configured = os.environ.get("SNAKEPIT_SERVER_BIN")
    path = Path(configured) if configured else DEFAULT_SERVER_BIN
    if not path.is_file() or not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"snakepit-bridge-server not found at {path}; build it with `cargo build --release` "
            "or set SNAKEPIT_SERVER_BIN"
        )
    return path


@dataclass(frozen=True)
class ServerHandle:
    """A server the bench started: ``address`` is ``host:port``."""

    address: str
    pid: int


@contextmanager
def standalone_server() -> Iterator[ServerHandle]:
    """Start the server on ``127.0.0.1:0``; yields its address and pid; SIGTERM (then SIGKILL) at exit."""
    binary = server_binary()
    stderr_log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        [str(binary), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=stderr_log,
        stdin=subprocess.DEVNULL,
        bufsize=0,
    )
    try:
        assert process.stdout is not None
        line = _first_line(process, STARTUP_DEADLINE_S).decode("utf-8", "replace").strip()
        if not line.startswith("listening on "):
            stderr_log.seek(0)
            raise RuntimeError(
                f"{binary} did not print 'listening on HOST:PORT' first (got {line!r}); "
                f"stderr: {stderr_log.read().decode('utf-8', 'replace')[-2000:]}"
            )
        # Keep draining stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
        yield ServerHandle(line[len("listening on ") :], process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stderr_log.close()


def _first_line(process: subprocess.Popen[bytes], deadline_s: float) -> bytes:
    assert process.stdout is not None
    buf = b""
    deadline = time.monotonic() + deadline_s
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                break
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    return buf.split(b"\n", 1)[0]


def _drain(stream: Any) -> None:
    with stream:
        while stream.read(4096):
            pass


def process_cpu_ns(pid: int) -> int | None:
    """CPU time a process's threads have used so far, in ns (Linux schedstat); ``None`` if unavailable."""
    total = 0
    try:
        for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
            total += int(stat.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total or None


# --------------------------------------------------------------------------- statistics


def _stats_ms(samples_ns: list[int]) -> dict[str, Any]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "median": statistics.median(ms),
        "min": ms[0],
        "max": ms[-1],
        "mean": statistics.fmean(ms),
        "runs": len(ms),
    }


def _timed(fn: Callable[[], Any]) -> tuple[int, Any]:
    t0 = time.perf_counter_ns()
    out = fn()
    return time.perf_counter_ns() - t0, out


def machine() -> dict[str, Any]:
    """Cores, CPU model and the Python-side versions the figures come from."""
    import google.protobuf
    from google.protobuf.internal import api_implementation

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "protobuf_implementation": api_implementation.Type(),
        # 1-minute load average when the run ended (other work on the machine skews figures).
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


# --------------------------------------------------------------------------- the benchmark


def run(
    address: str | None = None,
    n: int = 1000,
    repeats: int = 7,
    *,
    batch_reps: int = 5,
    raw: bool = True,
    gc_enabled: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (times in milliseconds).

    Args:
        address: ``host:port`` of a running bridge server; ``None`` starts the
            standalone server binary for the run and stops it afterwards.
        n: how many float variables (the batch size and the sequential count).
        repeats: repetitions; each times one sequential pass of ``n`` calls
            per operation and ``batch_reps`` batch calls.
        batch_reps: batch calls timed per repetition (a batch takes
            milliseconds, so more samples are cheap).
        raw: also time the raw generated stub and ``Ping`` (where time goes).
        gc_enabled: leave Python's cyclic garbage collector on while timing
            (default: on, as users run; ``False`` shows how much of the
            client's time, and of its variance, is collection).
        progress: called with a line of text as the run proceeds.

    Returns:
        A dict: ``n``, ``repeats``, ``batch_reps``, ``address``,
        ``session_id`` (removed again at the end), ``server_started``,
        ``gc_enabled``, ``machine``, ``targets``, ``unit`` (``"ms"``),
        ``register_ms``, ``elapsed_s`` and, per API (``"client"``, and ``"raw"`` unless ``raw=False``), per
        operation (``"get"``, ``"set"``): ``batch_ms`` and ``sequential_ms``
        (each ``{median, min, max, mean, runs}``), ``ratio`` (sequential median
        / batch median), ``per_call_us`` (sequential median / n) and, for the
        client, ``target_met`` (``ratio``, ``batch_ms``). With ``raw``, also
        ``ping`` (``sequential_ms`` of ``n`` Pings, ``per_call_us``), the
        client's ``overhead_vs_raw_ms`` per operation, and ``breakdown``
        (see :func:`_breakdown`): per operation, request/response bytes, the
        bytes-only call, response parsing, request building (set) and the
        server's CPU per call (``None`` unless the bench started the server).
    """
    if n < 1 or repeats < 1 or batch_reps < 1:
        raise ValueError("n, repeats and batch_reps must be positive")
    say: Progress = progress or (lambda _line: None)
    was_enabled = gc.isenabled()
    if not gc_enabled:
        gc.collect()
        gc.disable()
    try:
        if address is None:
            with standalone_server() as server:
                say(f"started {server_binary().name} on {server.address} (pid {server.pid})")
                result = _run(server.address, n, repeats, batch_reps, raw, say, server_pid=server.pid)
        else:
            result = _run(address, n, repeats, batch_reps, raw, say, server_pid=None)
    finally:
        if was_enabled:
            gc.enable()
    result["gc_enabled"] = gc_enabled
    return result


def _run(
    address: str, n: int, repeats: int, batch_reps: int, raw: bool, say: Progress, server_pid: int | None
) -> dict[str, Any]:
    started = time.perf_counter()
    session_id = f"bench-batch-{uuid.uuid4().hex[:12]}"
    names = [f"v{i:05d}" for i in range(n)]

    with grpc.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        ctx = SessionContext(session_id, channel)
        stub = pb2_grpc.BridgeServiceStub(channel)  # type: ignore[no-untyped-call]
        ctx.initialize()
        try:
            say(f"registering {n} float variables in session {session_id}")
            t_reg, _ = _timed(lambda: [ctx.register_variable(name, VariableType.FLOAT, 0.0) for name in names])

            ops = _operations(ctx, stub, session_id, names, raw)
            say("warming up")
            warm = names[: min(n, 50)]
            for _ in range(2):
                ctx.get_variables(names)
                ctx.update_variables({name: 0.5 for name in names})
                for name in warm:
                    ctx.get_variable(name)
                    ctx.update_variable(name, 0.25)
                if raw:
                    ops["raw"]["get"]["batch"](1)
                    ops["raw"]["set"]["batch"](1)
                    stub.Ping(pb2.PingRequest(message="warm"))

            samples: dict[str, dict[str, dict[str, list[int]]]] = {
                api: {op: {"batch": [], "sequential": []} for op in per_api} for api, per_api in ops.items()
            }
            ping_ns: list[int] = []
            for rep in range(repeats):
                t_rep = time.perf_counter()
                for api, per_api in ops.items():
                    for op, fns in per_api.items():
                        for b in range(batch_reps):
                            ns, _ = _timed(lambda: fns["batch"](rep * batch_reps + b + 1))
                            samples[api][op]["batch"].append(ns)
                        ns, _ = _timed(lambda: fns["sequential"](rep + 1))
                        samples[api][op]["sequential"].append(ns)
                if raw:
                    ping = pb2.PingRequest(message="")
                    ns, _ = _timed(lambda: [stub.Ping(ping) for _ in range(n)])
                    ping_ns.append(ns)
                say(f"repetition {rep + 1}/{repeats}: {time.perf_counter() - t_rep:.2f} s")

            breakdown = None
            if raw:
                say("breakdown: bytes-only calls, parsing, server CPU")
                breakdown = _breakdown(channel, session_id, names, repeats * batch_reps, server_pid)
            _check_final_state(ctx, names, repeats)
        finally:
            ctx.cleanup(force=True)

    result: dict[str, Any] = {
        "unit": "ms",
        "n": n,
        "repeats": repeats,
        "batch_reps": batch_reps,
        "address": address,
        "session_id": session_id,
        "server_started": server_pid is not None,
        "machine": machine(),
        "targets": {"ratio_min": TARGET_RATIO, "batch_max_ms": TARGET_BATCH_MS},
        "register_ms": t_reg / 1e6,
    }
    for api, per_api in samples.items():
        result[api] = {}
        for op, s in per_api.items():
            batch = _stats_ms(s["batch"])
            seq = _stats_ms(s["sequential"])
            entry = {
                "batch_ms": batch,
                "sequential_ms": seq,
                "ratio": seq["median"] / batch["median"],
                "per_call_us": seq["median"] * 1000 / n,
            }
            if api == "client":
                entry["target_met"] = {
                    "ratio": entry["ratio"] >= TARGET_RATIO,
                    "batch_ms": batch["median"] <= TARGET_BATCH_MS,
                }
            result[api][op] = entry
    if raw:
        ping = _stats_ms(ping_ns)
        result["ping"] = {"sequential_ms": ping, "per_call_us": ping["median"] * 1000 / n}
        result["breakdown"] = breakdown
        for op in ("get", "set"):
            # What SessionContext adds on top of the raw stub (encoding, decoding, type cache).
            result["client"][op]["overhead_vs_raw_ms"] = (
                result["client"][op]["batch_ms"]["median"] - result["raw"][op]["batch_ms"]["median"]
            )
    result["elapsed_s"] = time.perf_counter() - started
    return result


def _operations(
    ctx: SessionContext, stub: Any, session_id: str, names: list[str], raw: bool
) -> dict[str, dict[str, dict[str, Callable[[int], Any]]]]:
    """The timed bodies: ``ops[api][op]["batch" | "sequential"](k)``.

    ``k`` makes every write carry new values (a different float each call).
    The raw stub sends the compact forms SessionContext sends (``values_only``
    gets; sets as ``value_identifiers`` + one JSON array ``values_json``),
    built inside the timed body, so SessionContext − raw stub is the client
    library's own cost.
    """
    n = len(names)

    def client_get_batch(_k: int) -> Any:
        found = ctx.get_variables(names)
        assert len(found) == n, f"GetVariables found {len(found)} of {n}"
        return found

    def client_get_seq(_k: int) -> Any:
        get = ctx.get_variable
        return [get(name) for name in names]

    def client_set_batch(k: int) -> Any:
        outcome = ctx.update_variables({name: k + i / n for i, name in enumerate(names)})
        assert outcome.success, f"SetVariables refused: {outcome.errors}"
        return outcome

    def client_set_seq(k: int) -> Any:
        update = ctx.update_variable
        return [update(name, k + i / n + 0.5) for i, name in enumerate(names)]

    ops: dict[str, dict[str, dict[str, Callable[[int], Any]]]] = {
        "client": {
            "get": {"batch": client_get_batch, "sequential": client_get_seq},
            "set": {"batch": client_set_batch, "sequential": client_set_seq},
        }
    }
    if not raw:
        return ops

    def raw_get_batch(_k: int) -> Any:
        response = stub.GetVariables(
            pb2.BatchGetVariablesRequest(session_id=session_id, variable_identifiers=names, values_only=True)
        )
        assert len(response.values.identifiers) == n
        return response

    def raw_get_seq(_k: int) -> Any:
        call = stub.GetVariable
        return [call(pb2.GetVariableRequest(session_id=session_id, variable_identifier=name)) for name in names]

    def raw_set_batch(k: int) -> Any:
        request = _compact_set(session_id, names, [k + i / n + 0.25 for i in range(n)])
        response = stub.SetVariables(request)
        assert response.success and not response.errors, dict(response.errors)
        return response

    def raw_set_seq(k: int) -> Any:
        call = stub.SetVariable
        return [
            call(
                pb2.SetVariableRequest(
                    session_id=session_id, variable_identifier=name, value=_float_any(k + i / n + 0.75)
                )
            )
            for i, name in enumerate(names)
        ]

    ops["raw"] = {
        "get": {"batch": raw_get_batch, "sequential": raw_get_seq},
        "set": {"batch": raw_set_batch, "sequential": raw_set_seq},
    }
    return ops


def _compact_set(session_id: str, names: list[str], values: list[float]) -> pb2.BatchSetVariablesRequest:
    """A compact-form set of floats (``repr`` of a finite float is valid JSON)."""
    values_json = ("[" + ",".join(map(repr, values)) + "]").encode()
    return pb2.BatchSetVariablesRequest(session_id=session_id, value_identifiers=names, values_json=values_json)


def _float_any(x: float) -> any_pb2.Any:
    """A float as the bridge's ``Any`` (JSON text; ``repr`` of a finite float is valid JSON)."""
    return any_pb2.Any(type_url=FLOAT_URL, value=repr(x).encode())


def _breakdown(
    channel: grpc.Channel, session_id: str, names: list[str], count: int, server_pid: int | None
) -> dict[str, Any]:
    """Where a batch call's time goes, measured piece by piece.

    ``bytes_call_ms``: the RPC in the compact form SessionContext sends, with
    a pre-serialized request and the response left as bytes (server work +
    transport + gRPC's own client cost); ``parse_response_ms``: protobuf
    parsing of that response in Python; ``build_request_ms`` (set): building
    and serializing that request; ``server_cpu_ms``: CPU the server's threads
    used per call (only when the bench started the server, from /proc
    schedstat); ``map_form_call_ms``: ``bytes_call_ms`` for the published map
    form existing clients send (a ``Variable`` / an ``Any`` per value).
    """
    n = len(names)
    prefix = "/snakepit.bridge.BridgeService/"
    # No serializers: bytes in, bytes out.
    calls = {"get": channel.unary_unary(prefix + "GetVariables"), "set": channel.unary_unary(prefix + "SetVariables")}
    parsers = {"get": pb2.BatchGetVariablesResponse.FromString, "set": pb2.BatchSetVariablesResponse.FromString}

    def build_set(k: int) -> bytes:
        return _compact_set(session_id, names, [k + i / n + 0.125 for i in range(n)]).SerializeToString()

    def map_form_set(k: int) -> bytes:
        updates = {name: _float_any(k + i / n + 0.125) for i, name in enumerate(names)}
        return pb2.BatchSetVariablesRequest(session_id=session_id, updates=updates).SerializeToString()

    def get_request(values_only: bool) -> bytes:
        request = pb2.BatchGetVariablesRequest(
            session_id=session_id, variable_identifiers=names, values_only=values_only
        )
        return request.SerializeToString()

    # Sets alternate between two requests, so every write changes the value.
    requests = {"get": [get_request(True)], "set": [build_set(k) for k in range(2)]}
    map_form = {"get": [get_request(False)], "set": [map_form_set(k) for k in range(2)]}
    out: dict[str, Any] = {}
    for op, call in calls.items():
        reqs = requests[op]
        response = call(reqs[0])
        call(reqs[-1])
        cpu0 = process_cpu_ns(server_pid) if server_pid else None
        times = [_timed(lambda: call(reqs[i % len(reqs)]))[0] for i in range(count)]
        cpu1 = process_cpu_ns(server_pid) if server_pid else None
        parsed = parsers[op](response)
        if op == "set":
            assert parsed.success and not parsed.errors, dict(parsed.errors)
        entry: dict[str, Any] = {
            "request_bytes": len(reqs[0]),
            "response_bytes": len(response),
            "bytes_call_ms": _stats_ms(times),
            "parse_response_ms": _stats_ms([_timed(lambda: parsers[op](response))[0] for _ in range(count)]),
            "server_cpu_ms": (cpu1 - cpu0) / count / 1e6 if cpu0 is not None and cpu1 is not None else None,
        }
        if op == "set":
            entry["build_request_ms"] = _stats_ms([_timed(lambda: build_set(3))[0] for _ in range(count)])
        old = map_form[op]
        entry["map_form_call_ms"] = _stats_ms([_timed(lambda: call(old[i % len(old)]))[0] for i in range(count)])
        out[op] = entry
    return out


def _check_final_state(ctx: SessionContext, names: list[str], repeats: int) -> None:
    """The writes really happened: every variable moved past version 1."""
    info = ctx.get_variable_info(names[-1])
    if info.version <= 1 + repeats:
        raise AssertionError(f"{names[-1]} is at version {info.version}; the writes did not land")


# --------------------------------------------------------------------------- output


def format_result(r: dict[str, Any]) -> str:
    """The result of :func:`run` as a plain-text table."""
    m = r["machine"]
    n = r["n"]
    lines = [
        f"Python batch benchmark: {n} float variables, server {r['address']}"
        f"{' (started by the bench)' if r['server_started'] else ''}",
        f"machine: {m['cpu_model']}, {m['cpu_count']} CPUs; Python {m['python']}, grpcio {m['grpcio']}, "
        f"protobuf {m['protobuf']} ({m['protobuf_implementation']}); load average {m['load_average']}",
        f"medians over {r['repeats']} repetitions: batch = {r['repeats'] * r['batch_reps']} single calls "
        f"({r['batch_reps']} per repetition), sequential = {r['repeats']} passes of {n} calls; "
        f"Python GC {'on' if r['gc_enabled'] else 'off'} while timing",
        "",
        f"{'API':<16}{'op':<5}{'batch (1 call)':>16}{f'sequential ({n})':>20}{'ratio':>10}{'per seq. call':>16}"
        f"{'batch min':>12}{'seq. min':>12}",
        "-" * 107,
    ]
    for api, label in (("client", "SessionContext"), ("raw", "raw stub")):
        if api not in r:
            continue
        for op in ("get", "set"):
            e = r[api][op]
            lines.append(
                f"{label:<16}{op:<5}{e['batch_ms']['median']:>13.3f} ms{e['sequential_ms']['median']:>17.2f} ms"
                f"{e['ratio']:>9.1f}x{e['per_call_us']:>13.1f} µs"
                f"{e['batch_ms']['min']:>9.3f} ms{e['sequential_ms']['min']:>9.2f} ms"
            )
    if "ping" in r:
        p = r["ping"]
        lines.append(
            f"{'raw stub':<16}{'Ping':<5}{'':>16}{p['sequential_ms']['median']:>17.2f} ms{'':>10}"
            f"{p['per_call_us']:>13.1f} µs{'':>12}{p['sequential_ms']['min']:>9.2f} ms"
        )
    lines += [
        "",
        "get = GetVariables vs GetVariable; set = SetVariables vs SetVariable; "
        "ratio = sequential median / batch median (same run)",
        "SessionContext = ctx.get_variables / ctx.get_variable / ctx.update_variables / ctx.update_variable;",
        "raw stub = BridgeServiceStub with the compact forms SessionContext sends, requests built in the timed body,",
        "responses not decoded to Python values.",
        "",
    ]
    b = r.get("breakdown")
    if b:
        lines.append(
            f"Where a batch call's time goes, in the compact form (medians of {b['get']['bytes_call_ms']['runs']} calls each):"
        )
        for op, what in (("get", "GetVariables"), ("set", "SetVariables")):
            e = b[op]
            cpu = (
                f"{e['server_cpu_ms']:.3f} ms"
                if e["server_cpu_ms"] is not None
                else "n/a (server not started by the bench)"
            )
            lines += [
                f"  {what} of {n}: request {e['request_bytes'] / 1024:.1f} KiB, response {e['response_bytes'] / 1024:.1f} KiB",
                f"    server CPU per call (all server threads)           {cpu}",
                f"    RPC with bytes in/out (server + transport + gRPC)  {e['bytes_call_ms']['median']:.3f} ms",
            ]
            if op == "set":
                lines.append(
                    f"    build + serialize the request                      {e['build_request_ms']['median']:.3f} ms"
                )
            lines += [
                f"    parse the response (protobuf, Python)              {e['parse_response_ms']['median']:.3f} ms",
                f"    raw stub, whole call                               {r['raw'][op]['batch_ms']['median']:.3f} ms",
                f"    SessionContext on top of the raw stub              {r['client'][op]['overhead_vs_raw_ms']:.3f} ms"
                f"  (client {r['client'][op]['batch_ms']['median']:.3f} ms)",
                f"    the map form of existing clients, bytes in/out     {e['map_form_call_ms']['median']:.3f} ms",
            ]
        lines.append(
            f"  One unary round trip (Ping) costs {r['ping']['per_call_us']:.1f} µs; a sequential GetVariable "
            f"{r['raw']['get']['per_call_us']:.1f} µs raw, {r['client']['get']['per_call_us']:.1f} µs via SessionContext."
        )
        lines.append("")
    t = r["targets"]
    for op, what in (("get", "GetVariables"), ("set", "SetVariables")):
        e = r["client"][op]
        met = e["target_met"]
        lines.append(
            f"{what} via SessionContext: {e['batch_ms']['median']:.3f} ms (target ≤ {t['batch_max_ms']} ms: "
            f"{'MET' if met['batch_ms'] else 'MISSED'}), {e['ratio']:.1f}x faster than sequential "
            f"(target ≥ {t['ratio_min']:.0f}x: {'MET' if met['ratio'] else 'MISSED'})"
        )
    lines.append(f"registering {n} variables took {r['register_ms']:.1f} ms; whole run {r['elapsed_s']:.1f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="host:port of a running server (default: start the standalone server)")
    parser.add_argument("--n", type=int, default=None, help="number of variables (default 1000)")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 7)")
    parser.add_argument("--batch-reps", type=int, default=None, help="batch calls per repetition (default 5)")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw-stub and Ping measurements")
    parser.add_argument("--no-gc", action="store_true", help="disable Python's cyclic GC while timing")
    parser.add_argument("--quick", action="store_true", help="tiny configuration (n=50, 2 repetitions)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    args = parser.parse_args(argv)

    n, repeats, batch_reps = (50, 2, 2) if args.quick else (1000, 7, 5)
    result = run(
        args.address,
        args.n or n,
        args.repeats or repeats,
        batch_reps=args.batch_reps or batch_reps,
        raw=not args.no_raw,
        gc_enabled=not args.no_gc,
        progress=lambda line: print(f"[python_batch] {line}", file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(format_result(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
