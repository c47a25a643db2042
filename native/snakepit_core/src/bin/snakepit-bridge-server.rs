//! The standalone Snakepit bridge server: the same core as the NIF, in its own
//! process, for Python-only use, tests and benchmarks.

use std::process::ExitCode;
use std::time::Duration;

use snakepit_core::server::{serve, ServerConfig};
use snakepit_core::Store;

const HELP: &str = "\
snakepit-bridge-server: serve the Snakepit bridge gRPC API from a standalone process

USAGE:
    snakepit-bridge-server [OPTIONS]

OPTIONS:
    --listen HOST:PORT          address to bind (default 127.0.0.1:50051; port 0 picks a free port)
    --session-ttl SECONDS       idle time after which a session expires (default 3600)
    --max-message-bytes BYTES   largest gRPC message accepted or sent, each way (default 4194304)
    --keepalive-interval SECS   HTTP/2 keepalive ping interval; 0 turns pings off (default 30)
    --keepalive-timeout SECS    close a connection whose ping is unanswered this long (default 20)
    -h, --help                  print this help and exit
    -V, --version               print the version and exit

Once it accepts connections it prints `listening on HOST:PORT` (the real bound port)
as its first line on stdout. SIGTERM or SIGINT stops it gracefully.
";

struct Args {
    listen: String,
    config: ServerConfig,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args { listen: "127.0.0.1:50051".into(), config: ServerConfig::default() };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                return Ok(None);
            }
            "-V" | "--version" => {
                println!("snakepit-bridge-server {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            "--listen" => args.listen = value("--listen")?,
            "--session-ttl" => {
                let secs = number(&flag, &value(&flag)?)?;
                if secs == 0 {
                    return Err("--session-ttl must be at least 1 second".into());
                }
                args.config.session_ttl = Duration::from_secs(secs);
            }
            "--max-message-bytes" => {
                args.config.max_message_bytes = number(&flag, &value(&flag)?)? as usize
            }
            "--keepalive-interval" => {
                let secs = number(&flag, &value(&flag)?)?;
                args.config.keepalive_interval = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "--keepalive-timeout" => {
                args.config.keepalive_timeout = Duration::from_secs(number(&flag, &value(&flag)?)?)
            }
            other => return Err(format!("unknown option {other:?}; see --help")),
        }
    }
    Ok(Some(args))
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
