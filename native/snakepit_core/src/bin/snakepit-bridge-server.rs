//! The standalone Snakepit bridge server: the same core as the NIF, in its own
//! process, for Python-only use, tests and benchmarks.

use std::process::ExitCode;
use std::time::Duration;

use snakepit_core::auth::Secret;
use snakepit_core::limits::Limits;
use snakepit_core::server::{log_panics, serve, ServerConfig, Tls};
use snakepit_core::Store;
use tracing_subscriber::EnvFilter;

const HELP: &str = "\
snakepit-bridge-server: serve the Snakepit bridge gRPC API from a standalone process

USAGE:
    snakepit-bridge-server [OPTIONS]
    snakepit-bridge-server session-token SESSION_ID [--token-file PATH]
                                print a token that grants SESSION_ID only, for a worker

OPTIONS:
    --listen HOST:PORT          address to bind (default 127.0.0.1:50051; port 0 picks a free port)
    --session-ttl SECONDS       idle time after which a session expires (default 3600); a watched
                                session does not expire, and its idle time counts from when the
                                last watcher left
    --max-message-bytes BYTES   largest gRPC message accepted or sent, each way (default 4194304,
                                at least 65536)
    --keepalive-interval SECS   HTTP/2 keepalive ping interval; 0 turns pings off (default 30)
    --keepalive-timeout SECS    close a connection whose ping is unanswered this long (default 20)
    --log FILTER                what to log on stderr, as RUST_LOG filters it: a level (error, warn,
                                info, debug, trace) or directives like snakepit_core=debug
                                (default info; debug shows connections and watch streams)
    --log-format FORMAT         text or json, one event per line (default text)
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

SECURITY:
    SNAKEPIT_BRIDGE_TOKEN       environment variable holding the server token (at least 32 visible
                                ASCII characters, e.g. from `openssl rand -hex 32`); every call but
                                health checking must then send `authorization: Bearer TOKEN`
    --token-file PATH           read the token from a file instead (trailing newline ignored)
    --tls-cert PEM              serve TLS with this certificate chain...
    --tls-key PEM               ...and this private key
    --tls-client-ca PEM         require client certificates signed by these CAs (mutual TLS)
    --allow-insecure            serve a non-loopback address without TLS or without a token,
                                which lets anyone on the network read or change every session;
                                without it, such a bind is refused. On a loopback address no
                                token is needed; the server then warns that it serves without one.

Once it accepts connections it prints `listening on HOST:PORT` (the real bound port)
as its first line on stdout. SIGTERM or SIGINT stops it gracefully.
";

/// The environment variable that holds the server token.
const TOKEN_ENV: &str = "SNAKEPIT_BRIDGE_TOKEN";

enum Command {
    Serve(Box<Args>),
    /// A session token was asked for: print it.
    SessionToken(String),
    /// Help or version was printed.
    Done,
}

struct Args {
    listen: String,
    config: ServerConfig,
    log: String,
    json_logs: bool,
}

/// The server token: `--token-file` if given, else the environment variable.
fn secret(token_file: Option<&str>) -> Result<Option<Secret>, String> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| format!("cannot read --token-file {path}: {e}"))?,
        None => match std::env::var(TOKEN_ENV) {
            Ok(token) if !token.is_empty() => token,
            _ => return Ok(None),
        },
    };
    let from = token_file.map_or(TOKEN_ENV.to_string(), |path| format!("--token-file {path}"));
    Secret::new(token).map(Some).map_err(|e| format!("{from}: {e}"))
}

