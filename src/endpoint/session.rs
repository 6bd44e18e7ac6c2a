//! One session with the engine: negotiate, subscribe to events before
//! listing, sync, then the loop over events, commands, inspects and timers;
//! the cursor saves, Portainer's polls and the engine facts.

use super::*;

impl Endpoint {
    pub(super) fn types_requested(&self) -> Vec<&str> {
        // Container events drive state; image/volume events keep counts fresh.
        let mut t: Vec<&str> = vec!["container", "image", "volume"];
        for x in &self.settings.event_types {
            if !t.contains(&x.as_str()) {
                t.push(x);
            }
        }
        t
    }

    /// One session: open the event stream, sync, then the loop until the
    /// stream ends, an error, or `token`.
    pub(super) async fn session(
        &mut self,
        token: &CancellationToken,
        cmds: &mut mpsc::Receiver<EndpointCommand>,
    ) -> Result<(), SessionError> {
        let (lines, types) = self.open_events().await?;
        self.sync_and_sweep().await?;
        self.run_loop(token, cmds, lines, &types).await
    }

    /// Negotiates, fixes the cursor's start on first contact, and subscribes
    /// to the events before anything is listed (nothing falls between).
    async fn open_events(&mut self) -> Result<(Lines, Vec<String>), SessionError> {
        self.client.negotiate().await?;
        if let Some(inv) = &self.settings.inventory {
            inv.set_endpoint(&self.id, self.client.clone());
        }
        if self.cursor.is_new()
            && let Some(now) = self.engine_now().await
        {
            // First contact: start from the engine's own clock, to the nanosecond,
            // so a later resume never replays what happened before we listened.
            self.cursor.start_if_new(now);
        }
        let types: Vec<String> = self
            .types_requested()
            .into_iter()
            .map(String::from)
            .collect();
        let lines = match self.meta.poll_interval {
            None => {
                // Subscribe before listing, so nothing falls between the list and the stream.
                let refs: Vec<&str> = types.iter().map(String::as_str).collect();
                let since = self.cursor.since();
                let (events, engine_date) =
                    self.client.events(since.as_deref(), None, &refs).await?;
                if let Some(secs) = engine_date {
                    // The engine did not tell its time: the HTTP date (whole seconds) will do.
                    self.cursor.start_if_new(secs.saturating_mul(1_000_000_000));
                }
                Lines::Stream(events)
            }
            Some(_) => {
                // Through Portainer the live stream may be held back or cut: it runs
                // on its own and the session relies on the bounded polls below.
                let (tx, rx) = mpsc::channel(4096);
                let task = tokio::spawn(background_stream(
                    self.client.clone(),
                    self.cursor.shared(),
                    types.clone(),
                    tx,
                    self.id.clone(),
                ));
                Lines::Background { rx, task }
            }
        };
        Ok((lines, types))
    }

    /// Engine facts, the endpoint device, a full list + inspect, online, and
    /// (once per run) the sweep of leftover topics.
    async fn sync_and_sweep(&mut self) -> Result<(), SessionError> {
        self.refresh_facts().await?;
        self.publish_endpoint_device(false);
        self.full_sync().await?;
        self.set_online(true);
        self.publish_info_now();
        if !self.swept {
            self.swept = true;
            let ep = self.id.clone();
            let live = self
                .table
                .containers
                .keys()
                .cloned()
                .chain(self.stacks_live())
                .collect();
            self.outbox.sweep(if self.restarted {
                Sweep::Restarted { ep, live }
            } else {
                Sweep::Endpoint { ep, live }
            });
        }
        tracing::info!(endpoint = %self.id, containers = self.table.containers.len(), api = %self.client.api_version(), "endpoint synced");

        Ok(())
    }

