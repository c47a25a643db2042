//! Smoke tests of the load client: each mode runs in a tiny configuration and
//! returns positive figures of the right shape. Never timings (shared,
//! noisy machines).

use std::time::Duration;

use serde_json::Value;
use snakepit_core::server::{serve, ServerConfig};
use snakepit_core::Store;
use tokio::sync::oneshot;
use watch_load::{fan_out, no_progress, percentile, scale, summary, FanOutConfig, ScaleConfig};

/// A bridge server on this test's runtime, on 127.0.0.1:0.
async fn in_process_server() -> (String, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(Store::new(), listener, ServerConfig::default(), async {
            let _ = stopped.await;
        })
        .await
        .expect("the server runs");
    });
    (addr, stop, task)
}

fn positive_summary(v: &Value, count: usize, what: &str) {
    assert_eq!(v["count"].as_u64(), Some(count as u64), "{what}: {v}");
    for k in ["min", "p50", "p90", "p99", "max", "mean"] {
        let x = v[k].as_f64().unwrap_or_else(|| panic!("{what}.{k} missing: {v}"));
        assert!(x > 0.0 && x.is_finite(), "{what}.{k} = {x}");
    }
    let f = |k: &str| v[k].as_f64().unwrap();
    assert!(f("min") <= f("p50") && f("p50") <= f("p99") && f("p99") <= f("max"), "{what}: {v}");
}

#[test]
fn percentile_interpolates_like_numpy() {
    let v = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(percentile(&v, 0.0), 1.0);
    assert_eq!(percentile(&v, 50.0), 2.5);
    assert_eq!(percentile(&v, 100.0), 4.0);
    assert_eq!(summary(&[]), serde_json::json!({ "count": 0 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_fan_out_run_has_the_right_shape() {
    let (addr, stop, server) = in_process_server().await;
    let cfg = FanOutConfig { watchers: 4, updates: 6, interval: Duration::from_millis(2), warmup: 1 };
    let r = fan_out(Some(&addr), None, &cfg, no_progress()).await.expect("fan-out runs");

    assert_eq!(r["mode"], "fan-out");
    assert_eq!(r["server_started"], false);
    assert_eq!(r["watchers"], 4);
    assert_eq!(r["updates"], 6);
    assert_eq!(r["warmup_updates"], 1);
    for k in ["last_watcher_ms", "first_watcher_ms", "median_watcher_ms"] {
        positive_summary(&r[k], 6, k);
    }
    positive_summary(&r["every_delivery_ms"], 4 * 6, "every_delivery_ms");
    positive_summary(&r["write_rpc_ms"], 7, "write_rpc_ms");
    positive_summary(&r["write_gap_ms"], 6, "write_gap_ms");
    assert_eq!(r["per_update_last_ms"].as_array().map(Vec::len), Some(6));
    // The last watcher is never ahead of the first.
    assert!(r["last_watcher_ms"]["p50"].as_f64() >= r["first_watcher_ms"]["p50"].as_f64());
    let messages = r["messages"].as_u64().unwrap();
    assert!((4..=4 * 7).contains(&messages), "messages = {messages}");
    assert_eq!(r["reference_ms"].as_array().map(Vec::len), Some(2));

    let _ = stop.send(());
    server.await.expect("the server stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_scale_run_against_the_standalone_server_has_the_right_shape() {
    // Needs target/<profile>/snakepit-bridge-server (or $SNAKEPIT_SERVER_BIN):
    // `cargo build --release` builds it, as scripts/test.sh does first.
    let cfg = ScaleConfig { streams: 30, connections: 3, updates: 3, warmup: 1, gap: Duration::from_millis(1) };
    let r = scale(None, &cfg, no_progress()).await.expect("scale runs");

    assert_eq!(r["mode"], "scale");
    assert_eq!(r["streams"], 30);
    assert_eq!(r["connections"], 3);
    assert_eq!(r["streams_per_connection"], 10);
    let m = &r["memory"];
    for k in ["rss_started_kib", "rss_before_kib", "rss_live_kib", "rss_after_updates_kib", "rss_closed_kib"] {
        assert!(m[k].as_u64().unwrap_or(0) > 0, "memory.{k}: {m}");
    }
    assert!(m["bytes_per_stream"].as_f64().is_some_and(f64::is_finite), "{m}");
    for k in ["all_streams_ms", "first_stream_ms", "median_stream_ms"] {
        positive_summary(&r[k], 3, k);
    }
    positive_summary(&r["every_delivery_ms"], 30 * 3, "every_delivery_ms");
    assert_eq!(r["per_update_all_streams_ms"].as_array().map(Vec::len), Some(3));
    for k in ["connect_ms", "open_streams_ms", "all_registered_ms"] {
        assert!(r["open"][k].as_f64().is_some_and(|x| x > 0.0), "open.{k}: {}", r["open"]);
    }
    assert_eq!(r["server_stopped_gracefully"], true);
}
