//! Commands over MQTT against the real engine and Mosquitto: every allowed word
//! does what it says and yields exactly one `ok` result carrying the reached
//! state; every refusal path yields its code and leaves the container as it was;
//! retained and garbage commands run nothing; redeliveries run once.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

/// `--init` so that SIGTERM stops the container at once (busybox as PID 1 ignores it).
fn run(name: &str, extra: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--init", "--name", name];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    docker(&args)
}

fn engine_state(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", name])
}

/// Publishes `payload` and waits for the one result with `request_id`.
async fn command(c: &Collector, env: &Env, ct: &str, action: &str, rid: &str) -> serde_json::Value {
    let payload = format!(r#"{{"action":"{action}","request_id":"{rid}"}}"#);
    c.publish(&env.set(ct), payload.as_bytes(), false).await;
    let topic = env.result(ct);
    c.wait_until(&format!("result {rid}"), T, |all| {
        all.iter()
            .any(|m| m.topic == topic && m.json()["request_id"] == rid)
    })
    .await;
    let results: Vec<serde_json::Value> = c
        .on(&topic)
        .iter()
        .map(|m| m.json())
        .filter(|j| j["request_id"] == rid)
        .collect();
    assert_eq!(
        results.len(),
        1,
        "exactly one result for {rid}: {results:?}"
    );
    results[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_allowed_word_works_and_yields_one_ok_result() {
    let env = Env::new("dsc");
    let name = env.ct.name("web");
    run(&name, &[]);
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    let _d = Dockside::start(
        env.dir.path(),
        &env.commands_config("allow = [\"start\",\"stop\",\"restart\",\"pause\",\"unpause\",\"kill\"]\nmin_interval = \"50ms\""),
    );
    let first = c
        .wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;

    let steps: &[(&str, &str, &str)] = &[
        ("stop", "exited", "exited"),
        ("stop", "exited", "exited"), // already stopped: 304 is ok
        ("start", "running", "running"),
        ("start", "running", "running"), // already running: 304 is ok
        ("pause", "paused", "paused"),
        ("unpause", "running", "running"),
        ("restart", "running", "running"),
        ("kill", "exited", "exited"),
    ];
    let mut started_at = first["started_at"].clone();
    for (i, (action, want_state, engine)) in steps.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let rid = format!("r{i}-{action}");
        let r = command(&c, &env, &name, action, &rid).await;
        assert_eq!(r["ok"], true, "{action}: {r}");
        assert_eq!(r["action"], *action);
        assert_eq!(r["state"], *want_state, "{action}: {r}");
        assert!(r["duration_ms"].is_u64() && r["at"].is_string(), "{r}");
        assert!(r.get("code").is_none() && r.get("error").is_none(), "{r}");
        assert_eq!(engine_state(&name), *engine, "engine after {action}");
        let s = c.latest(&env.state(&name)).expect("state").json();
        if *action == "restart" {
            assert_ne!(
                s["started_at"], started_at,
                "restart must start the container anew"
            );
        }
        started_at = s["started_at"].clone();
    }
    // A plain word works too, without a request id.
    tokio::time::sleep(Duration::from_millis(60)).await;
    c.publish(&env.set(&name), b"start", false).await;
    c.wait_until("plain start result", T, |all| {
        all.iter().any(|m| {
            let j = m.json();
            m.topic == env.result(&name) && j["action"] == "start" && j.get("request_id").is_none()
        })
    })
    .await;
    assert_eq!(engine_state(&name), "running");
    // Results are never retained.
    assert!(c.on(&env.result(&name)).iter().all(|m| !m.retain));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_has_its_code_and_touches_nothing() {
    let env = Env::new("dsc");
    let plain = env.ct.name("plain");
    let labelled = env.ct.name("labelled");
    let guarded = env.ct.name("guarded");
    let slow = env.ct.name("slow");
    run(&plain, &[]);
    run(&labelled, &["-l", "dockside.commands=false"]);
    run(&guarded, &[]);
    // No --init: busybox ignores SIGTERM, so a stop takes the 3 s stop timeout.
    docker(&["run", "-d", "--name", &slow, "--stop-timeout", "3", IMAGE]);
    let excluded = format!("other-{}", env.ct.prefix);
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    let _d = Dockside::start(
        env.dir.path(),
        &env.commands_config("protect = [\"*-guarded\"]\nmin_interval = \"30s\""),
    );
    for n in [&plain, &labelled, &guarded, &slow] {
        c.wait_state(&env.state(n), T, |s| s["running"] == true)
            .await;
    }
    let cases: Vec<(&str, &str, &str, &str)> = vec![
        (&plain, "kill", "forbidden", "commands.allow"),
        (&plain, "pause", "forbidden", "commands.allow"),
        (&labelled, "stop", "forbidden", "dockside.commands=false"),
        (&guarded, "restart", "forbidden", "protected"),
        (&excluded, "stop", "forbidden", "not mirrored"),
        (&plain, "update", "forbidden", "commands.allow"),
        (&plain, "check", "forbidden", "commands.allow"),
    ];
    for (i, (ct, action, code, text)) in cases.iter().enumerate() {
        let r = command(&c, &env, ct, action, &format!("x{i}")).await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["code"], *code, "{ct} {action}: {r}");
        assert!(r["error"].as_str().is_some_and(|e| e.contains(text)), "{r}");
    }
    let missing = format!("{}-missing", env.ct.prefix);
    let r = command(&c, &env, &missing, "stop", "nf").await;
    assert_eq!(r["code"], "not_found", "{r}");
    let r = command(&c, &env, &plain, "stop", "other-ep-topic").await;
    assert_eq!(r["ok"], true, "a permitted command still works: {r}");

    // busy: a second command while the slow stop runs.
    c.publish(
        &env.set(&slow),
        br#"{"action":"stop","request_id":"s1"}"#,
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = command(&c, &env, &slow, "start", "s2").await;
    assert_eq!(r["code"], "busy", "{r}");
    c.wait_until("slow stop result", T, |all| {
        all.iter()
            .any(|m| m.topic == env.result(&slow) && m.json()["request_id"] == "s1")
    })
    .await;
    // rate_limited: min_interval is 30 s.
    let r = command(&c, &env, &slow, "start", "s3").await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("retry in")),
        "{r}"
    );

    // Nothing refused was touched.
    for n in [&labelled, &guarded] {
        assert_eq!(engine_state(n), "running", "{n}");
    }
    assert_eq!(engine_state(&slow), "exited");
    // Container commands off entirely.
    let env2_base = unique("t");
    let cfg = format!(
        "{}\n[commands]\nenabled = false\n",
        base_config(
            &env.broker,
            &env2_base,
            &env.dir.path().join("s2"),
            &env.ct.prefix
        )
    );
    let d2dir = tempfile::tempdir().expect("tmp");
    let _d2 = Dockside::start(d2dir.path(), &cfg);
    let c2 = Collector::start(env.broker.port, &format!("{env2_base}/#")).await;
    c2.wait_state(&format!("{env2_base}/local/{plain}/state"), T, |s| {
        s.is_object()
    })
    .await;
    c2.publish(&format!("{env2_base}/local/{guarded}/set"), b"stop", false)
        .await;
    let r = c2
        .wait_latest(&format!("{env2_base}/local/{guarded}/result"), T, |_| true)
        .await
        .json();
    assert_eq!(r["code"], "forbidden");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("commands.enabled")),
        "{r}"
    );
    assert_eq!(engine_state(&guarded), "running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_stop_published_before_start_stops_nothing() {
    let env = Env::new("dsc");
    let name = env.ct.name("keep");
    run(&name, &[]);
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    c.publish(&env.set(&name), b"stop", true).await;
    c.publish(
        &env.set(&name),
        br#"{"action":"restart","request_id":"stale"}"#,
        true,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]);
    let _d = Dockside::start(env.dir.path(), &env.commands_config(""));
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    let r = c.wait_latest(&env.result(&name), T, |_| true).await.json();
    assert_eq!(r["code"], "invalid");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("retained")),
        "{r}"
    );
    // The stale command is cleared from the broker so it cannot come back.
    c.wait_latest(&env.set(&name), T, |m| m.payload.is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(engine_state(&name), "running");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]),
        before
    );
    let snap = retained_snapshot(env.broker.port, &env.set(&name)).await;
    assert!(snap.is_empty(), "{snap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_every_command_topic_is_refused_and_dockside_stays_healthy() {
    let env = Env::new("dsc");
    let name = env.ct.name("x");
    run(&name, &[]);
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    let mut d = Dockside::start(
        env.dir.path(),
        &env.commands_config(
            "allow = [\"start\",\"stop\",\"restart\",\"pause\",\"unpause\",\"kill\"]",
        ),
    );
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    let b = env.base.clone();
    // Over the 1 KiB command limit, under the 64 KiB packet limit.
    let big = vec![b's'; 60 << 10];
    let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
    let payloads: Vec<Vec<u8>> = vec![
        vec![0xff, 0x00, 0xfe, 0x80],
        big,
        deep.into_bytes(),
        br#"{"action":["stop"]}"#.to_vec(),
        br#"{"action":"stop","request_id":{"x":1}}"#.to_vec(),
        br#"{"action":"stop","extra":true}"#.to_vec(),
        b"null".to_vec(),
        b"12".to_vec(),
        b"reboot".to_vec(),
        b"stop; rm -rf /".to_vec(),
        b"   ".to_vec(),
    ];
    let topics = [
        (
            format!("{b}/local/{name}/set"),
            format!("{b}/local/{name}/result"),
        ),
        (format!("{b}/local/set"), format!("{b}/local/result")),
        (format!("{b}/set"), format!("{b}/result")),
    ];
    for (set, result) in &topics {
        for p in &payloads {
            c.publish(set, p, false).await;
        }
        let want = payloads.len();
        c.wait_until(&format!("{want} results on {result}"), T, |all| {
            all.iter().filter(|m| m.topic == *result).count() >= want
        })
        .await;
        for m in c.on(result) {
            assert_eq!(m.json()["code"], "invalid", "{}", m.text());
        }
    }
    // Unknown container, unknown endpoint, and a container of another endpoint.
    let stray = [
        (
            format!("{b}/local/{}-ghost/set", env.ct.prefix),
            "stop",
            "not_found",
        ),
        (format!("{b}/nowhere/{name}/set"), "stop", "not_found"),
        (format!("{b}/nowhere/set"), "resync", "not_found"),
    ];
    for (set, word, code) in &stray {
        c.publish(set, word.as_bytes(), false).await;
        let result = set.replace("/set", "/result");
        let r = c.wait_latest(&result, T, |_| true).await.json();
        assert_eq!(r["code"], *code, "{set}: {r}");
    }
    // Still healthy: the container untouched, state still mirrored, a good command works.
    assert_eq!(engine_state(&name), "running");
    assert!(d.is_running());
    let r = command(&c, &env, &name, "pause", "after-garbage").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "paused");
}

