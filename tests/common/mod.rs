//! Test harness: the real engine (through the `docker` CLI), a Mosquitto per
//! test on a free loopback port, an MQTT collector, and the real dockside binary.
//! A missing component fails the test with a clear message; nothing is skipped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

pub mod browser;
pub mod fake_engine;
pub mod machine;
pub mod raw;
pub mod stand_in;

pub const IMAGE: &str = "dockside-test/busybox:latest";

/// A plain HTTP/1.1 GET: (status, body); (0, "") when nothing listens.
pub fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new()); // not listening (yet)
    };
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line (`name{labels}`) in Prometheus' classic text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Resident memory of a process, in kB (`VmRSS`).
/// CPU time a process used so far (user + system), in clock ticks (1/100 s).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .expect("VmRSS of the process")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:06x}", fastrand::u32(..0xff_ffff))
}

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------- stand-ins

/// One test's world: its own Mosquitto, container name prefix, base topic
/// and state directory.
pub struct Env {
    pub broker: Broker,
    pub ct: Containers,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl Env {
    /// Containers named `<prefix><random>-…`.
    pub fn new(prefix: &str) -> Self {
        Self {
            ct: Containers::new(&unique(prefix)),
            broker: Broker::start(),
            base: unique("t"),
            dir: tempfile::tempdir().expect("tmp"),
        }
    }
    /// dockside's config for this world (`base_config`).
    pub fn config(&self) -> String {
        base_config(
            &self.broker,
            &self.base,
            &self.dir.path().join("state"),
            &self.ct.prefix,
        )
    }
    /// The same with a `[commands]` section.
    pub fn commands_config(&self, commands: &str) -> String {
        format!("{}\n[commands]\n{commands}\n", self.config())
    }
    pub fn state(&self, ct: &str) -> String {
        format!("{}/local/{ct}/state", self.base)
    }
    pub fn set(&self, ct: &str) -> String {
        format!("{}/local/{ct}/set", self.base)
    }
    pub fn result(&self, ct: &str) -> String {
        format!("{}/local/{ct}/result", self.base)
    }
    pub fn start(&self) -> Dockside {
        Dockside::start(self.dir.path(), &self.config())
    }
    pub async fn collector(&self) -> Collector {
        Collector::start(self.broker.port, &format!("{}/#", self.base)).await
    }
}

/// A stand-in engine's answer: JSON with its length, and the engine's
/// `Api-Version` header when it sends one.
pub async fn respond_json<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    status: &str,
    body: &str,
    api_version: Option<&str>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let header = api_version
        .map(|h| format!("Api-Version: {h}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{header}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body.as_bytes()).await
}

/// Reads one HTTP request head (through the blank line) from a stand-in's
/// connection; what follows stays in `buf`. `None` when the peer closed.
pub async fn read_request_head<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end);
    Ok(Some(head))
}

// ---------------------------------------------------------------- docker

/// The engine under test: `DOCKER_HOST` (set by `scripts/engine.sh env`, which
/// the `docker` CLI and dockside's default endpoint follow too), else the host's.
pub fn engine_url() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
}

/// The engine's unix socket path (the tests' engines are all local sockets).
pub fn engine_socket() -> String {
    let url = engine_url();
    url.strip_prefix("unix://")
        .unwrap_or_else(|| panic!("the engine under test is not a unix socket: {url}"))
        .to_string()
}

/// `GET path` on the engine under test, straight over its socket (HTTP/1.0:
/// no chunked body), for comparing with what dockside publishes.
pub fn engine_get(path: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(engine_socket()).expect("engine socket");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").expect("request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response");
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {head}"
    );
    serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// Whether the engine under test keeps images in containerd (the default of
/// fresh Docker 29 installs): image IDs are manifest digests there and every
/// tag has a RepoDigest, pushed or not.
pub fn containerd_store() -> bool {
    docker(&["info", "-f", "{{json .DriverStatus}}"]).contains("io.containerd.snapshotter")
}

/// `[endpoints.<name>]` pointing at the engine under test.
pub fn engine_endpoint(name: &str) -> String {
    format!("[endpoints.{name}]\nurl = \"{}\"\n", engine_url())
}

