//! The watch guarantees, end to end through the store: what writers commit
//! is what watchers get.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::ManualClock;
use crate::model::{Metadata, Source, Update, UpdateKind};
use crate::store::{Change, NewVariable, Store, WatchRequest, DEFAULT_SESSION_TTL};
use crate::value::{Raw, Value, VarType};
use crate::watch::{Owner, Subscription};

fn store_with(names: &[&str]) -> Store {
    let store = Store::new();
    store.create_session("s", Metadata::new(), DEFAULT_SESSION_TTL).unwrap();
    for n in names {
        let new = NewVariable {
            name: n.to_string(),
            ty: VarType::Integer,
            value: Raw::Int(0),
            constraints: Raw::Nil,
            metadata: Metadata::new(),
        };
        store.register_variable("s", new, Source::Elixir).unwrap();
    }
    store
}

fn watch(store: &Store, names: &[&str], initial: bool) -> Subscription {
    let req = WatchRequest {
        identifiers: names.iter().map(|s| s.to_string()).collect(),
        include_initial: initial,
        ..Default::default()
    };
    store.watch("s", &req, Owner::Grpc).unwrap()
}

fn set(store: &Store, name: &str, v: i64) -> i64 {
    store.update_variable("s", name, Raw::Int(v), &Change::from(Source::Elixir)).unwrap()
}

/// Collects updates until `done` says stop, failing after a few seconds.
async fn collect(sub: &Subscription, mut done: impl FnMut(&[Update]) -> bool) -> Vec<Update> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(&got) {
        match tokio::time::timeout_at(deadline, sub.next_batch()).await {
            Ok(Some(batch)) => got.extend(batch),
            Ok(None) => break,
            Err(_) => panic!("timed out; got {} updates: {:?}", got.len(), summary(&got)),
        }
    }
    got
}

fn summary(updates: &[Update]) -> Vec<(String, UpdateKind, i64)> {
    updates
        .iter()
        .map(|u| {
            let (name, version) = u.variable.as_ref().map_or((String::new(), 0), |v| (v.name.to_string(), v.version));
            (name, u.kind, version)
        })
        .collect()
}

fn int(u: &Update) -> i64 {
    match *u.variable.as_ref().unwrap().value {
        Value::Integer(i) => i,
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn initial_values_then_changes_in_order() {
    let store = store_with(&["a", "b"]);
    set(&store, "a", 5);
    let sub = watch(&store, &["a", "b"], true);
    assert_eq!(store.get_session("s").unwrap().watcher_count, 1);
    let initial = collect(&sub, |g| g.len() >= 2).await;
    assert_eq!(
        summary(&initial),
        vec![("a".into(), UpdateKind::InitialValue, 2), ("b".into(), UpdateKind::InitialValue, 1)]
    );
    // A watcher that keeps up gets every change, in order.
    set(&store, "b", 1);
    let first = collect(&sub, |g| !g.is_empty()).await;
    set(&store, "a", 6);
    let second = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&first), vec![("b".into(), UpdateKind::ValueChange, 2)]);
    assert_eq!(summary(&second), vec![("a".into(), UpdateKind::ValueChange, 3)]);
    assert_eq!(int(&second[0]), 6);
    assert_eq!(second[0].source, Source::Elixir);
}

#[tokio::test]
async fn changes_before_the_first_read_coalesce_into_the_initial_values() {
    let store = store_with(&["a"]);
    let sub = watch(&store, &["a"], true);
    set(&store, "a", 1);
    set(&store, "a", 2);
    let got = collect(&sub, |g| !g.is_empty()).await;
    // The stream still starts with an initial value: the latest one.
    assert_eq!(summary(&got), vec![("a".into(), UpdateKind::InitialValue, 3)]);
}

#[tokio::test]
async fn without_initial_values_only_later_changes_arrive() {
    let store = store_with(&["a", "other"]);
    set(&store, "a", 1);
    let sub = watch(&store, &["a"], false);
    set(&store, "other", 9);
    set(&store, "a", 2);
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&got), vec![("a".into(), UpdateKind::ValueChange, 3)]);
}

