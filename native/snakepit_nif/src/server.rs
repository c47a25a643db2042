//! NIFs behind `Snakepit.Bridge.Server`: the tokio runtime and the listeners.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use once_cell::sync::OnceCell;
use rustler::{Encoder, Env, NifMap, ResourceArc, Term};
use snakepit_core::server::{RunningServer, ServerConfig};
use tokio::runtime::Runtime;

use crate::atoms;
use crate::STORE;

/// Created on first use, never in the NIF `load` callback: `load` also runs
/// inside the compiler's VM, which must not start threads it cannot stop.
static RUNTIME: OnceCell<Runtime> = OnceCell::new();

pub(crate) fn runtime() -> std::io::Result<&'static Runtime> {
    RUNTIME.get_or_try_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("snakepit-bridge")
            .enable_all()
            .build()
    })
}

/// A running server, owned by the Elixir process that started it. If that
/// process dies without stopping it, the garbage collector's drop stops it.
pub struct ServerResource {
    server: Mutex<Option<RunningServer>>,
    port: u16,
}

#[rustler::resource_impl]
impl rustler::Resource for ServerResource {}

/// Options from `Snakepit.Bridge.Server`, all already validated there.
#[derive(NifMap)]
pub struct StartOptions {
    session_ttl_ms: u64,
    max_message_bytes: u64,
    /// 0 turns keepalive pings off.
    keepalive_interval_ms: u64,
}

fn io_error<'a>(env: Env<'a>, what: &str, e: std::io::Error) -> Term<'a> {
    (atoms::error(), (atoms::invalid_argument(), format!("{what}: {e}"))).encode(env)
}

#[rustler::nif(schedule = "DirtyIo")]
fn server_start<'a>(env: Env<'a>, host: &str, port: u16, opts: StartOptions) -> Term<'a> {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return io_error(env, "cannot start the tokio runtime", e),
    };
    let listener = match TcpListener::bind((host, port)) {
        Ok(l) => l,
        Err(e) => return io_error(env, &format!("cannot listen on {host}:{port}"), e),
    };
    let config = ServerConfig {
        session_ttl: Duration::from_millis(opts.session_ttl_ms),
        max_message_bytes: opts.max_message_bytes as usize,
        keepalive_interval: (opts.keepalive_interval_ms > 0)
            .then(|| Duration::from_millis(opts.keepalive_interval_ms)),
        ..ServerConfig::default()
    };
    match RunningServer::start(rt.handle(), STORE.clone(), listener, config) {
        Ok(server) => {
            let port = server.local_addr().port();
            let res = ResourceArc::new(ServerResource { server: Mutex::new(Some(server)), port });
            (atoms::ok(), res).encode(env)
        }
        Err(e) => io_error(env, "cannot serve", e),
    }
}

#[rustler::nif]
fn server_port(res: ResourceArc<ServerResource>) -> u16 {
    res.port
}

/// Stops the server, waiting up to `grace_ms` for in-flight calls. Returns
/// whether it finished in time; stopping a stopped server is `true`.
#[rustler::nif(schedule = "DirtyIo")]
fn server_stop(res: ResourceArc<ServerResource>, grace_ms: u64) -> bool {
    let server = res.server.lock().unwrap_or_else(|e| e.into_inner()).take();
    server.is_none_or(|s| s.stop(Duration::from_millis(grace_ms)))
}
