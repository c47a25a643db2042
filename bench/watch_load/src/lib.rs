//! A Rust load client for the WatchVariables benchmarks.
//!
//! Everything here talks to a bridge server over gRPC with the client that
//! `snakepit_core` generates from the proto, like any other client would.
//!
//! - [`fan_out`]: W watcher streams, each on its own connection; a writer
//!   client makes U updates at a fixed interval; for each update k, the time
//!   from just before the writer's `SetVariable` until the *last* watcher has
//!   update k.
//! - [`scale`]: N concurrent streams over C connections against a standalone
//!   server this client starts itself; the server's memory per idle stream
//!   (VmRSS before opening and with all streams live) and the time from one
//!   update until all N streams have it.
//! - [`hold`]: holds gRPC watch streams on a variable for another benchmark
//!   (`bench/writer_cost.exs`) and reports on stdout when every stream has
//!   seen a round's end marker.
//! - [`receive`]: the push-latency receiver (`bench/push_latency.exs`), in
//!   Rust: the floor that a receiver without Python's costs sees.
//!
//! "Has update k" means: received a message with value ≥ k. A stream that
//! falls behind gets intermediate changes coalesced into the latest one (the
//! bridge's guarantee), and then it has every earlier update too; such
//! (stream, update) pairs are counted as `coalesced`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use snakepit_core::proto::bridge_service_client::BridgeServiceClient;
use snakepit_core::proto::{
    CleanupSessionRequest, GetSessionRequest, InitializeSessionRequest, PingRequest, RegisterVariableRequest,
    SetVariableRequest, VariableUpdate, WatchVariablesRequest,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// The generated gRPC client on one HTTP/2 connection.
pub type Client = BridgeServiceClient<Channel>;
/// Errors are reported, not handled: any failure ends the run with a message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// How an integer travels in the bridge's `Any` (JSON text).
pub const INTEGER_URL: &str = "type.googleapis.com/snakepit.integer";

/// Where a polled condition gives up (never a timing claim: a hung run fails).
pub const POLL_DEADLINE: Duration = Duration::from_secs(60);

/// Progress lines go through this (stderr in the CLI, nothing in tests).
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// A progress sink that prints `[watch_load] line` on stderr.
pub fn stderr_progress() -> Progress {
    Arc::new(|line: &str| eprintln!("[watch_load] {line}"))
}

/// A progress sink that drops everything.
pub fn no_progress() -> Progress {
    Arc::new(|_: &str| {})
}

// ---------------------------------------------------------------- gRPC helpers

/// Opens one HTTP/2 connection to `addr` (`host:port`).
pub async fn connect(addr: &str) -> Result<Client> {
    let endpoint =
        Endpoint::from_shared(format!("http://{addr}"))?.tcp_nodelay(true).connect_timeout(Duration::from_secs(10));
    let channel = endpoint.connect().await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(BridgeServiceClient::new(channel))
}

/// An integer as the bridge's `Any`.
pub fn integer_any(value: i64) -> prost_types::Any {
    prost_types::Any { type_url: INTEGER_URL.to_string(), value: value.to_string().into_bytes() }
}

/// The integer value a `value_change` or `initial_value` update carries.
pub fn integer_of(update: &VariableUpdate) -> Option<i64> {
    let any = update.variable.as_ref()?.value.as_ref()?;
    std::str::from_utf8(&any.value).ok()?.trim().parse().ok()
}

/// A session id no other run uses.
pub fn unique_session_id(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

pub async fn create_session(client: &mut Client, session_id: &str) -> Result<()> {
    let r = client
        .initialize_session(InitializeSessionRequest { session_id: session_id.to_string(), ..Default::default() })
        .await?
        .into_inner();
    if !r.success {
        return Err(format!("InitializeSession({session_id}) failed: {}", r.error_message).into());
    }
    Ok(())
}

pub async fn register_integer(client: &mut Client, session_id: &str, name: &str, value: i64) -> Result<()> {
    let r = client
        .register_variable(RegisterVariableRequest {
            session_id: session_id.to_string(),
            name: name.to_string(),
            r#type: "integer".to_string(),
            initial_value: Some(integer_any(value)),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !r.success {
        return Err(format!("RegisterVariable({name}) failed: {}", r.error_message).into());
    }
    Ok(())
}

/// Writes an integer; returns the new version.
pub async fn set_integer(client: &mut Client, session_id: &str, name: &str, value: i64) -> Result<i64> {
    let r = client
        .set_variable(SetVariableRequest {
            session_id: session_id.to_string(),
            variable_identifier: name.to_string(),
            value: Some(integer_any(value)),
            ..Default::default()
        })
        .await?
        .into_inner();
    if !r.success {
        return Err(format!("SetVariable({name}, {value}) failed: {}", r.error_message).into());
    }
    Ok(r.new_version)
}

pub async fn watcher_count(client: &mut Client, session_id: &str) -> Result<usize> {
    let r = client.get_session(GetSessionRequest { session_id: session_id.to_string() }).await?.into_inner();
    Ok(usize::try_from(r.watcher_count).unwrap_or(0))
}

/// Polls `GetSession` until the session's `watcher_count` is `expected`.
pub async fn wait_for_watchers(client: &mut Client, session_id: &str, expected: usize) -> Result<()> {
    let end = Instant::now() + POLL_DEADLINE;
    loop {
        let seen = watcher_count(client, session_id).await?;
        if seen == expected {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("watcher_count is {seen} after {POLL_DEADLINE:?}, expected {expected}").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn cleanup_session(client: &mut Client, session_id: &str) -> Result<()> {
    client.cleanup_session(CleanupSessionRequest { session_id: session_id.to_string(), force: true }).await?;
    Ok(())
}

/// Opens a watch on one variable, live updates only; returns once the server
/// has accepted it (response headers came).
pub async fn open_watch(client: &mut Client, session_id: &str, variable: &str) -> Result<Streaming<VariableUpdate>> {
    let request = WatchVariablesRequest {
        session_id: session_id.to_string(),
        variable_identifiers: vec![variable.to_string()],
        include_initial_values: false,
        ..Default::default()
    };
    Ok(client.watch_variables(request).await?.into_inner())
}

// ---------------------------------------------------------------- the server process

/// A standalone `snakepit-bridge-server` this client started; SIGTERM on drop.
pub struct ServerProcess {
    child: Child,
    /// `host:port` it listens on.
    pub address: String,
    pub pid: u32,
}

/// `explicit`, else `$SNAKEPIT_SERVER_BIN`, else `snakepit-bridge-server` next to
/// this executable (both are built into `target/release/`), else in
/// `<repo>/target/release/`.
pub fn server_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        candidates.push(p.to_path_buf());
    } else if let Some(p) = std::env::var_os("SNAKEPIT_SERVER_BIN") {
        candidates.push(PathBuf::from(p));
    } else {
        if let Ok(exe) = std::env::current_exe() {
            if let Some(dir) = exe.parent() {
                candidates.push(dir.join("snakepit-bridge-server"));
                // Integration tests run from target/<profile>/deps/.
                if let Some(up) = dir.parent() {
                    candidates.push(up.join("snakepit-bridge-server"));
                }
            }
        }
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        candidates.push(repo.join("target/release/snakepit-bridge-server"));
    }
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "snakepit-bridge-server not found (looked at {candidates:?}); build it with \
             `cargo build --release` or set SNAKEPIT_SERVER_BIN"
        )
        .into()
    })
}

impl ServerProcess {
    /// Starts `binary --listen 127.0.0.1:0 extra...` and waits (up to 20 s)
    /// for its `listening on HOST:PORT` line.
    pub fn start(binary: &Path, extra: &[&str]) -> Result<ServerProcess> {
        let mut child = Command::new(binary)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let first = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(Ok(line))) => line,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} printed no first line ({other:?})", binary.display()).into());
            }
        };
        let Some(address) = first.strip_prefix("listening on ").map(|a| a.trim().to_string()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{}: expected `listening on HOST:PORT`, got {first:?}", binary.display()).into());
        };
        let pid = child.id();
        Ok(ServerProcess { child, address, pid })
    }

    /// The server's resident memory now, in KiB (VmRSS).
    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid)
    }

    /// CPU time all the server's threads have used so far, in ns (None without schedstat).
    pub fn cpu_ns(&self) -> Option<u64> {
        process_cpu_ns(self.pid)
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL. Returns whether it stopped gracefully.
    pub fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// VmRSS of a process, KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status").into())
}

