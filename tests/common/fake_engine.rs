//! A scripted Docker engine on a unix socket, for the in-process harness
//! (`tests/inprocess.rs`): containers whose state the test sets, and an
//! `/events` stream that sends exactly the events the test emits, in the
//! orders real engines use (20.10 and 28.5). Inspects answer from the same
//! state, so what dockside reads back agrees with the events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;

use super::stand_in::{Conn, serve_unix};
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub struct FakeContainer {
    pub name: String,
    pub status: &'static str,
    pub exit_code: i64,
    pub oom_killed: bool,
    pub restart_count: i64,
    pub started_at: String,
    pub finished_at: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Default)]
struct State {
    containers: BTreeMap<String, FakeContainer>,
}

#[derive(Clone)]
pub struct FakeEngine {
    pub sock: PathBuf,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<String>,
}

fn now_parts() -> (i64, i64, String) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let nanos = d.as_nanos() as i64;
    let rfc = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    (d.as_secs() as i64, nanos, rfc)
}

impl FakeEngine {
    pub fn start(dir: &Path) -> Self {
        let sock = dir.join("engine.sock");
        let (events, _) = broadcast::channel(4096);
        let engine = FakeEngine {
            sock,
            state: Arc::default(),
            events,
        };
        let e = engine.clone();
        serve_unix(&engine.sock, move |c| e.clone().serve(c));
        engine
    }

    pub fn url(&self) -> String {
        format!("unix://{}", self.sock.display())
    }

    /// A container that exists before dockside starts.
    pub fn add(&self, id: &str, name: &str, running: bool) {
        let (_, _, now) = now_parts();
        let c = FakeContainer {
            name: name.to_string(),
            status: if running { "running" } else { "exited" },
            exit_code: 0,
            oom_killed: false,
            restart_count: 0,
            started_at: now.clone(),
            finished_at: if running {
                "0001-01-01T00:00:00Z".into()
            } else {
                now
            },
            labels: BTreeMap::new(),
        };
        self.lock().containers.insert(id.to_string(), c);
    }

    pub fn set_label(&self, id: &str, k: &str, v: &str) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            c.labels.insert(k.into(), v.into());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies what the event tells to the container, then sends the event.
    pub fn emit(&self, id: &str, action: &str, attrs: &[(&str, &str)]) {
        let (secs, nanos, now) = now_parts();
        let name = {
            let mut st = self.lock();
            let Some(c) = st.containers.get_mut(id) else {
                panic!("no container {id}");
            };
            let code = attrs
                .iter()
                .find(|(k, _)| *k == "exitCode")
                .and_then(|(_, v)| v.parse().ok());
            match action {
                "start" => {
                    c.status = "running";
                    c.started_at = now.clone();
                    c.finished_at = "0001-01-01T00:00:00Z".into();
                    c.oom_killed = false;
                }
                "restart" => c.restart_count += 1,
                "die" => {
                    c.status = "exited";
                    c.exit_code = code.unwrap_or(0);
                    c.finished_at = now.clone();
                }
                "oom" => c.oom_killed = true,
                "pause" => c.status = "paused",
                "unpause" => c.status = "running",
                _ => {}
            }
            c.name.clone()
        };
        let mut attributes = serde_json::Map::new();
        attributes.insert("name".into(), name.into());
        attributes.insert("image".into(), "x:1".into());
        for (k, v) in attrs {
            attributes.insert((*k).into(), (*v).into());
        }
        let line = serde_json::json!({
            "Type": "container",
            "Action": action,
            "Actor": {"ID": id, "Attributes": attributes},
            "scope": "local",
            "time": secs,
            "timeNano": nanos,
        });
        let _ = self.events.send(line.to_string());
    }

