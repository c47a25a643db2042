//! The store's limits: how much one caller can make it hold or compute.
//!
//! Every limit has a default that leaves a BEAM node room to breathe, and
//! each is a named value tests can shrink. Going over one is
//! [`StoreError::ResourceExhausted`], whose message names the limit and its
//! value, and changes nothing.
//!
//! One invariant ties them to the gRPC message size: anything the store
//! accepts can be read back and watched through every door. A variable's
//! biggest message (a `VariableUpdate` carrying the variable, its metadata,
//! its constraints and the change's metadata) must fit in a message, so
//! `max_value_bytes + 2 × max_metadata_bytes + max_constraint_bytes + ENVELOPE_BYTES`
//! may not exceed the message limit ([`Limits::check_fits`]).

use crate::error::{Result, StoreError};

/// The gRPC message limit the defaults are sized for (each way).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Room in a message for everything but the value, the metadata and the
/// constraints: ids, names (at most 256 bytes each), type URLs, timestamps,
/// field tags and lengths.
pub const ENVELOPE_BYTES: usize = 16 * 1024;

/// The smallest message limit a server accepts.
pub const MIN_MESSAGE_BYTES: usize = 64 * 1024;

/// A float's longest JSON form plus its separator ("-2.2250738585072014e-308,").
pub const JSON_BYTES_PER_NUMBER: usize = 25;

/// Limits of one store. `Copy`, so a write reads them once without holding a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live sessions in the store.
    pub max_sessions: usize,
    /// Variables in one session.
    pub max_variables_per_session: usize,
    /// A value's size on the wire, measured as its JSON (the largest form it
    /// can travel in): strings by their escaped length, embeddings and
    /// tensors at [`JSON_BYTES_PER_NUMBER`] bytes an element.
    pub max_value_bytes: usize,
    /// Entries in the metadata of one session, variable or change.
    pub max_metadata_entries: usize,
    /// Bytes of keys and values in the metadata of one session, variable or change.
    pub max_metadata_bytes: usize,
    /// Size of a variable's constraints as JSON; also bounds a `pattern`
    /// constraint's source (its compiled form has a limit of its own).
    pub max_constraint_bytes: usize,
    /// Identifiers in one batch read or write.
    pub max_batch: usize,
    /// Length of a ListVariables glob pattern.
    pub max_pattern_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::for_message_bytes(DEFAULT_MAX_MESSAGE_BYTES)
    }
}

impl Limits {
    /// The defaults, with values as large as a message of `max_message_bytes`
    /// allows (never less than 1 KiB, which then does not fit: see [`Limits::check_fits`]).
    /// Under a small message limit, metadata and constraints get a
    /// sixteenth of it each, so values keep most of the room.
    pub fn for_message_bytes(max_message_bytes: usize) -> Limits {
        let side = (max_message_bytes / 16).min(64 * 1024);
        let mut limits = Limits {
            max_sessions: 10_000,
            max_variables_per_session: 10_000,
            max_value_bytes: 0,
            max_metadata_entries: 256,
            max_metadata_bytes: side,
            max_constraint_bytes: side,
            max_batch: 10_000,
            max_pattern_bytes: 1024,
        };
        limits.max_value_bytes = limits.value_room(max_message_bytes);
        limits
    }

    /// The largest value the other limits leave room for in a message of
    /// `max_message_bytes` (never less than 1 KiB): the value limit's default
    /// wherever it is not given.
    pub fn value_room(&self, max_message_bytes: usize) -> usize {
        max_message_bytes.saturating_sub(self.reserved_bytes()).max(1024)
    }

    /// What a message must hold besides the value.
    pub fn reserved_bytes(&self) -> usize {
        self.max_metadata_bytes
            .saturating_mul(2)
            .saturating_add(self.max_constraint_bytes)
            .saturating_add(ENVELOPE_BYTES)
    }

    /// Refuses a batch of more than `max_batch` identifiers; `what` names the batch.
    pub fn check_batch(&self, what: &str, len: usize) -> Result<()> {
        if len > self.max_batch {
            return Err(exceeded(format_args!("{what} names {len} identifiers"), "max_batch", self.max_batch));
        }
        Ok(())
    }

    /// Refuses a glob pattern (or a watch's patterns together) longer than
    /// `max_pattern_bytes`: matching costs time linear in the pattern.
    pub fn check_pattern_bytes(&self, what: &str, len: usize) -> Result<()> {
        if len > self.max_pattern_bytes {
            return Err(exceeded(format_args!("{what} {len} bytes long"), "max_pattern_bytes", self.max_pattern_bytes));
        }
        Ok(())
    }