/// The classic builder on the containerd image store loses its intermediate
/// image when an image is removed meanwhile ("unable to find image"): builds
/// and removals of all test processes take turns through one lock file.
pub fn image_lock() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("dockside-test-image.lock"))
        .expect("image lock file");
    lock.lock().expect("image lock");
    lock
}

/// Runs `docker ARGS`, panics with its stderr on failure.
pub fn docker(args: &[&str]) -> String {
    let _lock = (args.first() == Some(&"rmi")).then(image_lock);
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is missing: run scripts/test-env.sh");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker run -d --name NAME EXTRA… IMAGE CMD…` of the test image.
pub fn run_container(name: &str, extra: &[&str], cmd: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.push(IMAGE);
    args.extend_from_slice(cmd);
    docker(&args)
}

/// Runs a container that the kernel's OOM killer ends, named `<prefix>-oom<n>`,
/// until the engine itself says `OOMKilled` (up to 3 tries: Docker 20.10
/// sometimes misses the kill and reports a plain exit 137). Returns its name.
pub fn run_oom_killed(ct: &Containers) -> String {
    for n in 1..=3 {
        let name = ct.name(&format!("oom{n}"));
        run_container(
            &name,
            &["--memory", "16m", "--memory-swap", "16m"],
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while docker(&["inspect", "-f", "{{.State.Status}}", &name]) != "exited" {
            assert!(Instant::now() < deadline, "{name} did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
        if docker(&["inspect", "-f", "{{.State.OOMKilled}}", &name]) == "true" {
            return name;
        }
        eprintln!("{name}: the engine did not report the OOM kill; again");
        // Gone before the next try: tests count the containers they made.
        docker_quiet(&["rm", "-f", &name]);
    }
    panic!("the engine never reported an OOM kill in 3 tries");
}

/// `docker run -d` of `image` running `sleep 3600` as `name`, with `opts`
/// before the image. busybox `sleep` ignores SIGTERM: a 1 s stop timeout
/// keeps stops, restarts and recreates quick.
pub fn run_sleeper(name: &str, image: &str, opts: &[&str]) -> String {
    let mut args = vec!["run", "-d", "--stop-timeout", "1", "--name", name];
    args.extend_from_slice(opts);
    args.extend_from_slice(&[image, "sleep", "3600"]);
    docker(&args)
}

/// Runs `docker ARGS`, ignoring failure.
pub fn docker_quiet(args: &[&str]) {
    let _lock = (args.first() == Some(&"rmi")).then(image_lock);
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "the Docker engine or the test image {IMAGE} is missing: run scripts/test-env.sh"
    );
}

/// Removes every container whose name starts with `prefix` when dropped.
pub struct Containers {
    pub prefix: String,
}

impl Containers {
    pub fn new(prefix: &str) -> Self {
        require_docker();
        Self {
            prefix: prefix.to_string(),
        }
    }
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{}", self.prefix, suffix)
    }
    pub fn cleanup(&self) {
        let list = docker(&["ps", "-aq", "--filter", &format!("name=^{}-", self.prefix)]);
        for id in list.split_whitespace() {
            docker_quiet(&["rm", "-f", id]);
        }
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        self.cleanup();
    }
}

// ---------------------------------------------------------------- broker

pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// More mosquitto.conf lines (a bridge).
    extra: String,
}

impl Broker {
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// A broker whose mosquitto.conf has these lines too.
    pub fn start_with(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut b = Self {
            port: free_port(),
            dir,
            child: None,
            extra: extra.to_string(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n{}\n",
                self.port, self.extra
            ),
        )
        .expect("write mosquitto.conf");
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).expect("log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto is missing: run scripts/test-env.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What Mosquitto logged (connections, clean disconnects, …).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker; its retained store is gone (persistence off).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- MQTT collector

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
    pub at: Instant,
    pub wall_ns: i128,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).to_string()
    }
}

