//! The Debian package of the release (SPEC §15), installed into a real
//! systemd as users install it: `dpkg -i` creates the user (in group docker),
//! the config 0640 root:dockside, enables and starts the service, whose
//! embedded broker then carries the states; an upgrade keeps a changed config
//! and restarts the service; `remove` stops it and keeps the config; `purge`
//! removes config, state directory and user. A host without a docker group
//! still installs. The package comes from `scripts/release.sh` (dist/).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::machine::Machine;
use common::*;

const T: Duration = Duration::from_secs(60);

fn deb() -> PathBuf {
    let p = project_dir().join(format!(
        "dist/dockside_{}_amd64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/release.sh (scripts/test.sh does)",
        p.display()
    );
    p
}

/// The same package with a higher version, as the next release would be.
fn next_version_of(deb: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    let tree = dir.join("tree");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("dpkg-deb (Debian's dpkg)");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "dpkg-deb",
        "-R",
        &deb.display().to_string(),
        &tree.display().to_string(),
    ]);
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).expect("control");
    let v = env!("CARGO_PKG_VERSION");
    std::fs::write(
        &control,
        text.replace(&format!("Version: {v}\n"), &format!("Version: {v}+next1\n")),
    )
    .expect("control");
    let out = dir.join("next.deb");
    run(&[
        "dpkg-deb",
        "--root-owner-group",
        "-b",
        &tree.display().to_string(),
        &out.display().to_string(),
    ]);
    out
}

fn copy_in(m: &Machine, local: &std::path::Path, path: &str) {
    docker(&[
        "cp",
        &local.display().to_string(),
        &format!("{}:{path}", m.name),
    ]);
}

/// The engine socket's group inside the machine, named docker.
fn add_docker_group(m: &Machine) {
    use std::os::unix::fs::MetadataExt;
    let gid = std::fs::metadata(engine_socket())
        .expect("engine socket")
        .gid();
    m.exec(&["groupadd", "-g", &gid.to_string(), "docker"]);
}

