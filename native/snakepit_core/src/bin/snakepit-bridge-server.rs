//! The standalone Snakepit bridge server: the same core as the NIF, in its own
//! process, for Python-only use, tests and benchmarks.

use std::process::ExitCode;
use std::time::Duration;

use snakepit_core::limits::Limits;
use snakepit_core::server::{serve, ServerConfig};
use snakepit_core::Store;

const HELP: &str = "\
snakepit-bridge-server: serve the Snakepit bridge gRPC API from a standalone process

USAGE:
    snakepit-bridge-server [OPTIONS]

OPTIONS:
    --listen HOST:PORT          address to bind (default 127.0.0.1:50051; port 0 picks a free port)
    --session-ttl SECONDS       idle time after which a session expires (default 3600); a watched
                                session does not expire, and its idle time counts from when the
                                last watcher left
    --max-message-bytes BYTES   largest gRPC message accepted or sent, each way (default 4194304,
                                at least 65536)
    --keepalive-interval SECS   HTTP/2 keepalive ping interval; 0 turns pings off (default 30)
    --keepalive-timeout SECS    close a connection whose ping is unanswered this long (default 20)
    -h, --help                  print this help and exit
    -V, --version               print the version and exit

LIMITS (over one: RESOURCE_EXHAUSTED naming the limit, and nothing changes):
    --max-connections N         open connections at once; more are closed on accept (default 256)
    --handshake-timeout SECS    a connection must send the HTTP/2 preface within this (default 10)
    --idle-timeout SECS         close a connection with no call for this long; 0 never does,
                                which lets idle clients hold connections forever (default 300)
    --max-watchers-per-connection N   WatchVariables streams open on one connection (default 1024)
    --max-watchers N            WatchVariables streams open on the server (default 16384)
    --max-sessions N            live sessions (default 10000)
    --max-variables-per-session N     variables in one session (default 10000)
    --max-value-bytes N         a value's size as JSON (strings escaped, 25 bytes per number of an
                                embedding or tensor); default and maximum: max-message-bytes minus
                                room for metadata, constraints and envelope (3981312 by default)
    --max-metadata-entries N    metadata entries of a session, a variable or a change (default 256)
    --max-metadata-bytes N      metadata bytes of a session, a variable or a change (default 65536)
    --max-constraint-bytes N    a variable's constraints as JSON (default 65536)
    --max-batch N               identifiers in one batch read, batch write or watch (default 10000)
    --max-pattern-bytes N       length of a ListVariables pattern (default 1024)

Once it accepts connections it prints `listening on HOST:PORT` (the real bound port)
as its first line on stdout. SIGTERM or SIGINT stops it gracefully.
";

struct Args {
    listen: String,
    config: ServerConfig,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args { listen: "127.0.0.1:50051".into(), config: ServerConfig::default() };
    // Store limits are sized for the message limit unless given, so they
    // are applied once every flag is read.
    let mut limits: Vec<(String, usize)> = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{HELP}");
            return Ok(None);
        }
        if flag == "-V" || flag == "--version" {
            println!("snakepit-bridge-server {}", env!("CARGO_PKG_VERSION"));
            return Ok(None);
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value; see --help"))?;
        let n = || number(&flag, &value);
        let secs = || n().map(Duration::from_secs);
        let c = &mut args.config;
        match flag.as_str() {
            "--listen" => args.listen = value.clone(),
            "--session-ttl" => c.session_ttl = secs()?,
            "--max-message-bytes" => c.max_message_bytes = n()? as usize,
            "--keepalive-interval" => c.keepalive_interval = Some(secs()?).filter(|d| !d.is_zero()),
            "--keepalive-timeout" => c.keepalive_timeout = secs()?,
            "--max-connections" => c.max_connections = n()? as usize,
            "--handshake-timeout" => c.handshake_timeout = secs()?,
            "--idle-timeout" => c.idle_timeout = Some(secs()?).filter(|d| !d.is_zero()),
            "--max-watchers-per-connection" => c.max_watchers_per_connection = n()? as usize,
            "--max-watchers" => c.max_watchers = n()? as usize,
            "--max-sessions"
            | "--max-variables-per-session"
            | "--max-value-bytes"
            | "--max-metadata-entries"
            | "--max-metadata-bytes"
            | "--max-constraint-bytes"
            | "--max-batch"
            | "--max-pattern-bytes" => limits.push((flag.clone(), n()? as usize)),
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    let c = &mut args.config;
    let mut l = Limits::for_message_bytes(c.max_message_bytes);
    let value_given = limits.iter().any(|(flag, _)| flag == "--max-value-bytes");
    for (flag, n) in limits {
        *match flag.as_str() {
            "--max-sessions" => &mut l.max_sessions,
            "--max-variables-per-session" => &mut l.max_variables_per_session,
            "--max-value-bytes" => &mut l.max_value_bytes,
            "--max-metadata-entries" => &mut l.max_metadata_entries,
            "--max-metadata-bytes" => &mut l.max_metadata_bytes,
            "--max-constraint-bytes" => &mut l.max_constraint_bytes,
            "--max-batch" => &mut l.max_batch,
            _ => &mut l.max_pattern_bytes,
        } = n;
    }
    if !value_given {
        // Whatever room the other limits leave.
        l.max_value_bytes = l.value_room(c.max_message_bytes);
    }
    c.limits = l;
    c.validate().map_err(|e| as_flags(&e))?;
    Ok(Some(args))
}

/// A validation message names settings as `ServerConfig` does; here they are flags.
fn as_flags(message: &str) -> String {
    const SETTINGS: [&str; 17] = [
        "max_message_bytes",
        "max_connections",
        "max_watchers_per_connection",
        "max_watchers",
        "session_ttl",
        "keepalive_timeout",
        "sweep_interval",
        "handshake_timeout",
        "max_sessions",
        "max_variables_per_session",
        "max_value_bytes",
        "max_metadata_entries",
        "max_metadata_bytes",
        "max_constraint_bytes",
        "max_batch",
        "max_pattern_bytes",
        "idle_timeout",
    ];
    message
        .split(' ')
        .map(|word| match SETTINGS.iter().find(|s| word.trim_end_matches([',', ':', ';']) == **s) {
            Some(_) => format!("--{}", word.replace('_', "-")),
            None => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn number(flag: &str, text: &str) -> Result<u64, String> {
    text.parse().map_err(|_| format!("{flag} takes a whole number, got {text:?}"))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => return ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("snakepit-bridge-server: {message}");
            return ExitCode::from(2);
        }
    };
    // A process of its own may use every descriptor its hard limit allows
    // (the connection cap still bounds what clients can take). The embedded
    // server does not do this: the BEAM sizes its tables from the limit it
    // booted with, so a node's limit is set before it starts (`ulimit -n`).
    if let Err(e) = snakepit_core::net::raise_fd_limit() {
        eprintln!("snakepit-bridge-server: could not raise the descriptor limit: {e}");
    }
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("snakepit-bridge-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound listener has an address");
    // Bound means connections are queued from now on, so it is safe to announce.
    println!("listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    match serve(Store::new(), listener, args.config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snakepit-bridge-server: {e}");
            ExitCode::FAILURE
        }
    }
}
