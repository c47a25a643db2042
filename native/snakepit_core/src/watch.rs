//! Watching variables: subscriptions, coalescing, and fan-out.
//!
//! # Guarantees
//! A watcher is owed the latest value of every variable it watches, in
//! version order — not every intermediate value:
//! - **Ordered and unique**: per variable, delivered versions strictly increase.
//! - **Coalesced, never disconnected**: a watcher that falls behind holds at
//!   most one pending update per variable (the newest); memory per watcher is
//!   bounded by the number of variables it watches.
//! - **Writers never wait**: a write only records the change in its session's
//!   pending set and, if the session was not already queued, queues it for the
//!   dispatcher thread — O(1), whatever the number of watchers. With at most
//!   [`INLINE_FANOUT`] watchers the writer hands the change to them itself:
//!   bounded work that saves waking the dispatcher, a thread hop that costs
//!   more latency than the hand-off costs the writer.
//! - **Atomic batches stay adjacent**: the changes of one batch enter every
//!   pending set together, at its end, so a watcher reads them back to back.
//! - **No race with initial values**: a subscription is registered and its
//!   initial values taken under the same lock writers hold, so a racing write
//!   is either in the initial value or delivered after it.
//!
//! # Flow
//! writer (holds the session's variable lock) → `Store::commit` → `SessionWatch::publish` →
//! session pending set → dispatcher thread → each watcher's pending set →
//! `Subscription::poll_batch` (gRPC stream, whose `WatchStream` encodes each
//! update once for every stream) or `next_batch` (the NIF's delivery task).
//!
//! Lock order: a session's variable lock, then `SessionWatch::table`, then a
//! watcher's `state`, then `SessionWatch::pending`. None is held across I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::glob::Glob;
use crate::model::{Source, Update, UpdateKind};

/// Sessions with at most this many watchers are fanned out by the writer
/// itself; above it, by the dispatcher thread.
pub const INLINE_FANOUT: usize = 4;

/// Pending updates, at most one per variable, in arrival order. A newer update
/// for a variable replaces the older one and moves to the end, which keeps the
/// members of one batch together. A change that replaces a pending initial
/// value (or registration) is itself delivered as the initial value (or
/// registration), so streams that asked for initial values always start with
/// them, and a registered variable always arrives first as `registered`; one
/// deleted before its registration was taken is dropped altogether.
#[derive(Default)]
struct Pending {
    next: u64,
    order: BTreeMap<u64, Arc<Update>>,
    position: HashMap<Arc<str>, u64>,
}

impl Pending {
    fn push(&mut self, mut update: Arc<Update>) {
        if let Some(old) = self.position.insert(update.key_arc(), self.next) {
            let replaced = self.order.remove(&old);
            // Registered and deleted before anyone was told: nothing to tell.
            if update.kind == UpdateKind::Deleted && replaced.as_ref().is_some_and(|r| r.kind == UpdateKind::Registered)
            {
                self.position.remove(update.key());
                return;
            }
            let first =
                replaced.map(|r| r.kind).filter(|k| matches!(k, UpdateKind::InitialValue | UpdateKind::Registered));
            if let (Some(kind), UpdateKind::ValueChange) = (first, update.kind) {
                let changed = Arc::make_mut(&mut update);
                changed.kind = kind;
                // Its encoding, if a stream already made one, is of the old kind.
                changed.wire = Default::default();
            }
        }
        self.order.insert(self.next, update);
        self.next += 1;
    }

    fn take(&mut self) -> Vec<Arc<Update>> {
        self.position.clear();
        std::mem::take(&mut self.order).into_values().collect()
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Who holds a subscription; counted separately in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    Grpc,
    Elixir,
}

/// Counters shared by every session of a hub (one hub per store).
#[derive(Debug, Default)]
struct WatchStats {
    grpc: AtomicUsize,
    elixir: AtomicUsize,
    /// Watchers created since start; with `grpc + elixir`, shows nothing leaks.
    opened: AtomicU64,
}

impl WatchStats {
    fn counter(&self, owner: Owner) -> &AtomicUsize {
        match owner {
            Owner::Grpc => &self.grpc,
            Owner::Elixir => &self.elixir,
        }
    }
}

/// A snapshot of a hub's watcher counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchCounts {
    /// Live gRPC watch streams.
    pub grpc: usize,
    /// Live Elixir subscriptions.
    pub elixir: usize,
    /// Subscriptions made since the hub started, ended or not.
    pub opened: u64,
}

