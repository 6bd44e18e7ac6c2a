//! Container stats on one endpoint (SPEC §13): which containers are due,
//! at most `stats.concurrency` one-shot calls at a time off the endpoint
//! task, each container at its own offset in the interval, and the
//! `<ct>/stats` topic (plus Jeedom leaf topics) from the answers.

use super::*;
use crate::stats::{CpuSample, EngineStats, StatsPayload};

/// Container name, id asked for, the engine's answer.
pub(super) type StatsAnswer = (String, String, Result<EngineStats, DockerError>);

/// A stats call slower than this is given up (the engine waits about a
/// second for its own second sample; a busy one much longer).
const STATS_TIMEOUT: Duration = Duration::from_secs(20);

/// What the endpoint keeps for stats.
#[derive(Default)]
pub(super) struct StatsState {
    /// Names whose labels (or `[stats] enabled`) say they are sampled.
    pub wanted: HashSet<String>,
    /// Running, sampled containers → when their next call is due.
    due: HashMap<String, Instant>,
    /// The last CPU reading, for one-shot calls.
    prev: HashMap<String, CpuSample>,
    /// Names with a `stats` topic of ours.
    published: HashSet<String>,
    pub calls: JoinSet<StatsAnswer>,
}

impl StatsState {
    pub(super) fn forget(&mut self, name: &str) {
        self.wanted.remove(name);
        self.due.remove(name);
        self.prev.remove(name);
        self.published.remove(name);
    }
}

impl Endpoint {
    /// After a state is published: running and wanted → scheduled (first
    /// call at the container's own offset); otherwise unscheduled, and its
    /// figures shown unknown.
    pub(super) fn schedule_stats(&mut self, name: &str) {
        let running = self
            .table
            .containers
            .get(name)
            .is_some_and(|s| s.running && !s.paused);
        let st = &mut self.stats;
        if running && st.wanted.contains(name) {
            if !st.due.contains_key(name) {
                let interval = self.settings.stats.interval;
                let at = Instant::now() + crate::stats::offset(name, interval);
                st.due.insert(name.to_string(), at);
            }
            return;
        }
        st.due.remove(name);
        st.prev.remove(name);
        if st.published.remove(name) {
            let topic = self.settings.topics.container_stats(&self.id, name);
            if st.wanted.contains(name) {
                // Stopped: no figures, rather than the last ones frozen.
                let blank = StatsPayload {
                    at: crate::payloads::now_rfc3339(),
                    ..Default::default()
                };
                if let Ok(p) = serde_json::to_vec(&blank) {
                    self.outbox.retain(topic, p);
                }
            } else {
                self.outbox.retain(topic, bytes::Bytes::new());
            }
            if self.settings.flat_topics {
                for k in crate::stats::KEYS {
                    let t = self.settings.topics.container_stats_key(&self.id, name, k);
                    self.outbox.retain(t, bytes::Bytes::new());
                }
            }
        }
    }

    /// The next time a call may start: none while `concurrency` are running.
    pub(super) fn next_stats_due(&self) -> Option<Instant> {
        if self.stats.calls.len() >= self.settings.stats.concurrency {
            return None;
        }
        self.stats.due.values().min().copied()
    }

    /// Starts the calls that are due, the most overdue first, up to the bound.
    pub(super) fn run_due_stats(&mut self) {
        let now = Instant::now();
        let interval = self.settings.stats.interval;
        let room = self
            .settings
            .stats
            .concurrency
            .saturating_sub(self.stats.calls.len());
        let mut due: Vec<(Instant, String)> = self
            .stats
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, t)| (*t, n.clone()))
            .collect();
        due.sort();
        for (at, name) in due.into_iter().take(room) {
            let Some(id) = self.table.containers.get(&name).map(|s| s.id.clone()) else {
                self.stats.due.remove(&name);
                continue;
            };
            // Keeps its slot; a late call does not bunch the next ones up.
            let mut next = at + interval;
            if next <= now {
                next = now + interval;
            }
            self.stats.due.insert(name.clone(), next);
            let one_shot = self.stats.prev.contains_key(&name);
            let client = self.client.clone();
            let timeout = STATS_TIMEOUT.min(interval);
            self.stats.calls.spawn(async move {
                let r = match tokio::time::timeout(timeout, client.stats(&id, one_shot, timeout))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(DockerError::Timeout),
                };
                (name, id, r)
            });
        }
    }

    pub(super) fn on_stats(&mut self, (name, id, r): StatsAnswer) {
        // Stopped, removed or recreated meanwhile: the answer is stale.
        if !self.stats.due.contains_key(&name)
            || self.table.containers.get(&name).is_none_or(|s| s.id != id)
        {
            return;
        }
        let stats = match r {
            Ok(s) if s.is_empty() => {
                tracing::debug!(endpoint = %self.id, container = %name, "no stats: the container is not running");
                return;
            }
            Ok(s) => s,
            Err(DockerError::NotFound) => {
                tracing::debug!(endpoint = %self.id, container = %name, "no stats: the container is gone");
                return;
            }
            Err(e) => {
                tracing::warn!(endpoint = %self.id, container = %name, error = %e, "cannot read container stats");
                return;
            }
        };
        let prev = self.stats.prev.get(&name).copied();
        let payload = stats.payload(prev, crate::payloads::now_rfc3339());
        match stats.cpu_sample() {
            Some(s) => self.stats.prev.insert(name.clone(), s),
            None => self.stats.prev.remove(&name),
        };
        let topics = &self.settings.topics;
        match serde_json::to_vec(&payload) {
            Ok(p) => self
                .outbox
                .retain(topics.container_stats(&self.id, &name), p),
            Err(e) => return tracing::warn!(error = %e, "cannot encode stats"),
        }
        if self.settings.flat_topics {
            for (k, v) in payload.flat_values() {
                self.outbox
                    .retain(topics.container_stats_key(&self.id, &name, k), v);
            }
        }
        self.stats.published.insert(name);
    }
}
