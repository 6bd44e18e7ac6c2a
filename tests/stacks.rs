//! Compose stacks (SPEC §13) against the real engine: three containers with
//! compose labels and `depends_on`, created through the Engine API (the
//! compose tool is not needed). The stack's state follows the containers,
//! `stop` runs in reverse dependency order and `start`/`restart` in
//! dependency order (checked from the engine's own event order), a stack
//! holding a protected container refuses `stop`, bad words are refused, the
//! HA stack device sits under its endpoint, and the stack goes with its last
//! container.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

fn compose(project: &str, service: &str, deps: &str) -> Vec<String> {
    let mut v = vec![
        "--label".to_string(),
        format!("com.docker.compose.project={project}"),
        "--label".to_string(),
        format!("com.docker.compose.service={service}"),
    ];
    if !deps.is_empty() {
        v.push("--label".into());
        v.push(format!("com.docker.compose.depends_on={deps}"));
    }
    v
}

/// Engine events of these containers between two instants, as (action, name).
fn engine_events(since: &str, until: &str, project: &str) -> Vec<(String, String)> {
    let out = docker(&[
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--filter",
        "type=container",
        "--format",
        "{{.Action}} {{.Actor.Attributes.name}}",
    ]);
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, n)| (a.to_string(), n.to_string()))
        .collect()
}

fn order_of(events: &[(String, String)], action: &str) -> Vec<String> {
    events
        .iter()
        .filter(|(a, _)| a == action)
        .map(|(_, n)| n.clone())
        .collect()
}

