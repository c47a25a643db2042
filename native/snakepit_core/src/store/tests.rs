use super::*;
use crate::clock::ManualClock;

fn store() -> (Store, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    (Store::with_clock(clock.clone()), clock)
}

fn session(store: &Store, id: &str) {
    store.create_session(id, Metadata::new(), DEFAULT_SESSION_TTL).unwrap();
}

fn float_var(name: &str, value: f64) -> NewVariable {
    NewVariable {
        name: name.into(),
        ty: VarType::Float,
        value: Raw::Float(value),
        constraints: Raw::Map(vec![("min".into(), Raw::Float(0.0)), ("max".into(), Raw::Float(1.0))]),
        metadata: Metadata::new(),
    }
}

fn elixir() -> Change {
    Change::from(Source::Elixir)
}

#[test]
fn session_lifecycle() {
    let (s, _) = store();
    let meta: Metadata = [("owner".to_string(), "test".to_string())].into();
    let created = s.create_session("s1", meta.clone(), DEFAULT_SESSION_TTL).unwrap();
    assert_eq!(created.id, "s1");
    assert_eq!(created.metadata, meta);
    assert!(s.session_exists("s1"));
    assert_eq!(s.list_sessions(), vec!["s1".to_string()]);
    assert_eq!(
        s.create_session("s1", Metadata::new(), DEFAULT_SESSION_TTL).unwrap_err(),
        StoreError::SessionExists("s1".into())
    );
    s.register_variable("s1", float_var("x", 0.5), Source::Elixir).unwrap();
    assert_eq!(s.get_session("s1").unwrap().variable_count, 1);
    assert_eq!(s.delete_session("s1", Source::Elixir), Some(1));
    assert_eq!(s.delete_session("s1", Source::Elixir), None);
    assert!(!s.session_exists("s1"));
    assert_eq!(s.get_session("s1").unwrap_err(), StoreError::SessionNotFound("s1".into()));
}

#[test]
fn session_ids_are_validated() {
    let (s, _) = store();
    for bad in ["", "a\nb", &"x".repeat(MAX_NAME_BYTES + 1)] {
        let e = s.create_session(bad, Metadata::new(), DEFAULT_SESSION_TTL).unwrap_err();
        assert_eq!(e.kind(), "invalid_argument", "{bad:?}");
    }
    for good in ["with space", "a/b.c-d", "ünïcode", &"x".repeat(MAX_NAME_BYTES)] {
        s.create_session(good, Metadata::new(), DEFAULT_SESSION_TTL).unwrap();
    }
    let e = s.create_session("z", Metadata::new(), Duration::ZERO).unwrap_err();
    assert!(e.to_string().contains("ttl"));
}

#[test]
fn idle_sessions_expire_and_access_refreshes_them() {
    let (s, clock) = store();
    s.create_session("short", Metadata::new(), Duration::from_secs(10)).unwrap();
    s.create_session("long", Metadata::new(), Duration::from_secs(100)).unwrap();
    clock.advance(Duration::from_secs(8));
    assert!(s.touch_session("short"));
    clock.advance(Duration::from_secs(8));
    // 16 s since creation but only 8 s idle.
    assert!(s.session_exists("short"));
    s.register_variable("short", float_var("x", 0.1), Source::Python).unwrap();
    clock.advance(Duration::from_secs(9));
    assert!(s.get_variable("short", "x").is_ok(), "a variable read counts as access");
    clock.advance(Duration::from_secs(11));
    assert!(!s.session_exists("short"));
    assert!(s.session_exists("long"));
    assert_eq!(s.list_sessions(), vec!["long".to_string()]);
    assert_eq!(s.get_variable("short", "x").unwrap_err().kind(), "session_not_found");
    assert!(!s.touch_session("short"));
    // An expired id can be created again.
    s.create_session("short", Metadata::new(), Duration::from_secs(10)).unwrap();
    assert!(!s.has_variable("short", "x").unwrap());
}

#[test]
fn sweep_removes_only_expired_sessions() {
    let (s, clock) = store();
    s.create_session("a", Metadata::new(), Duration::from_secs(5)).unwrap();
    s.create_session("b", Metadata::new(), Duration::from_secs(50)).unwrap();
    assert!(s.sweep_expired().is_empty());
    clock.advance(Duration::from_secs(6));
    assert_eq!(s.sweep_expired(), vec!["a".to_string()]);
    assert_eq!(s.list_sessions(), vec!["b".to_string()]);
    assert_eq!(s.delete_session("a", Source::Elixir), None);
}

