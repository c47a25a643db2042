//! Watch guarantees checked on recorded histories, in the spirit of etcd's
//! robustness tests: concurrent writers (single and atomic batch updates),
//! fast, slow and resuming watchers, by name and by pattern; afterwards every
//! watcher's history is validated against what the writers recorded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use snakepit_core::model::{Metadata, Source, Update, UpdateKind};
use snakepit_core::store::{Change, NewVariable, Store, WatchRequest, DEFAULT_SESSION_TTL};
use snakepit_core::value::{Raw, Value, VarType};
use snakepit_core::watch::Owner;

const VARS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// (name, version) → value written, as the writers saw it.
type Written = Arc<Mutex<HashMap<(String, i64), i64>>>;

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    version: i64,
    value: i64,
    batch: Option<u64>,
}

fn seen(u: &Update) -> Seen {
    let v = u.variable.as_ref().expect("value updates carry the variable");
    let Value::Integer(value) = *v.value else { panic!("integer variables only") };
    Seen { name: v.name.to_string(), version: v.version, value, batch: u.batch }
}

/// A tiny deterministic generator, so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn writer(store: Store, id: u64, ops: usize, written: Written) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (id + 1));
    let source = if id.is_multiple_of(2) { Source::Elixir } else { Source::Python };
    for i in 0..ops {
        let value = (id * 1_000_000 + i as u64) as i64;
        if rng.next().is_multiple_of(4) {
            // An atomic batch of two or three distinct variables.
            let mut names: Vec<&str> = VARS.to_vec();
            let n = 2 + (rng.next() % 2) as usize;
            let mut chosen = Vec::new();
            for _ in 0..n {
                chosen.push(names.remove((rng.next() % names.len() as u64) as usize));
            }
            let updates = chosen.iter().map(|n| (n.to_string(), Raw::Int(value).into())).collect();
            let out = store.update_variables("s", updates, true, &Change::from(source)).unwrap();
            let mut w = written.lock().unwrap();
            for (name, version) in out.applied {
                w.insert((name, version), value);
            }
        } else {
            let name = VARS[(rng.next() % VARS.len() as u64) as usize];
            let version = store.update_variable("s", name, Raw::Int(value), &Change::from(source)).unwrap();
            written.lock().unwrap().insert((name.to_string(), version), value);
        }
    }
}

/// How a watcher names what it watches.
#[derive(Clone, Copy)]
enum Names {
    Identifiers,
    /// The glob `?`, which matches exactly the one-letter VARS.
    Pattern,
}

