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

    /// An incoming message on a command topic (SPEC §5) or HA's birth topic.
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
        let reply = |r: CommandResult| {
            if Code::is_routine(r.code) {
                tracing::debug!(topic = %msg.topic, code = ?r.code, error = ?r.error, "command refused");
            } else if !r.ok {
                tracing::warn!(topic = %msg.topic, code = ?r.code, error = ?r.error, "command refused");
            }
            self.mqtt.outbox.send(result_topic.clone(), r.to_json());
        };
        if msg.retain {
            // A stale retained `stop` must never fire: refuse it and clear it.
            tracing::warn!(topic = %msg.topic, "ignoring a retained command and clearing it");
            self.mqtt
                .outbox
                .retain(msg.topic.clone(), bytes::Bytes::new());
            return reply(CommandResult::failed(
                None,
                None,
                Code::Invalid,
                "retained messages on command topics are ignored (publish without retain)",
                received,
            ));
        }
        let req = match command::parse(&msg.payload, scope) {
            Ok(r) => r,
            Err(e) => {
                return reply(CommandResult::failed(
                    e.action,
                    e.request_id,
                    Code::Invalid,
                    e.message,
                    received,
                ));
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
            return reply(CommandResult::refused(
                &req,
                Code::NotFound,
                format!("no endpoint `{ep}`"),
                received,
            ));
        }
        match target {
            CommandTarget::Bridge | CommandTarget::Endpoint(_) => {
                if let Some(wait) = self.scope_limits.check(&msg.topic, &req.action, received) {
                    return reply(CommandResult::refused(
                        &req,
                        Code::RateLimited,
                        format!(
                            "one `{}` per {} s here; retry in {} ms",
                            req.action,
                            command::SCOPE_MIN_INTERVAL.as_secs(),
                            wait.as_millis()
                        ),
                        received,
                    ));
                }
                if let (CommandTarget::Endpoint(ep), "update_all" | "prune") =
                    (target, req.action.as_str())
                {
                    return self.to_endpoint(ep, req, result_topic, received);
                }
                if req.action == "check_updates" {
                    let scope = match target {
                        CommandTarget::Endpoint(ep) => CheckScope::Endpoint(ep.to_string()),
                        _ => CheckScope::All,
                    };
                    return self.check_updates(scope, req, result_topic, received);
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
                self.resync(eps, req, result_topic, received);
            }
            CommandTarget::Container(ep, ct) | CommandTarget::Stack(ep, ct) => {
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
                    return reply(CommandResult::refused(&req, code, msg, received));
                }
                let Some(h) = self.endpoints.get(ep) else {
                    return;
                };
                let cmd = if matches!(target, CommandTarget::Stack(..)) {
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
                    Err(mpsc::error::TrySendError::Full(_)) => reply(CommandResult::refused(
                        &req,
                        Code::Busy,
                        format!("endpoint `{ep}` has too many commands waiting"),
                        received,
                    )),
                    Err(mpsc::error::TrySendError::Closed(_)) => reply(CommandResult::refused(
                        &req,
                        Code::EngineError,
                        format!("endpoint `{ep}` is not running (see the log)"),
                        received,
                    )),
                }
            }
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
