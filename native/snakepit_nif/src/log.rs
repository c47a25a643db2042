//! The core's `tracing` events, sent to an Elixir process that hands them to Logger.
//!
//! Installed once, by the first server start (never in the NIF `load`
//! callback: `load` also runs inside the compiler's VM): a global subscriber
//! whose one layer forwards events, and `log_panics()`, so that panics reach
//! Logger too. Nothing is ever printed to stderr.
//!
//! Where events go: each started server registers the Elixir process that
//! started it (its `Snakepit.Bridge.Server`) with its level. Events go to the
//! most recently registered one; a receiver leaves when its server stops (or
//! its resource is collected), or when a send finds its process dead, and the
//! one registered before it takes over. With no receiver, events are dropped.
//!
//! Which events: those of the snakepit crates at the receiver's level or
//! more severe (`info` by default, `debug` when asked); other crates'
//! (tonic, h2, rustls...) at `warn` and `error` only. A token bucket (burst
//! [`BURST`], [`PER_SECOND`] a second) keeps a flood from reaching the BEAM;
//! the next event sent after some were dropped carries `dropped: n`.
//!
//! The message sent is `{:snakepit_bridge_log, level, message, fields}`:
//! `level` is `:error`, `:warning`, `:info` or `:debug`, `message` a binary,
//! `fields` a map of the event's other fields (atom keys, binary values),
//! plus `target` (the Rust module) and, after drops, `dropped` (an integer).
//! Events are queued to one thread that sends them, in the order they happened
//! (BEAM threads may not send with an owned environment).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::Instant;

use once_cell::sync::{Lazy, OnceCell};
use rustler::{Atom, Encoder, LocalPid, OwnedEnv, Term};
use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

rustler::atoms! {
    snakepit_bridge_log,
    debug,
    info,
    warning,
    error,
    target,
    dropped,
}

/// Events that may be sent at once after a quiet spell.
pub const BURST: f64 = 100.0;
/// Events a second sent in the long run.
pub const PER_SECOND: f64 = 20.0;
/// Events waiting for the sending thread; more are dropped (and counted).
const QUEUE: usize = 1024;

/// Severity as a number, most severe lowest; 0 means nothing passes.
fn rank(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

/// The most verbose level a server may ask for.
pub fn level_from_atom(level: Atom) -> Option<Level> {
    [(debug(), Level::DEBUG), (info(), Level::INFO), (warning(), Level::WARN), (error(), Level::ERROR)]
        .into_iter()
        .find_map(|(atom, l)| (atom == level).then_some(l))
}

fn level_atom(level: &Level) -> Atom {
    match *level {
        Level::ERROR => error(),
        Level::WARN => warning(),
        Level::INFO => info(),
        Level::DEBUG | Level::TRACE => debug(),
    }
}

/// Ours: forwarded down to the receiver's level; anyone else's from warn up.
fn ours(target: &str) -> bool {
    target.starts_with("snakepit")
}

struct Registered {
    id: u64,
    pid: LocalPid,
    max: u8,
}

/// Receivers, the current one last.
static RECEIVERS: Lazy<Mutex<Vec<Registered>>> = Lazy::new(|| Mutex::new(Vec::new()));
/// The current receiver's rank, read on every event without a lock.
static MAX: AtomicU8 = AtomicU8::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Events dropped (rate limit or full queue) since the last one queued.
static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE_TX: OnceCell<SyncSender<Record>> = OnceCell::new();
static BUCKET: Lazy<Mutex<Bucket>> = Lazy::new(|| Mutex::new(Bucket { tokens: BURST, at: Instant::now() }));

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn refresh_max(receivers: &[Registered]) {
    MAX.store(receivers.last().map_or(0, |r| r.max), Ordering::Relaxed);
}

/// Installs the subscriber and the panic hook (once), and makes `pid` the
/// receiver of events up to `max`. Returns the id to [`unregister`] with.
pub fn register(pid: LocalPid, max: Level) -> u64 {
    install();
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut receivers = lock(&RECEIVERS);
    receivers.push(Registered { id, pid, max: rank(&max) });
    refresh_max(&receivers);
    id
}

/// Removes a receiver; the one registered before it (if alive) takes over.
pub fn unregister(id: u64) {
    let mut receivers = lock(&RECEIVERS);
    receivers.retain(|r| r.id != id);
    refresh_max(&receivers);
}

fn install() {
    static INSTALLED: OnceCell<()> = OnceCell::new();
    INSTALLED.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let spawned = std::thread::Builder::new().name("snakepit-bridge-log".into()).spawn(move || deliver(rx));
        if spawned.is_err() {
            // No thread, no logs: the server itself works without them.
            return;
        }
        let _ = QUEUE_TX.set(tx);
        // Fails only if another subscriber was set first; then that one gets the events.
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(ToElixir));
        snakepit_core::server::log_panics();
    });
}

