//! The session store: sessions, and the typed, versioned variables in them.
//!
//! Lock order: the session map (`Store::sessions`) before a session's variables
//! (`Session::vars`). Both are `std::sync` locks held only for in-memory work,
//! never across an `.await` or I/O, so the NIF may take them on a scheduler.
//!
//! A write that changes variables hands what it did to the session's watch
//! hub through one commit point, `Store::commit`, under the variable lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::constraints::Constraints;
use crate::error::{clip, Result, StoreError};
use crate::glob::Glob;
use crate::limits::{exceeded, Limits, MAX_NAME_BYTES};
use crate::model::{Metadata, Source, Update, UpdateKind, Variable};
use crate::value::{normalize, Raw, Value, VarType};
use crate::watch::{Hub, Owner, SessionWatch, Subscription};

/// The idle time after which a session expires unless told otherwise.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);

/// Ids are unique for the life of the process, whichever store made them.
static NEXT_VARIABLE_SUFFIX: AtomicU64 = AtomicU64::new(1);

/// Part of every id, different in each process life (its start time in
/// microseconds, base 36), so an id seen before a server restart never names
/// another variable after it.
static PROCESS_NONCE: once_cell::sync::Lazy<String> = once_cell::sync::Lazy::new(|| {
    let mut n =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let mut digits = Vec::new();
    while n > 0 {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
});

/// What a caller knows about a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub metadata: Metadata,
    pub created_at_us: i64,
    pub last_accessed_at_us: i64,
    pub ttl: Duration,
    pub variable_count: usize,
    /// Live subscriptions: gRPC streams plus Elixir subscribers.
    pub watcher_count: usize,
}

/// Totals over the whole store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStats {
    pub sessions: usize,
    pub grpc_watchers: usize,
    pub elixir_watchers: usize,
    /// Subscriptions made since the store started, ended or not.
    pub watchers_opened: u64,
}

/// What to watch and how to start.
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    /// Ids or names. A watch names identifiers, patterns or both.
    pub identifiers: Vec<String>,
    /// Glob patterns (as ListVariables): every variable whose name matches
    /// one, now or registered later, is watched.
    pub patterns: Vec<String>,
    /// Start with each variable's current value.
    pub include_initial: bool,
    /// Per identifier, the last version the caller saw: its current value is
    /// sent first if (and only if) it is newer.
    pub since_versions: HashMap<String, i64>,
}

/// A variable to register.
#[derive(Debug, Clone)]
pub struct NewVariable {
    pub name: String,
    pub ty: VarType,
    pub value: Raw,
    /// A map of constraints for the type, or `Raw::Nil` for none.
    pub constraints: Raw,
    pub metadata: Metadata,
}

/// How a change is made: who makes it, with what metadata, under which check.
#[derive(Debug, Clone)]
pub struct Change {
    pub source: Source,
    /// Merged into the variable's metadata; later keys win.
    pub metadata: Metadata,
    /// Optimistic lock: the version the caller last saw; 0 means "don't check".
    pub expected_version: i64,
}

impl Change {
    /// A plain change from `source`: no metadata, no version check.
    pub fn from(source: Source) -> Change {
        Change { source, metadata: Metadata::new(), expected_version: 0 }
    }
}

/// A value to write, as a door decoded it.
#[derive(Debug, Clone)]
pub struct Input {
    /// The raw value, or why the door could not decode it (reported per key in a batch).
    pub value: Result<Raw>,
    /// The type the sender said the value has (gRPC's `type_url`); must match the variable's.
    pub declared: Option<VarType>,
}

impl From<Raw> for Input {
    fn from(value: Raw) -> Input {
        Input { value: Ok(value), declared: None }
    }
}

/// What a batch read found.
#[derive(Debug, Clone)]
pub struct BatchGet {
    /// Found variables, keyed by the identifier asked for, in the order asked.
    pub found: Vec<(String, Variable)>,
    /// Identifiers with no variable.
    pub missing: Vec<String>,
}