/// Sum of the first field of /proc/PID/task/*/schedstat: CPU ns of all threads.
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// The open-files limit (soft), from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ---------------------------------------------------------------- statistics

/// Linear interpolation between closest ranks (numpy's default); `sorted` ascending, non-empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of nothing");
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// p50, p90, p99, max, min, mean and count of `values` as JSON.
pub fn summary(values: &[f64]) -> Value {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return json!({ "count": 0 });
    }
    json!({
        "count": v.len(),
        "min": v[0],
        "p50": percentile(&v, 50.0),
        "p90": percentile(&v, 90.0),
        "p99": percentile(&v, 99.0),
        "max": v[v.len() - 1],
        "mean": v.iter().sum::<f64>() / v.len() as f64,
    })
}

/// The machine the figures come from.
pub fn machine() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()));
    json!({
        "logical_processors": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "cpu_model": cpu_model,
        "load_average": load_average,
        "open_files_limit": open_files_limit(),
    })
}

// ---------------------------------------------------------------- a fleet of watch streams

/// What the stream readers share: the clock, per-update completion counts.
struct Shared {
    base: Instant,
    /// Streams that have update k (index k; 0 unused).
    counts: Vec<AtomicUsize>,
    total: usize,
    notify: Notify,
    last_value: usize,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// What one stream saw: when it first had each update (ns since base; index k).
struct StreamLog {
    have_ns: Vec<u64>,
    /// Messages carrying a value (each brings one or more updates).
    messages: usize,
}

/// N streams on one variable, spread over connections, each read by its own task.
pub struct Fleet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<Result<StreamLog>>>,
    /// Keeps the connections open while the streams live.
    _clients: Vec<Client>,
    pub connections: usize,
    pub streams: usize,
    /// Time to open every connection and then every stream.
    pub connect_ms: f64,
    pub open_streams_ms: f64,
}

