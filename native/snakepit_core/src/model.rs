//! The data the store and the watch hub share: variables, who changed them,
//! and the updates watchers receive. Depends on nothing else in the crate
//! but the value and constraint types a variable holds.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use prost::bytes::Bytes;

use crate::constraints::Constraints;
use crate::value::{Value, VarType};

/// String-to-string metadata, as sessions, variables and updates carry it.
pub type Metadata = BTreeMap<String, String>;

/// Which side made a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Elixir,
    Python,
}

impl Source {
    /// `"elixir"` or `"python"`, as `update_source` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Elixir => "elixir",
            Source::Python => "python",
        }
    }
}

/// A snapshot of one variable. Cloning is cheap: the big parts are shared.
#[derive(Debug, Clone)]
pub struct Variable {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub ty: VarType,
    pub value: Arc<Value>,
    pub constraints: Arc<Constraints>,
    pub metadata: Arc<Metadata>,
    /// 1 at registration, +1 on every change.
    pub version: i64,
    /// Who made the last change.
    pub source: Source,
    pub created_at_us: i64,
    pub updated_at_us: i64,
}

/// What an update says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateKind {
    /// The value when the watch started (or resumed).
    InitialValue,
    /// A change made after the watch started.
    ValueChange,
    /// A variable a pattern of the watch matches was registered after the
    /// watch started; carries its first value.
    Registered,
    /// The variable was deleted; nothing more comes for it.
    Deleted,
    /// The session was cleaned up or expired; this is the last update.
    SessionClosed,
}

impl UpdateKind {
    /// The wire name: `initial_value`, `value_change`, `registered`, `deleted`, `session_closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateKind::InitialValue => "initial_value",
            UpdateKind::ValueChange => "value_change",
            UpdateKind::Registered => "registered",
            UpdateKind::Deleted => "deleted",
            UpdateKind::SessionClosed => "session_closed",
        }
    }
}

/// One update delivered to a watcher.
#[derive(Debug, Clone)]
pub struct Update {
    pub kind: UpdateKind,
    /// The variable as of this update; `None` only for `SessionClosed`.
    pub variable: Option<Variable>,
    /// Who made the change (for initial values: who made the last one).
    pub source: Source,
    /// Metadata sent with the change itself.
    pub metadata: Arc<Metadata>,
    /// When the change was made, Unix microseconds.
    pub at_us: i64,
    /// Changes of one atomic batch share a batch number.
    pub batch: Option<u64>,
    /// Its gRPC encoding, made by the first stream that sends it.
    pub wire: WireCache,
}

/// An update's `VariableUpdate` as encoded bytes, one per encoding (JSON
/// only, or binary arrays): made once, by the first gRPC stream that sends
/// the update, and shared by every other stream sending the same one. A
/// clone starts empty, since a clone may be changed (its kind, say).
#[derive(Default)]
pub struct WireCache([OnceLock<Bytes>; 2]);

impl WireCache {
    /// The bytes for encoding number `slot` (0 or 1), made by `encode` the first time.
    pub(crate) fn get_or_init(&self, slot: usize, encode: impl FnOnce() -> Bytes) -> Bytes {
        self.0[slot].get_or_init(encode).clone()
    }
}

impl Clone for WireCache {
    fn clone(&self) -> Self {
        WireCache::default()
    }
}

impl std::fmt::Debug for WireCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WireCache")
    }
}

impl Update {
    pub(crate) fn key(&self) -> &str {
        self.variable.as_ref().map_or("", |v| &v.id)
    }

    /// The key as a shared string: a reference count, not an allocation.
    pub(crate) fn key_arc(&self) -> Arc<str> {
        self.variable.as_ref().map_or_else(|| Arc::from(""), |v| v.id.clone())
    }

    pub(crate) fn version(&self) -> i64 {
        self.variable.as_ref().map_or(0, |v| v.version)
    }
}
