//! NIFs behind `Snakepit.Bridge.Server`: the tokio runtime and the listeners.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::OnceCell;
use rustler::{Atom, Encoder, Env, NifMap, ResourceArc, Term};
use snakepit_core::auth::Secret;
use snakepit_core::limits::Limits;
use snakepit_core::server::{RunningServer, ServerConfig, Tls};
use snakepit_core::service::ServiceConfig;
use snakepit_core::StoreError;
use tokio::runtime::Runtime;

use crate::atoms;
use crate::cluster;
use crate::convert;
use crate::log;
use crate::STORE;

rustler::atoms! {
    // Only between this NIF and Snakepit.Bridge.Server, which retries a
    // remembered port on it and reports `:invalid_argument` to its callers.
    addr_in_use,
    // `server_session_token` on a server started with `auth: false`.
    failed_precondition,
}

/// Created on first use, never in the NIF `load` callback: `load` also runs
/// inside the compiler's VM, which must not start threads it cannot stop.
static RUNTIME: OnceCell<Runtime> = OnceCell::new();

pub(crate) fn runtime() -> std::io::Result<&'static Runtime> {
    RUNTIME.get_or_try_init(|| {
        tokio::runtime::Builder::new_multi_thread().thread_name("snakepit-bridge").enable_all().build()
    })
}

/// A running server, owned by the Elixir process that started it. If that
/// process dies without stopping it (say it was killed), the garbage
/// collector's drop asks it to stop, which closes the listener at once.
pub struct ServerResource {
    server: Mutex<Option<RunningServer>>,
    port: u16,
    /// The server's token; `None` when it runs without auth.
    secret: Option<Secret>,
    /// Its registration as the receiver of log events (see `log`).
    log_receiver: u64,
}

#[rustler::resource_impl]
impl rustler::Resource for ServerResource {}

impl Drop for ServerResource {
    fn drop(&mut self) {
        log::unregister(self.log_receiver);
    }
}

/// Options from `Snakepit.Bridge.Server`, whose types it has checked.
///
/// Every key is present; `nil` (`None`) means "the default", which lives in
/// one place: `ServerConfig::default()` and `Limits::for_message_bytes`.
#[derive(NifMap)]
pub struct StartOptions {
    session_ttl_ms: u64,
    max_message_bytes: u64,
    /// 0 turns keepalive pings off.
    keepalive_interval_ms: u64,
    max_connections: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    /// `Some(0)` keeps idle connections forever.
    idle_timeout_ms: Option<u64>,
    max_watchers_per_connection: Option<u64>,
    max_watchers: Option<u64>,
    max_sessions: Option<u64>,
    max_variables_per_session: Option<u64>,
    /// `None` derives it from `max_message_bytes` (what a message leaves room for).
    max_value_bytes: Option<u64>,
    max_metadata_entries: Option<u64>,
    max_metadata_bytes: Option<u64>,
    max_constraint_bytes: Option<u64>,
    max_batch: Option<u64>,
    max_pattern_bytes: Option<u64>,
    /// The server token; `None` generates one (unless `auth` is false).
    token: Option<String>,
    /// `false`: no token at all (the core refuses that off loopback unless `allow_insecure`).
    auth: bool,
    allow_insecure: bool,
    tls: Option<TlsOptions>,
    /// `:debug`, `:info`, `:warning` or `:error`: the most verbose events sent to Logger.
    log_level: Atom,
}

/// PEM files to serve TLS with.
#[derive(NifMap)]
pub struct TlsOptions {
    cert_file: String,
    key_file: String,
    /// Set: clients must present a certificate signed by a CA in this file.
    client_ca_file: Option<String>,
}

/// usize from a u64 the caller sent; saturates on 32-bit targets, where
/// anything that large is "no limit" in practice.
fn size(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

impl StartOptions {
    /// The server's settings: the defaults, overridden by what was given.
    /// Fails (saying why) on a token too weak or a TLS file that cannot be read.
    fn config(&self) -> Result<ServerConfig, String> {
        let defaults = ServerConfig::default();
        let max_message_bytes = size(self.max_message_bytes);
        let base = Limits::for_message_bytes(max_message_bytes);
        let or = |given: Option<u64>, default: usize| given.map(size).unwrap_or(default);
        let limits = Limits {
            max_sessions: or(self.max_sessions, base.max_sessions),
            max_variables_per_session: or(self.max_variables_per_session, base.max_variables_per_session),
            max_value_bytes: 0,
            max_metadata_entries: or(self.max_metadata_entries, base.max_metadata_entries),
            max_metadata_bytes: or(self.max_metadata_bytes, base.max_metadata_bytes),
            max_constraint_bytes: or(self.max_constraint_bytes, base.max_constraint_bytes),
            max_batch: or(self.max_batch, base.max_batch),
            max_pattern_bytes: or(self.max_pattern_bytes, base.max_pattern_bytes),
        };
        // Derived after the others: bigger metadata or constraint limits leave
        // less room in a message for the value (the same rule as the defaults).
        let limits =
            Limits { max_value_bytes: or(self.max_value_bytes, limits.value_room(max_message_bytes)), ..limits };
        let millis = Duration::from_millis;
        let auth = match (&self.token, self.auth) {
            (_, false) => None,
            (Some(token), true) => Some(Secret::new(token.as_str())?),
            (None, true) => Some(Secret::generate()),
        };
        let tls = match &self.tls {
            None => None,
            Some(t) => Some(Tls::from_files(&t.cert_file, &t.key_file, t.client_ca_file.as_deref())?),
        };
        Ok(ServerConfig {
            session_ttl: millis(self.session_ttl_ms),
            max_message_bytes,
            keepalive_interval: (self.keepalive_interval_ms > 0).then(|| millis(self.keepalive_interval_ms)),
            max_connections: or(self.max_connections, defaults.max_connections),
            handshake_timeout: self.handshake_timeout_ms.map(millis).unwrap_or(defaults.handshake_timeout),
            idle_timeout: match self.idle_timeout_ms {
                None => defaults.idle_timeout,
                Some(0) => None,
                Some(ms) => Some(millis(ms)),
            },
            max_watchers_per_connection: or(self.max_watchers_per_connection, defaults.max_watchers_per_connection),
            max_watchers: or(self.max_watchers, defaults.max_watchers),
            limits,
            auth,
            tls,
            allow_insecure: self.allow_insecure,
            ..defaults
        })
    }
}

fn invalid<'a>(env: Env<'a>, message: String) -> Term<'a> {
    convert::error(env, &StoreError::InvalidArgument(message))
}