/// How the writer paces its updates.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// One update every `interval`, whatever the watchers do.
    Interval(Duration),
    /// The next update only once every stream has the previous one, plus `gap`.
    AfterAll { gap: Duration },
}

/// Figures of one load run (the per-update arrays are in ms).
pub struct LoadOutcome {
    pub warmup: usize,
    pub updates: usize,
    /// Per measured update: the latency of the first, median and last stream to have it.
    pub first_ms: Vec<f64>,
    pub median_ms: Vec<f64>,
    pub last_ms: Vec<f64>,
    /// Every (stream, update) latency, all measured updates.
    pub all_ms: Vec<f64>,
    /// (stream, measured update) pairs that arrived only inside a later value.
    pub coalesced: usize,
    /// Messages the streams received, in total (all updates, warm-up included).
    pub messages: usize,
    /// SetVariable round trips of the writer, ms.
    pub write_rpc_ms: Vec<f64>,
    /// Actual gaps between the writer's consecutive writes, ms.
    pub write_gap_ms: Vec<f64>,
}

impl Fleet {
    /// Opens `connections` connections and `per_connection` streams on each, all
    /// watching `variable` (live updates only); the streams end once they have
    /// update `last_value`.
    pub async fn open(
        addr: &str,
        session_id: &str,
        variable: &str,
        connections: usize,
        per_connection: usize,
        last_value: usize,
        progress: &Progress,
    ) -> Result<Fleet> {
        let total = connections * per_connection;
        let shared = Arc::new(Shared {
            base: Instant::now(),
            counts: (0..=last_value).map(|_| AtomicUsize::new(0)).collect(),
            total,
            notify: Notify::new(),
            last_value,
        });
        let t0 = Instant::now();
        let mut clients = Vec::with_capacity(connections);
        // Connect a few at a time (a listen backlog of 128 must not overflow).
        for chunk_start in (0..connections).step_by(32) {
            let chunk = chunk_start..(chunk_start + 32).min(connections);
            let mut pending = Vec::new();
            for _ in chunk {
                let addr = addr.to_string();
                pending.push(tokio::spawn(async move {
                    let mut c = connect(&addr).await?;
                    // A round trip makes sure the HTTP/2 connection is up.
                    c.ping(PingRequest { message: String::new() }).await?;
                    Ok::<Client, Error>(c)
                }));
            }
            for p in pending {
                clients.push(p.await??);
            }
        }
        let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
        progress(&format!("{connections} connections open in {connect_ms:.0} ms; opening {total} streams"));

        let t1 = Instant::now();
        let mut openers = Vec::with_capacity(connections);
        for client in &clients {
            let mut client = client.clone();
            let (session_id, variable, shared) = (session_id.to_string(), variable.to_string(), shared.clone());
            openers.push(tokio::spawn(async move {
                let mut tasks = Vec::with_capacity(per_connection);
                for _ in 0..per_connection {
                    let stream = open_watch(&mut client, &session_id, &variable).await?;
                    tasks.push(tokio::spawn(read_stream(stream, shared.clone())));
                }
                Ok::<_, Error>(tasks)
            }));
        }
        let mut tasks = Vec::with_capacity(total);
        for (i, o) in openers.into_iter().enumerate() {
            tasks.extend(o.await??);
            let step = (connections / 10).max(1);
            if (i + 1) % step == 0 && total >= 1000 {
                progress(&format!("  streams opened on {}/{connections} connections", i + 1));
            }
        }
        let open_streams_ms = t1.elapsed().as_secs_f64() * 1e3;
        Ok(Fleet { shared, tasks, _clients: clients, connections, streams: total, connect_ms, open_streams_ms })
    }