/// Now as the engine's `--since`/`--until` take it, to the nanosecond (whole
/// seconds would take in the events of the second before).
fn now_s() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_state_order_policy_and_removal() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dsk"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let project = ct.prefix.replace('-', "_");
    let guarded = format!("{project}_guarded");
    // Name order (a, b, c) is not dependency order (db, api, web).
    let web = ct.name("a-web");
    let db = ct.name("b-db");
    let api = ct.name("c-api");
    let keeper = ct.name("keeper");
    let cfg = format!(
        "{}\n[commands]\nallow = [\"start\", \"stop\", \"restart\"]\nmin_interval = \"0s\"\nprotect = [\"{keeper}\"]\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let run = |name: &str, labels: Vec<String>| {
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        // Stops at once on SIGTERM (a bare `sleep` as PID 1 would take the 10 s grace).
        run_container(
            name,
            &l,
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 1; done",
            ],
        );
    };
    run(&web, compose(&project, "web", "api:service_started:false"));
    run(&db, compose(&project, "db", ""));
    run(
        &api,
        compose(
            &project,
            "api",
            "db:service_started:false,cache:service_healthy:false",
        ),
    );
    run(&keeper, compose(&guarded, "keeper", ""));
    let c = Collector::start(broker.port, "#").await;
    let _d = Dockside::start(dir.path(), &cfg);
    let state_t = format!("{base}/local/_stacks/{project}/state");
    let set = format!("{base}/local/_stacks/{project}/set");
    let result = format!("{base}/local/_stacks/{project}/result");
    let s = c
        .wait_latest(&state_t, T, |m| m.json()["running"] == 3)
        .await
        .json();
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(
        (s["kind"].as_str(), s["total"].as_i64()),
        (Some("compose"), Some(3)),
        "{s}"
    );
    assert_eq!(
        s["containers"],
        serde_json::json!([db, api, web]),
        "start order: {s}"
    );
    assert_eq!(s["endpoint"], "local");
    assert!(s["portainer_id"].is_null());

    // HA: one device per stack under its endpoint, buttons for the allowed words.
    let dev_t = format!("homeassistant/device/{base}_local__stacks_{project}/config");
    let dev = c
        .wait_latest(&dev_t, T, |m| !m.payload.is_empty())
        .await
        .json();
    assert_eq!(
        dev["device"]["via_device"],
        format!("{base}_local"),
        "{dev}"
    );
    let cmps = dev["components"].as_object().expect("components");
    for b in ["start", "stop", "restart"] {
        assert_eq!(cmps[b]["command_topic"], set, "{dev}");
        assert_eq!(cmps[b]["payload_press"], b);
    }
    assert_eq!(cmps["running"]["state_topic"], state_t);

    // A state follows one container at once.
    docker(&["stop", "-t", "1", &web]);
    c.wait_latest(&state_t, T, |m| m.json()["state"] == "partial")
        .await;

    let ask = |word: &str, id: &str| format!(r#"{{"action":"{word}","request_id":"{id}"}}"#);
    let run_word = |word: &'static str, id: &'static str| {
        let (c, set, result, payload) = (&c, set.clone(), result.clone(), ask(word, id));
        async move {
            c.publish(&set, payload.as_bytes(), false).await;
            c.wait_latest(&result, Duration::from_secs(90), |m| {
                m.json()["request_id"] == id
            })
            .await
            .json()
        }
    };

    let t0 = now_s();
    let r = run_word("stop", "s1").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "stopped", "the stack's state reached: {r}");
    assert_eq!(r["outcomes"].as_array().map(Vec::len), Some(3), "{r}");
    c.wait_latest(&state_t, T, |m| m.json()["state"] == "stopped")
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t1 = now_s();
    // web is already stopped: only api then db die now.
    let ev = engine_events(&t0, &t1, &project);
    assert_eq!(
        order_of(&ev, "die"),
        vec![api.clone(), db.clone()],
        "{ev:?}"
    );

    let r = run_word("start", "s2").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    c.wait_latest(&state_t, T, |m| m.json()["state"] == "running")
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t2 = now_s();
    let ev = engine_events(&t1, &t2, &project);
    assert_eq!(
        order_of(&ev, "start"),
        vec![db.clone(), api.clone(), web.clone()],
        "{ev:?}"
    );

    let r = run_word("restart", "s3").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t3 = now_s();
    let ev = engine_events(&t2, &t3, &project);
    assert_eq!(
        order_of(&ev, "die"),
        vec![web.clone(), api.clone(), db.clone()],
        "{ev:?}"
    );
    assert_eq!(
        order_of(&ev, "start"),
        vec![db.clone(), api.clone(), web.clone()],
        "{ev:?}"
    );
    // Every die came before the first start.
    let first_start = ev.iter().position(|(a, _)| a == "start").expect("a start");
    assert!(
        ev.iter().rposition(|(a, _)| a == "die").expect("a die") < first_start,
        "{ev:?}"
    );

    // Policy: a stack with a protected container is never stopped through it.
    let gset = format!("{base}/local/_stacks/{guarded}/set");
    let gres = format!("{base}/local/_stacks/{guarded}/result");
    c.wait_latest(&format!("{base}/local/_stacks/{guarded}/state"), T, |_| {
        true
    })
    .await;
    c.publish(&gset, ask("stop", "g1").as_bytes(), false).await;
    let r = c
        .wait_latest(&gres, T, |m| m.json()["request_id"] == "g1")
        .await
        .json();
    assert_eq!(r["code"], "forbidden", "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains(&keeper)),
        "{r}"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &keeper]),
        "true"
    );
    // Words a stack does not have, words not allowed, unknown stacks.
    for (payload, code, topic, res) in [
        (ask("pause", "b1"), "invalid", set.clone(), result.clone()),
        (
            ask("update", "b2"),
            "forbidden",
            set.clone(),
            result.clone(),
        ),
        (
            ask("start", "b3"),
            "not_found",
            format!("{base}/local/_stacks/nope/set"),
            format!("{base}/local/_stacks/nope/result"),
        ),
    ] {
        c.publish(&topic, payload.as_bytes(), false).await;
        let id: Value = serde_json::from_str(&payload).expect("json");
        let id = id["request_id"].as_str().expect("id").to_string();
        let r = c
            .wait_latest(&res, T, |m| m.json()["request_id"] == id.as_str())
            .await
            .json();
        assert_eq!(r["code"], code, "{r}");
    }

    // The stack goes with its last container (after the removal grace).
    for n in [&web, &db, &api] {
        docker(&["rm", "-f", n]);
    }
    c.wait_latest(&state_t, T, |m| m.payload.is_empty()).await;
    c.wait_latest(&dev_t, T, |m| m.payload.is_empty()).await;
}

