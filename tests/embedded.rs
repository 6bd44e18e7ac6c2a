//! The embedded broker (SPEC §12): dockside with nothing but Docker. Plain
//! MQTT clients connected to it see every state, event and discovery config
//! (retained ones too when they subscribe late), commands come in through
//! it, credentials are enforced, it listens on loopback only by default, a
//! port in use is a clear exit 64, and garbage from a client changes nothing.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(30);

fn config(port: u16, base: &str, dir: &std::path::Path, prefix: &str, extra: &str) -> String {
    format!(
        r#"
[mqtt]
embedded = true
embedded_listen = "127.0.0.1:{port}"
base_topic = "{base}"
{extra}
[state]
dir = "{}"
[containers]
include = ["{prefix}-*"]
removal_grace = "1s"
[commands]
allow = ["start", "stop", "restart"]
min_interval = "0s"
[log]
level = "debug"
"#,
        dir.join("state").display()
    )
}

/// `mosquitto_sub` once with these credentials: (exit ok, stderr).
fn sub_once(port: u16, topic: &str, auth: Option<(&str, &str)>) -> (bool, String) {
    sub_once_v(port, topic, auth, "mqttv311")
}

/// The same in MQTT `version` (`mqttv311`, `mqttv5`).
fn sub_once_v(port: u16, topic: &str, auth: Option<(&str, &str)>, version: &str) -> (bool, String) {
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args([
        "-V",
        version,
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-C",
        "1",
        "-W",
        "5",
    ]);
    if let Some((u, p)) = auth {
        cmd.args(["-u", u, "-P", p]);
    }
    let out = cmd
        .output()
        .expect("mosquitto_sub (install mosquitto-clients)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_see_everything_and_commands_come_in() {
    let ct = Containers::new(&unique("dse"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let port = free_port();
    let web = ct.name("web");
    run_sleeper(&web, IMAGE, &[]);
    let _ds = Dockside::start(dir.path(), &config(port, &base, dir.path(), &ct.prefix, ""));
    let c = Collector::start(port, "#").await;
    let state = format!("{base}/local/{web}/state");
    c.wait_state(&state, T, |s| s["running"] == true).await;
    c.wait_latest(&format!("{base}/status"), T, |m| m.text() == "online")
        .await;

    // A late subscriber gets the retained state, availability and discovery.
    let snap = retained_snapshot(port, "#").await;
    assert!(
        snap.contains_key(&state),
        "{:?}",
        snap.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        snap.get(&format!("{base}/status")).map(|b| &b[..]),
        Some(&b"online"[..])
    );
    let device = format!(
        "homeassistant/device/{base}_local_{}/config",
        web.replace('-', "_")
    );
    let dev = snap
        .keys()
        .find(|k| k.starts_with("homeassistant/device/") && k.contains("_local_"));
    assert!(
        dev.is_some(),
        "discovery retained: {:?} (want like {device})",
        snap.keys().collect::<Vec<_>>()
    );
    let (ok, out) = sub_once(port, &state, None);
    assert!(
        ok && out.contains("\"running\":true"),
        "mosquitto_sub: {out}"
    );
    // MQTT 5 clients (Home Assistant 2026.11's default) on the same port.
    let (ok, out) = sub_once_v(port, &state, None, "mqttv5");
    assert!(
        ok && out.contains("\"running\":true"),
        "mosquitto_sub -V mqttv5: {out}"
    );
    let v5_pub = Command::new("mosquitto_pub")
        .args([
            "-V",
            "mqttv5",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
        ])
        .args(["-t", &format!("{base}/local/{web}/set")])
        .args(["-m", r#"{"action":"restart","request_id":"v5"}"#])
        .status()
        .expect("mosquitto_pub");
    assert!(v5_pub.success());
    let r = c
        .wait_latest(&format!("{base}/local/{web}/result"), T, |m| {
            m.json()["request_id"] == "v5"
        })
        .await
        .json();
    assert_eq!(r["ok"], true, "a command from an MQTT 5 client: {r}");
    c.wait_state(&state, T, |s| s["running"] == true).await;

    // A command through the embedded broker: one result, and the events.
    c.publish(
        &format!("{base}/local/{web}/set"),
        br#"{"action":"stop","request_id":"s"}"#,
        false,
    )
    .await;
    let r = c
        .wait_latest(&format!("{base}/local/{web}/result"), T, |m| {
            m.json()["request_id"] == "s"
        })
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    c.wait_state(&state, T, |s| s["running"] == false).await;
    let event = format!("{base}/local/{web}/event");
    c.wait_until("a die event", T, |all| {
        all.iter()
            .any(|m| m.topic == event && m.json()["event_type"] == "die")
    })
    .await;
    assert!(
        c.on(&format!("{base}/local/events"))
            .iter()
            .any(|m| m.json()["action"] == "die"),
        "endpoint events"
    );

    // Garbage, a bogus CONNECT and an oversize packet from a client: the
    // broker drops them; dockside goes on.
    for junk in [
        vec![0xffu8; 64],
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x0a\x00\x00".to_vec(),
        {
            let mut v = vec![0x30u8, 0xff, 0xff, 0xff, 0x7f];
            v.extend(vec![b'x'; 1 << 20]);
            v
        },
    ] {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.write_all(&junk);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.publish(
        &format!("{base}/local/{web}/set"),
        br#"{"action":"start","request_id":"g"}"#,
        false,
    )
    .await;
    let r = c
        .wait_latest(&format!("{base}/local/{web}/result"), T, |m| {
            m.json()["request_id"] == "g"
        })
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    c.wait_state(&state, T, |s| s["running"] == true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_loopback_only_and_port_in_use() {
    let ct = Containers::new(&unique("dsf"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let port = free_port();
    let secret = format!("pw-{}", fastrand::u64(..));
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{secret}\n")).expect("pw");
    let extra = format!(
        "embedded_username = \"ha\"\nembedded_password_file = \"{}\"",
        pw_file.display()
    );
    let ds = Dockside::start(
        dir.path(),
        &config(port, &base, dir.path(), &ct.prefix, &extra),
    );
    let c = Collector::start_as(port, &format!("{base}/#"), Some(("ha", &secret))).await;
    c.wait_latest(&format!("{base}/status"), T, |m| m.text() == "online")
        .await;
    let status = format!("{base}/status");
    let (ok, out) = sub_once(port, &status, Some(("ha", &secret)));
    assert!(ok && out.contains("online"), "right password: {out}");
    for (who, auth) in [
        ("wrong password", Some(("ha", "nope"))),
        ("wrong user", Some(("root", secret.as_str()))),
        ("anonymous", None),
    ] {
        let (ok, out) = sub_once(port, &status, auth);
        assert!(
            !ok && !out.contains("online"),
            "{who} must be refused: {out}"
        );
    }
    // The secret never reaches the log (nor check-config).
    assert!(!ds.log_text().contains(&secret), "secret in the log");
    let check = Command::new(env!("CARGO_BIN_EXE_dockside"))
        .args([
            "--config",
            &dir.path().join("dockside.toml").display().to_string(),
            "check-config",
        ])
        .output()
        .expect("check-config");
    let shown = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && !shown.contains(&secret),
        "{shown}"
    );

    // Loopback only by default: the machine's other addresses do not answer.
    let ips = Command::new("hostname")
        .arg("-I")
        .output()
        .expect("hostname -I");
    let others: Vec<String> = String::from_utf8_lossy(&ips.stdout)
        .split_whitespace()
        .filter(|ip| !ip.starts_with("127.") && *ip != "::1")
        .map(String::from)
        .collect();
    assert!(!others.is_empty(), "this test needs a non-loopback address");
    for ip in &others {
        let addr: std::net::SocketAddr = format!("{ip}:{port}")
            .parse()
            .or_else(|_| format!("[{ip}]:{port}").parse())
            .expect("addr");
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "the embedded broker answers on {addr}"
        );
    }

    // A port already in use: exit 64 at once, naming the key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy = taken.local_addr().expect("addr").port();
    let dir2 = tempfile::tempdir().expect("tmp");
    let path = dir2.path().join("dockside.toml");
    let refused_naming = |cfg: String, key: &str| {
        std::fs::write(&path, cfg).expect("cfg");
        let out = Command::new(env!("CARGO_BIN_EXE_dockside"))
            .args(["--config", &path.display().to_string()])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{err}");
        assert!(err.contains(key), "{err}");
    };
    refused_naming(
        config(busy, &base, dir2.path(), &ct.prefix, ""),
        "mqtt.embedded_listen",
    );

    // SPEC §16: beyond loopback with no credentials: refused at start, naming
    // the key that would allow it; nothing listens.
    let open = free_port();
    refused_naming(
        config(open, &base, dir2.path(), &ct.prefix, "")
            .replace(&format!("127.0.0.1:{open}"), &format!("0.0.0.0:{open}")),
        "mqtt.embedded_allow_anonymous",
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", open)).is_err());
}

/// SPEC §16: a client must send CONNECT within 5 s, and one source address
/// holds at most `embedded_max_connections_per_ip` connections: a host's idle
/// sockets never lock another host (127.0.0.2 here) out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_host_never_lock_out_another() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let base = unique("t");
    let dir = tempfile::tempdir().expect("tmp");
    let ct = Containers::new(&unique("dsip"));
    let _d = Dockside::start(
        dir.path(),
        &config(
            port,
            &base,
            dir.path(),
            &ct.prefix,
            "embedded_max_connections_per_ip = 4",
        ),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = std::time::Instant::now() + T;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "embedded broker not up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut idle = Vec::new();
    let mut refused = None;
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut b = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                refused = Some(idle.len());
                break;
            }
            _ => idle.push(s),
        }
    }
    assert!(
        refused.is_some_and(|n| n <= 4),
        "the 5th socket from one address is refused: {refused:?}"
    );
    // Another host gets in and through MQTT at once.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(([127, 0, 0, 2], 0).into())
        .expect("bind 127.0.0.2");
    let mut other = sock.connect(addr).await.expect("connect from 127.0.0.2");
    let connect = [
        0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 2, b'h', b'a',
    ];
    other.write_all(&connect).await.expect("CONNECT");
    let mut ack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut ack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(ack, [0x20, 2, 0, 0]);
    // The idle ones are dropped once their 5 s to send CONNECT are up.
    let started = std::time::Instant::now();
    let mut s = idle.pop().expect("an idle socket");
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(8), s.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "idle socket still open: {r:?}"
    );
    assert!(
        started.elapsed() <= Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

/// `mosquitto_pub` once: did it succeed?
fn pub_once(port: u16, auth: (&str, &str), topic: &str, msg: &str, qos: u8, retain: bool) -> bool {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-u",
        auth.0,
        "-P",
        auth.1,
        "-t",
        topic,
        "-m",
        msg,
        "-q",
        &qos.to_string(),
    ]);
    if retain {
        cmd.arg("-r");
    }
    cmd.output()
        .expect("mosquitto_pub (install mosquitto-clients)")
        .status
        .success()
}

/// SPEC §16: users and roles. `read` subscribes to everything and publishes
/// only Home Assistant's birth topic; `control` also the command topics;
/// nobody but dockside publishes a state or a discovery config of its own,
/// retained or not. A refused QoS 0 publish is dropped; a refused QoS 1 one
/// ends the connection. Nothing refused changes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_decide_who_may_publish_what() {
    let ct = Containers::new(&unique("dsro"));
    let app = ct.name("app");
    run_sleeper(&app, IMAGE, &[]);
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let port = free_port();
    let ctl_pw = dir.path().join("ctl-pw");
    std::fs::write(&ctl_pw, "c-pw\n").expect("pw");
    let extra = format!(
        "embedded_username = \"self\"\nembedded_password = \"self-pw\"\n\
         [[mqtt.embedded_users]]\nusername = \"reader\"\npassword = \"r-pw\"\nrole = \"read\"\n\
         [[mqtt.embedded_users]]\nusername = \"ctl\"\npassword_file = \"{}\"\nrole = \"control\"\n",
        ctl_pw.display()
    );
    let ds = Dockside::start(
        dir.path(),
        &config(port, &base, dir.path(), &ct.prefix, &extra),
    );
    let reader = Collector::start_as(port, &format!("{base}/#"), Some(("reader", "r-pw"))).await;
    let state = format!("{base}/local/{app}/state");
    let set = format!("{base}/local/{app}/set");
    let result = format!("{base}/local/{app}/result");
    reader.wait_state(&state, T, |s| s["running"] == true).await;
    let running = || docker(&["inspect", "-f", "{{.State.Running}}", &app]) == "true";

    // read: a command at QoS 0 is dropped, at QoS 1 the connection ends.
    assert!(pub_once(
        port,
        ("reader", "r-pw"),
        &set,
        r#"{"action":"stop","request_id":"r0"}"#,
        0,
        false
    ));
    assert!(!pub_once(
        port,
        ("reader", "r-pw"),
        &set,
        r#"{"action":"stop","request_id":"r1"}"#,
        1,
        false
    ));
    assert!(pub_once(
        port,
        ("reader", "r-pw"),
        "homeassistant/status",
        "online",
        1,
        false
    ));
    // Nobody but dockside: a fake state and a fake device, retained.
    for who in [("reader", "r-pw"), ("ctl", "c-pw")] {
        pub_once(port, who, &state, "fake", 0, true);
        pub_once(
            port,
            who,
            &format!("homeassistant/device/{base}_local_fake/config"),
            "{}",
            0,
            true,
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(reader.on(&result).is_empty(), "a refused command ran");
    assert!(running());
    let fresh = Collector::start_as(port, "#", Some(("reader", "r-pw"))).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        fresh
            .all()
            .iter()
            .all(|m| m.text() != "fake" && !m.topic.contains("_local_fake")),
        "a fake state or device was stored"
    );
    assert_eq!(
        fresh.latest(&state).map(|m| m.json()["running"].clone()),
        Some(true.into())
    );

    // control: the command runs and its one result comes.
    let ctl = Collector::start_as(port, &result, Some(("ctl", "c-pw"))).await;
    let r = ctl
        .command(&set, r#"{"action":"stop","request_id":"c1"}"#, "c1", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(!running());
    assert!(
        ds.log_text().contains("may not make"),
        "refusals are logged"
    );
    for secret in ["r-pw", "c-pw", "self-pw"] {
        assert!(!ds.log_text().contains(secret), "a password in the log");
    }
}

/// SPEC §16: MQTT over TLS beside the plain listener (PEM certificate and
/// key), with the same users and gate; a client that does not speak TLS
/// gets nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_users() {
    let ct = Containers::new(&unique("dstl"));
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new("bash")
        .arg("-ec")
        .arg(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
             -keyout key.pem -out cert.pem -days 2 -subj /CN=localhost \
             -addext subjectAltName=IP:127.0.0.1 2>/dev/null",
        )
        .current_dir(dir.path())
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (port, tls_port) = (free_port(), free_port());
    let base = unique("t");
    let extra = format!(
        "embedded_username = \"self\"\nembedded_password = \"self-pw\"\n\
         embedded_tls_listen = \"127.0.0.1:{tls_port}\"\n\
         embedded_cert_file = \"{0}/cert.pem\"\nembedded_key_file = \"{0}/key.pem\"\n\
         [[mqtt.embedded_users]]\nusername = \"reader\"\npassword = \"r-pw\"\nrole = \"read\"\n",
        dir.path().display()
    );
    let _ds = Dockside::start(
        dir.path(),
        &config(port, &base, dir.path(), &ct.prefix, &extra),
    );
    let status = format!("{base}/status");
    let deadline = std::time::Instant::now() + T;
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "no TLS listener");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cafile = dir.path().join("cert.pem").display().to_string();
    let tls_sub = |auth: (&str, &str)| {
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &tls_port.to_string(),
                "--cafile",
                &cafile,
            ])
            .args([
                "-u", auth.0, "-P", auth.1, "-t", &status, "-C", "1", "-W", "5",
            ])
            .output()
            .expect("mosquitto_sub")
    };
    let ok = tls_sub(("reader", "r-pw"));
    assert!(
        ok.status.success() && String::from_utf8_lossy(&ok.stdout).contains("online"),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        !tls_sub(("reader", "wrong")).status.success(),
        "a wrong password over TLS"
    );
    // Plain MQTT on the TLS port: nothing.
    let (ok, out) = sub_once(tls_port, &status, Some(("reader", "r-pw")));
    assert!(!ok && !out.contains("online"), "{out}");
    // The plain listener still serves.
    let (ok, out) = sub_once(port, &status, Some(("reader", "r-pw")));
    assert!(ok && out.contains("online"), "{out}");
}

/// A flood through the embedded broker's front listener (SPEC §16), at the
/// rate a client reaches: every command that reaches dockside gets exactly
/// one result and nothing is dropped from the outbox. (rumqttd keeps only a
/// few segments per filter for a reader that lags, so it may shed part of a
/// flood before dockside reads it: those commands never reached dockside.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_through_the_embedded_broker_gets_one_result_per_command() {
    const N: usize = 30_000;
    let ct = Containers::new(&unique("dse"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let port = free_port();
    let http = free_port();
    let web = ct.name("web");
    run_sleeper(&web, IMAGE, &[]);
    let cfg = config(port, &base, dir.path(), &ct.prefix, "")
        + &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n");
    let _ds = Dockside::start(dir.path(), &cfg);
    let result = format!("{base}/local/{web}/result");
    let states = Collector::start(port, &format!("{base}/#")).await;
    states
        .wait_state(&format!("{base}/local/{web}/state"), T, |s| {
            s["running"] == true
        })
        .await;
    drop(states);
    // Like Home Assistant's "Last command" sensor: the result topic alone.
    let c = Collector::start(port, &result).await;
    let set = format!("{base}/local/{web}/set");
    let msgs = (0..N).map(move |i| {
        let p = format!(r#"{{"action":"start","request_id":"e{i}"}}"#);
        (set.clone(), p.into_bytes())
    });
    let sent_in =
        tokio::task::spawn_blocking(move || raw::RawPublisher::connect(port).flood(msgs, 80_000))
            .await
            .expect("publisher");
    let a = raw::answered(http, &c, &result).await;
    eprintln!("embedded flood: {N} sent in {sent_in:?}; {a:?}");
    assert!(a.received > 0, "no command reached dockside: {a:?}");
    assert_eq!(
        (a.results, a.distinct),
        (a.received, a.received),
        "one result per command received: {a:?}"
    );
    assert_eq!(a.outbox_dropped, 0, "messages dropped from the outbox");
}