    /// Whether every stream has update k.
    fn complete(&self, k: usize) -> bool {
        self.shared.counts[k].load(Ordering::Acquire) >= self.shared.total
    }

    /// Waits until every stream has update k, up to `deadline`.
    async fn wait_complete(&self, k: usize, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.complete(k) {
                return Ok(());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let have = self.shared.counts[k].load(Ordering::Acquire);
                return Err(
                    format!("only {have} of {} streams had update {k} after {deadline:?}", self.shared.total).into()
                );
            }
            let _ = tokio::time::timeout(left, notified).await;
        }
    }

    /// Makes updates 1..=last_value (the first `warmup` not measured) with
    /// `writer`, paced by `pacing`, waits for every stream to have the last
    /// one, and computes the figures. Consumes the fleet: its streams end.
    pub async fn drive(
        self,
        writer: &mut Client,
        session_id: &str,
        variable: &str,
        warmup: usize,
        pacing: Pacing,
        progress: &Progress,
    ) -> Result<LoadOutcome> {
        let last = self.shared.last_value;
        assert!(warmup < last, "at least one measured update");
        let mut sent_ns = vec![0u64; last + 1];
        let mut write_rpc_ms = Vec::with_capacity(last);
        let mut write_gap_ms = Vec::with_capacity(last);
        let mut ticker = match pacing {
            Pacing::Interval(d) => {
                let mut t = tokio::time::interval(d);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(t)
            }
            Pacing::AfterAll { .. } => None,
        };
        let step = (last / 10).max(1);
        for k in 1..=last {
            if let Some(t) = ticker.as_mut() {
                t.tick().await;
            }
            let t = self.shared.now_ns();
            if k > 1 {
                write_gap_ms.push((t - sent_ns[k - 1]) as f64 / 1e6);
            }
            sent_ns[k] = t;
            set_integer(writer, session_id, variable, k as i64).await?;
            write_rpc_ms.push((self.shared.now_ns() - t) as f64 / 1e6);
            if let Pacing::AfterAll { gap } = pacing {
                self.wait_complete(k, POLL_DEADLINE).await?;
                tokio::time::sleep(gap).await;
            }
            if k % step == 0 {
                progress(&format!("  update {k}/{last}"));
            }
        }
        self.wait_complete(last, POLL_DEADLINE).await?;
        let mut logs = Vec::with_capacity(self.tasks.len());
        for t in self.tasks {
            logs.push(t.await??);
        }

        let measured = warmup + 1..=last;
        let mut out = LoadOutcome {
            warmup,
            updates: last - warmup,
            first_ms: Vec::new(),
            median_ms: Vec::new(),
            last_ms: Vec::new(),
            all_ms: Vec::with_capacity(logs.len() * (last - warmup)),
            coalesced: 0,
            messages: logs.iter().map(|l| l.messages).sum(),
            write_rpc_ms,
            write_gap_ms,
        };
        let mut per_update = Vec::with_capacity(logs.len());
        for k in measured {
            per_update.clear();
            for log in &logs {
                let ms = log.have_ns[k].saturating_sub(sent_ns[k]) as f64 / 1e6;
                per_update.push(ms);
                if k < last && log.have_ns[k] == log.have_ns[k + 1] {
                    // Same instant as the next update: it came inside a later value.
                    out.coalesced += 1;
                }
            }
            out.all_ms.extend_from_slice(&per_update);
            per_update.sort_by(|a, b| a.total_cmp(b));
            out.first_ms.push(per_update[0]);
            out.median_ms.push(percentile(&per_update, 50.0));
            out.last_ms.push(per_update[per_update.len() - 1]);
        }
        Ok(out)
    }
}

