//! Container commands on one endpoint: the per-container checks (filters, label,
//! self-protection, one at a time, rate limit), the engine call, and exactly one
//! result, sent when the container's state reaches what the word asks for (as
//! seen through its events and inspects) or when `commands.timeout` runs out.

mod batch;
mod ops;
mod reads;
mod updates;

pub use batch::Batch;
pub use ops::OpDone;

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Endpoint;
use crate::command::{Code, CommandResult, ContainerOutcome, Request};
use crate::docker::DockerError;
use crate::docker::recreate::{self, Outcome, Plan, RecreateError, Swap, Target};
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
    /// `update` on every container with an update, one after the other.
    UpdateAll {
        req: Request,
        received: std::time::Instant,
    },
    /// `prune` (SPEC §13).
    Prune {
        req: Request,
        received: std::time::Instant,
    },
    /// A word on a stack (SPEC §13).
    Stack {
        stack: String,
        req: Request,
        received: std::time::Instant,
    },
}

impl Pending {
    /// An `update`/`rollback`: bounded by its own timers, not `deadline`.
    fn is_op(&self) -> bool {
        crate::command::is_operation(&self.req.action)
    }
}

#[derive(Debug)]
pub struct Pending {
    seq: u64,
    req: Request,
    received: std::time::Instant,
    id: String,
    prev_started_at: Option<String>,
    engine_done: bool,
    /// The inspect serial when the engine answered: the verdict is taken
    /// once an inspect asked after that has been applied (`confirmed`), so
    /// events still in flight from before the command (another client's
    /// restart) or the command's own `die` are never taken for its outcome.
    confirm_after: u64,
    confirmed: bool,
    deadline: Instant,
    /// Part of a batch (`update_all`, a stack word): its outcome goes into
    /// that one result.
    from_all: bool,
}

