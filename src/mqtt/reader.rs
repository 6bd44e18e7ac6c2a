//! The command connection: a second MQTT session, `<client_id>-commands`,
//! that only subscribes to the command topics and Home Assistant's birth
//! topic (SPEC §16).
//!
//! It exists for flow control. rumqttc reads and writes in the same poll and
//! reads up to ten packets a turn for one it writes, so on one connection a
//! flood of commands outran its own results and the outbox had to drop them.
//! This session is polled only while results can leave: when the outbox's
//! stream holds [`READ_PAUSE_AT`](super::outbox::READ_PAUSE_AT) messages, it stops reading until
//! the publishing session has sent them down to [`READ_RESUME_AT`](super::outbox::READ_RESUME_AT).
//! TCP then pushes back to the broker, which holds (or, for QoS 0 past its
//! queue, drops) what dockside has not read yet — never the result of a
//! command dockside accepted.

use std::time::Duration;

use rumqttc::{Event, Incoming, MqttOptions, QoS, SubscribeFilter};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Inbound;
use super::outbox::Outbox;
use crate::topics::Topics;

pub(super) struct Reader {
    pub opts: MqttOptions,
    pub qos: QoS,
    pub subscriptions: Vec<String>,
    pub inbound: mpsc::Sender<Inbound>,
    /// True from the SubAck to the next disconnect: the publishing session
    /// waits for it before it says `online` (a command sent on seeing
    /// `online` must find a subscriber).
    pub ready: watch::Sender<bool>,
}

/// What the command session does with the outbox's backlog before a poll.
async fn wait_until_results_leave(outbox: &Outbox, token: &CancellationToken) {
    if !outbox.read_should_pause() {
        return;
    }
    crate::metrics::get().command_reads_paused.inc();
    tracing::debug!(
        backlog = outbox.stream_len(),
        "results are waiting to go out: reading commands paused"
    );
    tokio::select! {
        _ = token.cancelled() => {}
        _ = outbox.read_may_resume() => {}
    }
}

impl Reader {
    pub async fn run(self, outbox: &Outbox, token: CancellationToken) {
        let Reader {
            opts,
            qos,
            subscriptions,
            inbound,
            ready,
        } = self;
        let topics = outbox.topics().clone();
        let (client, mut eventloop, mut backoff) = super::session(opts, 16);
        let mut failures = 0u32;
        let mut overflowed = 0u64;
        loop {
            wait_until_results_leave(outbox, &token).await;
            let ev = tokio::select! {
                biased;
                _ = token.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    failures = 0;
                    backoff.mark_started();
                    let filters = subscriptions
                        .iter()
                        .map(|s| SubscribeFilter::new(s.clone(), qos));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        tracing::warn!(error = %e, "cannot subscribe to the command topics");
                    }
                }
                Ok(Event::Incoming(Incoming::SubAck(_))) => {
                    ready.send_replace(true);
                    tracing::debug!("command topics subscribed");
                }
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    deliver(&topics, outbox, &inbound, p, &mut overflowed);
                }
                Ok(_) => {}
                Err(e) => {
                    ready.send_replace(false);
                    failures += 1;
                    let delay = backoff.next_delay();
                    if super::oversize(&e) {
                        tracing::warn!(error = %e, limit = super::MAX_INCOMING, retry_in = ?delay, "a message over 64 KiB arrived on a command topic: refused unread, reconnecting");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?delay, failures, "MQTT command session: connection lost");
                    }
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        ready.send_replace(false);
        if client.try_disconnect().is_ok() {
            // Let the DISCONNECT go out; the broker forgets this session.
            let _ = tokio::time::timeout(Duration::from_millis(300), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// Hands one message to the router; when its queue is full the command is
/// answered `busy` at once (every command gets its one result).
fn deliver(
    topics: &Topics,
    outbox: &Outbox,
    inbound: &mpsc::Sender<Inbound>,
    p: rumqttc::Publish,
    overflowed: &mut u64,
) {
    if topics.parse_command(&p.topic).is_some() {
        crate::metrics::get().commands_received.inc();
    }
    let msg = Inbound {
        topic: p.topic,
        payload: p.payload,
        retain: p.retain,
    };
    if let Err(e) = inbound.try_send(msg) {
        let msg = match e {
            mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
        };
        match crate::command::overflow_reply(topics, &msg.topic, &msg.payload) {
            Some((t, r)) => outbox.send(t, r),
            None => tracing::debug!(topic = %msg.topic, "inbound queue full: message dropped"),
        }
        *overflowed += 1;
        if overflowed.is_power_of_two() {
            tracing::warn!(
                total = *overflowed,
                "commands arrive faster than they are handled: answering busy"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::outbox;

    #[tokio::test]
    async fn reading_pauses_at_the_high_mark_and_resumes_at_the_low_one() {
        let o = std::sync::Arc::new(Outbox::new(Topics::new("b"), 100_000));
        for i in 0..outbox::READ_PAUSE_AT {
            o.send("b/x/result", format!("{i}"));
        }
        assert!(o.read_should_pause());
        let token = CancellationToken::new();
        let waiter = {
            let o = o.clone();
            let token = token.clone();
            tokio::spawn(async move { wait_until_results_leave(&o, &token).await })
        };
        tokio::task::yield_now().await;
        // Down to just above the low mark: still paused.
        while o.stream_len() > outbox::READ_RESUME_AT + 1 {
            o.pop();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "resumed above the low mark");
        o.pop();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("resumes at the low mark")
            .expect("join");
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_with_the_request_id() {
        let o = Outbox::new(Topics::new("b"), 100);
        let (tx, _rx) = mpsc::channel(1);
        let mut overflowed = 0;
        for i in 0..3 {
            let p = rumqttc::Publish::new(
                "b/local/web/set",
                QoS::AtMostOnce,
                format!(r#"{{"action":"stop","request_id":"r{i}"}}"#),
            );
            deliver(o.topics(), &o, &tx, p, &mut overflowed);
        }
        assert_eq!(overflowed, 2);
        let ids: Vec<String> = std::iter::from_fn(|| o.pop())
            .map(|m| {
                let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
                assert_eq!(m.topic, "b/local/web/result");
                v["request_id"].as_str().unwrap_or("").to_string()
            })
            .collect();
        assert_eq!(ids, ["r1", "r2"]);
    }
}