/// Reads one stream until it has the last update; records when it first had each.
async fn read_stream(mut stream: Streaming<VariableUpdate>, shared: Arc<Shared>) -> Result<StreamLog> {
    let last = shared.last_value;
    let mut have_ns = vec![0u64; last + 1];
    let mut have = 0usize;
    let mut messages = 0usize;
    while have < last {
        let Some(msg) = stream.message().await? else {
            return Err(format!("a stream ended at update {have} of {last}").into());
        };
        let now = shared.now_ns();
        match msg.update_type.as_str() {
            "value_change" => {}
            "session_closed" | "deleted" => {
                return Err(format!("a stream got {} at update {have} of {last}", msg.update_type).into())
            }
            _ => continue,
        }
        let value = integer_of(&msg).ok_or("an update without an integer value")?;
        if value < 1 {
            continue;
        }
        let value = (value as usize).min(last);
        if value <= have {
            return Err(format!("update {value} after {have}: not in order").into());
        }
        messages += 1;
        for (slot, count) in have_ns[have + 1..=value].iter_mut().zip(&shared.counts[have + 1..=value]) {
            *slot = now;
            if count.fetch_add(1, Ordering::AcqRel) + 1 == shared.total {
                shared.notify.notify_waiters();
            }
        }
        have = value;
    }
    Ok(StreamLog { have_ns, messages })
}

// ---------------------------------------------------------------- fan-out

#[derive(Debug, Clone)]
pub struct FanOutConfig {
    /// Watcher streams, each on its own connection.
    pub watchers: usize,
    pub updates: usize,
    pub interval: Duration,
    pub warmup: usize,
}

impl FanOutConfig {
    pub fn full() -> Self {
        FanOutConfig { watchers: 100, updates: 200, interval: Duration::from_millis(5), warmup: 10 }
    }
    pub fn quick() -> Self {
        FanOutConfig { watchers: 10, updates: 10, interval: Duration::from_millis(5), warmup: 2 }
    }
}

/// Reference figures: other systems on the fan-out workload, on this machine class, ms (p50, p99).
pub const REFERENCE_FAN_OUT: [(&str, f64, f64); 2] =
    [("Redis pub/sub (redis-py asyncio)", 3.9, 35.0), ("etcd Watch (grpcio)", 13.0, 144.0)];