#[test]
fn register_get_update_versions_and_source() {
    let (s, clock) = store();
    session(&s, "s");
    let v = s.register_variable("s", float_var("temperature", 0.7), Source::Elixir).unwrap();
    assert!(v.id.starts_with("var_temperature_"));
    assert_eq!((v.version, v.source), (1, Source::Elixir));
    clock.advance(Duration::from_millis(3));
    let change = Change {
        source: Source::Python,
        metadata: [("reason".to_string(), "tuning".to_string())].into(),
        expected_version: 0,
    };
    assert_eq!(s.update_variable("s", "temperature", Raw::Int(1), &change).unwrap(), 2);
    let by_id = s.get_variable("s", &v.id).unwrap();
    let by_name = s.get_variable("s", "temperature").unwrap();
    assert_eq!(by_id.id, by_name.id);
    assert_eq!(*by_name.value, Value::Float(1.0));
    assert_eq!((by_name.version, by_name.source), (2, Source::Python));
    assert_eq!(by_name.metadata.get("reason").map(String::as_str), Some("tuning"));
    assert_eq!(by_name.updated_at_us - by_name.created_at_us, 3000);
}

#[test]
fn refused_writes_change_nothing() {
    let (s, _) = store();
    session(&s, "s");
    s.register_variable("s", float_var("t", 0.5), Source::Elixir).unwrap();
    let e = s.update_variable("s", "t", Raw::Float(1.5), &elixir()).unwrap_err();
    assert_eq!(e.to_string(), "variable \"t\": value 1.5 is above maximum 1.0");
    let e = s.update_variable("s", "t", Raw::Str("hot".into()), &elixir()).unwrap_err();
    assert_eq!(e.kind(), "invalid_value");
    let v = s.get_variable("s", "t").unwrap();
    assert_eq!((v.value.as_ref(), v.version), (&Value::Float(0.5), 1));

    let e = s.register_variable("s", float_var("t", 0.1), Source::Elixir).unwrap_err();
    assert_eq!(e, StoreError::VariableExists("t".into()));
    let e = s.register_variable("s", float_var("u", 3.0), Source::Elixir).unwrap_err();
    assert_eq!(e.kind(), "invalid_value");
    let mut bad = float_var("u", 0.1);
    bad.constraints = Raw::Map(vec![("choices".into(), Raw::List(vec![]))]);
    assert_eq!(s.register_variable("s", bad, Source::Elixir).unwrap_err().kind(), "invalid_constraints");
    assert!(!s.has_variable("s", "u").unwrap());
    assert_eq!(s.get_session("s").unwrap().variable_count, 1);
}

#[test]
fn optimistic_locking() {
    let (s, _) = store();
    session(&s, "s");
    s.register_variable("s", float_var("t", 0.5), Source::Elixir).unwrap();
    let at = |v| Change { expected_version: v, ..elixir() };
    assert_eq!(s.update_variable("s", "t", Raw::Float(0.6), &at(1)).unwrap(), 2);
    let e = s.update_variable("s", "t", Raw::Float(0.7), &at(1)).unwrap_err();
    assert_eq!(e, StoreError::VersionConflict { expected: 1, current: 2 });
    assert_eq!(*s.get_variable("s", "t").unwrap().value, Value::Float(0.6));
    assert_eq!(s.update_variable("s", "t", Raw::Float(0.7), &at(0)).unwrap(), 3);
}

#[test]
fn unknown_session_and_variable() {
    let (s, _) = store();
    assert_eq!(s.get_variable("nope", "x").unwrap_err().kind(), "session_not_found");
    session(&s, "s");
    let e = s.get_variable("s", "x").unwrap_err();
    assert_eq!(e.kind(), "variable_not_found");
    assert_eq!(e.to_string(), "variable \"x\" not found in session \"s\"");
    assert_eq!(s.update_variable("s", "x", Raw::Int(1), &elixir()).unwrap_err().kind(), "variable_not_found");
    assert_eq!(s.delete_variable("s", "x").unwrap_err().kind(), "variable_not_found");
}