#[tokio::test]
async fn a_watcher_that_reads_nothing_is_coalesced_to_the_latest_value() {
    let store = store_with(&["a", "b"]);
    let sub = watch(&store, &["a", "b"], false);
    for i in 1..=20_000 {
        set(&store, if i % 2 == 0 { "a" } else { "b" }, i);
    }
    // Wait until the dispatcher has caught up, checking the bound all along.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending: Vec<(String, i64)> =
            sub.pending().iter().map(|u| (u.variable.as_ref().unwrap().name.to_string(), u.version())).collect();
        assert!(pending.len() <= 2, "at most one pending update per watched variable: {pending:?}");
        let caught_up = pending.contains(&("a".into(), 10_001)) && pending.contains(&("b".into(), 10_001));
        if caught_up {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "dispatcher never caught up: {pending:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(
        summary(&got),
        vec![("b".into(), UpdateKind::ValueChange, 10_001), ("a".into(), UpdateKind::ValueChange, 10_001)]
    );
    assert_eq!((int(&got[0]), int(&got[1])), (19_999, 20_000));
}

#[tokio::test]
async fn atomic_batches_arrive_adjacent() {
    let store = store_with(&["a", "b", "c"]);
    let sub = watch(&store, &["a", "b", "c"], false);
    set(&store, "a", 1);
    set(&store, "c", 1);
    let batch = vec![("a".to_string(), Raw::Int(2).into()), ("b".to_string(), Raw::Int(2).into())];
    store.update_variables("s", batch, true, &Change::from(Source::Python)).unwrap();
    set(&store, "c", 2);
    let got =
        collect(&sub, |g| g.iter().any(|u| u.variable.as_ref().unwrap().name.as_ref() == "c" && int(u) == 2)).await;
    let names: Vec<(String, i64)> =
        got.iter().map(|u| (u.variable.as_ref().unwrap().name.to_string(), int(u))).collect();
    let pos = |n: &str, v: i64| names.iter().position(|x| x.0 == n && x.1 == v);
    let (a, b) = (pos("a", 2).unwrap(), pos("b", 2).unwrap());
    assert_eq!(a.abs_diff(b), 1, "batch members adjacent in {names:?}");
    let batch_ids: Vec<_> = got.iter().filter(|u| u.source == Source::Python).map(|u| u.batch).collect();
    assert!(batch_ids.len() == 2 && batch_ids[0].is_some() && batch_ids[0] == batch_ids[1]);
}

#[tokio::test]
async fn deletion_is_reported_once_and_nothing_follows() {
    let store = store_with(&["a", "b"]);
    let sub = watch(&store, &["a", "b"], false);
    set(&store, "a", 1);
    store.delete_variable("s", "a").unwrap();
    // A new variable with the same name is a different variable: not watched.
    let new = NewVariable {
        name: "a".into(),
        ty: VarType::Integer,
        value: Raw::Int(7),
        constraints: Raw::Nil,
        metadata: Metadata::new(),
    };
    store.register_variable("s", new, Source::Elixir).unwrap();
    set(&store, "a", 8);
    set(&store, "b", 1);
    let got = collect(&sub, |g| g.iter().any(|u| u.variable.as_ref().unwrap().name.as_ref() == "b")).await;
    let s = summary(&got);
    let deleted: Vec<_> = s.iter().filter(|x| x.1 == UpdateKind::Deleted).collect();
    assert_eq!(deleted, vec![&("a".to_string(), UpdateKind::Deleted, 2)]);
    let after = s.iter().position(|x| x.1 == UpdateKind::Deleted).unwrap();
    assert!(s[after + 1..].iter().all(|x| x.0 != "a"), "{s:?}");
}

