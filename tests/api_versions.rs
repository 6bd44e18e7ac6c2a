//! API version negotiation against engines the host's 20.10 cannot play:
//! a proxy that drops `_ping`'s Api-Version header, an engine whose floor is
//! above what `_ping` suggested (400 "client version … is too old": dockside
//! renegotiates once), and engines older or newer than dockside speaks (the
//! endpoint is offline with the reason in `<ep>/info`, retried with backoff,
//! the other endpoint unaffected). A small HTTP/1.1 engine stand-in on a unix
//! socket answers like Docker 28/29 does.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::stand_in::{Conn, serve_unix};
use common::*;
use tokio::net::UnixStream;

const ID: &str = "3333333333333333333333333333333333333333333333333333333333333333";

#[derive(Clone)]
struct Engine {
    /// `Api-Version` on every answer (None: a proxy that drops it).
    header: Option<&'static str>,
    /// What the engine speaks: `ApiVersion` and `MinAPIVersion` of `/version`.
    max: (u32, u32),
    min: (u32, u32),
    name: String,
    pings: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
}

fn api(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim_start_matches('v').split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl Engine {
    async fn respond(
        &self,
        s: &mut Conn<UnixStream>,
        status: &str,
        body: &str,
    ) -> std::io::Result<()> {
        s.json_with(status, body, self.header).await
    }

    async fn serve(self, mut s: Conn<UnixStream>) -> std::io::Result<()> {
        while let Some(req) = s.next_request().await? {
            let path = req.path;
            let (min, max) = (self.min, self.max);
            let fmt = |v: (u32, u32)| format!("{}.{}", v.0, v.1);
            // Versioned paths outside the engine's range are refused as Docker does.
            let version = path
                .split('/')
                .nth(1)
                .filter(|p| p.starts_with('v'))
                .and_then(api);
            if let Some(v) = version
                && (v < min || v > max)
            {
                self.refused.fetch_add(1, Ordering::Relaxed);
                let msg = if v < min {
                    format!(
                        "client version {} is too old. Minimum supported API version is {}, please upgrade your client to a newer version",
                        fmt(v),
                        fmt(min)
                    )
                } else {
                    format!(
                        "client version {} is too new. Maximum supported API version is {}",
                        fmt(v),
                        fmt(max)
                    )
                };
                self.respond(
                    &mut s,
                    "400 Bad Request",
                    &format!(r#"{{"message":"{msg}"}}"#),
                )
                .await?;
                continue;
            }
            let rest = match version {
                Some(_) => path
                    .splitn(3, '/')
                    .nth(2)
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default(),
                None => path.clone(),
            };
            match rest.as_str() {
                "/_ping" => {
                    self.pings.fetch_add(1, Ordering::Relaxed);
                    self.respond(&mut s, "200 OK", "OK").await?
                }
                "/version" => {
                    let body = format!(
                        r#"{{"Version":"29.0.1","ApiVersion":"{}","MinAPIVersion":"{}","Os":"linux","Arch":"amd64","NewField":{{"x":[1]}}}}"#,
                        fmt(max),
                        fmt(min)
                    );
                    self.respond(&mut s, "200 OK", &body).await?
                }
                "/info" => {
                    self.respond(
                        &mut s,
                        "200 OK",
                        r#"{"NCPU":2,"MemTotal":1024,"Images":1,"ServerVersion":"29.0.1","OSType":"linux","Architecture":"x86_64","SystemTime":"2026-12-01T10:00:00.000000000Z","Driver":"overlayfs","DriverStatus":[["driver-type","io.containerd.snapshotter.v1"]],"Containers":1,"SomethingNew":true}"#,
                    )
                    .await?
                }
                "/volumes" => self.respond(&mut s, "200 OK", r#"{"Volumes":[]}"#).await?,
                "/containers/json" => {
                    let body = format!(
                        r#"[{{"Id":"{ID}","Names":["/{}"],"State":"running","ImageManifestDescriptor":{{"digest":"sha256:1"}}}}]"#,
                        self.name
                    );
                    self.respond(&mut s, "200 OK", &body).await?
                }
                p if p.contains(ID) => {
                    let body = format!(
                        r#"{{"Id":"{ID}","Name":"/{}","Created":"2026-11-01T10:00:00Z","Image":"sha256:abc","ImageManifestDescriptor":{{"digest":"sha256:abc"}},
                        "State":{{"Status":"running","Running":true,"StartedAt":"2026-11-20T08:00:00Z","FinishedAt":"0001-01-01T00:00:00Z"}},
                        "Config":{{"Image":"x:1","Labels":null}},"NetworkSettings":{{"Networks":null,"Ports":null}}}}"#,
                        self.name
                    );
                    self.respond(&mut s, "200 OK", &body).await?
                }
                "/events" => {
                    s.start_chunked("application/json", None).await?;
                    // An action a newer engine may send: ignored, never an error.
                    let l = format!(
                        "{{\"Type\":\"container\",\"Action\":\"future-action\",\"Actor\":{{\"ID\":\"{ID}\",\"Attributes\":{{\"name\":\"{}\"}}}},\"time\":1,\"timeNano\":1000000000,\"scope\":\"local\"}}\n",
                        self.name
                    );
                    s.chunk(&l).await?;
                    return s.hold().await;
                }
                _ => {
                    self.respond(&mut s, "404 Not Found", r#"{"message":"page not found"}"#)
                        .await?
                }
            }
        }
        Ok(())
    }
}

fn engine(dir: &std::path::Path, file: &str, e: Engine) -> std::path::PathBuf {
    let sock = dir.join(file);
    serve_unix(&sock, move |c| e.clone().serve(c));
    sock
}

fn new_engine(header: Option<&'static str>, max: (u32, u32), min: (u32, u32)) -> Engine {
    Engine {
        header,
        max,
        min,
        name: unique("api-"),
        pings: Arc::new(AtomicUsize::new(0)),
        refused: Arc::new(AtomicUsize::new(0)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_follows_the_engine_and_refuses_what_it_cannot_speak() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tmp");
    // No Api-Version header at all (a proxy dropped it), engine 1.44–1.51.
    let hidden = new_engine(None, (1, 51), (1, 44));
    // `_ping` says 1.41 (a stale proxy), the engine refuses below 1.44.
    let stale = new_engine(Some("1.41"), (1, 51), (1, 44));
    // Older than dockside speaks (1.40).
    let old = new_engine(Some("1.30"), (1, 30), (1, 12));
    // Newer than dockside speaks: its floor is above 1.53.
    let future = new_engine(Some("1.70"), (1, 70), (1, 60));
    let sockets: Vec<(&str, std::path::PathBuf)> = vec![
        ("hidden", engine(dir.path(), "hidden.sock", hidden.clone())),
        ("stale", engine(dir.path(), "stale.sock", stale.clone())),
        ("old", engine(dir.path(), "old.sock", old.clone())),
        ("future", engine(dir.path(), "future.sock", future.clone())),
    ];
    let base = unique("t");
    let mut cfg = format!(
        "[mqtt]\nurl = \"{}\"\nbase_topic = \"{base}\"\n[state]\ndir = \"{}/s\"\n[updates]\nenabled = false\n",
        broker.url(),
        dir.path().display()
    );
    for (ep, sock) in &sockets {
        cfg.push_str(&format!(
            "[endpoints.{ep}]\nurl = \"unix://{}\"\n",
            sock.display()
        ));
    }
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let mut d = Dockside::start(dir.path(), &cfg);
    let t = Duration::from_secs(20);

    for (ep, e) in [("hidden", &hidden), ("stale", &stale)] {
        c.wait_latest(&format!("{base}/{ep}/status"), t, |m| m.text() == "online")
            .await;
        let s = c
            .wait_state(&format!("{base}/{ep}/{}/state", e.name), t, |s| {
                s["running"] == true
            })
            .await;
        assert_eq!(s["id"], ID);
        let info = c
            .wait_latest(&format!("{base}/{ep}/info"), t, |m| {
                m.json()["api_version"] == "1.51"
            })
            .await
            .json();
        assert_eq!(info["docker_version"], "29.0.1", "{info}");
        assert_eq!(info["reachable"], true);
        assert!(info.get("error").is_none(), "{info}");
    }
    // The stale one was refused once, renegotiated, and not refused again.
    assert!(stale.refused.load(Ordering::Relaxed) >= 1);
    let log = d.log_text();
    assert!(log.contains("renegotiated"), "{log}");

    for (ep, why) in [("old", "too old"), ("future", "1.60 or newer")] {
        let info = c
            .wait_latest(&format!("{base}/{ep}/info"), t, |m| {
                m.json()["error"].is_string()
            })
            .await
            .json();
        assert_eq!(info["reachable"], false);
        assert!(
            info["error"].as_str().is_some_and(|e| e.contains(why)),
            "{ep}: {info}"
        );
        assert_eq!(
            c.latest(&format!("{base}/{ep}/status")).map(|m| m.text()),
            Some("offline".to_string())
        );
    }
    // Retried with backoff (200 ms doubling up to 30 s), not in a tight loop.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (p, f) = (
        old.pings.load(Ordering::Relaxed),
        future.pings.load(Ordering::Relaxed),
    );
    assert!(p <= 8 && f <= 8, "pings in ~10 s: old {p}, future {f}");
    assert!(d.is_running());
    // A new event action from a newer engine is not an error.
    assert!(!d.log_text().contains("skipping a malformed event"));
}
