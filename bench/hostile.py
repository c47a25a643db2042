"""What a hostile client can do to a standalone server: one figure per node-safety finding.

Usage::

    .venv/bin/python bench/hostile.py --server PATH [--quick] [--json OUT]
    .venv/bin/python bench/hostile.py --report BEFORE.json AFTER.json > bench/results/hostile.md

Each scenario starts its own ``PATH --listen 127.0.0.1:0`` (no other flag, so
every version runs with its defaults), speaks the raw protocol through the
generated stubs, reads the server's fds, CPU and RSS from ``/proc/PID``, and
stops it with SIGTERM (then SIGKILL). A server that dies is a result
("exited with signal N"), never a crash of this script. ``--quick`` shrinks
every count (a smoke run; the limits of the defaults are not reached).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "priv" / "python"))

import grpc  # noqa: E402
from google.protobuf import any_pb2  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2 as pb  # noqa: E402
from snakepit_bridge._proto import snakepit_bridge_pb2_grpc as pb_grpc  # noqa: E402

URL = "type.googleapis.com/snakepit."
MIB = 1024 * 1024
# Client limits far above the server's, so every refusal measured is the server's own.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * MIB),
    ("grpc.max_send_message_length", 64 * MIB),
    ("grpc.max_metadata_size", 16 * MIB),
]
Row = dict[str, Any]
Stub: TypeAlias = pb_grpc.BridgeServiceStub


class Server:
    """One ``snakepit-bridge-server`` started for one scenario."""

    def __init__(self, path: str, *extra: str) -> None:
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [path, "--listen", "127.0.0.1:0", *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
        )
        self.path, self.pid = path, self.proc.pid
        self.address = ""

    def wait_listening(self, deadline_s: float = 20.0) -> None:
        """Read the first stdout line, ``listening on HOST:PORT``."""
        assert self.proc.stdout is not None
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            end = time.monotonic() + deadline_s
            while b"\n" not in buf and time.monotonic() < end and sel.select(end - time.monotonic()):
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace")
        if not line.startswith("listening on "):
            raise RuntimeError(f"no 'listening on' line (got {line!r}): {self.state()}")
        self.address = line[len("listening on ") :].strip()

    def host_port(self) -> tuple[str, int]:
        host, port = self.address.rsplit(":", 1)
        return host, int(port)

    def state(self) -> str:
        """``alive``, or how the process ended."""
        rc = self.proc.poll()
        if rc is None:
            return "alive"
        return f"exited with signal {-rc}" if rc < 0 else f"exited with code {rc}"

    def stop(self) -> None:
        """SIGTERM by pid, SIGKILL after 5 s."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self.stderr.close()

    def fds(self) -> int:
        """Open file descriptors of the server (0 once it is gone)."""
        return len(os.listdir(f"/proc/{self.pid}/fd")) if self.proc.poll() is None else 0

    def cpu_s(self) -> float:
        """utime + stime of the server so far, in seconds (0 once gone)."""
        if self.proc.poll() is not None:
            return 0.0
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        """VmRSS of the server in MiB (0 once gone)."""
        status = Path(f"/proc/{self.pid}/status").read_text() if self.proc.poll() is None else "VmRSS: 0 kB"
        return int(status.split("VmRSS:", 1)[1].split()[0]) / 1024


def code_of(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, str]:
    """Run ``call(*args, **kwargs)`` (an RPC): ``("OK", "")`` or the status code's name and its details."""
    try:
        call(*args, **kwargs)
        return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details() or ""


def value(type_name: str, payload: bytes) -> any_pb2.Any:
    """A value on the JSON path: ``type.googleapis.com/snakepit.<type>`` and JSON bytes."""
    return any_pb2.Any(type_url=URL + type_name, value=payload)


def session(stub: Stub, sid: str) -> None:
    """InitializeSession; raises ``grpc.RpcError`` on a refusal."""
    stub.InitializeSession(pb.InitializeSessionRequest(session_id=sid), timeout=10)


def register(
    stub: Stub, sid: str, name: str, kind: str, payload: bytes, constraints: str = "", timeout: float = 10
) -> None:
    """RegisterVariable; raises ``grpc.RpcError`` on a refusal."""
    req = pb.RegisterVariableRequest(session_id=sid, name=name, type=kind, initial_value=value(kind, payload))
    req.constraints_json = constraints
    stub.RegisterVariable(req, timeout=timeout)