/// Reads until every variable reached `finals`, pausing `pause` per batch.
async fn watch_until(
    store: &Store,
    names: Names,
    since: HashMap<String, i64>,
    pause: Duration,
    finals: Arc<Mutex<Option<HashMap<String, i64>>>>,
    stop_after: Option<usize>,
) -> Vec<Seen> {
    // A resumed watcher already has the versions it passes as `since`.
    let mut last: HashMap<String, i64> = since.clone();
    let (identifiers, patterns) = match names {
        Names::Identifiers => (VARS.iter().map(|s| s.to_string()).collect(), Vec::new()),
        Names::Pattern => (Vec::new(), vec!["?".to_string()]),
    };
    let req = WatchRequest { identifiers, patterns, include_initial: true, since_versions: since };
    let sub = store.watch("s", &req, Owner::Grpc).unwrap();
    let mut got: Vec<Seen> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Give up eventually; validation then names what never arrived.
        if tokio::time::Instant::now() > deadline {
            eprintln!("gave up: last {last:?} finals {:?} got {}", finals.lock().unwrap(), got.len());
            return got;
        }
        if let Some(f) = finals.lock().unwrap().as_ref() {
            if VARS.iter().all(|n| last.get(*n).copied().unwrap_or(0) >= f[*n]) {
                return got;
            }
        }
        if stop_after.is_some_and(|n| got.len() >= n) {
            return got;
        }
        let batch = tokio::time::timeout(Duration::from_millis(50), sub.next_batch()).await;
        if let Ok(batch) = batch {
            for u in batch.expect("the session stays open") {
                assert!(matches!(u.kind, UpdateKind::InitialValue | UpdateKind::ValueChange));
                let s = seen(&u);
                last.insert(s.name.clone(), s.version);
                got.push(s);
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
    }
}

fn validate(
    label: &str,
    history: &[Seen],
    written: &HashMap<(String, i64), i64>,
    finals: &HashMap<String, i64>,
    store: &Store,
) {
    // Ordered and unique, per variable.
    let mut last: HashMap<&str, i64> = HashMap::new();
    for s in history {
        if let Some(prev) = last.insert(&s.name, s.version) {
            assert!(s.version > prev, "{label}: {} went from version {prev} to {}", s.name, s.version);
        }
        // Each delivered value is the one written at that version (version 1 is the registration).
        if s.version > 1 {
            assert_eq!(written.get(&(s.name.clone(), s.version)), Some(&s.value), "{label}: {} v{}", s.name, s.version);
        }
    }
    // Final value equals the store's.
    for name in VARS {
        let var = store.get_variable("s", name).unwrap();
        assert_eq!(last.get(name), Some(&var.version), "{label}: final version of {name}");
        assert_eq!(finals[name], var.version);
        let delivered = history.iter().rev().find(|s| s.name == name).unwrap();
        assert_eq!(Value::Integer(delivered.value), *var.value, "{label}: final value of {name}");
    }
    // Atomic batches are adjacent: the delivered members of a batch form one run.
    let mut closed: HashSet<u64> = HashSet::new();
    let mut current: Option<u64> = None;
    for s in history {
        if s.batch != current {
            if let Some(b) = current {
                closed.insert(b);
            }
            if let Some(b) = s.batch {
                assert!(!closed.contains(&b), "{label}: batch {b} split in the stream");
            }
            current = s.batch;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_watchers_keep_every_promise() {
    let store = Store::new();
    store.create_session("s", Metadata::new(), DEFAULT_SESSION_TTL).unwrap();
    for n in VARS {
        let new = NewVariable {
            name: n.into(),
            ty: VarType::Integer,
            value: Raw::Int(0),
            constraints: Raw::Nil,
            metadata: Metadata::new(),
        };
        store.register_variable("s", new, Source::Elixir).unwrap();
    }
    let written: Written = Arc::default();
    let finals: Arc<Mutex<Option<HashMap<String, i64>>>> = Arc::default();

    let watchers: Vec<_> = [
        (Names::Identifiers, Duration::ZERO),
        (Names::Identifiers, Duration::ZERO),
        (Names::Identifiers, Duration::from_millis(2)),
        (Names::Identifiers, Duration::from_millis(15)),
        (Names::Pattern, Duration::from_millis(2)),
    ]
    .iter()
    .map(|&(names, p)| {
        let (store, finals) = (store.clone(), finals.clone());
        tokio::spawn(async move { watch_until(&store, names, HashMap::new(), p, finals, None).await })
    })
    .collect();
    // A watcher that leaves early and resumes from the versions it saw.
    let resumer = {
        let (store, finals) = (store.clone(), finals.clone());
        tokio::spawn(async move {
            let first =
                watch_until(&store, Names::Pattern, HashMap::new(), Duration::from_millis(1), finals.clone(), Some(50))
                    .await;
            let mut since = HashMap::new();
            for s in &first {
                since.insert(s.name.clone(), s.version);
            }
            let second = watch_until(&store, Names::Pattern, since, Duration::ZERO, finals, None).await;
            (first, second)
        })
    };

    let writers: Vec<_> = (0..4)
        .map(|id| {
            let (store, written) = (store.clone(), written.clone());
            std::thread::spawn(move || writer(store, id, 10_000, written))
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let final_versions: HashMap<String, i64> =
        VARS.iter().map(|n| (n.to_string(), store.get_variable("s", n).unwrap().version)).collect();
    *finals.lock().unwrap() = Some(final_versions.clone());

    let written = written.lock().unwrap().clone();
    for (i, w) in watchers.into_iter().enumerate() {
        let history = w.await.unwrap();
        validate(&format!("watcher {i}"), &history, &written, &final_versions, &store);
    }
    let (first, second) = resumer.await.unwrap();
    assert!(!first.is_empty());
    // Across the reconnect: no duplicates, nothing lost, same final state.
    let joined: Vec<Seen> = first.into_iter().chain(second).collect();
    validate("resumed watcher", &joined, &written, &final_versions, &store);
    assert_eq!(store.get_session("s").unwrap().watcher_count, 0, "every subscription ended with its watcher");
}