    /// The loop over events, commands, finished work and timers.
    async fn run_loop(
        &mut self,
        token: &CancellationToken,
        cmds: &mut mpsc::Receiver<EndpointCommand>,
        mut lines: Lines,
        types: &[String],
    ) -> Result<(), SessionError> {
        let mut ticks = finished::Ticks::new(self.settings.reconcile_interval);
        let mut resync = self.mqtt.resync_signal();
        resync.mark_unchanged();
        let mut poll = self.meta.poll_interval.map(|p| {
            let mut i = tokio::time::interval(p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });
        let news = self.watcher_news.clone();
        loop {
            let due = self.next_due(&ticks);
            tokio::select! {
                biased;
                _ = token.cancelled() => {
                    self.drain_inspects().await;
                    return Ok(());
                }
                done = self.next_finished() => self.on_finished(done),
                Some(cmd) = cmds.recv() => self.on_command(cmd).await?,
                item = lines.next() => self.on_item(item?),
                _ = tick_opt(&mut poll) => self.poll_events(types).await?,
                _ = tokio::time::sleep_until(due) => self.on_due(&mut ticks).await?,
                Ok(()) = resync.changed() => self.republish_all(),
                _ = news.notified() => self.on_watcher_news(),
            }
        }
    }

    /// Now, on this thread: at the end of a session and at shutdown.
    pub(super) fn save_cursor(&mut self) {
        self.cursor
            .save_now(self.settings.state_dir.as_ref(), &self.id);
    }

    /// A read-only word (`logs`) or `prune` ended: its result goes out, a
    /// prune lets updates run again and refreshes the disk summary.
    pub(super) fn on_read_done(
        &mut self,
        res: Result<(String, crate::command::CommandResult), tokio::task::JoinError>,
    ) {
        match res {
            Ok((topic, r)) => {
                if r.action.as_deref() == Some("prune") {
                    self.runner.prune_running = false;
                    self.ask_disk(true);
                }
                if topic.ends_with("/result") && topic.contains("/_stacks/") {
                    // A Portainer stack word: its status changed.
                    self.ask_portainer_stacks(true);
                }
                self.send_result_to(topic, r);
            }
            Err(e) => {
                // A prune that panicked must not keep updates busy for ever.
                self.runner.prune_running = false;
                tracing::error!(endpoint = %self.id, error = %e, "logs or prune task failed");
            }
        }
    }

    /// Periodic save, off the async workers.
    pub(super) fn save_cursor_soon(&mut self) {
        self.cursor
            .save_soon(self.settings.state_dir.as_ref(), &self.id);
    }

    /// A bounded `since`/`until` read of the events (Portainer flushes bounded
    /// answers even where it holds back a live stream). Lines go through the
    /// same de-duplication as the stream's.
    pub(super) async fn poll_events(&mut self, types: &[String]) -> Result<(), SessionError> {
        let refs: Vec<&str> = types.iter().map(String::as_str).collect();
        let since = self.cursor.since();
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
            .unwrap_or_default();
        let (mut s, _) = self
            .client
            .events(since.as_deref(), Some(&until), &refs)
            .await?;
        while let Some(item) = s.next().await {
            self.on_item(item.map_err(|e| SessionError::Stream(e.to_string()))?);
        }
        Ok(())
    }

    /// The engine's clock (`/info` SystemTime) as Unix nanoseconds.
    pub(super) async fn engine_now(&self) -> Option<i64> {
        let info = self.client.info().await.ok()?;
        let t = humantime::parse_rfc3339(info.system_time.trim()).ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_nanos()).ok()
    }

    pub(super) async fn refresh_facts(&mut self) -> Result<(), DockerError> {
        let version = match self.client.version().await {
            Ok(v) => Some(v),
            Err(e) => tolerate("version", e, &self.id)?,
        };
        let info = match self.client.info().await {
            Ok(i) => Some(i),
            Err(e) => tolerate("info", e, &self.id)?,
        };
        let volumes = match self.client.volume_count().await {
            Ok(n) => Some(n as i64),
            Err(e) => tolerate("volumes", e, &self.id)?,
        };
        let services = match self.client.service_count().await {
            Ok(n) => Some(n as i64),
            Err(e) => tolerate("services", e, &self.id)?,
        };
        self.ask_disk(false);
        let images = info.as_ref().map(|i| i.images);
        let version = version.unwrap_or_default();
        let info = info.unwrap_or_default();
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        self.facts = Facts {
            docker_version: non_empty(version.version).or(non_empty(info.server_version)),
            api_version: Some(self.client.api_version()),
            os: non_empty(version.os).or(non_empty(info.os_type)),
            arch: non_empty(info.architecture).or(non_empty(version.arch)),
            cpus: (info.ncpu > 0).then_some(info.ncpu),
            memory_bytes: (info.mem_total > 0).then_some(info.mem_total),
            images,
            volumes,
            services,
        };
        Ok(())
    }

    /// `GET /system/df` in the background when due (or `now`, after a
    /// prune); never two at once. Its answer lands in `on_disk`.
    pub(super) fn ask_disk(&mut self, now: bool) {
        self.disk.ask(&self.client, now);
    }

    pub(super) fn on_disk(&mut self, r: Result<crate::docker::models::SystemDf, DockerError>) {
        if self.disk.on_answer(&self.id, r) {
            self.info_changed();
        }
    }

