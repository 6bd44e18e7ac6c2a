//! Container commands on one endpoint: the per-container checks (filters, label,
//! self-protection, one at a time, rate limit), the engine call, and exactly one
//! result, sent when the container's state reaches what the word asks for (as
//! seen through its events and inspects) or when `commands.timeout` runs out.

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

/// An `update`/`rollback` that ended (SPEC §14).
#[derive(Debug)]
pub struct OpDone {
    name: String,
    seq: u64,
    op_id: String,
    from_all: bool,
    swap: Swap,
    result: Result<Outcome, RecreateError>,
}

/// Words run on several containers one after the other, with one result:
/// `update_all` (goes on past a failure) or a compose stack's word (stops
/// at the first failure: a dependent must not start without what it needs).
#[derive(Debug)]
pub struct Batch {
    req: Request,
    received: std::time::Instant,
    /// (container, word) still to run.
    queue: std::collections::VecDeque<(String, String)>,
    outcomes: Vec<ContainerOutcome>,
    /// Where the one result goes.
    topic: String,
    stop_on_failure: bool,
    /// A stack word: the stack's containers, whose state at the end is the
    /// result's `state` (SPEC §13: §5's shape).
    stack: Option<Vec<String>>,
}

impl Batch {
    pub(super) fn new(
        req: Request,
        received: std::time::Instant,
        queue: std::collections::VecDeque<(String, String)>,
        topic: String,
        stack: Option<Vec<String>>,
    ) -> Self {
        Self {
            req,
            received,
            queue,
            outcomes: Vec::new(),
            topic,
            stop_on_failure: stack.is_some(),
            stack,
        }
    }
}

/// Pull progress reaches the `update` topic at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// `logs` fetches running at once per endpoint (each reads up to 8 MiB).
const MAX_READS: usize = 4;

