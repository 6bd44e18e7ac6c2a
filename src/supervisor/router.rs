//! The command router (SPEC §5): every message on a command topic or HA's
//! birth topic arrives here. It applies the retained guard, parses, runs the
//! container-independent policy and rate limits, and hands the command to the
//! endpoint that owns the container (or to the image watcher); it never
//! awaits the engine.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Supervisor;
use crate::command::{self, Code, CommandResult, Request, Scope};
use crate::endpoint::EndpointCommand;
use crate::mqtt::Inbound;
use crate::topics::CommandTarget;
use crate::watcher::CheckScope;

impl Supervisor {
    /// HA announced itself: after a random 0–5 s delay (so a fleet of bridges
    /// does not answer at once) every producer republishes, discovery first.
    fn on_birth(&self, msg: &Inbound) {
        if msg.payload.as_ref() != b"online" {
            return;
        }
        if self
            .birth_pending
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return; // one republish is already on its way
        }
        let delay = Duration::from_millis(fastrand::u64(0..=5_000));
        tracing::info!(
            delay_ms = delay.as_millis() as u64,
            "Home Assistant is online: re-sending discovery"
        );
        let mqtt = self.mqtt.clone();
        let pending = self.birth_pending.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            pending.store(false, std::sync::atomic::Ordering::Release);
            mqtt.request_resync();
        });
    }

    /// An incoming message on a command topic (SPEC §5) or HA's birth topic:
    /// the guards every command passes (retained, parse, duplicate delivery,
    /// unknown endpoint), then the scope's or the container's dispatch.
    pub(super) fn route(&mut self, msg: Inbound) {
        if self.birth_topic.as_deref() == Some(msg.topic.as_str()) {
            return self.on_birth(&msg);
        }
        let received = std::time::Instant::now();
        let topics = self.settings.topics.clone();
        let Some(target) = topics.parse_command(&msg.topic) else {
            return;
        };
        if msg.payload.is_empty() {
            // A zero-length message only deletes a retained one (ours, when we
            // clear a stale command): never a command, never a result.
            return;
        }
        let (scope, result_topic) = match target {
            CommandTarget::Bridge => (Scope::Bridge, topics.bridge_result()),
            CommandTarget::Endpoint(ep) => (Scope::Endpoint, topics.endpoint_result(ep)),
            CommandTarget::Container(ep, ct) => (Scope::Container, topics.container_result(ep, ct)),
            CommandTarget::Stack(ep, st) => (Scope::Stack, topics.stack_result(ep, st)),
        };
        let to = Reply {
            topic: &msg.topic,
            result_topic,
            received,
        };
        if msg.retain {
            // A stale retained `stop` must never fire: refuse it and clear it.
            tracing::warn!(topic = %msg.topic, "ignoring a retained command and clearing it");
            self.mqtt
                .outbox
                .retain(msg.topic.clone(), bytes::Bytes::new());
            return to.send(
                self,
                CommandResult::failed(
                    None,
                    None,
                    Code::Invalid,
                    "retained messages on command topics are ignored (publish without retain)",
                    received,
                ),
            );
        }
        let req = match command::parse(&msg.payload, scope) {
            Ok(r) => r,
            Err(e) => {
                let r = CommandResult::failed(
                    e.action,
                    e.request_id,
                    Code::Invalid,
                    e.message,
                    received,
                );
                return to.send(self, r);
            }
        };
        if let Some(rid) = &req.request_id
            && self
                .dedup
                .is_duplicate(&msg.topic, rid, std::time::Instant::now())
        {
            tracing::info!(topic = %msg.topic, request_id = %rid, "duplicate command delivery ignored");
            return;
        }
        if let CommandTarget::Endpoint(ep) = target
            && !self.endpoints.contains_key(ep)
        {
            let r = CommandResult::refused(
                &req,
                Code::NotFound,
                format!("no endpoint `{ep}`"),
                received,
            );
            return to.send(self, r);
        }
        match target {
            CommandTarget::Bridge | CommandTarget::Endpoint(_) => self.route_scope(target, req, to),
            CommandTarget::Container(ep, ct) | CommandTarget::Stack(ep, ct) => {
                let stack = matches!(target, CommandTarget::Stack(..));
                self.route_to_endpoint(ep, ct, stack, req, to)
            }
        }
    }

    /// A bridge or endpoint word: rate-limited per scope, then run here or
    /// handed to the endpoint.
    fn route_scope(&mut self, target: CommandTarget<'_>, req: Request, to: Reply<'_>) {
        if let Some(wait) = self.scope_limits.check(to.topic, &req.action, to.received) {
            return to.send(
                self,
                CommandResult::refused(
                    &req,
                    Code::RateLimited,
                    format!(
                        "one `{}` per {} s here; retry in {} ms",
                        req.action,
                        command::SCOPE_MIN_INTERVAL.as_secs(),
                        wait.as_millis()
                    ),
                    to.received,
                ),
            );
        }
        if let (CommandTarget::Endpoint(ep), "update_all" | "prune") = (target, req.action.as_str())
        {
            return self.to_endpoint(ep, req, to.result_topic, to.received);
        }
        if req.action == "check_updates" {
            let scope = match target {
                CommandTarget::Endpoint(ep) => CheckScope::Endpoint(ep.to_string()),
                _ => CheckScope::All,
            };
            return self.check_updates(scope, req, to.result_topic, to.received);
        }
        let eps: Vec<String> = match target {
            CommandTarget::Endpoint(ep) => vec![ep.to_string()],
            _ => {
                // Environments added or removed in Portainer show up too.
                for s in self.sources.values() {
                    let _ = s.resync.try_send(());
                }
                self.endpoints.keys().cloned().collect()
            }
        };
        self.resync(eps, req, to.result_topic, to.received);
    }

    /// A container or stack word: the container-independent rules here, the
    /// rest in the endpoint that owns it.
    fn route_to_endpoint(&mut self, ep: &str, ct: &str, stack: bool, req: Request, to: Reply<'_>) {
        // The container-independent rules; the endpoint applies the rest.
        let refusal = self
            .commands
            .policy()
            .refusal(&req.action, None)
            .or_else(|| {
                (!self.endpoints.contains_key(ep))
                    .then(|| (Code::NotFound, format!("no endpoint `{ep}`")))
            });
        if let Some((code, msg)) = refusal {
            return to.send(self, CommandResult::refused(&req, code, msg, to.received));
        }
        let Some(h) = self.endpoints.get(ep) else {
            return;
        };
        let received = to.received;
        let cmd = if stack {
            EndpointCommand::Stack {
                stack: ct.to_string(),
                req: req.clone(),
                received,
            }
        } else {
            EndpointCommand::Container {
                name: ct.to_string(),
                req: req.clone(),
                received,
            }
        };
        match h.commands.try_send(cmd) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => to.send(
                self,
                CommandResult::refused(
                    &req,
                    Code::Busy,
                    format!("endpoint `{ep}` has too many commands waiting"),
                    to.received,
                ),
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => to.send(
                self,
                CommandResult::refused(
                    &req,
                    Code::EngineError,
                    format!("endpoint `{ep}` is not running (see the log)"),
                    to.received,
                ),
            ),
        }
    }

    /// `update_all` and `prune` go to the endpoint, which answers on its result topic.
    fn to_endpoint(
        &self,
        ep: &str,
        req: Request,
        result_topic: String,
        received: std::time::Instant,
    ) {
        let refuse = |code: Code, msg: String| {
            let r = CommandResult::refused(&req, code, msg, received);
            if Code::is_routine(r.code) {
                tracing::debug!(endpoint = %ep, code = ?r.code, error = ?r.error, "command refused");
            } else {
                tracing::warn!(endpoint = %ep, code = ?r.code, error = ?r.error, "command refused");
            }
            self.mqtt.outbox.send(result_topic.clone(), r.to_json());
        };
        if let Some((code, msg)) = self.commands.policy().refusal(&req.action, None) {
            return refuse(code, msg);
        }
        let Some(h) = self.endpoints.get(ep) else {
            return refuse(Code::NotFound, format!("no endpoint `{ep}`"));
        };
        let cmd = if req.action == "prune" {
            EndpointCommand::Prune {
                req: req.clone(),
                received,
            }
        } else {
            EndpointCommand::UpdateAll {
                req: req.clone(),
                received,
            }
        };
        if h.commands.try_send(cmd).is_err() {
            refuse(
                Code::Busy,
                format!("endpoint `{ep}` has too many commands waiting"),
            );
        }
    }

    fn check_updates(
        &self,
        scope: CheckScope,
        req: Request,
        result_topic: String,
        received: std::time::Instant,
    ) {
        let timeout = self.commands.timeout;
        crate::watcher::request_check(
            &self.checks,
            scope,
            req,
            result_topic,
            received,
            timeout,
            &self.mqtt.outbox,
        );
    }

    /// Resync some endpoints; one result once all have answered (or timed out).
    fn resync(
        &self,
        eps: Vec<String>,
        req: Request,
        result_topic: String,
        received: std::time::Instant,
    ) {
        let mut waits = Vec::new();
        for ep in &eps {
            let (tx, rx) = oneshot::channel();
            let sent = self.endpoints.get(ep).is_some_and(|h| {
                h.commands
                    .try_send(EndpointCommand::Resync { done: tx })
                    .is_ok()
            });
            waits.push((ep.clone(), sent, rx));
        }
        let outbox = self.mqtt.outbox.clone();
        let timeout = self.commands.timeout;
        tokio::spawn(async move {
            let mut errors = Vec::new();
            for (ep, sent, rx) in waits {
                if !sent {
                    errors.push(format!("{ep}: busy or not running"));
                    continue;
                }
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => errors.push(format!("{ep}: {e}")),
                    Ok(Err(_)) => errors.push(format!("{ep}: endpoint stopped")),
                    Err(_) => errors.push(format!("{ep}: timed out")),
                }
            }
            let r = if errors.is_empty() {
                CommandResult::ok(&req, None, received)
            } else {
                CommandResult::refused(&req, Code::EngineError, errors.join("; "), received)
            };
            outbox.send(result_topic, r.to_json());
        });
    }
}

/// Where a command's result goes, and how its refusal is logged.
struct Reply<'a> {
    topic: &'a str,
    result_topic: String,
    received: std::time::Instant,
}

impl Reply<'_> {
    fn send(&self, sup: &Supervisor, r: CommandResult) {
        if Code::is_routine(r.code) {
            tracing::debug!(topic = %self.topic, code = ?r.code, error = ?r.error, "command refused");
        } else if !r.ok {
            tracing::warn!(topic = %self.topic, code = ?r.code, error = ?r.error, "command refused");
        }
        sup.mqtt.outbox.send(self.result_topic.clone(), r.to_json());
    }
}
