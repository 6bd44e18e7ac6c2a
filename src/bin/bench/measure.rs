//! What the benchmark observes and how it sums it up: the MQTT subscriber's
//! arrivals, a raw `/events` subscriber beside dockside, and the tables.
//!
//! Both observers run on threads of their own (each a one-thread runtime), so
//! the time an arrival is stamped with is not held back by the load the
//! benchmark itself generates on its main runtime.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dockside::config::EndpointConfig;
use dockside::docker::DockerClient;
use futures_util::StreamExt;
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

/// One message as the subscriber received it.
#[derive(Clone)]
pub struct Arrival {
    pub topic: String,
    pub json: serde_json::Value,
    pub wall_ns: i128,
}

pub type Arrivals = Arc<Mutex<Vec<Arrival>>>;

pub fn wall_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

pub fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[idx.min(v.len() - 1)]
}

/// Waits until `pred` holds for what arrived so far (looked at under the
/// lock, never copied), or the timeout.
pub async fn wait_for(
    arrivals: &Arrivals,
    timeout: Duration,
    mut pred: impl FnMut(&[Arrival]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if arrivals.lock().map(|a| pred(&a)).unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A QoS 1 subscriber to `filter` on its own thread. Returns once subscribed,
/// with a client for publishing.
pub fn spawn_subscriber(
    port: u16,
    client_id: String,
    filter: String,
    arrivals: Arrivals,
) -> Result<AsyncClient, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("bench-mqtt".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return;
                }
            };
            rt.block_on(subscribe_loop(port, client_id, filter, arrivals, ready_tx));
        })
        .map_err(|e| e.to_string())?;
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .map_err(|_| "the subscriber did not connect to mosquitto".to_string())?
}

async fn subscribe_loop(
    port: u16,
    client_id: String,
    filter: String,
    arrivals: Arrivals,
    ready: std::sync::mpsc::Sender<Result<AsyncClient, String>>,
) {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = AsyncClient::new(opts, 1000);
    let mut net = el.network_options();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    let mut ready = Some(ready);
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                let _ = client.try_subscribe(filter.clone(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(client.clone()));
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                let wall = wall_ns();
                let json = serde_json::from_slice(&p.payload).unwrap_or(serde_json::Value::Null);
                if let Ok(mut a) = arrivals.lock() {
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
}

/// When each container event (id, action, timeNano) reached a second, raw
/// `/events` subscriber beside dockside: the physical limit its state is
/// measured against (issue 26: dockside's own overhead).
pub type RawArrivals = Arc<Mutex<HashMap<(String, String, i128), i128>>>;

/// The raw subscriber, on its own thread with its own engine client.
pub fn spawn_raw_events() -> RawArrivals {
    let raw: RawArrivals = Default::default();
    let out = raw.clone();
    let spawned = std::thread::Builder::new()
        .name("bench-raw-events".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                eprintln!("raw /events subscriber: no runtime");
                return;
            };
            rt.block_on(raw_loop(out));
        });
    if let Err(e) = spawned {
        eprintln!("raw /events subscriber: {e}");
    }
    raw
}

async fn raw_loop(out: RawArrivals) {
    let engine = match DockerClient::new(&EndpointConfig::default()) {
        Ok(e) => e,
        Err(e) => return eprintln!("raw /events subscriber: {e}"),
    };
    if let Err(e) = engine.negotiate().await {
        return eprintln!("raw /events subscriber: {e}");
    }
    let Ok((mut lines, _)) = engine.events(None, None, &["container"]).await else {
        return eprintln!("raw /events subscriber: cannot open the stream");
    };
    while let Some(Ok(item)) = lines.next().await {
        let at = wall_ns();
        let dockside::docker::EventItem::Event(ev) = item else {
            continue;
        };
        let (id, action, t) = (ev.actor.id, ev.action, ev.time_nano);
        if let Ok(mut m) = out.lock()
            && m.len() < 2_000_000
        {
            m.insert((id, action, t as i128), at);
        }
    }
}

/// What was done to a container between two wall-clock times.
pub struct Span {
    pub id: String,
    pub action: &'static str,
    pub from: i128,
    pub to: i128,
}

