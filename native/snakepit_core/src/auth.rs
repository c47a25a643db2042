//! Who may call: the server's token, session tokens derived from it, and the
//! rule on which addresses may be served without TLS and a token.
//!
//! A caller sends `authorization: Bearer <token>`. The server token grants
//! everything. A session token grants one session: it is
//! `snakepit-session.<hex of the session id>.<hex of an HMAC-SHA256 of that id
//! under the server token>`, so the server stores nothing per token and a
//! session token never reveals the server token. Changing the server token
//! revokes every session token minted from it.
//!
//! Comparisons run in constant time: the presented server token is checked by
//! comparing HMACs under a key made at start (so timing says nothing about the
//! token), and a session token's MAC by `ring::hmac::verify`.

use std::fmt;
use std::net::SocketAddr;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::metadata::MetadataMap;
use tonic::Status;

/// Shortest token accepted from a user (characters); generated tokens are 64.
pub const MIN_TOKEN_CHARS: usize = 32;

/// What a session token starts with.
pub const SESSION_TOKEN_PREFIX: &str = "snakepit-session.";

/// The one answer to a call without a valid token, whatever it names, so
/// unauthenticated callers learn nothing about which sessions exist.
pub const UNAUTHENTICATED: &str = "missing or invalid token: send `authorization: Bearer <token>` with every call";

/// Separates session-token MACs from any other use of the key.
const SESSION_CONTEXT: &[u8] = b"snakepit-bridge session token v1\0";

/// The server's secret: its token, and the keys derived from it.
pub struct Secret {
    token: String,
    /// Signs session tokens.
    session_key: hmac::Key,
    /// A random key, made at start, under which the token is compared.
    check_key: hmac::Key,
    expected: hmac::Tag,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Clone for Secret {
    fn clone(&self) -> Secret {
        Secret::from_token(self.token.clone())
    }
}

/// What a valid token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// The server token (or a server without auth): every call.
    Server,
    /// A session token: calls about this session only.
    Session(String),
}

impl Grant {
    /// `Ok` if this grant covers a call about `session_id`; PERMISSION_DENIED otherwise.
    #[allow(clippy::result_large_err)]
    pub fn allows(&self, session_id: &str) -> Result<(), Status> {
        match self {
            Grant::Server => Ok(()),
            Grant::Session(own) if own == session_id => Ok(()),
            Grant::Session(_) => Err(Status::permission_denied("this session token grants its own session only")),
        }
    }

    /// `Ok` for the server token only: calls that are about no one session
    /// (Ping, reflection) are refused to session tokens.
    #[allow(clippy::result_large_err)]
    pub fn allows_server_calls(&self) -> Result<(), Status> {
        match self {
            Grant::Server => Ok(()),
            Grant::Session(_) => {
                Err(Status::permission_denied("a session token grants calls about its own session only"))
            }
        }
    }
}

/// For a call about no one session (Ping, reflection): what its request's
/// extensions grant must be the server's. A request with no grant came
/// through no authenticating interceptor (only in-process tests build such a
/// service) and is allowed.
#[allow(clippy::result_large_err)]
pub fn check_server_call(extensions: &tonic::Extensions) -> Result<(), Status> {
    extensions.get::<Grant>().map_or(Ok(()), Grant::allows_server_calls)
}

impl Secret {
    /// The secret of a token a user chose: at least [`MIN_TOKEN_CHARS`]
    /// visible ASCII characters (it travels in an HTTP/2 header).
    pub fn new(token: impl Into<String>) -> Result<Secret, String> {
        let token = token.into();
        if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("the token may hold visible ASCII characters only, not {c:?}"));
        }
        if token.len() < MIN_TOKEN_CHARS {
            return Err(format!(
                "the token has {} characters; it needs at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 32`)",
                token.len()
            ));
        }
        Ok(Secret::from_token(token))
    }

    /// A new random token of 256 bits from the operating system's source.
    pub fn generate() -> Secret {
        let mut bytes = [0u8; 32];
        // The OS source fails only if the kernel has none at all; no safe fallback exists.
        SystemRandom::new().fill(&mut bytes).expect("the operating system provides random bytes");
        Secret::from_token(hex(&bytes))
    }

    fn from_token(token: String) -> Secret {
        let check_key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .expect("the operating system provides random bytes");
        let expected = hmac::sign(&check_key, token.as_bytes());
        let session_key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
        Secret { token, session_key, check_key, expected }
    }

    /// The server token, for whoever hands it to a trusted client.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A token that grants `session_id` only. The session need not exist yet.
    pub fn session_token(&self, session_id: &str) -> String {
        let tag = hmac::sign(&self.session_key, &session_message(session_id));
        format!("{SESSION_TOKEN_PREFIX}{}.{}", hex(session_id.as_bytes()), hex(tag.as_ref()))
    }

    /// What `token` grants, or `None` if it is neither the server token nor a
    /// session token minted from it.
    pub fn authenticate(&self, token: &str) -> Option<Grant> {
        if hmac::verify(&self.check_key, token.as_bytes(), self.expected.as_ref()).is_ok() {
            return Some(Grant::Server);
        }
        let (session_hex, tag_hex) = token.strip_prefix(SESSION_TOKEN_PREFIX)?.split_once('.')?;
        let session_id = String::from_utf8(unhex(session_hex)?).ok()?;
        let tag = unhex(tag_hex)?;
        hmac::verify(&self.session_key, &session_message(&session_id), &tag).ok()?;
        Some(Grant::Session(session_id))
    }

    /// What the `authorization` header of a call grants; UNAUTHENTICATED
    /// (one message for every failure) when it is missing or not valid.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, metadata: &MetadataMap) -> Result<Grant, Status> {
        metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|token| self.authenticate(token))
            .ok_or_else(|| Status::unauthenticated(UNAUTHENTICATED))
    }
}

