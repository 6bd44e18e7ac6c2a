//! Endpoint upkeep (SPEC §13) on the real engine: `services` and `disk` in
//! `<ep>/info`, and `prune` reclaiming a dangling image, refused unless
//! allowed. Every prune here is limited to a label of this test's own, so it
//! never removes anything it did not make (the engine is shared).

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

/// The two tests here take turns, so that neither's prune can touch what the
/// other is in the middle of checking. Each prunes only under its own label.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_has_services_and_disk_and_prune_reclaims_a_dangling_image() {
    let _turn = TURN.lock().await;
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
    // The engine's own figure: Docker 20.10 often says 0 B for a dangling
    // image whose layers it removes (`docker image prune` shows the same),
    // so what is checked is that the image is gone.
    assert!(r["reclaimed_bytes"].as_i64().is_some_and(|b| b >= 0), "{r}");
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

/// SPEC §16: `prune` under the one command policy. Of this test's stopped
/// containers (all carrying its label) only the plain mirrored one goes: not
/// a protected one, not one labelled `dockside.commands=false`, not one the
/// filters leave out, not an update's `.dockside-old` backup. Volumes: the
/// anonymous one goes, a named one only with `all_volumes` (Docker 20.10's
/// own prune would take both). `logs` is refused for a protected container
/// and for the label `dockside.logs=false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_logs_obey_the_command_policy() {
    let _turn = TURN.lock().await;
    let broker = Broker::start();
    let ct = Containers::new(&unique("dsq"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let label = format!("dockside.test.prune={}", ct.prefix);
    let stopped = |name: &str, extra: &[&str]| {
        let mut args = vec!["create", "--name", name, "--label", &label];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "true"]);
        docker(&args);
    };
    let (free, prot, nocmd) = (ct.name("free"), ct.name("prot"), ct.name("nocmd"));
    let outside = format!("other-{}", ct.prefix);
    let backup = format!("{}.dockside-old", ct.name("web"));
    stopped(&free, &[]);
    stopped(&prot, &[]);
    stopped(&nocmd, &["--label", "dockside.commands=false"]);
    stopped(&outside, &[]);
    stopped(&backup, &[]);
    // The updated container that backup belongs to (else dockside restores the name).
    run_sleeper(&ct.name("web"), IMAGE, &[]);
    let nologs = ct.name("nologs");
    run_sleeper(&nologs, IMAGE, &["--label", "dockside.logs=false"]);
    let named = format!("{}-named", ct.prefix);
    docker(&["volume", "create", "--label", &label, &named]);
    let anonymous = docker(&["volume", "create", "--label", &label]);
    let cfg = format!(
        "{}\n[commands]\nallow = [\"prune\", \"logs\"]\nprotect = [\"{prot}\"]\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(dir.path(), &cfg);
    c.wait_state(&format!("{base}/local/{nologs}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    c.wait_state(&format!("{base}/local/{free}/state"), T, |_| true)
        .await;

    let set = format!("{base}/local/set");
    let prune = |id: &str, all: bool| {
        format!(
            r#"{{"action":"prune","what":["containers","volumes"],"label":"{label}","all_volumes":{all},"request_id":"{id}"}}"#
        )
    };
    let r = c.command(&set, &prune("p1", false), "p1", T).await;
    assert_eq!(r["ok"], true, "{r}");
    let exists = |what: &str, name: &str| {
        std::process::Command::new("docker")
            .args([what, "inspect", name])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        !exists("container", &free),
        "the plain stopped one is pruned"
    );
    for kept in [&prot, &nocmd, &outside, &backup] {
        assert!(exists("container", kept), "{kept} must stay");
    }
    assert!(
        !exists("volume", &anonymous),
        "the anonymous volume is pruned"
    );
    assert!(
        exists("volume", &named),
        "a named volume stays without all_volumes"
    );
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await; // one prune per 5 s
    let r = c.command(&set, &prune("p2", true), "p2", T).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        !exists("volume", &named),
        "all_volumes takes named ones too"
    );
    for kept in [&prot, &nocmd, &outside, &backup] {
        assert!(exists("container", kept), "{kept} must stay");
    }

    for (n, why) in [(&prot, "protected"), (&nologs, "dockside.logs=false")] {
        let r = c
            .command(
                &format!("{base}/local/{n}/set"),
                r#"{"action":"logs","request_id":"l"}"#,
                "l",
                T,
            )
            .await;
        assert_eq!(r["code"], "forbidden", "{r}");
        assert!(r["error"].as_str().is_some_and(|e| e.contains(why)), "{r}");
        assert!(r.get("logs").is_none(), "{r}");
    }
    for n in [&outside, &backup] {
        docker_quiet(&["rm", "-f", n]);
    }
    docker_quiet(&["volume", "rm", &named]);
}
