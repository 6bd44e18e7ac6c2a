//! `dockside-bench`: measures dockside against the local engine and a private
//! Mosquitto (not part of the test suite; see BENCHMARKS.md).
//!
//! - event→MQTT latency: arrival time at a subscriber on this machine minus the
//!   engine's event `timeNano`, one container at a time;
//! - a burst: N containers started at once, then stopped at once: events lost,
//!   wrong final states, latency p99;
//! - idle: RSS and CPU of the dockside process over a window, N containers running;
//! - commands: `pause`/`unpause` published on a container's `set` topic → its
//!   `result` (which dockside sends once the engine shows the state reached).
//!
//! Needs `scripts/test-env.sh` (engine, mosquitto, test image) and a built
//! `dockside` binary next to this one (`cargo build --release`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dockside::config::EndpointConfig;
use dockside::docker::DockerClient;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const IMAGE: &str = "dockside-test/busybox:latest";

struct Args {
    containers: usize,
    sequential: usize,
    idle_secs: u64,
    commands: usize,
    broker_nodelay: bool,
    dockside: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        containers: 100,
        sequential: 50,
        idle_secs: 60,
        commands: 40,
        broker_nodelay: false,
        dockside: std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("dockside"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--containers" => a.containers = v()?.parse().map_err(|e| format!("{e}"))?,
            "--sequential" => a.sequential = v()?.parse().map_err(|e| format!("{e}"))?,
            "--idle-secs" => a.idle_secs = v()?.parse().map_err(|e| format!("{e}"))?,
            "--commands" => a.commands = v()?.parse().map_err(|e| format!("{e}"))?,
            "--broker-nodelay" => a.broker_nodelay = true,
            "--dockside" => a.dockside = PathBuf::from(v()?),
            "-h" | "--help" => {
                println!(
                    "dockside-bench [--containers N=100] [--sequential K=50] [--idle-secs S=60] [--commands C=40] [--broker-nodelay] [--dockside PATH]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

#[derive(Clone)]
struct Arrival {
    topic: String,
    json: serde_json::Value,
    wall_ns: i128,
}

fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18883)
}

fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

fn event_latency_ms(a: &Arrival) -> Option<f64> {
    // The payload's `time` is built from the engine's timeNano.
    let t = a.json["time"].as_str()?;
    let ts = humantime::parse_rfc3339(t).ok()?;
    let ns = ts.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128;
    Some((a.wall_ns - ns) as f64 / 1e6)
}

struct Guard {
    children: Vec<Child>,
    prefix: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // dockside first, then the broker (no spurious "connection lost").
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &format!("name=^{}-", self.prefix)]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids);
                let _ = docker(&args);
            }
        }
    }
}

fn proc_stat(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((rss_kb, ticks))
}