/// Subscribes to a filter and records everything, reconnecting across broker restarts.
#[derive(Clone)]
pub struct Collector {
    msgs: Arc<Mutex<Vec<Msg>>>,
    client: AsyncClient,
    connected: Arc<Mutex<bool>>,
}

pub fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

impl Collector {
    pub async fn start(port: u16, filter: &str) -> Self {
        Self::start_as(port, filter, None).await
    }

    /// [`Self::start`] with broker credentials.
    pub async fn start_as(port: u16, filter: &str, auth: Option<(&str, &str)>) -> Self {
        let mut opts = MqttOptions::new(unique("collector-"), "127.0.0.1", port);
        if let Some((u, p)) = auth {
            opts.set_credentials(u, p);
        }
        opts.set_max_packet_size(16 << 20, 16 << 20);
        opts.set_keep_alive(Duration::from_secs(10));
        let (client, mut el) = AsyncClient::new(opts, 100);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(Mutex::new(false));
        let (m2, c2, cl2, f2) = (
            msgs.clone(),
            connected.clone(),
            client.clone(),
            filter.to_string(),
        );
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        let _ = cl2.try_subscribe(f2.clone(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        *c2.lock().expect("lock") = true;
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        m2.lock().expect("lock").push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.clone(),
                            retain: p.retain,
                            at: Instant::now(),
                            wall_ns: wall_ns(),
                        });
                    }
                    Ok(_) => {}
                    Err(_) => {
                        *c2.lock().expect("lock") = false;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        let c = Self {
            msgs,
            client,
            connected,
        };
        c.wait_until("collector subscribed", Duration::from_secs(10), |_| {
            *c.connected.lock().expect("lock")
        })
        .await;
        c
    }

    pub fn all(&self) -> Vec<Msg> {
        self.msgs.lock().expect("lock").clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.all()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    pub fn latest(&self, topic: &str) -> Option<Msg> {
        self.on(topic).pop()
    }

    pub fn clear(&self) {
        self.msgs.lock().expect("lock").clear();
    }

    pub async fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
            .await
            .expect("publish");
    }

    /// Publishes `payload` on a `set` topic and waits for the result on its
    /// `result` topic that carries `rid`.
    pub async fn command(
        &self,
        set: &str,
        payload: &str,
        rid: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let result = format!("{}/result", set.trim_end_matches("/set"));
        self.publish(set, payload.as_bytes(), false).await;
        self.wait_latest(&result, timeout, |m| m.json()["request_id"] == rid)
            .await
            .json()
    }

