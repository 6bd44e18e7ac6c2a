//! The `update` command (SPEC §5, §6) against the real engine and a real
//! registry: pull + recreate keeps the container's configuration, a new image
//! that does not start puts the old container back, a current image changes
//! nothing, and the swap never shows on MQTT.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// Builds an image (with an ENV of its own, FROM the test busybox) tagged `tag`, pushes it.
fn push_image(tag: &str, extra: &str) -> String {
    let id = build_image_with(
        tag,
        &format!("ENV FROM_IMAGE={}\n{extra}", fastrand::u32(..)),
    );
    docker(&["push", tag]);
    id
}

fn inspect(name: &str) -> Value {
    let out = docker(&["inspect", name]);
    let v: Value = serde_json::from_str(&out).expect("inspect json");
    v[0].clone()
}

async fn update(c: &Collector, base: &str, ct: &str, rid: &str) -> Value {
    let payload = format!(r#"{{"action":"update","request_id":"{rid}"}}"#);
    c.command(&format!("{base}/local/{ct}/set"), &payload, rid, T)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_recreates_with_the_same_configuration_or_restores() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsup"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let tag = format!("{}/dsup/app:1", reg.host());
    let first = push_image(&tag, "");

    let net = format!("{}-net", ct.prefix);
    docker(&["network", "create", &net]);
    let vol = format!("{}-vol", ct.prefix);
    let app = ct.name("app");
    let volume = format!("{vol}:/data");
    run_sleeper(
        &app,
        &tag,
        &[
            "--network",
            &net,
            "--network-alias",
            "web",
            "-e",
            "MODE=prod",
            "--label",
            "com.example.mine=x",
            "--restart",
            "unless-stopped",
            "-v",
            &volume,
            "-p",
            "127.0.0.1::8080",
        ],
    );
    docker(&["exec", &app, "sh", "-c", "echo kept > /data/file"]);
    let before = inspect(&app);

    let config = format!(
        "{}\n[commands]\nallow = [\"start\",\"stop\",\"update\"]\nmin_interval = \"1s\"\n[updates]\nverify_for = \"3s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let _ds = Dockside::start(dir.path(), &config);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let state = format!("{base}/local/{app}/state");
    c.wait_state(&state, T, |s| s["running"] == true).await;

    // Current image: nothing is recreated.
    let r = update(&c, &base, &app, "u0").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(inspect(&app)["Id"], before["Id"]);

    // A newer image under the same tag: recreated with everything the user set.
    let second = push_image(&tag, "");
    docker(&["rmi", &tag]); // the engine must pull it
    tokio::time::sleep(Duration::from_millis(1100)).await; // commands.min_interval
    let r = update(&c, &base, &app, "u1").await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["state"], "running", "{r}");
    let after = inspect(&app);
    assert_ne!(after["Id"], before["Id"], "recreated");
    assert_eq!(after["Image"].as_str(), Some(second.as_str()));
    assert_ne!(after["Image"].as_str(), Some(first.as_str()));
    assert_eq!(after["State"]["Running"], true);
    let env: Vec<&str> = after["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(env.contains(&"MODE=prod"), "{env:?}");
    // The new image's own ENV applies, not the old image's.
    let old_from_image = before["Config"]["Env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(Value::as_str)
        .find(|e| e.starts_with("FROM_IMAGE="))
        .expect("image env");
    assert!(!env.contains(&old_from_image), "{env:?}");
    assert_eq!(after["Config"]["Labels"]["com.example.mine"], "x");
    assert_eq!(after["Config"]["Cmd"], before["Config"]["Cmd"]);
    assert_eq!(
        after["HostConfig"]["RestartPolicy"]["Name"],
        "unless-stopped"
    );
    assert_eq!(
        after["HostConfig"]["PortBindings"],
        before["HostConfig"]["PortBindings"]
    );
    let aliases = &after["NetworkSettings"]["Networks"][&net]["Aliases"];
    assert!(
        aliases
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "web")),
        "{aliases}"
    );
    assert_eq!(docker(&["exec", &app, "cat", "/data/file"]), "kept");
    assert!(
        docker(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .all(|n| !n.contains(".dockside-old")),
        "old container removed"
    );
    c.wait_state(&state, T, |s| {
        s["id"] == after["Id"] && s["running"] == true
    })
    .await;

    // The image watcher showed the update running, then the new image current.
    let upd = format!("{base}/local/{app}/update");
    c.wait_latest(&upd, T, |m| {
        let j = m.json();
        j["status"] == "up_to_date"
            && j["in_progress"] == false
            && j["installed_version"].is_string()
    })
    .await;
    assert!(
        c.on(&upd).iter().any(|m| m.json()["in_progress"] == true),
        "in_progress shown during the update"
    );

    // A new image that cannot start: the old container comes back, running.
    push_image(&tag, "ENTRYPOINT [\"/bin/false\"]");
    docker(&["rmi", &tag]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = update(&c, &base, &app, "u2").await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "engine_error", "{r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains("restored")),
        "{r}"
    );
    let back = inspect(&app);
    assert_eq!(back["Id"], after["Id"], "the previous container is back");
    assert_eq!(back["State"]["Running"], true);
    assert_eq!(back["Name"], format!("/{app}"));
    let names = docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert_eq!(
        names.lines().filter(|n| n.starts_with(&app)).count(),
        1,
        "{names}"
    );
    c.wait_state(&state, T, |s| {
        s["id"] == after["Id"] && s["running"] == true
    })
    .await;

    // The swap never showed on MQTT: no topic of a temporary name, and the
    // container's topics were never cleared.
    let all = c.all();
    assert!(all.iter().all(|m| !m.topic.contains("dockside-old")));
    assert!(
        all.iter()
            .filter(|m| m.topic == state)
            .all(|m| !m.payload.is_empty()),
        "state never cleared during the swap"
    );
    docker_quiet(&["rm", "-f", &app]);
    docker_quiet(&["network", "rm", &net]);
    docker_quiet(&["volume", "rm", &vol]);
}