/// Points the shipped config's embedded broker at a free port of ours (the
/// machine shares the host's network), as an admin's drop-in would.
fn own_port(m: &Machine) -> u16 {
    let port = free_port();
    m.write(
        "/etc/systemd/system/dockside.service.d/port.conf",
        &format!("[Service]\nEnvironment=DOCKSIDE__MQTT__EMBEDDED_LISTEN=127.0.0.1:{port}\n"),
    );
    port
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_installs_upgrades_removes_and_purges_under_systemd() {
    let deb = deb();
    let tmp = tempfile::tempdir().expect("tmp");
    let next = next_version_of(&deb, tmp.path());
    let ct = Containers::new(&unique("dspk"));
    let a = ct.name("a");
    run_sleeper(&a, IMAGE, &[]);
    let m = Machine::start();
    add_docker_group(&m);
    let port = own_port(&m);
    copy_in(&m, &deb, "/var/tmp/dockside.deb");
    copy_in(&m, &next, "/var/tmp/next.deb");

    // Install: user, config, service enabled and started, states on its broker.
    let (ok, out) = m.exec(&["dpkg", "-i", "/var/tmp/dockside.deb"]);
    assert!(ok, "dpkg -i: {out}\n{}", m.journal());
    assert_eq!(
        m.exec_out(&["systemctl", "is-enabled", "dockside"]),
        "enabled"
    );
    assert_eq!(m.show("ActiveState"), "active", "{}", m.journal());
    assert_eq!(
        m.exec_out(&["stat", "-c", "%a %U %G", "/etc/dockside/dockside.toml"]),
        "640 root dockside"
    );
    let groups = m.exec_out(&["id", "-nG", "dockside"]);
    assert!(groups.split(' ').any(|g| g == "docker"), "{groups}");
    let version = m.exec_out(&["/usr/bin/dockside", "--version"]);
    assert!(
        version.starts_with(&format!("dockside {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(
        m.exec_out(&["ls", "/usr/share/man/man1/dockside.1.gz"])
            .ends_with("dockside.1.gz"),
        "man page"
    );
    let c = Collector::start(port, "dockside/#").await;
    c.wait_state(&format!("dockside/local/{a}/state"), T, |s| {
        s["running"] == true
    })
    .await;

    // Upgrade with a changed config: kept, and the service restarted on it.
    let pid = m.show("MainPID");
    let changed = format!(
        "[mqtt]\nembedded = true\nbase_topic = \"dsup\"\n[containers]\ninclude = [\"{a}\"]\n[state]\ndir = \"/var/lib/dockside\"\n"
    );
    m.write("/etc/dockside/dockside.toml", &changed);
    m.exec(&["chmod", "0640", "/etc/dockside/dockside.toml"]);
    let (ok, out) = m.exec(&["dpkg", "-i", "--force-confold", "/var/tmp/next.deb"]);
    assert!(ok, "upgrade: {out}");
    assert_eq!(
        m.exec_out(&["cat", "/etc/dockside/dockside.toml"]),
        changed.trim()
    );
    wait_for("restarted on upgrade", || {
        let now = m.show("MainPID");
        now != pid && now != "0" && m.show("ActiveState") == "active"
    });
    let c2 = Collector::start(port, "dsup/#").await;
    c2.wait_state(&format!("dsup/local/{a}/state"), T, |s| {
        s["running"] == true
    })
    .await;

    // Remove: stopped, binary gone, config and user kept.
    let (ok, out) = m.exec(&["dpkg", "-r", "dockside"]);
    assert!(ok, "remove: {out}");
    assert_ne!(
        m.exec_out(&["systemctl", "is-active", "dockside"]),
        "active"
    );
    assert!(!m.exec(&["test", "-e", "/usr/bin/dockside"]).0);
    assert!(m.exec(&["test", "-f", "/etc/dockside/dockside.toml"]).0);
    assert!(m.exec(&["getent", "passwd", "dockside"]).0);

    // Purge: config, state directory and user gone.
    let (ok, out) = m.exec(&["dpkg", "-P", "dockside"]);
    assert!(ok, "purge: {out}");
    for p in ["/etc/dockside", "/var/lib/dockside"] {
        assert!(!m.exec(&["test", "-e", p]).0, "{p} left after purge");
    }
    let (left, who) = m.exec(&["getent", "passwd", "dockside"]);
    assert!(!left, "user left: {who}\n{out}");
    assert!(!m.exec(&["getent", "group", "dockside"]).0, "group left");
    // What it did not install stays: the docker group.
    assert!(m.exec(&["getent", "group", "docker"]).0);
}

/// No docker group (Docker not installed yet, or its group named otherwise):
/// the install still succeeds and the service runs; the engine is offline
/// until the user is given access (README "Install"). A `dockside` user the
/// admin made beforehand is used, and a purge leaves it: it removes only
/// what the package made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deb_installs_without_a_docker_group_and_purges_only_its_own() {
    let deb = deb();
    let m = Machine::start();
    let port = own_port(&m);
    let (ok, out) = m.exec(&["adduser", "--system", "--group", "dockside"]);
    assert!(ok, "{out}");
    copy_in(&m, &deb, "/var/tmp/dockside.deb");
    let (ok, out) = m.exec(&["dpkg", "-i", "/var/tmp/dockside.deb"]);
    assert!(ok, "dpkg -i: {out}");
    assert_eq!(m.show("ActiveState"), "active", "{}", m.journal());
    assert_eq!(m.exec_out(&["id", "-nG", "dockside"]), "dockside");
    let c = Collector::start(port, "dockside/#").await;
    c.wait_latest("dockside/local/status", T, |m| m.text() == "offline")
        .await;
    let (ok, out) = m.exec(&["dpkg", "-P", "dockside"]);
    assert!(ok, "purge: {out}");
    assert!(
        m.exec(&["getent", "passwd", "dockside"]).0,
        "the admin's user was removed"
    );
    assert!(!m.exec(&["test", "-e", "/etc/dockside"]).0);
}