/// SPEC §16: a packet over 64 KiB is refused from its header, unread (the
/// connection is made again), nothing runs, and commands work after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_packet_is_refused_unread_and_dockside_carries_on() {
    let env = Env::new("dsc");
    let name = env.ct.name("big");
    run(&name, &[]);
    // Subscribed to states and results only: the huge message is not theirs.
    let states = Collector::start(env.broker.port, &env.state(&name)).await;
    let results = Collector::start(env.broker.port, &env.result(&name)).await;
    let mut d = Dockside::start(
        env.dir.path(),
        &env.commands_config("allow = [\"stop\",\"pause\"]"),
    );
    states
        .wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    let mut huge = br#"{"action":"stop","request_id":""#.to_vec();
    huge.extend(vec![b'x'; 1 << 20]);
    huge.extend(br#""}"#);
    states.publish(&env.set(&name), &huge, false).await;
    // Refused, then connected again (a command sent in between is lost, as
    // during any reconnect).
    let deadline = std::time::Instant::now() + T;
    loop {
        let log = d.log_text();
        let refused = log.find("a message over 64 KiB arrived");
        // The command session, which read it, subscribes again.
        if refused.is_some_and(|at| log[at..].contains("command topics subscribed")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // its subscriptions
    let r = results
        .command(
            &env.set(&name),
            r#"{"action":"pause","request_id":"after-huge"}"#,
            "after-huge",
            T,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(engine_state(&name), "paused", "the oversize stop never ran");
    assert!(
        results.on(&env.result(&name)).len() == 1,
        "no result for the refused one"
    );
    assert!(d.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_around_a_broker_reconnect_runs_once() {
    let mut env = Env::new("dsc");
    let name = env.ct.name("once");
    run(&name, &[]);
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    let _d = Dockside::start(
        env.dir.path(),
        &env.commands_config("min_interval = \"0s\""),
    );
    c.wait_state(&env.state(&name), T, |s| s["running"] == true)
        .await;
    let since = docker(&["inspect", "-f", "{{.State.StartedAt}}", &name]);
    let payload = br#"{"action":"restart","request_id":"only-once"}"#;
    c.publish(&env.set(&name), payload, false).await;
    env.broker.restart();
    // The sender does not know whether it arrived: it sends again (QoS 1 redelivery).
    c.wait_until("collector back", T, |_| true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.publish(&env.set(&name), payload, false).await;
    c.wait_until("result", T, |all| {
        all.iter()
            .any(|m| m.topic == env.result(&name) && m.json()["request_id"] == "only-once")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let results = c
        .on(&env.result(&name))
        .into_iter()
        .filter(|m| m.json()["request_id"] == "only-once")
        .count();
    assert_eq!(results, 1);
    let starts = Command::new("docker")
        .args([
            "events",
            "--since",
            &since,
            "--until",
            "0s",
            "--filter",
            &format!("container={name}"),
            "--filter",
            "event=restart",
        ])
        .output()
        .expect("docker events");
    let n = String::from_utf8_lossy(&starts.stdout).lines().count();
    assert_eq!(n, 1, "the container was restarted {n} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockside_never_stops_its_own_container() {
    let env = Env::new("dsc");
    let me = env.ct.name("dockside");
    let state = env.dir.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let cfg_path = env.dir.path().join("inside.toml");
    std::fs::write(
        &cfg_path,
        env.commands_config(
            "allow = [\"start\",\"stop\",\"restart\",\"pause\",\"unpause\",\"kill\"]",
        ),
    )
    .expect("cfg");
    let bin = env!("CARGO_BIN_EXE_dockside");
    let dir = env.dir.path().display().to_string();
    // The dynamically linked binary runs in the scratch image with the host's libraries.
    docker(&[
        "run",
        "-d",
        "--name",
        &me,
        "--network",
        "host",
        "-v",
        &format!("{}:/var/run/docker.sock", engine_socket()),
        "-v",
        "/lib:/lib:ro",
        "-v",
        "/lib64:/lib64:ro",
        "-v",
        "/usr/lib:/usr/lib:ro",
        "-v",
        &format!("{bin}:/dockside:ro"),
        "-v",
        &format!("{dir}:{dir}"),
        IMAGE,
        "/dockside",
        "--config",
        cfg_path.to_str().expect("path"),
    ]);
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    c.wait_state(&env.state(&me), T, |s| s["running"] == true)
        .await;
    for (i, action) in ["stop", "restart", "kill", "pause"].iter().enumerate() {
        let r = command(&c, &env, &me, action, &format!("self{i}")).await;
        assert_eq!(r["code"], "forbidden", "{action}: {r}");
        assert!(
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("own container")),
            "{r}"
        );
    }
    assert_eq!(engine_state(&me), "running");
    // Harmless words are still fine on itself.
    let r = command(&c, &env, &me, "start", "self-start").await;
    assert_eq!(r["ok"], true, "{r}");
}

/// Issue: a `restart` of a container that exits 0 on SIGTERM came back
/// `ok: false, state: exited` while the engine had it running again (Docker
/// 28.5, and 20.10 behind a socket proxy): the restart's own `die` was
/// replayed over an inspect that already saw the new run. Restarted several
/// times straight on the socket and through HAProxy (a second endpoint on the
/// same engine), every result is ok and `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_container_that_exits_0_on_sigterm_is_ok() {
    let env = Env::new("dsc");
    let name = env.ct.name("trap");
    run_container(
        &name,
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.05; done",
        ],
    );
    let proxy = SocketProxy::start("");
    let c = Collector::start(env.broker.port, &format!("{}/#", env.base)).await;
    let config = format!(
        "{}\n{}[endpoints.proxied]\nurl = \"tcp://127.0.0.1:{}\"\n",
        env.commands_config("allow = [\"restart\"]\nmin_interval = \"0s\""),
        engine_endpoint("local"),
        proxy.port
    );
    let _d = Dockside::start(env.dir.path(), &config);
    for ep in ["proxied", "local"] {
        let state = format!("{}/{ep}/{name}/state", env.base);
        c.wait_state(&state, T, |s| s["running"] == true).await;
        for i in 0..5 {
            let rid = format!("{ep}-{i}");
            let payload = format!(r#"{{"action":"restart","request_id":"{rid}"}}"#);
            let set = format!("{}/{ep}/{name}/set", env.base);
            let result = format!("{}/{ep}/{name}/result", env.base);
            c.publish(&set, payload.as_bytes(), false).await;
            let r = c
                .wait_latest(&result, T, |m| m.json()["request_id"] == rid.as_str())
                .await
                .json();
            if r["ok"] != true {
                for m in c.all() {
                    if m.topic.contains(ep) {
                        eprintln!("MSG {} {}", m.topic, m.text());
                    }
                }
            }
            assert_eq!(r["ok"], true, "restart {i} through {ep}: {r}");
            assert_eq!(r["state"], "running", "{r}");
            assert_eq!(engine_state(&name), "running");
            let s = c.latest(&state).expect("state").json();
            assert_eq!(s["state"], "running", "{s}");
        }
    }
}