/// Fan-out: `watchers` streams on their own connections; a writer client makes
/// `updates` updates `interval` apart; per update, the time until the last
/// watcher has it. Uses the server at `address`, or starts the standalone one.
pub async fn fan_out(
    address: Option<&str>,
    server_bin: Option<&Path>,
    cfg: &FanOutConfig,
    progress: Progress,
) -> Result<Value> {
    let started = Instant::now();
    let server = match address {
        Some(_) => None,
        None => Some(ServerProcess::start(&server_binary(server_bin)?, &[])?),
    };
    let addr = address.map(str::to_string).unwrap_or_else(|| server.as_ref().unwrap().address.clone());
    progress(&format!("fan-out: server {addr}{}", if server.is_some() { " (started by watch_load)" } else { "" }));

    let session_id = unique_session_id("bench-fanout");
    let variable = "tick";
    let mut writer = connect(&addr).await?;
    create_session(&mut writer, &session_id).await?;
    let result = async {
        register_integer(&mut writer, &session_id, variable, 0).await?;
        let last = cfg.warmup + cfg.updates;
        let fleet = Fleet::open(&addr, &session_id, variable, cfg.watchers, 1, last, &progress).await?;
        wait_for_watchers(&mut writer, &session_id, cfg.watchers).await?;
        progress(&format!(
            "{} watchers live; {} warm-up + {} timed updates, {:?} apart",
            cfg.watchers, cfg.warmup, cfg.updates, cfg.interval
        ));
        let out = fleet
            .drive(&mut writer, &session_id, variable, cfg.warmup, Pacing::Interval(cfg.interval), &progress)
            .await?;
        wait_for_watchers(&mut writer, &session_id, 0).await?;
        Ok::<_, Error>(out)
    }
    .await;
    let _ = cleanup_session(&mut writer, &session_id).await;
    let out = result?;
    let server_started = server.is_some();
    if let Some(s) = server {
        s.stop();
    }
    Ok(json!({
        "mode": "fan-out",
        "unit": "ms",
        "address": addr,
        "server_started": server_started,
        "watchers": cfg.watchers,
        "connections": cfg.watchers,
        "updates": out.updates,
        "warmup_updates": out.warmup,
        "interval_ms": cfg.interval.as_secs_f64() * 1e3,
        "last_watcher_ms": summary(&out.last_ms),
        "first_watcher_ms": summary(&out.first_ms),
        "median_watcher_ms": summary(&out.median_ms),
        "every_delivery_ms": summary(&out.all_ms),
        "per_update_last_ms": out.last_ms,
        "coalesced": out.coalesced,
        "messages": out.messages,
        "write_rpc_ms": summary(&out.write_rpc_ms),
        "write_gap_ms": summary(&out.write_gap_ms),
        "reference_ms": REFERENCE_FAN_OUT.iter().map(|(n, p50, p99)| json!({"name": n, "p50": p50, "p99": p99})).collect::<Vec<_>>(),
        "machine": machine(),
        "elapsed_s": started.elapsed().as_secs_f64(),
    }))
}

// ---------------------------------------------------------------- scale

#[derive(Debug, Clone)]
pub struct ScaleConfig {
    pub streams: usize,
    pub connections: usize,
    pub updates: usize,
    pub warmup: usize,
    /// Pause after every stream has an update, before the next one.
    pub gap: Duration,
}

impl ScaleConfig {
    pub fn full() -> Self {
        ScaleConfig { streams: 10_000, connections: 100, updates: 20, warmup: 2, gap: Duration::from_millis(50) }
    }
    pub fn quick() -> Self {
        ScaleConfig { streams: 200, connections: 4, updates: 5, warmup: 1, gap: Duration::from_millis(10) }
    }
}

