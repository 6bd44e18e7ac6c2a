//! `logs` on demand (SPEC §13) against the real engine: a container writing
//! known lines to stdout and stderr, the same with a TTY, `lines` and `since`,
//! a huge line and binary output (cut and `truncated`, shown lossily), bad
//! arguments refused.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_plain_and_tty_containers_with_limits() {
    let broker = Broker::start();
    let ct = Containers::new(&unique("dsl"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let cfg = format!(
        "{}\n[commands]\nallow = [\"start\", \"stop\", \"logs\"]\nmin_interval = \"0s\"\n",
        base_config(&broker, &base, &dir.path().join("state"), &ct.prefix)
    );
    let plain = ct.name("plain");
    let tty = ct.name("tty");
    let wild = ct.name("wild");
    // Apart in time: the engine copies stdout and stderr separately.
    let script = "echo out1; sleep 0.3; echo err1 >&2; sleep 0.3; echo out2; sleep 3600";
    docker(&["run", "-d", "--name", &plain, IMAGE, "sh", "-c", script]);
    docker(&["run", "-d", "-t", "--name", &tty, IMAGE, "sh", "-c", script]);
    docker(&[
        "run",
        "-d",
        "--name",
        &wild,
        IMAGE,
        "sh",
        "-c",
        "head -c 100000 /dev/zero | tr '\\0' x; echo; printf 'bin \\377\\376 end\\n'; sleep 3600",
    ]);
    // What users saw over the cap: 1,000 lines → a 73.6 KB result, 200 KB of
    // output → 111 KB. Line `i` ends with its number, to find the newest.
    let many = ct.name("many");
    let big = ct.name("big");
    for (n, width) in [(&many, 50), (&big, 190)] {
        let script = format!(
            "i=0; while [ $i -lt 1100 ]; do printf '%0{width}d\\n' $i; i=$((i+1)); done; sleep 3600"
        );
        docker(&["run", "-d", "--name", n, IMAGE, "sh", "-c", &script]);
    }
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _d = Dockside::start(dir.path(), &cfg);
    for n in [&plain, &tty, &wild, &many, &big] {
        c.wait_state(&format!("{base}/local/{n}/state"), T, |s| {
            s["running"] == true
        })
        .await;
    }
    // Let the three lines be written.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let ask = |n: &str, payload: &str| {
        let (topic, payload, c) = (format!("{base}/local/{n}/set"), payload.to_string(), &c);
        let result = format!("{base}/local/{n}/result");
        async move {
            let id = serde_json::from_str::<Value>(&payload).expect("json")["request_id"]
                .as_str()
                .expect("request_id")
                .to_string();
            c.publish(&topic, payload.as_bytes(), false).await;
            c.wait_latest(&result, T, |m| m.json()["request_id"] == id.as_str())
                .await
                .json()
        }
    };
    let texts = |r: &Value| -> Vec<(String, String)> {
        r["logs"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|l| {
                        (
                            l["stream"].as_str().unwrap_or("").to_string(),
                            l["text"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };

    // Multiplexed: both streams, in order, stamped.
    let r = ask(&plain, r#"{"action":"logs","request_id":"p1"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["truncated"], false, "{r}");
    assert_eq!(
        texts(&r),
        [
            ("stdout".to_string(), "out1".to_string()),
            ("stderr".into(), "err1".into()),
            ("stdout".into(), "out2".into())
        ]
    );
    assert!(
        r["logs"][0]["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{r}"
    );
    let r = ask(&plain, r#"{"action":"logs","lines":2,"request_id":"p2"}"#).await;
    assert_eq!(
        texts(&r),
        [
            ("stderr".to_string(), "err1".to_string()),
            ("stdout".into(), "out2".into())
        ]
    );
    // More than the most is the most.
    let r = ask(
        &plain,
        r#"{"action":"logs","lines":5000,"request_id":"p3"}"#,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(texts(&r).len(), 3);
    // Since a time after the lines: none.
    let future = "2099-01-01T00:00:00Z";
    let r = ask(
        &plain,
        &format!(r#"{{"action":"logs","since":"{future}","request_id":"p4"}}"#),
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(texts(&r).len(), 0, "{r}");
    let r = ask(
        &plain,
        r#"{"action":"logs","since":"1h","request_id":"p5"}"#,
    )
    .await;
    assert_eq!(texts(&r).len(), 3, "{r}");
    for (payload, why) in [
        (r#"{"action":"logs","lines":0,"request_id":"b1"}"#, "lines"),
        (
            r#"{"action":"logs","lines":"x","request_id":"b2"}"#,
            "lines",
        ),
        (
            r#"{"action":"logs","since":"yesterday","request_id":"b3"}"#,
            "since",
        ),
        (
            r#"{"action":"stop","lines":5,"request_id":"b4"}"#,
            "only with `logs`",
        ),
    ] {
        let r = ask(&plain, payload).await;
        assert_eq!(r["code"], "invalid", "{payload}: {r}");
        assert!(r["error"].as_str().is_some_and(|e| e.contains(why)), "{r}");
    }
    assert_eq!(
        engine_state(&plain),
        "running",
        "a refused stop did nothing"
    );

    // TTY: one raw stream, CR LF line ends.
    let r = ask(&tty, r#"{"action":"logs","request_id":"t1"}"#).await;
    assert_eq!(r["ok"], true, "{r}");
    let t = texts(&r);
    assert_eq!(
        t.iter().map(|(_, x)| x.as_str()).collect::<Vec<_>>(),
        ["out1", "err1", "out2"],
        "{r}"
    );
    assert!(t.iter().all(|(s, _)| s == "stdout"));

    // SPEC §13: the cap is on the message received, whole newest lines kept.
    for (n, rid) in [(&many, "m1"), (&big, "g1")] {
        let topic = format!("{base}/local/{n}/result");
        c.publish(
            &format!("{base}/local/{n}/set"),
            format!(r#"{{"action":"logs","lines":1000,"request_id":"{rid}"}}"#).as_bytes(),
            false,
        )
        .await;
        let m = c
            .wait_latest(&topic, T, |m| m.json()["request_id"] == rid)
            .await;
        let r = m.json();
        eprintln!("logs of {n}: a {}-byte result", m.payload.len());
        assert!(
            m.payload.len() <= 65_536 && m.payload.len() > 60_000,
            "{n}: a {}-byte result",
            m.payload.len()
        );
        assert_eq!(r["ok"], true, "{r:.200}");
        assert_eq!(r["truncated"], true, "{n}");
        let t = texts(&r);
        assert!(t.len() > 100, "{n}: {} lines", t.len());
        assert!(
            t.last().is_some_and(|(_, x)| x.ends_with("1099")),
            "newest kept: {:?}",
            t.last()
        );
        let width = t[0].1.len();
        assert!(t.iter().all(|(_, x)| x.len() == width), "whole lines only");
    }

    // A 100,000-byte line is cut; binary bytes are shown as U+FFFD.
    let r = ask(&wild, r#"{"action":"logs","request_id":"w1"}"#).await;
    assert_eq!(r["ok"], true, "{r:.200}");
    assert_eq!(r["truncated"], true);
    let t = texts(&r);
    assert_eq!(t.len(), 2, "{t:.200?}");
    assert!(t[0].1.len() <= 8 * 1024 + 3 && t[0].1.starts_with("xxxx"));
    assert!(
        t[1].1.starts_with("bin ") && t[1].1.contains('\u{fffd}'),
        "{:?}",
        t[1]
    );
}

fn engine_state(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", name])
}