#[test]
fn ids_are_unique_and_never_reused_after_delete() {
    let (s, _) = store();
    session(&s, "s");
    let first = s.register_variable("s", float_var("x", 0.1), Source::Elixir).unwrap();
    s.delete_variable("s", &first.id).unwrap();
    assert!(!s.has_variable("s", "x").unwrap());
    let second = s.register_variable("s", float_var("x", 0.1), Source::Elixir).unwrap();
    assert_ne!(first.id, second.id);
    assert_eq!(second.version, 1);
}

#[test]
fn batch_get_reports_missing() {
    let (s, _) = store();
    session(&s, "s");
    let a = s.register_variable("s", float_var("a", 0.1), Source::Elixir).unwrap();
    let keys = vec![a.id.to_string(), "nope".to_string()];
    let BatchGet { found, missing } = s.get_variables("s", keys).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, a.id.to_string());
    assert_eq!(missing, vec!["nope".to_string()]);
}

#[test]
fn atomic_batch_is_all_or_nothing() {
    let (s, _) = store();
    session(&s, "s");
    for n in ["a", "b", "c"] {
        s.register_variable("s", float_var(n, 0.1), Source::Elixir).unwrap();
    }
    let bad = vec![
        ("a".to_string(), Raw::Float(0.2).into()),
        ("b".to_string(), Raw::Float(5.0).into()),
        ("zzz".to_string(), Raw::Float(0.2).into()),
    ];
    let out = s.update_variables("s", bad, true, &elixir()).unwrap();
    assert!(out.applied.is_empty());
    let keys: Vec<&str> = out.errors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["b", "zzz"]);
    assert_eq!(s.get_variable("s", "a").unwrap().version, 1);

    let good = vec![("a".to_string(), Raw::Float(0.2).into()), ("c".to_string(), Raw::Float(0.3).into())];
    let out = s.update_variables("s", good, true, &elixir()).unwrap();
    assert_eq!(out.applied, vec![("a".to_string(), 2), ("c".to_string(), 2)]);
    assert!(out.errors.is_empty());
}

#[test]
fn non_atomic_batch_applies_what_is_valid() {
    let (s, _) = store();
    session(&s, "s");
    for n in ["a", "b"] {
        s.register_variable("s", float_var(n, 0.1), Source::Elixir).unwrap();
    }
    let mixed = vec![("a".to_string(), Raw::Float(0.9).into()), ("b".to_string(), Raw::Str("x".into()).into())];
    let out = s.update_variables("s", mixed, false, &Change::from(Source::Python)).unwrap();
    assert_eq!(out.applied, vec![("a".to_string(), 2)]);
    assert_eq!(out.errors.len(), 1);
    assert_eq!(out.errors[0].0, "b");
    assert_eq!(s.get_variable("s", "a").unwrap().source, Source::Python);
    assert_eq!(s.get_variable("s", "b").unwrap().version, 1);
}

#[test]
fn list_by_glob_sorted_by_name() {
    let (s, _) = store();
    session(&s, "s");
    for n in ["temp_b", "temp_a", "other", "temp"] {
        s.register_variable("s", float_var(n, 0.1), Source::Elixir).unwrap();
    }
    let names = |p: Option<&str>| -> Vec<String> {
        s.list_variables("s", p).unwrap().iter().map(|v| v.name.to_string()).collect()
    };
    assert_eq!(names(Some("temp_*")), ["temp_a", "temp_b"]);
    assert_eq!(names(None), ["other", "temp", "temp_a", "temp_b"]);
    assert_eq!(names(Some("")), names(None));
    assert_eq!(names(Some("temp?a")), ["temp_a"]);
}

#[test]
fn declared_type_must_match_and_decode_errors_are_per_key() {
    let (s, _) = store();
    session(&s, "s");
    s.register_variable("s", float_var("a", 0.1), Source::Elixir).unwrap();
    let wrong = Input { value: Ok(Raw::Int(1)), declared: Some(VarType::Integer) };
    let e = s.update_variable("s", "a", wrong, &elixir()).unwrap_err();
    assert_eq!(e.kind(), "invalid_argument");
    assert!(e.to_string().contains("declared as integer"), "{e}");
    let undecodable = Input { value: Err(StoreError::InvalidArgument("bad json".into())), declared: None };
    let out = s
        .update_variables("s", vec![("a".into(), undecodable), ("a".into(), Raw::Float(0.3).into())], true, &elixir())
        .unwrap();
    assert!(out.applied.is_empty());
    assert_eq!(out.errors, vec![("a".to_string(), StoreError::InvalidArgument("bad json".into()))]);
    assert_eq!(s.get_variable("s", "a").unwrap().version, 1);
}