    /// The event `action` of container `id` arrives on `events`, and only
    /// once (a replay would bring it twice).
    pub async fn event_once(&self, events: &str, action: &str, id: &str, timeout: Duration) {
        let is_it =
            |m: &Msg| m.topic == events && m.json()["action"] == action && m.json()["id"] == id;
        self.wait_until(&format!("the {action} of {id}"), timeout, |all| {
            all.iter().any(is_it)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let n = self.all().iter().filter(|m| is_it(m)).count();
        assert_eq!(n, 1, "{action} of {id} delivered {n} times");
    }

    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&[Msg]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.all()) {
                return;
            }
            if Instant::now() > deadline {
                let all = self.all();
                let tail: Vec<String> = all
                    .iter()
                    .rev()
                    .take(25)
                    .rev()
                    .map(|m| {
                        format!(
                            "  {} {}",
                            m.topic,
                            m.text().chars().take(160).collect::<String>()
                        )
                    })
                    .collect();
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\nlast messages ({} total):\n{}",
                    all.len(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the newest message on `topic` satisfies `pred`; returns it.
    pub async fn wait_latest(
        &self,
        topic: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Msg) -> bool,
    ) -> Msg {
        let t = topic.to_string();
        self.wait_until(&format!("latest on {topic}"), timeout, |all| {
            all.iter()
                .rev()
                .find(|m| m.topic == t)
                .is_some_and(&mut pred)
        })
        .await;
        self.latest(topic).expect("message present")
    }

    /// Waits for the container state JSON to satisfy `pred`.
    pub async fn wait_state(
        &self,
        topic: &str,
        timeout: Duration,
        mut pred: impl FnMut(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        self.wait_latest(topic, timeout, |m| !m.payload.is_empty() && pred(&m.json()))
            .await
            .json()
    }
}

/// What a newcomer sees: the retained messages under `filter` right now.
pub async fn retained_snapshot(port: u16, filter: &str) -> HashMap<String, Bytes> {
    retained_snapshot_as(port, filter, None).await
}

/// The same, logged in with these credentials.
pub async fn retained_snapshot_as(
    port: u16,
    filter: &str,
    auth: Option<(&str, &str)>,
) -> HashMap<String, Bytes> {
    let c = Collector::start_as(port, filter, auth).await;
    // Retained messages arrive right after SUBACK; give them a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut out = HashMap::new();
    for m in c.all() {
        if m.retain && !m.payload.is_empty() {
            out.insert(m.topic, m.payload);
        }
    }
    out
}

// ---------------------------------------------------------------- dockside

pub struct Dockside {
    child: Option<Child>,
    pub dir: PathBuf,
    pub config: PathBuf,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Dockside {
    /// Writes `config` to a temp dir and starts the real binary on it.
    pub fn start(dir: &Path, config: &str) -> Self {
        Self::start_with_env(dir, config, &[])
    }

    /// Same, with extra environment variables for the process.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Self {
        let cfg = dir.join("dockside.toml");
        std::fs::write(&cfg, config).expect("write config");
        record_panics();
        let mut d = Self {
            child: None,
            dir: dir.to_path_buf(),
            config: cfg,
            log: dir.join(format!("dockside-{}.log", fastrand::u32(..))),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = dockside_command()
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "dockside=debug,info")
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dockside");
        self.child = Some(child);
    }

    pub fn rewrite_config(&self, config: &str) {
        let mut f = std::fs::File::create(&self.config).expect("config");
        f.write_all(config.as_bytes()).expect("write");
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// SIGTERM and wait; returns the exit code and how long it took.
    pub fn stop(&mut self) -> (Option<i32>, Duration) {
        let started = Instant::now();
        self.signal("-TERM");
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status.code(), started.elapsed());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("dockside did not exit after SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL: no shutdown at all (a crash, a power cut).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Dockside {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", log_tail(&self.log_text(), LOG_TAIL_LINES));
            // CI shows the end of the output: say again why the test failed.
            if let Some(why) = last_panic() {
                eprintln!("---- the test failed: {why}");
            }
        }
    }
}

/// How much of dockside's log a failing test prints (a flood logs 100,000 lines).
const LOG_TAIL_LINES: usize = 300;

fn log_tail(log: &str, keep: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines.len().saturating_sub(keep);
    format!(
        "---- dockside log ({from} earlier lines left out) ----\n{}",
        lines[from..].join("\n")
    )
}

thread_local! {
    // Per thread: the panic and the unwinding drop happen on the test's thread.
    static LAST_PANIC: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records each panic's message (for the log dump above), then reports it as usual.
fn record_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
            report(info);
        }));
    });
}

fn last_panic() -> Option<String> {
    LAST_PANIC.with(|last| last.borrow().clone())
}

