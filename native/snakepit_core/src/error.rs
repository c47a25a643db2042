//! The one error type of the store, shared by every door.
//!
//! Each variant has a stable `kind()` — the Elixir door makes it the atom of
//! `{:error, {kind, ...}}` (a missing variable, the one exception, is the bare
//! `:not_found`), the gRPC door sends it as the trailing metadata
//! `snakepit-error-kind` with a status code (`From<StoreError> for
//! tonic::Status`, in `wire`) — and a message a person can act on.

use std::fmt;

/// Why a store operation was refused. A refused operation changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// No live session has this id (never created, deleted, or expired).
    SessionNotFound(String),
    /// The session has no variable with this id or name.
    VariableNotFound { session_id: String, identifier: String },
    /// A session with this id already exists.
    SessionExists(String),
    /// A variable with this name already exists in the session.
    VariableExists(String),
    /// A session id, variable name or pattern is malformed.
    InvalidArgument(String),
    /// The type name is not one of the eight known types.
    InvalidType(String),
    /// The value does not fit the variable's type or violates a constraint.
    InvalidValue(String),
    /// The constraints themselves are malformed for the type.
    InvalidConstraints(String),
    /// `expected_version` did not match the variable's current version.
    VersionConflict { expected: i64, current: i64 },
    /// A configured limit would be exceeded.
    ResourceExhausted(String),
}

impl StoreError {
    /// A stable snake_case name for the failure, the same at every door.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::SessionNotFound(_) => "session_not_found",
            StoreError::VariableNotFound { .. } => "variable_not_found",
            StoreError::SessionExists(_) | StoreError::VariableExists(_) => "already_exists",
            StoreError::InvalidArgument(_) => "invalid_argument",
            StoreError::InvalidType(_) => "invalid_type",
            StoreError::InvalidValue(_) => "invalid_value",
            StoreError::InvalidConstraints(_) => "invalid_constraints",
            StoreError::VersionConflict { .. } => "version_conflict",
            StoreError::ResourceExhausted(_) => "resource_exhausted",
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Ids and names are echoed clipped: a lookup may name anything.
            StoreError::SessionNotFound(id) => write!(f, "session {} not found", clip(id)),
            StoreError::VariableNotFound { session_id, identifier } => {
                write!(f, "variable {} not found in session {}", clip(identifier), clip(session_id))
            }
            StoreError::SessionExists(id) => write!(f, "session {} already exists", clip(id)),
            StoreError::VariableExists(name) => {
                write!(f, "a variable named {} already exists in this session", clip(name))
            }
            StoreError::InvalidArgument(m)
            | StoreError::InvalidType(m)
            | StoreError::InvalidValue(m)
            | StoreError::InvalidConstraints(m)
            | StoreError::ResourceExhausted(m) => f.write_str(m),
            StoreError::VersionConflict { expected, current } => {
                write!(f, "version conflict: expected version {expected}, current version is {current}")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// Shorthand for results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Most bytes of one input a message echoes: every valid name or id fits.
pub const ECHO_BYTES: usize = 256;

/// Shortens text a message echoes back to a caller: up to [`ECHO_BYTES`],
/// then how long it really was. Keeps error messages (and gRPC trailers,
/// which have a size limit of their own) small whatever was sent.
pub fn clip(text: &str) -> String {
    match cut_point(text) {
        None => format!("{text:?}"),
        Some(cut) => format!("{:?}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

/// Where to cut `text` to at most [`ECHO_BYTES`], on a character boundary; `None` if it fits.
fn cut_point(text: &str) -> Option<usize> {
    (text.len() > ECHO_BYTES).then(|| (0..=ECHO_BYTES).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0))
}

/// [`clip`] for anything printable with `{:?}` (shapes, lists), without the quotes.
pub fn clip_debug<T: std::fmt::Debug + ?Sized>(value: &T) -> String {
    let text = format!("{value:?}");
    match cut_point(&text) {
        None => text,
        Some(cut) => format!("{}… ({} bytes in all)", &text[..cut], text.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text() {
        assert_eq!(clip("abc"), "\"abc\"");
        let name = "n".repeat(ECHO_BYTES);
        assert_eq!(clip(&name), format!("{name:?}"));
        let long = "é".repeat(1000);
        let c = clip(&long);
        assert!(c.len() < ECHO_BYTES + 40 && c.ends_with("(2000 bytes in all)"), "{c}");
    }

    #[test]
    fn every_valid_name_is_echoed_whole() {
        assert_eq!(ECHO_BYTES, crate::limits::MAX_NAME_BYTES);
    }
}
