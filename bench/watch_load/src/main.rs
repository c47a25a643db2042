//! `watch_load`: the Rust load client of the watch benchmarks. See `bench/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;
use watch_load::{fan_out, hold, receive, scale, stderr_progress, FanOutConfig, ScaleConfig};

const USAGE: &str = "\
watch_load: load client for the WatchVariables benchmarks of the Snakepit bridge

USAGE:
    watch_load fan-out [--quick] [--json] [--address HOST:PORT] [--server-bin PATH]
                       [--watchers N] [--updates N] [--interval-ms MS] [--warmup N]
    watch_load scale   [--quick] [--json] [--server-bin PATH]
                       [--streams N] [--connections N] [--updates N] [--gap-ms MS] [--warmup N]
    watch_load hold    --address HOST:PORT --session ID --variable NAME [--connections N] [--streams N]
    watch_load receive --address HOST:PORT --session ID --variable NAME [--pings N] [--warmup-pings N]

fan-out  100 watcher streams, each on its own connection; 200 updates 5 ms apart from a
         writer client; per update, the time until the LAST watcher has it (p50, p99).
scale    10,000 concurrent streams (100 connections x 100) against a standalone server it
         starts: server VmRSS per idle stream, and the time from one update until all
         10,000 streams have it (p50, max over 20 updates).
         --quick: fan-out 10 watchers x 10 updates; scale 200 streams (4 x 50) x 5 updates.
hold     keeps watch streams open for bench/writer_cost.exs (line protocol on stdout).
receive  the Rust receiver of bench/push_latency.exs (line protocol on stdout).

Without --address, fan-out starts target/release/snakepit-bridge-server (next to this
binary, or $SNAKEPIT_SERVER_BIN, or --server-bin) on 127.0.0.1:0 and stops it at the end.
--json prints the result as JSON on stdout instead of the table. Progress goes to stderr.
";

struct Opts {
    mode: String,
    quick: bool,
    json: bool,
    values: Vec<(String, String)>,
}

impl Opts {
    fn get(&self, name: &str) -> Option<&str> {
        self.values.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.get(name)
            .map(|v| v.parse::<u64>().map_err(|_| format!("--{name} takes a whole number, got {v:?}")))
            .transpose()
    }

    fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name).ok_or_else(|| format!("{} needs --{name}", self.mode))
    }
}