/// A config for one test: its own base topic, state dir, and container prefix.
/// The dockside under test: `DOCKSIDE_BIN` when set (a release artifact, an
/// arm build), run through `DOCKSIDE_BIN_RUNNER` when set (`qemu-aarch64-static`);
/// else this build's binary.
pub fn dockside_command() -> Command {
    let bin = std::env::var("DOCKSIDE_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_dockside").to_string());
    match std::env::var("DOCKSIDE_BIN_RUNNER")
        .ok()
        .filter(|r| !r.is_empty())
    {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

pub fn base_config(broker: &Broker, base: &str, state_dir: &Path, prefix: &str) -> String {
    format!(
        r#"
[mqtt]
url = "{}"
base_topic = "{base}"
[state]
dir = "{}"
[containers]
include = ["{prefix}-*"]
removal_grace = "2s"
[log]
level = "debug"
"#,
        broker.url(),
        state_dir.display()
    )
}

// ---------------------------------------------------------------- socket proxy

/// HAProxy in front of the engine's socket on a free loopback port, as users
/// run docker-socket-proxy: `rules` are `http-request` lines of the frontend
/// (empty: everything passes, which still adds a proxy's latency and
/// buffering between the event stream and the calls).
pub struct SocketProxy {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl SocketProxy {
    pub fn start(rules: &str) -> Self {
        let port = free_port();
        let cfg = format!(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\nfrontend docker\n  bind 127.0.0.1:{port}\n{rules}\n  default_backend engine\nbackend engine\n  server s unix@{}\n",
            engine_socket()
        );
        Self::start_config(port, &cfg)
    }

    /// A whole HAProxy configuration that binds `port`.
    pub fn start_config(port: u16, cfg: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("cfg");
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian's haproxy package): run scripts/test-env.sh");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// dockside's endpoint through the proxy.
    pub fn endpoint_toml(&self) -> String {
        format!(
            "[endpoints.local]\nurl = \"tcp://127.0.0.1:{}\"\n",
            self.port
        )
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- registry

/// A Debian `docker-registry` (distribution 2.8) on a free loopback port, with
/// deletes enabled, optional htpasswd auth, and its access log in a file.
pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    htpasswd: Option<PathBuf>,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// With Basic auth for `user` / `password` (bcrypt htpasswd).
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_with(Some((user, password)))
    }

    fn start_with(auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let htpasswd = auth.map(|(user, password)| {
            let file = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("htpasswd is missing: run scripts/test-env.sh");
            std::fs::write(&file, &out.stdout).expect("htpasswd");
            file
        });
        let mut r = Self {
            port: free_port(),
            dir,
            child: None,
            htpasswd,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let auth = match &self.htpasswd {
            Some(f) => format!(
                "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                f.display()
            ),
            None => String::new(),
        };
        let conf = self.dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n{auth}",
                self.dir.path().join("data").display(),
                self.port
            ),
        )
        .expect("registry config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("access.log"))
            .expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("docker-registry is missing: run scripts/test-env.sh");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "the registry did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// (manifest HEADs, manifest GETs) among dockside's requests.
    pub fn manifest_requests(&self) -> (usize, usize) {
        let reqs = self.dockside_requests();
        let n = |m: &str| {
            reqs.iter()
                .filter(|r| r.starts_with(m) && r.contains("/manifests/"))
                .count()
        };
        (n("HEAD "), n("GET "))
    }

    /// Access-log lines of requests made by dockside (its User-Agent).
    pub fn dockside_requests(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"dockside/"))
            .map(|l| {
                let req = l.split('"').nth(1).unwrap_or("");
                req.to_string()
            })
            .collect()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- registry log (last 40 lines) ----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Builds a fresh image (unique label, so a unique ID) tagged `tag`.
pub fn build_image(tag: &str) -> String {
    build_image_with(tag, "")
}

/// [`build_image_with`], then `docker push`; returns the image ID.
pub fn push_image_with(tag: &str, extra: &str) -> String {
    let id = build_image_with(tag, extra);
    docker(&["push", tag]);
    id
}

/// `docker inspect` of one object, as JSON.
pub fn inspect_json(name: &str) -> serde_json::Value {
    let out = docker(&["inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect json");
    v[0].clone()
}

/// `docker login` into a private client config directory (for pushing to
/// a registry with Basic auth).
pub fn docker_login(config_dir: &str, host: &str, user: &str, password: &str) {
    let login = Command::new("docker")
        .args([
            "--config",
            config_dir,
            "login",
            "-u",
            user,
            "--password-stdin",
            host,
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin
                .take()
                .expect("stdin")
                .write_all(password.as_bytes())?;
            ch.wait()
        })
        .expect("docker login");
    assert!(login.success());
}

/// [`build_image`] with more Dockerfile lines.
pub fn build_image_with(tag: &str, extra: &str) -> String {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {IMAGE}\nLABEL dockside.test.nonce={}\n{extra}\n",
            fastrand::u64(..)
        ),
    )
    .expect("Dockerfile");
    let lock = image_lock();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    drop(lock);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
