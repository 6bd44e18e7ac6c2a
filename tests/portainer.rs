//! Portainer environments as endpoints, through a Portainer-compatible server
//! that forwards the Docker proxy to the real engine.

mod common;
mod portainer_double;

use std::time::{Duration, Instant};

use common::*;
use portainer_double::{API_KEY, Env, FakePortainer, PASSWORD, Stack, USER};

const T: Duration = Duration::from_secs(30);

struct Setup {
    broker: Broker,
    ct: Containers,
    base: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            ct: Containers::new(&unique("dsp")),
            broker: Broker::start(),
            base: unique("t"),
            dir: tempfile::tempdir().expect("tmp"),
        }
    }
    fn config(&self, p: &FakePortainer, auth: &str) -> String {
        format!(
            "{}\n[portainer.home]\nurl = \"{}\"\n{auth}\npoll_interval = \"2s\"\nrefresh = \"5s\"\n[commands]\nallow = [\"start\", \"stop\", \"restart\"]\nmin_interval = \"0s\"\n",
            base_config(
                &self.broker,
                &self.base,
                &self.dir.path().join("state"),
                &self.ct.prefix
            ),
            p.url()
        )
    }
    fn state(&self, ep: &str, ct: &str) -> String {
        format!("{}/{ep}/{ct}/state", self.base)
    }
}