fn text_var(name: &str, value: &str) -> NewVariable {
    NewVariable {
        name: name.into(),
        ty: VarType::String,
        value: Raw::Str(value.into()),
        constraints: Raw::Nil,
        metadata: Metadata::new(),
    }
}

/// A refusal over a limit names the limit and its value.
fn over(e: StoreError, limit: &str, value: usize) {
    assert_eq!(e.kind(), "resource_exhausted", "{e}");
    assert!(e.to_string().ends_with(&format!("over the limit {limit} = {value}")), "{e}");
}

fn small_limits() -> Limits {
    Limits {
        max_sessions: 2,
        max_variables_per_session: 2,
        max_value_bytes: 100,
        max_metadata_entries: 2,
        max_metadata_bytes: 20,
        max_constraint_bytes: 80,
        max_batch: 3,
        max_pattern_bytes: 8,
    }
}

#[test]
fn sessions_and_variables_are_counted() {
    let (s, clock) = store();
    s.set_limits(small_limits());
    s.create_session("a", Metadata::new(), Duration::from_secs(5)).unwrap();
    session(&s, "b");
    over(s.create_session("c", Metadata::new(), DEFAULT_SESSION_TTL).unwrap_err(), "max_sessions", 2);
    assert_eq!(s.list_sessions(), vec!["a".to_string(), "b".to_string()]);
    // An expired session, swept or not, no longer counts.
    clock.advance(Duration::from_secs(6));
    session(&s, "c");
    s.register_variable("b", float_var("x", 0.5), Source::Elixir).unwrap();
    s.register_variable("b", float_var("y", 0.5), Source::Elixir).unwrap();
    over(s.register_variable("b", float_var("z", 0.5), Source::Elixir).unwrap_err(), "max_variables_per_session", 2);
    s.delete_variable("b", "x").unwrap();
    s.register_variable("b", float_var("z", 0.5), Source::Elixir).unwrap();
}

#[test]
fn what_is_stored_fits_the_value_limit_measured_as_json() {
    let (s, _) = store();
    s.set_limits(small_limits());
    session(&s, "s");
    // 98 characters + 2 quotes = 100 bytes of JSON: the most allowed.
    s.register_variable("s", text_var("t", &"x".repeat(98)), Source::Elixir).unwrap();
    over(s.register_variable("s", text_var("u", &"x".repeat(99)), Source::Elixir).unwrap_err(), "max_value_bytes", 100);
    // Escapes count: 49 newlines are 98 bytes of JSON, plus quotes.
    let e = s.update_variable("s", "t", Raw::Str("\n".repeat(50)), &elixir()).unwrap_err();
    over(e, "max_value_bytes", 100);
    assert_eq!(s.get_variable("s", "t").unwrap().version, 1, "refused, unchanged");
    s.update_variable("s", "t", Raw::Str("\n".repeat(49)), &elixir()).unwrap();
    let emb = NewVariable { ty: VarType::Embedding, value: Raw::Floats(vec![0.0; 4]), ..text_var("e", "") };
    let e = s.register_variable("s", emb, Source::Elixir).unwrap_err();
    over(e, "max_value_bytes", 100);
}

