//! The two phases that push dockside (issue 26): the event rate it mirrors
//! while keeping a state p99 ≤ 25 ms, and a thousand containers started and
//! stopped at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dockside::docker::DockerClient;
use tokio::sync::Semaphore;

use crate::measure::{
    Arrival, Row, Span, all_of, analyze, cpu_pct, event_ns, pct, proc_stat, wait_for, wall_ns,
};
use crate::{Bench, IMAGE, act, burst, burst_limited};

/// One step of the throughput phase.
pub struct Step {
    pub target: u32,
    /// Container events a second the raw subscriber saw from our containers.
    pub engine_rate: f64,
    /// Of those, how many never reached the events topic.
    pub unmirrored: usize,
    /// Event → events topic, p99 (ms).
    pub mirror_p99: f64,
    /// The probe's pause/unpause: event → state p50 / p99 / max (ms), lost.
    pub state: (f64, f64, f64, usize),
    /// State − raw arrival p99 (ms).
    pub overhead_p99: f64,
    pub dockside_cpu: f64,
    pub engine_cpu: Option<f64>,
    /// Execs the generator could not launch (64 already in flight).
    pub held_back: usize,
}

impl Step {
    pub fn meets(&self) -> bool {
        self.state.1 <= 25.0 && self.state.3 == 0 && self.unmirrored == 0
    }
}

/// The engine's pid, to report its CPU beside dockside's (read, never touched).
fn engine_pid() -> Option<u32> {
    std::fs::read_to_string("/var/run/docker.pid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Creates an exec instance (never started) in the containers, round robin,
/// `per_sec` times a second, at most 64 requests at once: one `exec_create`
/// event each, the cheapest container event the engine sends (a started exec
/// costs the engine a runc process: about 40 a second on two cores). The
/// healthcheck containers add their exec_start/exec_die/health_status events.
/// Returns how many it could not launch.
async fn exec_load(
    engine: Arc<DockerClient>,
    ids: Vec<String>,
    per_sec: f64,
    until: Instant,
) -> usize {
    let gate = Arc::new(Semaphore::new(64));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut i, mut held_back) = (0usize, 0usize);
    while Instant::now() < until {
        tick.tick().await;
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            held_back += 1;
            continue;
        };
        let (engine, id) = (engine.clone(), ids[i % ids.len()].clone());
        i += 1;
        tokio::spawn(async move {
            let _ = engine
                .exec_create(&id, &serde_json::json!({"Cmd": ["true"]}))
                .await;
            drop(permit);
        });
    }
    held_back
}