/// What a batch update did, key by key, in the order the keys were given.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOutcome {
    /// Applied keys and their new versions. Empty when an atomic batch was refused.
    pub applied: Vec<(String, i64)>,
    /// Refused keys and why. In an atomic batch, any entry here means nothing was applied.
    pub errors: Vec<(String, StoreError)>,
}

/// What one write did, as it reaches [`Store::commit`].
enum Committed<'a> {
    /// `change` set the values of `ids`, in this order, at `at_us`. The
    /// changes of an `atomic` batch share a batch number.
    Values { ids: &'a [Arc<str>], change: &'a Change, at_us: i64, atomic: bool },
    /// The variable was deleted (it is the last snapshot).
    Deleted { variable: Variable, at_us: i64 },
    /// The variable was registered; watchers whose patterns match it get it.
    Registered { variable: Variable },
}

struct Session {
    id: Arc<str>,
    metadata: Metadata,
    created_at_us: i64,
    ttl: Duration,
    /// Monotonic microseconds of the last access; read and written without the lock.
    last_access_us: AtomicU64,
    last_access_wall_us: AtomicU64,
    vars: Mutex<Vars>,
    watch: Arc<SessionWatch>,
}

/// Every variable id starts with this (`var_<name>_<nonce>`).
const ID_PREFIX: &str = "var_";

#[derive(Default)]
struct Vars {
    by_id: HashMap<Arc<str>, Variable>,
    /// Name → id.
    by_name: HashMap<Arc<str>, Arc<str>>,
}

impl Vars {
    /// Id first, then name: an id is never ambiguous, a name may look like an id.
    /// Ids all start with ID_PREFIX: anything else can only be a name, which
    /// saves a hash lookup on the common path (access by name).
    fn resolve(&self, identifier: &str) -> Option<Arc<str>> {
        if identifier.starts_with(ID_PREFIX) {
            if let Some((id, _)) = self.by_id.get_key_value(identifier) {
                return Some(id.clone());
            }
        }
        self.by_name.get(identifier).cloned()
    }

    fn get(&self, identifier: &str) -> Option<&Variable> {
        let by_id = if identifier.starts_with(ID_PREFIX) { self.by_id.get(identifier) } else { None };
        by_id.or_else(|| self.by_name.get(identifier).and_then(|id| self.by_id.get(id)))
    }
}

/// The store. A cheap `Clone` handle: every clone sees the same sessions.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    sessions: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    /// Read (and copied) once per operation; written when a server starts.
    limits: RwLock<Limits>,
    clock: Arc<dyn Clock>,
    hub: Arc<Hub>,
    /// Numbers atomic batches, so watchers (and tests) can tell them apart.
    next_batch: AtomicU64,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Checks a session id or variable name: non-empty UTF-8 of at most
/// [`MAX_NAME_BYTES`] bytes without control characters.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StoreError::InvalidArgument(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(StoreError::InvalidArgument(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_BYTES}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(StoreError::InvalidArgument(format!("{what} {name:?} contains the control character {c:?}")));
    }
    Ok(())
}

impl Store {
    /// A store on the system clock.
    pub fn new() -> Store {
        Store::with_clock(Arc::new(SystemClock::default()))
    }

