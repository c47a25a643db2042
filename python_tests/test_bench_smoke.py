"""Smoke tests of bench/python_batch.py, the watch_load client and bench/push_receiver.py.

Each runs in a tiny configuration and returns sane figures.

Never asserts timings (shared, noisy machines): only that the benchmark runs,
cleans up, and returns positive figures of the right shape.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from snakepit_bridge import SessionContext, SessionNotFoundError

BENCH_FILE = Path(__file__).resolve().parent.parent / "bench" / "python_batch.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """bench/python_batch.py, imported from its path (bench/ is not a package)."""
    name = "snakepit_bench_python_batch"
    spec = importlib.util.spec_from_file_location(name, BENCH_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _positive_stats(stats: dict[str, Any], runs: int) -> None:
    assert stats["runs"] == runs
    for key in ("median", "min", "max", "mean"):
        assert isinstance(stats[key], float) and stats[key] > 0, (key, stats)
    assert stats["min"] <= stats["median"] <= stats["max"]


def _check_shape(r: dict[str, Any], n: int, repeats: int, batch_reps: int, raw: bool) -> None:
    assert r["unit"] == "ms"
    assert r["gc_enabled"] is True
    assert (r["n"], r["repeats"], r["batch_reps"]) == (n, repeats, batch_reps)
    assert r["targets"] == {"ratio_min": 100.0, "batch_max_ms": 2.5}
    assert r["machine"]["cpu_count"] >= 1
    assert r["register_ms"] > 0 and r["elapsed_s"] > 0
    apis = ("client", "raw") if raw else ("client",)
    for api in apis:
        for op in ("get", "set"):
            e = r[api][op]
            _positive_stats(e["batch_ms"], repeats * batch_reps)
            _positive_stats(e["sequential_ms"], repeats)
            assert e["ratio"] > 0 and e["per_call_us"] > 0
    for op in ("get", "set"):
        assert set(r["client"][op]["target_met"]) == {"ratio", "batch_ms"}
        assert all(isinstance(v, bool) for v in r["client"][op]["target_met"].values())
    if raw:
        _positive_stats(r["ping"]["sequential_ms"], repeats)
        assert r["ping"]["per_call_us"] > 0
        for op in ("get", "set"):
            b = r["breakdown"][op]
            assert b["request_bytes"] > 0 and b["response_bytes"] > 0
            _positive_stats(b["bytes_call_ms"], repeats * batch_reps)
            _positive_stats(b["parse_response_ms"], repeats * batch_reps)
            assert isinstance(r["client"][op]["overhead_vs_raw_ms"], float)
        _positive_stats(r["breakdown"]["set"]["build_request_ms"], repeats * batch_reps)
    else:
        assert "raw" not in r and "ping" not in r and "breakdown" not in r


def test_run_against_the_shared_server(bench: ModuleType, server_address: str) -> None:
    r = bench.run(server_address, n=8, repeats=2, batch_reps=2)
    _check_shape(r, n=8, repeats=2, batch_reps=2, raw=True)
    assert r["address"] == server_address and r["server_started"] is False
    # The server is not ours: no CPU figure for it.
    assert r["breakdown"]["get"]["server_cpu_ms"] is None

    table = bench.format_result(r)
    for needle in ("SessionContext", "raw stub", "GetVariables", "SetVariables", "ratio", "MET"):
        assert needle in table


def test_run_leaves_no_session_behind(bench: ModuleType, server_address: str) -> None:
    r = bench.run(server_address, n=3, repeats=1, batch_reps=1, raw=False)
    _check_shape(r, n=3, repeats=1, batch_reps=1, raw=False)
    assert r["session_id"].startswith("bench-batch-")
    with grpc.insecure_channel(server_address) as channel:
        with pytest.raises(SessionNotFoundError):
            SessionContext(r["session_id"], channel).get_session()


def test_run_starts_and_stops_its_own_server(bench: ModuleType) -> None:
    r = bench.run(None, n=4, repeats=1, batch_reps=2)
    _check_shape(r, n=4, repeats=1, batch_reps=2, raw=True)
    assert r["server_started"] is True
    cpu = r["breakdown"]["get"]["server_cpu_ms"]
    assert cpu is None or cpu > 0  # None where /proc schedstat is unavailable


def test_cli_json(bench: ModuleType, server_address: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--address", server_address, "--n", "5", "--repeats", "1", "--json"]) == 0
    out = capsys.readouterr().out
    r = json.loads(out)
    _check_shape(r, n=5, repeats=1, batch_reps=2, raw=True)


# --------------------------------------------------------------------------- the watch benchmarks

REPO_ROOT = BENCH_FILE.parent.parent
RECEIVER = REPO_ROOT / "bench" / "push_receiver.py"


def watch_load_binary() -> Path:
    """``$SNAKEPIT_WATCH_LOAD``, else ``target/release/watch_load``; fails (never skips) when missing."""
    configured = os.environ.get("SNAKEPIT_WATCH_LOAD")
    path = Path(configured) if configured else REPO_ROOT / "target" / "release" / "watch_load"
    if not path.is_file():
        pytest.fail(f"{path} not found; build it with `cargo build --release` (scripts/test.sh does)", pytrace=False)
    return path


def _run_watch_load(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(watch_load_binary()), *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"watch_load {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _positive_summary(s: dict[str, Any], count: int) -> None:
    assert s["count"] == count, s
    for key in ("min", "p50", "p90", "p99", "max", "mean"):
        assert isinstance(s[key], float) and s[key] > 0, (key, s)
    assert s["min"] <= s["p50"] <= s["p99"] <= s["max"]


def test_watch_load_fan_out_json(server_address: str) -> None:
    proc = _run_watch_load(
        "fan-out", "--quick", "--json", "--address", server_address, "--watchers", "3", "--updates", "4"
    )
    r = json.loads(proc.stdout)
    assert r["mode"] == "fan-out" and r["address"] == server_address and r["server_started"] is False
    assert (r["watchers"], r["updates"], r["warmup_updates"]) == (3, 4, 2)
    for key in ("last_watcher_ms", "first_watcher_ms", "median_watcher_ms"):
        _positive_summary(r[key], 4)
    _positive_summary(r["every_delivery_ms"], 3 * 4)
    assert len(r["per_update_last_ms"]) == 4
    assert r["coalesced"] >= 0 and r["messages"] >= 3
    assert [ref["name"] for ref in r["reference_ms"]] == ["Redis pub/sub (redis-py asyncio)", "etcd Watch (grpcio)"]
    assert r["machine"]["logical_processors"] >= 1
    assert "[watch_load]" in proc.stderr  # progress lines


def test_watch_load_scale_json() -> None:
    # Starts its own standalone server ($SNAKEPIT_SERVER_BIN, or the one next to watch_load).
    proc = _run_watch_load("scale", "--quick", "--json", "--streams", "20", "--connections", "2", "--updates", "2")
    r = json.loads(proc.stdout)
    assert r["mode"] == "scale"
    assert (r["streams"], r["connections"], r["streams_per_connection"], r["updates"]) == (20, 2, 10, 2)
    mem = r["memory"]
    assert mem["rss_before_kib"] > 0 and mem["rss_live_kib"] > 0 and mem["rss_closed_kib"] > 0
    assert isinstance(mem["bytes_per_stream"], float)
    for key in ("all_streams_ms", "first_stream_ms", "median_stream_ms"):
        _positive_summary(r[key], 2)
    assert r["server_stopped_gracefully"] is True
    assert r["server_cpu_ms_per_update"] is None or r["server_cpu_ms_per_update"] > 0


def test_watch_load_prints_tables(server_address: str) -> None:
    fan = _run_watch_load("fan-out", "--quick", "--address", server_address, "--watchers", "2", "--updates", "3")
    for needle in ("LAST watcher has it", "p99", "Redis pub/sub", "etcd"):
        assert needle in fan.stdout
    sc = _run_watch_load("scale", "--streams", "10", "--connections", "1", "--updates", "2", "--warmup", "1")
    for needle in ("memory per idle stream", "ALL 10 streams have it", "bytes"):
        assert needle in sc.stdout


def _line(proc: subprocess.Popen[str], prefix: str, deadline: float = 60.0) -> str:
    """The receiver's next line starting with ``prefix`` (others skipped); fails on ERROR or EOF."""
    assert proc.stdout is not None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"push_receiver.py ended before {prefix!r} (exit {proc.poll()})", pytrace=False)
        if line.startswith("ERROR"):
            pytest.fail(f"push_receiver.py failed: {line}{proc.stdout.read()}", pytrace=False)
        if line.startswith(prefix):
            return line.rstrip("\n")
    pytest.fail(f"no {prefix!r} line within {deadline}s", pytrace=False)