struct WatcherState {
    pending: Pending,
    /// Highest version placed in `pending` (or sent) per variable id.
    seen: HashMap<Arc<str>, i64>,
    deleted: HashSet<Arc<str>>,
    /// The session closed: `pending` ends with `SessionClosed`.
    closed: bool,
    /// The last update was handed out, or the subscription was cancelled.
    finished: bool,
    /// The task of [`Subscription::poll_batch`], woken (instead of `notify`)
    /// when updates arrive: no waiter list, one wake per round.
    waker: Option<Waker>,
}

pub(crate) struct Watcher {
    id: u64,
    owner: Owner,
    state: Mutex<WatcherState>,
    notify: Notify,
}

impl Watcher {
    fn state(&self) -> MutexGuard<'_, WatcherState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds updates (one dispatch round's worth) under one lock, dropping
    /// anything not newer than what this watcher already has.
    fn offer(&self, updates: &[Arc<Update>]) {
        let mut st = self.state();
        if st.closed || st.finished {
            return;
        }
        let mut added = false;
        for u in updates {
            match u.kind {
                UpdateKind::SessionClosed => {
                    st.pending.push(u.clone());
                    st.closed = true;
                    added = true;
                    break;
                }
                UpdateKind::Deleted => {
                    if st.deleted.insert(u.key_arc()) {
                        st.pending.push(u.clone());
                        added = true;
                    }
                }
                UpdateKind::ValueChange | UpdateKind::InitialValue | UpdateKind::Registered => {
                    let (key, version) = (u.key(), u.version());
                    if st.deleted.contains(key) {
                        continue;
                    }
                    // Every watched variable has an entry from the start.
                    match st.seen.get_mut(key) {
                        Some(seen) if *seen >= version => continue,
                        Some(seen) => *seen = version,
                        None => {
                            st.seen.insert(u.key_arc(), version);
                        }
                    }
                    st.pending.push(u.clone());
                    added = true;
                }
            }
        }
        let waker = if added { st.waker.take() } else { None };
        drop(st);
        if let Some(waker) = waker {
            waker.wake();
        } else if added {
            self.notify.notify_one();
        }
    }
}

/// A watcher as the table knows it.
struct Entry {
    watcher: Arc<Watcher>,
    /// Ids of the variables it watches.
    variables: Vec<Arc<str>>,
    /// Its patterns (keys of `Table::patterns`).
    patterns: Vec<Arc<str>>,
}

#[derive(Default)]
struct Table {
    /// Variable id → ids of the watchers watching it.
    by_variable: HashMap<Arc<str>, Vec<u64>>,
    watchers: HashMap<u64, Entry>,
    /// The distinct patterns of all watchers, each with the watchers that
    /// hold it: consulted when a variable is registered (once per distinct
    /// pattern, however many watchers share it), never on writes.
    patterns: HashMap<Arc<str>, (Glob, Vec<u64>)>,
}

#[derive(Default)]
struct SessionPending {
    updates: Pending,
    /// Already in the dispatcher's queue; later changes just join `updates`.
    queued: bool,
}

/// The watch side of one session.
pub(crate) struct SessionWatch {
    table: Mutex<Table>,
    pending: Mutex<SessionPending>,
    /// Live watchers; writers read it to skip all watch work when zero.
    count: AtomicUsize,
    hub: Arc<Hub>,
    closed: AtomicBool,
    /// The `SessionClosed` update, once the session is closed.
    closing: Mutex<Option<Arc<Update>>>,
    /// Monotonic microseconds when the last watcher left: a watched session
    /// does not expire, and its idle time counts from then.
    last_left_us: AtomicU64,
    clock: Arc<dyn Clock>,
}

