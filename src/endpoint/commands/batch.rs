//! Batches: `update_all` and a stack's words, one container after the
//! other, with one result at the end.

use super::*;

/// Words run on several containers one after the other, with one result:
/// `update_all` (goes on past a failure) or a compose stack's word (stops
/// at the first failure: a dependent must not start without what it needs).
#[derive(Debug)]
pub struct Batch {
    req: Request,
    received: std::time::Instant,
    /// (container, word) still to run.
    queue: std::collections::VecDeque<(String, String)>,
    pub(super) outcomes: Vec<ContainerOutcome>,
    /// Where the one result goes.
    topic: String,
    stop_on_failure: bool,
    /// A stack word: the stack's containers, whose state at the end is the
    /// result's `state` (SPEC §13: §5's shape).
    stack: Option<Vec<String>>,
}

impl Batch {
    pub(in crate::endpoint) fn new(
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

impl Endpoint {
    /// `update_all` (SPEC §14): the endpoint's containers whose status is
    /// `update_available`, those the policy permits, one after the other.
    pub(in crate::endpoint) fn start_update_all(
        &mut self,
        req: Request,
        received: std::time::Instant,
    ) {
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
    pub(in crate::endpoint) fn next_of_batch(&mut self) {
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
                ..Default::default()
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
}