/// Pauses and unpauses `probe` every 50 ms until `until`.
async fn probe_loop(engine: Arc<DockerClient>, probe: String, until: Instant) {
    let mut paused = false;
    while Instant::now() < until {
        let action = if paused { "unpause" } else { "pause" };
        if act(&engine, &probe, action).await.is_ok() {
            paused = !paused;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if paused {
        let _ = act(&engine, &probe, "unpause").await;
    }
}

impl Bench {
    /// Raises the exec rate step by step (all containers running, the probe
    /// paused and unpaused every 50 ms) until the engine cannot produce
    /// what was asked or the probe's state p99 passes 25 ms.
    pub async fn throughput(&self, rates: &[u32], secs: u64) -> Result<Vec<Step>, String> {
        burst(&self.engine, &self.ids, "start").await;
        let probe = self.ids[0].clone();
        let load: Vec<String> = self.ids[1..].to_vec();
        let ours: HashSet<&str> = self.ids.iter().map(String::as_str).collect();
        let mut steps = Vec::new();
        for &target in rates {
            println!("throughput: {target} events/s for {secs} s…");
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.arrivals.lock().map_err(|e| e.to_string())?.clear();
            let (from, t0) = (wall_ns(), Instant::now());
            let until = t0 + Duration::from_secs(secs);
            let cpu0 = proc_stat(self.pid).map(|s| s.1).unwrap_or(0);
            let eng0 = engine_pid().and_then(proc_stat).map(|s| s.1);
            let generator = tokio::spawn(exec_load(
                self.engine.clone(),
                load.clone(),
                f64::from(target),
                until,
            ));
            probe_loop(self.engine.clone(), probe.clone(), until).await;
            let held_back = generator.await.unwrap_or(0);
            let (to, elapsed) = (wall_ns(), t0.elapsed());
            let cpu1 = proc_stat(self.pid).map(|s| s.1).unwrap_or(0);
            let eng1 = engine_pid().and_then(proc_stat).map(|s| s.1);
            // Let the stragglers arrive before counting.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let all = self.arrivals.lock().map_err(|e| e.to_string())?.clone();
            let spans = [Span {
                id: probe.clone(),
                action: "probe",
                from,
                to,
            }];
            let rows = analyze(&all, &self.raw, &self.events_topic, &spans);
            let (engine_events, unmirrored, mirror_p99) = self.mirroring(&all, &ours, from, to);
            let step = Step {
                target,
                engine_rate: engine_events as f64 / elapsed.as_secs_f64(),
                unmirrored,
                mirror_p99,
                state: probe_state(&rows),
                overhead_p99: pct(
                    &mut all_of(std::slice::from_ref(&rows), |r| &r.overhead),
                    99.0,
                ),
                dockside_cpu: cpu_pct(cpu0, cpu1, elapsed),
                engine_cpu: eng0.zip(eng1).map(|(a, b)| cpu_pct(a, b, elapsed)),
                held_back,
            };
            print_step(&step);
            let engine_bound = step.engine_rate < 0.8 * f64::from(target);
            let over = !step.meets();
            steps.push(step);
            if engine_bound || over {
                break;
            }
        }
        Ok(steps)
    }

    /// Container events of ours the raw subscriber saw in [from, to), how
    /// many of them never reached the events topic, and event → topic p99.
    fn mirroring(
        &self,
        all: &[Arrival],
        ours: &HashSet<&str>,
        from: i128,
        to: i128,
    ) -> (usize, usize, f64) {
        let raw = self.raw.lock().map(|m| m.clone()).unwrap_or_default();
        let seen: Vec<&(String, String, i128)> = raw
            .keys()
            .filter(|(id, _, t)| ours.contains(id.as_str()) && *t >= from && *t < to)
            .collect();
        let mut mirrored: HashSet<(&str, &str, i128)> = HashSet::new();
        let mut lat = Vec::new();
        for a in all.iter().filter(|a| a.topic == self.events_topic) {
            if let (Some(id), Some(action), Some(t)) = (
                a.json["id"].as_str(),
                a.json["action"].as_str(),
                event_ns(a),
            ) && t >= from
                && t < to
            {
                mirrored.insert((id, action, t));
                lat.push((a.wall_ns - t) as f64 / 1e6);
            }
        }
        let unmirrored = seen
            .iter()
            .filter(|(id, action, t)| !mirrored.contains(&(id.as_str(), action.as_str(), *t)))
            .count();
        (seen.len(), unmirrored, pct(&mut lat, 99.0))
    }
}

fn probe_state(rows: &[Row]) -> (f64, f64, f64, usize) {
    let mut s = all_of(&[rows.to_vec()], |r| &r.state);
    let lost = rows.iter().map(|r| r.lost).sum();
    (
        pct(&mut s, 50.0),
        pct(&mut s, 99.0),
        pct(&mut s, 100.0),
        lost,
    )
}

fn print_step(s: &Step) {
    println!(
        "| {} | {:.0} | {} | {:.1} | {:.1} / {:.1} / {:.1} | {} | {:.1} | {:.1} % | {} | {} |",
        s.target,
        s.engine_rate,
        s.unmirrored,
        s.mirror_p99,
        s.state.0,
        s.state.1,
        s.state.2,
        s.state.3,
        s.overhead_p99,
        s.dockside_cpu,
        s.engine_cpu.map_or("—".into(), |c| format!("{c:.0} %")),
        s.held_back,
    );
}

pub fn print_steps(steps: &[Step]) {
    println!();
    println!(
        "throughput (exec_create events from the running containers, the healthchecks running; probe paused/unpaused every 50 ms):"
    );
    println!(
        "| asked events/s | engine events/s | not mirrored | event → events topic p99 ms | probe state p50 / p99 / max ms | lost | state − raw p99 ms | dockside CPU | engine CPU | execs held back |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in steps {
        print_step(s);
    }
    let best = steps
        .iter()
        .filter(|s| s.meets())
        .map(|s| s.engine_rate)
        .fold(0.0, f64::max);
    let limit = match steps.last() {
        Some(s) if s.engine_rate < 0.8 * f64::from(s.target) => format!(
            "the engine: asked {} events/s, it produced {:.0} (dockside CPU {:.1} %)",
            s.target, s.engine_rate, s.dockside_cpu
        ),
        Some(s) if !s.meets() => format!(
            "the state p99 passed 25 ms at {:.0} events/s (dockside CPU {:.1} %)",
            s.engine_rate, s.dockside_cpu
        ),
        _ => "not reached: every step asked was met".into(),
    };
    println!(
        "highest event rate mirrored with state p99 ≤ 25 ms: {best:.0} events/s; limit: {limit}"
    );
}

/// The thousand-container phase's figures.
pub struct Big {
    pub n: usize,
    pub rows: Vec<Row>,
    pub wrong_final: usize,
    pub rss_max_kb: u64,
    pub start_secs: f64,
    pub stop_secs: f64,
    /// Calls the engine refused or failed, and the first error.
    pub start_failed: (usize, Option<String>),
    pub stop_failed: (usize, Option<String>),
}

impl Bench {
    /// Creates `n` more containers, starts them all at once (64 requests in
    /// flight), then stops them all; removes them at the end.
    pub async fn thousand(&self, n: usize) -> Result<Big, String> {
        println!("{n} containers: creating…");
        let names: Vec<String> = (0..n).map(|i| format!("{}-k{i}", self.prefix)).collect();
        let ids = create_all(&self.engine, &names).await?;
        let state_of = |i: usize| format!("{}/local/{}/state", self.base, names[i]);
        let all_states: HashSet<String> = (0..n).map(state_of).collect();
        wait_for(&self.arrivals, Duration::from_secs(120), |all| {
            all.iter()
                .filter(|a| all_states.contains(&a.topic))
                .map(|a| &a.topic)
                .collect::<HashSet<_>>()
                .len()
                >= n
        })
        .await;
        let rss = RssWatch::start(self.pid);
        self.arrivals.lock().map_err(|e| e.to_string())?.clear();
        let from = wall_ns();
        // 16 requests in flight: the engine works through them in turn either way,
        // and a thousand at once would only time out in its queue.
        let t = Instant::now();
        let start_failed = burst_limited(&self.engine, &ids, "start", 16).await;
        let start_secs = t.elapsed().as_secs_f64();
        self.wait_events(&ids, "start").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mid = wall_ns();
        let t = Instant::now();
        let stop_failed = burst_limited(&self.engine, &ids, "stop", 16).await;
        let stop_secs = t.elapsed().as_secs_f64();
        self.wait_events(&ids, "die").await;
        tokio::time::sleep(Duration::from_secs(8)).await;
        let to = wall_ns();
        let rss_max_kb = rss.stop().await;
        let all = self.arrivals.lock().map_err(|e| e.to_string())?.clone();
        let spans: Vec<Span> = ids
            .iter()
            .flat_map(|id| {
                [
                    Span {
                        id: id.clone(),
                        action: "start all",
                        from,
                        to: mid,
                    },
                    Span {
                        id: id.clone(),
                        action: "stop all",
                        from: mid,
                        to,
                    },
                ]
            })
            .collect();
        let rows = analyze(&all, &self.raw, &self.events_topic, &spans);
        let mut last: std::collections::HashMap<&str, &serde_json::Value> = Default::default();
        for a in all.iter().filter(|a| all_states.contains(&a.topic)) {
            last.insert(a.topic.as_str(), &a.json);
        }
        let wrong_final = (0..n)
            .filter(|&i| {
                last.get(state_of(i).as_str())
                    .is_none_or(|s| s["state"] != "exited")
            })
            .count();
        println!("{n} containers: removing…");
        remove_all(&self.engine, &ids).await;
        Ok(Big {
            n,
            rows,
            wrong_final,
            rss_max_kb,
            start_secs,
            stop_secs,
            start_failed,
            stop_failed,
        })
    }
}

impl Bench {
    /// Until every container's `action` event reached the events topic (at most 2 min).
    async fn wait_events(&self, ids: &[String], action: &str) {
        let ok = wait_for(&self.arrivals, Duration::from_secs(120), |all| {
            crate::count_events(all, &self.events_topic, ids, action) >= ids.len()
        })
        .await;
        if !ok {
            eprintln!("not every {action} event arrived on the events topic");
        }
    }
}

async fn create_all(engine: &Arc<DockerClient>, names: &[String]) -> Result<Vec<String>, String> {
    let gate = Arc::new(Semaphore::new(16));
    let body = serde_json::json!({"Image": IMAGE});
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (engine, name, body, gate) =
                (engine.clone(), name.clone(), body.clone(), gate.clone());
            tokio::spawn(async move {
                let _p = gate.acquire_owned().await;
                engine
                    .create_container(&name, &body)
                    .await
                    .map_err(|e| format!("create {name}: {e}"))
            })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.map_err(|e| e.to_string())??);
    }
    Ok(ids)
}

