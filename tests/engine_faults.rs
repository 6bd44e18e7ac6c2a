//! SPEC §13 against an engine that misbehaves the way real ones do under
//! load (a small HTTP/1.1 stand-in on a unix socket; the real engine will not
//! do these on demand):
//! - stats: one container's call never answers, one stopped between the
//!   list and the call (the engine's zero answer), one answers garbage; the
//!   good one is still sampled, with `stats.concurrency = 1`;
//! - logs: the stream is cut in the middle of a frame: the lines before it
//!   come back, and what arrived of the cut one, marked `truncated`;
//! - disk: `system df` is refused `DF_REFUSALS` times ("a disk usage
//!   operation is already running", Docker 20.10 with another client's
//!   running) and then answers: `disk` shows up in the first minute.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::stand_in::{Conn, serve_unix};
use common::*;
use tokio::net::UnixStream;

const T: Duration = Duration::from_secs(60);
/// Busy answers to `system df` before the first summary.
const DF_REFUSALS: usize = 10;
/// (id, name suffix, stats behaviour)
const CONTAINERS: &[(&str, &str)] = &[
    (
        "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
        "good",
    ),
    (
        "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
        "hang",
    ),
    (
        "c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3",
        "gone",
    ),
    (
        "d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4d4",
        "junk",
    ),
];

fn inspect(id: &str, name: &str) -> String {
    format!(
        r#"{{"Id":"{id}","Name":"/{name}","Created":"2026-11-01T10:00:00Z","Image":"sha256:abc",
        "State":{{"Status":"running","Running":true,"StartedAt":"2026-11-20T08:00:00Z","FinishedAt":"0001-01-01T00:00:00Z"}},
        "Config":{{"Image":"x:1","Labels":{{}},"Tty":false}},"NetworkSettings":{{"Networks":null,"Ports":null}}}}"#
    )
}

fn stats_body(n: usize) -> String {
    let total = 1_000_000_000u64 * (n as u64 + 1);
    let system = 10_000_000_000u64 * (n as u64 + 1);
    format!(
        r#"{{"read":"2026-12-01T10:00:00Z","cpu_stats":{{"cpu_usage":{{"total_usage":{total}}},"system_cpu_usage":{system},"online_cpus":2}},
        "precpu_stats":{{"cpu_usage":{{"total_usage":{}}},"system_cpu_usage":{}}},
        "memory_stats":{{"usage":10485760,"limit":104857600,"stats":{{"total_inactive_file":1048576}}}},"pids_stats":{{"current":2}}}}"#,
        total - 500_000_000,
        system - 10_000_000_000
    )
}

const STOPPED_STATS: &str = r#"{"read":"0001-01-01T00:00:00Z","preread":"0001-01-01T00:00:00Z","pids_stats":{},"blkio_stats":{},"cpu_stats":{"cpu_usage":{"total_usage":0}},"precpu_stats":{"cpu_usage":{"total_usage":0}},"memory_stats":{}}"#;

async fn respond(s: &mut Conn<UnixStream>, status: &str, body: &str) -> std::io::Result<()> {
    s.json_api(status, body, "1.45").await
}

#[derive(Default)]
struct Counts {
    df: AtomicUsize,
    good_stats: AtomicUsize,
    hang_stats: AtomicUsize,
}

