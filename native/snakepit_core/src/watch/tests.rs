//! The hub on its own: no store, only model types. (The guarantees end to
//! end through the store are in `store/watch_tests.rs`.)

use std::collections::HashMap;
use std::sync::Arc;

use crate::clock::ManualClock;
use crate::constraints::Constraints;
use crate::model::{Metadata, Source, Update, UpdateKind, Variable};
use crate::value::{Value, VarType};
use crate::watch::{Hub, Owner, SessionWatch, WatchCounts};

fn session() -> (Arc<Hub>, Arc<SessionWatch>) {
    let hub = Arc::new(Hub::default());
    let watch = Arc::new(SessionWatch::new(hub.clone(), Arc::new(ManualClock::default())));
    (hub, watch)
}

fn change(id: &str, version: i64) -> Update {
    let variable = Variable {
        id: Arc::from(id),
        name: Arc::from(id),
        ty: VarType::Integer,
        value: Arc::new(Value::Integer(version)),
        constraints: Arc::new(Constraints::default()),
        metadata: Arc::new(Metadata::new()),
        version,
        source: Source::Python,
        created_at_us: 1,
        updated_at_us: version,
    };
    Update {
        kind: UpdateKind::ValueChange,
        variable: Some(variable),
        source: Source::Python,
        metadata: Arc::default(),
        at_us: version,
        batch: None,
        wire: Default::default(),
    }
}

fn versions(updates: &[Update]) -> Vec<(String, i64)> {
    updates.iter().map(|u| (u.key().to_string(), u.version())).collect()
}

#[test]
fn published_changes_reach_the_watchers_of_their_variable_coalesced() {
    let (_hub, watch) = session();
    let seen = HashMap::from([(Arc::from("a"), 1)]);
    let sub = watch.subscribe(Owner::Grpc, vec![Arc::from("a")], seen, Vec::new(), Vec::new());
    watch.publish([change("a", 1), change("b", 2), change("a", 2)]);
    watch.publish([change("a", 3)]);
    // Version 1 was already seen, "b" is not watched, and 2 is replaced by 3.
    assert_eq!(versions(&sub.try_next_batch()), vec![("a".into(), 3)]);
    assert!(sub.try_next_batch().is_empty());
}

#[tokio::test]
async fn the_counters_follow_subscriptions_and_closing_ends_them() {
    let (hub, watch) = session();
    let grpc = watch.subscribe(Owner::Grpc, vec![Arc::from("a")], HashMap::new(), Vec::new(), Vec::new());
    let elixir = watch.subscribe(Owner::Elixir, vec![Arc::from("a")], HashMap::new(), Vec::new(), Vec::new());
    assert_eq!(hub.counts(), WatchCounts { grpc: 1, elixir: 1, opened: 2 });
    assert_eq!(watch.count(), 2);
    watch.close(7, Source::Elixir);
    for sub in [&grpc, &elixir] {
        // Closing is fanned out by the dispatcher thread.
        let wait = tokio::time::timeout(std::time::Duration::from_secs(10), sub.next_batch());
        let last = wait.await.expect("the close arrives").expect("one batch");
        assert_eq!(last.iter().map(|u| u.kind).collect::<Vec<_>>(), vec![UpdateKind::SessionClosed]);
        assert!(sub.is_finished());
    }
    drop(grpc);
    elixir.canceller().cancel();
    assert_eq!(hub.counts(), WatchCounts { grpc: 0, elixir: 0, opened: 2 });
    assert_eq!(watch.count(), 0);
}
