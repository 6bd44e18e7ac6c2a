//! Container commands on one endpoint: the per-container checks (filters, label,
//! self-protection, one at a time, rate limit), the engine call, and exactly one
//! result, sent when the container's state reaches what the word asks for (as
//! seen through its events and inspects) or when `commands.timeout` runs out.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Endpoint;
use crate::commands::{Code, CommandResult, Request};
use crate::docker::DockerError;
use crate::docker::recreate::{self, Outcome, RecreateError};
use crate::payloads::ContainerState;

#[derive(Debug)]
pub enum EndpointCommand {
    Container {
        name: String,
        req: Request,
        /// When the router received it: `duration_ms` counts from here.
        received: std::time::Instant,
    },
    /// Full re-list and republish; the outcome goes back to the router.
    Resync {
        done: oneshot::Sender<Result<(), String>>,
    },
}

#[derive(Debug)]
pub struct Pending {
    seq: u64,
    req: Request,
    received: std::time::Instant,
    id: String,
    prev_started_at: Option<String>,
    engine_done: bool,
    deadline: Instant,
}

/// What a command task reports back.
#[derive(Debug)]
pub enum Answer {
    /// A plain engine call: false = "already so".
    Engine(Result<bool, DockerError>),
    /// An `update` (pull + recreate), complete.
    Update(Result<Outcome, RecreateError>),
}

/// (container name, command sequence number, answer).
pub type ActionResult = (String, u64, Answer);

enum Progress {
    Reached,
    Failed(String),
    Waiting,
}

/// Has the container reached what `action` asks for?
fn progress(action: &str, st: &ContainerState, prev_started_at: Option<&str>) -> Progress {
    let restarted = st.started_at.as_deref() != prev_started_at && st.started_at.is_some();
    let running = st.state == "running";
    match action {
        "start" | "restart" => {
            let fresh = action == "start" || restarted;
            if running && fresh {
                Progress::Reached
            } else if restarted && matches!(st.state.as_str(), "exited" | "dead") {
                Progress::Failed(format!(
                    "the container exited right after starting (exit code {})",
                    st.exit_code
                ))
            } else {
                Progress::Waiting
            }
        }
        "stop" | "kill" if !st.running => Progress::Reached,
        "pause" if st.paused => Progress::Reached,
        "unpause" if running && !st.paused => Progress::Reached,
        _ => Progress::Waiting,
    }
}

impl Endpoint {
    pub(super) async fn on_command(&mut self, cmd: EndpointCommand) -> Result<(), DockerError> {
        match cmd {
            EndpointCommand::Container {
                name,
                req,
                received,
            } => {
                self.start_command(name, req, received);
                Ok(())
            }
            EndpointCommand::Resync { done } => {
                let r = self.resync().await;
                let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
                r
            }
        }
    }

    async fn resync(&mut self) -> Result<(), DockerError> {
        self.refresh_facts().await?;
        self.full_sync().await?;
        self.republish_all();
        tracing::info!(endpoint = %self.id, "resync done");
        Ok(())
    }

    fn send_result(&self, name: &str, r: CommandResult) {
        if r.ok {
            tracing::info!(endpoint = %self.id, container = %name, action = ?r.action, ms = r.duration_ms, "command done");
        } else {
            tracing::warn!(endpoint = %self.id, container = %name, action = ?r.action, code = ?r.code, error = ?r.error, "command refused or failed");
        }
        self.outbox.send(
            self.settings.topics.container_result(&self.id, name),
            r.to_json(),
        );
    }