def test_push_receiver_speaks_its_protocol(server_address: str, session_id: str) -> None:
    """bench/push_receiver.py, driven by a Python writer instead of Elixir (push_latency.exs drives it for real)."""
    with grpc.insecure_channel(server_address) as channel:
        ctx = SessionContext(session_id, channel)
        ctx.initialize()
        try:
            ctx.register_variable("stamp", "integer", 0)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    str(RECEIVER),
                    "--address",
                    server_address,
                    "--session",
                    session_id,
                    "--variable",
                    "stamp",
                    "--modes",
                    "client,raw",
                    "--pings",
                    "4",
                    "--warmup-pings",
                    "2",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            try:
                _line(proc, "READY")
                for mode in ("client", "raw"):
                    _line(proc, f"WATCHING {mode}")
                    end = time.monotonic() + 30
                    while ctx.get_session()["watcher_count"] != 1:
                        assert time.monotonic() < end, "the receiver's watch never showed up in watcher_count"
                        time.sleep(0.01)
                    versions = []
                    for _ in range(3):
                        ctx.update_variable("stamp", time.time_ns())
                        versions.append(ctx.get_variable_info("stamp").version)
                        time.sleep(0.005)
                    ctx.update_variable("stamp", -1)
                    marker = ctx.get_variable_info("stamp").version
                    samples = _line(proc, f"SAMPLES {mode} ").split()
                    n = int(samples[2])
                    pairs = [tuple(map(int, p.split(":"))) for p in samples[3:]]
                    assert len(pairs) == n and 1 <= n <= 4  # fewer if the receiver fell behind (coalesced)
                    assert [v for v, _ in pairs] == sorted(v for v, _ in pairs)
                    # The stamps' latencies, then the end marker's (value -1: receipt time + 1).
                    assert all(v in versions and ns > 0 for v, ns in pairs[:-1]), (pairs, versions)
                    assert pairs[-1][0] == marker and pairs[-1][1] > time.time_ns() - 60 * 10**9
                    pings = _line(proc, f"PINGS {mode} ").split()
                    assert int(pings[2]) == 4 and all(int(x) > 0 for x in pings[3:]) and len(pings) == 7
                done = _line(proc, "DONE")
                assert "python=" in done and "grpcio=" in done
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                assert proc.stdout is not None
                proc.stdout.close()
        finally:
            ctx.cleanup(force=True)