fn session_message(session_id: &str) -> Vec<u8> {
    [SESSION_CONTEXT, session_id.as_bytes()].concat()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// Refuses to serve a non-loopback address unless both TLS and a token
/// protect it, or `allow_insecure` says the risk is accepted. On loopback only
/// local processes can connect; anywhere else, anyone on the network could
/// read the traffic (no TLS) or every session (no token).
pub fn check_exposure(addr: SocketAddr, tls: bool, token: bool, allow_insecure: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || (tls && token) || allow_insecure {
        return Ok(());
    }
    let missing = match (tls, token) {
        (false, false) => "TLS and a token",
        (false, true) => "TLS (the token would cross the network in plain text)",
        _ => "a token (anyone who can connect could read and change every session)",
    };
    Err(format!(
        "refusing to serve {addr}, which is not a loopback address, without {missing}; \
         configure both, or set allow_insecure to accept the risk"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn the_server_token_grants_everything_and_nothing_else_does() {
        let s = secret();
        assert_eq!(s.authenticate(s.token()), Some(Grant::Server));
        assert_eq!(s.authenticate("0123456789abcdef0123456789abcdeF"), None);
        assert_eq!(s.authenticate(""), None);
        assert_eq!(s.authenticate(&s.token()[..31]), None);
    }

    #[test]
    fn a_session_token_grants_its_session_only() {
        let s = secret();
        let token = s.session_token("run-1");
        let grant = s.authenticate(&token).unwrap();
        assert_eq!(grant, Grant::Session("run-1".into()));
        assert!(grant.allows("run-1").is_ok());
        assert_eq!(grant.allows("run-2").unwrap_err().code(), tonic::Code::PermissionDenied);
        assert_eq!(grant.allows_server_calls().unwrap_err().code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn a_session_token_from_another_secret_or_edited_is_refused() {
        let s = secret();
        let other = Secret::generate();
        assert_eq!(s.authenticate(&other.session_token("run-1")), None);
        let token = s.session_token("run-1");
        // Naming another session with the same MAC.
        let forged = token.replacen(&hex(b"run-1"), &hex(b"run-2"), 1);
        assert_eq!(s.authenticate(&forged), None);
        for broken in [&token[..token.len() - 1], "snakepit-session.", "snakepit-session.zz.00", "snakepit-session.7"] {
            assert_eq!(s.authenticate(broken), None, "{broken}");
        }
    }

    #[test]
    fn generated_tokens_are_256_bits_and_differ() {
        let (a, b) = (Secret::generate(), Secret::generate());
        assert_eq!(a.token().len(), 64);
        assert_ne!(a.token(), b.token());
        assert!(Secret::new(a.token()).is_ok());
    }

    #[test]
    fn short_or_invisible_tokens_are_refused_with_the_reason() {
        assert!(Secret::new("short").unwrap_err().contains("at least 32"));
        assert!(Secret::new(format!("{} x", "a".repeat(40))).unwrap_err().contains("visible ASCII"));
    }

    #[test]
    fn the_header_needs_the_bearer_scheme() {
        let s = secret();
        let mut md = MetadataMap::new();
        assert_eq!(s.check(&md).unwrap_err().message(), UNAUTHENTICATED);
        md.insert("authorization", s.token().parse().unwrap());
        assert_eq!(s.check(&md).unwrap_err().message(), UNAUTHENTICATED);
        md.insert("authorization", format!("Bearer {}", s.token()).parse().unwrap());
        assert_eq!(s.check(&md).unwrap(), Grant::Server);
    }

    #[test]
    fn exposure_needs_tls_and_a_token_off_loopback() {
        let local: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(check_exposure(local, false, false, false).is_ok());
        assert!(check_exposure("[::1]:1".parse().unwrap(), false, false, false).is_ok());
        assert!(check_exposure(any, true, true, false).is_ok());
        assert!(check_exposure(any, false, false, true).is_ok());
        for (tls, token) in [(false, false), (true, false), (false, true)] {
            assert!(check_exposure(any, tls, token, false).unwrap_err().contains("allow_insecure"));
        }
    }
}
