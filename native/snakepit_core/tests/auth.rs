//! Access control end to end, with tonic clients: the server token, session
//! tokens, TLS and mutual TLS with certificates made here, and the rule that
//! a non-loopback address needs TLS and a token.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use snakepit_core::auth::{Secret, UNAUTHENTICATED};
use snakepit_core::proto::bridge_service_client::BridgeServiceClient;
use snakepit_core::proto::*;
use snakepit_core::server::{serve, ServerConfig, Tls};
use snakepit_core::Store;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const TOKEN: &str = "test-token-0123456789abcdef0123456789";

type Bearer = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send>;
type Client = BridgeServiceClient<InterceptedService<Channel, Bearer>>;

fn with_token(channel: Channel, token: Option<String>) -> Client {
    let header: Option<MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    let add: Bearer = Box::new(move |mut request: Request<()>| {
        if let Some(h) = &header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    });
    BridgeServiceClient::with_interceptor(channel, add)
}

async fn plain(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

fn secured() -> ServerConfig {
    ServerConfig { auth: Some(Secret::new(TOKEN).unwrap()), ..ServerConfig::default() }
}

/// One call of every BridgeService RPC about `session`; the status of each.
async fn every_rpc(client: &mut Client, session: &str) -> Vec<(&'static str, Result<(), Status>)> {
    let sid = || session.to_string();
    let var = || "x".to_string();
    vec![
        ("Ping", client.ping(PingRequest::default()).await.map(drop)),
        (
            "InitializeSession",
            client
                .initialize_session(InitializeSessionRequest { session_id: sid(), ..Default::default() })
                .await
                .map(drop),
        ),
        ("GetSession", client.get_session(GetSessionRequest { session_id: sid() }).await.map(drop)),
        ("Heartbeat", client.heartbeat(HeartbeatRequest { session_id: sid(), ..Default::default() }).await.map(drop)),
        (
            "RegisterVariable",
            client
                .register_variable(RegisterVariableRequest {
                    session_id: sid(),
                    name: var(),
                    r#type: "integer".into(),
                    initial_value: any("integer", "1"),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "GetVariable",
            client
                .get_variable(GetVariableRequest {
                    session_id: sid(),
                    variable_identifier: var(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "SetVariable",
            client
                .set_variable(SetVariableRequest {
                    session_id: sid(),
                    variable_identifier: var(),
                    value: any("integer", "2"),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "GetVariables",
            client
                .get_variables(BatchGetVariablesRequest {
                    session_id: sid(),
                    variable_identifiers: vec![var()],
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "SetVariables",
            client
                .set_variables(BatchSetVariablesRequest {
                    session_id: sid(),
                    updates: [(var(), any("integer", "3").unwrap())].into(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "ListVariables",
            client.list_variables(ListVariablesRequest { session_id: sid(), pattern: "*".into() }).await.map(drop),
        ),
        (
            "WatchVariables",
            client
                .watch_variables(WatchVariablesRequest {
                    session_id: sid(),
                    variable_identifiers: vec![var()],
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        (
            "DeleteVariable",
            client
                .delete_variable(DeleteVariableRequest { session_id: sid(), variable_identifier: var() })
                .await
                .map(drop),
        ),
        (
            "CleanupSession",
            client.cleanup_session(CleanupSessionRequest { session_id: sid(), ..Default::default() }).await.map(drop),
        ),
    ]
}

#[tokio::test]
async fn without_the_token_every_rpc_is_unauthenticated_with_one_message() {
    let server = TestServer::start(secured()).await;
    server.store.create_session("exists", Default::default(), Duration::from_secs(60)).unwrap();
    for token in [None, Some("wrong-token-0123456789abcdef0123456789".to_string()), Some(TOKEN.to_uppercase())] {
        let mut client = with_token(plain(&server).await, token.clone());
        for session in ["exists", "does-not-exist"] {
            for (rpc, result) in every_rpc(&mut client, session).await {
                let status = result.expect_err(rpc);
                assert_eq!(status.code(), Code::Unauthenticated, "{rpc} {token:?}");
                assert_eq!(status.message(), UNAUTHENTICATED, "{rpc}");
            }
        }
    }
    // Nothing was created or removed by the refused calls.
    assert!(server.store.get_session("does-not-exist").is_err());
    assert!(server.store.get_session("exists").is_ok());
    server.shutdown().await;
}

#[tokio::test]
async fn the_server_token_grants_every_rpc() {
    let server = TestServer::start(secured()).await;
    let mut client = with_token(plain(&server).await, Some(TOKEN.into()));
    for (rpc, result) in every_rpc(&mut client, "s").await {
        result.unwrap_or_else(|e| panic!("{rpc}: {e:?}"));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_token_grants_its_session_only() {
    let config = secured();
    let session_token = config.auth.as_ref().unwrap().session_token("mine");
    let server = TestServer::start(config).await;
    server.store.create_session("other", Default::default(), Duration::from_secs(60)).unwrap();
    let mut client = with_token(plain(&server).await, Some(session_token));
    for (rpc, result) in every_rpc(&mut client, "mine").await {
        match rpc {
            "Ping" => assert_eq!(result.unwrap_err().code(), Code::PermissionDenied),
            _ => result.unwrap_or_else(|e| panic!("{rpc}: {e:?}")),
        }
    }
    for session in ["other", "never-created"] {
        for (rpc, result) in every_rpc(&mut client, session).await {
            assert_eq!(result.expect_err(rpc).code(), Code::PermissionDenied, "{rpc} on {session}");
        }
    }
    assert!(server.store.get_session("other").is_ok(), "a refused CleanupSession removed nothing");
    server.shutdown().await;
}

#[tokio::test]
async fn a_session_token_watches_its_session() {
    let config = secured();
    let session_token = config.auth.as_ref().unwrap().session_token("w");
    let server = TestServer::start(config).await;
    let mut owner = with_token(plain(&server).await, Some(TOKEN.into()));
    owner.initialize_session(InitializeSessionRequest { session_id: "w".into(), ..Default::default() }).await.unwrap();
    let mut worker = with_token(plain(&server).await, Some(session_token));
    worker
        .register_variable(RegisterVariableRequest {
            session_id: "w".into(),
            name: "t".into(),
            r#type: "float".into(),
            initial_value: any("float", "0.5"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut stream = worker
        .watch_variables(WatchVariablesRequest {
            session_id: "w".into(),
            variable_identifiers: vec!["t".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    owner
        .set_variable(SetVariableRequest {
            session_id: "w".into(),
            variable_identifier: "t".into(),
            value: any("float", "0.75"),
            ..Default::default()
        })
        .await
        .unwrap();
    let update = tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap();
    let variable = update.variable.unwrap();
    assert_eq!(variable.name, "t");
    assert_eq!(variable.value.unwrap().value, b"0.75");
    server.shutdown().await;
}

#[tokio::test]
async fn health_needs_no_token_and_reflection_needs_the_server_token() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let config = secured();
    let session_token = config.auth.as_ref().unwrap().session_token("s");
    let server = TestServer::start(config).await;
    let channel = plain(&server).await;
    let mut health = HealthClient::new(channel.clone());
    let serving = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(serving.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let list = || {
        tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    for (token, expected) in [
        (None, Some(Code::Unauthenticated)),
        (Some(session_token), Some(Code::PermissionDenied)),
        (Some(TOKEN.into()), None),
    ] {
        let header: Option<MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
        let mut reflection = ServerReflectionClient::with_interceptor(channel.clone(), move |mut r: Request<()>| {
            if let Some(h) = &header {
                r.metadata_mut().insert("authorization", h.clone());
            }
            Ok(r)
        });
        match (reflection.server_reflection_info(list()).await, expected) {
            (Err(status), Some(code)) => assert_eq!(status.code(), code),
            (Ok(response), None) => {
                let first = response.into_inner().next().await.unwrap().unwrap();
                assert!(format!("{first:?}").contains("snakepit.bridge.BridgeService"), "{first:?}");
            }
            (other, expected) => panic!("expected {expected:?}, got {other:?}"),
        }
    }
    server.shutdown().await;
}

/// A CA, a server certificate for localhost signed by it, and a client certificate.
struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(vec!["localhost".into()]);
    let client = leaf(vec!["worker".into()]);
    Pki { ca_pem: ca.pem(), server, client }
}

fn tls_config(pki: &Pki, client_ca: bool) -> ServerConfig {
    ServerConfig {
        tls: Some(Tls {
            cert_pem: pki.server.0.clone().into_bytes(),
            key_pem: pki.server.1.clone().into_bytes(),
            client_ca_pem: client_ca.then(|| pki.ca_pem.clone().into_bytes()),
        }),
        ..secured()
    }
}

async fn tls_channel(server: &TestServer, pki: &Pki, identity: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca_pem)).domain_name("localhost");
    if identity {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://localhost:{}", server.addr.port())).unwrap().tls_config(tls)?.connect().await
}

async fn ping(channel: Channel) -> Result<(), Status> {
    with_token(channel, Some(TOKEN.into())).ping(PingRequest::default()).await.map(drop)
}

#[tokio::test]
async fn tls_serves_tls_clients_and_not_plaintext_ones() {
    let pki = pki();
    let server = TestServer::start(tls_config(&pki, false)).await;
    ping(tls_channel(&server, &pki, false).await.unwrap()).await.unwrap();
    let plaintext = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect_lazy();
    // The TLS server never completes an HTTP/2 handshake with it; how tonic
    // reports that (UNKNOWN or UNAVAILABLE) depends on when the connection drops.
    let refused = ping(plaintext).await.expect_err("a plaintext client got an answer from a TLS server");
    assert!(matches!(refused.code(), Code::Unknown | Code::Unavailable), "{refused:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = pki();
    let server = TestServer::start(tls_config(&pki, true)).await;
    ping(tls_channel(&server, &pki, true).await.unwrap()).await.unwrap();
    let refused = match tls_channel(&server, &pki, false).await {
        Ok(channel) => ping(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate got through");
    server.shutdown().await;
}

#[test]
fn a_bad_certificate_fails_validation_naming_tls() {
    let config = ServerConfig {
        tls: Some(Tls { cert_pem: b"not a certificate".to_vec(), key_pem: b"nor a key".to_vec(), client_ca_pem: None }),
        ..ServerConfig::default()
    };
    assert!(config.validate().unwrap_err().starts_with("tls:"));
}

#[tokio::test]
async fn a_non_loopback_bind_needs_tls_and_a_token_or_allow_insecure() {
    let pki = pki();
    let refused = [ServerConfig::default(), secured(), ServerConfig { auth: None, ..tls_config(&pki, false) }];
    for config in refused {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let error = serve(Store::new(), listener, config, async {}).await.unwrap_err();
        assert!(error.to_string().contains("allow_insecure"), "{error}");
    }
    let allowed = [tls_config(&pki, false), ServerConfig { allow_insecure: true, ..ServerConfig::default() }];
    for config in allowed {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        serve(Store::new(), listener, config, async {}).await.unwrap();
    }
}