fn api_key() -> String {
    format!("api_key = \"{API_KEY}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_are_mirrored_and_a_bad_one_disturbs_no_other() {
    let s = Setup::new();
    let name = s.ct.name("web");
    docker(&["run", "-d", "--init", "--name", &name, IMAGE]);
    let mut forbidden = Env::new(8, "Locked", 1);
    forbidden.forbidden = true;
    let mut down = Env::new(7, "Down Env", 1);
    down.down = true;
    let mut async_edge = Env::new(6, "Async Edge", 4);
    async_edge.async_edge = true;
    let p = FakePortainer::start(vec![
        Env::new(1, "Local", 1),
        Env::new(2, "Agent Box", 2),
        Env::new(4, "Edge One", 4),
        Env::new(5, "K8s", 5),
        async_edge,
        down,
        forbidden,
    ])
    .await;
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let d = Dockside::start(s.dir.path(), &s.config(&p, &api_key()));
    for ep in ["home-local", "home-agent-box", "home-edge-one"] {
        c.wait_state(&s.state(ep, &name), T, |j| {
            j["running"] == true && j["endpoint"] == ep
        })
        .await;
        c.wait_latest(&format!("{}/{ep}/status", s.base), T, |m| {
            m.text() == "online"
        })
        .await;
    }
    for ep in ["home-down-env", "home-locked"] {
        c.wait_latest(&format!("{}/{ep}/status", s.base), T, |m| {
            m.text() == "offline"
        })
        .await;
    }
    let info = c
        .wait_latest(&format!("{}/home-local/info", s.base), T, |m| {
            m.json()["reachable"] == true
        })
        .await
        .json();
    assert_eq!(info["kind"], "portainer");
    assert_eq!(info["portainer_id"], 1);
    assert_eq!(info["name"], "Local");
    assert_eq!(info["public_url"], "local.example");
    let bridge = c
        .wait_latest(&format!("{}/info", s.base), T, |m| {
            m.json()["endpoints"]
                .as_array()
                .is_some_and(|a| a.len() == 5)
        })
        .await
        .json();
    assert_eq!(
        bridge["endpoints"],
        serde_json::json!([
            "home-agent-box",
            "home-down-env",
            "home-edge-one",
            "home-local",
            "home-locked"
        ])
    );
    // Kubernetes and async Edge environments are skipped, with one log line each.
    assert!(
        c.all()
            .iter()
            .all(|m| !m.topic.contains("home-k8s") && !m.topic.contains("home-async"))
    );
    let log = d.log_text();
    assert!(log.contains("not a Docker environment"), "{log}");
    assert!(log.contains("async Edge"), "{log}");
    assert!(
        log.contains("Permission denied to access environment"),
        "{log}"
    );

    // Commands through the proxy.
    let set = format!("{}/home-local/{name}/set", s.base);
    c.publish(&set, br#"{"action":"restart","request_id":"p1"}"#, false)
        .await;
    let r = c
        .wait_latest(&format!("{}/home-local/{name}/result", s.base), T, |_| true)
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running");
    // Live changes reach every environment.
    docker(&["stop", "-t", "1", &name]);
    for ep in ["home-local", "home-agent-box", "home-edge-one"] {
        c.wait_state(&s.state(ep, &name), T, |j| j["state"] == "exited")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_added_renamed_and_removed_at_runtime() {
    let s = Setup::new();
    let name = s.ct.name("x");
    docker(&["run", "-d", "--name", &name, IMAGE]);
    let p = FakePortainer::start(vec![Env::new(1, "Local", 1)]).await;
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &s.config(&p, &api_key()));
    c.wait_state(&s.state("home-local", &name), T, |j| j["running"] == true)
        .await;
    let resync = format!("{}/set", s.base);

    p.add(Env::new(3, "Later", 2));
    c.publish(&resync, b"resync", false).await;
    c.wait_state(&s.state("home-later", &name), T, |j| j["running"] == true)
        .await;

    p.rename(3, "Renamed Box");
    c.publish(&resync, b"resync", false).await;
    c.wait_state(&s.state("home-renamed-box", &name), T, |j| {
        j["running"] == true
    })
    .await;
    c.wait_latest(&s.state("home-later", &name), T, |m| m.payload.is_empty())
        .await;

    p.remove(3);
    c.publish(&resync, b"resync", false).await;
    c.wait_latest(&s.state("home-renamed-box", &name), T, |m| {
        m.payload.is_empty()
    })
    .await;
    let snap = retained_snapshot(s.broker.port, &format!("{}/#", s.base)).await;
    assert!(
        !snap
            .keys()
            .any(|k| k.contains("home-later") || k.contains("home-renamed")),
        "{snap:?}"
    );
    assert!(
        snap.contains_key(&s.state("home-local", &name)),
        "the other environment untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_login_renewal_and_a_portainer_restart() {
    let s = Setup::new();
    let name = s.ct.name("x");
    docker(&["run", "-d", "--init", "--name", &name, IMAGE]);
    let p = FakePortainer::start(vec![Env::new(1, "Local", 1), Env::new(2, "Two", 2)]).await;
    p.set_jwt_lifetime(Duration::from_secs(8));
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let auth = format!("username = \"{USER}\"\npassword = \"{PASSWORD}\"");
    let d = Dockside::start(s.dir.path(), &s.config(&p, &auth));
    let started = Instant::now();
    c.wait_state(&s.state("home-local", &name), T, |j| j["running"] == true)
        .await;
    c.wait_state(&s.state("home-two", &name), T, |j| j["running"] == true)
        .await;
    // Every token becomes invalid: dockside logs in again and carries on.
    p.restart();
    docker(&["stop", "-t", "1", &name]);
    c.wait_state(&s.state("home-local", &name), T, |j| j["state"] == "exited")
        .await;
    c.wait_state(&s.state("home-two", &name), T, |j| j["state"] == "exited")
        .await;
    // Tokens expire after 8 s: renewed before, never a login storm.
    tokio::time::sleep(Duration::from_secs(10)).await;
    docker(&["start", &name]);
    c.wait_state(&s.state("home-local", &name), T, |j| j["running"] == true)
        .await;
    let secs = started.elapsed().as_secs() as usize;
    let logins = p.logins();
    assert!(logins >= 2, "logged in again after the restart ({logins})");
    assert!(logins <= secs / 2 + 2, "{logins} logins in {secs} s");
    assert!(!p.banned(), "never banned");
    // The secret itself, and the tokens it bought, never reach the log.
    let log = d.log_text();
    assert!(
        !log.contains(PASSWORD),
        "the Portainer password is in the log"
    );
    assert!(
        log.contains("dockside"),
        "the log is empty: the check above would prove nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_back_event_streams_still_deliver_within_the_poll_interval() {
    let s = Setup::new();
    let name = s.ct.name("x");
    docker(&["run", "-d", "--init", "--name", &name, IMAGE]);
    let p = FakePortainer::start(vec![Env::new(1, "Local", 1)]).await;
    p.set_buffering(true);
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &s.config(&p, &api_key()));
    c.wait_state(&s.state("home-local", &name), T, |j| j["running"] == true)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at = Instant::now();
    docker(&["stop", "-t", "1", &name]);
    c.wait_state(&s.state("home-local", &name), T, |j| j["state"] == "exited")
        .await;
    let took = at.elapsed();
    // poll_interval is 2 s; the stop itself takes up to ~1 s.
    assert!(
        took < Duration::from_secs(5),
        "state took {took:?} with a held-back stream"
    );
    let events = format!("{}/home-local/events", s.base);
    c.wait_until("stop event", T, |all| {
        all.iter()
            .any(|m| m.topic == events && m.json()["action"] == "stop")
    })
    .await;
    // Once each, although the stream may deliver them late too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stops = c
        .on(&events)
        .iter()
        .filter(|m| m.json()["action"] == "stop")
        .count();
    assert_eq!(stops, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_html_error_page_from_a_proxy_is_survived() {
    let s = Setup::new();
    let name = s.ct.name("x");
    docker(&["run", "-d", "--name", &name, IMAGE]);
    let p = FakePortainer::start(vec![Env::new(1, "Local", 1)]).await;
    p.set_html_env_list(true);
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let mut d = Dockside::start(s.dir.path(), &s.config(&p, &api_key()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(d.is_running());
    assert!(d.log_text().contains("HTML page"), "{}", d.log_text());
    p.set_html_env_list(false);
    c.wait_state(&s.state("home-local", &name), T, |j| j["running"] == true)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_goes_through_portainers_recreate() {
    let s = Setup::new();
    let reg = Registry::start();
    let tag = format!("{}/dsp/app:1", reg.host());
    build_image(&tag);
    docker(&["push", &tag]);
    let name = s.ct.name("app");
    run_sleeper(&name, &tag, &["-e", "MODE=prod"]);
    let old_id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let p = FakePortainer::start(vec![Env::new(1, "Local", 1)]).await;
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let config = s.config(&p, &api_key()).replace(
        r#""start", "stop", "restart""#,
        r#""start", "stop", "update""#,
    );
    let _d = Dockside::start(s.dir.path(), &config);
    let state = s.state("home-local", &name);
    c.wait_state(&state, T, |j| j["running"] == true).await;

    let new_image = build_image(&tag);
    docker(&["push", &tag]);
    let set = format!("{}/home-local/{name}/set", s.base);
    c.publish(&set, br#"{"action":"update","request_id":"p1"}"#, false)
        .await;
    let r = c
        .wait_latest(&format!("{}/home-local/{name}/result", s.base), T, |m| {
            m.json()["request_id"] == "p1"
        })
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    assert_eq!(
        p.recreates(),
        vec![old_id.clone()],
        "Portainer's recreate was used"
    );
    let new_id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    assert_ne!(new_id, old_id);
    assert_eq!(docker(&["inspect", "-f", "{{.Image}}", &name]), new_image);
    // The name kept its topics through Portainer's rename-and-recreate.
    c.wait_state(&state, T, |j| {
        j["id"] == new_id.as_str() && j["running"] == true
    })
    .await;
    assert!(c.on(&state).iter().all(|m| !m.payload.is_empty()));
    // Portainer's recreate is in the history too.
    let h = c
        .wait_latest(&format!("{}/home-local/{name}/history", s.base), T, |m| {
            m.json()[0]["status"] == "ok"
        })
        .await
        .json();
    assert_eq!(h[0]["action"], "update", "{h}");
    assert_eq!(h[0]["to_image"], new_image.as_str(), "{h}");
    assert!(h[0]["from_image"].is_string(), "{h}");
    // Home Assistant's device links to the container's page in Portainer.
    let snap = retained_snapshot(s.broker.port, "homeassistant/#").await;
    let cfg = snap
        .get(&format!(
            "homeassistant/device/{}_home-local_{name}/config",
            s.base
        ))
        .expect("container device config");
    let v: serde_json::Value = serde_json::from_slice(cfg).expect("json");
    assert_eq!(
        v["device"]["configuration_url"],
        format!("{}/#!/1/docker/containers/{new_id}", p.url()).as_str()
    );
    let ep = snap
        .get(&format!(
            "homeassistant/device/{}_home-local/config",
            s.base
        ))
        .expect("endpoint device config");
    let v: serde_json::Value = serde_json::from_slice(ep).expect("json");
    assert_eq!(v["device"]["manufacturer"], "Portainer");
    assert_eq!(v["device"]["name"], "Local");
}

/// SPEC §13: a Portainer stack is the compose project it deploys (Portainer
/// lowercases the name), its words go through Portainer's own stack calls,
/// `update` redeploys with pull, a stack Portainer cannot start gives a clear
/// result, and a stopped stack without containers is still listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portainer_stacks_use_portainers_own_calls() {
    let s = Setup::new();
    let project = s.ct.prefix.replace('-', "_");
    let db = s.ct.name("db");
    let app = s.ct.name("app");
    for (n, svc) in [(&db, "db"), (&app, "app")] {
        run_container(
            n,
            &[
                "--label",
                &format!("com.docker.compose.project={project}"),
                "--label",
                &format!("com.docker.compose.service={svc}"),
            ],
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 1; done",
            ],
        );
    }
    let p = FakePortainer::start(vec![Env::new(1, "Local", 1)]).await;
    p.add_stack(Stack {
        id: 11,
        name: project.to_uppercase(),
        env: 1,
        active: true,
        containers: vec![db.clone(), app.clone()],
        file: "services:\n  db:\n    image: busybox\n".into(),
        fail_start: false,
    });
    p.add_stack(Stack {
        id: 12,
        name: format!("{project}_idle"),
        env: 1,
        active: false,
        containers: vec![],
        file: String::new(),
        fail_start: false,
    });
    // Another environment's stack is not this endpoint's.
    p.add_stack(Stack {
        id: 13,
        name: format!("{project}_elsewhere"),
        env: 9,
        active: true,
        containers: vec![],
        file: String::new(),
        fail_start: false,
    });
    let cfg = s.config(&p, &api_key()).replace(
        "allow = [\"start\", \"stop\", \"restart\"]",
        "allow = [\"start\", \"stop\", \"restart\", \"update\"]",
    );
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &cfg);
    let prefix = format!("{}/home-local/_stacks", s.base);
    let state_t = format!("{prefix}/{project}/state");
    let st = c
        .wait_latest(&state_t, T, |m| {
            m.json()["kind"] == "portainer" && m.json()["running"] == 2
        })
        .await
        .json();
    assert_eq!(st["portainer_id"], 11, "{st}");
    assert_eq!(st["total"], 2, "{st}");
    let idle = c
        .wait_latest(&format!("{prefix}/{project}_idle/state"), T, |_| true)
        .await
        .json();
    assert_eq!(
        (idle["total"].as_i64(), idle["state"].as_str()),
        (Some(0), Some("stopped")),
        "{idle}"
    );
    assert_eq!(idle["portainer_id"], 12);
    assert!(
        c.latest(&format!("{prefix}/{project}_elsewhere/state"))
            .is_none()
    );

    let set = format!("{prefix}/{project}/set");
    let result = format!("{prefix}/{project}/result");
    let word = |w: &str, id: &str| format!(r#"{{"action":"{w}","request_id":"{id}"}}"#);
    let ask = |w: &'static str, id: &'static str| {
        let (c, set, result, payload) = (&c, set.clone(), result.clone(), word(w, id));
        async move {
            c.publish(&set, payload.as_bytes(), false).await;
            c.wait_latest(&result, T, |m| m.json()["request_id"] == id)
                .await
                .json()
        }
    };
    let r = ask("stop", "p1").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "stopped", "the stack's state reached: {r}");
    assert!(
        p.stack_calls().contains(&"stop 11 env 1".to_string()),
        "{:?}",
        p.stack_calls()
    );
    c.wait_latest(&state_t, T, |m| m.json()["state"] == "stopped")
        .await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &db]),
        "false"
    );

    let r = ask("start", "p2").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    c.wait_latest(&state_t, T, |m| m.json()["state"] == "running")
        .await;

    let r = ask("update", "p3").await;
    assert_eq!(r["ok"], true, "{r}");
    let calls = p.stack_calls();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("redeploy 11 pull=true env=[{")),
        "redeploy with pull and the stack's variables: {calls:?}"
    );

    // Portainer cannot start it: its reason comes back, nothing else changes.
    p.set_stack_fail_start(11, true);
    assert_eq!(ask("stop", "p4").await["ok"], true);
    let r = ask("start", "p5").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "engine_error", "{r}");
    assert_eq!(r["state"], "stopped", "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("Unable to start stack")),
        "{r}"
    );
    c.wait_latest(&state_t, T, |m| m.json()["state"] == "stopped")
        .await;
}