/// `start` stops at the first container that cannot start, with the
/// engine's reason; what depends on it is not started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_start_stops_at_the_first_failure() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dsf"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let project = ct.prefix.replace('-', "_");
    let (db, app) = (ct.name("db"), ct.name("app"));
    let cfg = format!(
        "{}\n[commands]\nallow = [\"start\", \"stop\"]\nmin_interval = \"0s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let create = |name: &str, labels: Vec<String>, cmd: &[&str]| {
        let mut args: Vec<&str> = vec!["create", "--name", name];
        args.extend(labels.iter().map(String::as_str));
        args.push(IMAGE);
        args.extend_from_slice(cmd);
        docker(&args);
    };
    // The engine refuses to start it: its command does not exist.
    create(&db, compose(&project, "db", ""), &["/no/such/binary"]);
    create(
        &app,
        compose(&project, "app", "db:service_started:false"),
        &["sleep", "3600"],
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(dir.path(), &cfg);
    let state_t = format!("{base}/local/_stacks/{project}/state");
    let s = c
        .wait_latest(&state_t, T, |m| m.json()["total"] == 2)
        .await
        .json();
    assert_eq!(s["state"], "stopped", "{s}");
    c.publish(
        &format!("{base}/local/_stacks/{project}/set"),
        br#"{"action":"start","request_id":"f1"}"#,
        false,
    )
    .await;
    let r = c
        .wait_latest(&format!("{base}/local/_stacks/{project}/result"), T, |m| {
            m.json()["request_id"] == "f1"
        })
        .await
        .json();
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "engine_error", "{r}");
    assert_eq!(r["state"], "stopped", "nothing of the stack started: {r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.starts_with(&db)),
        "{r}"
    );
    assert_eq!(
        r["outcomes"].as_array().map(Vec::len),
        Some(1),
        "only db was tried: {r}"
    );
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &app]),
        "0001-01-01T00:00:00Z",
        "app was never started"
    );
}

/// `update` updates each container of the stack that has an update, in
/// start order, and stops at the first that fails (rolled back), with the
/// reason; what comes after it is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_update_goes_in_start_order_and_stops_at_a_failure() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsu"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let project = ct.prefix.replace('-', "_");
    // db ← app ← web: db updates, app's new image cannot start, web is not reached.
    let services = [("db", ""), ("app", "db"), ("web", "app")];
    let mut ids = std::collections::HashMap::new();
    for (svc, dep) in services {
        let tag = format!("{}/{}-{svc}/app:1", reg.host(), ct.prefix);
        build_image_with(&tag, "");
        docker(&["push", &tag]);
        let deps = if dep.is_empty() {
            String::new()
        } else {
            format!("{dep}:service_started:false")
        };
        let labels = compose(&project, svc, &deps);
        let mut opts: Vec<&str> = labels.iter().map(String::as_str).collect();
        opts.extend(["--stop-timeout", "1"]);
        let id = run_sleeper(&ct.name(svc), &tag, &opts);
        ids.insert(svc, id);
        let extra = if svc == "app" {
            "ENTRYPOINT [\"/bin/false\"]"
        } else {
            ""
        };
        build_image_with(&tag, extra);
        docker(&["push", &tag]);
        docker(&["rmi", &tag]);
    }
    let cfg = format!(
        "{}\n[commands]\nallow = [\"start\", \"stop\", \"update\"]\nmin_interval = \"0s\"\n[updates]\nverify_for = \"2s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(dir.path(), &cfg);
    let state_t = format!("{base}/local/_stacks/{project}/state");
    let s = c
        .wait_latest(&state_t, Duration::from_secs(90), |m| {
            m.json()["updates_available"] == 3
        })
        .await
        .json();
    assert_eq!(
        s["containers"],
        serde_json::json!([ct.name("db"), ct.name("app"), ct.name("web")])
    );
    c.publish(
        &format!("{base}/local/_stacks/{project}/set"),
        br#"{"action":"update","request_id":"u1"}"#,
        false,
    )
    .await;
    let r = c
        .wait_latest(
            &format!("{base}/local/_stacks/{project}/result"),
            Duration::from_secs(180),
            |m| m.json()["request_id"] == "u1",
        )
        .await
        .json();
    assert_eq!(r["ok"], false, "{r}");
    let outcomes = r["outcomes"].as_array().expect("outcomes");
    let tried: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o["container"].as_str())
        .collect();
    assert_eq!(
        tried,
        [ct.name("db"), ct.name("app")],
        "web never tried: {r}"
    );
    assert_eq!(outcomes[0]["ok"], true, "{r}");
    assert_eq!(outcomes[1]["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.starts_with(&ct.name("app"))),
        "the reason names app: {r}"
    );
    let id_of = |svc: &str| docker(&["inspect", "-f", "{{.Id}}", &ct.name(svc)]);
    assert_ne!(id_of("db"), ids["db"], "db was recreated");
    assert_eq!(
        id_of("app"),
        ids["app"],
        "app was rolled back to its old container"
    );
    assert_eq!(id_of("web"), ids["web"], "web was left as it was");
    // The stack still holds its three containers, compose labels kept.
    c.wait_latest(&state_t, Duration::from_secs(60), |m| {
        let s = m.json();
        s["total"] == 3 && s["running"] == 3
    })
    .await;
}
