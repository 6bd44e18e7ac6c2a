//! The image (`Dockerfile`, built here by scripts/build-image.sh as
//! dockside:local) run as a sidecar on the local engine (SPEC §11): states
//! published with the socket mounted, its HEALTHCHECK healthy and then
//! unhealthy without the broker, a non-root user holding only the socket's
//! group, a read-only root with a volume for the state, `docker stop` →
//! `offline` within 2 s, its own container protected, the cursor resumed
//! after a restart. And dockside behind a read-only socket proxy (HAProxy
//! allowing GET only): everything mirrored, every command refused clearly.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);
const SIDECAR_IMAGE: &str = "dockside:local";

fn health(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Health.Status}}", name])
}

async fn wait_health(name: &str, want: &str) {
    let deadline = Instant::now() + T;
    loop {
        let h = health(name);
        if h == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} health is {h}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_as_a_sidecar() {
    let ok = Command::new("docker")
        .args(["image", "inspect", SIDECAR_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{SIDECAR_IMAGE} is missing: run scripts/build-image.sh (scripts/test.sh does)"
    );
    let size: u64 = docker(&["image", "inspect", "-f", "{{.Size}}", SIDECAR_IMAGE])
        .parse()
        .expect("size");
    assert!(size <= 15 << 20, "image is {size} bytes");
    let mut broker = Broker::start();
    let ct = Containers::new(&unique("dssc"));
    let app = ct.name("app");
    run_sleeper(&app, IMAGE, &[]);
    let me = ct.name("dockside");
    let vol = format!("{}-state", ct.prefix);
    let base = unique("t");
    let gid = std::fs::metadata("/var/run/docker.sock")
        .expect("socket")
        .gid()
        .to_string();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &me,
            "--network",
            "host",
            "--read-only",
            "--health-interval",
            "1s",
            "--health-start-period",
            "0s",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "--group-add",
            &gid,
        ];
        args.extend_from_slice(extra);
        args.push(SIDECAR_IMAGE);
        docker(&args)
    };
    let url = format!("DOCKSIDE__MQTT__URL={}", broker.url());
    let topic = format!("DOCKSIDE__MQTT__BASE_TOPIC={base}");
    // The README's compose file mounts the config, 0640 and of the socket's
    // group (it may hold passwords): the container's user reads it through
    // that group. The filter comes from it, so a state proves it was read.
    let cfg_dir = tempfile::tempdir().expect("tmp");
    let cfg = cfg_dir.path().join("dockside.toml");
    std::fs::write(
        &cfg,
        format!("[containers]\ninclude = [\"{}-*\"]\n", ct.prefix),
    )
    .expect("config");
    {
        use std::os::unix::fs::PermissionsExt;
        std::os::unix::fs::chown(&cfg, Some(0), gid.parse().ok()).expect("chown");
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        std::fs::set_permissions(cfg_dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let include = format!("{}:/etc/dockside/dockside.toml:ro", cfg.display());
    let volume = format!("{vol}:/var/lib/dockside");
    let env = [
        "-e",
        url.as_str(),
        "-e",
        topic.as_str(),
        "-v",
        include.as_str(),
        "-e",
        "DOCKSIDE__COMMANDS__ALLOW=start,stop,restart,update",
        "-e",
        "DOCKSIDE__COMMANDS__MIN_INTERVAL=0s",
        "-v",
        volume.as_str(),
    ];
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    run(&env);
    c.wait_state(&format!("{base}/local/{app}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    wait_health(&me, "healthy").await;

    // Non-root, with only its own group and the socket's.
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &me]);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert!(
        field("Uid:").iter().all(|u| u == "10001"),
        "{:?}",
        field("Uid:")
    );
    let mut groups = field("Groups:");
    groups.sort();
    let mut want = vec!["10001".to_string(), gid.clone()];
    want.sort();
    assert_eq!(groups, want, "supplementary groups");
    assert_eq!(field("CapEff:"), vec!["0000000000000000".to_string()]);

    // It never stops or recreates its own container.
    for word in ["stop", "update"] {
        let payload = format!(r#"{{"action":"{word}","request_id":"self-{word}"}}"#);
        c.publish(&format!("{base}/local/{me}/set"), payload.as_bytes(), false)
            .await;
        let r = c
            .wait_latest(&format!("{base}/local/{me}/result"), T, |m| {
                m.json()["request_id"] == format!("self-{word}").as_str()
            })
            .await
            .json();
        assert_eq!(r["code"], "forbidden", "{r}");
    }
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &me]),
        "true"
    );

    // The broker goes away: unhealthy; back: healthy.
    broker.kill();
    wait_health(&me, "unhealthy").await;
    broker.restart();
    wait_health(&me, "healthy").await;
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    c.wait_latest(&format!("{base}/status"), T, |m| m.text() == "online")
        .await;

    // docker stop: `offline` within 2 s, the process exits 0.
    let t = Instant::now();
    docker(&["stop", "-t", "10", &me]);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(2), "docker stop took {took:?}");
    c.wait_latest(&format!("{base}/status"), Duration::from_secs(2), |m| {
        m.text() == "offline"
    })
    .await;
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &me]), "0");

    // A restart resumes the cursor: what happened meanwhile comes once.
    c.clear();
    docker(&["stop", "-t", "0", &app]);
    docker(&["start", &me]);
    let id = docker(&["inspect", "-f", "{{.Id}}", &app]);
    let events = format!("{base}/local/events");
    c.event_once(&events, "die", &id, T).await;
    c.wait_state(&format!("{base}/local/{app}/state"), T, |s| {
        s["running"] == false
    })
    .await;
    docker_quiet(&["rm", "-f", &me]);
    docker_quiet(&["volume", "rm", &vol]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_read_only_socket_proxy() {
    let broker = Broker::start();
    // Allowing GET and HEAD only.
    let proxy =
        SocketProxy::start("  http-request deny deny_status 403 unless METH_GET || METH_HEAD");
    let ct = Containers::new(&unique("dsrp"));
    let app = ct.name("app");
    run_sleeper(&app, IMAGE, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let config = format!(
        "{}\n{}[commands]\nallow = [\"start\",\"stop\",\"restart\",\"update\"]\nmin_interval = \"0s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix),
        proxy.endpoint_toml()
    );
    let ds = Dockside::start(dir.path(), &config);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let state = format!("{base}/local/{app}/state");
    c.wait_state(&state, T, |s| s["running"] == true).await;
    // The update status comes through GETs too.
    c.wait_latest(&format!("{base}/local/{app}/update"), T, |m| {
        m.json()["status"].is_string()
    })
    .await;
    // Events through the proxy: a stop done by someone else shows.
    docker(&["stop", "-t", "0", &app]);
    c.wait_state(&state, T, |s| s["running"] == false).await;
    let events = format!("{base}/local/events");
    c.wait_until("die event", T, |all| {
        all.iter()
            .any(|m| m.topic == events && m.json()["action"] == "die")
    })
    .await;
    docker(&["start", &app]);
    c.wait_state(&state, T, |s| s["running"] == true).await;

    // Every command: a clear engine_error, nothing else breaks.
    for (i, word) in ["stop", "restart", "update"].iter().enumerate() {
        let rid = format!("ro-{i}");
        let payload = format!(r#"{{"action":"{word}","request_id":"{rid}"}}"#);
        c.publish(
            &format!("{base}/local/{app}/set"),
            payload.as_bytes(),
            false,
        )
        .await;
        let r = c
            .wait_latest(&format!("{base}/local/{app}/result"), T, |m| {
                m.json()["request_id"] == rid.as_str()
            })
            .await
            .json();
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["code"], "engine_error", "{r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &app]),
        "true"
    );
    assert_eq!(
        c.latest(&format!("{base}/local/status")).map(|m| m.text()),
        Some("online".into())
    );
    let log = ds.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// The socket proxy the project ships (config/socket-proxy/haproxy.cfg,
/// SPEC §16): reads and the default words go through; `pause` (not in the
/// default allow list) and a read dockside never makes are refused with 403,
/// which dockside reports as a clear `engine_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_shipped_socket_proxy() {
    let broker = Broker::start();
    let shipped = std::fs::read_to_string(project_dir().join("config/socket-proxy/haproxy.cfg"))
        .expect("config/socket-proxy/haproxy.cfg");
    let port = free_port();
    let cfg = shipped
        .replace("bind 127.0.0.1:2375", &format!("bind 127.0.0.1:{port}"))
        .replace(
            "unix@/var/run/docker.sock",
            &format!("unix@{}", engine_socket()),
        );
    assert_ne!(cfg, shipped);
    let proxy = SocketProxy::start_config(port, &cfg);
    let ct = Containers::new(&unique("dssp"));
    let app = ct.name("app");
    run_sleeper(&app, IMAGE, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let config = format!(
        "{}\n{}[commands]\nallow = [\"start\",\"stop\",\"restart\",\"pause\"]\nmin_interval = \"0s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix),
        proxy.endpoint_toml()
    );
    let _ds = Dockside::start(dir.path(), &config);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let state = format!("{base}/local/{app}/state");
    c.wait_state(&state, T, |s| s["running"] == true).await;
    let set = format!("{base}/local/{app}/set");
    for (i, (word, want)) in [
        ("stop", "exited"),
        ("start", "running"),
        ("restart", "running"),
    ]
    .iter()
    .enumerate()
    {
        let rid = format!("sp{i}");
        let r = c
            .command(
                &set,
                &format!(r#"{{"action":"{word}","request_id":"{rid}"}}"#),
                &rid,
                T,
            )
            .await;
        assert_eq!(r["ok"], true, "{word}: {r}");
        assert_eq!(r["state"], *want, "{r}");
    }
    let r = c
        .command(
            &set,
            r#"{"action":"pause","request_id":"sp-pause"}"#,
            "sp-pause",
            T,
        )
        .await;
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["code"], "engine_error", "{r}");
    assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &app]),
        "running"
    );
    // A read dockside never makes (a container's whole filesystem): refused.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("proxy");
    write!(
        s,
        "GET /containers/{app}/export HTTP/1.0\r\nHost: docker\r\n\r\n"
    )
    .expect("write");
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.0 403") || answer.starts_with("HTTP/1.1 403"),
        "{answer:.100}"
    );
}
