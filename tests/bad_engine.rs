//! Malformed and unexpected JSON from an engine: each bad object is skipped and
//! logged, the stream carries on, and dockside stays up. The real engine never
//! sends garbage, so a small HTTP/1.1 engine stand-in on a unix socket does.

mod common;

use std::time::Duration;

use common::stand_in::{Conn, serve_unix};
use common::*;
use tokio::net::UnixStream;

const GOOD_ID: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const BAD_ID: &str = "2222222222222222222222222222222222222222222222222222222222222222";

fn inspect(name: &str) -> String {
    format!(
        r#"{{"Id":"{GOOD_ID}","Name":"/{name}","Created":"2026-11-01T10:00:00Z","Image":"sha256:abc",
        "State":{{"Status":"running","Running":true,"StartedAt":"2026-11-20T08:00:00Z","FinishedAt":"0001-01-01T00:00:00Z"}},
        "Config":{{"Image":"x:1","Labels":null}},"NetworkSettings":{{"Networks":null,"Ports":null}},"Extra":[1,2,{{}}]}}"#
    )
}

async fn serve(mut s: Conn<UnixStream>, name: String, info: &'static str) -> std::io::Result<()> {
    while let Some(req) = s.next_request().await? {
        match req.path.as_str() {
            "/_ping" => s.json_api("200 OK", "OK", "1.45").await?,
            p if p.ends_with("/version") => {
                s.json_api(
                    "200 OK",
                    r#"{"Version":"99.0","ApiVersion":"1.45","Os":"linux","Arch":"amd64"}"#,
                    "1.45",
                )
                .await?
            }
            p if p.ends_with("/info") => s.json_api("200 OK", info, "1.45").await?,
            p if p.ends_with("/volumes") => {
                s.json_api("200 OK", r#"{"Volumes":null}"#, "1.45").await?
            }
            p if p.ends_with("/containers/json") => {
                let body = format!(
                    r#"[{{"Id":"{GOOD_ID}","Names":["/{name}"],"State":"running"}},{{"Id":5,"Names":"nope"}},{{"Id":"{BAD_ID}","Names":["/{name}-bad"]}},{{"Names":null}}]"#
                );
                s.json_api("200 OK", &body, "1.45").await?
            }
            p if p.contains(GOOD_ID) => s.json_api("200 OK", &inspect(&name), "1.45").await?,
            p if p.contains(BAD_ID) => {
                s.json_api("200 OK", "<html>proxy error</html>", "1.45")
                    .await?
            }
            p if p.ends_with("/events") => {
                s.start_chunked("application/json", None).await?;
                let lines = [
                    "this is not json\n".to_string(),
                    "{\"Type\":5,\"Action\":[]}\n".to_string(),
                    format!(
                        "{{\"Type\":\"container\",\"Action\":\"start\",\"Actor\":{{\"ID\":\"{GOOD_ID}\",\"Attributes\":{{\"name\":\"{name}\"}}}},\"time\":1,\"timeNano\":1000000000}}\n"
                    ),
                    // A line split across chunks.
                    format!(
                        "{{\"Type\":\"container\",\"Action\":\"die\",\"Actor\":{{\"ID\":\"{GOOD_ID}\","
                    ),
                    format!(
                        "\"Attributes\":{{\"name\":\"{name}\"}}}},\"time\":2,\"timeNano\":2000000000}}\n"
                    ),
                ];
                for l in lines {
                    s.chunk(&l).await?;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Keep the stream open, like a quiet engine.
                return s.hold().await;
            }
            _ => {
                s.json_api("404 Not Found", r#"{"message":"page not found"}"#, "1.45")
                    .await?
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_engine_json_is_skipped_and_the_stream_carries_on() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("engine.sock");
    let name = unique("fake-");
    let n2 = name.clone();
    // Even /info is malformed (a string where a number belongs).
    serve_unix(&sock, move |c| {
        serve(c, n2.clone(), r#"{"NCPU":"not a number"}"#)
    });
    let base = unique("t");
    let cfg = format!(
        "[mqtt]\nurl = \"{}\"\nbase_topic = \"{base}\"\n[state]\ndir = \"{}/s\"\n[endpoints.fake]\nurl = \"unix://{}\"\n",
        broker.url(),
        dir.path().display(),
        sock.display()
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let mut d = Dockside::start(dir.path(), &cfg);
    let t = Duration::from_secs(15);
    let s = c
        .wait_state(&format!("{base}/fake/{name}/state"), t, |s| {
            s["running"] == true
        })
        .await;
    assert_eq!(s["id"], GOOD_ID);
    assert_eq!(s["finished_at"], serde_json::Value::Null);
    c.wait_latest(&format!("{base}/fake/status"), t, |m| m.text() == "online")
        .await;
    let events = format!("{base}/fake/events");
    c.wait_until("both good events", t, |all| {
        all.iter().filter(|m| m.topic == events).count() == 2
    })
    .await;
    let actions: Vec<String> = c
        .on(&events)
        .iter()
        .map(|m| m.json()["action"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(actions, ["start", "die"]);
    assert!(c.latest(&format!("{base}/fake/{name}-bad/state")).is_none());
    assert!(d.is_running());
    let log = d.log_text();
    assert!(log.contains("skipping a malformed event"), "{log}");
    assert!(
        log.contains("skipping a malformed container list entry"),
        "{log}"
    );
    assert!(log.contains("skipping a malformed container"), "{log}");
    assert!(log.contains("cannot read engine info"), "{log}");
    let info = c.latest(&format!("{base}/fake/info")).expect("info").json();
    assert_eq!(info["reachable"], true);
    assert_eq!(info["cpus"], serde_json::Value::Null);
    assert_eq!(info["docker_version"], "99.0");
}
