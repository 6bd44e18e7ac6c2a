//! The bounded, coalescing outbox between every producer and the MQTT task.
//!
//! - Retained messages coalesce per topic: only the latest value waits, so a
//!   burst of state changes costs one slot per container and the final state is
//!   never lost. Their number is bounded by the number of topics.
//! - Non-retained messages (events, results) keep their order in a FIFO bounded
//!   at `stream_cap`; past it the oldest is dropped and counted.
//! - It also remembers which retained topics we hold on the broker (`known`), so
//!   a container or endpoint can be cleared by prefix, and which ones the
//!   start-up read-back found (`startup`), for the leftover sweep.
//! - Topics outside the base (HA discovery configs) are *owned* by a path under
//!   it (`topics.rs`): clearing by prefix and the sweeps treat them as living
//!   at their owner path.
//!
//! Producers never wait: pushing takes a short lock and wakes the MQTT task.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use indexmap::IndexMap;
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

/// When a discovery config is cleared along with the topics its entities
/// read, those topics are cleared this much later: HA would otherwise still
/// be subscribed and log a warning for each empty payload it cannot parse.
pub const DISCOVERY_CLEAR_DELAY: Duration = Duration::from_secs(2);

use crate::topics::Topics;

/// The command session stops reading when this many events and results wait
/// to go out, and reads again once they are down to [`READ_RESUME_AT`]
/// (SPEC §16: slow the reading, never drop a result). Far below any
/// `stream_cap`, so results are never what the outbox drops.
pub const READ_PAUSE_AT: usize = 1024;
pub const READ_RESUME_AT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// A leftover sweep request, run once the start-up read-back is complete.
#[derive(Debug, Clone)]
pub enum Sweep {
    /// After an endpoint's first full sync: clear leftovers of containers it no
    /// longer has (and flat keys no longer published for the ones it has).
    Endpoint { ep: String, live: HashSet<String> },
    /// After an endpoint restarted in this run (its engine or the filters
    /// changed): clear every container topic we hold for it that is not live.
    Restarted { ep: String, live: HashSet<String> },
    /// Clear leftovers of endpoints that are no longer configured (endpoints
    /// whose id starts with one of `keep_prefixes` belong to a Portainer source
    /// that has not listed its environments yet: spared).
    Endpoints {
        keep: HashSet<String>,
        keep_prefixes: Vec<String>,
    },
    /// After a Portainer source listed its environments for the first time:
    /// clear leftovers of `<prefix>…` endpoints it no longer has.
    Prefixed {
        prefix: String,
        keep: HashSet<String>,
    },
    /// Discovery is off: clear every discovery config of ours the read-back found.
    Discovery,
}

#[derive(Debug)]
struct Inner {
    retained: IndexMap<String, Bytes>,
    stream: VecDeque<Message>,
    dropped: u64,
    known: BTreeSet<String>,
    startup: HashSet<String>,
    readback_done: bool,
    pending_sweeps: Vec<Sweep>,
    /// Owner path → the topics it owns (discovery configs).
    owned: BTreeMap<String, BTreeSet<String>>,
    owner_of: HashMap<String, String>,
    stale_owned: Vec<String>,
    /// Clears that wait until HA has dropped the entities reading those topics.
    deferred: IndexMap<String, Instant>,
    /// What is published under the base now (retained), for the panel
    /// (SPEC §18): a read-only copy, bounded by [`MAX_VIEW`].
    view: BTreeMap<String, Bytes>,
    /// Bumped on every change of `view`.
    view_version: u64,
    view_prefix: String,
}

/// Retained topics under the base the panel's copy holds at most.
const MAX_VIEW: usize = 100_000;

#[derive(Debug)]
pub struct Outbox {
    topics: Topics,
    inner: Mutex<Inner>,
    notify: Notify,
    /// Wakes the paused command session once the stream is short again.
    room: Notify,
    stream_cap: usize,
    /// Command results as they are sent, for the panel's buttons (SPEC §18).
    results: tokio::sync::broadcast::Sender<(String, Bytes)>,
}