/// What a command task reports back.
#[derive(Debug)]
pub enum Answer {
    /// A plain engine call: false = "already so".
    Engine(Result<bool, DockerError>),
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

/// What the endpoint's command runner holds: the command running on each
/// container and when the last one ran, the tasks of the three kinds of
/// words (actions, operations, reads), a batch under way, and `prune`,
/// which waits for operations (SPEC §16).
#[derive(Default)]
pub(super) struct CommandRunner {
    /// name → the command running on it (one at a time).
    pub pending: HashMap<String, Pending>,
    pub last_command: HashMap<String, Instant>,
    pub actions: JoinSet<ActionResult>,
    /// `update`/`rollback` outcomes: not aborted with a session (the
    /// recreate runs to its end), recorded in the history when they land.
    pub ops: JoinSet<OpDone>,
    /// Read-only words running (`logs`) and `prune`: (result topic, result).
    pub reads: JoinSet<(String, CommandResult)>,
    /// An `update_all` or a stack word under way.
    pub batch: Option<Batch>,
    pub next_seq: u64,
    /// `prune` runs after operations, never beside them.
    pub prune_running: bool,
    pub prune_waiting: Option<(Request, std::time::Instant)>,
}

impl CommandRunner {
    /// The result of the command on `name`, if `st` ends it (pure: the
    /// caller sends it). Ended commands leave `pending`; returns whether it
    /// was part of a batch, and its result.
    pub(super) fn verdict(
        &mut self,
        name: &str,
        st: &ContainerState,
    ) -> Option<(bool, CommandResult)> {
        let p = self.pending.get(name)?;
        // An `update`'s outcome is the recreate's own verdict (on_update_done):
        // the old container running again means it was restored, not updated.
        if !p.engine_done || !p.confirmed || st.id != p.id || p.is_op() {
            return None;
        }
        let state = Some(st.state.clone());
        let result = match progress(&p.req.action, st, p.prev_started_at.as_deref()) {
            Progress::Waiting => return None,
            Progress::Reached => CommandResult::ok(&p.req, state, p.received),
            Progress::Failed(msg) => {
                CommandResult::refused(&p.req, Code::EngineError, msg, p.received).with_state(state)
            }
        };
        let p = self.pending.remove(name)?;
        Some((p.from_all, result))
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
            EndpointCommand::UpdateAll { req, received } => {
                self.start_update_all(req, received);
                Ok(())
            }
            EndpointCommand::Prune { req, received } => {
                self.start_prune(req, received);
                Ok(())
            }
            EndpointCommand::Stack {
                stack,
                req,
                received,
            } => {
                self.start_stack_command(stack, req, received);
                Ok(())
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
    pub(super) fn send_result(&self, name: &str, r: CommandResult) {
        self.send_result_to(self.settings.topics.container_result(&self.id, name), r);
    }
    pub(super) fn send_result_to(&self, topic: String, r: CommandResult) {
        if r.ok {
            tracing::info!(endpoint = %self.id, %topic, action = ?r.action, ms = r.duration_ms, "command done");
        } else if Code::is_routine(r.code) {
            tracing::debug!(endpoint = %self.id, %topic, action = ?r.action, code = ?r.code, error = ?r.error, "command refused");
        } else {
            tracing::warn!(endpoint = %self.id, %topic, action = ?r.action, code = ?r.code, error = ?r.error, "command refused or failed");
        }
        self.outbox.send(topic, r.to_json());
    }
    /// What the command policy needs to know of container `name` (id `id`).
    pub(super) fn subject(&self, name: &str, id: &str) -> crate::command::Subject {
        let s = &self.settings;
        crate::command::Subject {
            label_off: self.table.no_commands.contains(name),
            logs_off: self.table.no_logs.contains(name),
            protected: s.protect.is_match(name),
            own: s.own_ids.contains(id),
            in_operation: name.ends_with(crate::filter::OLD_SUFFIX)
                || self.runner.pending.get(name).is_some_and(|p| p.is_op()),
        }
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
        let Some(state) = self.table.containers.get(&name) else {
            let r = refuse(
                Code::NotFound,
                format!("no container `{name}` on endpoint `{}`", self.id),
            );
            return self.send_result(&name, r);
        };
        let who = self.subject(&name, &state.id);
        let s = &self.settings;
        if let Some((code, msg)) = s.commands.policy().refusal(&req.action, Some(&who)) {
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
        if req.action == "logs" {
            // Read-only: beside a running command, bounded by MAX_READS.
            return self.start_logs(name, req, received);
        }
        if matches!(req.action.as_str(), "skip" | "unskip") {
            // A decision about versions: nothing runs on the container.
            return self.skip_word(&name, req, received);
        }
        if self.runner.pending.contains_key(&name) {
            let r = refuse(
                Code::Busy,
                "another command is running on this container".into(),
            );
            return self.send_result(&name, r);
        }
        let now = Instant::now();
        if let Some(last) = self.runner.last_command.get(&name) {
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
        if crate::command::is_operation(&req.action) {
            if let Err(r) = self.launch_op(&name, req, received, false) {
                self.send_result(&name, *r);
            } else {
                self.runner.last_command.insert(name, now);
            }
            return;
        }
        self.runner.last_command.insert(name.clone(), now);
        if req.action == "remove" {
            return self.launch_remove(name, req, received);
        }
        self.launch_word(name, req, received, false);
    }
    /// The engine call of a plain word (the checks done); its result comes
    /// when the state reaches what the word asks for.
    pub(super) fn launch_word(
        &mut self,
        name: String,
        req: Request,
        received: std::time::Instant,
        from_all: bool,
    ) {
        let timeout = self.settings.command_timeout;
        let deadline = Instant::now() + timeout;
        let (seq, id) = self.add_pending(&name, &req, received, deadline, from_all);
        tracing::info!(endpoint = %self.id, container = %name, action = %req.action, "running command");
        let client = self.client.clone();
        let action = req.action;
        self.runner.actions.spawn(async move {
            let r = client
                .container_action(&id, &action, &[], timeout.max(Duration::from_secs(1)))
                .await;
            (name, seq, Answer::Engine(r))
        });
    }
    /// A command's one result: on its container's topic, or into its batch.
    fn finish_pending(&mut self, name: &str, from_all: bool, r: CommandResult) {
        if from_all {
            if let Some(b) = &mut self.runner.batch {
                b.outcomes.push(ContainerOutcome::from((name, &r)));
            }
            self.next_of_batch();
        } else {
            self.send_result(name, r);
        }
    }
    /// Marks `name` busy with `req` until its result; returns the command's
    /// sequence number and the container id it runs on.
    fn add_pending(
        &mut self,
        name: &str,
        req: &Request,
        received: std::time::Instant,
        deadline: Instant,
        from_all: bool,
    ) -> (u64, String) {
        let (id, prev_started_at) = self
            .table
            .containers
            .get(name)
            .map(|s| (s.id.clone(), s.started_at.clone()))
            .unwrap_or_default();
        self.runner.next_seq += 1;
        let seq = self.runner.next_seq;
        self.runner.pending.insert(
            name.to_string(),
            Pending {
                seq,
                req: req.clone(),
                received,
                id: id.clone(),
                prev_started_at,
                engine_done: false,
                confirm_after: u64::MAX,
                confirmed: false,
                deadline,
                from_all,
            },
        );
        (seq, id)
    }
    pub(super) fn on_action_done(&mut self, (name, seq, r): super::commands::ActionResult) {
        let Some(p) = self.runner.pending.get_mut(&name).filter(|p| p.seq == seq) else {
            return; // timed out or failed meanwhile
        };
        let Answer::Engine(r) = r;
        match r {
            Ok(_) => {
                p.engine_done = true;
                p.confirm_after = self.inspects.serial();
                let id = p.id.clone();
                // Confirm with an inspect even if the events are slow.
                self.schedule_inspect(id);
                self.state_reached(&name);
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
                if let Some(p) = self.runner.pending.remove(&name) {
                    let state = self.table.containers.get(&name).map(|s| s.state.clone());
                    let r = CommandResult::refused(&p.req, code, msg, p.received).with_state(state);
                    self.finish_pending(&name, p.from_all, r);
                }
            }
        }
    }
    /// A state of `name` was reached (recorded from an event or an inspect,
    /// or its command was confirmed): the command waiting on it may end here.
    pub(super) fn state_reached(&mut self, name: &str) {
        let Some(st) = self.table.containers.get(name) else {
            return;
        };
        if let Some((from_all, result)) = self.runner.verdict(name, st) {
            self.finish_pending(name, from_all, result);
        }
    }
    /// An inspect numbered `serial` of container `id` answered: a command
    /// on it whose engine call ended before that inspect was asked can now
    /// be judged. Returns the container's name when one was confirmed.
    pub(super) fn confirm_command(&mut self, id: &str, serial: u64) -> Option<String> {
        let (name, p) = self
            .runner
            .pending
            .iter_mut()
            .find(|(_, p)| p.id == id && p.engine_done && !p.confirmed)?;
        if serial <= p.confirm_after {
            return None;
        }
        p.confirmed = true;
        Some(name.clone())
    }
    pub(super) fn next_command_deadline(&self) -> Option<Instant> {
        self.runner
            .pending
            .values()
            .filter(|p| !p.from_all || !p.is_op())
            .map(|p| p.deadline)
            .min()
    }
    pub(super) fn expire_commands(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .runner
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now && (!p.from_all || !p.is_op()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            if let Some(p) = self.runner.pending.remove(&name) {
                let state = self.table.containers.get(&name).map(|s| s.state.clone());
                let what = if p.engine_done {
                    "the container did not reach the requested state in time"
                } else {
                    "the engine did not answer in time"
                };
                let r = CommandResult::refused(&p.req, Code::Timeout, what, p.received)
                    .with_state(state);
                self.finish_pending(&name, p.from_all, r);
            }
        }
    }
    pub(super) fn fail_pending(&mut self, name: &str, why: &str) {
        if let Some(p) = self.runner.pending.remove(name) {
            let r = CommandResult::refused(&p.req, Code::EngineError, why, p.received);
            self.finish_pending(name, p.from_all, r);
        }
    }
    pub(super) fn fail_all_pending(&mut self, why: &str) {
        // An update or rollback runs on to its end; its outcome still comes.
        let names: Vec<String> = self
            .runner
            .pending
            .iter()
            .filter(|(_, p)| !crate::command::is_operation(&p.req.action))
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.fail_pending(&n, why);
        }
        self.runner.actions.abort_all();
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
            EndpointCommand::UpdateAll { req, received }
            | EndpointCommand::Prune { req, received } => {
                let r = CommandResult::refused(&req, Code::EngineError, why, received);
                self.outbox
                    .send(self.settings.topics.endpoint_result(&self.id), r.to_json());
            }
            EndpointCommand::Stack {
                stack,
                req,
                received,
            } => {
                let r = CommandResult::refused(&req, Code::EngineError, why, received);
                self.send_result_to(self.settings.topics.stack_result(&self.id, &stack), r);
            }
        }
    }
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

    /// A runner with `action` running on container `c1` (id `id1`, last
    /// started at 00:00:00), its engine call done, `confirmed` as given.
    fn runner_with(action: &str, confirmed: bool, from_all: bool) -> CommandRunner {
        let mut r = CommandRunner::default();
        let req = Request {
            action: action.into(),
            request_id: Some("r1".into()),
            ..Request::default()
        };
        r.pending.insert(
            "c1".into(),
            Pending {
                seq: 1,
                req,
                received: std::time::Instant::now(),
                id: "id1".into(),
                prev_started_at: Some("2026-01-01T00:00:00Z".into()),
                engine_done: true,
                confirm_after: 0,
                confirmed,
                deadline: Instant::now() + Duration::from_secs(30),
                from_all,
            },
        );
        r
    }

    fn on(id: &str, state: &str, started: Option<&str>) -> ContainerState {
        let mut s = st(state, started);
        s.id = id.into();
        s
    }

    #[test]
    fn a_reached_state_ends_its_command_once() {
        let t2 = Some("2026-01-01T00:00:05Z");
        let mut r = runner_with("restart", true, false);
        let (from_all, res) = r.verdict("c1", &on("id1", "running", t2)).expect("ended");
        assert!(!from_all);
        assert!(res.ok);
        assert_eq!(res.request_id.as_deref(), Some("r1"));
        assert_eq!(res.state.as_deref(), Some("running"));
        assert!(r.pending.is_empty());
        // Ended once: the same state again finds nothing waiting.
        assert!(r.verdict("c1", &on("id1", "running", t2)).is_none());
    }

    #[test]
    fn no_verdict_before_confirmation_or_on_another_container() {
        let t2 = Some("2026-01-01T00:00:05Z");
        // The engine answered but no later inspect confirmed it yet.
        let mut r = runner_with("stop", false, false);
        assert!(r.verdict("c1", &on("id1", "exited", t2)).is_none());
        // A container recreated under the name is not the one commanded.
        let mut r = runner_with("stop", true, false);
        assert!(r.verdict("c1", &on("id2", "exited", t2)).is_none());
        // A restart that shows the old start time is still waiting.
        let mut r = runner_with("restart", true, false);
        let t1 = Some("2026-01-01T00:00:00Z");
        assert!(r.verdict("c1", &on("id1", "running", t1)).is_none());
        assert_eq!(r.pending.len(), 1, "still waiting, still pending");
        // Another name's state ends nothing.
        assert!(r.verdict("c2", &on("id1", "running", t2)).is_none());
    }

    #[test]
    fn an_update_ends_by_its_recreate_not_by_a_state() {
        let mut r = runner_with("update", true, false);
        let t2 = Some("2026-01-01T00:00:05Z");
        assert!(r.verdict("c1", &on("id1", "running", t2)).is_none());
        assert_eq!(r.pending.len(), 1);
    }

    #[test]
    fn a_start_that_dies_at_once_fails_and_a_batch_member_says_so() {
        let t2 = Some("2026-01-01T00:00:05Z");
        let mut r = runner_with("start", true, true);
        let (from_all, res) = r.verdict("c1", &on("id1", "exited", t2)).expect("ended");
        assert!(from_all);
        assert!(!res.ok);
        assert_eq!(res.code, Some(Code::EngineError));
        assert!(
            res.error
                .as_deref()
                .is_some_and(|e| e.contains("exited right after"))
        );
        assert!(r.pending.is_empty());
    }
}
