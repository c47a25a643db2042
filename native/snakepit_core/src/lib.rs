//! The core of the Snakepit bridge: everything but the BEAM.
//!
//! # Layout
//! - [`value`]: the eight variable types, raw input values and normalisation.
//! - [`constraints`]: per-type constraints, parsed at registration, checked on writes.
//! - [`limits`]: what one caller can make the store hold or compute, and their defaults.
//! - [`model`]: what the store and the watch hub share: `Variable`, `Source`,
//!   `Metadata`, `Update`, `UpdateKind`.
//! - [`store`]: sessions and typed, versioned variables behind a cheap `Clone`
//!   handle; every committed change leaves through one commit point to the hub.
//! - [`watch`]: subscriptions, coalescing and fan-out (the dispatcher thread);
//!   knows the model and the clock, never the store.
//! - [`wire`]: protobuf ⇄ store conversions (values in `Any`, timestamps, statuses).
//! - [`service`]: the tonic `BridgeService` over a store.
//! - [`forward`]: the [`forward::Forwarder`] trait through which the service
//!   sends calls about sessions another node owns (the NIF implements it).
//! - [`net`]: guarded accept loop: connection cap, handshake and idle deadlines, fd limit.
//! - [`auth`]: the server token, session tokens, and which addresses need TLS and a token.
//! - [`server`]: `serve(store, listener, config, shutdown)` and `RunningServer`.
//! - [`proto`]: code generated from `proto/snakepit_bridge.proto`, with [`codec`]
//!   (prost's, but a request that does not decode is INVALID_ARGUMENT).
//!
//! Dependencies run one way: `server` → `service` → (`forward`, `store`, `wire`);
//! `wire` → (`model`, `store`); `store` → `watch` → `model` → (`value`,
//! `constraints`), and `store` uses `model` directly too. Below all of them
//! sit `limits` → `error`, `clock` and `glob`; `auth` stands alone.
//!
//! The NIF crate (`snakepit_nif`) and the `snakepit-bridge-server` binary are
//! thin doors over these modules.

pub mod auth;
pub mod clock;
pub mod codec;
pub mod constraints;
pub mod error;
pub mod forward;
pub mod glob;
pub mod limits;
pub mod model;
pub mod net;
pub mod server;
pub mod service;
pub mod store;
pub mod value;
pub mod watch;
pub mod wire;

/// Messages and the service generated from `proto/snakepit_bridge.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("snakepit.bridge");
    // The service's server side, generated apart (see build.rs).
    include!(concat!(env!("OUT_DIR"), "/server/snakepit.bridge.rs"));
}

/// The encoded `FileDescriptorSet` of `proto/snakepit_bridge.proto` and the
/// well-known types it imports; what server reflection serves.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("snakepit_bridge_descriptor");

pub use error::StoreError;
pub use store::Store;
