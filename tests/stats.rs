//! Container stats (SPEC §13) against the real engine: a container holding a
//! known amount of memory is sampled (label opt-in, `[stats]` off), its
//! figures agree with the engine's own stats computed as `docker stats`
//! does, CPU appears from the second sample on, an unlabelled container gets
//! none, a stopped one shows unknown figures, and a removed one loses its
//! topic. Flat (Jeedom) leaf topics carry the same figures.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(40);
const MIB: i64 = 1 << 20;

/// What `docker stats` shows as memory: usage without the inactive page cache.
fn engine_memory(id: &str) -> i64 {
    let s = engine_get(&format!("/containers/{id}/stats?stream=false"));
    let m = &s["memory_stats"];
    let usage = m["usage"].as_i64().expect("usage");
    let cache = m["stats"]["total_inactive_file"]
        .as_i64()
        .or_else(|| m["stats"]["inactive_file"].as_i64())
        .unwrap_or(0);
    if cache < usage { usage - cache } else { usage }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_containers_show_the_engines_figures() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dss"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let cfg = format!(
        "{}\n[stats]\ninterval = \"5s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    )
    .replace("[mqtt]\n", "[mqtt]\nflat_topics = true\n");
    let hog = ct.name("hog");
    let plain = ct.name("plain");
    // 40 MiB in tmpfs: shared memory, charged to the container, not page cache.
    let id = run_container(
        &hog,
        &["--label", "dockside.stats=true", "--shm-size", "64m"],
        &[
            "sh",
            "-c",
            "head -c 41943040 /dev/zero > /dev/shm/blob; while true; do sleep 1; done",
        ],
    );
    run_container(&plain, &[], &["sleep", "3600"]);
    // Let the blob be written before anyone samples.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(dir.path(), &cfg);
    let stats = format!("{base}/local/{hog}/stats");
    // The second sample has a CPU figure (from the first one).
    let s: Value = c
        .wait_latest(&stats, T, |m| m.json()["cpu_percent"].is_number())
        .await
        .json();
    let mem = s["memory_bytes"].as_i64().expect("memory_bytes");
    let engine = engine_memory(&id);
    assert!((40 * MIB..56 * MIB).contains(&mem), "holds 40 MiB: {s}");
    assert!(
        (mem - engine).abs() < 4 * MIB,
        "dockside {mem} vs engine {engine}: {s}"
    );
    assert!(
        s["memory_limit_bytes"].as_i64().is_some_and(|l| l > mem),
        "{s}"
    );
    let pct = s["memory_percent"].as_f64().expect("memory_percent");
    assert!(pct > 0.0 && pct < 100.0, "{s}");
    assert!(s["pids"].as_i64().is_some_and(|p| p >= 1), "{s}");
    assert!(
        s["cpu_percent"]
            .as_f64()
            .is_some_and(|p| (0.0..=200.0).contains(&p)),
        "{s}"
    );
    for k in [
        "net_rx_bytes",
        "net_tx_bytes",
        "block_read_bytes",
        "block_write_bytes",
    ] {
        assert!(s[k].is_i64(), "{k}: {s}");
    }
    assert!(s["at"].is_string());
    // Jeedom's leaf topics.
    let leaf = c
        .wait_latest(&format!("{stats}/memory_bytes"), T, |_| true)
        .await
        .text();
    assert!(leaf.parse::<i64>().is_ok_and(|v| v >= 40 * MIB), "{leaf}");
    // Calls keep coming at the interval, no faster.
    let before = c.on(&stats).len();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let n = c.on(&stats).len() - before;
    assert!(
        (1..=3).contains(&n),
        "{n} samples in 11 s at a 5 s interval"
    );
    // Not labelled, [stats] off: nothing.
    assert!(c.latest(&format!("{base}/local/{plain}/stats")).is_none());

    // Stopped: the figures become unknown instead of freezing.
    docker(&["stop", "-t", "1", &hog]);
    let s = c
        .wait_latest(&stats, T, |m| m.json().get("memory_bytes").is_none())
        .await
        .json();
    assert!(s["at"].is_string(), "{s}");
    assert!(s.get("cpu_percent").is_none(), "{s}");
    docker(&["rm", "-f", &hog]);
    c.wait_latest(&stats, Duration::from_secs(60), |m| m.payload.is_empty())
        .await;
}