fn parse(args: &[String]) -> Result<Option<Opts>, String> {
    let Some(mode) = args.first() else {
        return Err("no mode given".into());
    };
    if mode == "-h" || mode == "--help" {
        return Ok(None);
    }
    if !["fan-out", "scale", "hold", "receive"].contains(&mode.as_str()) {
        return Err(format!("unknown mode {mode:?}"));
    }
    let mut opts = Opts { mode: mode.clone(), quick: false, json: false, values: Vec::new() };
    let known = [
        "address",
        "server-bin",
        "watchers",
        "updates",
        "interval-ms",
        "warmup",
        "streams",
        "connections",
        "gap-ms",
        "session",
        "variable",
        "pings",
        "warmup-pings",
    ];
    let mut it = args[1..].iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--quick" => opts.quick = true,
            "--json" => opts.json = true,
            f if f.starts_with("--") && known.contains(&&f[2..]) => {
                let v = it.next().ok_or_else(|| format!("{f} needs a value"))?;
                opts.values.push((f[2..].to_string(), v.clone()));
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(Some(opts))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse(&args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("watch_load: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match runtime.block_on(run(&opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("watch_load {}: {e}", opts.mode);
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: &Opts) -> Result<(), watch_load::Error> {
    let server_bin = opts.get("server-bin").map(PathBuf::from);
    let result = match opts.mode.as_str() {
        "fan-out" => {
            let mut cfg = if opts.quick { FanOutConfig::quick() } else { FanOutConfig::full() };
            if let Some(n) = opts.number("watchers")? {
                cfg.watchers = n as usize;
            }
            if let Some(n) = opts.number("updates")? {
                cfg.updates = n as usize;
            }
            if let Some(n) = opts.number("interval-ms")? {
                cfg.interval = Duration::from_millis(n);
            }
            if let Some(n) = opts.number("warmup")? {
                cfg.warmup = n as usize;
            }
            if cfg.watchers == 0 || cfg.updates == 0 {
                return Err("--watchers and --updates must be at least 1".into());
            }
            fan_out(opts.get("address"), server_bin.as_deref(), &cfg, stderr_progress()).await?
        }
        "scale" => {
            let mut cfg = if opts.quick { ScaleConfig::quick() } else { ScaleConfig::full() };
            if let Some(n) = opts.number("streams")? {
                cfg.streams = n as usize;
            }
            if let Some(n) = opts.number("connections")? {
                cfg.connections = n as usize;
            }
            if let Some(n) = opts.number("updates")? {
                cfg.updates = n as usize;
            }
            if let Some(n) = opts.number("gap-ms")? {
                cfg.gap = Duration::from_millis(n);
            }
            if let Some(n) = opts.number("warmup")? {
                cfg.warmup = n as usize;
            }
            if cfg.streams == 0 || cfg.updates == 0 {
                return Err("--streams and --updates must be at least 1".into());
            }
            scale(server_bin.as_deref(), &cfg, stderr_progress()).await?
        }
        "hold" => {
            let streams = opts.number("streams")?.unwrap_or(1) as usize;
            let connections = opts.number("connections")?.unwrap_or(1) as usize;
            hold(
                opts.required("address")?,
                opts.required("session")?,
                opts.required("variable")?,
                connections,
                streams,
            )
            .await?;
            return Ok(());
        }
        "receive" => {
            let pings = opts.number("pings")?.unwrap_or(2000) as usize;
            let warmup = opts.number("warmup-pings")?.unwrap_or(100) as usize;
            receive(opts.required("address")?, opts.required("session")?, opts.required("variable")?, pings, warmup)
                .await?;
            return Ok(());
        }
        _ => unreachable!("parse accepts only known modes"),
    };
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        print!("{}", format(&result));
    }
    Ok(())
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64().unwrap_or(f64::NAN)
}

fn machine_line(r: &Value) -> String {
    let m = &r["machine"];
    format!(
        "machine: {}, {} logical CPUs, load average {}, open-files limit {}\n",
        m["cpu_model"].as_str().unwrap_or("unknown"),
        m["logical_processors"],
        m["load_average"],
        m["open_files_limit"]
    )
}

fn row(label: &str, s: &Value, cols: &[&str]) -> String {
    let mut line = format!("{label:<34}");
    for c in cols {
        line.push_str(&format!("{:>10.3}", f(s, &[c])));
    }
    line + "\n"
}

/// The result as the table the CLI prints.
pub fn format(r: &Value) -> String {
    let mut out = String::new();
    match r["mode"].as_str() {
        Some("fan-out") => {
            out += &format!(
                "Fan-out: {} watcher streams, each on its own connection; {} timed updates {} ms apart \
                 (+{} warm-up) from a writer client; server {}{}\n",
                r["watchers"],
                r["updates"],
                f(r, &["interval_ms"]),
                r["warmup_updates"],
                r["address"].as_str().unwrap_or("?"),
                if r["server_started"].as_bool() == Some(true) { " (standalone, started by watch_load)" } else { "" }
            );
            out += &machine_line(r);
            out += "latency from just before the writer's SetVariable until a watcher has the update, ms\n\n";
            out += &format!("{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}\n", "per update", "p50", "p90", "p99", "max", "min");
            out += &format!("{}\n", "-".repeat(84));
            let cols = ["p50", "p90", "p99", "max", "min"];
            out += &row("LAST watcher has it", &r["last_watcher_ms"], &cols);
            out += &row("median watcher has it", &r["median_watcher_ms"], &cols);
            out += &row("first watcher has it", &r["first_watcher_ms"], &cols);
            out += &row("every (watcher, update) pair", &r["every_delivery_ms"], &cols);
            out += &row("writer's SetVariable round trip", &r["write_rpc_ms"], &cols);
            out += &row("actual gap between writes", &r["write_gap_ms"], &cols);
            out += &format!(
                "\n{} (watcher, update) pairs arrived coalesced into a later update; {} messages in all\n",
                r["coalesced"], r["messages"]
            );
            out += "reference (same workload, this machine class), last watcher p50 / p99:\n";
            for reference in r["reference_ms"].as_array().into_iter().flatten() {
                out += &format!(
                    "  {:<34} {:>6.1} / {:>6.1} ms\n",
                    reference["name"].as_str().unwrap_or("?"),
                    f(reference, &["p50"]),
                    f(reference, &["p99"])
                );
            }
            out += &format!(
                "  {:<34} {:>6.1} / {:>6.1} ms  (p50 {:.1}x and p99 {:.1}x faster than Redis pub/sub)\n",
                "this bridge",
                f(r, &["last_watcher_ms", "p50"]),
                f(r, &["last_watcher_ms", "p99"]),
                3.9 / f(r, &["last_watcher_ms", "p50"]),
                35.0 / f(r, &["last_watcher_ms", "p99"])
            );
        }
        Some("scale") => {
            let m = &r["memory"];
            out += &format!(
                "Scale: {} concurrent watch streams ({} connections x {}) on one variable of a standalone server; \
                 {} timed updates (+{} warm-up), each after all streams had the previous one + {} ms\n",
                r["streams"],
                r["connections"],
                r["streams_per_connection"],
                r["updates"],
                r["warmup_updates"],
                f(r, &["gap_ms"])
            );
            out += &machine_line(r);
            out += &format!(
                "\nserver memory (VmRSS): {:.1} MiB before opening, {:.1} MiB with all streams live, \
                 {:.1} MiB after the updates, {:.1} MiB after closing them\n",
                f(m, &["rss_before_kib"]) / 1024.0,
                f(m, &["rss_live_kib"]) / 1024.0,
                f(m, &["rss_after_updates_kib"]) / 1024.0,
                f(m, &["rss_closed_kib"]) / 1024.0
            );
            out += &format!(
                "memory per idle stream: {:.0} bytes ({:.0} bytes once each stream has delivered updates)\n",
                f(m, &["bytes_per_stream"]),
                f(m, &["bytes_per_stream_after_updates"])
            );
            out += &format!(
                "opening: {} connections in {:.0} ms, {} streams in {:.0} ms (all registered after {:.0} ms)\n\n",
                r["connections"],
                f(r, &["open", "connect_ms"]),
                r["streams"],
                f(r, &["open", "open_streams_ms"]),
                f(r, &["open", "all_registered_ms"])
            );
            out += "time from just before the writer's SetVariable until streams have the update, ms\n";
            out += &format!("{:<34}{:>10}{:>10}{:>10}{:>10}{:>10}\n", "per update", "p50", "p90", "p99", "max", "min");
            out += &format!("{}\n", "-".repeat(84));
            let cols = ["p50", "p90", "p99", "max", "min"];
            out += &row(&format!("ALL {} streams have it", r["streams"]), &r["all_streams_ms"], &cols);
            out += &row("median stream has it", &r["median_stream_ms"], &cols);
            out += &row("first stream has it", &r["first_stream_ms"], &cols);
            out += &row("writer's SetVariable round trip", &r["write_rpc_ms"], &cols);
            let cpu = f(r, &["server_cpu_ms_per_update"]);
            if cpu.is_finite() {
                out += &format!(
                    "\nserver CPU per update (write + fan-out to {} streams, all threads): {:.2} ms ({:.2} µs per stream)\n",
                    r["streams"],
                    cpu,
                    cpu * 1000.0 / f(r, &["streams"])
                );
            }
            out += &format!(
                "{} (stream, update) pairs arrived coalesced; {} messages in all\n",
                r["coalesced"], r["messages"]
            );
        }
        _ => out += &format!("{r}\n"),
    }
    out += &format!("whole run {:.1} s\n", f(r, &["elapsed_s"]));
    out
}