impl Outbox {
    pub fn new(topics: Topics, stream_cap: usize) -> Self {
        let view_prefix = format!("{}/", topics.base());
        Self {
            topics,
            inner: Mutex::new(Inner {
                retained: IndexMap::new(),
                stream: VecDeque::new(),
                dropped: 0,
                known: BTreeSet::new(),
                startup: HashSet::new(),
                readback_done: false,
                pending_sweeps: Vec::new(),
                owned: BTreeMap::new(),
                owner_of: HashMap::new(),
                stale_owned: Vec::new(),
                deferred: IndexMap::new(),
                view: BTreeMap::new(),
                view_version: 0,
                view_prefix,
            }),
            notify: Notify::new(),
            room: Notify::new(),
            stream_cap: stream_cap.max(1),
            results: tokio::sync::broadcast::channel(256).0,
        }
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Retained publish; an empty payload clears the topic on the broker.
    pub fn retain(&self, topic: impl Into<String>, payload: impl Into<Bytes>) {
        let mut inner = self.lock();
        inner.set_retained(topic.into(), payload.into());
        let depth = inner.stream.len() + inner.retained.len();
        drop(inner);
        crate::metrics::get().outbox_depth.set(depth as i64);
        self.notify.notify_one();
    }

    /// Command results from now on, as they are sent (a slow receiver
    /// misses some; it never holds anything up).
    pub fn subscribe_results(&self) -> tokio::sync::broadcast::Receiver<(String, Bytes)> {
        self.results.subscribe()
    }

    /// Non-retained publish (events, results).
    pub fn send(&self, topic: impl Into<String>, payload: impl Into<Bytes>) {
        let (topic, payload) = (topic.into(), payload.into());
        if self.results.receiver_count() > 0 && topic.ends_with("/result") {
            let _ = self.results.send((topic.clone(), payload.clone()));
        }
        let mut inner = self.lock();
        inner.stream.push_back(Message {
            topic,
            payload,
            retain: false,
        });
        if inner.stream.len() > self.stream_cap {
            // Events go before command results: each command is owed its one result.
            let victim = inner
                .stream
                .iter()
                .take(64)
                .position(|m| !m.topic.ends_with("/result"))
                .unwrap_or(0);
            inner.stream.remove(victim);
            inner.dropped += 1;
            crate::metrics::get().outbox_dropped.inc();
            if inner.dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = inner.dropped,
                    "MQTT outbox full: dropping the oldest non-retained messages"
                );
            }
        }
        let depth = inner.stream.len() + inner.retained.len();
        drop(inner);
        crate::metrics::get().outbox_depth.set(depth as i64);
        self.notify.notify_one();
    }

    /// Publishes the whole set of retained topics `owner` owns now; the ones
    /// it owned before and no longer does are cleared.
    pub fn retain_owned(&self, owner: &str, msgs: Vec<(String, Bytes)>) {
        let mut inner = self.lock();
        let now: BTreeSet<String> = msgs.iter().map(|(t, _)| t.clone()).collect();
        let before = inner.owned.get(owner).cloned().unwrap_or_default();
        for t in before.difference(&now) {
            inner.set_retained(t.clone(), Bytes::new());
        }
        for (t, p) in msgs {
            inner.set_retained(t.clone(), p);
            inner.owner_of.insert(t, owner.to_string());
        }
        inner.owned.insert(owner.to_string(), now);
        drop(inner);
        self.notify.notify_one();
    }

    /// How many times what is published under the base changed (the panel
    /// renders again only when this moved).
    pub fn view_version(&self) -> u64 {
        self.lock().view_version
    }

    /// What is published under the base now, with its version.
    pub fn view(&self) -> (u64, Vec<(String, Bytes)>) {
        let g = self.lock();
        let v = g.view.iter().map(|(t, p)| (t.clone(), p.clone())).collect();
        (g.view_version, v)
    }

    /// Clears every retained topic we hold under `prefix` (e.g. `<base>/<ep>/<ct>/`),
    /// owned ones included.
    pub fn clear_prefix(&self, prefix: &str) {
        let mut inner = self.lock();
        let mut topics: Vec<String> = inner
            .known
            .range(prefix.to_string()..)
            .take_while(|t| t.starts_with(prefix))
            .cloned()
            .collect();
        topics.extend(
            inner
                .owned
                .range(prefix.to_string()..)
                .take_while(|(o, _)| o.starts_with(prefix))
                .flat_map(|(_, ts)| ts.iter().cloned()),
        );
        {
            inner.clear_all(topics);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Next message to send: the latest states first (what users see, and what
    /// must be on the broker when we stop), then events and results in order.
    pub fn pop(&self) -> Option<Message> {
        let mut inner = self.lock();
        let depth = inner.stream.len() + inner.retained.len();
        crate::metrics::get()
            .outbox_depth
            .set(depth.saturating_sub(1) as i64);
        // Until the read-back is complete, owned topics (discovery) wait: a
        // leftover of the other form found late must be cleared before them.
        let index = if inner.readback_done {
            (!inner.retained.is_empty()).then_some(0)
        } else {
            inner
                .retained
                .keys()
                .position(|t| !inner.owner_of.contains_key(t))
        };
        if let Some(i) = index
            && let Some((topic, payload)) = inner.retained.shift_remove_index(i)
        {
            return Some(Message {
                topic,
                payload,
                retain: true,
            });
        }
        let m = inner.stream.pop_front();
        if m.is_some() && inner.stream.len() <= READ_RESUME_AT {
            self.room.notify_one();
        }
        m
    }

    /// Events and results waiting, in order.
    pub fn stream_len(&self) -> usize {
        self.lock().stream.len()
    }

    /// Enough results wait that reading more commands would only pile them up.
    pub fn read_should_pause(&self) -> bool {
        self.stream_len() >= READ_PAUSE_AT
    }

    /// Returns once the stream is down to [`READ_RESUME_AT`].
    pub async fn read_may_resume(&self) {
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.stream_len() <= READ_RESUME_AT {
                return;
            }
            room.await;
        }
    }

    /// Puts back a message the client could not take; a newer value for the
    /// same retained topic wins.
    pub fn unpop(&self, m: Message) {
        let mut inner = self.lock();
        if m.retain {
            if !inner.retained.contains_key(&m.topic) {
                inner.retained.shift_insert(0, m.topic, m.payload);
            }
        } else {
            inner.stream.push_front(m);
        }
    }

    pub fn is_empty(&self) -> bool {
        let inner = self.lock();
        inner.stream.is_empty() && inner.retained.is_empty()
    }

    pub fn len(&self) -> usize {
        let inner = self.lock();
        inner.stream.len() + inner.retained.len()
    }

    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// When the next deferred clear falls due.
    pub fn next_deferred(&self) -> Option<Instant> {
        self.lock().deferred.first().map(|(_, at)| *at)
    }

    /// Queues the deferred clears that are due.
    pub fn run_deferred(&self) {
        let mut inner = self.lock();
        let now = Instant::now();
        while let Some((_, at)) = inner.deferred.first() {
            if *at > now {
                break;
            }
            if let Some((t, _)) = inner.deferred.shift_remove_index(0) {
                inner.set_retained(t, Bytes::new());
            }
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// A retained topic of ours found on the broker at start.
    pub fn note_existing(&self, topic: String) {
        let mut inner = self.lock();
        if inner.readback_done || inner.known.contains(&topic) {
            // Published by us already in this run: not a leftover.
            return;
        }
        inner.known.insert(topic.clone());
        inner.startup.insert(topic);
    }

    /// A retained topic outside the base that the read-back found and that
    /// belongs to `owner` (a discovery config of ours).
    pub fn note_existing_owned(&self, topic: String, owner: String) {
        let mut inner = self.lock();
        if inner.readback_done || inner.known.contains(&topic) {
            return;
        }
        if inner.owned.contains_key(&owner) {
            // The owner already published its set in this run: this one is
            // stale, cleared ahead of the held configs when the read-back ends.
            inner.stale_owned.push(topic);
            return;
        }
        inner.known.insert(topic.clone());
        inner.startup.insert(topic.clone());
        inner.owner_of.insert(topic.clone(), owner.clone());
        inner.owned.entry(owner).or_default().insert(topic);
    }

    /// Queues a sweep, or runs it now if the read-back is complete.
    pub fn sweep(&self, sweep: Sweep) {
        let mut inner = self.lock();
        if inner.readback_done {
            let n = inner.run_sweep(&self.topics, &sweep);
            drop(inner);
            log_sweep(&sweep, n);
            self.notify.notify_one();
        } else {
            inner.pending_sweeps.push(sweep);
        }
    }

    /// The read-back is complete: run the sweeps that waited for it.
    pub fn finish_readback(&self) {
        let mut inner = self.lock();
        if inner.readback_done {
            return;
        }
        inner.readback_done = true;
        for t in std::mem::take(&mut inner.stale_owned) {
            inner.set_retained(t.clone(), Bytes::new());
            if let Some(i) = inner.retained.get_index_of(&t) {
                inner.retained.move_index(i, 0);
            }
        }
        let sweeps = std::mem::take(&mut inner.pending_sweeps);
        let mut done = Vec::new();
        for s in &sweeps {
            done.push(inner.run_sweep(&self.topics, s));
        }
        drop(inner);
        for (s, n) in sweeps.iter().zip(done) {
            log_sweep(s, n);
        }
        self.notify.notify_one();
    }
}

fn log_sweep(s: &Sweep, n: usize) {
    if n > 0 {
        match s {
            Sweep::Endpoint { ep, .. } => {
                tracing::info!(endpoint = %ep, topics = n, "cleared leftover topics from an earlier run")
            }
            Sweep::Endpoints { .. } => {
                tracing::info!(
                    topics = n,
                    "cleared leftover topics of endpoints no longer configured"
                )
            }
            Sweep::Prefixed { prefix, .. } => {
                tracing::info!(prefix = %prefix, topics = n, "cleared leftover topics of Portainer environments that are gone")
            }
            Sweep::Restarted { ep, .. } => {
                tracing::info!(endpoint = %ep, topics = n, "cleared topics of containers no longer mirrored")
            }
            Sweep::Discovery => {
                tracing::info!(
                    topics = n,
                    "Home Assistant discovery is off: cleared the configs published earlier"
                )
            }
        }
    }
}

impl Inner {
    /// Clears `topics`; when some are discovery configs, the others follow
    /// after [`DISCOVERY_CLEAR_DELAY`].
    fn clear_all(&mut self, topics: Vec<String>) {
        let (owned, plain): (Vec<String>, Vec<String>) = topics
            .into_iter()
            .partition(|t| self.owner_of.contains_key(t));
        let defer = !owned.is_empty();
        for t in owned {
            self.set_retained(t, Bytes::new());
        }
        let at = Instant::now() + DISCOVERY_CLEAR_DELAY;
        for t in plain {
            if defer {
                self.startup.remove(&t);
                self.deferred.insert(t, at);
            } else {
                self.set_retained(t, Bytes::new());
            }
        }
    }

    fn set_retained(&mut self, topic: String, payload: Bytes) {
        self.startup.remove(&topic);
        // Published again (or cleared now): no longer waiting to be cleared.
        self.deferred.shift_remove(&topic);
        if payload.is_empty() {
            self.known.remove(&topic);
            if let Some(owner) = self.owner_of.remove(&topic)
                && let Some(set) = self.owned.get_mut(&owner)
            {
                set.remove(&topic);
                if set.is_empty() {
                    self.owned.remove(&owner);
                }
            }
        } else {
            self.known.insert(topic.clone());
        }
        if topic.starts_with(&self.view_prefix) {
            // On the event path: a known topic's payload is replaced in place
            // (no copy of the topic); only a new topic is copied in.
            if payload.is_empty() {
                self.view.remove(&topic);
            } else if let Some(v) = self.view.get_mut(&topic) {
                *v = payload.clone();
            } else if self.view.len() < MAX_VIEW {
                self.view.insert(topic.clone(), payload.clone());
            }
            self.view_version += 1;
        }
        self.retained.insert(topic, payload);
    }

    fn run_sweep(&mut self, topics: &Topics, sweep: &Sweep) -> usize {
        if let Sweep::Restarted { ep, live } = sweep {
            let prefix = topics.endpoint_prefix(ep);
            // `live` names stacks as `_stacks/<stack>`.
            let gone = |path: &str| match topics.parse(path).as_deref() {
                Some([_, seg, st, _, ..]) if *seg == crate::stacks::SEGMENT => {
                    !live.contains(&format!("{seg}/{st}"))
                }
                Some([_, ct, _, ..]) => !live.contains(*ct),
                _ => false,
            };
            let mut stale: Vec<String> = self
                .known
                .range(prefix.clone()..)
                .take_while(|t| t.starts_with(&prefix))
                .filter(|t| gone(t))
                .cloned()
                .collect();
            stale.extend(
                self.owned
                    .range(prefix.clone()..)
                    .take_while(|(o, _)| o.starts_with(&prefix))
                    .filter(|(o, _)| gone(o))
                    .flat_map(|(_, ts)| ts.iter().cloned()),
            );
            let n = stale.len();
            {
                self.clear_all(stale);
            }
            return n;
        }
        let stale: Vec<String> = self
            .startup
            .iter()
            .filter(|t| {
                let owner = self.owner_of.get(*t);
                if matches!(sweep, Sweep::Discovery) {
                    return owner.is_some();
                }
                let Some(segs) = topics.parse(owner.unwrap_or(t)) else {
                    return false;
                };
                // `<base>/.ha` (the bridge's own config) is no endpoint's.
                let endpoint = segs.first().filter(|ep| !ep.starts_with('.'));
                match sweep {
                    Sweep::Endpoints {
                        keep,
                        keep_prefixes,
                    } => endpoint.is_some_and(|ep| {
                        !keep.contains(*ep)
                            && !keep_prefixes.iter().any(|p| ep.starts_with(p.as_str()))
                    }),
                    Sweep::Prefixed { prefix, keep } => endpoint
                        .is_some_and(|ep| ep.starts_with(prefix.as_str()) && !keep.contains(*ep)),
                    Sweep::Restarted { .. } | Sweep::Discovery => false,
                    Sweep::Endpoint { ep, live } => match segs.as_slice() {
                        [e, ct, rest @ ..] if e == ep && !rest.is_empty() => {
                            // Gone container, or a flat key not republished this run.
                            !live.contains(*ct) || rest.len() >= 2
                        }
                        _ => false,
                    },
                }
            })
            .cloned()
            .collect();
        let n = stale.len();
        {
            self.clear_all(stale);
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(o: &Outbox) -> Vec<Message> {
        std::iter::from_fn(|| o.pop()).collect()
    }

    #[test]
    fn retained_coalesce_and_keep_latest() {
        let o = Outbox::new(Topics::new("b"), 10);
        for i in 0..100 {
            o.retain("b/e/c/state", format!("{i}"));
        }
        o.retain("b/e/d/state", "x");
        let out = drain(&o);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].payload, Bytes::from("99"));
        assert!(out.iter().all(|m| m.retain));
    }

    #[test]
    fn stream_is_fifo_and_bounded() {
        let o = Outbox::new(Topics::new("b"), 3);
        for i in 0..5 {
            o.send("b/e/events", format!("{i}"));
        }
        let out: Vec<_> = drain(&o).into_iter().map(|m| m.payload).collect();
        assert_eq!(
            out,
            vec![Bytes::from("2"), Bytes::from("3"), Bytes::from("4")]
        );
        assert_eq!(o.dropped(), 2);
    }

    #[test]
    fn an_overflow_drops_events_before_results() {
        let o = Outbox::new(Topics::new("b"), 2);
        o.send("b/e/c/result", "r1");
        o.send("b/e/events", "e1");
        o.send("b/e/c/result", "r2");
        let out: Vec<_> = drain(&o).into_iter().map(|m| m.payload).collect();
        assert_eq!(out, vec![Bytes::from("r1"), Bytes::from("r2")]);
    }

    #[test]
    fn states_go_out_before_queued_events() {
        let o = Outbox::new(Topics::new("b"), 100);
        o.finish_readback();
        o.send("b/e/events", "die");
        o.send("b/e/c/event", "die");
        o.retain("b/e/c/state", "exited");
        let out: Vec<_> = drain(&o).into_iter().map(|m| m.topic).collect();
        assert_eq!(out, vec!["b/e/c/state", "b/e/events", "b/e/c/event"]);
    }

    #[test]
    fn unpop_keeps_newer_value() {
        let o = Outbox::new(Topics::new("b"), 3);
        o.retain("b/e/c/state", "old");
        let m = o.pop().expect("msg");
        o.retain("b/e/c/state", "new");
        o.unpop(m);
        let out = drain(&o);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].payload, Bytes::from("new"));
    }

    #[test]
    fn clear_prefix_clears_only_that_container() {
        let o = Outbox::new(Topics::new("b"), 10);
        o.retain("b/e/web/state", "1");
        o.retain("b/e/web/state/running", "true");
        o.retain("b/e/web2/state", "1");
        drain(&o);
        o.clear_prefix("b/e/web/");
        let out = drain(&o);
        let topics: BTreeSet<_> = out.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(
            topics,
            BTreeSet::from(["b/e/web/state", "b/e/web/state/running"])
        );
        assert!(out.iter().all(|m| m.payload.is_empty() && m.retain));
        // Already cleared: nothing more to send.
        o.clear_prefix("b/e/web/");
        assert!(o.is_empty());
    }

    #[test]
    fn sweeps_wait_for_readback_and_spare_live_topics() {
        let o = Outbox::new(Topics::new("b"), 10);
        for t in [
            "b/e/gone/state",
            "b/e/gone/update",
            "b/e/live/state",
            "b/e/live/update",
            "b/e/live/state/running",
            "b/e/status",
            "b/old/x/state",
            "b/old/status",
            "b/home-a/x/state",
            "b/home-gone/x/state",
        ] {
            o.note_existing(t.to_string());
        }
        // Republished in this run: not a leftover.
        o.retain("b/e/live/state", "{}");
        drain(&o);
        o.sweep(Sweep::Endpoint {
            ep: "e".into(),
            live: HashSet::from(["live".to_string()]),
        });
        o.sweep(Sweep::Endpoints {
            keep: HashSet::from(["e".to_string()]),
            keep_prefixes: vec!["home-".into()],
        });
        o.sweep(Sweep::Prefixed {
            prefix: "home-".into(),
            keep: HashSet::from(["home-a".to_string()]),
        });
        assert!(o.is_empty(), "sweeps must wait for the read-back");
        o.finish_readback();
        let cleared: BTreeSet<_> = drain(&o).into_iter().map(|m| m.topic).collect();
        let expect: BTreeSet<String> = [
            "b/e/gone/state",
            "b/e/gone/update",
            "b/e/live/state/running",
            "b/old/x/state",
            "b/old/status",
            "b/home-gone/x/state",
        ]
        .map(String::from)
        .into();
        assert_eq!(cleared, expect);
        // Topics seen after the read-back are never leftovers.
        o.note_existing("b/e/late/state".into());
        o.sweep(Sweep::Endpoint {
            ep: "e".into(),
            live: HashSet::from(["live".to_string()]),
        });
        assert!(o.is_empty());
    }

    #[test]
    fn owned_topics_follow_their_owner() {
        let o = Outbox::new(Topics::new("b"), 10);
        // Read back: a live container's old per-entity configs, a gone one's, the bridge's.
        o.note_existing_owned(
            "ha/switch/b_e_live/power/config".into(),
            "b/e/live/.ha".into(),
        );
        o.note_existing_owned("ha/device/b_e_gone/config".into(), "b/e/gone/.ha".into());
        o.note_existing_owned("ha/device/b_old/config".into(), "b/old/.ha".into());
        o.note_existing_owned("ha/device/b/config".into(), "b/.ha".into());
        // The live one now publishes its device form: the old form goes at once.
        o.retain_owned(
            "b/e/live/.ha",
            vec![("ha/device/b_e_live/config".into(), Bytes::from("{}"))],
        );
        let out = drain(&o);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].topic, "ha/switch/b_e_live/power/config");
        assert!(out[0].payload.is_empty());
        // Configs wait for the end of the read-back; a stale one of an owner
        // that published already is cleared first, then.
        o.note_existing_owned(
            "ha/button/b_e_live_kill/config".into(),
            "b/e/live/.ha".into(),
        );
        o.sweep(Sweep::Endpoint {
            ep: "e".into(),
            live: HashSet::from(["live".to_string()]),
        });
        o.sweep(Sweep::Endpoints {
            keep: HashSet::from(["e".to_string()]),
            keep_prefixes: vec![],
        });
        o.finish_readback();
        let out = drain(&o);
        assert_eq!(out[0].topic, "ha/button/b_e_live_kill/config");
        assert!(out[0].payload.is_empty());
        assert!(out.iter().any(|m| m.topic == "ha/device/b_e_live/config"));
        let cleared: BTreeSet<_> = out
            .into_iter()
            .filter(|m| m.payload.is_empty())
            .map(|m| m.topic)
            .collect();
        assert_eq!(
            cleared,
            BTreeSet::from([
                "ha/button/b_e_live_kill/config".to_string(),
                "ha/device/b_e_gone/config".to_string(),
                "ha/device/b_old/config".to_string()
            ])
        );
        // Clearing the container clears its discovery config.
        o.clear_prefix("b/e/live/");
        let out = drain(&o);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "ha/device/b_e_live/config");
        assert!(out[0].payload.is_empty());
        // Shrinking a set clears what left it.
        o.retain_owned(
            "b/e/x/.ha",
            vec![
                ("ha/a/b_e_x/1/config".into(), Bytes::from("1")),
                ("ha/a/b_e_x/2/config".into(), Bytes::from("2")),
            ],
        );
        drain(&o);
        o.retain_owned(
            "b/e/x/.ha",
            vec![("ha/a/b_e_x/1/config".into(), Bytes::from("1"))],
        );
        let out: Vec<_> = drain(&o)
            .into_iter()
            .map(|m| (m.topic, m.payload.is_empty()))
            .collect();
        assert!(out.contains(&("ha/a/b_e_x/2/config".to_string(), true)));
        // Restarted endpoint: configs of containers no longer live go too.
        o.sweep(Sweep::Restarted {
            ep: "e".into(),
            live: HashSet::new(),
        });
        let out: Vec<_> = drain(&o).into_iter().map(|m| m.topic).collect();
        assert_eq!(out, vec!["ha/a/b_e_x/1/config".to_string()]);
    }

    #[test]
    fn topics_read_by_a_cleared_config_are_cleared_after_it() {
        let o = Outbox::new(Topics::new("b"), 10);
        o.finish_readback();
        o.retain_owned(
            "b/e/c/.ha",
            vec![("ha/device/b_e_c/config".into(), Bytes::from("{}"))],
        );
        o.retain("b/e/c/state", "{}");
        o.retain("b/e/d/state", "{}");
        drain(&o);
        o.clear_prefix("b/e/c/");
        let out = drain(&o);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "ha/device/b_e_c/config");
        let due = o.next_deferred().expect("state clear deferred");
        assert!(due > Instant::now() + DISCOVERY_CLEAR_DELAY / 2);
        o.run_deferred();
        assert!(o.is_empty(), "not due yet");
        std::thread::sleep(DISCOVERY_CLEAR_DELAY + Duration::from_millis(50));
        o.run_deferred();
        let out = drain(&o);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "b/e/c/state");
        assert!(out[0].payload.is_empty());
        // Republished meanwhile (recreated): the deferred clear is dropped.
        o.retain_owned(
            "b/e/d/.ha",
            vec![("ha/device/b_e_d/config".into(), Bytes::from("{}"))],
        );
        drain(&o);
        o.clear_prefix("b/e/d/");
        o.retain("b/e/d/state", "{\"new\":1}");
        assert!(o.next_deferred().is_none());
        // Without discovery, clears are immediate.
        o.retain("b/e/x/state", "1");
        drain(&o);
        o.clear_prefix("b/e/x/");
        assert_eq!(drain(&o).len(), 1);
    }

    #[test]
    fn discovery_off_clears_only_owned_leftovers() {
        let o = Outbox::new(Topics::new("b"), 10);
        o.note_existing_owned("ha/device/b/config".into(), "b/.ha".into());
        o.note_existing_owned("ha/device/b_e_c/config".into(), "b/e/c/.ha".into());
        o.note_existing("b/e/c/state".into());
        o.sweep(Sweep::Discovery);
        o.finish_readback();
        let cleared: BTreeSet<_> = drain(&o).into_iter().map(|m| m.topic).collect();
        assert_eq!(
            cleared,
            BTreeSet::from([
                "ha/device/b/config".to_string(),
                "ha/device/b_e_c/config".to_string()
            ])
        );
    }

    #[test]
    fn restarted_endpoint_sweeps_everything_not_live() {
        let o = Outbox::new(Topics::new("b"), 10);
        o.finish_readback();
        o.retain("b/e/a/state", "1");
        o.retain("b/e/b/state", "1");
        o.retain("b/e/status", "online");
        o.retain("b/f/a/state", "1");
        drain(&o);
        o.sweep(Sweep::Restarted {
            ep: "e".into(),
            live: HashSet::from(["a".to_string()]),
        });
        let cleared: Vec<_> = drain(&o).into_iter().map(|m| m.topic).collect();
        assert_eq!(cleared, vec!["b/e/b/state".to_string()]);
    }
}
