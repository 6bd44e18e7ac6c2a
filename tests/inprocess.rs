//! dockside driven in-process: `dockside::run` against a scripted engine
//! (`common::fake_engine`) and the embedded broker, no Docker, no Mosquitto.
//! Each scenario takes a second or two, so the state machine's event orders
//! from real engines and the command policy can be checked quickly here; the
//! real-engine integration tests stay the proof.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::fake_engine::FakeEngine;
use common::*;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);

/// The embedded broker lives as long as the process: one for this binary.
/// Scenarios connect to its own listener (no gate) with their own base topic.
fn broker_port() -> u16 {
    static PORT: OnceLock<u16> = OnceLock::new();
    *PORT.get_or_init(|| {
        let mqtt = dockside::config::MqttConfig {
            embedded: true,
            embedded_listen: format!("127.0.0.1:{}", free_port()),
            ..Default::default()
        };
        // Its threads run until the process ends; the handle only names it.
        dockside::embedded::start(&mqtt, &Default::default()).expect("the embedded broker starts");
        dockside::embedded::direct_addr()
            .expect("its direct listener")
            .port()
    })
}

/// One dockside, in this process, on its own engine and base topic.
struct Instance {
    engine: FakeEngine,
    base: String,
    token: CancellationToken,
    join: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Instance {
    async fn start(setup: impl FnOnce(&FakeEngine), commands: &str) -> (Self, Collector) {
        Self::start_on(unique("ip"), setup, commands).await
    }

    /// The same on a base topic chosen beforehand (to leave messages there first).
    async fn start_on(
        base: String,
        setup: impl FnOnce(&FakeEngine),
        commands: &str,
    ) -> (Self, Collector) {
        let dir = tempfile::tempdir().expect("tmp");
        let engine = FakeEngine::start(dir.path());
        setup(&engine);
        let port = broker_port();
        let toml = format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nbase_topic = \"{base}\"\n\
             [endpoints.local]\nurl = \"{}\"\n[state]\ndir = \"{}\"\n\
             [containers]\nremoval_grace = \"1s\"\n[homeassistant]\nenabled = false\n\
             [commands]\n{commands}\n",
            engine.url(),
            dir.path().join("state").display()
        );
        let path = dir.path().join("dockside.toml");
        std::fs::write(&path, toml).expect("config");
        let cfg = dockside::Config::load(Some(&path), &Default::default()).expect("a valid config");
        let c = Collector::start(port, &format!("{base}/#")).await;
        let token = CancellationToken::new();
        let (_reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let t = token.clone();
        let join = tokio::spawn(async move {
            let _keep = _reload_tx;
            if let Err(e) = dockside::run(cfg, t, reload_rx).await {
                panic!("dockside::run: {e}");
            }
        });
        let me = Instance {
            engine,
            base,
            token,
            join,
            _dir: dir,
        };
        (me, c)
    }

    fn state(&self, name: &str) -> String {
        format!("{}/local/{name}/state", self.base)
    }

    async fn stop(self) {
        self.token.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.join).await;
    }
}

const A: &str = "aaaa000000000000000000000000000000000000000000000000000000000001";
const B: &str = "bbbb000000000000000000000000000000000000000000000000000000000002";