#[tokio::test]
async fn closing_the_session_ends_every_stream_after_pending_changes() {
    let store = store_with(&["a"]);
    let first = watch(&store, &["a"], false);
    let second = watch(&store, &["a"], false);
    set(&store, "a", 1);
    store.delete_session("s", Source::Python).unwrap();
    for sub in [&first, &second] {
        let got = collect(sub, |_| false).await;
        let kinds: Vec<_> = got.iter().map(|u| u.kind).collect();
        assert_eq!(kinds, vec![UpdateKind::ValueChange, UpdateKind::SessionClosed]);
        assert_eq!(got[1].source, Source::Python, "who closed the session");
        assert!(got[1].at_us > 0);
        assert!(sub.is_finished());
        assert!(sub.next_batch().await.is_none());
    }
}

#[tokio::test]
async fn a_watched_session_does_not_expire_and_idles_from_when_its_last_watcher_left() {
    let clock = Arc::new(ManualClock::default());
    let store = Store::with_clock(clock.clone());
    store.create_session("s", Metadata::new(), Duration::from_secs(5)).unwrap();
    let new = NewVariable {
        name: "a".into(),
        ty: VarType::Integer,
        value: Raw::Int(0),
        constraints: Raw::Nil,
        metadata: Metadata::new(),
    };
    store.register_variable("s", new, Source::Elixir).unwrap();
    let first = watch(&store, &["a"], false);
    let second = watch(&store, &["a"], false);
    clock.advance(Duration::from_secs(60));
    assert!(store.sweep_expired().is_empty(), "watched, so alive");
    assert!(store.session_exists("s"));
    drop(first);
    clock.advance(Duration::from_secs(60));
    assert!(store.sweep_expired().is_empty(), "one watcher is enough");
    second.canceller().cancel();
    clock.advance(Duration::from_secs(4));
    assert!(store.sweep_expired().is_empty(), "the TTL counts from when the last watcher left");
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.sweep_expired(), vec!["s".to_string()]);
    assert!(!store.session_exists("s"));
}

#[tokio::test]
async fn dropping_or_cancelling_ends_the_subscription_and_frees_it() {
    let store = store_with(&["a"]);
    let before = store.stats();
    let subs: Vec<_> = (0..100).map(|_| watch(&store, &["a"], true)).collect();
    assert_eq!(store.get_session("s").unwrap().watcher_count, 100);
    assert_eq!(store.stats().grpc_watchers, before.grpc_watchers + 100);
    drop(subs);
    assert_eq!(store.get_session("s").unwrap().watcher_count, 0);
    assert_eq!(store.stats().grpc_watchers, before.grpc_watchers);

    let sub = watch(&store, &["a"], false);
    let cancel = sub.canceller();
    let waiter = tokio::spawn(async move { sub.next_batch().await.is_none() });
    tokio::task::yield_now().await;
    cancel.cancel();
    assert_eq!(store.get_session("s").unwrap().watcher_count, 0, "cancel frees it at once");
    assert!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap());
    cancel.cancel();
    assert_eq!(store.get_session("s").unwrap().watcher_count, 0);
}

#[tokio::test]
async fn resuming_with_since_versions_sends_only_what_is_newer() {
    let store = store_with(&["a", "b"]);
    set(&store, "a", 1); // a at version 2, b at 1
    let req = WatchRequest {
        identifiers: vec!["a".into(), "b".into()],
        include_initial: true,
        since_versions: [("a".to_string(), 2), ("b".to_string(), 0)].into(),
        ..Default::default()
    };
    let sub = store.watch("s", &req, Owner::Grpc).unwrap();
    set(&store, "a", 2);
    let got = collect(&sub, |g| g.len() >= 2).await;
    assert_eq!(
        summary(&got),
        vec![("b".into(), UpdateKind::InitialValue, 1), ("a".into(), UpdateKind::ValueChange, 3)]
    );
}

#[tokio::test]
async fn since_versions_may_name_the_variable_by_id_or_name() {
    let store = store_with(&["a"]);
    set(&store, "a", 1);
    let id = store.get_variable("s", "a").unwrap().id.to_string();
    let req = WatchRequest {
        identifiers: vec!["a".into()],
        include_initial: true,
        since_versions: [(id, 2)].into(),
        ..Default::default()
    };
    let sub = store.watch("s", &req, Owner::Grpc).unwrap();
    set(&store, "a", 2);
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&got), vec![("a".into(), UpdateKind::ValueChange, 3)], "no initial value: the caller has v2");
}