def ping_s(address: str, timeout: float) -> float | None:
    """Seconds for a Ping on a fresh channel, ``None`` if it did not answer within ``timeout``."""
    with grpc.insecure_channel(address) as channel:
        t0 = time.monotonic()
        code, _ = code_of(lambda: pb_grpc.BridgeServiceStub(channel).Ping(pb.PingRequest(), timeout=timeout))
        return time.monotonic() - t0 if code == "OK" else None


def row(figure: str, val: Any, unit: str = "") -> Row:
    return {"figure": figure, "value": val, "unit": unit}


def ms_row(figure: str, seconds: float | None, otherwise: str) -> Row:
    return row(figure, otherwise) if seconds is None else row(figure, round(seconds * 1000, 1), "ms")


def get_code(stub: Stub, sid: str, name: str) -> str:
    """The status code of a GetVariable."""
    return code_of(stub.GetVariable, pb.GetVariableRequest(session_id=sid, variable_identifier=name), timeout=30)[0]


def set_code(
    stub: Stub, sid: str, name: str, val: any_pb2.Any, metadata: dict[str, str] | None = None
) -> tuple[str, str]:
    """The status code and details of a SetVariable."""
    req = pb.SetVariableRequest(session_id=sid, variable_identifier=name, value=val, metadata=metadata)
    return code_of(stub.SetVariable, req, timeout=30)


def s1_huge_tensor(srv: Server, stub: Stub, quick: bool) -> list[Row]:
    """A tensor whose shape claims 2**40 elements and carries none."""
    session(stub, "s1")
    payload = json.dumps({"shape": [1099511627776], "data": []}).encode()
    code, _ = code_of(register, stub, "s1", "t", "tensor", payload)
    time.sleep(0.5)
    return [row("RegisterVariable status", code), row("server after the call", srv.state())]


def s2_silent(srv: Server, stub: Stub, quick: bool) -> list[Row]:
    """Raw TCP sockets that never send a byte."""
    n = 200 if quick else 2000
    base = srv.fds()
    socks: list[socket.socket] = []
    try:
        for i in range(n):
            if i % 100 == 0:
                time.sleep(0.05)  # paced, so none is lost to the listen backlog before the server accepts it
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(srv.host_port())
            socks.append(s)
        last, end = -1, time.monotonic() + 5  # wait until the server's fd count settles
        while time.monotonic() < end and srv.fds() != last:
            last = srv.fds()
            time.sleep(0.5)
        held = srv.fds() - base
        time.sleep(12)
        still = srv.fds() - base
        answered = ping_s(srv.address, 5.0)
    finally:
        for s in socks:
            s.close()
    return [
        row("sockets opened", n),
        row("held by the server (fds over baseline)", held, "fds"),
        row("still held 12 s later", still, "fds"),
        ms_row("fresh Ping within 5 s", answered, "no answer in 5 s"),
        row("server after the scenario", srv.state()),
    ]


def timed_call(srv: Server, call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, float, float]:
    """Status, wall seconds and server CPU seconds of one call (CPU counted until the server goes idle)."""
    cpu0, t0 = srv.cpu_s(), time.monotonic()
    code, _ = code_of(call, *args, **kwargs)
    wall = time.monotonic() - t0
    end, prev = time.monotonic() + 30, srv.cpu_s()
    while time.monotonic() < end and srv.state() == "alive":
        time.sleep(0.3)  # a server keeps working after a deadline: wait for it to stop
        now = srv.cpu_s()
        if now - prev < 0.02:
            break
        prev = now
    return code, wall, srv.cpu_s() - cpu0