    /// `POST /containers/{id}/{start|stop|restart}`, with the events the
    /// engine sends for them (Docker 28.5's order for `stop`).
    fn act(&self, id: &str, word: &str) -> (&'static str, &'static str) {
        let status = match self.lock().containers.get(id) {
            Some(c) => c.status,
            None => return ("404 Not Found", r#"{"message":"No such container"}"#),
        };
        match (word, status) {
            ("start", "running") | ("stop", "exited") => ("304 Not Modified", ""),
            ("start", _) => {
                self.emit(id, "start", &[]);
                ("204 No Content", "")
            }
            ("stop", _) => {
                self.emit(id, "kill", &[("signal", "15")]);
                self.emit(id, "stop", &[]);
                self.emit(id, "die", &[("exitCode", "0")]);
                ("204 No Content", "")
            }
            ("restart", _) => {
                self.emit(id, "kill", &[("signal", "15")]);
                self.emit(id, "die", &[("exitCode", "0")]);
                self.emit(id, "restart", &[]);
                self.emit(id, "start", &[]);
                ("204 No Content", "")
            }
            _ => ("404 Not Found", r#"{"message":"page not found"}"#),
        }
    }

    fn inspect(&self, id: &str) -> Option<String> {
        let st = self.lock();
        let c = st.containers.get(id)?;
        Some(
            serde_json::json!({
                "Id": id,
                "Name": format!("/{}", c.name),
                "Created": "2026-11-01T10:00:00Z",
                "Image": "sha256:abc",
                "RestartCount": c.restart_count,
                "State": {
                    "Status": c.status,
                    "Running": c.status == "running" || c.status == "paused",
                    "Paused": c.status == "paused",
                    "Restarting": false,
                    "OOMKilled": c.oom_killed,
                    "Dead": false,
                    "ExitCode": c.exit_code,
                    "StartedAt": c.started_at,
                    "FinishedAt": c.finished_at,
                },
                "Config": {"Image": "x:1", "Labels": c.labels, "Tty": false},
                "NetworkSettings": {"Networks": null, "Ports": null},
            })
            .to_string(),
        )
    }

    fn list(&self) -> String {
        let st = self.lock();
        let all: Vec<serde_json::Value> = st
            .containers
            .iter()
            .map(|(id, c)| {
                serde_json::json!({"Id": id, "Names": [format!("/{}", c.name)],
                    "State": c.status, "Image": "x:1", "Labels": c.labels})
            })
            .collect();
        serde_json::Value::Array(all).to_string()
    }

    async fn serve(self, mut s: Conn<UnixStream>) -> std::io::Result<()> {
        while let Some(req) = s.next_request().await? {
            let path = req.path.as_str();
            // `/v1.51/containers/json` → `/containers/json`
            let path = match path.strip_prefix("/v") {
                Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or(path),
                None => path,
            };
            let api = Some("1.51");
            match path {
                "/_ping" => s.json_with("200 OK", "OK", api).await?,
                "/version" => {
                    let v = r#"{"Version":"28.5.2","ApiVersion":"1.51","MinAPIVersion":"1.24","Os":"linux","Arch":"amd64"}"#;
                    s.json_with("200 OK", v, api).await?
                }
                "/info" => {
                    let (_, _, now) = now_parts();
                    let v =
                        format!(r#"{{"NCPU":2,"MemTotal":1000,"Images":1,"SystemTime":"{now}"}}"#);
                    s.json_with("200 OK", &v, api).await?
                }
                "/volumes" => s.json_with("200 OK", r#"{"Volumes":[]}"#, api).await?,
                "/containers/json" => s.json_with("200 OK", &self.list(), api).await?,
                "/events" => return self.stream_events(s).await,
                p if req.method == "POST" && p.starts_with("/containers/") => {
                    let rest = &p["/containers/".len()..];
                    let (id, word) = rest.split_once('/').unwrap_or((rest, ""));
                    let (status, body) = self.act(id, word);
                    s.json_with(status, body, api).await?
                }
                p if p.starts_with("/containers/") && p.ends_with("/json") => {
                    let id = &p["/containers/".len()..p.len() - "/json".len()];
                    match self.inspect(id) {
                        Some(body) => s.json_with("200 OK", &body, api).await?,
                        None => {
                            let m = format!(r#"{{"message":"No such container: {id}"}}"#);
                            s.json_with("404 Not Found", &m, api).await?
                        }
                    }
                }
                "/services" => {
                    let m = r#"{"message":"This node is not a swarm manager."}"#;
                    s.json_with("503 Service Unavailable", m, api).await?
                }
                _ => {
                    let m = r#"{"message":"page not found"}"#;
                    s.json_with("404 Not Found", m, api).await?
                }
            }
        }
        Ok(())
    }

    /// `/events`: chunked, one JSON line per event, until the test ends.
    async fn stream_events(self, mut s: Conn<UnixStream>) -> std::io::Result<()> {
        let mut rx = self.events.subscribe();
        s.start_chunked("application/json", Some("1.51")).await?;
        while let Ok(line) = rx.recv().await {
            s.chunk(&format!("{line}\n")).await?;
        }
        Ok(())
    }
}