impl Pending {
    /// An `update`/`rollback`: bounded by its own timers, not `deadline`.
    fn is_op(&self) -> bool {
        matches!(self.req.action.as_str(), "update" | "rollback")
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
        if matches!(req.action.as_str(), "update" | "rollback") {
            if let Err(r) = self.launch_op(&name, req, received, false) {
                self.send_result(&name, *r);
            } else {
                self.runner.last_command.insert(name, now);
            }
            return;
        }
        self.runner.last_command.insert(name.clone(), now);
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

    /// `logs` (SPEC §13): read-only, so beside any running command; fetched
    /// and decoded off the endpoint task, answered when done.
    fn start_logs(&mut self, name: String, req: Request, received: std::time::Instant) {
        if self.runner.reads.len() >= MAX_READS {
            let r = CommandResult::refused(
                &req,
                Code::Busy,
                format!("{MAX_READS} log requests are running on this endpoint; retry"),
                received,
            );
            return self.send_result(&name, r);
        }
        let Some(id) = self.table.containers.get(&name).map(|s| s.id.clone()) else {
            return;
        };
        let topic = self.settings.topics.container_result(&self.id, &name);
        let client = self.client.clone();
        let tail = req.lines.unwrap_or(crate::command::DEFAULT_LOG_LINES);
        let timeout = self.settings.command_timeout.max(Duration::from_secs(1));
        self.runner.reads.spawn(async move {
            let r = match tokio::time::timeout(timeout, client.logs(&id, tail, req.since)).await {
                Ok(Ok(logs)) => {
                    let mut r = CommandResult::ok(&req, None, received);
                    r.logs = Some(logs.lines);
                    r.truncated = Some(logs.truncated);
                    r.fit_logs(crate::command::MAX_RESULT_BYTES);
                    r
                }
                Ok(Err(DockerError::NotFound)) => {
                    CommandResult::refused(&req, Code::NotFound, "the container is gone", received)
                }
                Ok(Err(e)) => {
                    CommandResult::refused(&req, Code::EngineError, e.to_string(), received)
                }
                Err(_) => CommandResult::refused(
                    &req,
                    Code::Timeout,
                    format!(
                        "no logs from the engine within {}",
                        humantime::format_duration(timeout)
                    ),
                    received,
                ),
            };
            (topic, r)
        });
    }

    /// `prune` (SPEC §13, §16; opt-in): under the command policy, after —
    /// never beside — operations: it waits while an update, rollback or
    /// batch runs, and those wait (`busy`) while it runs. Off the endpoint
    /// task; one result with the bytes reclaimed, then a fresh disk summary.
    fn start_prune(&mut self, req: Request, received: std::time::Instant) {
        let topic = self.settings.topics.endpoint_result(&self.id);
        let busy = if self.runner.prune_running || self.runner.prune_waiting.is_some() {
            Some("a prune is already running on this endpoint")
        } else if self.runner.reads.len() >= MAX_READS {
            Some("too many requests running on this endpoint; retry")
        } else {
            None
        };
        if let Some(why) = busy {
            let r = CommandResult::refused(&req, Code::Busy, why, received);
            return self.send_result_to(topic, r);
        }
        if self.operations_running() {
            tracing::info!(endpoint = %self.id, "prune waits for the running operations");
            self.runner.prune_waiting = Some((req, received));
            return;
        }
        self.launch_prune(req, received);
    }

    /// An update, rollback or batch is under way on this endpoint.
    fn operations_running(&self) -> bool {
        self.runner.batch.is_some() || self.runner.pending.values().any(Pending::is_op)
    }

    /// A waiting `prune` starts once the last operation ended.
    fn after_operation(&mut self) {
        if !self.operations_running()
            && let Some((req, received)) = self.runner.prune_waiting.take()
        {
            self.launch_prune(req, received);
        }
    }

    fn launch_prune(&mut self, req: Request, received: std::time::Instant) {
        let topic = self.settings.topics.endpoint_result(&self.id);
        let s = &self.settings;
        // The stopped containers the one policy lets go (the table holds only
        // mirrored ones: what the filters exclude is never a candidate).
        let containers = self
            .table
            .containers
            .iter()
            .filter(|(_, st)| !st.running)
            .filter(|(name, st)| {
                let who = self.subject(name, &st.id);
                s.commands.policy().refusal("prune", Some(&who)).is_none()
            })
            .map(|(_, st)| st.id.clone())
            .collect();
        let plan = crate::docker::prune::PrunePlan {
            what: req.what.clone().unwrap_or_else(|| {
                crate::command::DEFAULT_PRUNE
                    .iter()
                    .map(|w| w.to_string())
                    .collect()
            }),
            label: req.label.clone(),
            all_volumes: req.all_volumes,
            containers,
        };
        let client = self.client.clone();
        tracing::info!(endpoint = %self.id, what = ?plan.what, containers = plan.containers.len(), "pruning");
        self.runner.prune_running = true;
        self.runner.reads.spawn(async move {
            let r = match client.prune_planned(&plan).await {
                Ok(n) => {
                    let mut r = CommandResult::ok(&req, None, received);
                    r.reclaimed_bytes = Some(n);
                    r
                }
                Err((w, e)) => CommandResult::refused(
                    &req,
                    Code::EngineError,
                    format!("prune {w}: {e}"),
                    received,
                ),
            };
            (topic, r)
        });
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

    /// Starts an `update` or `rollback` (the checks of `start_command` done):
    /// recorded in the history, run detached to its end (a recreate cut in
    /// the middle would leave the container renamed), its pull progress
    /// shown on the `update` topic.
    fn launch_op(
        &mut self,
        name: &str,
        req: Request,
        received: std::time::Instant,
        from_all: bool,
    ) -> Result<(), Box<CommandResult>> {
        let refuse =
            |code: Code, msg: String| Box::new(CommandResult::refused(&req, code, msg, received));
        if self.runner.prune_running {
            return Err(refuse(
                Code::Busy,
                "a prune is running on this endpoint; retry when it ends".into(),
            ));
        }
        let Some(state) = self.table.containers.get(name) else {
            return Err(refuse(
                Code::NotFound,
                format!("no container `{name}` on endpoint `{}`", self.id),
            ));
        };
        let target = match (req.action.as_str(), &req.version) {
            ("rollback", _) => {
                let Some(last) = self.history.last_update(name) else {
                    return Err(refuse(
                        Code::Invalid,
                        "nothing to roll back: the history has no successful update of this container"
                            .into(),
                    ));
                };
                let (Some(image), Some(reference)) = (&last.from_image, &last.from_reference)
                else {
                    return Err(refuse(
                        Code::Invalid,
                        "the last update did not record the previous image".into(),
                    ));
                };
                if *image == state.image_id {
                    return Err(refuse(
                        Code::Invalid,
                        "the container already runs the image it ran before its last update".into(),
                    ));
                }
                Target::Image {
                    id: image.clone(),
                    reference: reference.clone(),
                }
            }
            (_, Some(v)) => Target::Tag(v.clone()),
            _ => Target::Current,
        };
        let s = self.settings.clone();
        let timeout = s.update_timeout;
        let auth = registry_auth(&s.registry_credentials, &state.image);
        let current_image = state.image.clone();
        let deadline = Instant::now() + timeout + s.verify_for;
        let (seq, id) = self.add_pending(name, &req, received, deadline, from_all);
        let op_id = self.history.begin(name, &req.action);
        tracing::info!(endpoint = %self.id, container = %name, action = %req.action, version = ?req.version, "running command");
        if let Some(inv) = &s.inventory {
            inv.set_in_progress(&self.id, name, true);
        }
        let (tx, rx) = oneshot::channel();
        let (client, portainer) = (self.client.clone(), self.portainer.clone());
        let (ep, n) = (self.id.clone(), name.to_string());
        tokio::spawn(async move {
            let last = std::sync::Mutex::new(None::<Instant>);
            let inv = s.inventory.clone();
            let on_progress = |p: u8| {
                let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
                if p < 100 && l.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                    return;
                }
                *l = Some(Instant::now());
                if let Some(inv) = &inv {
                    inv.set_progress(&ep, &n, p);
                }
            };
            let (swap, r) = match check_tag(&s, &target, &current_image).await {
                Err(e) => (Swap::default(), Err(e)),
                Ok(()) => match (portainer, &target) {
                    (Some((p, env)), Target::Current) => {
                        via_portainer(&p, env, &client, &id, timeout, s.verify_for).await
                    }
                    _ => {
                        let plan = Plan {
                            target,
                            registry_auth: auth.as_deref(),
                            pull_timeout: timeout,
                            verify_for: s.verify_for,
                            progress: &on_progress,
                        };
                        recreate::recreate(&client, &id, &n, plan).await
                    }
                },
            };
            if let Some(inv) = &s.inventory {
                inv.set_in_progress(&ep, &n, false);
            }
            let _ = tx.send((swap, r));
        });
        let name = name.to_string();
        self.runner.ops.spawn(async move {
            let (swap, result) = rx.await.unwrap_or_else(|_| {
                (
                    Swap::default(),
                    Err(RecreateError::Refused("the update task ended early".into())),
                )
            });
            OpDone {
                name,
                seq,
                op_id,
                from_all,
                swap,
                result,
            }
        });
        Ok(())
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
                if let Some(p) = self.runner.pending.remove(&name) {
                    let state = self.table.containers.get(&name).map(|s| s.state.clone());
                    let r = CommandResult::refused(&p.req, code, msg, p.received).with_state(state);
                    self.finish_pending(&name, p.from_all, r);
                }
            }
        }
    }

    /// An `update`/`rollback` ended: the new container runs (verified by the
    /// recreate itself), the image was current, or the old container is back.
    /// Recorded in the history whether or not its result already timed out.
    pub(super) fn on_op_done(&mut self, done: OpDone) {
        let OpDone {
            name,
            seq,
            op_id,
            from_all,
            swap,
            result: r,
        } = done;
        let (status, error) = match &r {
            Ok(Outcome::UpToDate) => (None, None),
            Ok(Outcome::Updated { .. }) => (Some("ok"), None),
            Err(RecreateError::RolledBack(_)) => (Some("rolled_back"), Some(r_err(&r))),
            Err(_) => (Some("failed"), Some(r_err(&r))),
        };
        match status {
            Some(st) => self.history.finish(&name, &op_id, &swap, st, error),
            // Nothing changed: not worth a line of history.
            None => self.history.discard(&name, &op_id),
        }
        // Before the result, whether or not the table shows the name right
        // now (a rollback's renames may not have arrived yet).
        self.publish_history_of(&name);
        let pending = self
            .runner
            .pending
            .get(&name)
            .is_some_and(|p| p.seq == seq)
            .then(|| self.runner.pending.remove(&name))
            .flatten();
        let state = self.table.containers.get(&name).map(|s| s.state.clone());
        let result = pending.map(|p| match r {
            Ok(Outcome::UpToDate) => {
                tracing::info!(endpoint = %self.id, container = %name, "update: the image is current");
                CommandResult::ok(&p.req, state, p.received)
            }
            Ok(Outcome::Updated { id, running }) => {
                tracing::info!(endpoint = %self.id, container = %name, new_id = %id, action = %p.req.action, "recreated from the new image");
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
        });
        if from_all {
            let outcome = match &result {
                Some(r) => ContainerOutcome::from((name.as_str(), r)),
                None => ContainerOutcome::refused(
                    &name,
                    Code::Timeout,
                    "the update did not end in time",
                ),
            };
            if let Some(b) = &mut self.runner.batch {
                b.outcomes.push(outcome);
            }
            self.next_of_batch();
        } else if let Some(r) = result {
            self.send_result(&name, r);
        }
        self.after_operation();
    }

    /// `<ct>/history` (retained) of a container in the table, on republish.
    pub(super) fn publish_history(&self, name: &str) {
        if self.table.containers.contains_key(name) {
            self.publish_history_of(name);
        }
    }

    /// `<ct>/history` (retained) with every ended operation.
    fn publish_history_of(&self, name: &str) {
        if self.history.has_ended(name) {
            self.outbox.retain(
                self.settings.topics.container_history(&self.id, name),
                self.history.payload(name),
            );
        }
    }

    /// `update_all` (SPEC §14): the endpoint's containers whose status is
    /// `update_available`, those the policy permits, one after the other.
    fn start_update_all(&mut self, req: Request, received: std::time::Instant) {
        let topic = self.settings.topics.endpoint_result(&self.id);
        if self.runner.batch.is_some() {
            let r = CommandResult::refused(
                &req,
                Code::Busy,
                "an update_all or a stack command is already running on this endpoint",
                received,
            );
            return self.outbox.send(topic, r.to_json());
        }
        let names = self
            .settings
            .inventory
            .as_ref()
            .map(|i| i.updates_available(&self.id))
            .unwrap_or_default();
        let mut ua = Batch::new(req, received, Default::default(), topic, None);
        let s = &self.settings;
        for name in names {
            let Some(state) = self.table.containers.get(&name) else {
                continue;
            };
            let who = self.subject(&name, &state.id);
            let refusal = s
                .commands
                .policy()
                .refusal("update", Some(&who))
                .or_else(|| {
                    self.runner.pending.contains_key(&name).then(|| {
                        (
                            Code::Busy,
                            "another command is running on this container".into(),
                        )
                    })
                });
            match refusal {
                Some((code, msg)) => ua
                    .outcomes
                    .push(ContainerOutcome::refused(&name, code, msg)),
                None => ua.queue.push_back((name, "update".into())),
            }
        }
        tracing::info!(endpoint = %self.id, containers = ua.queue.len(), "update_all");
        self.runner.batch = Some(ua);
        self.next_of_batch();
    }

    /// Starts the next word of the batch, or sends its one result.
    pub(super) fn next_of_batch(&mut self) {
        loop {
            let Some(b) = &mut self.runner.batch else {
                return;
            };
            if b.stop_on_failure && b.outcomes.iter().any(|o| !o.ok) {
                b.queue.clear();
            }
            let Some((name, word)) = b.queue.pop_front() else {
                break;
            };
            let req = Request {
                action: word.clone(),
                request_id: b.req.request_id.clone(),
                version: None,
                lines: None,
                since: None,
                what: None,
                label: None,
                all_volumes: false,
            };
            let received = std::time::Instant::now();
            if self.runner.pending.contains_key(&name) {
                if let Some(b) = &mut self.runner.batch {
                    b.outcomes.push(ContainerOutcome::refused(
                        &name,
                        Code::Busy,
                        "another command is running on this container",
                    ));
                }
                continue;
            }
            if !self.table.containers.contains_key(&name) {
                if let Some(b) = &mut self.runner.batch {
                    b.outcomes.push(ContainerOutcome::refused(
                        &name,
                        Code::NotFound,
                        "the container no longer exists",
                    ));
                }
                continue;
            }
            if word != "update" {
                self.launch_word(name, req, received, true);
                return;
            }
            match self.launch_op(&name, req, received, true) {
                Ok(()) => return,
                Err(r) => {
                    if let Some(b) = &mut self.runner.batch {
                        b.outcomes
                            .push(ContainerOutcome::from((name.as_str(), &*r)));
                    }
                }
            }
        }
        let Some(b) = self.runner.batch.take() else {
            return;
        };
        let failed: Vec<&ContainerOutcome> = b.outcomes.iter().filter(|o| !o.ok).collect();
        let mut r = match (failed.first(), b.stop_on_failure) {
            (None, _) => CommandResult::ok(&b.req, None, b.received),
            // A stack word: the first failure is the reason, nothing after it ran.
            (Some(f), true) => CommandResult::refused(
                &b.req,
                f.code.unwrap_or(Code::EngineError),
                format!(
                    "{} `{}`: {}",
                    f.container,
                    b.req.action,
                    f.error.as_deref().unwrap_or("failed")
                ),
                b.received,
            ),
            (Some(_), false) => CommandResult::refused(
                &b.req,
                Code::EngineError,
                format!(
                    "{} of {} containers were not updated",
                    failed.len(),
                    b.outcomes.len()
                ),
                b.received,
            ),
        };
        r.outcomes = Some(b.outcomes);
        if let Some(members) = &b.stack {
            let running = members
                .iter()
                .filter(|n| self.table.containers.get(*n).is_some_and(|s| s.running))
                .count();
            r.state = Some(crate::stacks::state_word(members.len(), running).to_string());
        }
        tracing::info!(endpoint = %self.id, action = %b.req.action, ok = r.ok, "batch done");
        self.send_result_to(b.topic, r);
        self.after_operation();
    }

    /// Called whenever a container's state is published.
    pub(super) fn check_pending(&mut self, name: &str) {
        let (Some(p), Some(st)) = (
            self.runner.pending.get(name),
            self.table.containers.get(name),
        ) else {
            return;
        };
        // An `update`'s outcome is the recreate's own verdict (on_update_done):
        // the old container running again means it was restored, not updated.
        if !p.engine_done
            || !p.confirmed
            || st.id != p.id
            || matches!(p.req.action.as_str(), "update" | "rollback")
        {
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
        let from_all = p.from_all;
        self.runner.pending.remove(name);
        self.finish_pending(name, from_all, result);
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
            .filter(|(_, p)| !matches!(p.req.action.as_str(), "update" | "rollback"))
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

fn r_err(r: &Result<Outcome, RecreateError>) -> String {
    r.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
}

/// `update` to a version: the tag must exist in the container's repository
/// (SPEC §14), asked of the registry before anything is pulled or stopped.
async fn check_tag(
    s: &super::EndpointSettings,
    target: &Target,
    current: &str,
) -> Result<(), RecreateError> {
    let Target::Tag(tag) = target else {
        return Ok(());
    };
    let (repo, _) = recreate::split_reference(current)?;
    let Some(reference) = crate::registry::Reference::parse(&format!("{repo}:{tag}")) else {
        return Err(RecreateError::Refused(format!(
            "`{repo}:{tag}` is not an image reference"
        )));
    };
    let Some(registry) = &s.registry else {
        return Err(RecreateError::Registry(
            "no registry client (see the log at start)".into(),
        ));
    };
    match registry.head(&reference).await {
        Ok(_) => Ok(()),
        Err(crate::registry::RegistryError::NotFound) => Err(RecreateError::Refused(format!(
            "tag `{tag}` does not exist in {repo}"
        ))),
        Err(e) => Err(RecreateError::Registry(e.to_string())),
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
    verify_for: Duration,
) -> (Swap, Result<Outcome, RecreateError>) {
    let mut swap = Swap::default();
    let r = async {
        let before = client
            .inspect_raw(id)
            .await
            .map_err(|err| RecreateError::Engine {
                step: "inspecting the container",
                err,
            })?;
        let reference = before["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        recreate::split_reference(&reference)?;
        let old_image = before["Image"].as_str().unwrap_or_default().to_string();
        let old = client
            .image_inspect_raw(&old_image)
            .await
            .unwrap_or_default();
        swap.from_image = Some(old_image.clone());
        swap.from_reference = Some(reference.clone());
        swap.from_version = recreate::version_of(&old, &reference);
        swap.to_reference = Some(reference.clone());
        let was_running = before["State"]["Running"] == serde_json::json!(true);
        let new_id =
            portainer
                .recreate(env, id, timeout)
                .await
                .map_err(|e| RecreateError::Engine {
                    step: "Portainer's recreate",
                    err: DockerError::Status {
                        status: 502,
                        message: e.to_string(),
                    },
                })?;
        let after = client.inspect_raw(&new_id).await.unwrap_or_default();
        if let Some(img) = after["Image"].as_str() {
            let new = client.image_inspect_raw(img).await.unwrap_or_default();
            swap.to_image = Some(img.to_string());
            swap.to_version = recreate::version_of(&new, &reference);
        }
        if was_running {
            // Portainer removed the old container: nothing to restore.
            recreate::verify(client, &new_id, verify_for)
                .await
                .map_err(|message| RecreateError::Engine {
                    step: "checking the new container",
                    err: DockerError::Status {
                        status: 500,
                        message,
                    },
                })?;
        }
        Ok(Outcome::Updated {
            id: new_id,
            running: was_running,
        })
    }
    .await;
    (swap, r)
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