def s3_list_cpu(srv: Server, stub: Stub, quick: bool) -> list[Row]:
    """ListVariables patterns of 1,023 bytes, 1,025 bytes and 1 MiB over 10,000 variables."""
    n = 1000 if quick else 10_000
    session(stub, "s3")
    t0 = time.monotonic()
    registered = 0
    for i in range(n):
        if code_of(register, stub, "s3", f"a{i:05d}", "float", b"0.5")[0] == "OK":
            registered += 1
        if time.monotonic() - t0 > 40:
            break
    rows = [row("float variables registered", registered), row("setup time", round(time.monotonic() - t0, 1), "s")]
    patterns = [("1,023-byte pattern", "*a" * 511 + "b"), ("1,025-byte pattern", "*a" * 512 + "b")]
    for label, pattern in [*patterns, ("1 MiB pattern", "*a" * 524288)]:  # the new default limit is 1,024 bytes
        req = pb.ListVariablesRequest(session_id="s3", pattern=pattern)
        code, wall, cpu = timed_call(srv, stub.ListVariables, req, timeout=30)
        rows += [
            row(f"{label}: status", code),
            row(f"{label}: wall time", round(wall, 3), "s"),
            row(f"{label}: server CPU", round(cpu, 2), "s"),
        ]
    big = pb.ListVariablesRequest(session_id="s3", pattern="*a" * 524288)
    codes: list[str] = []

    def one_call() -> None:
        codes.append(code_of(stub.ListVariables, big, timeout=30)[0])

    threads = [threading.Thread(target=one_call) for _ in range(2)]
    cpu0 = srv.cpu_s()
    for t in threads:
        t.start()
    time.sleep(0.5)
    latency = ping_s(srv.address, 30.0)
    for t in threads:
        t.join(35)
    rows += [
        ms_row("Ping during two 1 MiB calls", latency, "no answer in 30 s"),
        row("the two calls: status", ", ".join(sorted(codes))),
        row("the two calls: server CPU until they returned", round(srv.cpu_s() - cpu0, 2), "s"),
        row("server after the scenario", srv.state()),
    ]
    return rows


def s4_unreadable(srv: Server, stub: Stub, quick: bool) -> list[Row]:
    """Writes whose variable would no longer fit a response."""
    session(stub, "s4")
    register(stub, "s4", "s", "string", b'"x"')
    text = json.dumps("a" * (4_194_200 if not quick else 100_000)).encode()
    rows = [
        row(
            f"SetVariable of a {len(text) - 2:,}-char string: status",
            set_code(stub, "s4", "s", value("string", text))[0],
        ),
        row("then GetVariable of that string: status", get_code(stub, "s4", "s")),
    ]
    register(stub, "s4", "m", "string", b'"x"')
    keys = 600 if quick else 60_000
    codes = [
        set_code(
            stub, "s4", "m", value("string", f'"y{c}"'.encode()), {f"k{c}_{i:05d}": "vvvvvvvv" for i in range(keys)}
        )[0]
        for c in range(4)
    ]
    return rows + [
        row(f"4 SetVariable with {keys:,} new metadata keys each: statuses", ", ".join(codes)),
        row("then GetVariable of that variable: status", get_code(stub, "s4", "m")),
        row("server after the scenario", srv.state()),
    ]