async fn wait_for(
    arrivals: &Arc<Mutex<Vec<Arrival>>>,
    timeout: Duration,
    mut pred: impl FnMut(&[Arrival]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pred(&arrivals.lock().map(|a| a.clone()).unwrap_or_default()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn count_events(all: &[Arrival], topic: &str, ids: &[String], action: &str) -> usize {
    all.iter()
        .filter(|a| {
            a.topic == topic
                && a.json["action"] == action
                && a.json["id"]
                    .as_str()
                    .is_some_and(|id| ids.iter().any(|i| i == id))
        })
        .count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    if !args.dockside.exists() {
        return Err(format!(
            "{} not found: cargo build --release first",
            args.dockside.display()
        ));
    }
    docker(&["image", "inspect", IMAGE])
        .map_err(|_| format!("the engine or {IMAGE} is missing: run scripts/test-env.sh"))?;
    let prefix = format!("dsb{:05x}", fastrand::u32(..0xfffff));
    let mut guard = Guard {
        children: Vec::new(),
        prefix: prefix.clone(),
    };
    let dir = std::env::temp_dir().join(&prefix);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;

    // Broker.
    let port = free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n{}",
            if args.broker_nodelay { "set_tcp_nodelay true\n" } else { "" }
        ),
    )
    .map_err(|e| e.to_string())?;
    guard.children.push(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("mosquitto: {e} (run scripts/test-env.sh)"))?,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Containers (created, not started).
    println!("creating {} containers…", args.containers);
    let mut ids = Vec::new();
    for i in 0..args.containers {
        ids.push(docker(&[
            "create",
            "--name",
            &format!("{prefix}-{i}"),
            IMAGE,
        ])?);
    }

    // Subscriber.
    let base = prefix.clone();
    let arrivals: Arc<Mutex<Vec<Arrival>>> = Arc::new(Mutex::new(Vec::new()));
    let mut opts = MqttOptions::new(format!("{prefix}-sub"), "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 100);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    let publisher = client.clone();
    let (a2, filter) = (arrivals.clone(), format!("{base}/#"));
    let subscribed = Arc::new(Mutex::new(false));
    let s2 = subscribed.clone();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    let _ = client.try_subscribe(filter.clone(), QoS::AtMostOnce);
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    if let Ok(mut s) = s2.lock() {
                        *s = true;
                    }
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    let wall = wall_ns();
                    let json =
                        serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                    if let Ok(mut a) = a2.lock() {
                        a.push(Arrival {
                            topic: p.topic.clone(),
                            json,
                            wall_ns: wall,
                        });
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    while !subscribed.lock().map(|s| *s).unwrap_or(false) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // dockside.
    let cfg = dir.join("dockside.toml");
    std::fs::write(
        &cfg,
        format!(
            "[mqtt]\nurl = \"mqtt://127.0.0.1:{port}\"\nbase_topic = \"{base}\"\n[state]\ndir = \"{}\"\n[containers]\ninclude = [\"{prefix}-*\"]\n[commands]\nallow = [\"start\", \"stop\", \"restart\", \"pause\", \"unpause\"]\nmin_interval = \"0s\"\n[log]\nlevel = \"warn\"\n",
            dir.join("state").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let ds = Command::new(&args.dockside)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("dockside: {e}"))?;
    let pid = ds.id();
    guard.children.push(ds);
    let started = Instant::now();
    let events_topic = format!("{base}/local/events");
    let n = args.containers;
    let state_prefix = format!("{base}/local/");
    let synced = wait_for(&arrivals, Duration::from_secs(60), |all| {
        all.iter()
            .filter(|a| a.topic.starts_with(&state_prefix) && a.topic.ends_with("/state"))
            .count()
            >= n
    })
    .await;
    if !synced {
        return Err("dockside did not publish every container".into());
    }
    println!(
        "initial sync of {n} containers published in {:?}",
        started.elapsed()
    );

    let engine = DockerClient::new(&EndpointConfig::default()).map_err(|e| e.to_string())?;
    engine.negotiate().await.map_err(|e| e.to_string())?;
    let short = Duration::from_secs(30);

    // 1. One by one.
    let k = args.sequential.min(n);
    arrivals.lock().map_err(|e| e.to_string())?.clear();
    for id in &ids[..k] {
        engine
            .container_action(id, "start", &[], short)
            .await
            .map_err(|e| e.to_string())?;
        let id2 = id.clone();
        let topic = events_topic.clone();
        wait_for(&arrivals, Duration::from_secs(10), |all| {
            all.iter().any(|a| {
                a.topic == topic && a.json["id"] == id2.as_str() && a.json["action"] == "start"
            })
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seq: Vec<Arrival> = arrivals.lock().map_err(|e| e.to_string())?.clone();
    let mut lat: Vec<f64> = seq
        .iter()
        .filter(|a| a.topic == events_topic && a.json["type"] == "container")
        .filter_map(event_latency_ms)
        .collect();
    let seq_events = lat.len();
    let (p50, p99) = (pct(&mut lat, 50.0), pct(&mut lat, 99.0));
    // State latency: start event time → running state arrival.
    let mut event_time: HashMap<String, i128> = HashMap::new();
    for a in &seq {
        if a.topic == events_topic
            && a.json["action"] == "start"
            && let (Some(id), Some(l)) = (a.json["id"].as_str(), event_latency_ms(a))
        {
            event_time.insert(id.to_string(), a.wall_ns - (l * 1e6) as i128);
        }
    }
    let mut state_lat: Vec<f64> = seq
        .iter()
        .filter(|a| a.topic.ends_with("/state") && a.json["state"] == "running")
        .filter_map(|a| {
            let t0 = event_time.get(a.json["id"].as_str()?)?;
            Some((a.wall_ns - t0) as f64 / 1e6)
        })
        .collect();
    let (s50, s99) = (pct(&mut state_lat, 50.0), pct(&mut state_lat, 99.0));
    for id in &ids[..k] {
        let _ = engine
            .container_action(id, "stop", &[("t", "0")], short)
            .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. Burst: all started at once, then all stopped at once.
    arrivals.lock().map_err(|e| e.to_string())?.clear();
    let engine = Arc::new(engine);
    let burst = |action: &'static str| {
        let engine = engine.clone();
        let ids = ids.clone();
        async move {
            let q: &[(&str, &str)] = if action == "stop" { &[("t", "0")] } else { &[] };
            let tasks: Vec<_> = ids
                .iter()
                .map(|id| {
                    let (engine, id) = (engine.clone(), id.clone());
                    tokio::spawn(
                        async move { engine.container_action(&id, action, q, short).await },
                    )
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        }
    };
    burst("start").await;
    let topic = events_topic.clone();
    wait_for(&arrivals, Duration::from_secs(30), |all| {
        count_events(all, &topic, &ids, "start") >= n
    })
    .await;
    burst("stop").await;
    wait_for(&arrivals, Duration::from_secs(30), |all| {
        count_events(all, &topic, &ids, "stop") >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all: Vec<Arrival> = arrivals.lock().map_err(|e| e.to_string())?.clone();
    let expected = 3 * n;
    let got = count_events(&all, &events_topic, &ids, "start")
        + count_events(&all, &events_topic, &ids, "die")
        + count_events(&all, &events_topic, &ids, "stop");
    let mut latest_state: HashMap<String, serde_json::Value> = HashMap::new();
    for a in &all {
        if a.topic.ends_with("/state") {
            latest_state.insert(a.topic.clone(), a.json.clone());
        }
    }
    let wrong_final = (0..n)
        .filter(|i| {
            latest_state
                .get(&format!("{base}/local/{prefix}-{i}/state"))
                .is_none_or(|s| s["state"] != "exited")
        })
        .count();
    let mut blat: Vec<f64> = all
        .iter()
        .filter(|a| a.topic == events_topic && a.json["type"] == "container")
        .filter_map(event_latency_ms)
        .collect();
    let (b50, b99) = (pct(&mut blat, 50.0), pct(&mut blat, 99.0));

    // 3. Idle with every container running.
    burst("start").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, t0) = proc_stat(pid).ok_or("cannot read /proc for dockside")?;
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_secs)).await;
    let (rss_kb, t1) = proc_stat(pid).ok_or("cannot read /proc for dockside")?;
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_pct = (t1 - t0) as f64 / ticks_per_sec / w0.elapsed().as_secs_f64() * 100.0;

    // 4. Command → result: pause / unpause one container, one at a time.
    let target = format!("{prefix}-0");
    let set = format!("{base}/local/{target}/set");
    let result_topic = format!("{base}/local/{target}/result");
    let mut cmd_lat = Vec::new();
    let mut cmd_failed = 0;
    for i in 0..args.commands {
        let action = if i % 2 == 0 { "pause" } else { "unpause" };
        let rid = format!("b{i}");
        let sent = wall_ns();
        publisher
            .publish(
                set.clone(),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"action":"{action}","request_id":"{rid}"}}"#),
            )
            .await
            .map_err(|e| e.to_string())?;
        let (topic, rid2) = (result_topic.clone(), rid.clone());
        let ok = wait_for(&arrivals, Duration::from_secs(10), |all| {
            all.iter()
                .any(|a| a.topic == topic && a.json["request_id"] == rid2.as_str())
        })
        .await;
        let all = arrivals.lock().map_err(|e| e.to_string())?.clone();
        match all
            .iter()
            .find(|a| ok && a.topic == result_topic && a.json["request_id"] == rid.as_str())
        {
            Some(a) if a.json["ok"] == true => cmd_lat.push((a.wall_ns - sent) as f64 / 1e6),
            _ => cmd_failed += 1,
        }
    }
    let (c50, c99) = (pct(&mut cmd_lat, 50.0), pct(&mut cmd_lat, 99.0));

    println!();
    println!("dockside-bench: {n} containers, local engine, mosquitto on loopback");
    println!(
        "one-by-one ({k} starts, {seq_events} container events): event→MQTT p50 {p50:.2} ms, p99 {p99:.2} ms"
    );
    println!("one-by-one: start event→running state p50 {s50:.2} ms, p99 {s99:.2} ms");
    println!(
        "burst of {n} (start all, then stop all): {got}/{expected} start/die/stop events received, {} lost; {wrong_final} wrong final states; event→MQTT p50 {b50:.1} ms, p99 {b99:.1} ms",
        expected.saturating_sub(got)
    );
    println!(
        "idle {}s with {n} running containers: RSS {:.1} MB, CPU {cpu_pct:.3} % of one core",
        args.idle_secs,
        rss_kb as f64 / 1024.0
    );
    println!(
        "commands ({} pause/unpause, one at a time): command→result p50 {c50:.1} ms, p99 {c99:.1} ms, {cmd_failed} failed",
        args.commands
    );
    Ok(())
}
