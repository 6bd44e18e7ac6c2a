//! End to end against a real Home Assistant (2026.2, built by
//! `scripts/ha/install.sh`): dockside's discovery turns containers into HA
//! devices whose entities show the right states and whose buttons and
//! switches act on the real engine; HA restarts, allow-list changes and
//! container removals leave nothing stale; HA's MQTT integration logs no
//! warning or error about anything dockside sent.
//!
//! HA missing is a failure with the command to run, never a skip.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
/// A fresh HA needs a while on 2 cores (first start creates its database).
const HA_START: Duration = Duration::from_secs(300);

fn ha_root() -> PathBuf {
    PathBuf::from(
        std::env::var("DOCKSIDE_HA_ROOT")
            .unwrap_or_else(|_| "/var/lib/dockside-ha/root-forky".into()),
    )
}

fn ha_script(args: &[&str]) -> String {
    let out = Command::new(project_dir().join("scripts/ha/ha.sh"))
        .args(args)
        .env("DOCKSIDE_HA_ROOT", ha_root())
        .output()
        .expect("run scripts/ha/ha.sh");
    assert!(
        out.status.success(),
        "scripts/ha/ha.sh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One Home Assistant with its own config directory and HTTP port.
struct Ha {
    name: String,
    port: u16,
    dir: PathBuf,
    http: reqwest::Client,
    token: String,
    /// The onboarding's tokens as HA's frontend keeps them (a browser signs in with them).
    tokens: Value,
}

impl Ha {
    fn start() -> Self {
        assert!(
            ha_root().join("opt/ha-venv/bin/hass").exists(),
            "Home Assistant is not installed in {}: run scripts/ha/install.sh (scripts/test.sh does)",
            ha_root().display()
        );
        let name = unique("t");
        let port = free_port();
        let dir = PathBuf::from(ha_script(&["start", &name, &port.to_string()]));
        Self {
            name,
            port,
            dir,
            http: dockside::http::client_builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
            token: String::new(),
            tokens: Value::Null,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("home-assistant.log")).unwrap_or_default()
    }

    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits until HA serves its frontend (its API is up by then).
    async fn wait_up(&self) {
        let deadline = Instant::now() + HA_START;
        loop {
            if let Ok(r) = self.http.get(self.url("/manifest.json")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Home Assistant did not come up in {HA_START:?}\n{}\n{}",
                std::fs::read_to_string(self.dir.join("hass.out")).unwrap_or_default(),
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Onboarding (user, token) and the MQTT integration pointed at `mqtt_port`.
    async fn onboard(&mut self, mqtt_port: u16) {
        self.onboard_as(mqtt_port, None).await
    }

    /// Onboarding, then the MQTT integration on `mqtt_port` with these credentials.
    async fn onboard_as(&mut self, mqtt_port: u16, auth: Option<(&str, &str)>) {
        let client_id = self.url("/");
        let r: Value = self
            .http
            .post(self.url("/api/onboarding/users"))
            .json(
                &json!({"client_id": client_id, "name": "Test", "username": "test",
                          "password": "test-password-123", "language": "en"}),
            )
            .send()
            .await
            .expect("onboarding")
            .json()
            .await
            .expect("onboarding answer");
        let code = r["auth_code"].as_str().expect("auth_code").to_string();
        let t: Value = self
            .http
            .post(self.url("/auth/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "grant_type=authorization_code&code={}&client_id={}",
                form_encode(&code),
                form_encode(&client_id)
            ))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token answer");
        self.token = t["access_token"].as_str().expect("access_token").into();
        self.tokens = t.clone();
        self.post("/api/onboarding/analytics", json!({})).await;
        // The remaining steps, so HA's frontend opens on its pages, not onboarding.
        self.post("/api/onboarding/core_config", json!({})).await;
        self.post(
            "/api/onboarding/integration",
            json!({"client_id": client_id, "redirect_uri": format!("{client_id}?auth_callback=1")}),
        )
        .await;
        let flow = self
            .post(
                "/api/config/config_entries/flow",
                json!({"handler": "mqtt", "show_advanced_options": false}),
            )
            .await;
        let id = flow["flow_id"].as_str().expect("flow_id").to_string();
        let mut form = json!({"broker": "127.0.0.1", "port": mqtt_port});
        // HA 2026.11's broker form has a required, collapsed `other_settings` section.
        let expandable = flow["data_schema"].as_array().is_some_and(|fields| {
            fields
                .iter()
                .any(|f| f["name"] == "other_settings" && f["type"] == "expandable")
        });
        if expandable {
            form["other_settings"] =
                json!({"set_client_cert": false, "set_ca_cert": "off", "transport": "tcp"});
        }
        if let Some((u, p)) = auth {
            form["username"] = json!(u);
            form["password"] = json!(p);
        }
        let done = self
            .post(&format!("/api/config/config_entries/flow/{id}"), form)
            .await;
        assert_eq!(done["type"], "create_entry", "MQTT config flow: {done}");
    }

    async fn state(&self, entity: &str) -> Option<Value> {
        let r = self
            .http
            .get(self.url(&format!("/api/states/{entity}")))
            .bearer_auth(&self.token)
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    async fn wait(&self, what: &str, entity: &str, pred: impl Fn(Option<&Value>) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let s = self.state(entity).await;
            if pred(s.as_ref()) {
                return s.unwrap_or(Value::Null);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {entity} is {s:?} after {T:?}\n{}",
                self.tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_state(&self, entity: &str, want: &str) -> Value {
        self.wait(&format!("want `{want}`"), entity, |s| {
            s.is_some_and(|s| s["state"] == want)
        })
        .await
    }

    /// Exists and is not `unavailable`.
    async fn wait_available(&self, entity: &str) -> Value {
        self.wait("want available", entity, |s| {
            s.is_some_and(|s| s["state"] != "unavailable")
        })
        .await
    }

    async fn wait_gone(&self, entity: &str) {
        self.wait("want removed", entity, |s| s.is_none()).await;
    }

    async fn call(&self, domain: &str, service: &str, entity: &str) {
        self.post(
            &format!("/api/services/{domain}/{service}"),
            json!({"entity_id": entity}),
        )
        .await;
    }

    /// A screenshot of HA's own page of the device an entity belongs to,
    /// taken in Chromium signed in with the onboarding's tokens (SPEC §18:
    /// the README's picture of Home Assistant).
    async fn screenshot_device(&self, entity: &str, name: &str) {
        let device = self
            .http
            .post(self.url("/api/template"))
            .bearer_auth(&self.token)
            .json(&json!({"template": format!("{{{{ device_id('{entity}') }}}}")}))
            .send()
            .await
            .expect("template")
            .text()
            .await
            .unwrap_or_default();
        assert!(
            !device.trim().is_empty() && device.trim() != "None",
            "no device for {entity}"
        );
        let b = common::browser::Browser::start(1280, 1000).await;
        let origin = self.url("").trim_end_matches('/').to_string();
        b.goto(&format!("{origin}/auth/authorize")).await;
        let mut t = self.tokens.clone();
        t["hassUrl"] = json!(origin);
        t["clientId"] = json!(format!("{origin}/"));
        t["expires"] = json!(i64::MAX / 2);
        b.eval(
            "localStorage.setItem('hassTokens', JSON.stringify(arguments[0])); return 1;",
            json!([t]),
        )
        .await;
        b.goto(&format!("{origin}/config/devices/device/{}", device.trim()))
            .await;
        // HA's frontend renders in shadow roots: wait until the entities show.
        let shown = "function text(n){let s='';if(n.shadowRoot){s+=text(n.shadowRoot);}for(const c of n.childNodes){s+=c.nodeType===3?c.textContent:text(c);}return s;} \
                     return text(document.body).indexOf('Image update') >= 0;";
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ok = false;
        while Instant::now() < deadline && !ok {
            ok = b.eval(shown, json!([])).await == json!(true);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // HA 2026.11 asks to confirm the HTTP settings our HA harness gave it
        // (port, loopback): confirmed, so the picture shows the device only.
        b.eval(
            "function find(n){if(n.shadowRoot){const r=find(n.shadowRoot);if(r)return r;} \
             for(const c of (n.children||[])){if(['HA-BUTTON','MWC-BUTTON','BUTTON'].includes(c.tagName) \
             && c.textContent.trim()==='Confirm')return c;const r=find(c);if(r)return r;}return null;} \
             const b=find(document.body); if(b){b.click();} return !!b;",
            json!([]),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await; // icons and fonts settle
        let png = b.screenshot().await;
        if !ok {
            common::browser::save_screenshot("ha-failed.png", &png);
            let url = b.eval("return location.href;", json!([])).await;
            panic!(
                "HA's device page did not show the entities (at {url}; target/screenshots/ha-failed.png)"
            );
        }
        common::browser::save_screenshot(name, &png);
    }

    /// Lines where HA's MQTT integration complains.
    fn mqtt_problems(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                (l.contains(" WARNING ") || l.contains(" ERROR ") || l.contains(" CRITICAL "))
                    && l.contains("[homeassistant.components.mqtt")
            })
            .map(String::from)
            .collect()
    }

    fn stop(&self) {
        ha_script(&["stop", &self.name]);
    }

    async fn restart(&self) {
        self.stop();
        ha_script(&["start", &self.name, &self.port.to_string()]);
        self.wait_up().await;
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- Home Assistant log tail ---\n{}", self.tail());
        }
        let _ = Command::new(project_dir().join("scripts/ha/ha.sh"))
            .args(["remove", &self.name])
            .env("DOCKSIDE_HA_ROOT", ha_root())
            .status();
    }
}

fn config(broker: &Broker, dir: &std::path::Path, prefix: &str, allow: &str, mode: &str) -> String {
    format!(
        r#"{}
[homeassistant]
discovery = "{mode}"
[commands]
allow = [{allow}]
min_interval = "1s"
[updates]
enabled = true
verify_for = "3s"
"#,
        base_config(broker, "dockside", &dir.join("state"), prefix)
    )
}

/// Waits for the result of `action` on `topic` and checks it succeeded.
async fn ok_result(c: &Collector, topic: &str, action: &str) -> Value {
    let r = c
        .wait_latest(topic, T, |m| m.json()["action"] == action)
        .await
        .json();
    assert_eq!(r["ok"], true, "{r}");
    r
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn ent(kind: &str, ct: &str, what: &str) -> String {
    format!("{kind}.dockside_local_{}_{what}", ct.replace('-', "_"))
}

fn inspect(name: &str, fmt: &str) -> String {
    docker(&["inspect", "-f", fmt, name])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_sees_and_drives_containers() {
    require_docker();
    let broker = Broker::start();
    let registry = Registry::start();
    let ct = Containers::new(&unique("dsh"));
    let dir = tempfile::tempdir().expect("tmp");

    // A running, a stopped, an unhealthy container, and one from the registry.
    let (run, stopped, sick, upd) = (
        ct.name("run"),
        ct.name("stopped"),
        ct.name("sick"),
        ct.name("upd"),
    );
    // SPEC §13: its resource figures are sampled (label opt-in).
    run_sleeper(&run, IMAGE, &["--label", "dockside.stats=true"]);
    // A compose project of two containers: one stack device.
    let project = ct.prefix.replace('-', "_");
    let (stk_db, stk_app) = (ct.name("stk-db"), ct.name("stk-app"));
    for (n, svc, deps) in [
        (&stk_db, "db", ""),
        (&stk_app, "app", "db:service_started:false"),
    ] {
        run_container(
            n,
            &[
                "--label",
                &format!("com.docker.compose.project={project}"),
                "--label",
                &format!("com.docker.compose.service={svc}"),
                "--label",
                &format!("com.docker.compose.depends_on={deps}"),
            ],
            &[
                "sh",
                "-c",
                // 1,100 lines of 100 characters first: a `logs` result
                // over Home Assistant's 16 KiB attribute limit.
                "i=0; while [ $i -lt 1100 ]; do printf '%0100d\\n' $i; i=$((i+1)); done; \
                 echo ready; trap 'exit 0' TERM; while true; do sleep 1; done",
            ],
        );
    }
    docker(&["create", "--name", &stopped, IMAGE, "sleep", "3600"]);
    docker(&["start", &stopped]);
    docker(&["stop", "-t", "0", &stopped]);
    docker(&[
        "run",
        "-d",
        "--name",
        &sick,
        "--health-cmd",
        "exit 1",
        "--health-interval",
        "1s",
        "--health-retries",
        "1",
        IMAGE,
        "sleep",
        "3600",
    ]);
    let tag = format!("{}/dsh/app:1", registry.host());
    build_image(&tag);
    docker(&["push", &tag]);
    run_sleeper(&upd, &tag, &[]);
    // SPEC §17: a container following tags, its source on GitHub.
    let fol = ct.name("fol");
    let fol_repo = format!("{}/dsh/fol", registry.host());
    for v in ["1.0.0", "1.1.0"] {
        build_image_with(
            &format!("{fol_repo}:{v}"),
            "LABEL org.opencontainers.image.source=https://github.com/example/fol",
        );
        docker(&["push", &format!("{fol_repo}:{v}")]);
    }
    run_sleeper(
        &fol,
        &format!("{fol_repo}:1.0.0"),
        &["--label", "dockside.follow=semver"],
    );

    let allow = r#""start","stop","restart","check","update","logs""#;
    let mut ds = Dockside::start(
        dir.path(),
        &format!(
            "{}\n[stats]\ninterval = \"5s\"\n",
            config(&broker, dir.path(), &ct.prefix, allow, "device")
        ),
    );
    let c = Collector::start(broker.port, "dockside/#").await;
    c.wait_state(&format!("dockside/local/{sick}/state"), T, |s| {
        s["health"] == "unhealthy"
    })
    .await;

    let mut ha = Ha::start();
    ha.wait_up().await;
    ha.onboard(broker.port).await;

    // Bridge and endpoint devices.
    ha.wait_state("binary_sensor.dockside_connected", "on")
        .await;
    ha.wait_state("binary_sensor.dockside_local_reachable", "on")
        .await;
    ha.wait(
        "containers running",
        "sensor.dockside_local_containers_running",
        |s| {
            s.and_then(|s| s["state"].as_str()?.parse::<u32>().ok())
                .is_some_and(|n| n >= 3)
        },
    )
    .await;
    ha.wait_available("button.dockside_local_resync").await;

    // Every entity of the running container, with the right state.
    ha.wait_state(&ent("binary_sensor", &run, "running"), "on")
        .await;
    ha.wait_state(&ent("sensor", &run, "state"), "running")
        .await;
    ha.wait_state(&ent("sensor", &run, "health"), "none").await;
    ha.wait_state(&ent("switch", &run, "power"), "on").await;
    ha.wait_state(&ent("sensor", &run, "image"), IMAGE).await;
    ha.wait_state(&ent("sensor", &run, "restart_count"), "0")
        .await;
    ha.wait_state(&ent("sensor", &run, "exit_code"), "0").await;
    let ip = inspect(&run, "{{.NetworkSettings.IPAddress}}");
    ha.wait_state(&ent("sensor", &run, "ip_address"), &ip).await;
    let started = ha.wait_available(&ent("sensor", &run, "started_at")).await;
    assert!(
        started["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("20") && s.contains('T')),
        "{started}"
    );
    for e in [
        ent("button", &run, "restart"),
        ent("button", &run, "check_update"),
        ent("event", &run, "event"),
        ent("update", &run, "update"),
    ] {
        ha.wait_available(&e).await;
    }
    let running = ha
        .wait_available(&ent("binary_sensor", &run, "running"))
        .await;
    assert_eq!(running["attributes"]["name"], run.as_str(), "{running}");
    // Not allowed, so not there.
    assert!(ha.state(&ent("button", &run, "kill")).await.is_none());

    // The stopped one.
    ha.wait_state(&ent("binary_sensor", &stopped, "running"), "off")
        .await;
    ha.wait_state(&ent("sensor", &stopped, "state"), "exited")
        .await;
    ha.wait_state(&ent("switch", &stopped, "power"), "off")
        .await;
    // The unhealthy one.
    ha.wait_state(&ent("sensor", &sick, "health"), "unhealthy")
        .await;
    ha.wait_state(&ent("binary_sensor", &sick, "running"), "on")
        .await;
    // SPEC §13: the problem flag, with its reason as an attribute.
    let problem = ha
        .wait_state(&ent("binary_sensor", &sick, "problem"), "on")
        .await;
    assert_eq!(problem["attributes"]["reason"], "unhealthy", "{problem}");
    assert_eq!(
        problem["attributes"]["device_class"], "problem",
        "{problem}"
    );
    ha.wait_state(&ent("binary_sensor", &run, "problem"), "off")
        .await;

    // SPEC §13 stats: a sensor with its unit, class and a figure near the engine's.
    let mem = ha
        .wait(
            "memory sensor has a value",
            &ent("sensor", &run, "memory"),
            |s| {
                s.and_then(|s| s["state"].as_str()?.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
            },
        )
        .await;
    assert_eq!(mem["attributes"]["device_class"], "data_size", "{mem}");
    assert_eq!(mem["attributes"]["state_class"], "measurement", "{mem}");
    assert!(
        mem["attributes"]["unit_of_measurement"].is_string(),
        "{mem}"
    );
    // Not sampled: no stats sensors.
    assert!(ha.state(&ent("sensor", &stopped, "memory")).await.is_none());

    // SPEC §13 stacks: one device, its state and running count, and its buttons.
    let stack = |kind: &str, what: &str| format!("{kind}.dockside_local_stacks_{project}_{what}");
    ha.wait_state(&stack("sensor", "state"), "running").await;
    ha.wait_state(&stack("sensor", "running"), "2").await;
    ha.wait_available(&stack("update", "update")).await;
    ha.call("button", "press", &stack("button", "stop")).await;
    ok_result(
        &c,
        &format!("dockside/local/_stacks/{project}/result"),
        "stop",
    )
    .await;
    ha.wait_state(&stack("sensor", "state"), "stopped").await;
    ha.wait_state(&stack("sensor", "running"), "0").await;
    assert_eq!(inspect(&stk_db, "{{.State.Running}}"), "false");

    // SPEC §13 logs: the result lands on the "Last command" sensor, the lines as an attribute.
    c.publish(
        &format!("dockside/local/{stk_db}/set"),
        br#"{"action":"logs","lines":10,"request_id":"ha-logs"}"#,
        false,
    )
    .await;
    let last = ha
        .wait_state(&ent("sensor", &stk_db, "last_result"), "logs: ok")
        .await;
    let lines = last["attributes"]["logs"]
        .as_array()
        .expect("logs attribute");
    assert!(lines.iter().any(|l| l["text"] == "ready"), "{last}");
    assert_eq!(last["attributes"]["request_id"], "ha-logs", "{last}");
    // A result over HA's 16 KiB attribute limit: the sensor keeps the newest
    // lines that fit, and the recorder stores it without a warning.
    c.publish(
        &format!("dockside/local/{stk_db}/set"),
        br#"{"action":"logs","lines":1000,"request_id":"ha-logs-big"}"#,
        false,
    )
    .await;
    let last = ha
        .wait(
            "the big logs result",
            &ent("sensor", &stk_db, "last_result"),
            |s| s.is_some_and(|s| s["attributes"]["request_id"] == "ha-logs-big"),
        )
        .await;
    let attrs = serde_json::to_vec(&last["attributes"]).expect("json");
    assert!(attrs.len() < 16_384, "{} bytes of attributes", attrs.len());
    let lines = last["attributes"]["logs"]
        .as_array()
        .expect("logs attribute");
    assert!(lines.len() > 50, "{} lines", lines.len());
    assert_eq!(
        lines.last().map(|l| l["text"].clone()),
        Some(json!("ready"))
    );
    assert_eq!(last["attributes"]["truncated"], true);
    tokio::time::sleep(Duration::from_secs(3)).await; // recorder commit_interval: 1 s
    let log = ha.log();
    assert!(
        !log.contains("exceed maximum size"),
        "the recorder dropped attributes: {}",
        log.lines()
            .filter(|l| l.contains("exceed maximum size"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Pressing restart in HA restarts the container; the result arrives.
    let before = inspect(&run, "{{.State.StartedAt}}");
    let result = format!("dockside/local/{run}/result");
    ha.call("button", "press", &ent("button", &run, "restart"))
        .await;
    let r = ok_result(&c, &result, "restart").await;
    assert_eq!(r["state"], "running", "{r}");
    assert_ne!(inspect(&run, "{{.State.StartedAt}}"), before);
    // A docker event of it reached the event entity.
    ha.wait("event entity fired", &ent("event", &run, "event"), |s| {
        s.is_some_and(|s| s["attributes"]["event_type"].is_string())
    })
    .await;

    // Turning the switch off stops it.
    tokio::time::sleep(Duration::from_millis(1100)).await; // commands.min_interval
    ha.call("switch", "turn_off", &ent("switch", &run, "power"))
        .await;
    ok_result(&c, &result, "stop").await;
    assert_eq!(inspect(&run, "{{.State.Running}}"), "false");
    ha.wait_state(&ent("switch", &run, "power"), "off").await;
    ha.wait_state(&ent("binary_sensor", &run, "running"), "off")
        .await;
    ha.wait_state(&ent("sensor", &run, "state"), "exited").await;

    // The update entity: off while current, on once a newer image is pushed
    // and a check is pressed (the endpoint's button in HA).
    let update = ent("update", &upd, "update");
    let u = ha.wait_state(&update, "off").await;
    assert!(
        u["attributes"]["installed_version"].is_string(),
        "installed version shown: {u}"
    );
    build_image(&tag);
    docker(&["push", &tag]);
    ha.call("button", "press", "button.dockside_local_check_updates")
        .await;
    let u = ha.wait_state(&update, "on").await;
    assert_ne!(
        u["attributes"]["installed_version"], u["attributes"]["latest_version"],
        "{u}"
    );
    // SPEC §17: the title is the software's name (the repository's last part here).
    assert_eq!(u["attributes"]["title"], "app", "{u}");
    assert_eq!(u["attributes"]["in_progress"], false, "{u}");

    // Install from HA: pull + recreate; the entity turns `off`.
    let new_image = docker(&["image", "inspect", "-f", "{{.Id}}", &tag]);
    ha.call("update", "install", &update).await;
    // The pull's progress shows while the update runs (it stays up through
    // the new container's verification).
    let during = ha
        .wait("update_percentage shown", &update, |s| {
            s.is_some_and(|s| {
                s["attributes"]["in_progress"] == true
                    && s["attributes"]["update_percentage"].is_number()
            })
        })
        .await;
    let pct = during["attributes"]["update_percentage"].as_u64();
    assert!(pct.is_some_and(|p| p <= 100), "{during}");
    ok_result(&c, &format!("dockside/local/{upd}/result"), "update").await;
    assert_eq!(inspect(&upd, "{{.Image}}"), new_image);
    // The history's last entry, as the "Last update" sensor.
    let last = ha
        .wait_state(&ent("sensor", &upd, "last_update"), "ok")
        .await;
    assert_eq!(last["attributes"]["action"], "update", "{last}");
    assert_eq!(last["attributes"]["to_image"], new_image.as_str(), "{last}");
    assert!(last["attributes"]["finished_at"].is_string(), "{last}");
    assert_eq!(inspect(&upd, "{{.State.Running}}"), "true");
    ha.wait_state(&update, "off").await;
    ha.wait_state(&ent("binary_sensor", &upd, "running"), "on")
        .await;

    // SPEC §17, a followed tag: the update entity offers the newest tag with
    // its release page, Install installs that tag, and the Version select
    // goes back to the older one.
    let fol_update = ent("update", &fol, "update");
    let u = ha.wait_state(&fol_update, "on").await;
    assert_eq!(
        (
            u["attributes"]["installed_version"].as_str(),
            u["attributes"]["latest_version"].as_str()
        ),
        (Some("1.0.0"), Some("1.1.0")),
        "{u}"
    );
    assert_eq!(
        u["attributes"]["release_url"], "https://github.com/example/fol/releases/tag/1.1.0",
        "{u}"
    );
    let version = ent("select", &fol, "version");
    let v = ha.wait_state(&version, "1.0.0").await;
    let options = v["attributes"]["options"].clone();
    assert_eq!(options, json!(["1.0.0", "1.1.0"]), "{v}");
    ha.wait(
        "updates available counted",
        "sensor.dockside_local_updates_available",
        |s| s.is_some_and(|s| s["state"].as_str().and_then(|n| n.parse::<u32>().ok()) >= Some(1)),
    )
    .await;
    ha.call("update", "install", &fol_update).await;
    let r = ok_result(&c, &format!("dockside/local/{fol}/result"), "update").await;
    assert_eq!(r["to_version"], "1.1.0", "{r}");
    assert_eq!(
        inspect(&fol, "{{.Config.Image}}"),
        format!("{fol_repo}:1.1.0")
    );
    ha.wait_state(&fol_update, "off").await;
    ha.wait_state(&version, "1.1.0").await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // commands.min_interval
    ha.post(
        "/api/services/select/select_option",
        json!({"entity_id": version, "option": "1.0.0"}),
    )
    .await;
    c.wait_latest(&format!("dockside/local/{fol}/result"), T, |m| {
        m.json()["to_version"] == "1.0.0" && m.json()["ok"] == true
    })
    .await;
    assert_eq!(
        inspect(&fol, "{{.Config.Image}}"),
        format!("{fol_repo}:1.0.0")
    );
    ha.wait_state(&version, "1.0.0").await;
    ha.wait_state(&fol_update, "on").await;
    // The README's picture: HA's page of this container's device.
    ha.screenshot_device(&fol_update, "home-assistant-device.png")
        .await;

    // The allow list shrinks (SIGHUP): the entities of words no longer allowed go.
    ds.rewrite_config(&config(
        &broker,
        dir.path(),
        &ct.prefix,
        r#""start","stop","check""#,
        "device",
    ));
    ds.signal("-HUP");
    ha.wait_gone(&ent("button", &sick, "restart")).await;
    ha.wait_available(&ent("switch", &sick, "power")).await;

    // HA restarted: everything comes back, available, with its state.
    ha.restart().await;
    ha.wait_state(&ent("binary_sensor", &sick, "running"), "on")
        .await;
    ha.wait_state(&ent("sensor", &sick, "health"), "unhealthy")
        .await;
    ha.wait_state(&ent("switch", &run, "power"), "off").await;
    ha.wait_state(&update, "off").await;
    ha.wait_state("binary_sensor.dockside_local_reachable", "on")
        .await;
    assert!(ha.state(&ent("button", &sick, "restart")).await.is_none());

    // A removed container's device disappears (after containers.removal_grace),
    // its retained config with it.
    docker(&["rm", "-f", &stopped]);
    ha.wait_gone(&ent("binary_sensor", &stopped, "running"))
        .await;
    ha.wait_gone(&ent("switch", &stopped, "power")).await;
    let topic = format!(
        "homeassistant/device/dockside_local_{}/config",
        stopped.replace('.', "_")
    );
    let snap = retained_snapshot(broker.port, "homeassistant/#").await;
    assert!(!snap.contains_key(&topic), "{topic} still retained");

    // The per-entity form, with the same ids: switching keeps every entity.
    ds.rewrite_config(&config(&broker, dir.path(), &ct.prefix, allow, "component"));
    ds.signal("-HUP");
    tokio::time::sleep(Duration::from_secs(3)).await;
    ha.wait_state(&ent("sensor", &sick, "health"), "unhealthy")
        .await;
    ha.wait_available(&ent("button", &sick, "restart")).await;
    ha.wait_state(&update, "off").await;
    let snap = retained_snapshot(broker.port, "homeassistant/#").await;
    assert!(
        snap.keys().all(|t| !t.starts_with("homeassistant/device/")),
        "device configs left: {:?}",
        snap.keys().collect::<Vec<_>>()
    );
    assert!(snap.contains_key(&format!(
        "homeassistant/switch/dockside_local_{}_power/config",
        sick
    )));

    // Other loggers' warnings (HA's own start-up notes) are shown, not judged;
    // anything about our entities or ids is judged.
    let log = ha.log();
    let all: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARNING ") || l.contains(" ERROR "))
        .collect();
    eprintln!("HA warnings/errors (all loggers):\n{}", all.join("\n"));
    let ours: Vec<&&str> = all
        .iter()
        // (HA's own config directory is named dockside-ha: not an entity of ours.)
        .filter(|l| {
            let l = l.replace("dockside-ha", "");
            l.contains("dockside") || l.contains("unique ID") || l.contains("unique_id")
        })
        .collect();
    assert!(
        ours.is_empty(),
        "HA complained about our entities: {ours:#?}"
    );
    let problems = ha.mqtt_problems();
    assert!(
        problems.is_empty(),
        "Home Assistant's MQTT integration complained:\n{}",
        problems.join("\n")
    );
    assert!(ds.is_running());
    drop(ha);
}

/// SPEC §12: Home Assistant on dockside's embedded broker, with credentials,
/// and no Mosquitto anywhere: it discovers the containers and restarts one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_assistant_on_the_embedded_broker() {
    require_docker();
    let ct = Containers::new(&unique("dshe"));
    let dir = tempfile::tempdir().expect("tmp");
    let web = ct.name("web");
    run_sleeper(&web, IMAGE, &[]);
    let port = free_port();
    let secret = format!("pw{}", fastrand::u64(..));
    let cfg = format!(
        r#"
[mqtt]
embedded = true
embedded_listen = "127.0.0.1:{port}"
embedded_username = "ha"
embedded_password = "{secret}"
[homeassistant]
discovery = "device"
[commands]
allow = ["start", "stop", "restart"]
min_interval = "0s"
[state]
dir = "{}"
[containers]
include = ["{}-*"]
"#,
        dir.path().join("state").display(),
        ct.prefix
    );
    let _ds = Dockside::start(dir.path(), &cfg);
    let c = Collector::start_as(port, "dockside/#", Some(("ha", &secret))).await;
    c.wait_state(&format!("dockside/local/{web}/state"), T, |s| {
        s["running"] == true
    })
    .await;

    let mut ha = Ha::start();
    ha.wait_up().await;
    ha.onboard_as(port, Some(("ha", &secret))).await;
    ha.wait_state("binary_sensor.dockside_connected", "on")
        .await;
    ha.wait_state(&ent("binary_sensor", &web, "running"), "on")
        .await;
    ha.wait_state(&ent("sensor", &web, "state"), "running")
        .await;
    // The bridge's diagnostics (SPEC §12).
    ha.wait_state("sensor.dockside_endpoints_connected", "1")
        .await;
    ha.wait_state("sensor.dockside_outbox_depth", "0").await;
    ha.wait_state("sensor.dockside_broker_reconnects", "0")
        .await;
    let epm = ha.wait_available("sensor.dockside_events_per_minute").await;
    assert!(
        epm["state"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "{epm}"
    );
    let before = inspect(&web, "{{.State.StartedAt}}");
    ha.wait_available(&ent("button", &web, "restart")).await;
    ha.call("button", "press", &ent("button", &web, "restart"))
        .await;
    ok_result(&c, &format!("dockside/local/{web}/result"), "restart").await;
    assert_ne!(inspect(&web, "{{.State.StartedAt}}"), before, "restarted");
    ha.wait_state(&ent("binary_sensor", &web, "running"), "on")
        .await;
    let problems = ha.mqtt_problems();
    assert!(
        problems.is_empty(),
        "HA's MQTT integration complained: {problems:#?}"
    );
}