fn parse_args() -> Result<Command, String> {
    let mut args = Args {
        listen: "127.0.0.1:50051".into(),
        config: ServerConfig::default(),
        log: "info".into(),
        json_logs: false,
    };
    // Store limits are sized for the message limit unless given, so they
    // are applied once every flag is read.
    let mut limits: Vec<(String, usize)> = Vec::new();
    let (mut token_file, mut tls_cert, mut tls_key, mut tls_client_ca) = (None, None, None, None);
    let mut session_token: Option<String> = None;
    let mut it = std::env::args().skip(1).peekable();
    if it.peek().map(String::as_str) == Some("session-token") {
        it.next();
        let id = it.next().ok_or("session-token needs a SESSION_ID; see --help")?;
        session_token = Some(id);
    }
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            print!("{HELP}");
            return Ok(Command::Done);
        }
        if flag == "-V" || flag == "--version" {
            println!("snakepit-bridge-server {}", env!("CARGO_PKG_VERSION"));
            return Ok(Command::Done);
        }
        if flag == "--allow-insecure" {
            args.config.allow_insecure = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value; see --help"))?;
        if session_token.is_some() && flag != "--token-file" {
            return Err(format!("session-token takes only --token-file, not {flag}"));
        }
        let n = || number(&flag, &value);
        let secs = || n().map(Duration::from_secs);
        let c = &mut args.config;
        match flag.as_str() {
            "--listen" => args.listen = value.clone(),
            "--token-file" => token_file = Some(value),
            "--tls-cert" => tls_cert = Some(value),
            "--tls-key" => tls_key = Some(value),
            "--tls-client-ca" => tls_client_ca = Some(value),
            "--log" => args.log = value,
            "--log-format" => {
                args.json_logs = match value.as_str() {
                    "json" => true,
                    "text" => false,
                    other => return Err(format!("--log-format takes text or json, got {other:?}")),
                }
            }
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
    let secret = secret(token_file.as_deref())?;
    if let Some(id) = session_token {
        let secret = secret
            .ok_or_else(|| format!("session-token needs the server token: set {TOKEN_ENV} or pass --token-file"))?;
        return Ok(Command::SessionToken(secret.session_token(&id)));
    }
    let c = &mut args.config;
    c.auth = secret;
    c.tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(Tls::from_files(&cert, &key, tls_client_ca.as_deref())?),
        (None, None) if tls_client_ca.is_some() => return Err("--tls-client-ca needs --tls-cert and --tls-key".into()),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
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
    Ok(Command::Serve(Box::new(args)))
}

/// A validation message names settings as `ServerConfig` does; here they are flags.
fn as_flags(message: &str) -> String {
    const SETTINGS: [&str; 18] = [
        "allow_insecure",
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

/// Installs the SIGTERM and SIGINT handlers now (not when the future is
/// first polled, which may come after the first connection is served: a
/// SIGTERM in between would kill the process instead of stopping it), and
/// returns a future that completes on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

/// Logs go to stderr (stdout carries the `listening on` line), filtered as `--log` says.
fn init_logs(filter: &str, json: bool) -> Result<(), String> {
    let filter = EnvFilter::try_new(filter).map_err(|e| format!("--log {filter:?}: {e}"))?;
    use std::io::IsTerminal;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
    log_panics();
    Ok(())
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("snakepit-bridge-server: {message}");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Command::Serve(args)) => args,
        Ok(Command::SessionToken(token)) => {
            println!("{token}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Done) => return ExitCode::SUCCESS,
        Err(message) => return usage_error(&message),
    };
    if let Err(message) = init_logs(&args.log, args.json_logs) {
        return usage_error(&message);
    }
    // A process of its own may use every descriptor its hard limit allows
    // (the connection cap still bounds what clients can take). The embedded
    // server does not do this: the BEAM sizes its tables from the limit it
    // booted with, so a node's limit is set before it starts (`ulimit -n`).
    if let Err(e) = snakepit_core::net::raise_fd_limit() {
        eprintln!("snakepit-bridge-server: could not raise the descriptor limit: {e}");
    }
    let shutdown = shutdown_signal();
    let listener = match tokio::net::TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("snakepit-bridge-server: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().expect("a bound listener has an address");
    if let Err(message) = args.config.check_exposure(addr) {
        return usage_error(&as_flags(&message));
    }
    // Bound means connections are queued from now on, so it is safe to announce.
    println!("listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let args = *args;
    match serve(Store::new(), listener, args.config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snakepit-bridge-server: {e}");
            ExitCode::FAILURE
        }
    }
}