/// Scale: `streams` concurrent streams over `connections` connections against
/// a standalone server started here: server memory per idle stream, and the
/// time from one update until every stream has it.
pub async fn scale(server_bin: Option<&Path>, cfg: &ScaleConfig, progress: Progress) -> Result<Value> {
    if cfg.connections == 0 || !cfg.streams.is_multiple_of(cfg.connections) {
        return Err(
            format!("--streams ({}) must be a multiple of --connections ({})", cfg.streams, cfg.connections).into()
        );
    }
    let per_connection = cfg.streams / cfg.connections;
    if let Some(limit) = open_files_limit() {
        // Each connection is one socket here; keep a margin for everything else.
        if (cfg.connections as u64) + 64 > limit {
            return Err(format!(
                "{} connections need more open files than the limit {limit}; raise `ulimit -n`",
                cfg.connections
            )
            .into());
        }
    }
    let started = Instant::now();
    let server = ServerProcess::start(&server_binary(server_bin)?, &[])?;
    let addr = server.address.clone();
    progress(&format!(
        "scale: server {addr} (pid {}); {} streams = {} connections x {per_connection}",
        server.pid, cfg.streams, cfg.connections
    ));
    let rss_started = server.rss_kib()?;
    let session_id = unique_session_id("bench-scale");
    let variable = "tick";
    let mut writer = connect(&addr).await?;
    create_session(&mut writer, &session_id).await?;
    register_integer(&mut writer, &session_id, variable, 0).await?;
    let last = cfg.warmup + cfg.updates;

    // Let the allocator settle before the baseline.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_before = server.rss_kib()?;
    let fleet = Fleet::open(&addr, &session_id, variable, cfg.connections, per_connection, last, &progress).await?;
    let t_live = Instant::now();
    wait_for_watchers(&mut writer, &session_id, cfg.streams).await?;
    let registered_ms = (fleet.open_streams_ms) + t_live.elapsed().as_secs_f64() * 1e3;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_live = server.rss_kib()?;
    progress(&format!(
        "{} streams live (server VmRSS {:.1} MiB -> {:.1} MiB); {} warm-up + {} timed updates",
        cfg.streams,
        rss_before as f64 / 1024.0,
        rss_live as f64 / 1024.0,
        cfg.warmup,
        cfg.updates
    ));
    let (connect_ms, open_streams_ms) = (fleet.connect_ms, fleet.open_streams_ms);
    let cpu0 = server.cpu_ns();
    let out = fleet
        .drive(&mut writer, &session_id, variable, cfg.warmup, Pacing::AfterAll { gap: cfg.gap }, &progress)
        .await?;
    let cpu1 = server.cpu_ns();
    let rss_after_updates = server.rss_kib()?;
    wait_for_watchers(&mut writer, &session_id, 0).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rss_closed = server.rss_kib()?;
    cleanup_session(&mut writer, &session_id).await?;
    drop(writer);
    let stopped_gracefully = server.stop();

    let per_stream = |after: u64| (after as f64 - rss_before as f64) * 1024.0 / cfg.streams as f64;
    // Server CPU over the timed part: every write, fan-out to all streams, the gaps (idle).
    let server_cpu_ms_per_update = match (cpu0, cpu1) {
        (Some(a), Some(b)) => json!((b - a) as f64 / 1e6 / last as f64),
        _ => Value::Null,
    };
    Ok(json!({
        "mode": "scale",
        "unit": "ms",
        "address": addr,
        "streams": cfg.streams,
        "connections": cfg.connections,
        "streams_per_connection": per_connection,
        "updates": out.updates,
        "warmup_updates": out.warmup,
        "gap_ms": cfg.gap.as_secs_f64() * 1e3,
        "memory": {
            "unit": "KiB (VmRSS of the server)",
            "rss_started_kib": rss_started,
            "rss_before_kib": rss_before,
            "rss_live_kib": rss_live,
            "rss_after_updates_kib": rss_after_updates,
            "rss_closed_kib": rss_closed,
            "bytes_per_stream": per_stream(rss_live),
            "bytes_per_stream_after_updates": per_stream(rss_after_updates),
        },
        "open": {
            "connect_ms": connect_ms,
            "open_streams_ms": open_streams_ms,
            "all_registered_ms": registered_ms,
        },
        "all_streams_ms": summary(&out.last_ms),
        "first_stream_ms": summary(&out.first_ms),
        "median_stream_ms": summary(&out.median_ms),
        "every_delivery_ms": summary(&out.all_ms),
        "per_update_all_streams_ms": out.last_ms,
        "coalesced": out.coalesced,
        "messages": out.messages,
        "write_rpc_ms": summary(&out.write_rpc_ms),
        "server_cpu_ms_per_update": server_cpu_ms_per_update,
        "server_stopped_gracefully": stopped_gracefully,
        "machine": machine(),
        "elapsed_s": started.elapsed().as_secs_f64(),
    }))
}

// ---------------------------------------------------------------- hold (for writer_cost.exs)