#[test]
fn bad_watch_requests_register_nothing() {
    let store = store_with(&["a"]);
    let req =
        |ids: &[&str]| WatchRequest { identifiers: ids.iter().map(|s| s.to_string()).collect(), ..Default::default() };
    assert_eq!(store.watch("s", &req(&[]), Owner::Grpc).unwrap_err().kind(), "invalid_argument");
    assert_eq!(store.watch("s", &req(&["a", "zzz"]), Owner::Grpc).unwrap_err().kind(), "variable_not_found");
    assert_eq!(store.watch("nope", &req(&["a"]), Owner::Grpc).unwrap_err().kind(), "session_not_found");
    assert_eq!(store.get_session("s").unwrap().watcher_count, 0);
}

#[tokio::test]
async fn writes_racing_a_subscription_are_never_lost_or_repeated() {
    let store = store_with(&["a"]);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 1..=5_000 {
                set(&store, "a", i);
            }
        })
    };
    let mut subs = Vec::new();
    for _ in 0..20 {
        subs.push(watch(&store, &["a"], true));
        std::thread::sleep(Duration::from_micros(200));
    }
    writer.join().unwrap();
    let final_version = store.get_variable("s", "a").unwrap().version;
    for sub in &subs {
        let got = collect(sub, |g| g.last().is_some_and(|u| u.version() == final_version)).await;
        let versions: Vec<i64> = got.iter().map(|u| u.version()).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "strictly increasing: {versions:?}");
        assert_eq!(got[0].kind, UpdateKind::InitialValue);
        assert_eq!(int(got.last().unwrap()), 5_000);
    }
}

#[tokio::test]
async fn update_metadata_and_source_travel_with_the_change() {
    let store = store_with(&["a"]);
    let sub = watch(&store, &["a"], false);
    let change = Change {
        source: Source::Python,
        metadata: [("why".to_string(), "tuning".to_string())].into(),
        expected_version: 0,
    };
    store.update_variable("s", "a", Raw::Int(3), &change).unwrap();
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(got[0].source, Source::Python);
    assert_eq!(got[0].metadata.get("why").map(String::as_str), Some("tuning"));
}

fn register(store: &Store, name: &str, v: i64) {
    let new = NewVariable {
        name: name.into(),
        ty: VarType::Integer,
        value: Raw::Int(v),
        constraints: Raw::Nil,
        metadata: Metadata::new(),
    };
    store.register_variable("s", new, Source::Python).unwrap();
}

fn watch_patterns(store: &Store, patterns: &[&str], initial: bool, since: &[(&str, i64)]) -> Subscription {
    let req = WatchRequest {
        patterns: patterns.iter().map(|s| s.to_string()).collect(),
        include_initial: initial,
        since_versions: since.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ..Default::default()
    };
    store.watch("s", &req, Owner::Grpc).unwrap()
}

#[tokio::test]
async fn a_pattern_watch_covers_matching_variables_now_and_registered_later() {
    let store = store_with(&["temp_a", "other"]);
    let sub = watch_patterns(&store, &["temp_*"], true, &[]);
    let initial = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&initial), vec![("temp_a".into(), UpdateKind::InitialValue, 1)]);
    register(&store, "unrelated", 1);
    set(&store, "other", 5);
    register(&store, "temp_b", 7);
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&got), vec![("temp_b".into(), UpdateKind::Registered, 1)]);
    assert_eq!(int(&got[0]), 7);
    set(&store, "temp_b", 8);
    assert_eq!(summary(&collect(&sub, |g| !g.is_empty()).await), vec![("temp_b".into(), UpdateKind::ValueChange, 2)]);
    store.delete_variable("s", "temp_b").unwrap();
    assert_eq!(summary(&collect(&sub, |g| !g.is_empty()).await), vec![("temp_b".into(), UpdateKind::Deleted, 2)]);
    set(&store, "temp_a", 9);
    assert_eq!(summary(&collect(&sub, |g| !g.is_empty()).await), vec![("temp_a".into(), UpdateKind::ValueChange, 2)]);
}