async fn remove_all(engine: &Arc<DockerClient>, ids: &[String]) {
    let engine = engine.clone();
    let tasks = crate::each_limited(ids, 16, move |id| {
        let engine = engine.clone();
        async move {
            let _ = engine.remove_container(&id).await;
        }
    });
    for t in tasks {
        let _ = t.await;
    }
}

/// Samples a process's RSS every 100 ms; `stop` gives the highest.
struct RssWatch {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let (stop, mut rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut max = 0;
            loop {
                if let Some((rss, _)) = proc_stat(pid) {
                    max = max.max(rss);
                }
                tokio::select! {
                    _ = &mut rx => return max,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

pub fn print_big(b: &Big) {
    crate::measure::report(
        &format!("{} containers started at once, then stopped at once", b.n),
        std::slice::from_ref(&b.rows),
    );
    let lost: usize = b.rows.iter().map(|r| r.lost).sum();
    let mut state = all_of(std::slice::from_ref(&b.rows), |r| &r.state);
    println!(
        "{} containers: {lost} transitions without their state, {} wrong final states; state p50 {:.1} / p99 {:.1} / max {:.1} ms (target p99 ≤ 1,000 ms); dockside RSS at most {:.1} MB (target ≤ 30 MB); the engine took {:.1} s to start them and {:.1} s to stop them",
        b.n,
        b.wrong_final,
        pct(&mut state, 50.0),
        pct(&mut state, 99.0),
        pct(&mut state, 100.0),
        b.rss_max_kb as f64 / 1024.0,
        b.start_secs,
        b.stop_secs,
    );
    for (what, (n, e)) in [("start", &b.start_failed), ("stop", &b.stop_failed)] {
        if *n > 0 {
            println!(
                "{n} {what} calls failed at the engine (not dockside's): the first: {}",
                e.as_deref().unwrap_or("?")
            );
        }
    }
    crate::measure::report_overhead(
        &format!("overhead, {} containers", b.n),
        std::slice::from_ref(&b.rows),
    );
}