/// Docker 28.5's `docker stop`: `kill`, `stop`, then `die` — the state is
/// the `die`'s, with its exit code, and stays so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_before_die_ends_exited_with_the_die_code() {
    let (d, c) = Instance::start(|e| e.add(A, "web", true), "").await;
    c.wait_state(&d.state("web"), T, |s| s["running"] == true)
        .await;
    d.engine.emit(A, "kill", &[("signal", "15")]);
    d.engine.emit(A, "stop", &[]);
    d.engine.emit(A, "die", &[("exitCode", "143")]);
    c.wait_state(&d.state("web"), T, |s| {
        s["state"] == "exited" && s["exit_code"] == 143
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let last = c.latest(&d.state("web")).expect("a state").json();
    assert_eq!(
        (last["state"].as_str(), last["exit_code"].as_i64()),
        (Some("exited"), Some(143))
    );
    d.stop().await;
}

/// The kernel's OOM kill: `die` 137, then `oom` — the state says
/// `oom_killed` and the problem flag says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_after_die_marks_the_container_oom_killed() {
    let (d, c) = Instance::start(|e| e.add(A, "db", true), "").await;
    c.wait_state(&d.state("db"), T, |s| s["running"] == true)
        .await;
    d.engine.emit(A, "die", &[("exitCode", "137")]);
    d.engine.emit(A, "oom", &[]);
    let s = c
        .wait_state(&d.state("db"), T, |s| s["oom_killed"] == true)
        .await;
    assert_eq!(s["exit_code"], 137, "{s}");
    assert_eq!(s["problem"], true, "{s}");
    d.stop().await;
}

/// A restart loop (`restart: always` on a crashing command): `die`, `start`
/// five times in a row. Every state reaches the broker in order and the last
/// one is the engine's: running, five restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loop_ends_where_the_engine_is() {
    let (d, c) = Instance::start(|e| e.add(A, "loop", true), "").await;
    c.wait_state(&d.state("loop"), T, |s| s["running"] == true)
        .await;
    for _ in 0..5 {
        d.engine.emit(A, "die", &[("exitCode", "1")]);
        d.engine.emit(A, "restart", &[]);
        d.engine.emit(A, "start", &[]);
    }
    c.wait_state(&d.state("loop"), T, |s| {
        s["running"] == true && s["restart_count"] == 5
    })
    .await;
    d.stop().await;
}

/// The command policy, through the real router and endpoint, in-process: a
/// protected container is never stopped, a word off the allow list is
/// refused, logs are refused by label, a `stop` left retained before dockside
/// started never fires, and allowed words on an unprotected container run and
/// report the state they reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_policy_holds_in_process() {
    let base = unique("ip");
    let early = Collector::start(broker_port(), "unused/#").await;
    early
        .publish(
            &format!("{base}/local/app/set"),
            br#"{"action":"stop","request_id":"r1"}"#,
            true,
        )
        .await;
    let (d, c) = Instance::start_on(
        base,
        |e| {
            e.add(A, "broker", true);
            e.add(B, "app", true);
            e.set_label(B, "dockside.logs", "false");
        },
        "allow = [\"start\", \"stop\", \"restart\", \"logs\"]\nprotect = [\"broker\"]\nmin_interval = \"0s\"",
    )
    .await;
    let result = format!("{}/local/app/result", d.base);
    let r = c
        .wait_latest(&result, T, |m| m.json()["code"] == "invalid")
        .await
        .json();
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("retained")),
        "{r}"
    );
    c.wait_state(&d.state("broker"), T, |s| s["running"] == true)
        .await;
    c.wait_state(&d.state("app"), T, |s| s["running"] == true)
        .await;
    let ask = |ct: &str, body: &str, id: &str| {
        let set = format!("{}/local/{ct}/set", d.base);
        let (c, body, id) = (c.clone(), body.to_string(), id.to_string());
        async move { c.command(&set, &body, &id, T).await }
    };
    let r = ask("broker", r#"{"action":"stop","request_id":"p1"}"#, "p1").await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = ask("app", r#"{"action":"kill","request_id":"p2"}"#, "p2").await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = ask("app", r#"{"action":"logs","request_id":"p3"}"#, "p3").await;
    assert_eq!(r["code"], "forbidden", "label dockside.logs=false: {r}");
    let r = ask("app", r#"{"action":"stop","request_id":"p4"}"#, "p4").await;
    assert_eq!(
        (r["ok"].as_bool(), r["state"].as_str()),
        (Some(true), Some("exited")),
        "{r}"
    );
    let r = ask("app", r#"{"action":"restart","request_id":"p5"}"#, "p5").await;
    assert_eq!(
        (r["ok"].as_bool(), r["state"].as_str()),
        (Some(true), Some("running")),
        "{r}"
    );
    d.stop().await;
}