    /// Refuses a value of more than `max_value_bytes` as JSON.
    pub fn check_value_size(&self, bytes: usize) -> Result<()> {
        if bytes > self.max_value_bytes {
            return Err(exceeded(
                format_args!("the value is {bytes} bytes as JSON"),
                "max_value_bytes",
                self.max_value_bytes,
            ));
        }
        Ok(())
    }

    /// Refuses constraints of more than `max_constraint_bytes` as JSON.
    pub fn check_constraint_size(&self, bytes: usize) -> Result<()> {
        if bytes > self.max_constraint_bytes {
            return Err(exceeded(
                format_args!("the constraints are {bytes} bytes as JSON"),
                "max_constraint_bytes",
                self.max_constraint_bytes,
            ));
        }
        Ok(())
    }

    /// Checks a metadata map against the entry and byte limits; `whose` names
    /// whose it is ("the session", "the change").
    pub fn check_metadata<'a>(
        &self,
        whose: &str,
        entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    ) -> Result<()> {
        let count = entries.len();
        let bytes = entries.map(|(k, v)| k.len() + v.len()).sum();
        self.check_metadata_size(|| format!("{whose} has"), count, bytes)
    }

    /// Checks metadata of `entries` entries and `bytes` bytes; `subject`
    /// makes the start of the message ("the session has", "variable \"x\"
    /// would have"), only when it is refused: writes call this every time.
    pub fn check_metadata_size(&self, subject: impl FnOnce() -> String, entries: usize, bytes: usize) -> Result<()> {
        if entries > self.max_metadata_entries {
            return Err(exceeded(
                format_args!("{} {entries} metadata entries", subject()),
                "max_metadata_entries",
                self.max_metadata_entries,
            ));
        }
        if bytes > self.max_metadata_bytes {
            return Err(exceeded(
                format_args!("{} {bytes} bytes of metadata", subject()),
                "max_metadata_bytes",
                self.max_metadata_bytes,
            ));
        }
        Ok(())
    }

    /// Checks that every limit is at least 1 and that the largest variable
    /// fits in a message of `max_message_bytes`; the error says which setting to change.
    pub fn check_fits(&self, max_message_bytes: usize) -> std::result::Result<(), String> {
        let named = [
            ("max_sessions", self.max_sessions),
            ("max_variables_per_session", self.max_variables_per_session),
            ("max_value_bytes", self.max_value_bytes),
            ("max_metadata_entries", self.max_metadata_entries),
            ("max_metadata_bytes", self.max_metadata_bytes),
            ("max_constraint_bytes", self.max_constraint_bytes),
            ("max_batch", self.max_batch),
            ("max_pattern_bytes", self.max_pattern_bytes),
        ];
        if let Some((name, _)) = named.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{name} must be at least 1"));
        }
        let needed = self.max_value_bytes.saturating_add(self.reserved_bytes());
        if needed > max_message_bytes {
            return Err(format!(
                "max_value_bytes {} does not fit in max_message_bytes {max_message_bytes}: a variable's \
                 message also carries up to {} bytes of metadata, constraints and envelope; lower \
                 max_value_bytes to at most {} or raise max_message_bytes",
                self.max_value_bytes,
                self.reserved_bytes(),
                max_message_bytes.saturating_sub(self.reserved_bytes())
            ));
        }
        Ok(())
    }
}

/// The error for going over `limit` (its setting's name) of `value`.
pub fn exceeded(what: impl std::fmt::Display, limit: &str, value: usize) -> StoreError {
    StoreError::ResourceExhausted(format!("{what}: over the limit {limit} = {value}"))
}

/// Longest session id or variable name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_the_default_message_size() {
        let l = Limits::default();
        assert!(l.check_fits(DEFAULT_MAX_MESSAGE_BYTES).is_ok());
        assert_eq!(l.max_value_bytes + l.reserved_bytes(), DEFAULT_MAX_MESSAGE_BYTES);
    }

    #[test]
    fn a_value_limit_that_cannot_be_read_back_is_refused() {
        let l = Limits { max_value_bytes: DEFAULT_MAX_MESSAGE_BYTES, ..Limits::default() };
        let e = l.check_fits(DEFAULT_MAX_MESSAGE_BYTES).unwrap_err();
        assert!(e.contains("does not fit in max_message_bytes 4194304"), "{e}");
        let small = Limits::for_message_bytes(MIN_MESSAGE_BYTES);
        assert!(small.check_fits(MIN_MESSAGE_BYTES).is_ok());
        assert!(small.max_value_bytes > MIN_MESSAGE_BYTES / 2, "{small:?}");
        let zero = Limits { max_batch: 0, ..Limits::default() };
        assert_eq!(zero.check_fits(DEFAULT_MAX_MESSAGE_BYTES).unwrap_err(), "max_batch must be at least 1");
    }
}
