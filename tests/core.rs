//! Core daemon against the real Docker engine and a real Mosquitto: what
//! arrives over MQTT for every container state, events, removal and grace,
//! the start-up sweep, broker restarts, dockside restarts, SIGHUP and SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(20);

fn events_for<'a>(msgs: &'a [Msg], topic: &str, id: &str, action: &str) -> Vec<&'a Msg> {
    msgs.iter()
        .filter(|m| {
            m.topic == topic && {
                let j = m.json();
                j["id"] == id && j["action"] == action
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_container_state_is_mirrored() {
    let env = Env::new("dst");
    let c = env.collector().await;
    let created = env.ct.name("created");
    let running = env.ct.name("running");
    docker(&["create", "--name", &created, IMAGE]);
    run_container(
        &running,
        &[
            "-l",
            "com.docker.compose.project=web",
            "-l",
            "com.docker.compose.service=app",
        ],
        &[],
    );
    let _d = env.start();

    let s = c
        .wait_state(&env.state(&created), T, |s| s["state"] == "created")
        .await;
    assert_eq!(s["running"], false);
    assert_eq!(s["started_at"], serde_json::Value::Null);
    let s = c
        .wait_state(&env.state(&running), T, |s| s["state"] == "running")
        .await;
    assert_eq!(s["stack"], "web");
    assert_eq!(s["service"], "app");
    assert_eq!(s["endpoint"], "local");
    assert_eq!(s["image"], IMAGE);
    assert!(s["image_id"].as_str().unwrap_or("").starts_with("sha256:"));
    assert_eq!(s["id"].as_str().map(str::len), Some(64));
    // The engine's default bridge: an address on the gateway's network.
    let ip = s["ip_address"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
    let gw = s["gateway"]
        .as_str()
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok());
    assert!(
        matches!((ip, gw), (Some(ip), Some(gw)) if ip != gw && ip.octets()[..2] == gw.octets()[..2]),
        "{s}"
    );
    assert_eq!(s["health"], "none");

    // Changes made while dockside runs arrive through events.
    let stopped = env.ct.name("stopped");
    run_container(&stopped, &[], &["sh", "-c", "exit 3"]);
    let s = c
        .wait_state(&env.state(&stopped), T, |s| s["state"] == "exited")
        .await;
    assert_eq!(s["exit_code"], 3);
    assert!(s["finished_at"].is_string());

    let paused = env.ct.name("paused");
    run_container(&paused, &[], &[]);
    c.wait_state(&env.state(&paused), T, |s| s["state"] == "running")
        .await;
    docker(&["pause", &paused]);
    let s = c
        .wait_state(&env.state(&paused), T, |s| s["state"] == "paused")
        .await;
    assert_eq!(s["paused"], true);
    docker(&["unpause", &paused]);
    c.wait_state(&env.state(&paused), T, |s| {
        s["state"] == "running" && s["paused"] == false
    })
    .await;

    let killed = env.ct.name("killed");
    run_container(&killed, &[], &[]);
    c.wait_state(&env.state(&killed), T, |s| s["running"] == true)
        .await;
    docker(&["kill", &killed]);
    let s = c
        .wait_state(&env.state(&killed), T, |s| s["state"] == "exited")
        .await;
    assert_eq!(s["exit_code"], 137);
    assert_eq!(s["oom_killed"], false);

    // Only once the engine itself says OOMKilled can dockside be asked to.
    let oom = run_oom_killed(&env.ct);
    // The `die` shows at once; the OOM flag comes with the engine's `oom`
    // event or the inspect, which Docker 28 may send after the `die`.
    let s = c
        .wait_state(&env.state(&oom), T, |s| {
            s["state"] == "exited" && s["oom_killed"] == true
        })
        .await;
    assert_eq!(s["exit_code"], 137, "{s}");
    let oom_event = format!("{}/local/{}/event", env.base, oom);
    c.wait_until("oom event", T, |all| {
        all.iter()
            .any(|m| m.topic == oom_event && m.json()["event_type"] == "oom")
    })
    .await;

    let sick = env.ct.name("sick");
    run_container(
        &sick,
        &[
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
        &[],
    );
    c.wait_state(&env.state(&sick), T, |s| s["health"] == "unhealthy")
        .await;
    let sick_event = format!("{}/local/{}/event", env.base, sick);
    c.wait_until("health_status event", T, |all| {
        all.iter().any(|m| {
            let j = m.json();
            m.topic == sick_event
                && j["event_type"] == "health_status"
                && j["attributes"]["health_status"] == "unhealthy"
        })
    })
    .await;
    let well = env.ct.name("well");
    run_container(
        &well,
        &["--health-cmd", "true", "--health-interval", "1s"],
        &[],
    );
    c.wait_state(&env.state(&well), T, |s| s["health"] == "healthy")
        .await;

    let flaky = env.ct.name("flaky");
    run_container(
        &flaky,
        &["--restart", "on-failure:2"],
        &["sh", "-c", "sleep 0.2; exit 1"],
    );
    let s = c
        .wait_state(&env.state(&flaky), T, |s| {
            s["restart_count"] == 2 && s["state"] == "exited"
        })
        .await;
    assert_eq!(s["exit_code"], 1);

    // Rename: the old name's topics are cleared, the new name appears.
    let old = env.ct.name("oldname");
    let new = env.ct.name("newname");
    run_container(&old, &[], &[]);
    c.wait_state(&env.state(&old), T, |s| s["running"] == true)
        .await;
    docker(&["rename", &old, &new]);
    c.wait_state(&env.state(&new), T, |s| s["name"] == new.as_str())
        .await;
    c.wait_latest(&env.state(&old), T, |m| m.payload.is_empty())
        .await;

    // The endpoint info counts what it mirrors.
    let info = c
        .wait_latest(&format!("{}/local/info", env.base), T, |m| {
            m.json()["containers"]["total"] == 10
        })
        .await
        .json();
    assert_eq!(info["kind"], "docker");
    assert_eq!(info["reachable"], true);
    assert_eq!(info["containers"]["unhealthy"], 1);
    assert_eq!(info["containers"]["healthy"], 1);
    assert_eq!(info["stacks"], 1);
    assert!(info["docker_version"].is_string() && info["api_version"].is_string());

    // What a newcomer sees is retained.
    let snap = retained_snapshot(env.broker.port, &format!("{}/#", env.base)).await;
    assert_eq!(
        snap.get(&format!("{}/status", env.base)).map(|b| &b[..]),
        Some(&b"online"[..])
    );
    assert!(snap.contains_key(&env.state(&new)));
    assert!(!snap.contains_key(&env.state(&old)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_published_once_with_container_events() {
    let env = Env::new("dst");
    let mut cfg = env.config();
    cfg.push_str("[events]\ntypes = [\"container\"]\n");
    std::fs::create_dir_all(env.dir.path()).expect("dir");
    let c = env.collector().await;
    let _d = Dockside::start(env.dir.path(), &cfg);
    c.wait_latest(&format!("{}/local/status", env.base), T, |m| {
        m.text() == "online"
    })
    .await;

    let name = env.ct.name("ev");
    let id = run_container(&name, &[], &[]);
    docker(&["stop", "-t", "0", &name]);
    let events = format!("{}/local/events", env.base);
    c.wait_until("stop event", T, |all| {
        !events_for(all, &events, &id, "stop").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = c.all();
    for action in ["create", "start", "die", "stop"] {
        assert_eq!(
            events_for(&all, &events, &id, action).len(),
            1,
            "exactly one `{action}` event"
        );
    }
    let e = events_for(&all, &events, &id, "start")[0].json();
    assert_eq!(e["type"], "container");
    assert_eq!(e["name"], name.as_str());
    assert_eq!(e["attributes"]["image"], IMAGE);
    assert!(
        e["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 30),
        "{e}"
    );
    // Network events are not in events.types here.
    assert!(
        all.iter()
            .all(|m| m.topic != events || m.json()["type"] == "container")
    );
    let per = format!("{}/local/{}/event", env.base, name);
    let kinds: Vec<String> = c
        .on(&per)
        .iter()
        .map(|m| m.json()["event_type"].as_str().unwrap_or("").to_string())
        .collect();
    // `docker stop -t 0` sends SIGTERM then SIGKILL: one `kill` event per signal.
    let mut distinct = kinds.clone();
    distinct.dedup();
    // In the engine's order: 20.10 says `die` then `stop`, 28.5 `stop` then `die`.
    let engine_order = [
        ["create", "start", "kill", "die", "stop"],
        ["create", "start", "kill", "stop", "die"],
    ];
    assert!(
        engine_order.contains(
            &distinct
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .try_into()
                .unwrap_or([""; 5])
        ),
        "{kinds:?}"
    );
    assert!(c.on(&per).iter().all(|m| !m.retain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_after_grace_and_recreate_keeps_topics() {
    let env = Env::new("dst");
    let c = env.collector().await;
    let gone = env.ct.name("gone");
    let again = env.ct.name("again");
    run_container(&gone, &[], &[]);
    let first_id = run_container(&again, &[], &[]);
    let _d = env.start();
    c.wait_state(&env.state(&gone), T, |s| s["running"] == true)
        .await;
    c.wait_state(&env.state(&again), T, |s| s["running"] == true)
        .await;

    let removed_at = Instant::now();
    docker(&["rm", "-f", &gone]);
    docker(&["rm", "-f", &again]);
    let second_id = run_container(&again, &[], &[]);
    assert_ne!(first_id, second_id);
    c.wait_state(&env.state(&again), T, |s| s["id"] == second_id.as_str())
        .await;

    // Gone: cleared once the 2 s grace is over, not before.
    c.wait_latest(&env.state(&gone), T, |m| m.payload.is_empty())
        .await;
    let cleared = c.latest(&env.state(&gone)).expect("cleared").at;
    assert!(cleared.duration_since(removed_at) >= Duration::from_millis(1900));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Recreated under the same name: never cleared.
    assert!(
        c.on(&env.state(&again))
            .iter()
            .all(|m| !m.payload.is_empty())
    );
    let snap = retained_snapshot(env.broker.port, &format!("{}/#", env.base)).await;
    assert!(snap.contains_key(&env.state(&again)));
    assert!(
        !snap.keys().any(|k| k.contains(&format!("/{gone}/"))),
        "{snap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_sweep_clears_leftovers_of_this_base_only() {
    let env = Env::new("dst");
    let live = env.ct.name("live");
    run_container(&live, &[], &[]);
    let c = env.collector().await;
    let ghost = env.ct.name("ghost");
    let b = &env.base;
    let other = format!("{b}x");
    let leftovers = [
        format!("{b}/local/{ghost}/state"),
        format!("{b}/local/{ghost}/state/running"),
        format!("{b}/local/{ghost}/update"),
        format!("{b}/local/{live}/state/zombie_key"),
        format!("{b}/oldep/{ghost}/state"),
        format!("{b}/oldep/status"),
    ];
    for t in &leftovers {
        c.publish(t, b"{\"stale\":true}", true).await;
    }
    c.publish(&format!("{other}/local/{ghost}/state"), b"{}", true)
        .await;
    c.publish(
        &format!("{b}/local/{live}/update"),
        b"{\"status\":\"up_to_date\"}",
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let _d = env.start();
    c.wait_state(&env.state(&live), T, |s| s["running"] == true)
        .await;
    for t in &leftovers {
        c.wait_latest(t, T, |m| m.payload.is_empty()).await;
    }
    let snap = retained_snapshot(env.broker.port, "#").await;
    assert!(
        snap.contains_key(&format!("{other}/local/{ghost}/state")),
        "other base untouched"
    );
    assert!(
        snap.contains_key(&format!("{b}/local/{live}/update")),
        "a live container keeps its update topic"
    );
    assert!(snap.contains_key(&env.state(&live)));
    for t in &leftovers {
        assert!(!snap.contains_key(t), "{t} still retained");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_with_wiped_store_republishes_everything() {
    let mut env = Env::new("dst");
    let name = env.ct.name("web");
    let stop_me = env.ct.name("stopme");
    run_container(&name, &[], &[]);
    run_container(&stop_me, &[], &[]);
    let mut cfg = env.config();
    cfg = cfg.replace("[mqtt]\n", "[mqtt]\nflat_topics = true\n");
    let c = env.collector().await;
    let _d = Dockside::start(env.dir.path(), &cfg);
    c.wait_state(&env.state(&stop_me), T, |s| s["running"] == true)
        .await;

    env.broker.kill();
    // Changes while the broker is away are not lost.
    docker(&["stop", "-t", "0", &stop_me]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    env.broker.restart();

    let snap_wait = Instant::now();
    let b = env.base.clone();
    let expect = [
        format!("{b}/status"),
        format!("{b}/info"),
        format!("{b}/local/status"),
        format!("{b}/local/info"),
        env.state(&name),
        env.state(&stop_me),
        format!("{b}/local/{name}/state/running"),
    ];
    loop {
        let snap = retained_snapshot(env.broker.port, &format!("{b}/#")).await;
        let missing: Vec<_> = expect.iter().filter(|t| !snap.contains_key(*t)).collect();
        if missing.is_empty() {
            let s: serde_json::Value =
                serde_json::from_slice(&snap[&env.state(&stop_me)]).expect("json");
            assert_eq!(s["state"], "exited");
            assert_eq!(&snap[&format!("{b}/status")][..], b"online");
            break;
        }
        assert!(
            snap_wait.elapsed() < T,
            "still missing after broker restart: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockside_restart_delivers_missed_events_once() {
    let env = Env::new("dst");
    let a = env.ct.name("a");
    let gone = env.ct.name("gone");
    let a_id = run_container(&a, &[], &[]);
    let gone_id = run_container(&gone, &[], &[]);
    let c = env.collector().await;
    let mut d = env.start();
    c.wait_state(&env.state(&a), T, |s| s["running"] == true)
        .await;
    c.wait_state(&env.state(&gone), T, |s| s["running"] == true)
        .await;
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));

    // While dockside is down.
    docker(&["stop", "-t", "0", &a]);
    docker(&["rm", "-f", &gone]);
    let b = env.ct.name("b");
    let b_id = run_container(&b, &[], &[]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = c.all().len();
    d.spawn();

    c.wait_state(&env.state(&a), T, |s| s["state"] == "exited")
        .await;
    c.wait_state(&env.state(&b), T, |s| s["running"] == true)
        .await;
    c.wait_latest(&env.state(&gone), T, |m| m.payload.is_empty())
        .await;
    let events = format!("{}/local/events", env.base);
    c.wait_until("missed events", T, |all| {
        !events_for(all, &events, &b_id, "start").is_empty()
            && !events_for(all, &events, &gone_id, "destroy").is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<Msg> = c.all().split_off(before);
    for (id, action) in [
        (&a_id, "die"),
        (&a_id, "stop"),
        (&gone_id, "destroy"),
        (&b_id, "create"),
        (&b_id, "start"),
    ] {
        assert_eq!(
            events_for(&after, &events, id, action).len(),
            1,
            "{action} once"
        );
    }
    // Nothing from before the stop is delivered again.
    assert!(events_for(&after, &events, &a_id, "start").is_empty());
    // In order.
    let times: Vec<String> = after
        .iter()
        .filter(|m| m.topic == events)
        .map(|m| m.json()["time"].as_str().unwrap_or("").to_string())
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_an_endpoint_without_touching_the_other() {
    let env = Env::new("dst");
    let name = env.ct.name("web");
    run_container(&name, &[], &[]);
    let c = env.collector().await;
    let d = env.start();
    let b = env.base.clone();
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    let local_status = format!("{b}/local/status");
    // The baseline once `local` has said all it says at start (its status
    // may follow its first state).
    c.wait_latest(&local_status, T, |m| m.text() == "online")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let local_msgs = c.on(&local_status).len() + c.on(&env.state(&name)).len();

    let two = format!(
        "{}\n{}{}",
        env.config(),
        engine_endpoint("local"),
        engine_endpoint("second")
    );
    d.rewrite_config(&two);
    d.signal("-HUP");
    c.wait_state(&format!("{b}/second/{name}/state"), T, |s| {
        s["endpoint"] == "second"
    })
    .await;
    c.wait_latest(&format!("{b}/second/status"), T, |m| m.text() == "online")
        .await;
    c.wait_latest(&format!("{b}/info"), T, |m| {
        m.json()["endpoints"] == serde_json::json!(["local", "second"])
    })
    .await;

    // A bad config is refused and the running one kept.
    d.rewrite_config("[mqtt]\nqos = 9\n");
    d.signal("-HUP");
    // The refusal in the log is the marker: nothing from it can still be on its way.
    wait_log(&d, T, |l| l.contains("reload refused")).await;

    d.rewrite_config(&env.config());
    d.signal("-HUP");
    c.wait_latest(&format!("{b}/second/{name}/state"), T, |m| {
        m.payload.is_empty()
    })
    .await;
    c.wait_latest(&format!("{b}/info"), T, |m| {
        m.json()["endpoints"] == serde_json::json!(["local"])
    })
    .await;
    let snap = retained_snapshot(env.broker.port, &format!("{b}/#")).await;
    assert!(
        !snap.keys().any(|k| k.starts_with(&format!("{b}/second/"))),
        "{snap:?}"
    );
    assert!(snap.contains_key(&env.state(&name)));
    // `local` was never restarted: no new status or state message for it.
    assert_eq!(
        c.on(&local_status).len() + c.on(&env.state(&name)).len(),
        local_msgs
    );
    let log = d.log_text();
    assert!(log.contains("reload refused"), "{log}");
    assert!(!log.contains("endpoint restarted"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_offline_and_exits_within_two_seconds() {
    let env = Env::new("dst");
    run_container(&env.ct.name("x"), &[], &[]);
    let c = env.collector().await;
    let mut d = env.start();
    let status = format!("{}/status", env.base);
    c.wait_latest(&status, T, |m| m.text() == "online").await;
    c.wait_latest(&format!("{}/local/status", env.base), T, |m| {
        m.text() == "online"
    })
    .await;
    let (code, took) = d.stop();
    assert_eq!(code, Some(0), "{}", d.log_text());
    assert!(took < Duration::from_secs(2), "took {took:?}");
    c.wait_latest(&status, T, |m| m.text() == "offline").await;
    let snap = retained_snapshot(env.broker.port, &status).await;
    assert_eq!(snap.get(&status).map(|b| &b[..]), Some(&b"offline"[..]));
    // The last will says `offline` too: only a clean DISCONNECT proves that
    // dockside published it itself (Mosquitto logs which of the two it was).
    let client = format!("Client dockside-{}-", env.base);
    let deadline = Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = env.broker.log_text();
        if log
            .lines()
            .any(|l| l.contains(&client) && l.contains("disconnected"))
            || Instant::now() > deadline
        {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Mosquitto 2.0.11 words some clean DISCONNECTs "disconnected due to out of
    // memory"; a connection dropped without one is "closed its connection".
    assert!(
        log.lines()
            .any(|l| l.contains(&client) && l.contains(" disconnected")),
        "no clean disconnect of dockside in the broker log:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains(&client) && l.contains("closed its connection")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_a_die_leaves_the_stopped_state_retained() {
    let env = Env::new("dst");
    let name = env.ct.name("last");
    let id = run_container(&name, &[], &[]);
    let c = env.collector().await;
    let mut d = env.start();
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    // The engine's own event stream says when the container died.
    let mut events = std::process::Command::new("docker")
        .args([
            "events",
            "--filter",
            &format!("container={id}"),
            "--filter",
            "event=die",
            "--format",
            "{{.Action}}",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("docker events");
    let out = events.stdout.take().expect("stdout");
    tokio::time::sleep(Duration::from_millis(300)).await;
    docker(&["kill", &name]);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("die event");
    assert_eq!(line.trim(), "die");
    std::thread::sleep(Duration::from_millis(20));
    let (code, _) = d.stop();
    let _ = events.kill();
    let _ = events.wait();
    assert_eq!(code, Some(0), "{}", d.log_text());
    let snap = retained_snapshot(env.broker.port, &env.state(&name)).await;
    let state: serde_json::Value =
        serde_json::from_slice(snap.get(&env.state(&name)).expect("state retained")).expect("json");
    assert_eq!(state["state"], "exited", "{state}");
    assert_eq!(state["exit_code"], 137, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_endpoint_task_is_restarted_and_mirrors_again() {
    let env = Env::new("dst");
    let web = env.ct.name("web");
    run_container(&web, &[], &[]);
    let boom = env.ct.name("boom");
    let c = env.collector().await;
    let d = Dockside::start_with_env(
        env.dir.path(),
        &env.config(),
        &[("DOCKSIDE_TEST_PANIC_ON", &boom)],
    );
    let status = format!("{}/local/status", env.base);
    c.wait_latest(&status, T, |m| m.text() == "online").await;
    c.wait_state(&env.state(&web), T, |s| s["running"] == true)
        .await;
    c.clear();
    run_container(&boom, &[], &[]); // its `create` event makes the endpoint task panic (once)
    c.wait_latest(&status, T, |m| m.text() == "offline").await;
    c.wait_latest(&status, T, |m| m.text() == "online").await;
    // Back and working: the new container and a change after the restart both show.
    c.wait_state(&env.state(&boom), T, |s| s["running"] == true)
        .await;
    docker(&["kill", &web]);
    c.wait_state(&env.state(&web), T, |s| s["state"] == "exited")
        .await;
    let log = d.log_text();
    assert!(
        log.contains("task stopped unexpectedly") && log.contains("panicked"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_at_start_then_up() {
    let env = Env::new("dst");
    let name = env.ct.name("x");
    run_container(&name, &[], &[]);
    let port = free_port();
    let cfg = env
        .config()
        .replace(&env.broker.url(), &format!("mqtt://127.0.0.1:{port}"));
    let mut d = Dockside::start(env.dir.path(), &cfg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(d.is_running(), "dockside must keep trying, not exit");
    let mut late = Broker::start();
    // Re-home the broker on the port dockside is trying.
    late.kill();
    let late = start_broker_on(port, late);
    let c = Collector::start(late.port, &format!("{}/#", env.base)).await;
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    c.wait_latest(&format!("{}/status", env.base), T, |m| m.text() == "online")
        .await;
}

fn start_broker_on(port: u16, mut b: Broker) -> Broker {
    b.port = port;
    b.restart();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_is_offline_and_the_other_carries_on() {
    let env = Env::new("dst");
    let name = env.ct.name("x");
    run_container(&name, &[], &[]);
    let cfg = format!(
        "{}\n{}[endpoints.dead]\nurl = \"unix://{}/nope.sock\"\n",
        env.config(),
        engine_endpoint("local"),
        env.dir.path().display()
    );
    let c = env.collector().await;
    let _d = Dockside::start(env.dir.path(), &cfg);
    c.wait_latest(&format!("{}/dead/status", env.base), T, |m| {
        m.text() == "offline"
    })
    .await;
    c.wait_latest(&format!("{}/dead/info", env.base), T, |m| {
        m.json()["reachable"] == false
    })
    .await;
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    c.wait_latest(&format!("{}/local/status", env.base), T, |m| {
        m.text() == "online"
    })
    .await;
}

fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dockside"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run dockside");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn config_errors_exit_64_and_check_config_redacts() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[mqtt]\nurl = \"mqtt://h:1883\"\nqos = 7\n").expect("write");
    let (code, _, err) = run_cli(&["--config", bad.to_str().expect("path")], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("mqtt.qos"), "{err}");

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[mqtt]\nurll = \"x\"\n").expect("write");
    let (code, _, err) = run_cli(&["--config", unknown.to_str().expect("path")], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("urll"), "{err}");

    let (code, _, err) = run_cli(&["--config", "/nonexistent/dockside.toml"], &[]);
    assert_eq!(code, Some(64), "{err}");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[mqtt]\nusername = \"u\"\npassword = \"hunter2-secret\"\n",
    )
    .expect("write");
    let (code, out, _) = run_cli(
        &["--config", good.to_str().expect("path"), "check-config"],
        &[("DOCKSIDE__MQTT__BASE_TOPIC", "fromenv")],
    );
    assert_eq!(code, Some(0));
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("base_topic = \"fromenv\""), "{out}");
    assert!(out.contains("[endpoints.local]"), "{out}");

    let (code, _, err) = run_cli(
        &["--config", good.to_str().expect("path")],
        &[("DOCKSIDE__EVENTS__TYPES", "container,bogus")],
    );
    assert_eq!(code, Some(64));
    assert!(err.contains("events.types"), "{err}");
}

#[test]
fn unwritable_state_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").expect("write");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[state]\ndir = \"{}/sub\"\n[mqtt]\nurl = \"mqtt://127.0.0.1:1\"\n",
            file.display()
        ),
    )
    .expect("write");
    let (code, _, err) = run_cli(&["--config", cfg.to_str().expect("path")], &[]);
    assert_eq!(code, Some(73), "{err}");
    assert!(err.contains("state.dir"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_restart_only_what_changed_and_bad_ones_are_refused() {
    let env = Env::new("dst");
    let name = env.ct.name("web");
    run_container(&name, &[], &[]);
    let garbage_ca = env.dir.path().join("garbage-ca.pem");
    std::fs::write(&garbage_ca, "not a certificate").expect("write");
    let with_tls = format!(
        "{}{}[endpoints.tls]\nurl = \"https://127.0.0.1:1\"\nca_file = \"{}\"\n",
        env.config(),
        engine_endpoint("local"),
        garbage_ca.display()
    );
    let c = env.collector().await;
    let d = Dockside::start(env.dir.path(), &with_tls);
    let b = env.base.clone();
    let (bridge, local) = (format!("{b}/status"), format!("{b}/local/status"));
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    c.wait_latest(&local, T, |m| m.text() == "online").await;
    // An endpoint that cannot be set up is offline, retried, and the other carries on.
    c.wait_latest(&format!("{b}/tls/status"), T, |m| m.text() == "offline")
        .await;
    let count = |c: &Collector| {
        (
            c.on(&bridge).len(),
            c.on(&local).len(),
            c.on(&env.state(&name)).len(),
        )
    };
    let before = count(&c);
    let reloads = |d: &Dockside| {
        d.log_text().matches("configuration reloaded").count()
            + d.log_text().matches("reload refused").count()
    };

    // Only [updates] changes: nothing else restarts or republishes.
    let n = reloads(&d);
    d.rewrite_config(&format!("{with_tls}[updates]\ninterval = \"1h\"\n"));
    d.signal("-HUP");
    wait_log(&d, T, |_| reloads(&d) > n).await;
    // A state dir that cannot be used: refused, the running one is kept.
    let n = reloads(&d);
    let file = env.dir.path().join("a-file");
    std::fs::write(&file, "x").expect("write");
    let bad_dir = with_tls.replace(
        &env.dir.path().join("state").display().to_string(),
        &file.join("sub").display().to_string(),
    );
    d.rewrite_config(&bad_dir);
    d.signal("-HUP");
    wait_log(&d, T, |_| reloads(&d) > n).await;
    // A missing CA file for the broker: refused at load.
    d.rewrite_config(&with_tls.replace("[mqtt]\n", "[mqtt]\nca_file = \"/nonexistent/ca.pem\"\n"));
    d.signal("-HUP");
    wait_log(&d, T, |l| l.matches("reload refused").count() >= 2).await;
    // Still mirroring, and nothing was republished or flapped meanwhile.
    assert_eq!(
        count(&c),
        before,
        "a reload republished or flapped something"
    );
    docker(&["kill", &name]);
    c.wait_state(&env.state(&name), T, |s| s["state"] == "exited")
        .await;
    let log = d.log_text();
    assert!(log.contains("image watcher restarted"), "{log}");
    assert!(log.contains("cannot set it up"), "{log}");
    assert!(!log.contains("endpoint restarted"), "{log}");
    assert!(c.on(&bridge).iter().all(|m| m.text() == "online"));
}

async fn wait_log(d: &Dockside, timeout: Duration, mut pred: impl FnMut(&str) -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let log = d.log_text();
        if pred(&log) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "log condition not reached:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
