//! dockside under a real systemd as PID 1 (SPEC §11), installed from the
//! repository's own unit: `systemctl start` returns once the states are on
//! the broker; `systemctl reload` applies a changed filter; a hung dockside
//! is killed and restarted by the watchdog; `systemctl stop` leaves
//! `offline` and exits 0; a bad config exits 64 and is not restarted; the
//! state directory survives restarts (an event missed while stopped is
//! delivered once). The systemd root comes from scripts/systemd-image.sh.

mod common;

use std::time::{Duration, Instant};

use common::machine::Machine;
use common::*;

const T: Duration = Duration::from_secs(60);
fn config(broker: &Broker, base: &str, include: &str) -> String {
    format!(
        "[mqtt]\nurl = \"{}\"\nbase_topic = \"{base}\"\n[containers]\ninclude = [{include}]\nremoval_grace = \"2s\"\n[homeassistant]\nenabled = false\n",
        broker.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_real_systemd() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dssu"));
    let (a, b) = (ct.name("a"), ct.name("b"));
    run_sleeper(&a, IMAGE, &[]);
    run_sleeper(&b, IMAGE, &[]);
    let base = unique("t");
    let m = Machine::start();

    // Installed as the README says, from the repository's files.
    m.install_binary(env!("CARGO_BIN_EXE_dockside"));
    let unit =
        std::fs::read_to_string(project_dir().join("systemd/dockside.service")).expect("unit");
    m.write("/etc/systemd/system/dockside.service", &unit);
    // The test only: a short watchdog, so the hang below is caught quickly.
    m.write(
        "/etc/systemd/system/dockside.service.d/test.conf",
        "[Service]\nWatchdogSec=3\n",
    );
    // Keeps the unit loaded after a clean stop (to read how it exited).
    m.write(
        "/etc/systemd/system/hold.target",
        "[Unit]\nWants=dockside.service\n",
    );
    let gid = std::fs::metadata("/var/run/docker.sock").map(|md| {
        use std::os::unix::fs::MetadataExt;
        md.gid()
    });
    let gid = gid.expect("socket").to_string();
    m.exec(&["groupadd", "-g", &gid, "docker"]);
    m.write(
        "/etc/dockside/dockside.toml",
        &config(&broker, &base, &format!("\"{a}\"")),
    );
    m.exec(&["systemctl", "daemon-reload"]);
    m.exec(&["systemctl", "start", "hold.target"]);

    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let (ok, out) = m.exec(&["systemctl", "restart", "dockside"]);
    assert!(ok, "systemctl start: {out}\n{}", m.journal());
    // Returned only after READY: the state is on the broker already.
    let snap = retained_snapshot(broker.port, &format!("{base}/#")).await;
    assert!(
        snap.contains_key(&format!("{base}/local/{a}/state")),
        "state not there at READY: {:?}",
        snap.keys().collect::<Vec<_>>()
    );
    assert_eq!(m.show("ActiveState"), "active");
    // SPEC §16: each line carries its priority (`journalctl -p warning`
    // shows the warnings only) and no colour codes (journald would keep
    // such a line as a blob).
    let warnings = m.exec_out(&[
        "journalctl",
        "-u",
        "dockside",
        "-p",
        "warning",
        "--no-pager",
        "-o",
        "cat",
    ]);
    assert!(warnings.contains("anonymous MQTT"), "{warnings}");
    assert!(
        !warnings.contains("dockside starting"),
        "info shown as a warning: {warnings}"
    );
    let all = m.exec_out(&["journalctl", "-u", "dockside", "--no-pager", "-o", "cat"]);
    assert!(all.contains("dockside starting"), "{all}");
    assert!(
        !all.contains("blob data") && !all.contains('\u{1b}'),
        "{all}"
    );
    // `dockside health` finds the running instance through state.dir.
    let (ok, health) = m.exec(&[
        "/usr/local/bin/dockside",
        "--config",
        "/etc/dockside/dockside.toml",
        "health",
    ]);
    assert!(ok && health.trim() == "ok", "dockside health: {health}");

    // Reload applies a changed filter.
    m.write(
        "/etc/dockside/dockside.toml",
        &config(&broker, &base, &format!("\"{a}\", \"{b}\"")),
    );
    let (ok, out) = m.exec(&["systemctl", "reload", "dockside"]);
    assert!(ok, "reload: {out}");
    c.wait_state(&format!("{base}/local/{b}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    assert_eq!(m.show("ActiveState"), "active");

    // A hung dockside: the watchdog kills it and systemd starts it again.
    let pid = m.show("MainPID");
    m.exec(&["kill", "-STOP", &pid]);
    let deadline = Instant::now() + T;
    loop {
        let now = m.show("MainPID");
        if now != pid && now != "0" && m.show("ActiveState") == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted after a hang (MainPID {now})\n{}",
            m.journal()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(m.journal().contains("Watchdog timeout"), "{}", m.journal());

    // Stop: offline retained, exit 0. A container stops meanwhile...
    let (ok, out) = m.exec(&["systemctl", "stop", "dockside"]);
    assert!(ok, "stop: {out}");
    assert_eq!(m.show("ExecMainStatus"), "0", "{}", m.journal());
    let snap = retained_snapshot(broker.port, &format!("{base}/status")).await;
    assert_eq!(
        snap.get(&format!("{base}/status")).map(|p| &p[..]),
        Some(&b"offline"[..])
    );
    c.clear();
    docker(&["stop", "-t", "0", &a]);
    // ...and its events come once at the next start (the state dir survived).
    m.exec(&["systemctl", "start", "dockside"]);
    let events = format!("{base}/local/events");
    let id = docker(&["inspect", "-f", "{{.Id}}", &a]);
    c.event_once(&events, "die", &id, T).await;

    // A bad config: exit 64, and no restart loop.
    let restarts = m.show("NRestarts");
    m.write("/etc/dockside/dockside.toml", "[mqtt]\nqos = 9\n");
    let (ok, _) = m.exec(&["systemctl", "restart", "dockside"]);
    assert!(!ok, "a bad config must fail the start");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(m.show("ExecMainStatus"), "64", "{}", m.journal());
    assert_eq!(
        m.show("NRestarts"),
        restarts,
        "restarted in a loop\n{}",
        m.journal()
    );
    assert_ne!(m.show("ActiveState"), "active");
}

/// Secrets at rest (SPEC §16), installed as the README says: the config
/// and the broker password file `0640 root:docker` (the service joins the
/// socket's group; nobody else reads them). dockside logs in to a Mosquitto
/// that demands that password, and the password reaches neither the journal
/// nor `check-config`. The shipped `LoadCredential=` drop-in is then
/// installed and systemd must accept it as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_at_rest_under_systemd() {
    const PASSWORD: &str = "s3cret-credential-7f1c";
    let dir = tempfile::tempdir().expect("tmp");
    let passwd = dir.path().join("passwd");
    let ok = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["dockside", PASSWORD])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mosquitto_passwd is missing: run scripts/test-env.sh");
    let broker = Broker::start_with(&format!(
        "allow_anonymous false\npassword_file {}",
        passwd.display()
    ));
    let ct = Containers::new(&unique("dscr"));
    let a = ct.name("a");
    run_sleeper(&a, IMAGE, &[]);
    let base = unique("t");
    let m = Machine::start();
    m.install_binary(env!("CARGO_BIN_EXE_dockside"));
    let file = |p: &str| std::fs::read_to_string(project_dir().join(p)).expect("repository file");
    m.write(
        "/etc/systemd/system/dockside.service",
        &file("systemd/dockside.service"),
    );
    let gid = std::fs::metadata("/var/run/docker.sock").map(|md| {
        use std::os::unix::fs::MetadataExt;
        md.gid()
    });
    m.exec(&[
        "groupadd",
        "-g",
        &gid.expect("socket").to_string(),
        "docker",
    ]);
    m.write(
        "/etc/dockside/dockside.toml",
        &format!(
            "[mqtt]\nurl = \"{}\"\nbase_topic = \"{base}\"\nusername = \"dockside\"\n\
             password_file = \"/etc/dockside/mqtt-password\"\n\
             [containers]\ninclude = [\"{a}\"]\n[homeassistant]\nenabled = false\n",
            broker.url()
        ),
    );
    m.write("/etc/dockside/mqtt-password", &format!("{PASSWORD}\n"));
    for f in ["/etc/dockside/dockside.toml", "/etc/dockside/mqtt-password"] {
        m.exec(&["chgrp", "docker", f]);
        m.exec(&["chmod", "0640", f]);
    }
    m.exec(&["systemctl", "daemon-reload"]);

    let (ok, out) = m.exec(&["systemctl", "start", "dockside"]);
    assert!(ok, "systemctl start: {out}\n{}", m.journal());
    let snap = retained_snapshot_as(
        broker.port,
        &format!("{base}/local/{a}/state"),
        Some(("dockside", PASSWORD)),
    )
    .await;
    assert!(
        snap.contains_key(&format!("{base}/local/{a}/state")),
        "dockside did not log in with the password file\n{}",
        m.journal()
    );
    let modes = m.exec_out(&[
        "stat",
        "-c",
        "%n %a %U:%G",
        "/etc/dockside/dockside.toml",
        "/etc/dockside/mqtt-password",
    ]);
    assert_eq!(
        modes,
        "/etc/dockside/dockside.toml 640 root:docker\n/etc/dockside/mqtt-password 640 root:docker"
    );
    let (ok, check) = m.exec(&[
        "/usr/local/bin/dockside",
        "--config",
        "/etc/dockside/dockside.toml",
        "check-config",
    ]);
    assert!(ok && check.contains("password"), "check-config: {check}");
    let journal = m.exec_out(&["journalctl", "--no-pager", "-o", "cat"]);
    assert!(
        !journal.contains(PASSWORD) && !check.contains(PASSWORD),
        "the password leaked"
    );

    // The credentials drop-in, as shipped: systemd takes it as written.
    m.write(
        "/etc/systemd/system/dockside.service.d/credentials.conf",
        &file("systemd/credentials.conf"),
    );
    m.exec(&["systemctl", "daemon-reload"]);
    assert!(
        m.show("DropInPaths").contains("credentials.conf"),
        "{}",
        m.show("DropInPaths")
    );
    let cat = m.exec_out(&["systemctl", "cat", "dockside"]);
    assert!(
        cat.contains("\nLoadCredential=mqtt-password:/etc/dockside/mqtt-password"),
        "{cat}"
    );
    let (ok, verify) = m.exec(&[
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/dockside.service",
    ]);
    assert!(
        ok && !verify.contains("credentials.conf"),
        "systemd-analyze verify: {verify}"
    );
}