#[test]
fn metadata_is_bounded_per_session_variable_and_after_merging() {
    let (s, _) = store();
    s.set_limits(small_limits());
    let three: Metadata =
        [("a", "1"), ("b", "2"), ("c", "3")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    over(s.create_session("s", three.clone(), DEFAULT_SESSION_TTL).unwrap_err(), "max_metadata_entries", 2);
    session(&s, "s");
    over(
        s.register_variable("s", NewVariable { metadata: three, ..text_var("t", "") }, Source::Elixir).unwrap_err(),
        "max_metadata_entries",
        2,
    );
    s.register_variable("s", text_var("t", "v0"), Source::Elixir).unwrap();
    let change = |k: &str, v: &str| Change { metadata: [(k.to_string(), v.to_string())].into(), ..elixir() };
    s.update_variable("s", "t", Raw::Str("v1".into()), &change("a", "1")).unwrap();
    s.update_variable("s", "t", Raw::Str("v2".into()), &change("b", "2")).unwrap();
    // Replacing a key adds no entry; a third key would.
    s.update_variable("s", "t", Raw::Str("v3".into()), &change("a", "x")).unwrap();
    over(s.update_variable("s", "t", Raw::Str("v4".into()), &change("c", "3")).unwrap_err(), "max_metadata_entries", 2);
    over(
        s.update_variable("s", "t", Raw::Str("v4".into()), &change("a", &"x".repeat(30))).unwrap_err(),
        "max_metadata_bytes",
        20,
    );
    let batch =
        s.update_variables("s", vec![("t".into(), Raw::Str("v4".into()).into())], true, &change("c", "3")).unwrap();
    over(batch.errors.into_iter().next().unwrap().1, "max_metadata_entries", 2);
    let t = s.get_variable("s", "t").unwrap();
    assert_eq!((t.version, t.metadata.len(), &*t.value), (4, 2, &Value::Text("v3".into())));
}

#[test]
fn batches_constraints_and_patterns_are_bounded() {
    let (s, _) = store();
    s.set_limits(small_limits());
    session(&s, "s");
    let four: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    over(s.get_variables("s", four.clone()).unwrap_err(), "max_batch", 3);
    let updates = four.iter().map(|k| (k.clone(), Input::from(Raw::Int(1)))).collect();
    over(s.update_variables("s", updates, false, &elixir()).unwrap_err(), "max_batch", 3);
    let watch = WatchRequest { identifiers: four, ..WatchRequest::default() };
    over(s.watch("s", &watch, Owner::Grpc).unwrap_err(), "max_batch", 3);
    let regex = Raw::Map(vec![("pattern".into(), Raw::Str("a".repeat(100)))]);
    let e = s.register_variable("s", NewVariable { constraints: regex, ..text_var("t", "") }, Source::Elixir);
    over(e.unwrap_err(), "max_constraint_bytes", 80);
    over(s.list_variables("s", Some("*********")).unwrap_err(), "max_pattern_bytes", 8);
    s.register_variable("s", text_var("ab", ""), Source::Elixir).unwrap();
    let names: Vec<_> = s.list_variables("s", Some("*b")).unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, vec![Arc::from("ab")]);
}

#[test]
fn a_huge_tensor_shape_is_refused_and_changes_nothing() {
    let (s, _) = store();
    session(&s, "s");
    let tensor = |dims: Vec<i64>| {
        Raw::Map(vec![
            ("shape".into(), Raw::List(dims.into_iter().map(Raw::Int).collect())),
            ("data".into(), Raw::List(vec![])),
        ])
    };
    let new = NewVariable { ty: VarType::Tensor, value: tensor(vec![1 << 40]), ..text_var("t", "") };
    assert_eq!(s.register_variable("s", new, Source::Elixir).unwrap_err().kind(), "invalid_value");
    let new = NewVariable { ty: VarType::Tensor, value: tensor(vec![0]), ..text_var("t", "") };
    s.register_variable("s", new, Source::Elixir).unwrap();
    let e = s.update_variable("s", "t", tensor(vec![1 << 40]), &elixir()).unwrap_err();
    assert_eq!(e.kind(), "invalid_value");
    assert_eq!(s.get_variable("s", "t").unwrap().version, 1);
}

#[test]
fn a_name_never_collides_with_an_id() {
    let (s, _) = store();
    session(&s, "s");
    let x = s.register_variable("s", float_var("x", 0.5), Source::Elixir).unwrap();
    let e = s.register_variable("s", float_var(&x.id, 0.5), Source::Elixir).unwrap_err();
    assert!(e.to_string().contains("is the id of another variable"), "{e}");
    // A name shaped like y's coming id (the squatter's own registration takes
    // one suffix first): y's id skips it, so both stay reachable.
    let next = NEXT_VARIABLE_SUFFIX.load(Ordering::Relaxed) + 1;
    let squatter = format!("{ID_PREFIX}y_{}{next}", *PROCESS_NONCE);
    let squatter_id = s.register_variable("s", float_var(&squatter, 0.5), Source::Elixir).unwrap().id;
    let y = s.register_variable("s", float_var("y", 0.5), Source::Elixir).unwrap();
    assert_ne!(&*y.id, squatter.as_str());
    assert_eq!(s.get_variable("s", &squatter).unwrap().id, squatter_id);
    assert_eq!(s.get_variable("s", &y.id).unwrap().name, y.name);
}
