//! The gRPC door end to end: a real server on an ephemeral port, a tonic client.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use prost_types::Any;
use snakepit_core::proto::bridge_service_client::BridgeServiceClient;
use snakepit_core::proto::*;
use snakepit_core::server::{RunningServer, ServerConfig};
use snakepit_core::Store;
use tonic::Code;

fn kind(status: &tonic::Status) -> &str {
    status.metadata().get("snakepit-error-kind").unwrap().to_str().unwrap()
}

#[tokio::test]
async fn sessions_over_grpc() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    let pong = c.ping(PingRequest { message: "hi".into() }).await.unwrap().into_inner();
    assert_eq!(pong.message, "hi");
    assert!(pong.server_time.is_some());

    let meta: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
    c.initialize_session(InitializeSessionRequest { session_id: "s".into(), metadata: meta.clone(), config: None })
        .await
        .unwrap();
    let dup = c
        .initialize_session(InitializeSessionRequest { session_id: "s".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let bad = c
        .initialize_session(InitializeSessionRequest { session_id: "".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let info = c.get_session(GetSessionRequest { session_id: "s".into() }).await.unwrap().into_inner();
    assert_eq!((info.session_id.as_str(), info.metadata, info.variable_count), ("s", meta, 0));
    let missing = c.get_session(GetSessionRequest { session_id: "nope".into() }).await.unwrap_err();
    assert_eq!((missing.code(), kind(&missing)), (Code::NotFound, "session_not_found"));

    let hb = |id: &str| HeartbeatRequest { session_id: id.into(), client_time: None };
    assert!(c.heartbeat(hb("s")).await.unwrap().into_inner().session_valid);
    assert!(!c.heartbeat(hb("nope")).await.unwrap().into_inner().session_valid);

    register(&mut c, "s", "x", "integer", "1", "").await;
    let cleanup = |id: &str| CleanupSessionRequest { session_id: id.into(), force: false };
    let done = c.cleanup_session(cleanup("s")).await.unwrap().into_inner();
    assert_eq!((done.success, done.resources_cleaned), (true, 1));
    let again = c.cleanup_session(cleanup("s")).await.unwrap().into_inner();
    assert_eq!((again.success, again.resources_cleaned), (true, 0));
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_created_over_grpc_expire_after_the_configured_ttl() {
    let config = ServerConfig {
        session_ttl: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(20),
        ..ServerConfig::default()
    };
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    session(&mut c, "brief").await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let gone = c.get_session(GetSessionRequest { session_id: "brief".into() }).await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    server.shutdown().await;
}

#[tokio::test]
async fn variables_over_grpc() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let id = register(&mut c, "s", "temp", "float", "0.5", r#"{"min": 0, "max": 1}"#).await;
    assert!(id.starts_with("var_temp_"));

    let set = |ident: &str, value: Option<Any>, expected: i64| SetVariableRequest {
        session_id: "s".into(),
        variable_identifier: ident.into(),
        value,
        metadata: HashMap::new(),
        expected_version: expected,
        binary_value: vec![],
    };
    let r = c.set_variable(set("temp", any("float", "1"), 0)).await.unwrap().into_inner();
    assert_eq!((r.success, r.new_version), (true, 2));
    let v = get(&mut c, "s", &id).await;
    assert_eq!((v.version, v.source, v.value.unwrap().value), (2, variable::Source::Python as i32, b"1.0".to_vec()));
    assert_eq!(v.constraints_json, r#"{"max":1.0,"min":0.0}"#);

    // Every refusal names the rule and changes nothing.
    let cases = [
        (set("temp", any("float", "1.5"), 0), Code::InvalidArgument, "value 1.5 is above maximum 1.0"),
        (set("temp", any("integer", "1"), 0), Code::InvalidArgument, "declared as integer"),
        (set("temp", any("float", "{"), 0), Code::InvalidArgument, "not valid UTF-8 JSON"),
        (set("temp", any("float", "0.1"), 1), Code::FailedPrecondition, "current version is 2"),
        (set("nope", any("float", "0.1"), 0), Code::NotFound, "variable \"nope\" not found"),
    ];
    for (req, code, text) in cases {
        let e = c.set_variable(req).await.unwrap_err();
        assert_eq!(e.code(), code, "{text}");
        assert!(e.message().contains(text), "{} should contain {text}", e.message());
    }
    let conflict = c.set_variable(set("temp", any("float", "0.1"), 1)).await.unwrap_err();
    assert_eq!(conflict.metadata().get("snakepit-current-version").unwrap(), "2");
    assert_eq!(get(&mut c, "s", "temp").await.version, 2);

    let dup = c
        .register_variable(RegisterVariableRequest {
            session_id: "s".into(),
            name: "temp".into(),
            r#type: "float".into(),
            initial_value: any("float", "0"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    for (ty, value, constraints, text) in [
        ("decimal", any("decimal", "1"), "", "unknown variable type"),
        ("float", any("integer", "1"), "", "names type \"integer\""),
        ("float", any("float", "1"), "{bad", "constraints_json is not valid JSON"),
        ("float", any("float", "1"), r#"{"min": 2, "max": 1}"#, "greater than max"),
        ("string", any("string", "\"a\""), r#"{"pattern": "(["}"#, "not a valid regular expression"),
    ] {
        let e = c
            .register_variable(RegisterVariableRequest {
                session_id: "s".into(),
                name: "fresh".into(),
                r#type: ty.into(),
                initial_value: value,
                constraints_json: constraints.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{text}");
        assert!(e.message().contains(text), "{} should contain {text}", e.message());
    }

    let list = c
        .list_variables(ListVariablesRequest { session_id: "s".into(), pattern: "te*".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.variables.len(), 1);
    c.delete_variable(DeleteVariableRequest { session_id: "s".into(), variable_identifier: id.clone() }).await.unwrap();
    let gone = c
        .get_variable(GetVariableRequest { session_id: "s".into(), variable_identifier: id, bypass_cache: false })
        .await
        .unwrap_err();
    assert_eq!((gone.code(), kind(&gone)), (Code::NotFound, "variable_not_found"));
    server.shutdown().await;
}

#[tokio::test]
async fn batches_over_grpc() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    for name in ["a", "b"] {
        register(&mut c, "s", name, "integer", "0", r#"{"min": 0}"#).await;
    }
    let got = c
        .get_variables(BatchGetVariablesRequest {
            session_id: "s".into(),
            variable_identifiers: vec!["a".into(), "zzz".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.missing_variables, vec!["zzz".to_string()]);
    // Without include_metadata, values only: no constraints or metadata.
    assert_eq!(got.variables["a"].constraints_json, "");
    let full = c
        .get_variables(BatchGetVariablesRequest {
            session_id: "s".into(),
            variable_identifiers: vec!["a".into()],
            include_metadata: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.variables["a"].constraints_json, r#"{"min":0}"#);

    let batch = |atomic: bool, b: &str| BatchSetVariablesRequest {
        session_id: "s".into(),
        updates: [("a".to_string(), any("integer", "1").unwrap()), ("b".to_string(), any("integer", b).unwrap())]
            .into(),
        atomic,
        ..Default::default()
    };
    let refused = c.set_variables(batch(true, "-1")).await.unwrap().into_inner();
    assert!(!refused.success);
    assert!(refused.new_versions.is_empty());
    assert!(refused.errors["b"].contains("below minimum 0"));
    assert!(!refused.errors.contains_key("a"));
    assert_eq!(get(&mut c, "s", "a").await.version, 1);

    let partial = c.set_variables(batch(false, "\"x\"")).await.unwrap().into_inner();
    assert!(!partial.success);
    assert_eq!(partial.new_versions, [("a".to_string(), 2)].into());
    assert!(partial.errors.contains_key("b"));

    let ok = c.set_variables(batch(true, "7")).await.unwrap().into_inner();
    assert!(ok.success && ok.errors.is_empty());
    assert_eq!(ok.new_versions, [("a".to_string(), 3), ("b".to_string(), 2)].into());
    server.shutdown().await;
}

#[tokio::test]
async fn values_only_gets_answer_in_parallel_lists_and_binary_values_in_the_map() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let t_id = register(&mut c, "s", "t", "float", "0.5", "").await;
    register(&mut c, "s", "n", "integer", "3", "").await;
    register(&mut c, "s", "w", "string", r#""hi, there""#, "").await;
    register(&mut c, "s", "nan", "float", r#""NaN""#, "").await;
    let long: Vec<String> = (0..2048).map(|i| i.to_string()).collect();
    register(&mut c, "s", "emb", "embedding", &format!("[{}]", long.join(",")), "").await;
    let request = |ids: Vec<&str>| BatchGetVariablesRequest {
        session_id: "s".into(),
        variable_identifiers: ids.into_iter().map(String::from).collect(),
        values_only: true,
        ..Default::default()
    };
    let asked = request(vec!["n", &t_id, "zzz", "emb", "w", "nan"]);
    let got = c.get_variables(accept_binary(asked)).await.unwrap().into_inner();
    let values = got.values.unwrap();
    assert_eq!(values.identifiers, [&"n".to_string(), &t_id, &"w".into(), &"nan".into()].map(String::clone));
    assert_eq!(values.names, ["n", "t", "w", "nan"]);
    assert_eq!(values.ids[1], t_id);
    assert_eq!(values.types, ["integer", "float", "string", "float"]);
    assert_eq!(values.versions, [1, 1, 1, 1]);
    // Floats travel packed (NaN as it is), the rest as one JSON array, each in order.
    assert_eq!(String::from_utf8(values.values_json).unwrap(), r#"[3,"hi, there"]"#);
    assert_eq!(values.floats[0], 0.5);
    assert!(values.floats[1].is_nan() && values.floats.len() == 2);
    assert_eq!(got.missing_variables, ["zzz"]);
    // The binary-path value comes as a full message, as without values_only.
    assert_eq!(got.variables.len(), 1);
    assert_eq!(got.variables["emb"].value.as_ref().unwrap().type_url, "type.googleapis.com/snakepit.embedding.binary");
    assert_eq!(got.variables["emb"].binary_value.len(), 2048 * 8);

    let none = c.get_variables(request(vec!["zzz"])).await.unwrap().into_inner().values.unwrap();
    assert_eq!((none.values_json, none.floats.len()), (b"[]".to_vec(), 0));
    server.shutdown().await;
}

#[tokio::test]
async fn compact_sets_are_typed_by_the_variable_and_join_the_same_batch() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "float", "0.5", "").await;
    register(&mut c, "s", "k", "integer", "0", r#"{"min": 0}"#).await;
    register(&mut c, "s", "m", "choice", r#""a""#, r#"{"choices": ["a", "b"]}"#).await;
    let set = |atomic: bool, idents: &[&str], json: &str, with_any: bool| BatchSetVariablesRequest {
        session_id: "s".into(),
        updates: if with_any { [("m".to_string(), any("choice", r#""b""#).unwrap())].into() } else { HashMap::new() },
        atomic,
        value_identifiers: idents.iter().map(|s| s.to_string()).collect(),
        values_json: json.as_bytes().to_vec(),
        ..Default::default()
    };
    let floats = |idents: &[&str], xs: &[f64]| BatchSetVariablesRequest {
        session_id: "s".into(),
        float_identifiers: idents.iter().map(|s| s.to_string()).collect(),
        float_values: xs.to_vec(),
        ..Default::default()
    };

    // An integer JSON number for a float variable is a float; NaN travels as a string.
    let ok = c.set_variables(set(true, &["x", "k"], "[2, 5]", true)).await.unwrap().into_inner();
    assert!(ok.success && ok.errors.is_empty(), "{:?}", ok.errors);
    assert_eq!(ok.new_versions, [("x".to_string(), 2), ("k".to_string(), 2), ("m".to_string(), 2)].into());
    assert_eq!(get(&mut c, "s", "x").await.value.unwrap().value, b"2.0");
    let nan = c.set_variables(set(false, &["x"], r#"["NaN"]"#, false)).await.unwrap().into_inner();
    assert!(nan.success, "{:?}", nan.errors);
    // Packed floats: typed by the variable too (an integral float for an integer is that integer).
    let packed = c.set_variables(floats(&["x", "k"], &[f64::INFINITY, 4.0])).await.unwrap().into_inner();
    assert!(packed.success, "{:?}", packed.errors);
    assert_eq!(get(&mut c, "s", "x").await.value.unwrap().value, br#""Infinity""#);
    assert_eq!(get(&mut c, "s", "k").await.value.unwrap().value, b"4");
    let fractional = c.set_variables(floats(&["k"], &[4.5])).await.unwrap().into_inner();
    assert!(fractional.errors.contains_key("k"), "{:?}", fractional);

    // Per-key refusals are reported like the map form's; atomic applies none.
    let refused = c.set_variables(set(true, &["x", "k", "ghost"], "[1.5, -1, 0]", false)).await.unwrap().into_inner();
    assert!(!refused.success && refused.new_versions.is_empty());
    assert!(refused.errors["k"].contains("below minimum 0"), "{:?}", refused.errors);
    assert!(refused.errors["ghost"].contains("not found"), "{:?}", refused.errors);
    let partial = c.set_variables(set(false, &["x", "k"], r#"[1.5, "seven"]"#, false)).await.unwrap().into_inner();
    assert_eq!(partial.new_versions, [("x".to_string(), 5)].into());
    assert!(partial.errors.contains_key("k"));

    // A malformed compact part refuses the whole request and changes nothing.
    for (idents, json, says) in [
        (&["x"][..], "[1.0", "values_json must be a JSON array"),
        (&["x"][..], "{}", "values_json must be a JSON array"),
        (&["x", "k"][..], "[1.0]", "1 values for 2 value_identifiers"),
        (&["x", "x"][..], "[1.0, 2.0]", "\"x\" is given more than once"),
        (&["m"][..], r#"["a"]"#, "\"m\" is given more than once"),
    ] {
        let err = c.set_variables(set(false, idents, json, true)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{json}");
        assert!(err.message().contains(says), "{}", err.message());
    }
    for (request, says) in [
        (floats(&["x", "k"], &[1.0]), "float_values has 1 values for 2 float_identifiers"),
        (
            BatchSetVariablesRequest { values_json: b"[1]".to_vec(), ..floats(&["x"], &[1.0]) },
            "1 values for 0 value_identifiers",
        ),
        (
            BatchSetVariablesRequest {
                value_identifiers: vec!["x".into()],
                values_json: b"[1]".to_vec(),
                ..floats(&["x"], &[1.0])
            },
            "\"x\" is given more than once",
        ),
    ] {
        let err = c.set_variables(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(says), "{}", err.message());
    }
    assert_eq!(get(&mut c, "s", "x").await.version, 5);
    assert_eq!(get(&mut c, "s", "m").await.version, 2);
    server.shutdown().await;
}

#[tokio::test]
async fn binary_path_round_trips_and_refuses_other_formats() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let data: Vec<f64> = (0..2048).map(|i| i as f64 * 0.5).collect();
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let meta = r#"{"shape": [2048], "dtype": "float64", "binary_format": "raw_le"}"#;
    c.register_variable(RegisterVariableRequest {
        session_id: "s".into(),
        name: "emb".into(),
        r#type: "embedding".into(),
        initial_value: any("embedding.binary", meta),
        initial_binary_value: bytes.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let asked = GetVariableRequest { session_id: "s".into(), variable_identifier: "emb".into(), bypass_cache: false };
    let v = c.get_variable(accept_binary(asked)).await.unwrap().into_inner().variable.unwrap();
    assert_eq!(v.value.unwrap().type_url, "type.googleapis.com/snakepit.embedding.binary");
    assert_eq!(v.binary_value, bytes);

    let pickle = c
        .set_variable(SetVariableRequest {
            session_id: "s".into(),
            variable_identifier: "emb".into(),
            value: any("embedding.binary", r#"{"shape": [1], "binary_format": "pickle"}"#),
            binary_value: vec![0; 8],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(pickle.code(), Code::InvalidArgument);
    assert_eq!(get(&mut c, "s", "emb").await.version, 1);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_and_change_nothing() {
    let config = ServerConfig::with_max_message_bytes(64 * 1024);
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "text", "string", "\"small\"", "").await;
    let huge = format!("\"{}\"", "x".repeat(100 * 1024));
    let e = c
        .set_variable(SetVariableRequest {
            session_id: "s".into(),
            variable_identifier: "text".into(),
            value: any("string", &huge),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(matches!(e.code(), Code::ResourceExhausted | Code::OutOfRange), "{e:?}");
    assert_eq!(get(&mut c, "s", "text").await.version, 1);
    server.shutdown().await;
}

#[test]
fn running_server_starts_stops_and_restarts_on_the_same_port() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::new();
    let start = |port: u16| {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        RunningServer::start(rt.handle(), store.clone(), listener, ServerConfig::default()).unwrap()
    };
    let ping = |addr: SocketAddr| {
        rt.block_on(async move {
            let mut c = BridgeServiceClient::connect(format!("http://{addr}")).await?;
            c.ping(PingRequest { message: "p".into() }).await.map_err(Into::into).map(|_| ())
        })
    };
    let first = start(0);
    let addr = first.local_addr();
    assert_ne!(addr.port(), 0);
    ping(addr).map_err(|e: Box<dyn std::error::Error>| e.to_string()).unwrap();
    assert!(first.stop(Duration::from_secs(5)), "stops within the grace period");
    assert!(ping(addr).is_err(), "nothing answers after stop");

    let second = start(addr.port());
    assert_eq!(second.local_addr(), addr);
    ping(addr).map_err(|e| e.to_string()).unwrap();
    drop(second); // Dropping also stops it.
}

fn exhausted(e: &tonic::Status, limit: &str) {
    assert_eq!((e.code(), kind(e)), (Code::ResourceExhausted, "resource_exhausted"), "{e:?}");
    assert!(e.message().contains(&format!("over the limit {limit} = ")), "{}", e.message());
}

#[tokio::test]
async fn watch_streams_are_limited_per_connection_and_in_all() {
    let config = ServerConfig { max_watchers_per_connection: 2, max_watchers: 3, ..ServerConfig::default() };
    let server = TestServer::start(config).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "1", "").await;
    let watch = || WatchVariablesRequest {
        session_id: "s".into(),
        variable_identifiers: vec!["x".into()],
        include_initial_values: true,
        ..Default::default()
    };
    let mut first = c.watch_variables(watch()).await.unwrap().into_inner();
    let _second = c.watch_variables(watch()).await.unwrap().into_inner();
    exhausted(&c.watch_variables(watch()).await.unwrap_err(), "max_watchers_per_connection");
    // Another connection has its own two, but the server only one more.
    let mut other = server.client().await;
    let _third = other.watch_variables(watch()).await.unwrap().into_inner();
    exhausted(&other.watch_variables(watch()).await.unwrap_err(), "max_watchers");
    // The first keeps working; ending it frees a slot.
    assert_eq!(first.message().await.unwrap().unwrap().update_type, "initial_value");
    drop(first);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match other.watch_variables(watch()).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                exhausted(&e, "max_watchers");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the slot was never freed: {e:?}"),
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_response_that_would_not_fit_is_refused_with_advice() {
    let server = TestServer::start(ServerConfig::with_max_message_bytes(64 * 1024)).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    let limits = server.store.limits();
    // Each value alone fits; together they do not.
    let text = format!("\"{}\"", "x".repeat(limits.max_value_bytes - 2));
    for name in ["a", "b"] {
        register(&mut c, "s", name, "string", &text, "").await;
        assert_eq!(get(&mut c, "s", name).await.version, 1, "each can be read back");
    }
    let over = format!("\"{}\"", "x".repeat(limits.max_value_bytes - 1));
    let e = c
        .register_variable(RegisterVariableRequest {
            session_id: "s".into(),
            name: "c".into(),
            r#type: "string".into(),
            initial_value: any("string", &over),
            ..Default::default()
        })
        .await
        .unwrap_err();
    exhausted(&e, "max_value_bytes");
    let e =
        c.list_variables(ListVariablesRequest { session_id: "s".into(), pattern: String::new() }).await.unwrap_err();
    exhausted(&e, "max_message_bytes");
    assert!(e.message().contains("narrow the pattern"), "{}", e.message());
    let both = BatchGetVariablesRequest {
        session_id: "s".into(),
        variable_identifiers: vec!["a".into(), "b".into()],
        ..Default::default()
    };
    exhausted(&c.get_variables(both).await.unwrap_err(), "max_message_bytes");
    let one = ListVariablesRequest { session_id: "s".into(), pattern: "a".into() };
    assert_eq!(c.list_variables(one).await.unwrap().into_inner().variables.len(), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn an_atomic_batch_with_an_unpaired_binary_payload_applies_nothing() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut c = server.client().await;
    session(&mut c, "s").await;
    register(&mut c, "s", "x", "integer", "1", "").await;
    register(&mut c, "s", "e", "embedding", "[1.0]", "").await;
    let batch = |atomic: bool| BatchSetVariablesRequest {
        session_id: "s".into(),
        updates: [("x".to_string(), any("integer", "2").unwrap())].into(),
        binary_updates: [("e".to_string(), vec![0u8; 8])].into(),
        atomic,
        ..Default::default()
    };
    let refused = c.set_variables(batch(true)).await.unwrap().into_inner();
    assert!(!refused.success && refused.new_versions.is_empty(), "{refused:?}");
    assert!(refused.errors["e"].contains("binary_updates has this key"), "{refused:?}");
    assert_eq!(get(&mut c, "s", "x").await.version, 1, "all or nothing");
    let partial = c.set_variables(batch(false)).await.unwrap().into_inner();
    assert_eq!((partial.success, partial.new_versions.get("x")), (false, Some(&2)));
    assert!(partial.errors.contains_key("e"));
    server.shutdown().await;
}