    /// List + inspect everything; heals whatever the stream missed.
    pub(super) async fn full_sync(&mut self) -> Result<(), DockerError> {
        let list = self.client.list_containers().await?;
        self.recover_interrupted_updates(&list).await;
        let mut wanted = Vec::new();
        let mut listed = HashSet::new();
        for c in &list {
            let Some(name) = c.name() else { continue };
            if !self.settings.filter.allows(name, &c.labels) {
                continue;
            }
            listed.insert(name.to_string());
            wanted.push(c.id.clone());
        }
        let client = self.client.clone();
        let results: Vec<InspectResult> = stream::iter(wanted)
            .map(|id| {
                let client = client.clone();
                async move {
                    let r = client.inspect(&id).await;
                    (id, 0, r)
                }
            })
            .buffer_unordered(INSPECT_CONCURRENCY)
            .collect()
            .await;
        for (id, _, r) in results {
            match r {
                // No event was handled meanwhile: the answer is newer than all of them.
                Ok(Some(ins)) => {
                    let asked = self.table.overlays.generation(&id);
                    self.apply_inspect(&id, asked, Some(&ins))
                }
                Ok(None) => {} // removed meanwhile; its destroy event follows
                Err(DockerError::Decode { what, message }) => {
                    tracing::warn!(endpoint = %self.id, container = %id, %what, %message, "skipping a malformed container")
                }
                Err(e) => return Err(e),
            }
        }
        let gone: Vec<String> = self
            .table
            .containers
            .keys()
            .filter(|n| !listed.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(st) = self.table.containers.remove(&name) {
                self.table.names.remove(&st.id);
            }
            self.schedule_removal(&name);
        }
        Ok(())
    }

    /// An `update` cut short (dockside or the host went down in the middle)
    /// leaves the old container renamed `<name>.dockside-old`: when no
    /// container took its name, it gets it back.
    pub(super) async fn recover_interrupted_updates(
        &self,
        list: &[crate::docker::models::ContainerSummary],
    ) {
        use crate::docker::recreate::OLD_SUFFIX;
        let names: HashSet<&str> = list.iter().filter_map(|c| c.name()).collect();
        for c in list {
            let Some(base) = c.name().and_then(|n| n.strip_suffix(OLD_SUFFIX)) else {
                continue;
            };
            if self.runner.pending.contains_key(base) {
                continue; // that update is running now
            }
            if names.contains(base) || base.is_empty() {
                tracing::warn!(endpoint = %self.id, container = %base, "an old container from an update is left over; remove it when the new one is fine");
                continue;
            }
            match self
                .client
                .container_action(&c.id, "rename", &[("name", base)], Duration::from_secs(15))
                .await
            {
                Ok(_) => {
                    tracing::warn!(endpoint = %self.id, container = %base, "restored a container left renamed by an interrupted update")
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.id, container = %base, error = %e, "cannot restore a container left renamed by an interrupted update")
                }
            }
        }
    }
}

/// Where a session's events come from.
pub(super) enum Lines {
    /// Direct engine: the live stream; its end ends the session.
    Stream(EventStream),
    /// Portainer: a background stream that reconnects on its own.
    Background {
        rx: mpsc::Receiver<EventItem>,
        task: tokio::task::JoinHandle<()>,
    },
}

impl Lines {
    pub(super) async fn next(&mut self) -> Result<EventItem, SessionError> {
        match self {
            Lines::Stream(s) => match s.next().await {
                Some(Ok(item)) => Ok(item),
                Some(Err(e)) => Err(SessionError::Stream(e.to_string())),
                None => Err(SessionError::StreamEnded),
            },
            Lines::Background { rx, .. } => rx.recv().await.ok_or(SessionError::StreamEnded),
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if let Lines::Background { task, .. } = self {
            task.abort();
        }
    }
}

/// Portainer mode: keeps a live stream open (resuming from the shared cursor)
/// and forwards its lines; failures only delay it, the polls carry on.
pub(super) async fn background_stream(
    client: Arc<DockerClient>,
    cursor: Arc<AtomicI64>,
    types: Vec<String>,
    tx: mpsc::Sender<EventItem>,
    id: String,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let refs: Vec<&str> = types.iter().map(String::as_str).collect();
    loop {
        backoff.mark_started();
        let since = since_of(cursor.load(Ordering::Relaxed));
        match client.events(since.as_deref(), None, &refs).await {
            Ok((mut s, _)) => {
                while let Some(item) = s.next().await {
                    match item {
                        Ok(item) => {
                            if tx.send(item).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(endpoint = %id, error = %e, "live event stream dropped");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(endpoint = %id, error = %e, "live event stream unavailable; polling")
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

pub(super) fn since_of(nanos: i64) -> Option<String> {
    (nanos > 0).then(|| format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000))
}

pub(super) async fn tick_opt(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Engine info is decorative: a malformed or refused answer is logged, not
/// fatal; only a connection failure ends the session.
pub(super) fn tolerate<T>(what: &str, e: DockerError, id: &str) -> Result<Option<T>, DockerError> {
    match e {
        DockerError::Decode { .. } | DockerError::Status { .. } | DockerError::NotFound => {
            tracing::warn!(endpoint = %id, error = %e, "cannot read engine {what}");
            Ok(None)
        }
        e => Err(e),
    }
}
