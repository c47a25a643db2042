//! The Rustler NIF of the Snakepit bridge: `Elixir.Snakepit.Bridge.Native`.
//!
//! Each NIF decodes its terms, calls `snakepit_core` once, and encodes the
//! result; no logic of the store lives here. Expected failures return
//! `{:error, reason}`, the reason's atom being the core's `StoreError::kind()`
//! (`convert::reason` gives the shapes); a term of the wrong shape raises
//! `ArgumentError` (the Elixir modules check shapes first and name the bad
//! argument). Rustler turns a panic into an Erlang error, so none crosses the
//! boundary as a crash.
//!
//! What is too heavy for a normal scheduler is decided here alone:
//! `session_store`'s `HEAVY`, answered as `:dirty` (see that module).
//!
//! Rust modules mirror the Elixir modules they serve: `session_store` for
//! `Snakepit.Bridge.SessionStore`, `server` for `Snakepit.Bridge.Server`, `watch` for the watch half of
//! `SessionStore`, `cluster` for `Snakepit.Bridge.Cluster` (serving sessions
//! another node owns, see that module); `log` sends the core's `tracing` events to Logger through
//! the server that started last.

use once_cell::sync::Lazy;
use snakepit_core::Store;

mod atoms;
mod cluster;
mod convert;
mod log;
mod server;
mod session_store;
mod watch;

/// The one store of this BEAM: every server and every Elixir call shares it.
pub(crate) static STORE: Lazy<Store> = Lazy::new(Store::new);

rustler::init!("Elixir.Snakepit.Bridge.Native");