impl SessionWatch {
    pub(crate) fn new(hub: Arc<Hub>, clock: Arc<dyn Clock>) -> SessionWatch {
        SessionWatch {
            table: Mutex::default(),
            pending: Mutex::default(),
            count: AtomicUsize::new(0),
            hub,
            closed: AtomicBool::new(false),
            closing: Mutex::default(),
            last_left_us: AtomicU64::new(0),
            clock,
        }
    }

    /// When the last watcher left (monotonic microseconds; 0 if none ever did).
    pub(crate) fn last_left_us(&self) -> u64 {
        self.last_left_us.load(Ordering::Acquire)
    }

    /// Live watchers of this session.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Of `ids`, those some watcher watches: a write publishes only these, so
    /// a change nobody watches costs one lookup, not a dispatch. The caller
    /// holds the session's variable lock, under which watchers subscribe and
    /// bind new variables, so the answer holds until it releases it.
    pub(crate) fn watched<'a>(&self, ids: &'a [Arc<str>]) -> Vec<&'a Arc<str>> {
        let table = self.table();
        ids.iter().filter(|id| table.by_variable.contains_key(*id)).collect()
    }

    /// Records changes for the watchers. The caller holds the session's variable
    /// lock, which orders publications the same way as versions. O(1) per change.
    pub(crate) fn publish(self: &Arc<Self>, updates: impl IntoIterator<Item = Update>) {
        if self.count() == 0 {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for u in updates {
            p.updates.push(Arc::new(u));
        }
        if !p.queued {
            if self.count() <= INLINE_FANOUT {
                drop(p);
                // Still under the writer's variable lock, so rounds stay in version order.
                self.dispatch();
                return;
            }
            p.queued = true;
            drop(p);
            self.hub.schedule(self.clone());
        }
    }

    /// Ends every subscription with `SessionClosed`, after whatever is pending.
    pub(crate) fn close(self: &Arc<Self>, at_us: i64, source: Source) {
        let closing = Update {
            kind: UpdateKind::SessionClosed,
            variable: None,
            source,
            metadata: Arc::default(),
            at_us,
            batch: None,
            wire: Default::default(),
        };
        // Kept for subscriptions that race the close (see `subscribe`).
        *self.closing.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(closing.clone()));
        if self.closed.swap(true, Ordering::AcqRel) || self.count() == 0 {
            return;
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.updates.push(Arc::new(closing));
        if !p.queued {
            p.queued = true;
            drop(p);
            self.hub.schedule(self.clone());
        }
    }

    /// Registers a watcher of `variables` (ids) whose pending set starts with
    /// `initial`, and the versions it already has; with `patterns`, variables
    /// registered later whose names match join it (see [`Self::bind_registered`]).
    /// The caller holds the session's variable lock, so no write or
    /// registration slips between snapshot and subscription.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        owner: Owner,
        variables: Vec<Arc<str>>,
        seen: HashMap<Arc<str>, i64>,
        initial: Vec<Update>,
        patterns: Vec<(Arc<str>, Glob)>,
    ) -> Subscription {
        let mut state = WatcherState {
            pending: Pending::default(),
            seen,
            deleted: HashSet::new(),
            closed: false,
            finished: false,
            waker: None,
        };
        for u in initial {
            state.pending.push(Arc::new(u));
        }
        let id = self.hub.stats.opened.fetch_add(1, Ordering::Relaxed);
        let watcher = Arc::new(Watcher { id, owner, state: Mutex::new(state), notify: Notify::new() });
        let mut table = self.table();
        for v in &variables {
            table.by_variable.entry(v.clone()).or_default().push(id);
        }
        let mut held: Vec<Arc<str>> = Vec::with_capacity(patterns.len());
        for (key, glob) in patterns {
            let entry = table.patterns.entry(key.clone()).or_insert_with(|| (glob, Vec::new()));
            if !entry.1.contains(&id) {
                entry.1.push(id);
                held.push(key);
            }
        }
        table.watchers.insert(id, Entry { watcher: watcher.clone(), variables, patterns: held });
        self.count.fetch_add(1, Ordering::AcqRel);
        self.hub.stats.counter(owner).fetch_add(1, Ordering::Relaxed);
        drop(table);
        self.hub.ensure_started();
        if self.closed.load(Ordering::Acquire) {
            // The session closed while this subscription was being made.
            if let Some(closing) = self.closing.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                watcher.offer(&[closing]);
            }
        }
        Subscription { watcher, session: Arc::downgrade(self) }
    }

    /// A variable was just registered (the caller holds the session's
    /// variable lock): the watchers whose patterns match its name start
    /// watching it. Returns whether any did, i.e. whether to publish it.
    pub(crate) fn bind_registered(&self, id: &Arc<str>, name: &str) -> bool {
        let mut table = self.table();
        let mut matching: Vec<u64> = table
            .patterns
            .values()
            .filter(|(glob, _)| glob.matches(name))
            .flat_map(|(_, watchers)| watchers.iter().copied())
            .collect();
        // A watcher with two matching patterns watches the variable once.
        matching.sort_unstable();
        matching.dedup();
        for watcher in &matching {
            if let Some(entry) = table.watchers.get_mut(watcher) {
                entry.variables.push(id.clone());
            }
        }
        let any = !matching.is_empty();
        if any {
            table.by_variable.insert(id.clone(), matching);
        }
        any
    }

    fn unsubscribe(&self, id: u64) {
        let mut table = self.table();
        let Some(Entry { watcher, variables, patterns }) = table.watchers.remove(&id) else {
            return;
        };
        for pattern in patterns {
            if let Some((_, ids)) = table.patterns.get_mut(&pattern) {
                ids.retain(|w| *w != id);
                if ids.is_empty() {
                    table.patterns.remove(&pattern);
                }
            }
        }
        for v in variables {
            if let Some(ids) = table.by_variable.get_mut(&v) {
                ids.retain(|w| *w != id);
                if ids.is_empty() {
                    table.by_variable.remove(&v);
                }
            }
        }
        // Stamped before the count drops, so a session seen unwatched is
        // never judged by an older stamp.
        self.last_left_us.store(self.clock.monotonic().as_micros() as u64, Ordering::Release);
        self.count.fetch_sub(1, Ordering::AcqRel);
        self.hub.stats.counter(watcher.owner).fetch_sub(1, Ordering::Relaxed);
    }

    /// One dispatch round: hands this session's pending changes to its watchers.
    fn dispatch(&self) {
        let updates = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.queued = false;
            p.updates.take()
        };
        if updates.is_empty() {
            return;
        }
        let table = self.table();
        // The common round, one change: hand it over without grouping.
        if let [u] = updates.as_slice() {
            if u.kind != UpdateKind::SessionClosed {
                for id in table.by_variable.get(u.key()).into_iter().flatten() {
                    if let Some(entry) = table.watchers.get(id) {
                        entry.watcher.offer(std::slice::from_ref(u));
                    }
                }
                return;
            }
        }
        let mut per_watcher: HashMap<u64, Vec<Arc<Update>>> = HashMap::new();
        for u in &updates {
            if u.kind == UpdateKind::SessionClosed {
                for id in table.watchers.keys() {
                    per_watcher.entry(*id).or_default().push(u.clone());
                }
                continue;
            }
            if let Some(ids) = table.by_variable.get(u.key()) {
                for id in ids {
                    per_watcher.entry(*id).or_default().push(u.clone());
                }
            }
        }
        for (id, list) in per_watcher {
            if let Some(entry) = table.watchers.get(&id) {
                entry.watcher.offer(&list);
            }
        }
    }
}

