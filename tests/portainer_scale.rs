//! Scale benchmark, not part of the suite (it is `#[ignore]`d):
//! 50 Portainer environments (all forwarded to the one local engine) × 100
//! containers = 5,000 mirrored containers. Prints the time from start to every
//! state published, RSS, and idle CPU with the default poll interval.
//!
//! scripts/test-env.sh && cargo test --release --test portainer_scale -- --ignored --nocapture

mod common;
mod portainer_double;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use portainer_double::{API_KEY, Env, FakePortainer};

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
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((
        rss_kb,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release --test portainer_scale -- --ignored --nocapture"]
async fn scale_50_environments_x_100_containers() {
    let envs: i64 = std::env::var("SCALE_ENVS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let per: usize = std::env::var("SCALE_CONTAINERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let idle: u64 = std::env::var("SCALE_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let ct = Containers::new(&unique("dss"));
    println!("starting {per} containers…");
    for i in 0..per {
        docker(&["run", "-d", "--name", &ct.name(&i.to_string()), IMAGE]);
    }
    let p = FakePortainer::start(
        (1..=envs)
            .map(|i| Env::new(i, &format!("env {i}"), 1))
            .collect(),
    )
    .await;
    let broker = Broker::start();
    let base = unique("t");
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = format!(
        "{}\n[portainer.home]\nurl = \"{}\"\napi_key = \"{API_KEY}\"\n[log]\nlevel = \"warn\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
            .replace("[log]\nlevel = \"debug\"\n", ""),
        p.url()
    );
    let c = Collector::start(broker.port, &format!("{base}/+/+/state")).await;
    let started = Instant::now();
    let d = Dockside::start(dir.path(), &cfg);
    let want = envs as usize * per;
    c.wait_until(&format!("{want} states"), Duration::from_secs(120), |all| {
        all.iter()
            .map(|m| m.topic.as_str())
            .collect::<HashSet<_>>()
            .len()
            >= want
    })
    .await;
    let synced = started.elapsed();
    let pid = d.pid().expect("pid");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, t0) = proc_stat(pid).expect("proc");
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let (rss_kb, t1) = proc_stat(pid).expect("proc");
    let cpu = (t1 - t0) as f64 / 100.0 / w0.elapsed().as_secs_f64() * 100.0;
    println!(
        "\nportainer scale: {envs} environments × {per} containers = {want} mirrored; all states published {:.2} s after start; RSS {:.1} MB; idle CPU over {idle} s {cpu:.2} % of one core (poll_interval 10s)",
        synced.as_secs_f64(),
        rss_kb as f64 / 1024.0
    );
}
