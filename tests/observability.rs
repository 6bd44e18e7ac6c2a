//! `[http] listen` (SPEC §12): `/healthz` follows the broker, `/metrics`
//! passes `promtool check metrics`, a real Prometheus scrapes it, its
//! counters move when containers change and commands run, and neither
//! endpoint waits for an engine that does not answer.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(30);

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Self {
        let bin =
            which("prometheus").expect("Debian's prometheus is missing: run scripts/test-env.sh");
        let dir = tempfile::tempdir().expect("tmp");
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dockside\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("config");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).expect("log"))
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The first value of an instant query, once there is one.
    fn query(&self, q: &str) -> Option<f64> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.port, &format!("/api/v1/query?query={enc}"));
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn which(bin: &str) -> Option<String> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!p.is_empty()).then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_scraped_by_a_real_prometheus() {
    let mut broker = Broker::start();
    let ct = Containers::new(&unique("dso"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let web = ct.name("web");
    run_sleeper(&web, IMAGE, &[]);
    // An engine that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let http = free_port();
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:{http}\"\n[commands]\nallow = [\"start\",\"stop\",\"restart\"]\nmin_interval = \"0s\"\n[endpoints.local]\nurl = \"unix:///var/run/docker.sock\"\n[endpoints.silent]\nurl = \"tcp://127.0.0.1:{silent_port}\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let _ds = Dockside::start(dir.path(), &config);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let state = format!("{base}/local/{web}/state");
    c.wait_state(&state, T, |s| s["running"] == true).await;

    // `ok`, or `ok; engine unreachable …` once the silent one times out.
    wait_for("healthz ok", || {
        let (s, body) = get(http, "/healthz");
        s == 200 && body.starts_with("ok")
    })
    .await;
    // Neither waits for the silent engine.
    for path in ["/healthz", "/metrics"] {
        let t = Instant::now();
        let (status, _) = get(http, path);
        assert!(
            status == 200 && t.elapsed() < Duration::from_millis(500),
            "{path}: {status} in {:?}",
            t.elapsed()
        );
    }

    let (_, text) = get(http, "/metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sample(&text, "dockside_mqtt_connected"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "dockside_endpoint_up{endpoint=\"local\"}"),
        Some(1.0),
        "{text}"
    );
    let events =
        |t: &str| sample(t, "dockside_events_received_total{endpoint=\"local\"}").unwrap_or(0.0);
    let before = events(&text);

    // Containers change and commands run: the counters move.
    c.publish(
        &format!("{base}/local/{web}/set"),
        br#"{"action":"restart","request_id":"r"}"#,
        false,
    )
    .await;
    c.wait_latest(&format!("{base}/local/{web}/result"), T, |m| {
        m.json()["request_id"] == "r"
    })
    .await;
    c.publish(&format!("{base}/local/{web}/set"), b"kill", false)
        .await;
    c.wait_latest(&format!("{base}/local/{web}/result"), T, |m| {
        m.json()["action"] == "kill"
    })
    .await;
    let (_, text) = get(http, "/metrics");
    assert!(
        events(&text) >= before + 3.0,
        "events counted: {before} → {}\n{text}",
        events(&text)
    );
    assert_eq!(
        sample(
            &text,
            "dockside_commands_total{action=\"restart\",result=\"ok\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "dockside_commands_total{action=\"kill\",result=\"forbidden\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "dockside_state_publish_latency_seconds_count").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "dockside_events_published_total{endpoint=\"local\"}").unwrap_or(0.0) >= 3.0
    );

    // A real Prometheus scrapes it.
    let prom = Prometheus::start(http);
    wait_for("Prometheus scraping dockside", || {
        prom.query("up{job=\"dockside\"}") == Some(1.0)
    })
    .await;
    wait_for("dockside's counters in Prometheus", || {
        prom.query("dockside_events_received_total{endpoint=\"local\"}")
            .is_some_and(|v| v >= before + 3.0)
    })
    .await;
    assert_eq!(
        prom.query("dockside_commands_total{action=\"restart\",result=\"ok\"}"),
        Some(1.0)
    );

    // The broker goes away: unhealthy, with why; back: healthy again.
    broker.kill();
    wait_for("healthz 503", || {
        let (s, body) = get(http, "/healthz");
        s == 503 && body.contains("MQTT broker")
    })
    .await;
    broker.restart();
    wait_for("healthz ok again", || get(http, "/healthz").0 == 200).await;
    let (_, text) = get(http, "/metrics");
    assert!(
        sample(&text, "dockside_mqtt_reconnects_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    drop(silent);
}