# --------------------------------------------------------------------------- the report writer

RENDER = REPO_ROOT / "bench" / "render_report.py"

REPORT_SECTIONS = (
    "# Benchmark report",
    "## Machine",
    "## Summary",
    "## Plots",
    "## 1. NIF get/update vs GenServer.call",
    "## 2. Batch vs sequential gets and sets from Python",
    "## 3. Push latency Elixir → Python vs Ping",
    "## 4. Writer cost vs number of watchers",
    "## 5. Fan-out to 100 watcher connections",
    "## 6. Scale: 10,000 streams",
    "## Notes",
)


def test_report_is_complete_when_benches_failed(tmp_path: Path) -> None:
    """render_report.py on a run where every bench failed or timed out: every section, no plot, exit 0.

    (test/bench_smoke_test.exs runs the whole report writer tiny, with real figures.)
    """
    entry = {
        "limit_s": 60,
        "elapsed_s": 1.5,
        "load_average_start": [0.5, 0.4, 0.3],
        "load_average_end": [0.6, 0.4, 0.3],
    }
    benches = {
        "nif": {
            **entry,
            "status": "failed",
            "error": "an exception was raised:\n    ** (RuntimeError) boom",
            "config": {"batches": 4},
        },
        "python_batch": {
            **entry,
            "status": "failed",
            "error": "exited with status 1:\nTraceback",
            "command": "python bench/python_batch.py --json",
        },
        "push_latency": {
            **entry,
            "status": "timed out",
            "error": "still running after 60 s; stopped",
            "config": {"updates": 20},
        },
        "writer_cost": {**entry, "status": "failed", "error": "no watch_load", "config": {"batches": 3}},
        "fan_out": {
            **entry,
            "status": "timed out",
            "error": "still running after 60 s; stopped",
            "command": "watch_load fan-out --json",
        },
    }  # "scale" left out altogether: reported as not run
    data = {
        "report": {
            "format": 1,
            "quick": True,
            "command": "mix run bench/report.exs --quick",
            "started_at": "2026-01-01T00:00:00Z",
            "elapsed_s": 9.0,
            "order": list(benches),
            "git": {"commit": "abc1234", "local_changes": False},
        },
        "machine": {
            "logical_processors": 2,
            "schedulers_online": 2,
            "cpu_model": "Test CPU",
            "otp_release": "25",
            "erts_version": "13.1.5",
            "elixir_version": "1.14.0",
            "jit": True,
            "load_average_start": [0.5, 0.4, 0.3],
            "mem_total_kib": 1024 * 1024,
            "kernel": "Linux",
            "rustc": "rustc 1.0",
            "python": {"executable": "python", "version": "3.11.7", "grpcio": "1", "protobuf": "1"},
        },
        "benches": benches,
    }
    figures = tmp_path / "latest.json"
    figures.write_text(json.dumps(data))
    (tmp_path / "latest.png").write_bytes(b"a stale plot from an earlier run")

    proc = subprocess.run([sys.executable, str(RENDER), str(figures)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "plot skipped" in proc.stdout
    md = (tmp_path / "latest.md").read_text()
    for heading in REPORT_SECTIONS:
        assert heading in md, heading
    assert md.count("**FAILED**") == 2 * 3 and md.count("**TIMED OUT**") == 2 * 2 and md.count("**NOT RUN**") == 2
    assert "RuntimeError) boom" in md and "Test CPU" in md and "2 logical CPUs" in md
    assert "**Plot skipped**: neither the push-latency nor the writer-cost bench produced figures" in md
    assert not (tmp_path / "latest.png").exists()  # the stale plot is gone
