//! The operability services beside BridgeService, end to end with the clients
//! of tonic-health and tonic-reflection: gRPC health checking (SERVING, then
//! NOT_SERVING once shutdown begins) and server reflection (v1 and v1alpha).

mod common;

use std::time::Duration;

use common::*;
use prost::Message;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use snakepit_core::server::ServerConfig;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const BRIDGE: &str = "snakepit.bridge.BridgeService";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";
const DEADLINE: Duration = Duration::from_secs(5);

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap()
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest { service: service.into() }
}

#[test]
fn descriptor_set_holds_the_proto_and_the_well_known_types_it_imports() {
    let set = FileDescriptorSet::decode(snakepit_core::FILE_DESCRIPTOR_SET).unwrap();
    let mut names: Vec<&str> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
    names.sort_unstable();
    assert_eq!(names, ["google/protobuf/any.proto", "google/protobuf/timestamp.proto", "snakepit_bridge.proto"]);
    let ours = set.file.iter().find(|f| f.name() == "snakepit_bridge.proto").unwrap();
    assert_eq!(ours.package(), "snakepit.bridge");
    assert_eq!(ours.service.iter().map(|s| s.name()).collect::<Vec<_>>(), ["BridgeService"]);
}

#[tokio::test]
async fn health_check_is_serving_for_the_server_and_the_bridge_service() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", BRIDGE] {
        let status = health.check(check(service)).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test]
async fn health_watch_sees_not_serving_when_shutdown_begins_then_ends() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut health = HealthClient::new(channel(&server).await);
    let mut watches = Vec::new();
    for service in ["", BRIDGE] {
        let mut watch = health.watch(check(service)).await.unwrap().into_inner();
        let first = tokio::time::timeout(DEADLINE, watch.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32, "{service:?}");
        watches.push((service, watch));
    }
    // A BridgeService watch stream is in flight too: shutdown ends it, and waits for it.
    let mut bridge = server.client().await;
    session(&mut bridge, "s").await;
    register(&mut bridge, "s", "x", "integer", "1", "").await;
    let mut updates = bridge
        .watch_variables(snakepit_core::proto::WatchVariablesRequest {
            session_id: "s".into(),
            variable_identifiers: vec!["x".into()],
            include_initial_values: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tokio::time::timeout(DEADLINE, updates.next()).await.unwrap().unwrap().is_ok());

    // The health watches hold graceful shutdown no longer than the bridge's own streams.
    let stopped = tokio::spawn(server.shutdown());
    for (service, mut watch) in watches {
        let next = tokio::time::timeout(DEADLINE, watch.next()).await.unwrap();
        let status = next.expect("a status before the stream ends").unwrap().status;
        assert_eq!(status, ServingStatus::NotServing as i32, "{service:?}");
        let end = tokio::time::timeout(DEADLINE, watch.next()).await.unwrap();
        assert_eq!(end.unwrap().unwrap_err().code(), Code::Unavailable, "{service:?}");
    }
    let end = tokio::time::timeout(DEADLINE, updates.next()).await.unwrap();
    assert_eq!(end.unwrap().unwrap_err().code(), Code::Unavailable);
    tokio::time::timeout(DEADLINE, stopped).await.unwrap().unwrap();
}

/// The same reflection checks for v1 and v1alpha, whose generated types differ only by module.
macro_rules! reflection_tests {
    ($version:ident, $own:expr) => {
        mod $version {
            use super::*;
            use tokio::sync::mpsc;
            use tokio_stream::wrappers::ReceiverStream;
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;

            async fn ask(server: &TestServer, request: MessageRequest) -> MessageResponse {
                let mut client = ServerReflectionClient::new(channel(server).await);
                let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
                let mut responses =
                    client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
                let response = responses.next().await.unwrap().unwrap();
                assert!(responses.next().await.is_none(), "one answer per request");
                response.message_response.unwrap()
            }

            async fn file(server: &TestServer, request: MessageRequest) -> Vec<FileDescriptorProto> {
                match ask(server, request).await {
                    MessageResponse::FileDescriptorResponse(r) => r
                        .file_descriptor_proto
                        .iter()
                        .map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap())
                        .collect(),
                    other => panic!("expected a file descriptor, got {other:?}"),
                }
            }

            #[tokio::test]
            async fn list_services_names_every_service() {
                let server = TestServer::start(ServerConfig::default()).await;
                let MessageResponse::ListServicesResponse(list) =
                    ask(&server, MessageRequest::ListServices(String::new())).await
                else {
                    panic!("expected a service list");
                };
                let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
                names.sort_unstable();
                assert_eq!(names, [HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA, BRIDGE]);
                assert!(names.iter().any(|n| n == $own));
                server.shutdown().await;
            }

            #[tokio::test]
            async fn describes_the_bridge_service_and_its_imports() {
                let server = TestServer::start(ServerConfig::default()).await;
                let files = file(&server, MessageRequest::FileContainingSymbol(BRIDGE.into())).await;
                let ours = &files[0];
                assert_eq!((ours.name(), ours.package()), ("snakepit_bridge.proto", "snakepit.bridge"));
                let service = ours.service.iter().find(|s| s.name() == "BridgeService").unwrap();
                assert!(service.method.iter().any(|m| m.name() == "WatchVariables" && m.server_streaming()));
                assert_eq!(ours.dependency, ["google/protobuf/any.proto", "google/protobuf/timestamp.proto"]);
                // A method resolves to its file too, and the imports can be fetched by name.
                let by_method =
                    file(&server, MessageRequest::FileContainingSymbol(format!("{BRIDGE}.GetVariable"))).await;
                assert_eq!(by_method[0].name(), "snakepit_bridge.proto");
                for dep in &ours.dependency {
                    let files = file(&server, MessageRequest::FileByFilename(dep.clone())).await;
                    assert_eq!(files[0].name(), dep.as_str());
                }
                let health = file(&server, MessageRequest::FileContainingSymbol(HEALTH.into())).await;
                assert_eq!(health[0].package(), "grpc.health.v1");
                // tonic-reflection ends the stream with NOT_FOUND (not an in-stream ErrorResponse).
                let mut client = ServerReflectionClient::new(channel(&server).await);
                let unknown = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::FileContainingSymbol("snakepit.bridge.Nope".into())),
                };
                let mut responses =
                    client.server_reflection_info(tokio_stream::iter([unknown])).await.unwrap().into_inner();
                assert_eq!(responses.next().await.unwrap().unwrap_err().code(), Code::NotFound);
                server.shutdown().await;
            }

            #[tokio::test]
            async fn an_open_reflection_stream_does_not_hold_shutdown() {
                let server = TestServer::start(ServerConfig::default()).await;
                let mut client = ServerReflectionClient::new(channel(&server).await);
                let (requests, rx) = mpsc::channel(1);
                let mut responses = client.server_reflection_info(ReceiverStream::new(rx)).await.unwrap().into_inner();
                let list = ServerReflectionRequest {
                    host: String::new(),
                    message_request: Some(MessageRequest::ListServices(String::new())),
                };
                requests.send(list).await.unwrap();
                assert!(tokio::time::timeout(DEADLINE, responses.next()).await.unwrap().unwrap().is_ok());
                // The client never closes its side; shutdown ends the stream cleanly.
                server.shutdown().await;
                let end = tokio::time::timeout(DEADLINE, responses.next()).await.unwrap();
                assert!(end.is_none(), "expected a clean end, got {end:?}");
                drop(requests);
            }
        }
    };
}

reflection_tests!(v1, REFLECTION_V1);
reflection_tests!(v1alpha, REFLECTION_V1ALPHA);