    fn start_command(&mut self, name: String, req: Request, received: std::time::Instant) {
        let refuse = |code: Code, msg: String| CommandResult::refused(&req, code, msg, received);
        let s = &self.settings;
        if !s.filter.allows_name(&name) {
            let r = refuse(
                Code::Forbidden,
                "the container is not mirrored (containers.include / exclude)".into(),
            );
            return self.send_result(&name, r);
        }
        let Some(state) = self.containers.get(&name) else {
            let r = refuse(
                Code::NotFound,
                format!("no container `{name}` on endpoint `{}`", self.id),
            );
            return self.send_result(&name, r);
        };
        let who = crate::commands::Subject {
            label_off: self.no_commands.contains(&name),
            protected: s.protect.is_match(&name),
            own: s.own_ids.contains(&state.id),
        };
        if let Some((code, msg)) = crate::commands::refusal(
            s.commands.enabled,
            &s.commands.allow,
            &req.action,
            Some(&who),
        ) {
            let r = refuse(code, msg);
            return self.send_result(&name, r);
        }
        if req.action == "check" {
            let scope = crate::watcher::CheckScope::Container(self.id.clone(), name.clone());
            let topic = s.topics.container_result(&self.id, &name);
            return crate::watcher::request_check(
                &s.checks,
                scope,
                req,
                topic,
                received,
                s.command_timeout,
                &self.outbox,
            );
        }
        if self.pending.contains_key(&name) {
            let r = refuse(
                Code::Busy,
                "another command is running on this container".into(),
            );
            return self.send_result(&name, r);
        }
        let now = Instant::now();
        if let Some(last) = self.last_command.get(&name) {
            let since = now.duration_since(*last);
            if since < s.min_interval {
                let wait = s.min_interval - since;
                let r = refuse(
                    Code::RateLimited,
                    format!(
                        "commands.min_interval is {}; retry in {} ms",
                        humantime::format_duration(s.min_interval),
                        wait.as_millis()
                    ),
                );
                return self.send_result(&name, r);
            }
        }
        self.last_command.insert(name.clone(), now);
        self.next_seq += 1;
        let seq = self.next_seq;
        let id = state.id.clone();
        let timeout = if req.action == "update" {
            s.update_timeout
        } else {
            s.command_timeout
        };
        self.pending.insert(
            name.clone(),
            Pending {
                seq,
                req: req.clone(),
                received,
                id: id.clone(),
                prev_started_at: state.started_at.clone(),
                engine_done: false,
                deadline: now + timeout,
            },
        );
        tracing::info!(endpoint = %self.id, container = %name, action = %req.action, "running command");
        let client = self.client.clone();
        let action = req.action;
        if action == "update" {
            let auth = registry_auth(&s.registry_credentials, &state.image);
            // Detached: a recreate cut in the middle (the session ends, a
            // reload) would leave the container renamed; it always runs to its end.
            if let Some(inv) = &s.inventory {
                inv.set_in_progress(&self.id, &name, true);
            }
            let (tx, rx) = oneshot::channel();
            let n = name.clone();
            let portainer = self.portainer.clone();
            let (inv, ep) = (s.inventory.clone(), self.id.clone());
            tokio::spawn(async move {
                let r = match portainer {
                    Some((p, env)) => via_portainer(&p, env, &client, &id, timeout).await,
                    None => recreate::recreate(&client, &id, &n, auth.as_deref(), timeout).await,
                };
                if let Some(inv) = inv {
                    inv.set_in_progress(&ep, &n, false);
                }
                let _ = tx.send(r);
            });
            self.actions.spawn(async move {
                let r = rx.await.unwrap_or_else(|_| {
                    Err(RecreateError::Refused("the update task ended early".into()))
                });
                (name, seq, Answer::Update(r))
            });
            return;
        }
        self.actions.spawn(async move {
            let r = client
                .container_action(&id, &action, &[], timeout.max(Duration::from_secs(1)))
                .await;
            (name, seq, Answer::Engine(r))
        });
    }

    pub(super) fn on_action_done(&mut self, (name, seq, r): super::commands::ActionResult) {
        let Some(p) = self.pending.get_mut(&name).filter(|p| p.seq == seq) else {
            return; // timed out or failed meanwhile
        };
        let r = match r {
            Answer::Engine(r) => r,
            Answer::Update(r) => return self.on_update_done(&name, r),
        };
        match r {
            Ok(_) => {
                p.engine_done = true;
                let id = p.id.clone();
                // Confirm with an inspect even if the events are slow.
                self.schedule_inspect(id);
                self.check_pending(&name);
            }
            Err(e) => {
                let (code, msg) = match e {
                    DockerError::NotFound => {
                        (Code::NotFound, "the container no longer exists".to_string())
                    }
                    DockerError::Timeout => (
                        Code::Timeout,
                        "the engine did not answer in time".to_string(),
                    ),
                    DockerError::Status { message, .. } => (Code::EngineError, message),
                    other => (Code::EngineError, other.to_string()),
                };
                if let Some(p) = self.pending.remove(&name) {
                    let state = self.containers.get(&name).map(|s| s.state.clone());
                    let r = CommandResult::refused(&p.req, code, msg, p.received).with_state(state);
                    self.send_result(&name, r);
                }
            }
        }
    }