    /// A store on the given clock (tests use [`crate::clock::ManualClock`]).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Store {
        Store {
            inner: Arc::new(Inner {
                sessions: RwLock::default(),
                limits: RwLock::default(),
                clock,
                hub: Arc::default(),
                next_batch: AtomicU64::new(1),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        *self.inner.limits.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the limits. What the store already holds stays, even where it
    /// is over a new limit; the limits apply to what comes next.
    pub fn set_limits(&self, limits: Limits) {
        *self.inner.limits.write().unwrap_or_else(|e| e.into_inner()) = limits;
    }

    fn now_us(&self) -> i64 {
        self.inner.clock.wall_micros()
    }

    fn mono_us(&self) -> u64 {
        self.inner.clock.monotonic().as_micros() as u64
    }

    // A poisoned lock means a panic happened while it was held; the data it guards
    // is only ever changed after all checks pass, so it is still consistent.
    fn sessions_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.inner.sessions.read().unwrap_or_else(|e| e.into_inner())
    }

    fn sessions_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<Session>>> {
        self.inner.sessions.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A session expires `ttl` after its last access or, if later, after its
    /// last watcher left; never while someone watches it (a gRPC stream's
    /// connection is proven alive by keepalive, an Elixir watcher by its pid).
    fn is_expired(&self, s: &Session, mono_now: u64) -> bool {
        if s.watch.count() > 0 {
            return false;
        }
        let last = s.last_access_us.load(Ordering::Relaxed).max(s.watch.last_left_us());
        mono_now.saturating_sub(last) > s.ttl.as_micros() as u64
    }

    /// The live session `id`, touched (its idle timer restarts). An expired
    /// session found here is removed and reported as not found.
    fn session(&self, id: &str) -> Result<Arc<Session>> {
        let found = self.sessions_read().get(id).cloned();
        let session = found.ok_or_else(|| StoreError::SessionNotFound(id.to_string()))?;
        let now = self.mono_us();
        if self.is_expired(&session, now) {
            self.remove_if_expired(id);
            return Err(StoreError::SessionNotFound(id.to_string()));
        }
        session.last_access_us.store(now, Ordering::Relaxed);
        session.last_access_wall_us.store(self.now_us() as u64, Ordering::Relaxed);
        Ok(session)
    }

    fn remove_if_expired(&self, id: &str) -> Option<Arc<Session>> {
        let mut sessions = self.sessions_write();
        let now = self.mono_us();
        // Re-check under the write lock: an access may have refreshed it meanwhile.
        let removed =
            if sessions.get(id).is_some_and(|s| self.is_expired(s, now)) { sessions.remove(id) } else { None };
        drop(sessions);
        if let Some(s) = &removed {
            // Expiry is the server's doing, which is the Elixir side.
            s.watch.close(self.now_us(), Source::Elixir);
        }
        removed
    }

    /// The commit point: every write that changed a session's variables hands
    /// what it did to the session's watchers here, and nowhere else. Called
    /// after the change is applied, still under the session's variable lock,
    /// which orders the hand-offs as the versions. With no watchers it costs
    /// one atomic load; otherwise it builds the updates and publishes them
    /// (O(1) per change; see [`crate::watch`]).
    fn commit(&self, session: &Session, vars: &Vars, committed: Committed<'_>) {
        if session.watch.count() == 0 {
            return;
        }
        match committed {
            Committed::Values { ids, change, at_us, atomic } => {
                // Only what someone watches: a session's other variables cost
                // a lookup, whatever its watchers (pattern watchers included).
                let ids = session.watch.watched(ids);
                if ids.is_empty() {
                    return;
                }
                let batch = atomic.then(|| self.inner.next_batch.fetch_add(1, Ordering::Relaxed));
                let metadata = change_metadata(change);
                session.watch.publish(ids.into_iter().map(|id| Update {
                    kind: UpdateKind::ValueChange,
                    variable: Some(vars.by_id[id].clone()),
                    source: change.source,
                    metadata: metadata.clone(),
                    at_us,
                    batch,
                    wire: Default::default(),
                }));
            }
            Committed::Deleted { variable, at_us } => {
                if session.watch.watched(std::slice::from_ref(&variable.id)).is_empty() {
                    return;
                }
                session.watch.publish([Update {
                    kind: UpdateKind::Deleted,
                    source: variable.source,
                    variable: Some(variable),
                    metadata: Arc::default(),
                    at_us,
                    batch: None,
                    wire: Default::default(),
                }])
            }
            Committed::Registered { variable } => {
                // Matching happens here, once per registration, so writes never scan patterns.
                if session.watch.bind_registered(&variable.id, &variable.name) {
                    session.watch.publish([Update {
                        kind: UpdateKind::Registered,
                        source: variable.source,
                        at_us: variable.created_at_us,
                        variable: Some(variable),
                        metadata: Arc::default(),
                        batch: None,
                        wire: Default::default(),
                    }]);
                }
            }
        }
    }

    /// Creates a session that expires after `ttl` without access.
    pub fn create_session(&self, id: &str, metadata: Metadata, ttl: Duration) -> Result<SessionInfo> {
        validate_name("session id", id)?;
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument("session ttl must be positive".into()));
        }
        let limits = self.limits();
        limits.check_metadata("the session", metadata.iter())?;
        let now = self.mono_us();
        let wall = self.now_us();
        let session = Arc::new(Session {
            id: Arc::from(id),
            metadata,
            created_at_us: wall,
            ttl,
            last_access_us: AtomicU64::new(now),
            last_access_wall_us: AtomicU64::new(wall as u64),
            vars: Mutex::default(),
            watch: Arc::new(SessionWatch::new(self.inner.hub.clone(), self.inner.clock.clone())),
        });
        let mut sessions = self.sessions_write();
        if let Some(existing) = sessions.get(id) {
            if !self.is_expired(existing, now) {
                return Err(StoreError::SessionExists(id.to_string()));
            }
        }
        // Expired sessions not swept yet do not count; looked at only when full.
        if sessions.len() >= limits.max_sessions
            && sessions.values().filter(|s| !self.is_expired(s, now)).count() >= limits.max_sessions
        {
            return Err(exceeded(
                format_args!("cannot create session {}", clip(id)),
                "max_sessions",
                limits.max_sessions,
            ));
        }
        let replaced = sessions.insert(session.id.clone(), session.clone());
        drop(sessions);
        if let Some(old) = replaced {
            old.watch.close(wall, Source::Elixir);
        }
        Ok(info(&session, 0))
    }

    /// The session's description; counts as an access.
    pub fn get_session(&self, id: &str) -> Result<SessionInfo> {
        let s = self.session(id)?;
        let count = lock(&s.vars).by_id.len();
        Ok(info(&s, count))
    }

    /// Refreshes the session's idle timer; false if there is no live session `id`.
    pub fn touch_session(&self, id: &str) -> bool {
        self.session(id).is_ok()
    }

    /// Whether a live session `id` exists. Does not count as an access.
    pub fn session_exists(&self, id: &str) -> bool {
        let now = self.mono_us();
        self.sessions_read().get(id).is_some_and(|s| !self.is_expired(s, now))
    }

    /// Deletes a session and its variables; returns how many variables went with
    /// it, or `None` if there was no such session. Its watchers get
    /// `session_closed` with `source` as who closed it.
    pub fn delete_session(&self, id: &str, source: Source) -> Option<usize> {
        let removed = self.sessions_write().remove(id)?;
        removed.watch.close(self.now_us(), source);
        let count = lock(&removed.vars).by_id.len();
        Some(count)
    }

    /// Totals over the whole store.
    pub fn stats(&self) -> StoreStats {
        let counts = self.inner.hub.counts();
        StoreStats {
            sessions: self.list_sessions().len(),
            grpc_watchers: counts.grpc,
            elixir_watchers: counts.elixir,
            watchers_opened: counts.opened,
        }
    }

    /// Subscribes to changes of some variables of a session. Unknown
    /// identifiers, an empty list or an unknown session refuse the whole watch.
    /// The subscription ends when dropped, cancelled, or the session closes.
    pub fn watch(&self, session_id: &str, request: &WatchRequest, owner: Owner) -> Result<Subscription> {
        if request.identifiers.is_empty() && request.patterns.is_empty() {
            return Err(StoreError::InvalidArgument("watch at least one variable or pattern".into()));
        }
        let limits = self.limits();
        limits.check_batch("a watch", request.identifiers.len() + request.patterns.len())?;
        // Together, so matching one name costs at most max_pattern_bytes of pattern.
        let pattern_bytes = request.patterns.iter().map(String::len).sum();
        limits.check_pattern_bytes("the watch's patterns are", pattern_bytes)?;
        if request.patterns.iter().any(String::is_empty) {
            return Err(StoreError::InvalidArgument("a watch pattern must not be empty (use \"*\" for all)".into()));
        }
        // Compiled once: matched against the variables now, then kept by the hub for later ones.
        let globs: Vec<(Arc<str>, Glob)> =
            request.patterns.iter().map(|p| (Arc::from(p.as_str()), Glob::new(p))).collect();
        let session = self.session(session_id)?;
        let vars = lock(&session.vars);
        // since_versions may name a variable by id or by name, whichever the watch uses.
        let since_by_id: HashMap<Arc<str>, i64> = request
            .since_versions
            .iter()
            .filter_map(|(ident, v)| vars.get(ident).map(|var| (var.id.clone(), *v)))
            .collect();
        let mut ids = Vec::with_capacity(request.identifiers.len());
        let mut seen = HashMap::new();
        let mut initial = Vec::new();
        let named = request
            .identifiers
            .iter()
            .map(|ident| vars.get(ident).map(|var| (var, false)).ok_or_else(|| not_found(session_id, ident)));
        // Matched by a pattern: every variable now; later ones at their registration.
        let mut matched: Vec<&Variable> = if globs.is_empty() {
            Vec::new()
        } else {
            vars.by_id.values().filter(|v| globs.iter().any(|(_, g)| g.matches(&v.name))).collect()
        };
        // A fixed order (by name), so initial values come the same way every time.
        matched.sort_by(|a, b| a.name.cmp(&b.name));
        // A resuming client lists what it has seen; a matching variable it does
        // not list may have been registered while it was away, so it gets it.
        let resuming = !request.since_versions.is_empty();
        for found in named.chain(matched.into_iter().map(|var| Ok((var, true)))) {
            let (var, by_pattern) = found?;
            if seen.contains_key(&var.id) {
                continue;
            }
            ids.push(var.id.clone());
            let since = since_by_id.get(&var.id).copied();
            let wants_current = match since {
                Some(v) => var.version > v,
                None => request.include_initial || (by_pattern && resuming),
            };
            if wants_current {
                initial.push(Update {
                    kind: UpdateKind::InitialValue,
                    variable: Some(var.clone()),
                    source: var.source,
                    metadata: Arc::default(),
                    at_us: var.updated_at_us,
                    batch: None,
                    wire: Default::default(),
                });
            }
            // Changes up to the current version are in the initial value or
            // were already seen by the caller; only later ones are delivered.
            seen.insert(var.id.clone(), var.version);
        }
        // Subscribing under the variable lock: no write can slip in between.
        let sub = session.watch.subscribe(owner, ids, seen, initial, globs);
        drop(vars);
        Ok(sub)
    }

    /// Ids of the live sessions, sorted.
    pub fn list_sessions(&self) -> Vec<String> {
        let now = self.mono_us();
        let mut ids: Vec<String> =
            self.sessions_read().values().filter(|s| !self.is_expired(s, now)).map(|s| s.id.to_string()).collect();
        ids.sort();
        ids
    }

    /// Removes every expired session; returns their ids.
    pub fn sweep_expired(&self) -> Vec<String> {
        let now = self.mono_us();
        let expired: Vec<Arc<str>> =
            self.sessions_read().values().filter(|s| self.is_expired(s, now)).map(|s| s.id.clone()).collect();
        expired.iter().filter_map(|id| self.remove_if_expired(id)).map(|s| s.id.to_string()).collect()
    }

    /// Registers a variable; its version starts at 1.
    pub fn register_variable(&self, session_id: &str, new: NewVariable, source: Source) -> Result<Variable> {
        validate_name("variable name", &new.name)?;
        let limits = self.limits();
        limits.check_constraint_size(new.constraints.json_bytes())?;
        limits.check_metadata("the variable", new.metadata.iter())?;
        // Checked before parsing too: compiling a huge `pattern` is the expensive part.
        let constraints = Constraints::parse(new.ty, &new.constraints)?;
        limits.check_constraint_size(constraints.to_raw().json_bytes())?;
        let value = normalize(new.ty, new.value)?;
        limits.check_value_size(value.json_bytes())?;
        constraints.check(&value)?;
        let session = self.session(session_id)?;
        let mut vars = lock(&session.vars);
        if vars.by_name.contains_key(new.name.as_str()) {
            return Err(StoreError::VariableExists(new.name));
        }
        if vars.by_id.len() >= limits.max_variables_per_session {
            return Err(exceeded(
                format_args!("cannot register {} in session {}", clip(&new.name), clip(session_id)),
                "max_variables_per_session",
                limits.max_variables_per_session,
            ));
        }
        // Identifiers resolve to ids first, so a name equal to an id could
        // never be reached by name (and would shadow nothing, but confuse).
        if vars.by_id.contains_key(new.name.as_str()) {
            return Err(StoreError::InvalidArgument(format!(
                "variable name {} is the id of another variable in this session",
                clip(&new.name)
            )));
        }
        let id: Arc<str> = loop {
            let suffix = NEXT_VARIABLE_SUFFIX.fetch_add(1, Ordering::Relaxed);
            let id = format!("{ID_PREFIX}{}_{}{suffix}", new.name, *PROCESS_NONCE);
            // Nor may a new id be an existing name, which it would shadow.
            if !vars.by_name.contains_key(id.as_str()) {
                break Arc::from(id);
            }
        };
        let name: Arc<str> = Arc::from(new.name);
        let now = self.now_us();
        let variable = Variable {
            id: id.clone(),
            name: name.clone(),
            ty: new.ty,
            value: Arc::new(value),
            constraints: Arc::new(constraints),
            metadata: Arc::new(new.metadata),
            version: 1,
            source,
            created_at_us: now,
            updated_at_us: now,
        };
        vars.by_name.insert(name, id.clone());
        vars.by_id.insert(id, variable.clone());
        self.commit(&session, &vars, Committed::Registered { variable: variable.clone() });
        Ok(variable)
    }

    /// The variable with this id or name.
    pub fn get_variable(&self, session_id: &str, identifier: &str) -> Result<Variable> {
        let session = self.session(session_id)?;
        let vars = lock(&session.vars);
        vars.get(identifier).cloned().ok_or_else(|| not_found(session_id, identifier))
    }

    /// Whether the session has a variable with this id or name.
    pub fn has_variable(&self, session_id: &str, identifier: &str) -> Result<bool> {
        let session = self.session(session_id)?;
        let found = lock(&session.vars).get(identifier).is_some();
        Ok(found)
    }

    /// Sets a variable's value; returns its new version. Refused changes change nothing.
    pub fn update_variable(
        &self,
        session_id: &str,
        identifier: &str,
        value: impl Into<Input>,
        change: &Change,
    ) -> Result<i64> {
        let limits = self.limits();
        limits.check_metadata("the change", change.metadata.iter())?;
        let session = self.session(session_id)?;
        let mut vars = lock(&session.vars);
        let now = self.now_us();
        let (id, value) =
            prepare(&vars, &limits, session_id, identifier, value.into(), change.expected_version, &change.metadata)?;
        let version = apply(&mut vars, &id, value, change, now);
        self.commit(&session, &vars, Committed::Values { ids: &[id], change, at_us: now, atomic: false });
        Ok(version)
    }

    /// Looks up several variables at once: those found, keyed by the identifier
    /// asked for, and the identifiers not found.
    pub fn get_variables(&self, session_id: &str, identifiers: Vec<String>) -> Result<BatchGet> {
        self.limits().check_batch("a batch read", identifiers.len())?;
        let session = self.session(session_id)?;
        let vars = lock(&session.vars);
        let mut found = Vec::with_capacity(identifiers.len());
        let mut missing = Vec::new();
        for ident in identifiers {
            match vars.get(&ident) {
                Some(v) => found.push((ident, v.clone())),
                None => missing.push(ident),
            }
        }
        Ok(BatchGet { found, missing })
    }

    /// Sets several variables under one lock. With `atomic`, all are applied or
    /// none (and every offending key is reported); otherwise each valid key is
    /// applied and the rest reported. `change.expected_version` is ignored.
    pub fn update_variables(
        &self,
        session_id: &str,
        updates: Vec<(String, Input)>,
        atomic: bool,
        change: &Change,
    ) -> Result<BatchOutcome> {
        let limits = self.limits();
        limits.check_batch("a batch write", updates.len())?;
        limits.check_metadata("the change", change.metadata.iter())?;
        let session = self.session(session_id)?;
        let mut vars = lock(&session.vars);
        let now = self.now_us();
        let mut outcome = BatchOutcome { applied: Vec::new(), errors: Vec::new() };
        if atomic {
            let mut ready = Vec::with_capacity(updates.len());
            for (key, raw) in updates {
                match prepare(&vars, &limits, session_id, &key, raw, 0, &change.metadata) {
                    Ok((id, value)) => ready.push((key, id, value)),
                    Err(e) => outcome.errors.push((key, e)),
                }
            }
            if outcome.errors.is_empty() {
                let mut ids = Vec::with_capacity(ready.len());
                for (key, id, value) in ready {
                    let version = apply(&mut vars, &id, value, change, now);
                    outcome.applied.push((key, version));
                    ids.push(id);
                }
                self.commit(&session, &vars, Committed::Values { ids: &ids, change, at_us: now, atomic: true });
            }
        } else {
            let mut ids = Vec::new();
            for (key, raw) in updates {
                match prepare(&vars, &limits, session_id, &key, raw, 0, &change.metadata) {
                    Ok((id, value)) => {
                        let version = apply(&mut vars, &id, value, change, now);
                        outcome.applied.push((key, version));
                        ids.push(id);
                    }
                    Err(e) => outcome.errors.push((key, e)),
                }
            }
            self.commit(&session, &vars, Committed::Values { ids: &ids, change, at_us: now, atomic: false });
        }
        Ok(outcome)
    }

    /// The session's variables whose names match the glob `pattern` (all when
    /// `None` or empty), sorted by name. The variables are copied out under
    /// the session's lock (cheap: shared parts are reference-counted) and
    /// matched after it is released, so writers never wait for a scan.
    pub fn list_variables(&self, session_id: &str, pattern: Option<&str>) -> Result<Vec<Variable>> {
        let pattern = pattern.filter(|p| !p.is_empty());
        if let Some(p) = pattern {
            self.limits().check_pattern_bytes("the pattern is", p.len())?;
        }
        let glob = pattern.map(Glob::new);
        let session = self.session(session_id)?;
        let all: Vec<Variable> = lock(&session.vars).by_id.values().cloned().collect();
        let mut out: Vec<Variable> = match glob {
            Some(g) => all.into_iter().filter(|v| g.matches(&v.name)).collect(),
            None => all,
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a variable; its id is never reused.
    pub fn delete_variable(&self, session_id: &str, identifier: &str) -> Result<()> {
        let session = self.session(session_id)?;
        let mut vars = lock(&session.vars);
        let id = vars.resolve(identifier).ok_or_else(|| not_found(session_id, identifier))?;
        if let Some(var) = vars.by_id.remove(&id) {
            vars.by_name.remove(&var.name);
            self.commit(&session, &vars, Committed::Deleted { variable: var, at_us: self.now_us() });
        }
        Ok(())
    }
}

fn lock(m: &Mutex<Vars>) -> MutexGuard<'_, Vars> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn info(s: &Session, variable_count: usize) -> SessionInfo {
    SessionInfo {
        id: s.id.to_string(),
        metadata: s.metadata.clone(),
        created_at_us: s.created_at_us,
        last_accessed_at_us: s.last_access_wall_us.load(Ordering::Relaxed) as i64,
        ttl: s.ttl,
        variable_count,
        watcher_count: s.watch.count(),
    }
}

fn not_found(session_id: &str, identifier: &str) -> StoreError {
    StoreError::VariableNotFound { session_id: session_id.into(), identifier: identifier.into() }
}

/// Checks that `change`'s metadata merged into `var`'s stays within the limits.
fn check_merged_metadata(limits: &Limits, var: &Variable, change: &Metadata) -> Result<()> {
    if change.is_empty() {
        return Ok(());
    }
    let mut entries = var.metadata.len();
    let mut bytes: usize = var.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    for (k, v) in change {
        match var.metadata.get(k) {
            Some(old) => bytes = bytes - old.len() + v.len(),
            None => {
                entries += 1;
                bytes += k.len() + v.len();
            }
        }
    }
    limits.check_metadata_size(|| format!("variable {} would have", clip(&var.name)), entries, bytes)
}

/// Every check of a write, without changing anything: resolves the variable,
/// checks the expected version, the sizes, normalizes the value and checks constraints.
fn prepare(
    vars: &Vars,
    limits: &Limits,
    session_id: &str,
    identifier: &str,
    input: Input,
    expected_version: i64,
    metadata: &Metadata,
) -> Result<(Arc<str>, Value)> {
    let id = vars.resolve(identifier).ok_or_else(|| not_found(session_id, identifier))?;
    let var = &vars.by_id[&id];
    if let Some(declared) = input.declared.filter(|t| *t != var.ty) {
        return Err(StoreError::InvalidArgument(format!(
            "the value is declared as {declared} but variable {:?} is of type {}",
            var.name, var.ty
        )));
    }
    let raw = input.value?;
    if expected_version != 0 && expected_version != var.version {
        return Err(StoreError::VersionConflict { expected: expected_version, current: var.version });
    }
    let value = normalize(var.ty, raw).map_err(|e| in_variable(e, &var.name))?;
    limits.check_value_size(value.json_bytes())?;
    var.constraints.check(&value).map_err(|e| in_variable(e, &var.name))?;
    check_merged_metadata(limits, var, metadata)?;
    Ok((id, value))
}

fn in_variable(e: StoreError, name: &str) -> StoreError {
    match e {
        StoreError::InvalidValue(m) => StoreError::InvalidValue(format!("variable {name:?}: {m}")),
        other => other,
    }
}

/// The metadata watchers see with a change: one shared copy per write call,
/// and no allocation at all for the usual empty metadata.
fn change_metadata(change: &Change) -> Arc<Metadata> {
    static EMPTY: once_cell::sync::Lazy<Arc<Metadata>> = once_cell::sync::Lazy::new(Arc::default);
    if change.metadata.is_empty() {
        EMPTY.clone()
    } else {
        Arc::new(change.metadata.clone())
    }
}

/// Applies a prepared write; cannot fail.
fn apply(vars: &mut Vars, id: &Arc<str>, value: Value, change: &Change, now: i64) -> i64 {
    let var = vars.by_id.get_mut(id).expect("prepared id is present under the same lock");
    var.value = Arc::new(value);
    if !change.metadata.is_empty() {
        let mut merged = (*var.metadata).clone();
        merged.extend(change.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        var.metadata = Arc::new(merged);
    }
    var.version += 1;
    var.source = change.source;
    var.updated_at_us = now;
    var.version
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod watch_tests;