#[tokio::test]
async fn a_variable_registered_and_deleted_before_delivery_never_arrives() {
    let store = store_with(&[]);
    let sub = watch_patterns(&store, &["*"], false, &[]);
    register(&store, "brief", 1);
    store.delete_variable("s", "brief").unwrap();
    register(&store, "kept", 2);
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&got), vec![("kept".into(), UpdateKind::Registered, 1)]);
}

#[tokio::test]
async fn a_registration_and_its_next_change_coalesce_into_registered() {
    let store = store_with(&[]);
    let sub = watch_patterns(&store, &["*"], false, &[]);
    register(&store, "x", 1);
    set(&store, "x", 2);
    set(&store, "x", 3);
    // Nothing was taken yet: one pending update, the registration with the newest value.
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&got), vec![("x".into(), UpdateKind::Registered, 3)]);
    assert_eq!(int(&got[0]), 3);
}

#[tokio::test]
async fn identifiers_and_patterns_together_each_variable_once() {
    let store = store_with(&["temp_a", "b"]);
    let req = WatchRequest {
        identifiers: vec!["temp_a".into(), "b".into()],
        patterns: vec!["temp_*".into(), "*_a".into()],
        include_initial: true,
        ..Default::default()
    };
    let sub = store.watch("s", &req, Owner::Grpc).unwrap();
    let got = collect(&sub, |g| g.len() >= 2).await;
    let mut names: Vec<String> = summary(&got).into_iter().map(|x| x.0).collect();
    names.sort();
    assert_eq!(names, ["b", "temp_a"]);
}

#[tokio::test]
async fn a_resumed_pattern_watch_gets_what_was_registered_while_away() {
    let store = store_with(&["temp_a"]);
    set(&store, "temp_a", 4); // version 2
                              // The client saw temp_a at version 2, then went away; temp_b came meanwhile.
    register(&store, "temp_b", 1);
    let sub = watch_patterns(&store, &["temp_*"], false, &[("temp_a", 2)]);
    set(&store, "temp_a", 5);
    let got = collect(&sub, |g| g.len() >= 2).await;
    assert_eq!(
        summary(&got),
        vec![("temp_b".into(), UpdateKind::InitialValue, 1), ("temp_a".into(), UpdateKind::ValueChange, 3)]
    );
}

#[test]
fn a_watch_needs_an_identifier_or_a_pattern_within_the_limits() {
    let store = store_with(&["a"]);
    let none = store.watch("s", &WatchRequest::default(), Owner::Grpc).unwrap_err();
    assert!(matches!(none, crate::StoreError::InvalidArgument(_)), "{none:?}");
    let empty = WatchRequest { patterns: vec![String::new()], ..Default::default() };
    assert!(matches!(store.watch("s", &empty, Owner::Grpc).unwrap_err(), crate::StoreError::InvalidArgument(_)));
    let long = WatchRequest { patterns: vec!["a".repeat(600), "b".repeat(600)], ..Default::default() };
    let err = store.watch("s", &long, Owner::Grpc).unwrap_err();
    assert!(err.to_string().contains("max_pattern_bytes"), "{err}");
    // No watcher was left behind by the refusals.
    assert_eq!(store.get_session("s").unwrap().watcher_count, 0);
}

#[tokio::test]
async fn writes_to_variables_no_pattern_matches_reach_no_pattern_watcher() {
    let store = store_with(&["other"]);
    let sub = watch_patterns(&store, &["temp_*"], false, &[]);
    for v in 1..=50 {
        set(&store, "other", v);
    }
    register(&store, "temp_x", 1);
    // The registration comes after the 50 writes: had any of them reached
    // this watcher, it would come first.
    let got = collect(&sub, |g| !g.is_empty()).await;
    assert_eq!(summary(&got), vec![("temp_x".into(), UpdateKind::Registered, 1)]);
}
