//! The inspect queue: single-flight per container, at most
//! `INSPECT_CONCURRENCY` at a time, retried when the engine is slow, tagged
//! with the event generation they were asked at (see `transitions`), and
//! drained at shutdown.

use super::*;

impl Endpoint {
    pub(super) fn schedule_inspect(&mut self, id: String) {
        if self.inflight.contains(&id) {
            self.again.insert(id);
            return;
        }
        if self.inspects.len() >= INSPECT_CONCURRENCY {
            if !self.queued.contains(&id) {
                self.queued.push_back(id);
            }
            return;
        }
        self.inflight.insert(id.clone());
        self.inspect_serial += 1;
        self.inflight_serial.insert(id.clone(), self.inspect_serial);
        let client = self.client.clone();
        let asked = self.overlays.generation(&id);
        self.inspects.spawn(async move {
            let r = client.inspect(&id).await;
            (id, asked, r)
        });
    }

    pub(super) fn on_inspect(
        &mut self,
        id: String,
        asked: u64,
        r: Result<Option<ContainerInspect>, DockerError>,
    ) {
        self.inflight.remove(&id);
        let serial = self.inflight_serial.remove(&id).unwrap_or(0);
        let r_failed = r.is_err();
        match r {
            Ok(Some(ins)) => {
                if !self.destroyed.contains(&id) {
                    let confirmed = self.confirm_command(&id, serial);
                    self.apply_inspect(&id, asked, ins);
                    if let Some(name) = confirmed {
                        self.check_pending(&name);
                    }
                }
            }
            Ok(None) => self.on_gone(&id),
            Err(e) => {
                // A slow engine (a mass stop's clean-up) is asked again, a few times.
                let tries = self.inspect_failures.entry(id.clone()).or_insert(0);
                *tries += 1;
                if *tries <= INSPECT_RETRIES {
                    tracing::debug!(endpoint = %self.id, container = %id, error = %e, "inspect failed; asking again");
                    self.again.insert(id.clone());
                } else {
                    tracing::warn!(endpoint = %self.id, container = %id, error = %e, "inspect failed");
                    self.inspect_failures.remove(&id);
                }
            }
        }
        if !r_failed {
            self.inspect_failures.remove(&id);
        }
        if self.again.remove(&id) {
            self.schedule_inspect(id);
        }
        while self.inspects.len() < INSPECT_CONCURRENCY {
            let Some(next) = self.queued.pop_front() else {
                break;
            };
            self.schedule_inspect(next);
        }
    }

    /// An inspect answer, asked at event generation `asked`.
    pub(super) fn apply_inspect(&mut self, id: &str, asked: u64, ins: ContainerInspect) {
        let name = ins.name.trim_start_matches('/').to_string();
        if name.is_empty() || name.contains('/') {
            tracing::warn!(endpoint = %self.id, container = %id, "skipping a container without a usable name");
            return;
        }
        if !self.settings.filter.allows(&name, &ins.config.labels) {
            // By label: its events are ignored from now on. By name: a rename
            // (e.g. an `update` restoring it) may bring it back.
            if crate::filter::label_excludes(&ins.config.labels) {
                self.excluded.insert(id.to_string());
            }
            if self.containers.get(&name).is_some_and(|s| s.id == id) {
                self.containers.remove(&name);
                self.clear_container(&name);
            }
            return;
        }
        // Renamed while we were not looking: the old name's topics go (after the grace).
        if let Some(old) = self.names.get(id).cloned()
            && old != name
            && self.containers.get(&old).is_some_and(|s| s.id == id)
        {
            self.containers.remove(&old);
            self.schedule_removal(&old);
        }
        // Recreated (e.g. by `update`): the old id no longer names it.
        if let Some(prev) = self.containers.get(&name)
            && prev.id != id
        {
            self.names.remove(&prev.id);
        }
        self.names.insert(id.to_string(), name.clone());
        self.removals.remove(&name);
        let follow: std::collections::BTreeMap<String, String> = ins
            .config
            .labels
            .iter()
            .filter(|(k, _)| {
                k.starts_with("dockside.follow") || *k == crate::watcher::UPDATES_LABEL
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if follow.is_empty() {
            self.follow_labels.remove(&name);
        } else {
            self.follow_labels.insert(name.clone(), follow);
        }
        match stacks::StackLabels::of(&ins.config.labels) {
            Some(l) => self.stacks.members.insert(name.clone(), l),
            None => self.stacks.members.remove(&name),
        };
        if crate::stats::wanted(self.settings.stats.enabled, &ins.config.labels) {
            self.stats.wanted.insert(name.clone());
        } else {
            self.stats.wanted.remove(&name);
        }
        if crate::filter::commands_disabled(&ins.config.labels) {
            self.no_commands.insert(name.clone());
        } else {
            self.no_commands.remove(&name);
        }
        if crate::filter::logs_disabled(&ins.config.labels) {
            self.no_logs.insert(name.clone());
        } else {
            self.no_logs.remove(&name);
        }
        let mut state = ContainerState::from_inspect(&self.id, &ins);
        self.overlays.settle(id, asked, &mut state);
        self.publish_state(&name, state, false);
    }

    /// At shutdown: the answers already on their way are applied (part of
    /// the stop budget), so the last state before a host shutdown is right.
    pub(super) async fn drain_inspects(&mut self) {
        self.queued.clear();
        self.again.clear();
        let deadline = Instant::now() + INSPECT_DRAIN;
        while !self.inspects.is_empty() {
            match tokio::time::timeout_at(deadline, self.inspects.join_next()).await {
                Ok(Some(Ok((id, asked, r)))) => self.on_inspect(id, asked, r),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.inspects.abort_all();
    }
}
