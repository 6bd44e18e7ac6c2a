//! `dockerd` restarted while containers change state: the endpoint goes
//! offline and back, state converges, and events missed during the gap are
//! delivered once. Its own test binary: it restarts the shared engine.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(45);

fn dockerd(action: &str) {
    let script = project_dir().join("scripts/dockerd.sh");
    let ok = Command::new(&script)
        .arg(action)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "{} {action} failed", script.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_restart_converges_and_delivers_missed_events_once() {
    let ct = Containers::new(&unique("dsd"));
    let broker = Broker::start();
    let base = unique("t");
    let dir = tempfile::tempdir().expect("tmp");
    let always = ct.name("always");
    let plain = ct.name("plain");
    docker(&["run", "-d", "--name", &always, "--restart", "always", IMAGE]);
    docker(&["run", "-d", "--name", &plain, IMAGE]);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(
        dir.path(),
        &base_config(&broker, &base, &dir.path().join("s"), &ct.prefix),
    );
    let st = |n: &str| format!("{base}/local/{n}/state");
    let ep_status = format!("{base}/local/status");
    c.wait_state(&st(&always), T, |s| s["running"] == true)
        .await;
    c.wait_state(&st(&plain), T, |s| s["running"] == true).await;

    dockerd("stop");
    c.wait_latest(&ep_status, T, |m| m.text() == "offline")
        .await;
    dockerd("start");
    // Changes right after the engine is back, before dockside has reconnected.
    let fresh = ct.name("fresh");
    let fresh_id = docker(&["run", "-d", "--name", &fresh, IMAGE]);

    c.wait_latest(&ep_status, T, |m| m.text() == "online").await;
    c.wait_state(&st(&always), T, |s| {
        s["running"] == true && s["restart_count"] == 0
    })
    .await;
    c.wait_state(&st(&plain), T, |s| s["state"] == "exited")
        .await;
    c.wait_state(&st(&fresh), T, |s| s["running"] == true).await;
    let events = format!("{base}/local/events");
    c.wait_until("fresh start event", T, |all| {
        all.iter().any(|m| {
            let j = m.json();
            m.topic == events && j["id"] == fresh_id.as_str() && j["action"] == "start"
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every event exactly once.
    let mut seen: HashMap<(String, String, String), usize> = HashMap::new();
    for m in c.on(&events) {
        let j = m.json();
        let key = (
            j["id"].as_str().unwrap_or("").to_string(),
            j["action"].as_str().unwrap_or("").to_string(),
            j["time"].as_str().unwrap_or("").to_string(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
    for action in ["create", "start"] {
        assert_eq!(
            seen.keys()
                .filter(|(id, a, _)| id == &fresh_id && a == action)
                .count(),
            1,
            "{action} of the container created during the gap"
        );
    }
}
