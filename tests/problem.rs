//! The problem flag (SPEC §13) against the real engine: unhealthy, OOM-killed,
//! a non-zero exit (and `docker stop`, which is none), a crash loop (restart
//! policy `always` on a container that exits at once) that survives a dockside
//! restart and ends when the window has passed; the Jeedom leaf topics.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(40);

fn reason(s: &serde_json::Value) -> String {
    s["problem_reason"].as_str().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_are_flagged_with_their_reason() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dsp"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let cfg = base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
        .replace("[mqtt]\n", "[mqtt]\nflat_topics = true\n")
        .replace(
            "removal_grace = \"2s\"\n",
            "removal_grace = \"2s\"\ncrashloop_restarts = 3\ncrashloop_window = \"20s\"\n",
        );
    let state = |n: &str| format!("{base}/local/{n}/state");
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let mut d = Dockside::start(dir.path(), &cfg);

    let fine = ct.name("fine");
    run_sleeper(&fine, IMAGE, &[]);
    let s = c
        .wait_state(&state(&fine), T, |s| s["running"] == true)
        .await;
    assert_eq!(s["problem"], false, "{s}");
    assert_eq!(s["problem_reason"], serde_json::Value::Null);
    // Jeedom: one plain value per key.
    c.wait_latest(&format!("{}/problem", state(&fine)), T, |m| {
        m.text() == "false"
    })
    .await;

    let sick = ct.name("sick");
    run_container(
        &sick,
        &[
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
        &["sleep", "3600"],
    );
    let s = c
        .wait_state(&state(&sick), T, |s| s["problem"] == true)
        .await;
    assert_eq!(reason(&s), "unhealthy", "{s}");
    c.wait_latest(&format!("{}/problem_reason", state(&sick)), T, |m| {
        m.text() == "unhealthy"
    })
    .await;

    let failed = ct.name("failed");
    run_container(&failed, &[], &["sh", "-c", "exit 3"]);
    let s = c
        .wait_state(&state(&failed), T, |s| s["state"] == "exited")
        .await;
    assert_eq!(s["problem"], true, "{s}");
    assert_eq!(reason(&s), "exited with code 3");

    // A stop someone asked for is no problem (137 after the stop timeout).
    docker(&["stop", "-t", "0", &fine]);
    let s = c
        .wait_state(&state(&fine), T, |s| s["state"] == "exited")
        .await;
    assert_eq!(s["problem"], false, "{s}");

    let oom = run_oom_killed(&ct);
    let s = c
        .wait_state(&state(&oom), T, |s| s["oom_killed"] == true)
        .await;
    assert_eq!(s["problem"], true, "{s}");
    assert!(reason(&s).contains("OOM-killed"), "{s}");

    // A crash loop: restarted by the engine at once, again and again.
    let looping = ct.name("loop");
    run_container(&looping, &["--restart", "always"], &["sh", "-c", "exit 1"]);
    let s = c
        .wait_state(&state(&looping), T, |s| reason(s).contains("crash loop"))
        .await;
    assert_eq!(s["problem"], true);
    assert!(s["restart_count"].as_i64().unwrap_or(0) >= 3, "{s}");
    // The loop stops (no more restarts); the record survives a dockside restart.
    docker(&["update", "--restart", "no", &looping]);
    let s = c
        .wait_state(&state(&looping), T, |s| s["state"] == "exited")
        .await;
    let count = s["restart_count"].clone();
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
    c.clear();
    d.spawn();
    let s = c.wait_state(&state(&looping), T, |_| true).await;
    assert_eq!(s["restart_count"], count);
    assert!(
        reason(&s).contains("crash loop"),
        "restarts from before the dockside restart still count: {s}"
    );
    // 20 s after the last restart the window is empty: only the exit remains.
    let s = c
        .wait_state(&state(&looping), T, |s| {
            !reason(s).contains("crash loop") && s["problem_reason"].is_string()
        })
        .await;
    assert_eq!(reason(&s), "exited with code 1", "{s}");
    assert!(d.is_running());
}