/// A live watch. Dropping it ends the subscription.
pub struct Subscription {
    watcher: Arc<Watcher>,
    session: Weak<SessionWatch>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription").field("id", &self.watcher.id).finish()
    }
}

impl Subscription {
    /// Everything pending now, oldest first; empty if nothing is. After the
    /// batch holding `SessionClosed`, or after `cancel`, the subscription is finished.
    pub fn try_next_batch(&self) -> Vec<Update> {
        let mut st = self.watcher.state();
        if st.finished {
            return Vec::new();
        }
        let batch = st.pending.take();
        if st.closed {
            st.finished = true;
        }
        batch.into_iter().map(|u| (*u).clone()).collect()
    }

    /// Everything pending, shared (not copied), oldest first; `Pending` (and
    /// the task woken when updates arrive) if nothing is; `None` once the
    /// subscription is finished. The gRPC stream's way to wait: polled by its
    /// task, so nothing is allocated per wait.
    pub(crate) fn poll_batch(&self, cx: &mut Context<'_>) -> Poll<Option<Vec<Arc<Update>>>> {
        let mut st = self.watcher.state();
        if st.finished {
            return Poll::Ready(None);
        }
        if st.pending.is_empty() {
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        let batch = st.pending.take();
        if st.closed {
            st.finished = true;
        }
        Poll::Ready(Some(batch))
    }

    /// Waits for updates; `None` once the subscription is finished.
    pub async fn next_batch(&self) -> Option<Vec<Update>> {
        loop {
            // Register interest before looking, so a notify in between is not lost.
            let notified = self.watcher.notify.notified();
            {
                let st = self.watcher.state();
                if st.finished {
                    return None;
                }
                if !st.pending.is_empty() {
                    drop(st);
                    return Some(self.try_next_batch());
                }
            }
            notified.await;
        }
    }

    /// What is pending now, without taking it (tests check the coalescing bound).
    #[cfg(test)]
    pub(crate) fn pending(&self) -> Vec<Update> {
        self.watcher.state().pending.order.values().map(|u| (**u).clone()).collect()
    }

    /// Whether the last update was handed out or the subscription was cancelled.
    pub fn is_finished(&self) -> bool {
        self.watcher.state().finished
    }

    /// A handle that can end this subscription from elsewhere.
    pub fn canceller(&self) -> Canceller {
        Canceller { watcher: Arc::downgrade(&self.watcher), session: self.session.clone() }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(session) = self.session.upgrade() {
            session.unsubscribe(self.watcher.id);
        }
    }
}

/// Ends a subscription from another thread: its `next_batch` returns `None`.
#[derive(Clone)]
pub struct Canceller {
    watcher: Weak<Watcher>,
    session: Weak<SessionWatch>,
}

impl std::fmt::Debug for Canceller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Canceller").finish_non_exhaustive()
    }
}