/// Holds `streams` watch streams (over `connections` connections) on an
/// integer variable of a server somebody else writes to. Protocol, on stdout:
/// `LIVE n` once every stream is open; `DRAINED r messages=M` when every
/// stream has received the value `-r` (the writer's end-of-round marker,
/// r ≥ 1), with M the `value_change` messages received so far by all streams;
/// `END messages=M streams=N` when the streams ended (the session closed) or
/// stdin reached EOF. Returns the total messages received.
pub async fn hold(address: &str, session_id: &str, variable: &str, connections: usize, streams: usize) -> Result<u64> {
    if connections == 0 || !streams.is_multiple_of(connections) {
        return Err(format!("--streams ({streams}) must be a multiple of --connections ({connections})").into());
    }
    let per_connection = streams / connections;
    let rounds: Arc<Mutex<HashMap<i64, usize>>> = Arc::default();
    let messages = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = {
        let out = out.clone();
        move |line: String| {
            let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    };
    let mut tasks = Vec::with_capacity(streams);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut client = connect(address).await?;
        for _ in 0..per_connection {
            let mut stream = open_watch(&mut client, session_id, variable).await?;
            let (rounds, messages, say) = (rounds.clone(), messages.clone(), say.clone());
            tasks.push(tokio::spawn(async move {
                while let Ok(Some(msg)) = stream.message().await {
                    if msg.update_type != "value_change" {
                        continue;
                    }
                    messages.fetch_add(1, Ordering::Relaxed);
                    if let Some(v) = integer_of(&msg).filter(|v| *v < 0) {
                        let mut r = rounds.lock().unwrap_or_else(|e| e.into_inner());
                        let seen = r.entry(-v).or_insert(0);
                        *seen += 1;
                        if *seen == streams {
                            r.remove(&-v);
                            say(format!("DRAINED {} messages={}", -v, messages.load(Ordering::Relaxed)));
                        }
                    }
                }
            }));
        }
        clients.push(client);
    }
    say(format!("LIVE {streams}"));
    // Stdin EOF (the driver went away) ends it too.
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
        let _ = eof_tx.send(());
    });
    let all_done = async {
        for t in tasks {
            let _ = t.await;
        }
    };
    tokio::select! {
        _ = all_done => {}
        _ = eof_rx => {}
    }
    let total = messages.load(Ordering::Relaxed);
    say(format!("END messages={total} streams={streams}"));
    drop(clients);
    Ok(total)
}

// ---------------------------------------------------------------- receive (for push_latency.exs)

/// The push-latency receiver, in Rust (mode name `rust`), speaking the line
/// protocol of `bench/push_receiver.py`: pings in `chunks` chunks (before the
/// phase and after it), one watch phase that records `version:latency_ns` per
/// `value_change` up to and including a negative value (the end marker),
/// where latency = now (CLOCK_REALTIME) − the value (the writer's
/// CLOCK_REALTIME stamp, ns).
pub async fn receive(address: &str, session_id: &str, variable: &str, pings: usize, warmup_pings: usize) -> Result<()> {
    let say = |line: String| {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{line}");
        let _ = o.flush();
    };
    let mut client = connect(address).await?;
    async fn ping(client: &mut Client) -> Result<u64> {
        let t = Instant::now();
        client.ping(PingRequest { message: String::new() }).await?;
        Ok(t.elapsed().as_nanos() as u64)
    }
    for _ in 0..warmup_pings {
        ping(&mut client).await?;
    }
    say("READY".to_string());
    let half = pings / 2;
    let mut before = Vec::with_capacity(half);
    for _ in 0..half {
        before.push(ping(&mut client).await?);
    }
    let mut stream = open_watch(&mut client, session_id, variable).await?;
    say("WATCHING rust".to_string());
    let mut samples = Vec::new();
    loop {
        let Some(msg) = stream.message().await? else {
            return Err("the watch ended before the end marker".into());
        };
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as i64;
        if msg.update_type != "value_change" {
            continue;
        }
        let value = integer_of(&msg).ok_or("an update without an integer value")?;
        let version = msg.variable.as_ref().map_or(0, |v| v.version);
        samples.push(format!("{version}:{}", now - value));
        if value < 0 {
            // The end marker; its pair tells the driver when it arrived.
            break;
        }
    }
    drop(stream);
    say(format!("SAMPLES rust {} {}", samples.len(), samples.join(" ")));
    let mut after = Vec::with_capacity(pings - half);
    for _ in 0..pings - half {
        after.push(ping(&mut client).await?);
    }
    let all: Vec<String> = before.iter().chain(after.iter()).map(u64::to_string).collect();
    say(format!("PINGS rust {} {}", all.len(), all.join(" ")));
    say(format!("DONE client=tonic watch_load={}", env!("CARGO_PKG_VERSION")));
    Ok(())
}
