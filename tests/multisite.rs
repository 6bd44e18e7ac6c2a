//! Many sites into one central broker through Mosquitto's own bridge
//! (README "Many sites"): a site's dockside publishes to its local
//! Mosquitto, which bridges `<base>/#` both ways and `homeassistant/#` out to
//! a central Mosquitto. States, discovery and availability arrive centrally
//! with retain kept, a command published centrally reaches the container and
//! its result comes back, and a central restart heals by itself.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn bridge_conf(central: u16, base: &str) -> String {
    format!(
        "connection central\naddress 127.0.0.1:{central}\nremote_clientid bridge-{base}\ntopic {base}/# both 1\ntopic homeassistant/# out 1\ntopic homeassistant/status in 1\ncleansession true\nrestart_timeout 1 5\n"
    )
}

async fn retained_has(port: u16, filter: &str, topic: &str, want: impl Fn(&[u8]) -> bool) {
    let deadline = std::time::Instant::now() + T;
    loop {
        let snap = retained_snapshot(port, filter).await;
        if snap.get(topic).is_some_and(|p| want(p)) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not retained at the central broker: {:?}",
            snap.keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_through_a_mosquitto_bridge_into_a_central_broker() {
    let mut central = Broker::start();
    let base = unique("site");
    let site = Broker::start_with(&bridge_conf(central.port, &base));
    let ct = Containers::new(&unique("dsm"));
    let dir = tempfile::tempdir().expect("tmp");
    let web = ct.name("web");
    run_sleeper(&web, IMAGE, &[]);
    let config = format!(
        "{}\n[commands]\nallow = [\"start\",\"stop\",\"restart\"]\nmin_interval = \"0s\"\n",
        base_config(&site, &base, &dir.path().join("state"), &ct.prefix)
    );
    let _ds = Dockside::start(dir.path(), &config);

    // At the central broker, retained: state, availability, discovery.
    let state = format!("{base}/local/{web}/state");
    let is_running = |p: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(p).is_ok_and(|v| v["running"] == true)
    };
    retained_has(central.port, "#", &state, is_running).await;
    retained_has(central.port, "#", &format!("{base}/status"), |p| {
        p == b"online"
    })
    .await;
    retained_has(central.port, "#", &format!("{base}/local/status"), |p| {
        p == b"online"
    })
    .await;
    let device = format!(
        "homeassistant/device/{base}_local_{}/config",
        web.replace('-', "_")
    );
    let snap = retained_snapshot(central.port, "homeassistant/#").await;
    assert!(
        snap.keys()
            .any(|k| k.starts_with(&format!("homeassistant/device/{base}_local"))),
        "discovery at the central broker (want like {device}): {:?}",
        snap.keys().collect::<Vec<_>>()
    );

    // A command published centrally: done at the site, its result back centrally.
    let c = Collector::start(central.port, &format!("{base}/#")).await;
    let set = format!("{base}/local/{web}/set");
    let r = c
        .command(
            &set,
            r#"{"action":"restart","request_id":"central-1"}"#,
            "central-1",
            T,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");

    // The central broker restarts (its retained store gone): the bridge
    // reconnects and the site's retained topics are there again.
    central.restart();
    retained_has(central.port, "#", &state, is_running).await;
    retained_has(central.port, "#", &format!("{base}/status"), |p| {
        p == b"online"
    })
    .await;
    // And commands flow again.
    let c = Collector::start(central.port, &format!("{base}/#")).await;
    let set = format!("{base}/local/{web}/set");
    let r = c
        .command(
            &set,
            r#"{"action":"stop","request_id":"central-2"}"#,
            "central-2",
            T,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    retained_has(central.port, "#", &state, |p| !is_running(p)).await;
}