/// One event, owned, on its way to the sending thread.
struct Record {
    level: Level,
    target: &'static str,
    message: String,
    fields: Vec<(&'static str, String)>,
    dropped: u64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * PER_SECOND;
        self.tokens = (self.tokens + refill).min(BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The layer: filters, rate-limits and queues events.
struct ToElixir;

impl ToElixir {
    fn passes(metadata: &Metadata<'_>) -> bool {
        let level = rank(metadata.level());
        level <= MAX.load(Ordering::Relaxed) && (ours(metadata.target()) || level <= rank(&Level::WARN))
    }
}

impl<S: Subscriber> Layer<S> for ToElixir {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        // `sometimes`: the level can change with the receiver, so ask per event.
        let could = metadata.is_event()
            && match rank(metadata.level()) {
                level if level <= rank(&Level::WARN) => true,
                level => ours(metadata.target()) && level <= rank(&Level::DEBUG),
            };
        if could {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        metadata.is_event() && Self::passes(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::DEBUG)
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Some(tx) = QUEUE_TX.get() else { return };
        if !lock(&BUCKET).take() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let metadata = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        let record = Record {
            level: *metadata.level(),
            target: metadata.target(),
            message: fields.message,
            fields: fields.others,
            dropped,
        };
        if let Err(TrySendError::Full(r) | TrySendError::Disconnected(r)) = tx.try_send(record) {
            DROPPED.fetch_add(r.dropped + 1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.put(field, text);
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.others.push((field.name(), value));
        }
    }
}

/// The sending thread: each record to the current receiver, in order.
fn deliver(rx: Receiver<Record>) {
    let mut env = OwnedEnv::new();
    for record in rx {
        let mut receivers = lock(&RECEIVERS);
        while let Some(current) = receivers.last() {
            if rank(&record.level) > current.max {
                break;
            }
            let sent = env.send_and_clear(&current.pid, |env| encode(env, &record));
            if sent.is_ok() {
                break;
            }
            // Its process is gone: the one registered before takes over.
            receivers.pop();
            refresh_max(&receivers);
        }
    }
}

fn encode<'a>(env: rustler::Env<'a>, record: &Record) -> Term<'a> {
    let mut pairs: Vec<(Term<'a>, Term<'a>)> = Vec::with_capacity(record.fields.len() + 2);
    for (name, value) in &record.fields {
        // Field names are the `&'static str`s of call sites: a bounded set of atoms.
        if let Ok(key) = Atom::from_str(env, name) {
            pairs.push((key.encode(env), value.encode(env)));
        }
    }
    pairs.push((target().encode(env), record.target.encode(env)));
    if record.dropped > 0 {
        pairs.push((dropped().encode(env), record.dropped.encode(env)));
    }
    let fields = Term::map_from_pairs(env, &pairs).unwrap_or_else(|_| rustler::types::map::map_new(env));
    (snakepit_bridge_log(), level_atom(&record.level), record.message.as_str(), fields).encode(env)
}
