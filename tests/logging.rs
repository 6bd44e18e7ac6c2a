//! dockside's log lines where they go (SPEC §16), without the `NO_COLOR`
//! the other tests set: piped to a file, no terminal colour codes; with
//! `JOURNAL_STREAM` naming its stderr (as systemd sets it), each line starts
//! with its syslog priority and carries no timestamp of its own. (Under a
//! real systemd, `journalctl -p warning` is checked in tests/systemd_pid1.rs.)

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// Runs dockside (stderr to a file) until it logged that it is connected.
fn log_of(journal: bool) -> String {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("dockside.toml");
    std::fs::write(
        &cfg,
        base_config(
            &broker,
            &unique("t"),
            &dir.path().join("state"),
            "dslog-none",
        ),
    )
    .expect("config");
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).expect("log");
    let md = file.metadata().expect("metadata");
    let mut cmd = dockside_command();
    cmd.arg("--config")
        .arg(&cfg)
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(file);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()));
    }
    let mut child = cmd.spawn().expect("dockside");
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("connected to the MQTT broker") {
            break text;
        }
        assert!(Instant::now() < deadline, "no connection logged:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn a_piped_log_has_no_colour_codes() {
    let text = log_of(false);
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a pipe:\n{text:?}"
    );
    // Plain lines: a timestamp, the level, the message.
    let line = text
        .lines()
        .find(|l| l.contains("dockside starting"))
        .expect("start line");
    assert!(line.starts_with("20") && line.contains(" INFO "), "{line}");
}

#[test]
fn a_journal_stream_gets_priorities_and_no_timestamps() {
    let text = log_of(true);
    assert!(!text.contains('\u{1b}'), "{text:?}");
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line without its priority: {line}"
        );
        assert!(
            !line[3..].starts_with("20"),
            "a timestamp under the journal: {line}"
        );
    }
    let start = text
        .lines()
        .find(|l| l.contains("dockside starting"))
        .expect("start");
    assert!(start.starts_with("<6>"), "{start}");
    // Commands on an anonymous broker: the warning is a warning.
    let warn = text
        .lines()
        .find(|l| l.contains("anonymous MQTT"))
        .expect("warning");
    assert!(warn.starts_with("<4>"), "{warn}");
}
