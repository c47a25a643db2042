"""Writes the benchmark report (markdown + PNG) from the figures bench/report.exs collected.

Usage::

    python bench/render_report.py bench/results/latest.json [--no-plot]

Reads ``DIR/latest.json`` and writes ``DIR/latest.md`` and ``DIR/latest.png``
(same stem as the JSON): one section per benchmark, each with its unit, run
counts, the load average around it, its targets (MET / MISSED as the bench
measured them), the ratios measured in the same run and the reference figures
(other systems on the same workload). The PNG has (a) the distribution of Elixir → Python push
latencies with the Ping round trip for comparison and (b) writer cost vs the
number of watchers. When matplotlib cannot be imported (or ``--no-plot``), the
report says the plot was skipped and is complete as tables; that is not an
error. Standard library only, apart from matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The benches in report order: key, short name (summary), section heading, Elixir module (None: a child process).
SECTIONS = [
    ("nif", "NIF", "1. NIF get/update vs GenServer.call", "Snakepit.Bench.Nif"),
    ("python_batch", "Python batch", "2. Batch vs sequential gets and sets from Python", None),
    ("push_latency", "Push latency", "3. Push latency Elixir → Python vs Ping", "Snakepit.Bench.PushLatency"),
    ("writer_cost", "Writer cost", "4. Writer cost vs number of watchers", "Snakepit.Bench.WriterCost"),
    ("fan_out", "Fan-out", "5. Fan-out to 100 watcher connections", None),
    ("scale", "Scale", "6. Scale: 10,000 streams, fan-out time and memory per stream", None),
]

#: Reference figures for a batch read of 1,000 keys from Python on this machine class, ms.
BATCH_REFERENCES_MS = [("etcd range read of 1,000 keys", 2.4), ("Redis MGET of 1,000 keys", 5.9)]

Row = list[str]


# --------------------------------------------------------------------------- formatting


def fmt(x: Any, digits: int = 1) -> str:
    """A number with ``digits`` decimals and thousands separators; "–" for None/NaN."""
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:,.{digits}f}"


def ratio(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}×"


def verdict(met: bool | None) -> str:
    return {True: "**MET**", False: "**MISSED**", None: "–"}[met]


def table(header: Row, rows: list[Row], align: str | None = None) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default: first left, rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(r) + " |" for r in [header, sep, *rows]]
    return "\n".join(lines) + "\n"


def plural(n: int, word: str) -> str:
    return f"{fmt(n)} {word}{'' if n == 1 else 'es' if word.endswith(('s', 'ch')) else 's'}"


def load(x: list[float] | None) -> str:
    return fmt(x[0], 2) if x else "–"


def bench_line(entry: dict[str, Any]) -> str:
    """Elapsed time, bound, and load average around one bench."""
    return (
        f"Took {fmt(entry['elapsed_s'], 1 if entry['elapsed_s'] >= 10 else 2)} s (bounded at {entry['limit_s']} s); 1-minute load average "
        f"{load(entry.get('load_average_start'))} at its start, {load(entry.get('load_average_end'))} at its end "
        "(the bench itself counts for about 1)."
    )


# --------------------------------------------------------------------------- the sections


class Report:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.meta = data["report"]
        self.machine = data["machine"]
        self.benches = data["benches"]
        #: (bench, target, measured, result) rows for the summary, filled by the sections.
        self.summary: list[Row] = []

    def entry(self, key: str) -> dict[str, Any]:
        return self.benches.get(key) or {"status": "not run", "error": "missing from latest.json"}

    def result(self, key: str) -> dict[str, Any] | None:
        e = self.entry(key)
        return e.get("result") if e.get("status") == "ok" else None

    def target(self, bench: str, target: str, measured: str, met: bool | None) -> Row:
        row = [bench, target, measured, verdict(met) if met is not None else "reported (no numeric target)"]
        self.summary.append(row)
        return row[1:]

    # -- 1. NIF

    def nif(self, r: dict[str, Any]) -> str:
        res = r["results"]
        gs = res["genserver_call"]["median_ns"]
        rows = []
        for key in r["ops"]:
            s = res[key]
            rows.append(
                [
                    f"`{s['label']}`",
                    fmt(s["median_ns"] / 1000, 3),
                    fmt(s["p99_ns"] / 1000, 3),
                    fmt(s["min_ns"] / 1000, 3),
                    ratio(s["median_ns"] / gs),
                    f"{fmt(s['batches'])} × {fmt(r['batch_size'])}",
                    s["description"],
                ]
            )
        out = [
            "Elixir → Rust store through the NIF, on a float variable with no watchers, next to a "
            "`GenServer.call` round trip timed in the same rounds (`bench/nif_bench.exs`).\n",
            f"Unit: **µs per call** (batch time / {fmt(r['batch_size'])}). Runs: **{fmt(r['batches'])} timed batches "
            f"of {fmt(r['batch_size'])} back-to-back calls per operation** ({fmt(r['batches'] * r['batch_size'])} calls "
            f"each; {plural(r['warmup_batches'], 'warm-up batch')} discarded); median and p99 are over the per-batch "
            "means (p99 = spread between batches, not single-call tail latency).\n",
            table(
                ["operation", "median µs", "p99 µs", "min µs", "vs GenServer.call", "batches × calls", "notes"],
                rows,
                "lrrrrrl",
            ),
            "“vs GenServer.call” = this median / the `GenServer.call` median of the same run.\n",
        ]
        trows = []
        for key, name in (("update_variable", "update_variable"), ("get_variable", "get_variable")):
            med = res[key]["median_ns"] / 1000
            rel = r["ratios"][f"{key}_vs_genserver_call"]
            trows.append(
                self.target(
                    "NIF",
                    f"`{name}` median ≤ {fmt(r['target_ns'] / 1000, 1)} µs per call",
                    f"{fmt(med, 3)} µs ({ratio(rel)} a GenServer.call round trip of {fmt(gs / 1000, 3)} µs)",
                    r["target_met"][key],
                )
            )
        out += [
            "**Targets**\n",
            table(["target", "measured (same run)", "result"], trows, "llr"),
            "Reference figures: none for this bench; the `GenServer.call` row is the comparison.\n",
        ]
        return "\n".join(out)

    # -- 2. Python batch

    def python_batch(self, r: dict[str, Any]) -> str:
        n = r["n"]
        t = r["targets"]
        runs_b = r["repeats"] * r["batch_reps"]
        rows = []
        for api, label in (("client", "SessionContext"), ("raw", "raw stub")):
            if api not in r:
                continue
            for op, what in (
                ("get", ("get_variables", "GetVariables", "GetVariable")),
                ("set", ("update_variables", "SetVariables", "SetVariable")),
            ):
                e = r[api][op]
                rpc = f"`{what[1]}` vs `{what[2]}`"
                rows.append(
                    [
                        label,
                        rpc,
                        fmt(e["batch_ms"]["median"], 3),
                        fmt(e["sequential_ms"]["median"], 2),
                        f"**{ratio(e['ratio'], 1)}**",
                        fmt(e["per_call_us"], 1),
                        fmt(e["batch_ms"]["min"], 3),
                    ]
                )
        if "ping" in r:
            p = r["ping"]
            rows.append(
                [
                    "raw stub",
                    f"`Ping` × {fmt(n)}",
                    "–",
                    fmt(p["sequential_ms"]["median"], 2),
                    "–",
                    fmt(p["per_call_us"], 1),
                    "–",
                ]
            )
        m = r["machine"]
        out = [
            f"Python → the standalone server over gRPC: one batch call of **{fmt(n)} float variables** vs {fmt(n)} "
            "sequential single calls, through the blocking `SessionContext` (what users call) and through the raw "
            "generated stub sending the same compact batch forms (`values_only` gets; sets as `value_identifiers` + "
            "one JSON array) (`bench/python_batch.py`).\n",
            f"Unit: **ms**. Runs: batch = median of **{fmt(runs_b)} calls** ({r['repeats']} repetitions × "
            f"{r['batch_reps']}); sequential = median of **{r['repeats']} passes of {fmt(n)} calls**; every write "
            f"carries a new value; Python GC {'on' if r['gc_enabled'] else 'off'} while timing. Client: Python "
            f"{m['python']}, grpcio {m['grpcio']}, protobuf {m['protobuf']} ({m['protobuf_implementation']}).\n",
            table(
                [
                    "API",
                    "RPCs",
                    "batch ms (1 call)",
                    f"sequential ms ({fmt(n)} calls)",
                    "ratio",
                    "µs per sequential call",
                    "batch min ms",
                ],
                rows,
                "llrrrrr",
            ),
            "ratio = sequential median / batch median, same run.\n",
        ]
        b = r.get("breakdown")
        if b:
            brow = []
            for op, what in (("get", "GetVariables"), ("set", "SetVariables")):
                e = b[op]
                brow.append(
                    [
                        f"`{what}` of {fmt(n)}",
                        fmt(e["server_cpu_ms"], 3) if e.get("server_cpu_ms") is not None else "–",
                        fmt(e["bytes_call_ms"]["median"], 3),
                        fmt(e["build_request_ms"]["median"], 3) if "build_request_ms" in e else "–",
                        fmt(e["parse_response_ms"]["median"], 3),
                        fmt(r["client"][op]["overhead_vs_raw_ms"], 3),
                        fmt(e["map_form_call_ms"]["median"], 3) if "map_form_call_ms" in e else "–",
                    ]
                )
            out += [
                f"Where one batch call's time goes, in the compact form SessionContext and the raw stub send (ms, medians "
                f"of {fmt(b['get']['bytes_call_ms']['runs'])} calls each); the last column is the RPC in the published map "
                "form existing clients send (a `Variable` / an `Any` per value):\n",
                table(
                    [
                        "call",
                        "server CPU",
                        "RPC, bytes in/out",
                        "build request",
                        "parse response",
                        "SessionContext on top of raw",
                        "map form RPC, bytes in/out",
                    ],
                    brow,
                ),
            ]
        trows = []
        for op, what in (("get", "GetVariables"), ("set", "SetVariables")):
            e = r["client"][op]
            trows.append(
                self.target(
                    "Python batch",
                    f"`{what}` of {fmt(n)} ≤ {t['batch_max_ms']} ms",
                    f"{fmt(e['batch_ms']['median'], 3)} ms (median of {fmt(runs_b)})",
                    e["target_met"]["batch_ms"],
                )
            )
            trows.append(
                self.target(
                    "Python batch",
                    f"`{what}` ≥ {fmt(t['ratio_min'], 0)}× faster than {fmt(n)} sequential calls",
                    f"{ratio(e['ratio'], 1)} ({fmt(e['sequential_ms']['median'], 2)} ms / {fmt(e['batch_ms']['median'], 3)} ms)",
                    e["target_met"]["ratio"],
                )
            )
        out += [
            "**Targets**, for the SessionContext figures\n",
            table(["target", "measured (same run)", "result"], trows, "llr"),
        ]
        get = r["client"]["get"]["batch_ms"]["median"]
        comparable = "" if n == 1000 else f" (this run read {fmt(n)} variables, not 1,000: not comparable)"
        refs = [[name, fmt(ms, 1), ratio(ms / get, 1)] for name, ms in BATCH_REFERENCES_MS]
        refs.append([f"this bridge: `GetVariables` of {fmt(n)} via SessionContext", fmt(get, 3), "1.0×"])
        out += [
            f"**Reference figures**: batch reads of 1,000 keys from Python clients on this 2-core machine "
            f"class{comparable}.\n",
            table(["system", "ms", "its time / this bridge's"], refs),
        ]
        return "\n".join(out)

    # -- 3. Push latency

    def push_latency(self, r: dict[str, Any]) -> str:
        res = r["results"]
        g = r["write_gap_ms"]
        rows = []
        for mode in r["modes"]:
            e = res[mode]
            lat = e["latency_us"]
            rows.append(
                [
                    e["label"],
                    f"{fmt(lat['count'])} ({fmt(e['received'])} one by one)",
                    fmt(lat["p50"]),
                    fmt(lat["p90"]),
                    fmt(lat["p99"]),
                    fmt(lat["p999"]),
                    fmt(lat["max"]),
                    f"{fmt(e['ping_us']['p50'])} (n={fmt(e['ping_us']['count'])})",
                    f"**{ratio(e['p50_over_ping'])}**",
                ]
            )
        out = [
            "Elixir `SessionStore.update_variable/3` → a receiver process's watch stream, one hop over loopback, "
            "next to a unary gRPC `Ping` round trip (two hops) on the receiver's same channel "
            "(`bench/push_latency.exs`). Latency = the receiver's CLOCK_REALTIME on receipt − the writer's "
            "CLOCK_REALTIME read just before the write.\n",
            f"Unit: **µs**. Runs: per receiver mode **{fmt(r['updates'])} timed updates** (+{fmt(r['warmup'])} warm-up) "
            f"paced {r['interval_ms']} ms apart (actual gap between writes: median {fmt(g.get('p50'), 2)} ms, p99 "
            f"{fmt(g.get('p99'), 2)} ms); **{fmt(r['pings'])} Pings per receiver process** (half before, half after "
            "each phase). An update coalesced into a later one counts with the time the later one arrived. Receivers: "
            + "; ".join(f"{k}: {v}" for k, v in sorted(r["receivers"].items()))
            + ".\n",
            table(
                ["receiver", "samples", "p50", "p90", "p99", "p99.9", "max", "Ping p50 (runs)", "p50 / Ping p50"],
                rows,
                "lrrrrrrrr",
            ),
        ]
        if all(m in res for m in ("client", "raw", "rust")):
            rust, raw, client = (res[m]["latency_us"]["p50"] for m in ("rust", "raw", "client"))
            out.append(
                f"Where a push's time goes (p50, same run): server + loopback + a tonic client {fmt(rust)} µs; grpcio's "
                f"asyncio receive path adds {fmt(raw - rust)} µs (raw stub {fmt(raw)} µs); the SessionContext iterator "
                f"adds {fmt(client - raw)} µs ({fmt(client)} µs).\n"
            )
        t = r["targets"]
        c = res.get("client")
        trows = []
        if c:
            lat = c["latency_us"]
            trows = [
                self.target(
                    "Push latency",
                    f"p50 ≤ {fmt(t['p50_us'], 0)} µs",
                    f"{fmt(lat['p50'])} µs ({fmt(lat['count'])} samples)",
                    c["target_met"]["p50"],
                ),
                self.target(
                    "Push latency",
                    f"p99 ≤ {fmt(t['p99_us'], 0)} µs",
                    f"{fmt(lat['p99'])} µs (p99.9 {fmt(lat['p999'])} µs)",
                    c["target_met"]["p99"],
                ),
                self.target(
                    "Push latency",
                    f"p50 ≤ {fmt(t['p50_over_ping'], 1)} × the Ping round trip",
                    f"{ratio(c['p50_over_ping'])} (Ping p50 {fmt(c['ping_us']['p50'])} µs)",
                    c["target_met"]["p50_over_ping"],
                ),
            ]
        out += [
            "**Targets**, for the user-facing row (SessionContext)\n",
            table(["target", "measured (same run)", "result"], trows, "llr"),
        ]
        if c:
            lat = c["latency_us"]
            refs = [
                [
                    x["name"],
                    fmt(x["p50_us"]),
                    fmt(x["p99_us"]),
                    ratio(x["p50_us"] / lat["p50"], 1),
                    ratio(x["p99_us"] / lat["p99"], 1),
                ]
                for x in r["references"]
            ]
            refs.append(
                ["this bridge: SessionContext.watch_variables", fmt(lat["p50"]), fmt(lat["p99"]), "1.0×", "1.0×"]
            )
            out += [
                "**Reference figures**: the same workload (2,000 updates 1 ms apart, Python asyncio receiver) "
                "on this 2-core machine class.\n",
                table(["system", "p50 µs", "p99 µs", "its p50 / this bridge's", "its p99 / this bridge's"], refs),
            ]
        out.append("The distribution is panel (a) of the plot.\n")
        return "\n".join(out)

    # -- 4. Writer cost

    def writer_cost(self, r: dict[str, Any]) -> str:
        res = r["results"]
        rows = []
        for key in r["rows"]:
            s = res[key]
            rows.append(
                [
                    s["label"],
                    fmt(s["median_ns"] / 1000, 3),
                    fmt(s["p99_ns"] / 1000, 3),
                    fmt(s["min_ns"] / 1000, 3),
                    f"**{ratio(s['ratio_vs_none'])}**",
                    ratio(s["min_ratio_vs_none"]),
                    "–" if s["kind"] == "none" else fmt(s["drain_ms"]["p50"], 2),
                    "–"
                    if s["messages_per_watcher"] is None
                    else f"{fmt(round(s['messages_per_watcher']))} of {fmt(s['writes'])}",
                ]
            )
        elixir = [fmt(res[k]["watchers"]) for k in r["rows"] if res[k]["kind"] in ("none", "elixir")]
        grpc = [res[k]["label"] for k in r["rows"] if res[k]["kind"] == "grpc"]
        out = [
            f"NIF `SessionStore.update_variable/3` per call on a variable with {', '.join(elixir)} Elixir watcher "
            "processes"
            + (f", and with {' and '.join(grpc)} (held by `watch_load hold`)" if grpc else "")
            + "; each row has its own session (`bench/writer_cost.exs`).\n",
            f"Unit: **µs per call**. Runs: **{fmt(r['batches'])} timed batches of {fmt(r['batch_size'])} calls per row** "
            f"({fmt(r['batches'] * r['batch_size'])} calls each; {plural(r['warmup_batches'], 'warm-up round')} discarded), "
            "rows interleaved round by round in a rotating order; after each batch the bench waits until every "
            "watcher has the round's end marker (“drain”), so one row's delivery never overlaps another row's batch.\n",
            table(
                [
                    "watchers on the variable",
                    "median µs",
                    "p99 µs",
                    "min µs",
                    "vs none",
                    "min vs none",
                    "drain p50 ms",
                    "msgs / watcher",
                ],
                rows,
            ),
            "“vs none” = the row's median / the no-watcher median, same run (the target's measure); “min vs none” = "
            "the same for each row's fastest batch (steadier on a shared machine); msgs / watcher = messages each "
            "watcher received of the writes made: fewer means coalesced.\n",
        ]
        base = res["none"]["median_ns"] / 1000
        trows = []
        for key, met in sorted(r["target_met"].items()):
            s = res[key]
            trows.append(
                self.target(
                    "Writer cost",
                    f"{s['label']}: median ≤ {fmt(r['target_ratio'], 0)}× the no-watcher median",
                    f"{fmt(s['median_ns'] / 1000, 3)} µs = {ratio(s['ratio_vs_none'])} of {fmt(base, 3)} µs",
                    met,
                )
            )
        out += [
            "**Targets**, judged on the row with the most watchers of each kind\n",
            table(["target", "measured (same run)", "result"], trows, "llr"),
            "Reference figures: none for this bench. The curve is panel (b) of the plot.\n",
        ]
        return "\n".join(out)

    # -- 5. Fan-out

    def fan_out(self, r: dict[str, Any]) -> str:
        cols = ["p50", "p90", "p99", "max", "min"]
        named = [
            ("**LAST** watcher has it", "last_watcher_ms"),
            ("median watcher has it", "median_watcher_ms"),
            ("first watcher has it", "first_watcher_ms"),
            ("every (watcher, update) pair", "every_delivery_ms"),
            ("writer's `SetVariable` round trip", "write_rpc_ms"),
            ("actual gap between writes", "write_gap_ms"),
        ]
        rows = [[label, fmt(r[k]["count"]), *(fmt(r[k].get(c), 3) for c in cols)] for label, k in named]
        out = [
            f"**{fmt(r['watchers'])} watcher streams, each on its own HTTP/2 connection**, watch one integer variable of "
            f"the standalone server; a writer client on another connection makes {fmt(r['updates'])} timed "
            f"`SetVariable` calls (+{fmt(r['warmup_updates'])} warm-up) {fmt(r['interval_ms'], 0)} ms apart. For each "
            "update k: the time from just before the writer's call until the last watcher has k (a watcher has k when "
            "it received a value ≥ k) (`target/release/watch_load fan-out`).\n",
            f"Unit: **ms**. Runs: **{fmt(r['updates'])} updates × {fmt(r['watchers'])} watchers** "
            f"({fmt(r['every_delivery_ms']['count'])} deliveries); {fmt(r['coalesced'])} (watcher, update) pairs "
            f"arrived coalesced into a later update; {fmt(r['messages'])} messages in all.\n",
            table(["per update", "runs", *cols], rows),
        ]
        last = r["last_watcher_ms"]
        trow = [
            self.target(
                "Fan-out",
                f"report p50 / p99 until the last of {fmt(r['watchers'])} watchers has an update",
                f"{fmt(last['p50'], 3)} / {fmt(last['p99'], 3)} ms ({fmt(last['count'])} updates)",
                None,
            )
        ]
        refs = [
            [
                x["name"],
                fmt(x["p50"], 1),
                fmt(x["p99"], 1),
                ratio(x["p50"] / last["p50"], 1),
                ratio(x["p99"] / last["p99"], 1),
            ]
            for x in r["reference_ms"]
        ]
        refs.append(["this bridge", fmt(last["p50"], 3), fmt(last["p99"], 3), "1.0×", "1.0×"])
        comparable = "" if r["watchers"] == 100 and r["updates"] == 200 else " (this run is smaller: not comparable)"
        out += [
            "**Target**: figures to report, no numeric bound\n",
            table(["target", "measured (same run)", "result"], trow, "llr"),
            f"**Reference figures**: the same workload (100 watcher connections, 200 updates 5 ms apart), "
            f"last watcher, on this 2-core machine class{comparable}.\n",
            table(["system", "p50 ms", "p99 ms", "its p50 / this bridge's", "its p99 / this bridge's"], refs),
        ]
        return "\n".join(out)

    # -- 6. Scale

    def scale(self, r: dict[str, Any]) -> str:
        m = r["memory"]
        n = r["streams"]
        mem_rows = [
            ["server VmRSS before opening the connections", fmt(m["rss_before_kib"] / 1024, 1) + " MiB"],
            [f"… with all {fmt(n)} streams live", fmt(m["rss_live_kib"] / 1024, 1) + " MiB"],
            ["… after the updates", fmt(m["rss_after_updates_kib"] / 1024, 1) + " MiB"],
            ["… after closing every stream (glibc keeps freed memory)", fmt(m["rss_closed_kib"] / 1024, 1) + " MiB"],
            [
                "**memory per idle stream** (live − before) / streams, connections included",
                f"**{fmt(m['bytes_per_stream'], 0)} bytes**",
            ],
            [
                "memory per stream once each has delivered updates",
                f"{fmt(m['bytes_per_stream_after_updates'], 0)} bytes",
            ],
        ]
        cols = ["p50", "p90", "p99", "max", "min"]
        named = [
            (f"**ALL {fmt(n)} streams** have it", "all_streams_ms"),
            ("median stream has it", "median_stream_ms"),
            ("first stream has it", "first_stream_ms"),
            ("writer's `SetVariable` round trip", "write_rpc_ms"),
        ]
        rows = [[label, fmt(r[k]["count"]), *(fmt(r[k].get(c), 3) for c in cols)] for label, k in named]
        cpu = r.get("server_cpu_ms_per_update")
        out = [
            f"**{fmt(n)} concurrent watch streams** ({fmt(r['connections'])} connections × "
            f"{fmt(r['streams_per_connection'])}) on one variable of a standalone server the client starts; "
            f"{fmt(r['updates'])} timed updates (+{fmt(r['warmup_updates'])} warm-up), each made once every stream "
            f"had the previous one, + {fmt(r['gap_ms'], 0)} ms (`target/release/watch_load scale`). The client runs on "
            "the same machine, so its reader tasks compete with the server for the CPU: an upper bound for the server alone.\n",
            "Memory (unit **MiB / bytes**; one reading of the server's VmRSS at each point, runs: 1):\n",
            table(["server memory", "value"], mem_rows, "lr"),
            f"Time from just before the writer's `SetVariable` until streams have the update (unit **ms**; runs: "
            f"**{fmt(r['updates'])} updates**, {fmt(r['every_delivery_ms']['count'])} deliveries):\n",
            table(["per update", "runs", *cols], rows),
        ]
        if cpu is not None:
            out.append(
                f"Server CPU per update (write + fan-out to {fmt(n)} streams, all threads): {fmt(cpu, 2)} ms "
                f"({fmt(cpu * 1000 / n, 2)} µs per stream). {fmt(r['coalesced'])} (stream, update) pairs coalesced; "
                f"{fmt(r['messages'])} messages in all.\n"
            )
        a = r["all_streams_ms"]
        trows = [
            self.target(
                "Scale",
                f"report server memory per idle stream ({fmt(n)} streams)",
                f"{fmt(m['bytes_per_stream'], 0)} bytes",
                None,
            ),
            self.target(
                "Scale",
                f"report p50, max from one update until all {fmt(n)} streams have it",
                f"{fmt(a['p50'], 2)} / {fmt(a['max'], 2)} ms ({fmt(a['count'])} updates)",
                None,
            ),
        ]
        out += [
            "**Targets**: figures to report, no numeric bound\n",
            table(["target", "measured (same run)", "result"], trows, "llr"),
            "Reference figures: none for this bench.\n",
        ]
        return "\n".join(out)

    # -- the whole report

    def machine_section(self, plotted: bool, plot_note: str) -> str:
        m = self.machine
        py = m.get("python") or {}
        mem = m.get("mem_total_kib")
        ls = m.get("load_average_start")
        rows = [
            ["cores", f"{m['logical_processors']} logical CPUs ({m['schedulers_online']} BEAM schedulers online)"],
            ["CPU model (/proc/cpuinfo)", m["cpu_model"]],
            ["memory", f"{fmt(mem / 1024 / 1024, 1)} GiB" if mem else "–"],
            ["kernel", m.get("kernel") or "–"],
            ["Erlang/OTP", f"{m['otp_release']} (erts {m['erts_version']}{', JIT' if m.get('jit') else ''})"],
            ["Elixir", m["elixir_version"]],
            [
                "Python",
                f"{py.get('version', '?')} (grpcio {py.get('grpcio', '?')}, protobuf {py.get('protobuf', '?')}), `{py.get('executable', '?')}`",
            ],
            ["Rust", m.get("rustc") or "–"],
            ["plotting", plot_note if plotted else f"plot skipped: {plot_note}"],
            [
                "load average at start",
                (f"{ls[0]:.2f} / {ls[1]:.2f} / {ls[2]:.2f} (1 / 5 / 15 min), before the first bench" if ls else "–"),
            ],
        ]
        out = "## Machine\n\n" + table(["", ""], rows, "ll")
        if ls and ls[0] >= 1.0:
            out += (
                f"\n**Note:** the 1-minute load average was {ls[0]:.2f} on {m['logical_processors']} cores when the run "
                "started: other work was running, and the figures may be slower than on an idle machine.\n"
            )
        return out

    def render(self, plot: str | None, plot_note: str) -> str:
        meta = self.meta
        git = meta.get("git") or {}
        commit = (
            f"commit `{git['commit']}`{' with local changes' if git.get('local_changes') else ''}"
            if git.get("commit")
            else "commit unknown"
        )
        size = (
            "**quick (tiny) configuration: the figures are for checking the report, not for reading**"
            if meta["quick"]
            else "full size"
        )
        sections = []
        for key, short, heading, module in SECTIONS:
            e = self.entry(key)
            body_fn: Callable[[dict[str, Any]], str] = getattr(self, key)
            if e.get("status") == "ok":
                try:
                    body = body_fn(e["result"]) + "\n" + bench_line(e) + "\n"
                except (KeyError, TypeError, ZeroDivisionError) as err:
                    body = f"**The figures could not be read** ({type(err).__name__}: {err}); see latest.json.\n"
                    self.summary.append([short, "–", "–", "**UNREADABLE**"])
            else:
                what = {"timed out": "**TIMED OUT**", "not run": "**NOT RUN**"}.get(e.get("status", ""), "**FAILED**")
                err = (e.get("error") or "").strip()
                body = f"{what}: no figures.\n\n```\n{err[-3000:]}\n```\n"
                if "elapsed_s" in e:
                    body += "\n" + bench_line(e) + "\n"
                self.summary.append([short, "–", "–", what])
            if module:
                config = ", ".join(f"{k}: {json.dumps(v)}" for k, v in sorted((e.get("config") or {}).items()))
                how = f"`{module}.run({config})` in the report's VM"
            else:
                how = f"`{e.get('command', '?')}`"
            sections.append(f"## {heading}\n\nRun as: {how}\n\n{body}")

        if plot:
            plots = f"![(a) push latency distribution, (b) writer cost vs watchers]({plot})\n"
        else:
            plots = f"**Plot skipped**: {plot_note}. The tables below are the complete report.\n"

        head = (
            "# Benchmark report\n\n"
            f"Written by `{meta['command']}` at {meta['started_at']} ({commit}); {size}; the whole run took "
            f"{fmt(meta['elapsed_s'], 0)} s. Every figure below comes from this one run; the raw figures (with every "
            "push latency sample) are written to `latest.json` next to this file (not committed). The reference figures "
            "(other systems on the same workload) were measured on the same 2-core machine class, not in this run.\n"
        )
        summary = "## Summary\n\n" + table(["bench", "target", "measured (same run)", "result"], self.summary, "lllr")
        plots_section = (
            "## Plots\n\n"
            "(a) The distribution (CDF, logit scale so the tail has room) of Elixir → Python push latencies per "
            "receiver, with p50 and p99 of the SessionContext row marked, the Ping round trip for comparison, the "
            "targets and the Redis / etcd reference points; (b) writer cost per `update_variable` call vs the number "
            "of watchers on the variable (median, fastest batch, p99 of the batch means) with the 2× target.\n\n"
            + plots
        )
        notes = (
            "## Notes\n\n"
            "- Each bench runs bounded in time; one that fails or times out is marked FAILED / TIMED OUT here and the "
            "others still run.\n"
            "- On the shared 2-core VMs this project runs on, absolute times move by up to ~1.7× between otherwise "
            "identical runs; the ratios measured in the same run move much less. A busy machine (see the load "
            "averages) moves every figure: rerun when it is idle.\n"
            "- How each bench measures is described in `bench/README.md`.\n"
        )
        return "\n".join(
            [head, self.machine_section(plot is not None, plot_note), summary, plots_section, *sections, notes]
        )


# --------------------------------------------------------------------------- the plot


def plot(data: dict[str, Any], png: Path) -> tuple[str | None, str]:
    """Draws the two panels into ``png``; returns (file name, "matplotlib VERSION") or (None, why it was skipped)."""
    benches = data["benches"]
    push = (
        benches.get("push_latency", {}).get("result") if benches.get("push_latency", {}).get("status") == "ok" else None
    )
    writer = (
        benches.get("writer_cost", {}).get("result") if benches.get("writer_cost", {}).get("status") == "ok" else None
    )
    if push is None and writer is None:
        return None, "neither the push-latency nor the writer-cost bench produced figures"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 - any import failure means: no plot, tables only
        return None, f"matplotlib could not be imported ({type(e).__name__}: {e})"
    try:
        fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(14, 5.4), gridspec_kw={"width_ratios": [1.25, 1]})
        _panel_push(ax_a, push)
        _panel_writer(ax_b, writer)
        m = data["machine"]
        fig.suptitle(
            f"Snakepit bridge benchmarks — {m['cpu_model']}, {m['logical_processors']} logical CPUs — "
            f"{data['report']['started_at']}{' (QUICK run)' if data['report']['quick'] else ''}",
            fontsize=10,
        )
        fig.tight_layout()
        tmp = png.with_suffix(".png.tmp")
        fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        os.replace(tmp, png)
    except Exception as e:  # noqa: BLE001 - a plotting failure must not cost the report
        return None, f"plotting failed ({type(e).__name__}: {e})"
    return png.name, f"matplotlib {matplotlib.__version__}"


def _panel_push(ax: Any, r: dict[str, Any] | None) -> None:
    """CDF per receiver on a logit y axis (so p90, p99, p99.9 get room), log x."""
    if r is None:
        ax.text(0.5, 0.5, "push-latency bench: no figures", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    styles = {"client": ("C0", 2.2), "raw": ("C1", 1.1), "rust": ("C2", 1.1)}
    res = r["results"]
    lowest = 1.0
    for mode in r["modes"]:
        e = res[mode]
        xs = sorted(e["samples_us"])
        if not xs:
            continue
        # Hazen plotting positions: strictly inside (0, 1), as the logit scale needs.
        ys = [(i + 0.5) / len(xs) for i in range(len(xs))]
        lowest = min(lowest, ys[0])
        color, width = styles.get(mode, ("C3", 1.0))
        ax.step(xs, ys, where="post", color=color, linewidth=width, label=f"{e['label']} (n={len(xs):,})")
    c = res.get("client")
    if c:
        lat = c["latency_us"]
        for q, y in (("p50", 0.5), ("p99", 0.99)):
            ax.plot([lat[q]], [y], "o", color="C0", zorder=5)
            ax.annotate(
                f"{q} {lat[q]:.0f} µs", (lat[q], y), textcoords="offset points", xytext=(8, -12), fontsize=9, color="C0"
            )
        ping = c["ping_us"]["p50"]
        ax.axvline(
            ping, color="0.3", linestyle="--", linewidth=1.2, label=f"Ping round trip p50, same channel ({ping:.0f} µs)"
        )
        t = r["targets"]
        ax.plot(
            [t["p50_us"], t["p99_us"]],
            [0.5, 0.99],
            "+",
            color="0.4",
            markersize=12,
            mew=2,
            label="targets: p50 ≤ 200, p99 ≤ 450 µs",
        )
    for ref, marker, color in zip(r["references"], ("s", "D"), ("C3", "C4"), strict=False):
        ax.plot(
            [ref["p50_us"], ref["p99_us"]],
            [0.5, 0.99],
            marker,
            mfc="none",
            color=color,
            label=f"{ref['name']}: p50, p99 (reference)",
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("logit")
    # Room for p99 (marks, targets, references) even when there are few samples.
    edge = min(lowest * 0.8, 0.004)
    ticks = [q for q in (0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999) if edge < q < 1 - edge]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v * 100:g}%"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylim(edge, 1 - edge)
    ax.set_xlabel("latency, µs (log scale): Elixir write → Python receipt")
    ax.set_ylabel("updates received within x (logit scale)")
    ax.set_title(
        f"(a) Push latency CDF, {r['updates']:,} updates {r['interval_ms']} ms apart per receiver", fontsize=11
    )
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")


def _panel_writer(ax: Any, r: dict[str, Any] | None) -> None:
    """Median µs per call vs watchers, with the fastest batch and the p99 of batch means, log y."""
    if r is None:
        ax.text(0.5, 0.5, "writer-cost bench: no figures", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    from matplotlib.ticker import FuncFormatter

    res = r["results"]
    rows = [res[k] for k in r["rows"]]
    counts = sorted({s["watchers"] for s in rows})
    pos = {n: i for i, n in enumerate(counts)}
    for kind, color, marker, label, offset, text_at in (
        ("elixir", "C0", "o", "Elixir watcher processes", 0.0, (-10, 8)),
        ("grpc", "C1", "s", "gRPC watch streams", 0.12, (8, -4)),
    ):
        pts = sorted(
            (s for s in rows if s["kind"] == kind or (kind == "elixir" and s["kind"] == "none")),
            key=lambda s: s["watchers"],
        )
        if not pts:
            continue
        xs = [pos[s["watchers"]] + (offset if s["kind"] != "none" else 0) for s in pts]
        med = [s["median_ns"] / 1000 for s in pts]
        style = "-" if kind == "elixir" else ""
        ax.plot(xs, med, marker + style, color=color, markersize=7, label=f"{label}: median")
        ax.plot(
            xs, [s["p99_ns"] / 1000 for s in pts], "^" + (":" if style else ""), color=color, alpha=0.45, markersize=5
        )
        ax.plot(
            xs, [s["min_ns"] / 1000 for s in pts], "v" + (":" if style else ""), color=color, alpha=0.45, markersize=5
        )
        for x, m, s in zip(xs, med, pts, strict=False):
            ax.annotate(
                f"{s['ratio_vs_none']:.2f}×",
                (x, m),
                textcoords="offset points",
                xytext=text_at,
                fontsize=8.5,
                color=color,
                ha="right" if text_at[0] < 0 else "left",
            )
    ax.plot([], [], "^", color="0.5", alpha=0.6, label="▲ p99 of the batch means, ▼ fastest batch")
    base = res["none"]["median_ns"] / 1000
    ax.axhline(
        base * r["target_ratio"],
        color="C3",
        linestyle="--",
        linewidth=1,
        label=f"target: {r['target_ratio']:.0f}× the no-watcher median",
    )
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: f"{v:g}" if str(f"{v:g}")[0] in "25" else ""))
    ax.set_xticks(range(len(counts)), [f"{n:,}" for n in counts])
    ax.set_xlim(-0.4, len(counts) - 0.4)
    ax.set_xlabel("watchers on the variable (labels: median / the no-watcher median)")
    ax.set_ylabel("µs per update_variable call (log scale)")
    ax.set_title(f"(b) Writer cost, {r['batches']:,} batches × {r['batch_size']:,} calls per row", fontsize=11)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path, help="the figures, e.g. bench/results/latest.json")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot (as when matplotlib is missing)")
    args = parser.parse_args(argv)

    data = json.loads(args.json.read_text())
    md = args.json.with_suffix(".md")
    png = args.json.with_suffix(".png")
    if args.no_plot:
        name, note = None, "--no-plot was given"
    else:
        name, note = plot(data, png)
    if name is None and png.exists():
        png.unlink()  # a stale plot from an earlier run would not match these tables
    report = Report(data)
    text = report.render(name, note)
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, md)

    print(f"[report] wrote {md}")
    print(f"[report] wrote {png} ({note})" if name else f"[report] plot skipped: {note}")
    print()
    print(table(["bench", "target", "measured (same run)", "result"], report.summary, "lllr"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
