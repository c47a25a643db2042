"""Smoke test of bench/python_batch.py: it runs in a tiny configuration and returns sane figures.

Never asserts timings (shared, noisy machines): only that the benchmark runs,
cleans up, and returns positive figures of the right shape.
"""

from __future__ import annotations

import importlib.util
import json
import sys
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
