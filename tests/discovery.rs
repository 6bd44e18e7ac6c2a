//! Discovery lifecycle on the broker (no Home Assistant needed): leftovers of
//! this base cleared at start and nobody else's, `enabled = false` clearing
//! what was published, HA's birth message answered, a broker restarted with
//! an empty store getting every config back. What HA makes of the configs is
//! `tests/homeassistant.rs`.

mod common;

use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn device(base: &str, ct: &str) -> String {
    format!("homeassistant/device/{base}_local_{ct}/config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_birth_broker_restart_and_switching_off() {
    require_docker();
    let mut broker = Broker::start();
    let ct = Containers::new(&unique("dsd"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let (a, b) = (ct.name("a"), ct.name("b"));
    for n in [&a, &b] {
        docker(&["run", "-d", "--name", n, IMAGE]);
    }
    let config = base_config(&broker, &base, &dir.path().join("state"), &ct.prefix);
    let c = Collector::start(broker.port, "homeassistant/#").await;
    // Configs that are not ours: another base's, and another integration's.
    let foreign = [
        (
            format!("homeassistant/device/other_local_{a}/config"),
            format!(
                r#"{{"device":{{"identifiers":["x"]}},"origin":{{"name":"dockside"}},"components":{{"r":{{"platform":"sensor","unique_id":"x","state_topic":"other/local/{a}/state"}}}}}}"#
            ),
        ),
        (
            format!("homeassistant/sensor/{base}_local_{a}_zigbee/config"),
            format!(
                r#"{{"name":"z","origin":{{"name":"zigbee2mqtt"}},"state_topic":"{base}/local/{a}/state"}}"#
            ),
        ),
    ];
    for (t, p) in &foreign {
        c.publish(t, p.as_bytes(), true).await;
    }

    let mut ds = Dockside::start(dir.path(), &config);
    for n in [&a, &b] {
        c.wait_latest(&device(&base, n), T, |m| !m.payload.is_empty())
            .await;
    }
    let bridge = format!("homeassistant/device/{base}/config");
    let endpoint = format!("homeassistant/device/{base}_local/config");
    for t in [&bridge, &endpoint] {
        c.wait_latest(t, T, |m| !m.payload.is_empty()).await;
    }

    // HA announces itself: everything is sent again within 0–5 s.
    c.clear();
    c.publish("homeassistant/status", b"online", false).await;
    c.wait_until(
        "discovery re-sent after HA's birth",
        Duration::from_secs(10),
        |all| {
            [&bridge, &endpoint, &device(&base, &a), &device(&base, &b)]
                .iter()
                .all(|t| all.iter().any(|m| &&m.topic == t && !m.payload.is_empty()))
        },
    )
    .await;

    // The broker restarts with an empty store: every config comes back.
    broker.restart();
    let snap_empty = retained_snapshot(broker.port, "homeassistant/#").await;
    assert!(
        !snap_empty.contains_key(&foreign[0].0),
        "the store is empty"
    );
    let c = Collector::start(broker.port, "homeassistant/#").await;
    for t in [&bridge, &endpoint, &device(&base, &a), &device(&base, &b)] {
        c.wait_latest(t, T, |m| !m.payload.is_empty()).await;
    }
    for (t, p) in &foreign {
        c.publish(t, p.as_bytes(), true).await;
    }

    // Container removed while dockside is down: its config is cleared at the
    // next start; the live one's stays; nobody else's is touched.
    ds.stop();
    docker(&["rm", "-f", &b]);
    ds.spawn();
    c.wait_latest(&device(&base, &b), T, |m| m.payload.is_empty())
        .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let snap = retained_snapshot(broker.port, "homeassistant/#").await;
    assert!(snap.contains_key(&device(&base, &a)));
    assert!(!snap.contains_key(&device(&base, &b)));
    for (t, _) in &foreign {
        assert!(snap.contains_key(t), "{t} must not be touched");
    }
    // The gone container's state topics went too, after its config.
    let state_b = format!("{base}/local/{b}/state");
    let snap_base = retained_snapshot(broker.port, &format!("{base}/#")).await;
    assert!(!snap_base.contains_key(&state_b));

    // Discovery switched off: every config of this base is cleared, states stay.
    ds.stop();
    ds.rewrite_config(&format!("{config}\n[homeassistant]\nenabled = false\n"));
    ds.spawn();
    for t in [&bridge, &endpoint, &device(&base, &a)] {
        c.wait_latest(t, T, |m| m.payload.is_empty()).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let snap = retained_snapshot(broker.port, "homeassistant/#").await;
    let ours: Vec<&String> = snap
        .keys()
        .filter(|t| !foreign.iter().any(|(f, _)| f == *t))
        .collect();
    assert!(ours.is_empty(), "left: {ours:?}");
    for (t, _) in &foreign {
        assert!(snap.contains_key(t), "{t} must not be touched");
    }
    let snap_base = retained_snapshot(broker.port, &format!("{base}/#")).await;
    assert!(snap_base.contains_key(&format!("{base}/local/{a}/state")));
    assert!(ds.is_running());
}
