//! Update management (SPEC §14) against the real engine and a real registry:
//! update to a chosen version, a tag that does not exist, rollback (and
//! rollback refused when the old image is gone), the history across a
//! restart, `update_all` with a failing image, the `dockside.updates=false`
//! label (no registry request at all), pull progress, compose labels, and a
//! new image that turns unhealthy within `verify_for`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

use common::{inspect_json as inspect, push_image_with as push};

fn image_id(name: &str) -> String {
    inspect(name)["Image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn config(broker: &Broker, base: &str, dir: &std::path::Path, prefix: &str, extra: &str) -> String {
    format!(
        "{}\n[commands]\nallow = [\"start\",\"stop\",\"update\",\"rollback\",\"check\"]\nmin_interval = \"0s\"\n[updates]\nverify_for = \"2s\"\n{extra}\n",
        base_config(broker, base, &dir.join("state"), prefix)
    )
}

/// Sends `payload` to `set` and waits for the result carrying `rid`.
async fn command(c: &Collector, set: &str, payload: &str, rid: &str) -> Value {
    c.command(set, payload, rid, T).await
}

async fn history(c: &Collector, topic: &str, len: usize) -> Value {
    c.wait_latest(topic, T, |m| {
        m.json().as_array().is_some_and(|a| a.len() == len)
    })
    .await
    .json()
}

/// The retained history as it stood when the result with `rid` arrived on
/// `result` (or at most 50 ms after): the operation that just ended is its
/// newest entry, finished, with `status`.
fn history_by_the_result(
    c: &Collector,
    hist: &str,
    result: &str,
    rid: &str,
    status: &str,
) -> Value {
    let r = c
        .on(result)
        .into_iter()
        .find(|m| m.json()["request_id"] == rid)
        .expect("the result");
    let by = r.at + Duration::from_millis(50);
    let h = c
        .on(hist)
        .into_iter()
        .rfind(|m| m.at <= by)
        .map(|m| m.json())
        .unwrap_or(Value::Null);
    assert_eq!(h[0]["status"], status, "history by the result {rid}: {h}");
    assert!(h[0]["finished_at"].is_string(), "{h}");
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_rollback_and_history_across_a_restart() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsum"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let repo = format!("{}/{}/app", reg.host(), ct.prefix);
    let ids: Vec<String> = ["1", "2", "3"]
        .iter()
        .map(|v| push(&format!("{repo}:{v}"), ""))
        .collect();
    let app = ct.name("app");
    run_sleeper(&app, &format!("{repo}:2"), &[]);

    let cfg = config(&broker, &base, dir.path(), &ct.prefix, "");
    let mut ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let set = format!("{base}/local/{app}/set");
    let hist = format!("{base}/local/{app}/history");
    c.wait_state(&format!("{base}/local/{app}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    let first_id = inspect(&app)["Id"].clone();

    // A tag the repository does not have: invalid, nothing recreated.
    let r = command(
        &c,
        &set,
        r#"{"action":"update","version":"9.9","request_id":"v0"}"#,
        "v0",
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "invalid", "{r}");
    history_by_the_result(
        &c,
        &hist,
        &format!("{base}/local/{app}/result"),
        "v0",
        "failed",
    );
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist")),
        "{r}"
    );
    assert_eq!(inspect(&app)["Id"], first_id);
    // A digest or another repository: invalid at parse time.
    let r = command(
        &c,
        &set,
        r#"{"action":"update","version":"sha256:0123","request_id":"v1"}"#,
        "v1",
    )
    .await;
    assert_eq!(r["code"], "invalid", "{r}");
    let r = command(
        &c,
        &set,
        r#"{"action":"update","version":"other/repo:1","request_id":"v2"}"#,
        "v2",
    )
    .await;
    assert_eq!(r["code"], "invalid", "{r}");

    // Newer, then older versions.
    let r = command(
        &c,
        &set,
        r#"{"action":"update","version":"3","request_id":"v3"}"#,
        "v3",
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:3"));
    assert_eq!(image_id(&app), ids[2]);
    history_by_the_result(&c, &hist, &format!("{base}/local/{app}/result"), "v3", "ok");
    let h = history(&c, &hist, 2).await;
    assert_eq!(h[0]["action"], "update", "{h}");
    assert_eq!(h[0]["status"], "ok", "{h}");
    assert_eq!(h[0]["from_version"], "2", "{h}");
    assert_eq!(h[0]["to_version"], "3", "{h}");
    assert_eq!(h[0]["from_image"], ids[1].as_str(), "{h}");
    assert_eq!(h[0]["to_image"], ids[2].as_str(), "{h}");
    assert!(h[0]["started_at"].is_string() && h[0]["finished_at"].is_string());
    assert_eq!(h[1]["status"], "failed", "{h}");
    assert!(
        h[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("does not exist"))
    );

    let r = command(
        &c,
        &set,
        r#"{"action":"update","version":"1","request_id":"v4"}"#,
        "v4",
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(image_id(&app), ids[0]);
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:1"));

    // Rollback: back to what ran before the last update, name and image.
    let r = command(
        &c,
        &set,
        r#"{"action":"rollback","request_id":"rb1"}"#,
        "rb1",
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(image_id(&app), ids[2]);
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:3"));
    assert_eq!(inspect(&app)["State"]["Running"], true);
    let h = history(&c, &hist, 4).await;
    assert_eq!(h[0]["action"], "rollback", "{h}");
    assert_eq!(h[0]["status"], "ok", "{h}");
    assert_eq!(h[0]["to_image"], ids[2].as_str(), "{h}");
    // Nothing more to roll back to.
    let r = command(
        &c,
        &set,
        r#"{"action":"rollback","request_id":"rb2"}"#,
        "rb2",
    )
    .await;
    assert_eq!(r["code"], "invalid", "{r}");

    // The history comes back from state.dir after a restart, not from the
    // broker: its retained copy is deleted while dockside is down.
    ds.stop();
    c.publish(&hist, b"", true).await;
    let mut gone = false;
    for _ in 0..50 {
        if retained_snapshot(broker.port, &hist).await.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "retained history deleted");
    c.clear();
    ds.spawn();
    let h = history(&c, &hist, 4).await;
    assert_eq!(h[0]["action"], "rollback", "{h}");

    // The image to roll back to is gone: engine_error, nothing changes.
    let r = command(
        &c,
        &set,
        r#"{"action":"update","version":"2","request_id":"v5"}"#,
        "v5",
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(image_id(&app), ids[1]);
    docker(&["rmi", "-f", &format!("{repo}:3")]);
    docker_quiet(&["rmi", "-f", &ids[2]]);
    let r = command(
        &c,
        &set,
        r#"{"action":"rollback","request_id":"rb3"}"#,
        "rb3",
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "engine_error", "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer on the engine")),
        "{r}"
    );
    assert_eq!(image_id(&app), ids[1]);
    assert_eq!(inspect(&app)["State"]["Running"], true);

    // Registry down: engine_error, nothing recreated.
    let mut reg = reg;
    reg.stop();
    let id = inspect(&app)["Id"].clone();
    for (rid, payload) in [
        ("d1", r#"{"action":"update","request_id":"d1"}"#),
        (
            "d2",
            r#"{"action":"update","version":"3","request_id":"d2"}"#,
        ),
    ] {
        let r = command(&c, &set, payload, rid).await;
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["code"], "engine_error", "{r}");
        assert_eq!(inspect(&app)["Id"], id, "nothing recreated");
        assert_eq!(inspect(&app)["State"]["Running"], true);
    }
    docker_quiet(&["rm", "-f", &app]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_all_goes_on_past_a_failure_and_ignored_containers_are_never_asked() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsua"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let names = ["a", "b", "bad", "ign", "cfgign"];
    let mut old = std::collections::HashMap::new();
    for n in names {
        let tag = format!("{}/{}-{n}/app:1", reg.host(), ct.prefix);
        push(&tag, "");
        let label = if n == "ign" {
            vec!["--label", "dockside.updates=false"]
        } else {
            vec![]
        };
        run_sleeper(&ct.name(n), &tag, &label);
        old.insert(n, inspect(&ct.name(n))["Id"].clone());
        // A newer image under the same tag, on the registry only.
        let extra = if n == "bad" {
            "ENTRYPOINT [\"/bin/false\"]"
        } else {
            ""
        };
        push(&tag, extra);
        docker(&["rmi", &tag]);
    }
    let extra = format!("ignore = [\"{}\"]", ct.name("cfgign"));
    let cfg = config(&broker, &base, dir.path(), &ct.prefix, &extra);
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    for n in ["a", "b", "bad"] {
        c.wait_latest(&format!("{base}/local/{}/update", ct.name(n)), T, |m| {
            m.json()["status"] == "update_available"
        })
        .await;
    }
    for n in ["ign", "cfgign"] {
        let u = c
            .wait_latest(&format!("{base}/local/{}/update", ct.name(n)), T, |m| {
                m.json()["status"] == "ignored"
            })
            .await
            .json();
        assert_eq!(u["update_available"], false, "{u}");
        assert!(u.get("remote_digest").is_none(), "{u}");
    }
    // Not a single registry request for the ignored ones.
    let asked = reg.dockside_requests();
    for n in ["ign", "cfgign"] {
        let path = format!("/{}-{n}/", ct.prefix);
        assert!(
            !asked.iter().any(|r| r.contains(&path)),
            "{n} was asked: {asked:?}"
        );
    }
    assert!(
        asked
            .iter()
            .any(|r| r.contains(&format!("/{}-a/", ct.prefix))),
        "{asked:?}"
    );

    let set = format!("{base}/local/set");
    let r = command(
        &c,
        &set,
        r#"{"action":"update_all","request_id":"ua"}"#,
        "ua",
    )
    .await;
    assert_eq!(r["ok"], false, "one failed: {r}");
    let outcomes = r["outcomes"].as_array().expect("outcomes").clone();
    let by: std::collections::HashMap<String, Value> = outcomes
        .iter()
        .map(|o| {
            (
                o["container"].as_str().unwrap_or_default().to_string(),
                o.clone(),
            )
        })
        .collect();
    assert_eq!(by.len(), 3, "{r}");
    for n in ["a", "b"] {
        assert_eq!(by[&ct.name(n)]["ok"], true, "{r}");
        assert_ne!(inspect(&ct.name(n))["Id"], old[n], "{n} recreated");
    }
    let bad = &by[&ct.name("bad")];
    assert_eq!(bad["ok"], false, "{r}");
    assert_eq!(bad["code"], "engine_error", "{r}");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("restored")),
        "{r}"
    );
    assert_eq!(
        inspect(&ct.name("bad"))["Id"],
        old["bad"],
        "the old one is back"
    );
    assert_eq!(inspect(&ct.name("bad"))["State"]["Running"], true);
    for n in ["ign", "cfgign"] {
        assert_eq!(inspect(&ct.name(n))["Id"], old[n], "{n} untouched");
    }
    let h = history(&c, &format!("{base}/local/{}/history", ct.name("bad")), 1).await;
    assert_eq!(h[0]["status"], "rolled_back", "{h}");
    // Each container's own result topic got nothing: there is one result.
    assert!(
        c.on(&format!("{base}/local/{}/result", ct.name("a")))
            .is_empty()
    );
    ct.cleanup();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_compose_labels_and_an_unhealthy_new_image_rolled_back() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsup"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");

    // A compose-labelled container on a multi-layer image of a few MB.
    let big = format!("{}/{}/big:1", reg.host(), ct.prefix);
    let layers = "RUN head -c 6000000 /dev/urandom > /l1\nRUN head -c 6000000 /dev/urandom > /l2\nRUN head -c 6000000 /dev/urandom > /l3";
    let old_big = push(&big, layers);
    let net = format!("{}_default", ct.prefix);
    docker(&["network", "create", &net]);
    let web = ct.name("web");
    let compose_labels = [
        format!("com.docker.compose.project={}", ct.prefix),
        "com.docker.compose.service=web".to_string(),
        "com.docker.compose.container-number=1".to_string(),
        "com.docker.compose.config-hash=0123abcd".to_string(),
        format!("com.docker.compose.image={old_big}"),
    ];
    let mut opts: Vec<&str> = vec!["--network", &net, "--network-alias", "web"];
    for l in &compose_labels {
        opts.extend(["--label", l.as_str()]);
    }
    run_sleeper(&web, &big, &opts);
    let new_big = push(&big, layers);
    docker(&["rmi", &big]);

    // A healthy image whose next version fails its healthcheck.
    let h = format!("{}/{}/h:1", reg.host(), ct.prefix);
    push(
        &h,
        "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/true\"]",
    );
    let hc = ct.name("hc");
    run_sleeper(&hc, &h, &[]);
    push(
        &h,
        "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/false\"]",
    );
    docker(&["rmi", &h]);

    let cfg = config(&broker, &base, dir.path(), &ct.prefix, "");
    let cfg = cfg.replace("verify_for = \"2s\"", "verify_for = \"5s\"");
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    for n in [&web, &hc] {
        c.wait_state(&format!("{base}/local/{n}/state"), T, |s| {
            s["running"] == true
        })
        .await;
    }
    let r = command(
        &c,
        &format!("{base}/local/{web}/set"),
        r#"{"action":"update","request_id":"p"}"#,
        "p",
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let progress: Vec<u64> = c
        .on(&format!("{base}/local/{web}/update"))
        .iter()
        .filter(|m| m.json()["in_progress"] == true)
        .filter_map(|m| m.json()["progress"].as_u64())
        .collect();
    assert!(progress.len() >= 2, "progress seen moving: {progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "monotonic: {progress:?}"
    );
    assert!(progress.iter().all(|p| *p <= 100));
    assert!(progress.first() < progress.last(), "{progress:?}");

    // Compose still owns it: every compose label kept, the image label in
    // step with the new image, the service alias on the project network.
    let after = inspect(&web);
    assert_eq!(after["Image"], new_big.as_str());
    let labels = &after["Config"]["Labels"];
    for l in &compose_labels {
        let (k, v) = l.split_once('=').expect("label");
        if k == "com.docker.compose.image" {
            assert_eq!(labels[k], new_big.as_str(), "{labels}");
        } else {
            assert_eq!(labels[k], v, "{labels}");
        }
    }
    let filtered = docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={}", ct.prefix),
        "--filter",
        "label=com.docker.compose.service=web",
        "--format",
        "{{.Names}}",
    ]);
    assert_eq!(filtered.trim(), web, "still found by its project labels");
    let aliases = &after["NetworkSettings"]["Networks"][&net]["Aliases"];
    assert!(
        aliases
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "web")),
        "{aliases}"
    );

    // Unhealthy within verify_for: the old one is restored, `rolled_back`.
    let before = inspect(&hc)["Id"].clone();
    let r = command(
        &c,
        &format!("{base}/local/{hc}/set"),
        r#"{"action":"update","request_id":"h"}"#,
        "h",
    )
    .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "engine_error", "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("unhealthy")),
        "{r}"
    );
    assert_eq!(inspect(&hc)["Id"], before);
    assert_eq!(inspect(&hc)["State"]["Running"], true);
    let h = history_by_the_result(
        &c,
        &format!("{base}/local/{hc}/history"),
        &format!("{base}/local/{hc}/result"),
        "h",
        "rolled_back",
    );
    assert!(
        h[0]["to_image"].is_string() && h[0]["from_image"].is_string(),
        "{h}"
    );
    let hist = history(&c, &format!("{base}/local/{hc}/history"), 1).await;
    assert_eq!(hist[0]["status"], "rolled_back", "{hist}");
    assert!(
        hist[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("unhealthy"))
    );
    ct.cleanup();
    docker_quiet(&["network", "rm", &net]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_in_the_middle_of_an_update_the_history_says_failed() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsuk"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let tag = format!("{}/{}/app:1", reg.host(), ct.prefix);
    push(&tag, "");
    let app = ct.name("app");
    run_sleeper(&app, &tag, &[]);
    let first = inspect(&app)["Id"].clone();
    push(&tag, "");
    docker(&["rmi", &tag]);

    let cfg = config(&broker, &base, dir.path(), &ct.prefix, "")
        .replace("verify_for = \"2s\"", "verify_for = \"60s\"");
    let mut ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    c.wait_state(&format!("{base}/local/{app}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    c.publish(&format!("{base}/local/{app}/set"), b"update", false)
        .await;
    // Killed while the new container is being verified.
    let old_name = format!("{app}.dockside-old");
    let deadline = std::time::Instant::now() + T;
    loop {
        // Between the rename and the create no container has the name:
        // inspect it only once `ps` lists both.
        let names = docker(&["ps", "-a", "--format", "{{.Names}}"]);
        let listed = |name: &str| names.lines().any(|n| n == name);
        if listed(&old_name) && listed(&app) && inspect(&app)["Id"] != first {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "update never got to the swap"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ds.kill();
    c.clear();
    ds.spawn();
    let h = history(&c, &format!("{base}/local/{app}/history"), 1).await;
    assert_eq!(h[0]["status"], "failed", "{h}");
    assert!(
        h[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("stopped before")),
        "{h}"
    );
    // The container is under its name, running.
    assert_eq!(inspect(&app)["State"]["Running"], true);
    c.wait_state(&format!("{base}/local/{app}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    docker_quiet(&["rm", "-f", &old_name]);
    ct.cleanup();
}
