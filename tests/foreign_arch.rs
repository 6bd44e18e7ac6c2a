//! A release binary of another architecture, run under emulation (SPEC §15):
//! scripts/test.sh runs this with `DOCKSIDE_BIN=dist/dockside-<v>-aarch64-…`
//! and `DOCKSIDE_BIN_RUNNER=qemu-aarch64-static` (and the armv7 one) against
//! the real engine, a real Mosquitto and the test registry: a container's
//! state, a `restart` with its result, an update check that finds a pushed
//! update. Ignored in a plain `cargo test` (it needs those two variables).

mod common;

use std::time::Duration;

use common::*;

/// Emulated: everything is slower.
const T: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/test.sh with DOCKSIDE_BIN and DOCKSIDE_BIN_RUNNER"]
async fn a_foreign_release_binary_mirrors_commands_and_checks_updates() {
    let bin = std::env::var("DOCKSIDE_BIN").expect("DOCKSIDE_BIN: the release binary to run");
    let runner = std::env::var("DOCKSIDE_BIN_RUNNER").expect("DOCKSIDE_BIN_RUNNER: qemu-…-static");
    let version = dockside_command()
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{runner} {bin}: {e} (Debian's qemu-user-static)"));
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        version.starts_with(&format!("dockside {} (", env!("CARGO_PKG_VERSION"))),
        "{runner} {bin} --version: {version}"
    );
    eprintln!("under {runner}: {}", version.trim());

    let broker = Broker::start();
    let registry = Registry::start();
    let ct = Containers::new(&unique("dsfa"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let tag = format!("{}/dsfa/app:1", registry.host());
    build_image(&tag);
    docker(&["push", &tag]);
    let app = ct.name("app");
    run_sleeper(&app, &tag, &[]);
    let cfg = format!(
        "{}\n[commands]\nallow = [\"restart\", \"check\"]\nmin_interval = \"0s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(dir.path(), &cfg);

    let state = format!("{base}/local/{app}/state");
    let first = c.wait_state(&state, T, |s| s["running"] == true).await;
    let set = format!("{base}/local/{app}/set");
    let r = c
        .command(&set, r#"{"action":"restart","request_id":"r1"}"#, "r1", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    let s = c.latest(&state).expect("state").json();
    assert_ne!(s["started_at"], first["started_at"], "restarted: {s}");

    let update = format!("{base}/local/{app}/update");
    c.wait_latest(&update, T, |m| m.json()["status"] == "up_to_date")
        .await;
    // A new image under the same tag: `check` finds it.
    build_image_with(&tag, "LABEL rebuilt=2\n");
    docker(&["push", &tag]);
    let r = c
        .command(&set, r#"{"action":"check","request_id":"c1"}"#, "c1", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let u = c
        .wait_latest(&update, T, |m| m.json()["status"] == "update_available")
        .await
        .json();
    assert_eq!(u["update_available"], true, "{u}");
}