    /// An `update` ended: the new container runs (checked by the recreate
    /// itself), the image was current, or the old container is back.
    fn on_update_done(&mut self, name: &str, r: Result<Outcome, RecreateError>) {
        let Some(p) = self.pending.remove(name) else {
            return;
        };
        let state = self.containers.get(name).map(|s| s.state.clone());
        let result = match r {
            Ok(Outcome::UpToDate) => {
                tracing::info!(endpoint = %self.id, container = %name, "update: the image is current");
                CommandResult::ok(&p.req, state, p.received)
            }
            Ok(Outcome::Updated { id, running }) => {
                tracing::info!(endpoint = %self.id, container = %name, new_id = %id, "update: recreated from the new image");
                self.schedule_inspect(id);
                let st = if running { "running" } else { "created" };
                CommandResult::ok(&p.req, Some(st.to_string()), p.received)
            }
            Err(RecreateError::Refused(why)) => {
                CommandResult::refused(&p.req, Code::Invalid, why, p.received).with_state(state)
            }
            Err(RecreateError::Engine {
                err: DockerError::NotFound,
                ..
            }) => CommandResult::refused(
                &p.req,
                Code::NotFound,
                "the container no longer exists",
                p.received,
            ),
            Err(e) => CommandResult::refused(&p.req, Code::EngineError, e.to_string(), p.received)
                .with_state(state),
        };
        self.send_result(name, result);
    }

    /// Called whenever a container's state is published.
    pub(super) fn check_pending(&mut self, name: &str) {
        let (Some(p), Some(st)) = (self.pending.get(name), self.containers.get(name)) else {
            return;
        };
        // An `update`'s outcome is the recreate's own verdict (on_update_done):
        // the old container running again means it was restored, not updated.
        if !p.engine_done || st.id != p.id || p.req.action == "update" {
            return;
        }
        let outcome = progress(&p.req.action, st, p.prev_started_at.as_deref());
        let state = Some(st.state.clone());
        let result = match outcome {
            Progress::Waiting => return,
            Progress::Reached => CommandResult::ok(&p.req, state, p.received),
            Progress::Failed(msg) => {
                CommandResult::refused(&p.req, Code::EngineError, msg, p.received).with_state(state)
            }
        };
        self.pending.remove(name);
        self.send_result(name, result);
    }

    pub(super) fn next_command_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    pub(super) fn expire_commands(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            if let Some(p) = self.pending.remove(&name) {
                let state = self.containers.get(&name).map(|s| s.state.clone());
                let what = if p.engine_done {
                    "the container did not reach the requested state in time"
                } else {
                    "the engine did not answer in time"
                };
                let r = CommandResult::refused(&p.req, Code::Timeout, what, p.received)
                    .with_state(state);
                self.send_result(&name, r);
            }
        }
    }

    pub(super) fn fail_pending(&mut self, name: &str, why: &str) {
        if let Some(p) = self.pending.remove(name) {
            let r = CommandResult::refused(&p.req, Code::EngineError, why, p.received);
            self.send_result(name, r);
        }
    }

    pub(super) fn fail_all_pending(&mut self, why: &str) {
        let names: Vec<String> = self.pending.keys().cloned().collect();
        for n in names {
            self.fail_pending(&n, why);
        }
        self.actions.abort_all();
    }

    /// While the engine is unreachable: answer at once instead of queueing.
    pub(super) fn refuse_offline(&mut self, cmd: EndpointCommand) {
        let why = format!("endpoint `{}` is offline", self.id);
        match cmd {
            EndpointCommand::Container {
                name,
                req,
                received,
            } => {
                let r = CommandResult::refused(&req, Code::EngineError, why, received);
                self.send_result(&name, r);
            }
            EndpointCommand::Resync { done } => {
                let _ = done.send(Err(why));
            }
        }
    }
}

