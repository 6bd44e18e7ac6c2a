//! Updates people leave on (SPEC §17) against the real engine and a real
//! registry: Install of a followed tag installs the newest tag (from which
//! version to which), `<ct>/versions`, the release link and title, `skip` /
//! `unskip`, `remove`, the pre-update check (a refusal and a check that
//! hangs), and automatic updates that wait for their window and minimum
//! age and never retry a version that was rolled back.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

use common::{inspect_json as inspect, push_image_with as push};

fn config(broker: &Broker, base: &str, dir: &std::path::Path, prefix: &str, extra: &str) -> String {
    format!(
        "{}\n[commands]\nallow = [\"start\",\"stop\",\"update\",\"rollback\",\"check\",\"remove\"]\nmin_interval = \"0s\"\n[updates]\nverify_for = \"3s\"\n{extra}\n",
        base_config(broker, base, &dir.join("state"), prefix)
    )
}

async fn update_status(
    c: &Collector,
    topic: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let v = c
        .wait_latest(topic, T, |m| !m.payload.is_empty() && pred(&m.json()))
        .await
        .json();
    eprintln!("{what}: {v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_follows_the_newest_tag_with_versions_links_skip_and_remove() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsuo"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let repo = format!("{}/{}/app", reg.host(), ct.prefix);
    let source = "LABEL org.opencontainers.image.source=https://github.com/example/app";
    for v in ["1.0.0", "1.1.0", "1.2.0", "latest"] {
        push(&format!("{repo}:{v}"), source);
    }
    let app = ct.name("app");
    run_sleeper(
        &app,
        &format!("{repo}:1.0.0"),
        &["--label", "dockside.follow=semver"],
    );
    let cfg = config(&broker, &base, dir.path(), &ct.prefix, "");
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let (upd, set) = (
        format!("{base}/local/{app}/update"),
        format!("{base}/local/{app}/set"),
    );

    // The status names the newest tag, its release page and the software.
    let s = update_status(&c, &upd, "offered", |s| s["status"] == "update_available").await;
    assert_eq!(s["installed_version"], "1.0.0", "{s}");
    assert_eq!(s["latest_version"], "1.2.0", "{s}");
    assert_eq!(
        s["release_url"], "https://github.com/example/app/releases/tag/1.2.0",
        "{s}"
    );
    assert_eq!(s["title"], "app", "{s}");
    let v = c
        .wait_latest(&format!("{base}/local/{app}/versions"), T, |_| true)
        .await
        .json();
    assert_eq!(
        v,
        serde_json::json!({"current":"1.0.0","available":["1.2.0","1.1.0"]})
    );

    // skip: no update shown until a newer version; twice is refused; unskip undoes it.
    let r = c
        .command(&set, r#"{"action":"skip","request_id":"s1"}"#, "s1", T)
        .await;
    assert_eq!(
        (r["ok"].clone(), r["to_version"].clone()),
        (true.into(), "1.2.0".into()),
        "{r}"
    );
    let s = update_status(&c, &upd, "skipped", |s| s["status"] == "skipped").await;
    assert_eq!(s["update_available"], false, "{s}");
    let r = c
        .command(&set, r#"{"action":"skip","request_id":"s2"}"#, "s2", T)
        .await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (false.into(), "invalid".into()),
        "{r}"
    );
    let r = c
        .command(&set, r#"{"action":"unskip","request_id":"s3"}"#, "s3", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    update_status(&c, &upd, "offered again", |s| {
        s["status"] == "update_available"
    })
    .await;
    let r = c
        .command(&set, r#"{"action":"skip","request_id":"s4"}"#, "s4", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    update_status(&c, &upd, "skipped again", |s| s["status"] == "skipped").await;

    // A newer version ends the skip.
    push(&format!("{repo}:1.3.0"), source);
    let r = c
        .command(&set, r#"{"action":"check","request_id":"c1"}"#, "c1", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let s = update_status(&c, &upd, "newer", |s| {
        s["status"] == "update_available" && s["latest_version"] == "1.3.0"
    })
    .await;
    assert!(
        s["release_url"]
            .as_str()
            .is_some_and(|u| u.ends_with("/tag/1.3.0")),
        "{s}"
    );

    // Install (update without a version) installs the newest tag, and says from what to what.
    let r = c
        .command(&set, r#"{"action":"update","request_id":"u1"}"#, "u1", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        (r["from_version"].as_str(), r["to_version"].as_str()),
        (Some("1.0.0"), Some("1.3.0")),
        "{r}"
    );
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:1.3.0"));
    let h = c
        .wait_latest(&format!("{base}/local/{app}/history"), T, |m| {
            m.json()[0]["status"] == "ok"
        })
        .await
        .json();
    assert_eq!(h[0]["trigger"], "manual", "{h}");
    assert_eq!(
        (h[0]["from_version"].as_str(), h[0]["to_version"].as_str()),
        (Some("1.0.0"), Some("1.3.0")),
        "{h}"
    );
    let s = update_status(&c, &upd, "current", |s| s["status"] == "up_to_date").await;
    assert_eq!(s["installed_version"], "1.3.0", "{s}");
    c.wait_latest(&format!("{base}/local/{app}/versions"), T, |m| {
        m.json()["current"] == "1.3.0"
    })
    .await;

    // remove: a running container only with force; its topics are cleared.
    let r = c
        .command(&set, r#"{"action":"remove","request_id":"r1"}"#, "r1", T)
        .await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (false.into(), "invalid".into()),
        "{r}"
    );
    assert_eq!(inspect(&app)["State"]["Running"], true);
    let r = c
        .command(
            &set,
            r#"{"action":"remove","force":true,"request_id":"r2"}"#,
            "r2",
            T,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    c.wait_latest(&format!("{base}/local/{app}/state"), T, |m| {
        m.payload.is_empty()
    })
    .await;
    c.wait_latest(&upd, T, |m| m.payload.is_empty()).await;
    let gone = std::process::Command::new("docker")
        .args(["inspect", &app])
        .output()
        .expect("docker");
    assert!(!gone.status.success(), "the container is gone");
    // A word that is not allowed stays refused (`remove` is opt-in).
    let other = ct.name("other");
    run_sleeper(&other, &format!("{repo}:1.0.0"), &[]);
    let cfg = cfg.replace(",\"remove\"", "");
    let dir2 = tempfile::tempdir().expect("tmp");
    let base2 = unique("t");
    let cfg2 = cfg.replace(&base, &base2).replace(
        &dir.path().join("state").display().to_string(),
        &dir2.path().join("state").display().to_string(),
    );
    let _ds2 = Dockside::start(dir2.path(), &cfg2);
    let c2 = Collector::start(broker.port, &format!("{base2}/#")).await;
    c2.wait_state(&format!("{base2}/local/{other}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    let r = c2
        .command(
            &format!("{base2}/local/{other}/set"),
            r#"{"action":"remove","force":true,"request_id":"r3"}"#,
            "r3",
            T,
        )
        .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(inspect(&other)["State"]["Running"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_pre_update_check_blocks_the_update() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsuc"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let repo = format!("{}/{}/app", reg.host(), ct.prefix);
    push(&format!("{repo}:1"), "");
    let (busy, hung) = (ct.name("busy"), ct.name("hung"));
    run_sleeper(
        &busy,
        &format!("{repo}:1"),
        // The engine copies stdout and stderr on two goroutines: their lines
        // reach the exec stream in the order written only when apart in time.
        &[
            "--label",
            "dockside.update.check=echo checking; sleep 0.3; echo plex is streaming to 2 clients >&2; exit 3",
        ],
    );
    run_sleeper(
        &hung,
        &format!("{repo}:1"),
        &["--label", "dockside.update.check=sleep 300"],
    );
    push(&format!("{repo}:1"), "");
    let cfg = config(
        &broker,
        &base,
        dir.path(),
        &ct.prefix,
        "check_timeout = \"2s\"",
    );
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    for n in [&busy, &hung] {
        update_status(&c, &format!("{base}/local/{n}/update"), "offered", |s| {
            s["status"] == "update_available"
        })
        .await;
    }
    let before = inspect(&busy)["Id"].clone();
    let r = c
        .command(
            &format!("{base}/local/{busy}/set"),
            r#"{"action":"update","request_id":"b1"}"#,
            "b1",
            T,
        )
        .await;
    assert_eq!(
        (r["ok"].clone(), r["code"].clone()),
        (false.into(), "blocked".into()),
        "{r}"
    );
    let err = r["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("exit code 3") && err.contains("plex is streaming to 2 clients"),
        "{r}"
    );
    assert_eq!(inspect(&busy)["Id"], before, "nothing was recreated");
    assert_eq!(inspect(&busy)["State"]["Running"], true);
    let s = update_status(&c, &format!("{base}/local/{busy}/update"), "blocked", |s| {
        s["blocked"].is_string()
    })
    .await;
    assert!(
        s["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("plex is streaming")),
        "{s}"
    );

    // A check that hangs is killed at the bound and counts as blocked.
    let started = std::time::Instant::now();
    let r = c
        .command(
            &format!("{base}/local/{hung}/set"),
            r#"{"action":"update","request_id":"h1"}"#,
            "h1",
            T,
        )
        .await;
    assert_eq!(r["code"], "blocked", "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("still running after 2s")),
        "{r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let mut gone = false;
    for _ in 0..50 {
        let top = docker(&["top", &hung]);
        if !top.contains("sleep 300") {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        gone,
        "the hung check was killed: {}",
        docker(&["top", &hung])
    );
    assert_eq!(inspect(&hung)["State"]["Running"], true);
}

/// An `HH:MM-HH:MM` window that `now` is not in (UTC).
fn window_elsewhere() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let h = (secs / 3600 + 12) % 24;
    format!("{h:02}:00-{h:02}:30")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_updates_wait_for_window_and_age_and_never_retry_a_rolled_back_version() {
    require_docker();
    let broker = Broker::start();
    let mut reg = Registry::start();
    let ct = Containers::new(&unique("dsua"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let repo = format!("{}/{}/app", reg.host(), ct.prefix);
    let healthy = "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/true\"]";
    let unhealthy = "HEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD [\"/bin/false\"]";
    push(&format!("{repo}:1"), healthy);
    push(&format!("{repo}:2"), unhealthy);
    let app = ct.name("app");
    run_sleeper(
        &app,
        &format!("{repo}:1"),
        &[
            "--label",
            "dockside.follow=semver",
            "--label",
            "dockside.update=auto",
        ],
    );
    let (upd, hist, set) = (
        format!("{base}/local/{app}/update"),
        format!("{base}/local/{app}/history"),
        format!("{base}/local/{app}/set"),
    );
    let with = |extra: &str| config(&broker, &base, dir.path(), &ct.prefix, extra);

    // Outside the window: it waits, and says so.
    let window = window_elsewhere();
    let ds = Dockside::start_with_env(
        dir.path(),
        &with(&format!("window = \"{window}\"")),
        &[("TZ", "UTC")],
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let s = update_status(&c, &upd, "waits for the window", |s| {
        s["auto_waits"]
            .as_str()
            .is_some_and(|w| w.contains("window"))
    })
    .await;
    assert_eq!(
        (s["auto"].clone(), s["latest_version"].clone()),
        (true.into(), "2".into()),
        "{s}"
    );
    // Inside it, a version younger than min_age waits too.
    ds.rewrite_config(&with("window = \"00:00-24:00\"\nmin_age = \"3650d\""));
    ds.signal("-HUP");
    update_status(&c, &upd, "waits for min_age", |s| {
        s["auto_waits"]
            .as_str()
            .is_some_and(|w| w.contains("min_age"))
    })
    .await;
    assert!(c.on(&hist).is_empty(), "nothing ran while waiting");
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:1"));

    // Due: version 2 turns unhealthy, is rolled back, and is never tried again.
    ds.rewrite_config(&with(""));
    ds.signal("-HUP");
    let h = c
        .wait_latest(&hist, T, |m| m.json()[0]["status"] == "rolled_back")
        .await
        .json();
    assert_eq!(h[0]["trigger"], "auto", "{h}");
    assert_eq!(h[0]["to_version"], "2", "{h}");
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:1"));
    assert_eq!(inspect(&app)["State"]["Running"], true);
    let s = update_status(&c, &upd, "blocked", |s| s["blocked"].is_string()).await;
    assert!(
        s["blocked"]
            .as_str()
            .is_some_and(|b| b.contains("version 2 was rolled back")),
        "{s}"
    );
    let r = c
        .command(&set, r#"{"action":"check","request_id":"c1"}"#, "c1", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let runs = c
        .latest(&hist)
        .map(|m| m.json().as_array().map_or(0, Vec::len));
    assert_eq!(runs, Some(1), "the rolled-back version was not tried again");

    // The registry down during a round: nothing is updated, the status says why.
    reg.stop();
    let r = c
        .command(&set, r#"{"action":"check","request_id":"c9"}"#, "c9", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let s = update_status(&c, &upd, "registry down", |s| s["status"] == "error").await;
    assert!(
        s["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach")),
        "{s}"
    );
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:1"));
    reg.restart();

    // A newer version ends the block and installs itself.
    push(&format!("{repo}:3"), healthy);
    let r = c
        .command(&set, r#"{"action":"check","request_id":"c2"}"#, "c2", T)
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let h = c
        .wait_latest(&hist, T, |m| m.json()[0]["status"] == "ok")
        .await
        .json();
    assert_eq!(
        (h[0]["trigger"].as_str(), h[0]["to_version"].as_str()),
        (Some("auto"), Some("3")),
        "{h}"
    );
    assert_eq!(inspect(&app)["Config"]["Image"], format!("{repo}:3"));
    let s = update_status(&c, &upd, "current", |s| s["status"] == "up_to_date").await;
    assert!(s["blocked"].is_null(), "{s}");
    // The endpoint's info counts what is left to update.
    let info = c
        .wait_latest(&format!("{base}/local/info"), T, |m| {
            m.json()["updates_available"] == 0
        })
        .await
        .json();
    assert_eq!(info["containers"]["problems"], 0, "{info}");
}

/// Writes an executable `docker-credential-<name>` script into `dir`.
fn helper(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("helper");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_helpers_give_credentials_and_a_broken_one_says_why() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start_with_auth("bob", "s3cret");
    let ct = Containers::new(&unique("dsuh"));
    let h = reg.host();
    let img = format!("{h}/{}/priv:1", ct.prefix);
    build_image_with(&img, "");
    let login_dir = tempfile::tempdir().expect("tmp");
    let login_cfg = login_dir.path().display().to_string();
    docker_login(&login_cfg, &h, "bob", "s3cret");
    docker(&["--config", &login_cfg, "push", &img]);
    let n = ct.name("priv");
    run_sleeper(&n, &img, &[]);

    let bin = tempfile::tempdir().expect("tmp");
    helper(
        bin.path(),
        "dstest",
        r#"[ "$1" = get ] || exit 1
read host
printf '{"ServerURL":"%s","Username":"bob","Secret":"s3cret"}' "$host""#,
    );
    helper(bin.path(), "dshang", "sleep 30");
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let cases = [
        (format!(r#"{{"credHelpers":{{"{h}":"dstest"}}}}"#), None),
        (
            format!(r#"{{"credHelpers":{{"{h}":"dshang"}}}}"#),
            Some("credential helper `dshang`: docker-credential-dshang did not answer within 5s"),
        ),
        (
            format!(r#"{{"auths":{{"{h}":{{}}}},"credsStore":"dsmissing"}}"#),
            Some("credential helper `dsmissing`: cannot run docker-credential-dsmissing"),
        ),
    ];
    for (json, want_error) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        let docker_cfg = dir.path().join("config.json");
        std::fs::write(&docker_cfg, &json).expect("config.json");
        let base = unique("t");
        let cfg = config(
            &broker,
            &base,
            dir.path(),
            &ct.prefix,
            &format!("docker_config = \"{}\"", docker_cfg.display()),
        );
        let ds = Dockside::start_with_env(dir.path(), &cfg, &[("PATH", path.as_str())]);
        let c = Collector::start(broker.port, &format!("{base}/#")).await;
        let topic = format!("{base}/local/{n}/update");
        match want_error {
            None => {
                update_status(&c, &topic, "through the helper", |s| {
                    s["status"] == "up_to_date"
                })
                .await;
            }
            Some(why) => {
                let s =
                    update_status(&c, &topic, "helper broken", |s| s["status"] == "error").await;
                assert!(s["error"].as_str().is_some_and(|e| e.contains(why)), "{s}");
            }
        }
        assert!(
            !ds.log_text().contains("s3cret"),
            "the secret never reaches the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_services_depending_with_restart_true_restart_after_an_update() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsud"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let db_image = format!("{}/{}/db:1", reg.host(), ct.prefix);
    push(&db_image, "");
    let compose = |service: &str, depends: &str| -> Vec<String> {
        let mut l = vec![
            format!("com.docker.compose.project={}", ct.prefix),
            format!("com.docker.compose.service={service}"),
            "com.docker.compose.container-number=1".to_string(),
        ];
        if !depends.is_empty() {
            l.push(format!("com.docker.compose.depends_on={depends}"));
        }
        l
    };
    let run = |name: &str, image: &str, labels: Vec<String>| {
        let mut opts: Vec<&str> = Vec::new();
        for l in &labels {
            opts.extend(["--label", l.as_str()]);
        }
        run_sleeper(name, image, &opts);
    };
    let (db, web, worker) = (ct.name("db"), ct.name("web"), ct.name("worker"));
    run(&db, &db_image, compose("db", ""));
    run(&web, IMAGE, compose("web", "db:service_started:true"));
    run(
        &worker,
        IMAGE,
        compose("worker", "db:service_started:false"),
    );
    push(&db_image, "");
    let started = |n: &str| inspect(n)["State"]["StartedAt"].clone();
    let (web_before, worker_before) = (started(&web), started(&worker));

    let cfg = config(&broker, &base, dir.path(), &ct.prefix, "");
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    update_status(&c, &format!("{base}/local/{db}/update"), "offered", |s| {
        s["status"] == "update_available"
    })
    .await;
    let r = c
        .command(
            &format!("{base}/local/{db}/set"),
            r#"{"action":"update","request_id":"d1"}"#,
            "d1",
            T,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let rr = c
        .wait_latest(&format!("{base}/local/{web}/result"), T, |m| {
            m.json()["request_id"] == "after-update-db"
        })
        .await
        .json();
    assert_eq!(
        (rr["ok"].clone(), rr["action"].clone()),
        (true.into(), "restart".into()),
        "{rr}"
    );
    assert_ne!(started(&web), web_before, "web restarted");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        started(&worker),
        worker_before,
        "worker (restart: false) left alone"
    );
    assert!(c.on(&format!("{base}/local/{worker}/result")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_drift_is_shown_and_sync_moves_the_container_onto_the_file_s_image() {
    require_docker();
    let broker = Broker::start();
    let reg = Registry::start();
    let ct = Containers::new(&unique("dsuy"));
    let dir = tempfile::tempdir().expect("tmp");
    let base = unique("t");
    let repo = format!("{}/{}/web", reg.host(), ct.prefix);
    push(&format!("{repo}:1"), "");
    push(&format!("{repo}:2"), "");
    // The project's files: web names tag ${WEB_TAG} from .env; app is build-only.
    let project = tempfile::tempdir().expect("project");
    let file = project.path().join("compose.yaml");
    std::fs::write(
        &file,
        format!("services:\n  web:\n    image: {repo}:${{WEB_TAG:-1}}\n  app:\n    build: .\n"),
    )
    .expect("compose.yaml");
    std::fs::write(project.path().join(".env"), "WEB_TAG=2\n").expect(".env");
    let labels = |service: &str| -> Vec<String> {
        vec![
            format!("com.docker.compose.project={}", ct.prefix),
            format!("com.docker.compose.service={service}"),
            format!("com.docker.compose.project.config_files={}", file.display()),
            format!(
                "com.docker.compose.project.working_dir={}",
                project.path().display()
            ),
        ]
    };
    let run = |name: &str, image: &str, labels: Vec<String>| {
        let mut opts: Vec<&str> = Vec::new();
        for l in &labels {
            opts.extend(["--label", l.as_str()]);
        }
        run_sleeper(name, image, &opts);
    };
    let (web, app) = (ct.name("web"), ct.name("app"));
    run(&web, &format!("{repo}:1"), labels("web"));
    run(&app, &format!("{repo}:1"), labels("app"));

    let cfg = config(&broker, &base, dir.path(), &ct.prefix, "");
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let s = update_status(&c, &format!("{base}/local/{web}/update"), "drift", |s| {
        s["compose_image"].is_string()
    })
    .await;
    assert_eq!(s["compose_image"], format!("{repo}:2"), "{s}");
    let s = update_status(
        &c,
        &format!("{base}/local/{app}/update"),
        "build-only",
        |s| s["status"].is_string(),
    )
    .await;
    assert!(
        s["compose_image"].is_null(),
        "a build-only service is no drift: {s}"
    );
    // A container with no drift is refused `sync`, and nothing happens.
    let r = c
        .command(
            &format!("{base}/local/{app}/set"),
            r#"{"action":"sync","request_id":"y0"}"#,
            "y0",
            T,
        )
        .await;
    assert_eq!(r["code"], "invalid", "{r}");

    let r = c
        .command(
            &format!("{base}/local/{web}/set"),
            r#"{"action":"sync","request_id":"y1"}"#,
            "y1",
            T,
        )
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(inspect(&web)["Config"]["Image"], format!("{repo}:2"));
    assert_eq!(
        inspect(&web)["Config"]["Labels"]["com.docker.compose.service"],
        "web"
    );
    update_status(&c, &format!("{base}/local/{web}/update"), "in step", |s| {
        s["compose_image"].is_null() && s["status"] == "up_to_date"
    })
    .await;
}