impl Canceller {
    /// Ends the subscription at once: it stops counting as a watcher and
    /// pending updates are dropped. Idempotent.
    pub fn cancel(&self) {
        if let Some(w) = self.watcher.upgrade() {
            let waker = {
                let mut st = w.state();
                st.finished = true;
                st.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
            w.notify.notify_one();
            if let Some(session) = self.session.upgrade() {
                session.unsubscribe(w.id);
            }
        }
    }
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").field("id", &self.id).finish()
    }
}

/// The dispatcher: one thread per store, started by the first subscription.
/// It owns all fan-out work, so writers never do any.
#[derive(Default)]
pub(crate) struct Hub {
    queue: OnceLock<mpsc::Sender<Arc<SessionWatch>>>,
    stats: WatchStats,
}

impl Hub {
    /// The watcher counters of every session of this hub.
    pub(crate) fn counts(&self) -> WatchCounts {
        WatchCounts {
            grpc: self.stats.grpc.load(Ordering::Relaxed),
            elixir: self.stats.elixir.load(Ordering::Relaxed),
            opened: self.stats.opened.load(Ordering::Relaxed),
        }
    }

    fn ensure_started(&self) {
        self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Arc<SessionWatch>>();
            std::thread::Builder::new()
                .name("snakepit-watch".into())
                .spawn(move || {
                    // Ends when the store (every sender) is gone.
                    while let Ok(session) = rx.recv() {
                        session.dispatch();
                    }
                })
                .expect("the watch dispatcher thread starts");
            tx
        });
    }

    fn schedule(&self, session: Arc<SessionWatch>) {
        // Only sessions with watchers publish, and subscribing started the thread.
        if let Some(tx) = self.queue.get() {
            let _ = tx.send(session);
        }
    }
}

#[cfg(test)]
mod tests;