/// `update` on a Portainer environment: Portainer's recreate (it pulls with
/// its own registry credentials and keeps its access controls), then a check
/// that the new container runs.
async fn via_portainer(
    portainer: &crate::portainer::PortainerClient,
    env: i64,
    client: &crate::docker::DockerClient,
    id: &str,
    timeout: Duration,
) -> Result<Outcome, RecreateError> {
    let before = client
        .inspect_raw(id)
        .await
        .map_err(|err| RecreateError::Engine {
            step: "inspecting the container",
            err,
        })?;
    recreate::split_reference(before["Config"]["Image"].as_str().unwrap_or_default())?;
    let was_running = before["State"]["Running"] == serde_json::json!(true);
    let new_id = portainer
        .recreate(env, id, timeout)
        .await
        .map_err(|e| RecreateError::Engine {
            step: "Portainer's recreate",
            err: DockerError::Status {
                status: 502,
                message: e.to_string(),
            },
        })?;
    if was_running {
        tokio::time::sleep(recreate::SETTLE).await;
        let st = client
            .inspect_raw(&new_id)
            .await
            .map_err(|err| RecreateError::Engine {
                step: "inspecting the new container",
                err,
            })?;
        if st["State"]["Running"] != serde_json::json!(true) {
            return Err(RecreateError::Engine {
                step: "starting the new container",
                err: DockerError::Status {
                    status: 500,
                    message: format!(
                        "it is {} with exit code {}",
                        st["State"]["Status"].as_str().unwrap_or("not running"),
                        st["State"]["ExitCode"]
                    ),
                },
            });
        }
    }
    Ok(Outcome::Updated {
        id: new_id,
        running: was_running,
    })
}

/// `X-Registry-Auth` for pulling `image`: base64url of the registry's
/// credentials, when configured.
fn registry_auth(
    creds: &std::collections::HashMap<String, crate::registry::client::Credentials>,
    image: &str,
) -> Option<String> {
    use base64::Engine as _;
    let r = crate::registry::reference::Reference::parse(image)?;
    let c = creds.get(&r.registry).or_else(|| creds.get(r.api_host()))?;
    let json = serde_json::json!({"username": c.username, "password": c.password,
                                  "serveraddress": r.registry});
    Some(base64::engine::general_purpose::URL_SAFE.encode(json.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::models::ContainerInspect;

    fn st(state: &str, started: Option<&str>) -> ContainerState {
        let mut s = ContainerState::from_inspect("e", &ContainerInspect::default());
        s.state = state.into();
        s.running = matches!(state, "running" | "paused" | "restarting");
        s.paused = state == "paused";
        s.started_at = started.map(String::from);
        s
    }

    fn reached(action: &str, s: &ContainerState, prev: Option<&str>) -> bool {
        matches!(progress(action, s, prev), Progress::Reached)
    }

    #[test]
    fn targets() {
        let t1 = Some("2026-01-01T00:00:00Z");
        let t2 = Some("2026-01-01T00:00:05Z");
        assert!(reached("start", &st("running", t1), None));
        assert!(!reached("start", &st("exited", t1), t1));
        assert!(reached("stop", &st("exited", t1), t1));
        assert!(!reached("stop", &st("running", t1), t1));
        assert!(reached("kill", &st("exited", t1), t1));
        // A restart must show a new start time.
        assert!(!reached("restart", &st("running", t1), t1));
        assert!(reached("restart", &st("running", t2), t1));
        assert!(reached("pause", &st("paused", t1), t1));
        assert!(!reached("pause", &st("running", t1), t1));
        assert!(reached("unpause", &st("running", t1), t1));
        assert!(!reached("unpause", &st("paused", t1), t1));
        // Started, then died at once: a failure, not a wait until the timeout.
        assert!(matches!(
            progress("start", &st("exited", t2), t1),
            Progress::Failed(_)
        ));
        assert!(matches!(
            progress("restart", &st("exited", t2), t1),
            Progress::Failed(_)
        ));
    }
}