fn io_error<'a>(env: Env<'a>, what: &str, e: std::io::Error) -> Term<'a> {
    invalid(env, format!("{what}: {e}"))
}

#[rustler::nif(schedule = "DirtyIo")]
fn server_start<'a>(env: Env<'a>, host: &str, port: u16, opts: StartOptions) -> Term<'a> {
    // Checked before binding, so a bad setting never holds a port.
    let mut config = match opts.config() {
        Ok(config) => config,
        Err(message) => return invalid(env, message),
    };
    if let Err(message) = config.validate() {
        return invalid(env, message);
    }
    let Some(log_level) = log::level_from_atom(opts.log_level) else {
        return invalid(env, "log_level must be :debug, :info, :warning or :error".into());
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return io_error(env, "cannot start the tokio runtime", e),
    };
    let listener = match TcpListener::bind((host, port)) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let message = format!("cannot listen on {host}:{port}: {e}");
            return (atoms::error(), (addr_in_use(), message)).encode(env);
        }
        Err(e) => return io_error(env, &format!("cannot listen on {host}:{port}"), e),
    };
    let limits = config.limits;
    let secret = config.auth.clone();
    // Calls about sessions another node owns go to the cluster process, when one is registered.
    config.forwarder = Some(cluster::forwarder());
    let service_config = ServiceConfig::from(&config);
    // Before the start, so what the server logs as it starts reaches this process.
    let log_receiver = log::register(env.pid(), log_level);
    match RunningServer::start(rt.handle(), STORE.clone(), listener, config) {
        Ok(server) => {
            // `serve` applies them too, but on the runtime, a moment later:
            // set here, they hold for every call made after this returns.
            STORE.set_limits(limits);
            // Calls other nodes forward here are served with this server's settings.
            cluster::use_config(service_config);
            let port = server.local_addr().port();
            let res = ResourceArc::new(ServerResource { server: Mutex::new(Some(server)), port, secret, log_receiver });
            (atoms::ok(), res).encode(env)
        }
        Err(e) => {
            log::unregister(log_receiver);
            if e.kind() == std::io::ErrorKind::InvalidInput {
                // The core's refusal (an exposed address, a bad TLS file): its message says it all.
                return invalid(env, e.to_string());
            }
            io_error(env, "cannot serve", e)
        }
    }
}

#[rustler::nif]
fn server_port(res: ResourceArc<ServerResource>) -> u16 {
    res.port
}

/// Stops the server, waiting up to `grace_ms` for in-flight calls. Returns
/// whether it finished in time; stopping a stopped server is `true`. The
/// listener closes as soon as the stop begins, not after the grace period.
#[rustler::nif(schedule = "DirtyIo")]
fn server_stop(res: ResourceArc<ServerResource>, grace_ms: u64) -> bool {
    let server = res.server.lock().unwrap_or_else(|e| e.into_inner()).take();
    log::unregister(res.log_receiver);
    server.is_none_or(|s| s.stop(Duration::from_millis(grace_ms)))
}

/// The server token, or `nil` for a server without auth.
#[rustler::nif]
fn server_token(res: ResourceArc<ServerResource>) -> Option<String> {
    res.secret.as_ref().map(|s| s.token().to_string())
}

/// `{:ok, token}`: a token that grants `session_id` only (the session need
/// not exist yet); `{:error, {:failed_precondition, message}}` without auth.
#[rustler::nif]
fn server_session_token<'a>(env: Env<'a>, res: ResourceArc<ServerResource>, session_id: &str) -> Term<'a> {
    match &res.secret {
        Some(secret) => (atoms::ok(), secret.session_token(session_id)).encode(env),
        None => {
            let message = "this server runs without auth (auth: false): it has no tokens";
            (atoms::error(), (failed_precondition(), message)).encode(env)
        }
    }
}
