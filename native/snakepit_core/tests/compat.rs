//! Older (snakepit v0.4) clients: a client that does not send
//! `snakepit-accept-binary: raw_le` gets every value as JSON in the `Any`,
//! whatever its size; one that sends it gets big embeddings and tensors on
//! the binary path. Over a real server and a tonic client, for every call
//! that returns values.

mod common;

use common::*;
use serde_json::Value as Json;
use snakepit_core::proto::*;
use snakepit_core::server::ServerConfig;
use tokio_stream::StreamExt;

const EMBEDDING_URL: &str = "type.googleapis.com/snakepit.embedding";
const TENSOR_URL: &str = "type.googleapis.com/snakepit.tensor";

fn embedding_data(scale: f64) -> Vec<f64> {
    (0..5000).map(|i| (i as f64 - 2500.5) / 7.0 * scale).collect()
}

fn tensor_data() -> Vec<f64> {
    (0..6000).map(|i| i as f64 / 3.0 - 1000.0).collect()
}

fn le_bytes(data: &[f64]) -> Vec<u8> {
    data.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// `message` as a request, with the accept header when `binary`.
fn request<T>(message: T, binary: bool) -> tonic::Request<T> {
    if binary {
        accept_binary(message)
    } else {
        tonic::Request::new(message)
    }
}

/// Checks `var` carries the embedding `data`: as JSON, or on the binary path.
fn check_embedding(var: &Variable, data: &[f64], binary: bool) {
    let any = var.value.as_ref().expect("a value");
    if binary {
        assert_eq!(any.type_url, format!("{EMBEDDING_URL}.binary"));
        let meta: Json = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(meta, serde_json::json!({"shape": [5000], "dtype": "float64", "binary_format": "raw_le"}));
        assert_eq!(var.binary_value, le_bytes(data));
    } else {
        assert_eq!(any.type_url, EMBEDDING_URL);
        assert!(var.binary_value.is_empty(), "no binary_value for a client that did not ask");
        assert_eq!(serde_json::from_slice::<Vec<f64>>(&any.value).unwrap(), data);
    }
}

/// Checks `var` carries the 3x2000 tensor `data`: as JSON, or on the binary path.
fn check_tensor(var: &Variable, data: &[f64], binary: bool) {
    let any = var.value.as_ref().expect("a value");
    if binary {
        assert_eq!(any.type_url, format!("{TENSOR_URL}.binary"));
        let meta: Json = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(meta["shape"], serde_json::json!([3, 2000]));
        assert_eq!(var.binary_value, le_bytes(data));
    } else {
        assert_eq!(any.type_url, TENSOR_URL);
        assert!(var.binary_value.is_empty(), "no binary_value for a client that did not ask");
        let json: Json = serde_json::from_slice(&any.value).unwrap();
        assert_eq!(json["shape"], serde_json::json!([3, 2000]));
        assert_eq!(serde_json::from_value::<Vec<f64>>(json["data"].clone()).unwrap(), data);
        assert_eq!(json.as_object().unwrap().len(), 2, "only shape and data: {:?}", json.as_object().unwrap().keys());
    }
}

/// Every read of a 5,000-element embedding and a 3x2000 tensor, with or
/// without the accept header.
async fn reads(binary: bool) {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let emb = embedding_data(1.0);
    // The embedding comes in on the binary path, the tensor as JSON: how a
    // value came in does not matter to how it goes out.
    c.register_variable(RegisterVariableRequest {
        session_id: "s".into(),
        name: "emb".into(),
        r#type: "embedding".into(),
        initial_value: any("embedding.binary", r#"{"shape": [5000], "dtype": "float64"}"#),
        initial_binary_value: le_bytes(&emb),
        ..Default::default()
    })
    .await
    .unwrap();
    let ten = tensor_data();
    let ten_json = serde_json::json!({"shape": [3, 2000], "data": ten}).to_string();
    register(&mut c, "s", "t", "tensor", &ten_json, "").await;

    // GetVariable
    for (name, check) in [("emb", &check_embedding as &dyn Fn(&Variable, &[f64], bool)), ("t", &check_tensor)] {
        let asked =
            GetVariableRequest { session_id: "s".into(), variable_identifier: name.into(), bypass_cache: false };
        let var = c.get_variable(request(asked, binary)).await.unwrap().into_inner().variable.unwrap();
        check(&var, if name == "emb" { &emb } else { &ten }, binary);
    }

    // GetVariables, full messages, with and without metadata
    for include_metadata in [true, false] {
        let asked = BatchGetVariablesRequest {
            session_id: "s".into(),
            variable_identifiers: vec!["emb".into(), "t".into()],
            include_metadata,
            ..Default::default()
        };
        let got = c.get_variables(request(asked, binary)).await.unwrap().into_inner();
        assert!(got.values.is_none() && got.missing_variables.is_empty());
        check_embedding(&got.variables["emb"], &emb, binary);
        check_tensor(&got.variables["t"], &ten, binary);
    }

    // GetVariables, compact form (ours): the same rule. Without the header the
    // big arrays are elements of values_json; with it, full messages in the map.
    let asked = BatchGetVariablesRequest {
        session_id: "s".into(),
        variable_identifiers: vec!["emb".into(), "t".into()],
        values_only: true,
        ..Default::default()
    };
    let got = c.get_variables(request(asked, binary)).await.unwrap().into_inner();
    let values = got.values.unwrap();
    if binary {
        assert!(values.identifiers.is_empty() && values.values_json == b"[]");
        check_embedding(&got.variables["emb"], &emb, true);
        check_tensor(&got.variables["t"], &ten, true);
    } else {
        assert!(got.variables.is_empty());
        assert_eq!(values.identifiers, ["emb", "t"]);
        assert_eq!(values.types, ["embedding", "tensor"]);
        let json: Vec<Json> = serde_json::from_slice(&values.values_json).unwrap();
        assert_eq!(serde_json::from_value::<Vec<f64>>(json[0].clone()).unwrap(), emb);
        assert_eq!(json[1]["shape"], serde_json::json!([3, 2000]));
        assert_eq!(serde_json::from_value::<Vec<f64>>(json[1]["data"].clone()).unwrap(), ten);
    }

    // ListVariables
    let asked = ListVariablesRequest { session_id: "s".into(), pattern: String::new() };
    let listed = c.list_variables(request(asked, binary)).await.unwrap().into_inner().variables;
    assert_eq!(listed.len(), 2);
    for var in &listed {
        match var.name.as_str() {
            "emb" => check_embedding(var, &emb, binary),
            "t" => check_tensor(var, &ten, binary),
            other => panic!("unexpected variable {other}"),
        }
    }

    // WatchVariables: the initial values, then a change.
    let asked = WatchVariablesRequest {
        session_id: "s".into(),
        variable_identifiers: vec!["emb".into(), "t".into()],
        include_initial_values: true,
        ..Default::default()
    };
    let mut stream = c.watch_variables(request(asked, binary)).await.unwrap().into_inner();
    let mut initial = Vec::new();
    for _ in 0..2 {
        let u = next_update(&mut stream).await;
        assert_eq!(u.update_type, "initial_value");
        initial.push(u.variable.unwrap());
    }
    initial.sort_by(|a, b| a.name.cmp(&b.name));
    check_embedding(&initial[0], &emb, binary);
    check_tensor(&initial[1], &ten, binary);
    let changed = embedding_data(-0.5);
    let set = SetVariableRequest {
        session_id: "s".into(),
        variable_identifier: "emb".into(),
        value: any("embedding", &serde_json::to_string(&changed).unwrap()),
        ..Default::default()
    };
    assert!(c.set_variable(set).await.unwrap().into_inner().success);
    let u = next_update(&mut stream).await;
    assert_eq!(u.update_type, "value_change");
    let var = u.variable.unwrap();
    assert_eq!((var.name.as_str(), var.version), ("emb", 2));
    check_embedding(&var, &changed, binary);
    drop(stream);
    server.shutdown().await;
}

async fn next_update(stream: &mut tonic::Streaming<VariableUpdate>) -> VariableUpdate {
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .expect("an update within 10 s")
        .expect("the stream is open")
        .expect("an update, not an error")
}

#[tokio::test]
async fn a_client_without_the_header_gets_json_whatever_the_size() {
    reads(false).await;
}

#[tokio::test]
async fn a_client_with_the_header_gets_the_binary_path() {
    reads(true).await;
}

#[tokio::test]
async fn another_format_in_the_header_is_json() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let emb = embedding_data(1.0);
    register(&mut c, "s", "emb", "embedding", &serde_json::to_string(&emb).unwrap(), "").await;
    for (value, binary) in [("pickle", false), ("RAW_LE", false), ("pickle, raw_le", true)] {
        let mut asked = tonic::Request::new(GetVariableRequest {
            session_id: "s".into(),
            variable_identifier: "emb".into(),
            bypass_cache: false,
        });
        asked.metadata_mut().insert("snakepit-accept-binary", value.parse().unwrap());
        let var = c.get_variable(asked).await.unwrap().into_inner().variable.unwrap();
        check_embedding(&var, &emb, binary);
    }
    server.shutdown().await;
}
