//! Shared by the integration tests: a real server on an ephemeral port.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use prost_types::Any;
use snakepit_core::proto::bridge_service_client::BridgeServiceClient;
use snakepit_core::proto::*;
use snakepit_core::server::{serve, ServerConfig};
use snakepit_core::Store;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(config: ServerConfig) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let store = Store::new();
        let served = store.clone();
        let task = tokio::spawn(async move {
            serve(served, listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer { addr, store, stop: Some(stop), task }
    }

    pub async fn client(&self) -> BridgeServiceClient<Channel> {
        BridgeServiceClient::connect(format!("http://{}", self.addr)).await.unwrap()
    }

    pub async fn shutdown(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), self.task).await.unwrap().unwrap();
    }
}

/// `message` as a request that accepts the binary path (metadata
/// `snakepit-accept-binary: raw_le`), as snakepit_bridge sends every call.
pub fn accept_binary<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("snakepit-accept-binary", tonic::metadata::MetadataValue::from_static("raw_le"));
    request
}

pub fn any(ty: &str, json: &str) -> Option<Any> {
    Some(Any { type_url: format!("type.googleapis.com/snakepit.{ty}"), value: json.as_bytes().to_vec() })
}

pub async fn session(client: &mut BridgeServiceClient<Channel>, id: &str) {
    client.initialize_session(InitializeSessionRequest { session_id: id.into(), ..Default::default() }).await.unwrap();
}

pub async fn register(
    client: &mut BridgeServiceClient<Channel>,
    sid: &str,
    name: &str,
    ty: &str,
    json: &str,
    constraints: &str,
) -> String {
    client
        .register_variable(RegisterVariableRequest {
            session_id: sid.into(),
            name: name.into(),
            r#type: ty.into(),
            initial_value: any(ty, json),
            constraints_json: constraints.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .variable_id
}

pub async fn get(client: &mut BridgeServiceClient<Channel>, sid: &str, ident: &str) -> Variable {
    client
        .get_variable(GetVariableRequest {
            session_id: sid.into(),
            variable_identifier: ident.into(),
            bypass_cache: false,
        })
        .await
        .unwrap()
        .into_inner()
        .variable
        .unwrap()
}