async def open_watches(address: str, limit: int) -> tuple[int, str]:
    """WatchVariables streams on one channel until one is refused, stalls 5 s, or ``limit`` are open."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.BridgeServiceStub(channel)
        req = pb.WatchVariablesRequest(session_id="s5", variable_identifiers=["x"], include_initial_values=True)
        calls = []
        stop = f"none ({limit:,} open)"
        for _ in range(limit):
            call = stub.WatchVariables(req)
            calls.append(call)
            try:
                first = await asyncio.wait_for(call.read(), 5)
            except asyncio.TimeoutError:
                stop = "no answer in 5 s"
                break
            except grpc.RpcError as e:
                stop = e.code().name
                break
            if first is grpc.aio.EOF:
                stop = (await call.code()).name
                break
        opened = len(calls) - (0 if stop.startswith("none") else 1)
        for call in calls:
            call.cancel()
        return opened, stop


def s5_quotas(srv: Server, stub: Stub, quick: bool) -> list[Row]:
    """Sessions, watch streams and a constraint: does anything say no?"""
    session(stub, "s5")  # the watch streams' session, before the session quota can be spent
    register(stub, "s5", "x", "float", b"0.5")
    limit = 2000 if quick else 20_000
    rss0, created, stop, t0 = srv.rss_mib(), 0, f"none ({limit:,} created)", time.monotonic()
    for i in range(limit):
        code, _ = code_of(session, stub, f"q{i}")
        if code != "OK":
            stop = code
            break
        created += 1
        if time.monotonic() - t0 > 40:
            stop = "time cap (40 s)"
            break
    rows = [
        row("sessions created (besides the scenario's own)", created),
        row("sessions: stopped by", stop),
        row("server RSS before / after the sessions", f"{rss0:.1f} / {srv.rss_mib():.1f}", "MiB"),
    ]
    opened, why = asyncio.run(open_watches(srv.address, 300 if quick else 3000))
    rows += [row("watch streams opened on one channel", opened), row("watch streams: stopped by", why)]
    for i, repeats in enumerate((4000, 17476) if quick else (40_000, MIB // 6)):
        constraints = json.dumps({"pattern": "(a|b)*" * repeats})
        rss0 = srv.rss_mib()
        code, wall, _ = timed_call(srv, register, stub, "s5", f"c{i}", "string", b'"ab"', constraints, timeout=60)
        rss1 = srv.rss_mib()
        label = f'constraint {{"pattern": "(a|b)*" x {repeats:,}}} ({len(constraints):,} bytes)'
        rows += [
            row(f"{label}: status", code),
            row(f"{label}: wall time", round(wall, 3), "s"),
            row(f"{label}: server RSS delta", round(rss1 - rss0, 1), "MiB"),
        ]
    return rows + [row("server after the scenario", srv.state())]


def s8_edges(srv: Server, stub: Stub, quick: bool) -> list[Row]:
    """A 1 MiB type_url, -2**63 - 1, and a zero message limit."""
    session(stub, "s8")
    register(stub, "s8", "f", "float", b"0.5")
    register(stub, "s8", "i", "integer", b"0")
    huge = any_pb2.Any(type_url=URL + "x" * MIB, value=b"1.0")
    code, details = set_code(stub, "s8", "f", huge)
    rows = [row("SetVariable with a 1 MiB type_url: status", code), row("its status details", len(details), "bytes")]
    code, _ = set_code(stub, "s8", "i", value("integer", b"-9223372036854775809"))
    got = "not read (refused)"
    if code == "OK":
        resp = stub.GetVariable(pb.GetVariableRequest(session_id="s8", variable_identifier="i"), timeout=10)
        got = resp.variable.value.value.decode()
    rows += [
        row("integer -9223372036854775809: status", code),
        row("then GetVariable returns", got),
        row("server after the scenario", srv.state()),
    ]
    zero = Server(srv.path, "--max-message-bytes", "0")
    try:
        zero.proc.wait(5)
        zero.stderr.seek(0)
        first = zero.stderr.read().decode(errors="replace").strip().splitlines()[:1]
        verdict = f"refused: {zero.state()}" + (f" ({first[0][:120]})" if first else "")
    except subprocess.TimeoutExpired:
        verdict = "accepted (still serving after 5 s; killed)"
    finally:
        zero.stop()
    return rows + [row("--max-message-bytes 0 at start", verdict)]


SCENARIOS: list[tuple[str, str, Callable[[Server, pb_grpc.BridgeServiceStub, bool], list[Row]]]] = [
    ("1", "Tensor whose shape claims 2^40 elements", s1_huge_tensor),
    ("2", "Silent connections", s2_silent),
    ("3", "ListVariables CPU", s3_list_cpu),
    ("4", "Unreadable writes", s4_unreadable),
    ("5", "Quotas", s5_quotas),
    ("8", "Edges: type_url echo, i64 range, message limit 0", s8_edges),
]


def describe(path: str) -> dict[str, Any]:
    """The binary, its version and the git commit of the tree it lives in."""
    where = Path(path).resolve().parent
    git = ["git", "-C", str(where)]
    commit = subprocess.run(git + ["log", "-1", "--format=%h %s"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(git + ["status", "--porcelain", "--", ":/native"], capture_output=True, text=True).stdout
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(Path(path).stat().st_mtime))
    return {
        "server": path,
        "version": version,
        "commit": commit or "unknown",
        "built_utc": built,
        "tree_clean": not dirty.strip(),
        "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {platform.platform()}",
        "command": "bench/hostile.py " + " ".join(sys.argv[1:]),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run(path: str, quick: bool) -> dict[str, Any]:
    """Every scenario against a fresh server; the figures and where they came from."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for scenario 2's sockets; servers inherit it
    out = describe(path)
    out["quick"], out["nofile_limit"], out["scenarios"] = quick, hard, []
    for sid, title, fn in SCENARIOS:
        print(f"[{sid}] {title} ...", file=sys.stderr, flush=True)
        srv, t0, rows = Server(path), time.monotonic(), []
        try:
            srv.wait_listening()
            with grpc.insecure_channel(srv.address, options=CHANNEL_OPTIONS) as channel:
                stub = pb_grpc.BridgeServiceStub(channel)
                rows = fn(srv, stub, quick)
        except Exception as e:  # a scenario that cannot finish is a result too
            rows.append(row("scenario stopped early", f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"))
            rows.append(row("server at that point", srv.state()))
        finally:
            srv.stop()
        out["scenarios"].append({"id": sid, "title": title, "rows": rows, "wall_s": round(time.monotonic() - t0, 1)})
    if describe(path)["built_utc"] != out["built_utc"]:
        out["warning"] = "the binary was rebuilt during the run: its scenarios may mix two builds"
    return out


def fmt(v: Any) -> str:
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(result: dict[str, Any]) -> str:
    """The plain-text table the CLI prints."""
    lines = [f"{result['server']} — {result['commit']}"]
    for sc in result["scenarios"]:
        for r in sc["rows"]:
            lines.append(f"{sc['id']:>2}  {r['figure']:<76} {fmt(r['value'])} {r['unit']}".rstrip())
    return "\n".join(lines)


def report(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Markdown: one before/after table per scenario, with the commands and commits."""
    out = [
        "# Hostile-client figures: before and after the node-safety fixes",
        "",
        "Written by `bench/hostile.py --report BEFORE.json AFTER.json` from these two runs "
        "(each scenario on a fresh server started with `--listen 127.0.0.1:0` and nothing else):",
        "",
    ]
    for tag, r in (("before", before), ("after", after)):
        tree = "" if r.get("tree_clean", True) else " (native/ had uncommitted changes at run time)"
        out.append(
            f"- **{tag}**: commit `{r['commit']}`{tree}, `{r['server']}` ({r['version']}, "
            f"built {r.get('built_utc', '?')} UTC); "
            f"`{r['command']}`; {r['when']}; {r['machine']}; open-files limit {r.get('nofile_limit', '?')}"
            + ("; QUICK" if r.get("quick") else "")
        )
    out += [
        f"- **WARNING ({tag})**: {r['warning']}" for tag, r in (("before", before), ("after", after)) if "warning" in r
    ]
    after_by_id = {sc["id"]: sc for sc in after["scenarios"]}
    for sc in before["scenarios"]:
        other = after_by_id.get(sc["id"], {"rows": [], "wall_s": "?"})
        out += [
            "",
            f"## {sc['id']}. {sc['title']}",
            "",
            "| figure | before | after | unit |",
            "| --- | --- | --- | --- |",
        ]
        b_rows, a_rows = ({r["figure"]: r for r in x["rows"]} for x in (sc, other))
        for fig in dict.fromkeys([*b_rows, *a_rows]):  # both runs' figures, in order, once each
            b, a = b_rows.get(fig), a_rows.get(fig)
            unit = (b or {}).get("unit") or (a or {}).get("unit", "")
            cells = [fig, fmt(b["value"]) if b else "—", fmt(a["value"]) if a else "—", unit]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append(f"\nScenario wall time: {sc['wall_s']} s before, {other['wall_s']} s after.")
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", help="the snakepit-bridge-server binary to attack")
    ap.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    ap.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    ap.add_argument("--report", nargs=2, metavar=("BEFORE", "AFTER"), help="print the before/after Markdown")
    args = ap.parse_args()
    if args.report:
        before, after = (json.loads(Path(p).read_text()) for p in args.report)
        sys.stdout.write(report(before, after))
        return 0
    if not args.server:
        ap.error("--server PATH or --report BEFORE AFTER")
    result = run(args.server, args.quick)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
