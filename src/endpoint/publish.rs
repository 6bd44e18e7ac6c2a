//! What an endpoint publishes: container states (from events and inspects),
//! removals after the grace, Home Assistant devices, the endpoint's status
//! and info, and everything again after a broker reconnect.

use super::*;

impl Endpoint {
    /// Carries out what the table decided (an event or an inspect answer).
    pub(super) fn carry_out(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::State { name, state } => {
                    // The command waiting on this state hears of it here,
                    // after the state is out, not from inside publishing.
                    if self.publish_state(&name, *state, false) {
                        self.state_reached(&name);
                    }
                }
                // What users see: from the engine's clock to the state leaving us.
                Effect::Mirrored { event_nanos } => {
                    crate::metrics::get().observe_since(event_nanos)
                }
                Effect::Remove { name } => self.schedule_removal(&name),
                Effect::Clear { name } => self.clear_container(&name),
                Effect::Inspect { id } => self.schedule_inspect(id),
                Effect::Destroyed { id } => self.inspects.forget_failures(&id),
                Effect::Counts => self.info_changed(),
                Effect::Labels { name, labels } => self.note_labels(&name, &labels),
                Effect::Unusable { id } => {
                    tracing::warn!(endpoint = %self.id, container = %id, "skipping a container without a usable name")
                }
            }
        }
    }

    /// The labels stacks and stats read, of a mirrored container.
    fn note_labels(&mut self, name: &str, labels: &HashMap<String, String>) {
        match stacks::StackLabels::of(labels) {
            Some(l) => self.stacks.members.insert(name.to_string(), l),
            None => self.stacks.members.remove(name),
        };
        if crate::stats::wanted(self.settings.stats.enabled, labels) {
            self.stats.wanted.insert(name.to_string());
        } else {
            self.stats.wanted.remove(name);
        }
    }

    /// A container's state as it is now: published when it changed (or
    /// `force`), recorded in the table, then its followers learn of it.
    /// True when it was recorded.
    pub(super) fn publish_state(&mut self, name: &str, state: ContainerState, force: bool) -> bool {
        let state = self.with_problem(name, state);
        if !force && self.table.containers.get(name) == Some(&state) {
            return false;
        }
        if !self.write_state(name, &state, force) {
            return false;
        }
        let first = self
            .table
            .containers
            .insert(name.to_string(), state)
            .is_none();
        self.on_state_recorded(name, first, force);
        true
    }

    /// The outbox writes of one state: its discovery first (HA must know the
    /// entities the state feeds), the state, and the flat keys that changed.
    /// False when it cannot be encoded (nothing was written).
    fn write_state(&mut self, name: &str, state: &ContainerState, force: bool) -> bool {
        self.publish_container_device(name, state, force);
        let topics = &self.settings.topics;
        match serde_json::to_vec(state) {
            Ok(p) => self
                .outbox
                .retain(topics.container_state(&self.id, name), p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode state");
                return false;
            }
        }
        if self.settings.flat_topics {
            let before: HashMap<String, String> = match (force, self.table.containers.get(name)) {
                (false, Some(p)) => p.flat_values().into_iter().collect(),
                _ => HashMap::new(),
            };
            for (k, v) in state.flat_values() {
                if before.get(&k) != Some(&v) {
                    self.outbox
                        .retain(topics.container_state_key(&self.id, name, &k), v);
                }
            }
        }
        true
    }

    /// What follows a recorded state: the image watcher's inventory, the
    /// stats schedule, the update history (at first sight) and the endpoint
    /// info. (Commands hear of states from `carry_out`.)
    fn on_state_recorded(&mut self, name: &str, first: bool, force: bool) {
        if let (Some(inv), Some(state)) =
            (&self.settings.inventory, self.table.containers.get(name))
        {
            inv.set_container(
                &self.id,
                name,
                crate::watcher::Watched {
                    config_image: state.image.clone(),
                    image_id: state.image_id.clone(),
                    labels: self
                        .table
                        .watched_labels
                        .get(name)
                        .cloned()
                        .unwrap_or_default(),
                },
            );
        }
        self.schedule_stats(name);
        if force || first {
            self.publish_history(name);
        }
        self.info_changed();
    }

    /// The problem flag (SPEC §13) of `state`, with this restart count recorded.
    fn with_problem(&mut self, name: &str, mut state: ContainerState) -> ContainerState {
        let recent = self
            .crashloops
            .observe(name, state.restart_count, crate::clock::unix_now());
        state.problem_reason = crate::problem::assess(&state, recent, self.crashloops.threshold());
        state.problem = state.problem_reason.is_some();
        state
    }

    /// Crash loops end by time passing, not by an event: the flag of every
    /// container with restarts on record is looked at again (save tick).
    pub(super) fn recheck_problems(&mut self) {
        let names: Vec<String> = self.crashloops.tracked().cloned().collect();
        for name in names {
            if let Some(state) = self.table.containers.get(&name).cloned() {
                // Only the problem flag can change: no command waits on it.
                self.publish_state(&name, state, false);
            }
        }
    }

    pub(super) fn schedule_removal(&mut self, name: &str) {
        if self.settings.removal_grace.is_zero() {
            self.clear_container(name);
        } else {
            self.table.removals.insert(
                name.to_string(),
                Instant::now() + self.settings.removal_grace,
            );
        }
    }

    pub(super) fn next_removal(&self) -> Option<Instant> {
        self.table.next_removal()
    }

    pub(super) fn run_removals(&mut self) {
        let due = self.table.take_due_removals(Instant::now());
        for name in due {
            if !self.table.containers.contains_key(&name) {
                tracing::info!(endpoint = %self.id, container = %name, "container removed: clearing its topics");
                self.clear_container(&name);
            }
        }
    }

    /// The container's HA device, when what it is built from changed (or `force`).
    pub(super) fn publish_container_device(
        &mut self,
        name: &str,
        state: &ContainerState,
        force: bool,
    ) {
        let Some(ha) = self.settings.ha.clone() else {
            return;
        };
        let s = &self.settings;
        let who = self.subject(name, &state.id);
        let facts = ContainerFacts {
            image: state.image.clone(),
            words: ha.container_words(&who),
            configuration_url: match (&self.meta.portainer_ui, self.meta.portainer_id) {
                (Some(ui), Some(env)) => {
                    Some(format!("{ui}/#!/{env}/docker/containers/{}", state.id))
                }
                _ => None,
            },
            stats: self.stats.wanted.contains(name),
            versions: s
                .inventory
                .as_ref()
                .and_then(|inv| inv.facts(&self.id, name))
                .map(|f| f.versions)
                .unwrap_or_default(),
        };
        if !force && self.ha_containers.get(name) == Some(&facts) {
            return;
        }
        let owner = s.topics.container_owner(&self.id, name);
        self.outbox
            .retain_owned(&owner, ha.messages(&ha.container(&self.id, name, &facts)));
        self.ha_containers.insert(name.to_string(), facts);
    }

    /// The endpoint's HA device, when its name or engine version changed (or `force`).
    pub(super) fn publish_endpoint_device(&mut self, force: bool) {
        let Some(ha) = self.settings.ha.clone() else {
            return;
        };
        let facts = EndpointFacts {
            name: self.meta.name.clone(),
            kind: self.meta.kind.to_string(),
            docker_version: self.facts.docker_version.clone(),
            configuration_url: match (&self.meta.portainer_ui, self.meta.portainer_id) {
                (Some(ui), Some(env)) => Some(format!("{ui}/#!/{env}/docker/dashboard")),
                _ => None,
            },
        };
        if !force && self.ha_endpoint.as_ref() == Some(&facts) {
            return;
        }
        let owner = self.settings.topics.endpoint_owner(&self.id);
        self.outbox
            .retain_owned(&owner, ha.messages(&ha.endpoint(&self.id, &facts)));
        self.ha_endpoint = Some(facts);
    }

    pub(super) fn clear_container(&mut self, name: &str) {
        self.ha_containers.remove(name);
        self.history.forget(name);
        self.crashloops.forget(name);
        self.stats.forget(name);
        self.stacks.members.remove(name);
        let prefix = self.settings.topics.container_prefix(&self.id, name);
        match &self.settings.inventory {
            // Under the inventory lock: no update status can land after the clear.
            Some(inv) => {
                inv.remove_container_then(&self.id, name, || self.outbox.clear_prefix(&prefix))
            }
            None => self.outbox.clear_prefix(&prefix),
        }
    }

    pub(super) fn set_online(&mut self, online: bool) {
        if self.online == Some(online) {
            return;
        }
        self.online = Some(online);
        if online {
            self.offline_reason = None;
        }
        crate::metrics::get()
            .endpoint_up
            .get_or_create(&crate::metrics::Metrics::endpoint(&self.id))
            .set(i64::from(online));
        let payload = if online { "online" } else { "offline" };
        self.outbox
            .retain(self.settings.topics.endpoint_status(&self.id), payload);
    }

    pub(super) fn info_changed(&mut self) {
        if self.info_due.is_none() {
            self.info_due = Some(Instant::now() + INFO_DEBOUNCE);
        }
    }

    pub(super) fn build_info(&self) -> EndpointInfo {
        let (containers, stacks) = ContainerCounts::of(self.table.containers.values());
        let updates_available = self
            .settings
            .inventory
            .as_ref()
            .map(|inv| inv.updates_available(&self.id).len() as i64);
        let m = crate::metrics::get();
        let label = crate::metrics::Metrics::endpoint(&self.id);
        m.containers_problem
            .get_or_create(&label)
            .set(containers.problems);
        if let Some(n) = updates_available {
            m.updates_available.get_or_create(&label).set(n);
        }
        let f = &self.facts;
        EndpointInfo {
            id: self.id.clone(),
            name: self.meta.name.clone(),
            kind: self.meta.kind.to_string(),
            reachable: self.online == Some(true),
            docker_version: f.docker_version.clone(),
            api_version: f.api_version.clone(),
            os: f.os.clone(),
            arch: f.arch.clone(),
            cpus: f.cpus,
            memory_bytes: f.memory_bytes,
            containers,
            images: f.images,
            volumes: f.volumes,
            stacks,
            public_url: self.meta.public_url.clone(),
            portainer_id: self.meta.portainer_id,
            services: f.services,
            disk: self.disk.last.clone(),
            updates_available,
            error: self
                .offline_reason
                .clone()
                .filter(|_| self.online != Some(true)),
        }
    }

    pub(super) fn publish_info_now(&mut self) {
        self.info_due = None;
        self.publish_stacks(false);
        let info = self.build_info();
        if self.last_info.as_ref() == Some(&info) {
            return;
        }
        match serde_json::to_vec(&info) {
            Ok(p) => self
                .outbox
                .retain(self.settings.topics.endpoint_info(&self.id), p),
            Err(e) => tracing::warn!(error = %e, "cannot encode endpoint info"),
        }
        self.last_info = Some(info);
    }

    /// After a broker reconnect: everything retained again.
    pub(super) fn republish_all(&mut self) {
        self.publish_endpoint_device(true);
        if let Some(online) = self.online.take() {
            self.set_online(online);
        }
        self.last_info = None;
        self.publish_info_now();
        self.publish_stacks(true);
        for (name, state) in self.table.snapshot() {
            // The same states again: no command ends on them.
            self.publish_state(&name, state, true);
        }
    }
}
