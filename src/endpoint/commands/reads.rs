//! The read-only words (`logs`) and `prune`, which waits for operations
//! and runs beside nothing that recreates (SPEC §16).

use super::*;

/// `logs` fetches running at once per endpoint (each reads up to 8 MiB).
const MAX_READS: usize = 4;

impl Endpoint {
    /// `logs` (SPEC §13): read-only, so beside any running command; fetched
    /// and decoded off the endpoint task, answered when done.
    pub(in crate::endpoint) fn start_logs(
        &mut self,
        name: String,
        req: Request,
        received: std::time::Instant,
    ) {
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
    pub(in crate::endpoint) fn start_prune(&mut self, req: Request, received: std::time::Instant) {
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
    pub(in crate::endpoint) fn operations_running(&self) -> bool {
        self.runner.batch.is_some() || self.runner.pending.values().any(Pending::is_op)
    }

    /// A waiting `prune` starts once the last operation ended.
    pub(in crate::endpoint) fn after_operation(&mut self) {
        if !self.operations_running()
            && let Some((req, received)) = self.runner.prune_waiting.take()
        {
            self.launch_prune(req, received);
        }
        // One automatic update at a time per endpoint (SPEC §17).
        self.start_auto_update();
    }

    pub(in crate::endpoint) fn launch_prune(&mut self, req: Request, received: std::time::Instant) {
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
}