/// Latencies of one (action, event) pair in one run.
#[derive(Clone)]
pub struct Row {
    pub action: String,
    pub event: String,
    pub events: Vec<f64>,
    pub state: Vec<f64>,
    /// Event → its arrival at a second, raw `/events` subscriber.
    pub raw: Vec<f64>,
    /// State arrival minus that raw arrival: dockside's own share.
    pub overhead: Vec<f64>,
    pub lost: usize,
}

pub fn event_ns(a: &Arrival) -> Option<i128> {
    let t = humantime::parse_rfc3339(a.json["time"].as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as i128)
}

/// The state-changing event an events-topic message carries, if any.
fn state_event(action: &str) -> Option<String> {
    match (action, action.strip_prefix("health_status:").map(str::trim)) {
        ("start" | "die" | "pause" | "unpause", _) => Some(action.to_string()),
        (_, Some(h)) => Some(format!("health_status: {h}")),
        _ => None,
    }
}

/// Does a state payload show what `action` (with `exit_code`) tells?
fn shows(j: &serde_json::Value, action: &str, exit_code: Option<i64>) -> bool {
    match (action, action.strip_prefix("health_status:").map(str::trim)) {
        ("start" | "unpause", _) => j["state"] == "running",
        ("pause", _) => j["state"] == "paused",
        ("die", _) => j["state"] == "exited" && exit_code.is_none_or(|c| j["exit_code"] == c),
        (_, Some(h)) => j["health"] == h,
        _ => false,
    }
}

/// For every state-changing container event inside a span: event → its
/// message on the events topic, and event → the first retained state showing
/// what the event tells (SPEC §10).
pub fn analyze(all: &[Arrival], raw: &RawArrivals, events_topic: &str, spans: &[Span]) -> Vec<Row> {
    let raw = raw.lock().map(|m| m.clone()).unwrap_or_default();
    let mut spans_by_id: HashMap<&str, Vec<&Span>> = HashMap::new();
    for s in spans {
        spans_by_id.entry(s.id.as_str()).or_default().push(s);
    }
    // States per container id, in arrival order.
    let mut states: HashMap<&str, Vec<&Arrival>> = HashMap::new();
    for b in all.iter().filter(|b| b.topic.ends_with("/state")) {
        if let Some(id) = b.json["id"].as_str() {
            states.entry(id).or_default().push(b);
        }
    }
    let mut rows: BTreeMap<(String, String), Row> = Default::default();
    for a in all
        .iter()
        .filter(|a| a.topic == events_topic && a.json["type"] == "container")
    {
        let (Some(id), Some(action), Some(t)) = (
            a.json["id"].as_str(),
            a.json["action"].as_str(),
            event_ns(a),
        ) else {
            continue;
        };
        let Some(event) = state_event(action) else {
            continue;
        };
        let Some(span) = spans_by_id
            .get(id)
            .and_then(|v| v.iter().find(|s| t >= s.from && t < s.to))
        else {
            continue;
        };
        let exit_code: Option<i64> = a.json["attributes"]["exitCode"]
            .as_str()
            .and_then(|c| c.parse().ok());
        let state = states.get(id).and_then(|v| {
            v.iter()
                .find(|b| b.wall_ns >= t && shows(&b.json, action, exit_code))
        });
        let row = rows
            .entry((span.action.to_string(), event.clone()))
            .or_insert_with(|| Row {
                action: span.action.to_string(),
                event,
                events: Vec::new(),
                state: Vec::new(),
                raw: Vec::new(),
                overhead: Vec::new(),
                lost: 0,
            });
        row.events.push((a.wall_ns - t) as f64 / 1e6);
        let raw_at = raw.get(&(id.to_string(), action.to_string(), t)).copied();
        if let Some(r) = raw_at {
            row.raw.push((r - t) as f64 / 1e6);
        }
        match state {
            Some(b) => {
                row.state.push((b.wall_ns - t) as f64 / 1e6);
                if let Some(r) = raw_at {
                    row.overhead.push((b.wall_ns - r) as f64 / 1e6);
                }
            }
            None => row.lost += 1,
        }
    }
    rows.into_values().collect()
}