async fn serve(
    mut s: Conn<UnixStream>,
    prefix: String,
    counts: Arc<Counts>,
) -> std::io::Result<()> {
    while let Some(req) = s.next_request().await? {
        let path = req.path;
        let who = CONTAINERS.iter().find(|(id, _)| path.contains(id));
        match (path.as_str(), who) {
            ("/_ping", _) => respond(&mut s, "200 OK", "OK").await?,
            (p, _) if p.ends_with("/version") => {
                respond(
                    &mut s,
                    "200 OK",
                    r#"{"Version":"28.5.2","ApiVersion":"1.51","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}"#,
                )
                .await?
            }
            (p, _) if p.ends_with("/info") => {
                respond(&mut s, "200 OK", r#"{"NCPU":2,"MemTotal":1000,"Images":1}"#).await?
            }
            (p, _) if p.ends_with("/volumes") => {
                respond(&mut s, "200 OK", r#"{"Volumes":[]}"#).await?
            }
            (p, _) if p.ends_with("/services") => {
                respond(&mut s, "503 Service Unavailable", r#"{"message":"This node is not a swarm manager."}"#).await?
            }
            (p, _) if p.ends_with("/system/df") => {
                if counts.df.fetch_add(1, Ordering::SeqCst) < DF_REFUSALS {
                    respond(
                        &mut s,
                        "500 Internal Server Error",
                        r#"{"message":"a disk usage operation is already running"}"#,
                    )
                    .await?
                } else {
                    respond(&mut s, "200 OK", r#"{"LayersSize":4096,"Images":[{"Id":"sha256:abc","Size":4096,"SharedSize":0,"Containers":1}],"Containers":[],"Volumes":[],"BuildCache":[]}"#).await?
                }
            }
            (p, _) if p.ends_with("/containers/json") => {
                let list: Vec<String> = CONTAINERS
                    .iter()
                    .map(|(id, n)| format!(r#"{{"Id":"{id}","Names":["/{prefix}-{n}"],"State":"running"}}"#))
                    .collect();
                respond(&mut s, "200 OK", &format!("[{}]", list.join(","))).await?
            }
            (p, Some((_, "good"))) if p.ends_with("/stats") => {
                let n = counts.good_stats.fetch_add(1, Ordering::SeqCst);
                respond(&mut s, "200 OK", &stats_body(n)).await?
            }
            (p, Some(_)) if p.ends_with("/stats") && p.contains("b2b2") => {
                counts.hang_stats.fetch_add(1, Ordering::SeqCst);
                return s.hold().await;
            }
            (p, Some((_, "gone"))) if p.ends_with("/stats") => {
                respond(&mut s, "200 OK", STOPPED_STATS).await?
            }
            (p, Some((_, "junk"))) if p.ends_with("/stats") => {
                respond(&mut s, "200 OK", "<html>502 Bad Gateway</html>").await?
            }
            (p, Some(_)) if p.ends_with("/logs") => {
                // Two whole stdout frames, then a frame header promising 100
                // bytes of stderr and 10 of them; then the connection ends.
                s.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-stream\r\nConnection: close\r\n\r\n").await?;
                for line in [
                    "2026-12-01T10:00:00.000000001Z first\n",
                    "2026-12-01T10:00:01.000000001Z second\n",
                ] {
                    let mut f = vec![1u8, 0, 0, 0];
                    f.extend_from_slice(&(line.len() as u32).to_be_bytes());
                    f.extend_from_slice(line.as_bytes());
                    s.raw(&f).await?;
                }
                let mut f = vec![2u8, 0, 0, 0];
                f.extend_from_slice(&100u32.to_be_bytes());
                f.extend_from_slice(b"2026-12-01");
                s.raw(&f).await?;
                return Ok(());
            }
            (_, Some((id, n))) => respond(&mut s, "200 OK", &inspect(id, &format!("{prefix}-{n}"))).await?,
            (p, _) if p.ends_with("/events") => {
                s.start_chunked("application/json", None).await?;
                // A quiet engine.
                return s.hold().await;
            }
            _ => respond(&mut s, "404 Not Found", r#"{"message":"page not found"}"#).await?,
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_logs_and_disk_survive_a_misbehaving_engine() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("engine.sock");
    let prefix = unique("ef");
    let counts = Arc::new(Counts::default());
    let (p2, c2) = (prefix.clone(), counts.clone());
    serve_unix(&sock, move |c| serve(c, p2.clone(), c2.clone()));
    let base = unique("t");
    let cfg = format!(
        "[mqtt]\nurl = \"{}\"\nbase_topic = \"{base}\"\n[state]\ndir = \"{}/s\"\n[endpoints.fake]\nurl = \"unix://{}\"\n[stats]\nenabled = true\ninterval = \"5s\"\nconcurrency = 1\n[commands]\nallow = [\"start\", \"stop\", \"logs\"]\n[log]\nlevel = \"debug\"\n",
        broker.url(),
        dir.path().display(),
        sock.display()
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let mut d = Dockside::start(dir.path(), &cfg);
    let ct = |n: &str| format!("{base}/fake/{prefix}-{n}");

    // disk: refused as Docker 20.10 does while other clients' `system df`
    // run, again and again; still there within the first minute (a doubling
    // back-off took 2+4+…+512 s).
    let started = std::time::Instant::now();
    let info = c
        .wait_latest(&format!("{base}/fake/info"), T, |m| {
            m.json()["disk"].is_object()
        })
        .await
        .json();
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "disk after {:?}",
        started.elapsed()
    );
    assert_eq!(info["disk"]["images_bytes"], 4096, "{info}");
    assert_eq!(info["services"], 0, "{info}");
    assert!(counts.df.load(Ordering::SeqCst) > DF_REFUSALS);

    // logs: the lines before the cut, marked truncated.
    c.publish(
        &format!("{}/set", ct("good")),
        br#"{"action":"logs","request_id":"l1"}"#,
        false,
    )
    .await;
    let r = c
        .wait_latest(&format!("{}/result", ct("good")), T, |m| {
            m.json()["request_id"] == "l1"
        })
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    let texts: Vec<&str> = r["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter_map(|l| l["text"].as_str())
        .collect();
    // What arrived of the cut frame is shown too, without a time.
    assert_eq!(texts, ["first", "second", "2026-12-01"], "{r}");
    assert!(r["logs"][2]["time"].is_null(), "{r}");
    assert_eq!(r["truncated"], true, "{r}");

    // stats: the good one is sampled again and again although another's
    // call hangs and the bound is one call at a time.
    let good = format!("{}/stats", ct("good"));
    c.wait_until("three good samples", Duration::from_secs(45), |all| {
        all.iter()
            .filter(|m| m.topic == good && !m.payload.is_empty())
            .count()
            >= 3
    })
    .await;
    let s = c.latest(&good).expect("stats").json();
    assert_eq!(s["memory_bytes"], 10485760 - 1048576, "{s}");
    assert_eq!(s["pids"], 2, "{s}");
    assert!(s["cpu_percent"].is_number(), "{s}");
    assert!(
        counts.hang_stats.load(Ordering::SeqCst) >= 1,
        "the hanging call was made"
    );
    for n in ["hang", "gone", "junk"] {
        assert!(
            c.latest(&format!("{}/stats", ct(n))).is_none(),
            "{n} has no figures"
        );
    }
    assert!(d.is_running());
    let log = d.log_text();
    let hang = format!("{prefix}-hang");
    assert!(
        log.lines()
            .any(|l| l.contains("cannot read container stats") && l.contains(&hang)),
        "the hanging call is logged: {log}"
    );
    let junk = format!("{prefix}-junk");
    assert!(
        log.lines()
            .any(|l| l.contains("cannot read container stats") && l.contains(&junk)),
        "the garbage is logged"
    );
    let gone = format!("{prefix}-gone");
    assert!(
        log.lines()
            .any(|l| l.contains("no stats: the container is not running") && l.contains(&gone)),
        "the stopped one is skipped with a line"
    );
    // The endpoint was never stalled: its state is still there and current.
    c.wait_state(&format!("{}/state", ct("good")), T, |s| {
        s["running"] == true
    })
    .await;
}
