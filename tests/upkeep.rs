//! Endpoint upkeep (SPEC §13) on the real engine: `services` and `disk` in
//! `<ep>/info`, and `prune` reclaiming a dangling image, refused unless
//! allowed. Every prune here is limited to a label of this test's own, so it
//! never removes anything it did not make (the engine is shared).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_has_services_and_disk_and_prune_reclaims_a_dangling_image() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dsk"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let label = format!("dockside.test.prune={}", ct.prefix);
    // The same tag built twice: the first image is left dangling.
    let tag = format!("{}-img:1", ct.prefix);
    // A layer of its own (64 KiB), so pruning it frees bytes.
    let extra = format!("LABEL {label}\nRUN dd if=/dev/zero of=/blob bs=1k count=64");
    let first = build_image_with(&tag, &extra);
    build_image_with(&tag, &extra);
    assert!(docker(&["image", "inspect", "-f", "{{.RepoTags}}", &first]).contains("[]"));
    let cfg = base_config(&broker, &base, &dir.path().join("state"), &ct.prefix);
    let allowing =
        format!("{cfg}\n[commands]\nallow = [\"start\", \"stop\", \"restart\", \"prune\"]\n");
    let c = Collector::start(broker.port, &format!("{base}/#")).await;

    // Not allowed by default.
    let d = Dockside::start(dir.path(), &cfg);
    c.wait_latest(&format!("{base}/status"), T, |m| m.text() == "online")
        .await;
    let ask = |id: &str| {
        format!(
            r#"{{"action":"prune","what":["images","containers"],"label":"{label}","request_id":"{id}"}}"#
        )
    };
    let result = format!("{base}/local/result");
    c.publish(&format!("{base}/local/set"), ask("no").as_bytes(), false)
        .await;
    let r = c
        .wait_latest(&result, T, |m| m.json()["request_id"] == "no")
        .await
        .json();
    assert_eq!(r["code"], "forbidden", "{r}");
    drop(d);
    docker(&["image", "inspect", &first]);

    let _d = Dockside::start(dir.path(), &allowing);
    let info: Value = c
        .wait_latest(&format!("{base}/local/info"), T, |m| {
            m.json()["disk"].is_object()
        })
        .await
        .json();
    assert_eq!(info["services"], 0, "no swarm manager: {info}");
    let disk = &info["disk"];
    assert!(
        disk["images_bytes"].as_i64().is_some_and(|b| b > 0),
        "{info}"
    );
    assert!(
        disk["reclaimable_bytes"].as_i64().is_some_and(|b| b >= 0),
        "{info}"
    );
    assert!(disk["at"].is_string());
    for k in ["containers_bytes", "volumes_bytes", "build_cache_bytes"] {
        assert!(disk[k].is_i64(), "{k}: {info}");
    }
    // Bad arguments are refused, nothing removed.
    for (payload, why) in [
        (
            r#"{"action":"prune","what":["everything"],"request_id":"b1"}"#,
            "what",
        ),
        (r#"{"action":"prune","what":[],"request_id":"b2"}"#, "what"),
        (
            r#"{"action":"prune","label":"","request_id":"b3"}"#,
            "label",
        ),
    ] {
        c.publish(&format!("{base}/local/set"), payload.as_bytes(), false)
            .await;
        let id = serde_json::from_str::<Value>(payload).expect("json")["request_id"]
            .as_str()
            .expect("id")
            .to_string();
        let r = c
            .wait_latest(&result, T, |m| m.json()["request_id"] == id.as_str())
            .await
            .json();
        assert_eq!(r["code"], "invalid", "{r}");
        assert!(r["error"].as_str().is_some_and(|e| e.contains(why)), "{r}");
    }
    docker(&["image", "inspect", &first]);

    c.publish(&format!("{base}/local/set"), ask("yes").as_bytes(), false)
        .await;
    let r = c
        .wait_latest(&result, T, |m| m.json()["request_id"] == "yes")
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["reclaimed_bytes"].as_i64().is_some_and(|b| b > 0), "{r}");
    let gone = std::process::Command::new("docker")
        .args(["image", "inspect", &first])
        .output()
        .expect("docker");
    assert!(!gone.status.success(), "the dangling image was pruned");
    // The tagged one stays, and the summary is read again after a prune.
    docker(&["image", "inspect", &tag]);
    let at = disk["at"].clone();
    c.wait_latest(&format!("{base}/local/info"), T, |m| {
        m.json()["disk"]["at"] != at
    })
    .await;
    docker_quiet(&["rmi", &tag]);
}