fn fmt3(v: &mut [f64]) -> String {
    format!(
        "{:.1} / {:.1} / {:.1}",
        pct(v, 0.0),
        pct(v, 50.0),
        pct(v, 100.0)
    )
}

/// One markdown row per (action, event): p50 and p99 of each run as
/// min / median / max over the runs, and the worst single value.
pub fn report(title: &str, runs: &[Vec<Row>]) {
    println!();
    println!("{title}:");
    println!(
        "| action | event | n (all runs) | events topic p50 / p99 (median run) | state p50 min/med/max | state p99 min/med/max | state worst | state − raw p50 / p99 (all runs) | lost |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut keys: Vec<(String, String)> = runs
        .iter()
        .flatten()
        .map(|r| (r.action.clone(), r.event.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    for (action, event) in keys {
        let rows: Vec<&Row> = runs
            .iter()
            .flatten()
            .filter(|r| r.action == action && r.event == event)
            .collect();
        let (mut sp50, mut sp99, mut ep50, mut ep99) = (vec![], vec![], vec![], vec![]);
        let (mut worst, mut n, mut lost) = (0f64, 0, 0);
        for r in &rows {
            let (mut s, mut e) = (r.state.clone(), r.events.clone());
            n += r.events.len();
            lost += r.lost;
            if !s.is_empty() {
                sp50.push(pct(&mut s, 50.0));
                sp99.push(pct(&mut s, 99.0));
                worst = worst.max(pct(&mut s, 100.0));
            }
            ep50.push(pct(&mut e, 50.0));
            ep99.push(pct(&mut e, 99.0));
        }
        let mut over: Vec<f64> = rows
            .iter()
            .flat_map(|r| r.overhead.iter().copied())
            .collect();
        println!(
            "| {action} | {event} | {n} | {:.1} / {:.1} | {} | {} | {worst:.1} | {:.1} / {:.1} | {lost} |",
            pct(&mut ep50, 50.0),
            pct(&mut ep99, 50.0),
            fmt3(&mut sp50),
            fmt3(&mut sp99),
            pct(&mut over, 50.0),
            pct(&mut over, 99.0),
        );
    }
}

/// All values of one field of every row of every run.
pub fn all_of(runs: &[Vec<Row>], field: impl Fn(&Row) -> &Vec<f64>) -> Vec<f64> {
    runs.iter()
        .flatten()
        .flat_map(|r| field(r).iter().copied())
        .collect()
}

/// dockside's own share: state arrival minus the raw subscriber's arrival of
/// the same event, and the raw arrival itself (p50 / p99 over all runs).
/// Returns (overhead p99, raw p99, state p99).
pub fn report_overhead(title: &str, runs: &[Vec<Row>]) -> (f64, f64, f64) {
    let mut raw = all_of(runs, |r| &r.raw);
    let mut over = all_of(runs, |r| &r.overhead);
    let mut state = all_of(runs, |r| &r.state);
    if raw.is_empty() || over.is_empty() {
        println!("{title}: no event matched the raw subscriber's");
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let (r50, r99) = (pct(&mut raw, 50.0), pct(&mut raw, 99.0));
    let (s50, s99) = (pct(&mut state, 50.0), pct(&mut state, 99.0));
    let (o50, o99, omax) = (
        pct(&mut over, 50.0),
        pct(&mut over, 99.0),
        pct(&mut over, 100.0),
    );
    println!(
        "{title}: n {} — raw /events p50 {r50:.2} / p99 {r99:.2} ms; state p50 {s50:.2} / p99 {s99:.2} ms; state − raw p50 {o50:.2} / p99 {o99:.2} / max {omax:.2} ms",
        over.len(),
    );
    (o99, r99, s99)
}

/// User + system CPU ticks and RSS (kB) of a process.
pub fn proc_stat(pid: u32) -> Option<(u64, u64)> {
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

/// CPU use of a process between two `proc_stat` ticks, in % of one core.
pub fn cpu_pct(ticks0: u64, ticks1: u64, over: Duration) -> f64 {
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    ticks1.saturating_sub(ticks0) as f64 / ticks_per_sec / over.as_secs_f64().max(1e-9) * 100.0
}
