//! One task per Docker engine: initial sync (list + inspect) → `/events` stream
//! resumed with `since` → periodic reconcile. It owns the endpoint's container
//! state (keyed by name, never by ID) and hands retained state and events to
//! the MQTT outbox; it never waits on MQTT.

mod commands;
mod transitions;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use globset::GlobSet;
use tokio::sync::mpsc;

use futures_util::{StreamExt, stream};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::LinesCodecError;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
pub use commands::EndpointCommand;
use commands::Pending;

use crate::docker::models::{ContainerInspect, Event};
use crate::docker::{DockerClient, DockerError, EventStream};
use crate::filter::ContainerFilter;
use crate::homeassistant::{ContainerFacts, Discovery, EndpointFacts};
use crate::mqtt::{MqttHandle, Outbox, Sweep};
use crate::payloads::{
    ContainerCounts, ContainerState, EndpointInfo, EventMessage, container_event_payload,
};
use crate::persist::{Cursor, StateDir, event_key};
use crate::topics::Topics;

/// Inspects run at most this many at a time per endpoint.
const INSPECT_CONCURRENCY: usize = 8;
/// How long a stopping endpoint waits for inspects already asked.
/// A failed inspect is asked again this many times.
const INSPECT_RETRIES: u8 = 3;
const INSPECT_DRAIN: Duration = Duration::from_millis(300);
/// Coalesces endpoint-info recomputation during bursts.
const INFO_DEBOUNCE: Duration = Duration::from_millis(200);
/// Image/volume counts are re-read at most this often after such events.
const FACTS_DEBOUNCE: Duration = Duration::from_secs(2);
/// The cursor is written at most this often (and at the end of a session):
/// with 1 s healthchecks events never stop, and an SD card wears per write
/// (one page per save, `persist::StateDir::save_cursor`).
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(10);
/// Actions that do not change a container's state: no inspect needed.
const STATELESS_ACTIONS: &[&str] = &[
    "attach",
    "detach",
    "resize",
    "top",
    "copy",
    "export",
    "commit",
    "archive-path",
    "extract-to-dir",
    "exec_create",
    "exec_start",
    "exec_die",
    "exec_detach",
];

/// Settings every endpoint task shares (from the config's global sections).
#[derive(Debug)]
pub struct EndpointSettings {
    pub topics: Topics,
    pub filter: ContainerFilter,
    pub event_types: Vec<String>,
    pub removal_grace: Duration,
    pub reconcile_interval: Duration,
    pub flat_topics: bool,
    pub state_dir: Option<StateDir>,
    /// Names never stopped, paused, killed or recreated (`commands.protect`).
    pub protect: GlobSet,
    /// Ids of the container dockside itself runs in, if any.
    pub own_ids: HashSet<String>,
    pub min_interval: Duration,
    pub command_timeout: Duration,
    pub update_timeout: Duration,
    /// Registry credentials per host, for the pulls of `update`.
    pub registry_credentials: Arc<HashMap<String, crate::registry::client::Credentials>>,
    /// Where the image watcher learns which containers run which image.
    pub inventory: Option<Arc<crate::watcher::Inventory>>,
    /// Home Assistant discovery, when on.
    pub ha: Option<Arc<Discovery>>,
    /// The command policy's settings (`commands::refusal`).
    pub commands: crate::config::CommandsConfig,
    /// Where `check` goes: the image watcher's queue, while it runs.
    pub checks: crate::watcher::CheckQueue,
    /// Debug builds: panic on an event of this container (supervision tests).
    pub test_panic_on: Option<String>,
}

/// What kind of source an endpoint comes from, for its info payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointMeta {
    pub name: String,
    pub kind: &'static str,
    pub public_url: Option<String>,
    pub portainer_id: Option<i64>,
    /// Portainer: a bounded `since`/`until` poll of events this often, merged with
    /// the live stream (which Portainer may hold back).
    pub poll_interval: Option<Duration>,
    /// Portainer's own URL, for links from Home Assistant devices.
    pub portainer_ui: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Docker(#[from] DockerError),
    #[error("event stream ended")]
    StreamEnded,
    #[error("event stream failed: {0}")]
    Stream(String),
}

/// Engine facts for the info payload (SPEC §4.2).
#[derive(Debug, Clone, Default)]
struct Facts {
    docker_version: Option<String>,
    api_version: Option<String>,
    os: Option<String>,
    arch: Option<String>,
    cpus: Option<i64>,
    memory_bytes: Option<i64>,
    images: Option<i64>,
    volumes: Option<i64>,
}

/// Container id, the event generation it was asked at (see `transitions`), the answer.
type InspectResult = (String, u64, Result<Option<ContainerInspect>, DockerError>);

pub struct Endpoint {
    id: String,
    meta: EndpointMeta,
    settings: Arc<EndpointSettings>,
    outbox: Arc<Outbox>,
    mqtt: MqttHandle,
    client: Arc<DockerClient>,
    /// name → last published state.
    containers: HashMap<String, ContainerState>,
    /// id → name, for events that only carry an id.
    names: HashMap<String, String>,
    /// Containers taken out by the `dockside.enable=false` label.
    excluded: HashSet<String>,
    /// Recently destroyed ids: a late inspect answer must not resurrect them.
    destroyed: VecDeque<String>,
    /// name → when its topics are cleared unless it comes back.
    removals: HashMap<String, Instant>,
    cursor: Cursor,
    cursor_dirty: bool,
    /// A background cursor write is under way / the last one failed (retry).
    cursor_saving: Arc<std::sync::atomic::AtomicBool>,
    cursor_failed: Arc<std::sync::atomic::AtomicBool>,
    inflight: HashSet<String>,
    again: HashSet<String>,
    queued: VecDeque<String>,
    inspects: JoinSet<InspectResult>,
    /// Transitions published from events that no inspect has confirmed yet.
    overlays: transitions::Overlays,
    /// id → failed inspects in a row.
    inspect_failures: HashMap<String, u8>,
    facts: Facts,
    online: Option<bool>,
    last_info: Option<EndpointInfo>,
    info_due: Option<Instant>,
    facts_due: Option<Instant>,
    swept: bool,
    /// Restarted within this run: sweep every known topic, not only leftovers.
    restarted: bool,
    /// The cursor, for the background stream task (Portainer mode).
    shared_cursor: Arc<AtomicI64>,
    /// `dockside.follow*` labels per container name, for the image watcher.
    follow_labels: HashMap<String, std::collections::BTreeMap<String, String>>,
    /// Names whose label `dockside.commands=false` refuses commands.
    no_commands: HashSet<String>,
    /// name → the command running on it (one at a time).
    pending: HashMap<String, Pending>,
    last_command: HashMap<String, Instant>,
    actions: JoinSet<commands::ActionResult>,
    next_seq: u64,
    /// What each container's discovery config was last built from.
    ha_containers: HashMap<String, ContainerFacts>,
    ha_endpoint: Option<EndpointFacts>,
    /// Portainer environments: the client and environment id, for Portainer's recreate.
    portainer: Option<(Arc<crate::portainer::PortainerClient>, i64)>,
}

impl Endpoint {
    pub fn new(
        id: String,
        meta: EndpointMeta,
        client: DockerClient,
        settings: Arc<EndpointSettings>,
        mqtt: MqttHandle,
    ) -> Self {
        let mut cursor = settings
            .state_dir
            .as_ref()
            .and_then(|d| d.load_cursor(&id))
            .unwrap_or_default();
        cursor.rebuild_index();
        Self {
            id,
            meta,
            outbox: mqtt.outbox.clone(),
            mqtt,
            settings,
            client: Arc::new(client),
            containers: HashMap::new(),
            names: HashMap::new(),
            excluded: HashSet::new(),
            destroyed: VecDeque::new(),
            removals: HashMap::new(),
            cursor,
            cursor_dirty: false,
            cursor_saving: Default::default(),
            cursor_failed: Default::default(),
            inflight: HashSet::new(),
            again: HashSet::new(),
            queued: VecDeque::new(),
            inspects: JoinSet::new(),
            overlays: transitions::Overlays::default(),
            inspect_failures: HashMap::new(),
            facts: Facts::default(),
            online: None,
            last_info: None,
            info_due: None,
            facts_due: None,
            swept: false,
            restarted: false,
            shared_cursor: Arc::new(AtomicI64::new(0)),
            no_commands: HashSet::new(),
            follow_labels: HashMap::new(),
            pending: HashMap::new(),
            last_command: HashMap::new(),
            actions: JoinSet::new(),
            next_seq: 0,
            ha_containers: HashMap::new(),
            ha_endpoint: None,
            portainer: None,
        }
    }

    /// A Portainer environment: `update` goes through Portainer's recreate.
    pub fn with_portainer(
        mut self,
        client: Arc<crate::portainer::PortainerClient>,
        env_id: i64,
    ) -> Self {
        self.portainer = Some((client, env_id));
        self
    }

    /// Marks an endpoint started again within one run (reload).
    pub fn restarted(mut self) -> Self {
        self.restarted = true;
        self
    }

    /// Runs sessions with backoff until cancelled; commands arrive on `cmds`.
    pub async fn run(
        mut self,
        token: CancellationToken,
        cmds: &mut mpsc::Receiver<EndpointCommand>,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let mut first_failure = true;
        // The endpoint's device exists (and shows it unreachable) before its first sync.
        self.publish_endpoint_device(false);
        loop {
            backoff.mark_started();
            let result = self.session(&token, cmds).await;
            self.save_cursor();
            self.fail_all_pending(if token.is_cancelled() {
                "dockside is shutting down"
            } else {
                "lost the connection to the engine"
            });
            let err = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            if token.is_cancelled() {
                return;
            }
            let was_online = self.online == Some(true);
            self.set_online(false);
            self.publish_info_now();
            let delay = backoff.next_delay();
            if was_online || first_failure {
                first_failure = false;
                tracing::warn!(endpoint = %self.id, error = %err, retry_in = ?delay, "endpoint offline");
            } else {
                tracing::debug!(endpoint = %self.id, error = %err, retry_in = ?delay, "endpoint still offline");
            }
            // Pending removals still fall due while the engine is away.
            let until = Instant::now() + delay;
            loop {
                let removal_due = self.next_removal();
                tokio::select! {
                    _ = token.cancelled() => { self.save_cursor(); return; }
                    _ = tokio::time::sleep_until(until) => break,
                    _ = sleep_until_opt(removal_due) => self.run_removals(),
                    Some(cmd) = cmds.recv() => self.refuse_offline(cmd),
                }
            }
        }
    }

    fn types_requested(&self) -> Vec<&str> {
        // Container events drive state; image/volume events keep counts fresh.
        let mut t: Vec<&str> = vec!["container", "image", "volume"];
        for x in &self.settings.event_types {
            if !t.contains(&x.as_str()) {
                t.push(x);
            }
        }
        t
    }

    async fn session(
        &mut self,
        token: &CancellationToken,
        cmds: &mut mpsc::Receiver<EndpointCommand>,
    ) -> Result<(), SessionError> {
        self.client.negotiate().await?;
        if let Some(inv) = &self.settings.inventory {
            inv.set_endpoint(&self.id, self.client.clone());
        }
        if self.cursor.time_nano == 0
            && let Some(now) = self.engine_now().await
        {
            // First contact: start from the engine's own clock, to the nanosecond,
            // so a later resume never replays what happened before we listened.
            self.cursor.time_nano = now;
            self.cursor_dirty = true;
        }
        let types: Vec<String> = self
            .types_requested()
            .into_iter()
            .map(String::from)
            .collect();
        let mut lines = match self.meta.poll_interval {
            None => {
                // Subscribe before listing, so nothing falls between the list and the stream.
                let refs: Vec<&str> = types.iter().map(String::as_str).collect();
                let since = self.cursor.since();
                let (events, engine_date) =
                    self.client.events(since.as_deref(), None, &refs).await?;
                if self.cursor.time_nano == 0
                    && let Some(secs) = engine_date
                {
                    // The engine did not tell its time: the HTTP date (whole seconds) will do.
                    self.cursor.time_nano = secs.saturating_mul(1_000_000_000);
                    self.cursor_dirty = true;
                }
                Lines::Stream(events)
            }
            Some(_) => {
                // Through Portainer the live stream may be held back or cut: it runs
                // on its own and the session relies on the bounded polls below.
                self.shared_cursor
                    .store(self.cursor.time_nano, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(4096);
                let task = tokio::spawn(background_stream(
                    self.client.clone(),
                    self.shared_cursor.clone(),
                    types.clone(),
                    tx,
                    self.id.clone(),
                ));
                Lines::Background { rx, task }
            }
        };
        self.refresh_facts().await?;
        self.publish_endpoint_device(false);
        self.full_sync().await?;
        self.set_online(true);
        self.publish_info_now();
        if !self.swept {
            self.swept = true;
            let ep = self.id.clone();
            let live = self.containers.keys().cloned().collect();
            self.outbox.sweep(if self.restarted {
                Sweep::Restarted { ep, live }
            } else {
                Sweep::Endpoint { ep, live }
            });
        }
        tracing::info!(endpoint = %self.id, containers = self.containers.len(), api = %self.client.api_version(), "endpoint synced");

        let period = self.settings.reconcile_interval;
        let mut reconcile = tokio::time::interval_at(Instant::now() + period, period);
        reconcile.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut save =
            tokio::time::interval_at(Instant::now() + CURSOR_SAVE_EVERY, CURSOR_SAVE_EVERY);
        save.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut resync = self.mqtt.resync_signal();
        resync.mark_unchanged();
        let mut poll = self.meta.poll_interval.map(|p| {
            let mut i = tokio::time::interval(p);
            i.set_missed_tick_behavior(MissedTickBehavior::Delay);
            i
        });

        loop {
            let (removal_due, info_due, facts_due, command_due) = (
                self.next_removal(),
                self.info_due,
                self.facts_due,
                self.next_command_deadline(),
            );
            tokio::select! {
                biased;
                _ = token.cancelled() => {
                    self.drain_inspects().await;
                    return Ok(());
                }
                Some(res) = self.actions.join_next(), if !self.actions.is_empty() => {
                    match res {
                        Ok(r) => self.on_action_done(r),
                        Err(e) => tracing::error!(endpoint = %self.id, error = %e, "command task failed"),
                    }
                }
                Some(cmd) = cmds.recv() => self.on_command(cmd).await?,
                _ = sleep_until_opt(command_due) => self.expire_commands(),
                Some(res) = self.inspects.join_next(), if !self.inspects.is_empty() => {
                    match res {
                        Ok((id, asked, r)) => self.on_inspect(id, asked, r),
                        Err(e) => tracing::error!(endpoint = %self.id, error = %e, "inspect task failed"),
                    }
                }
                line = lines.next() => match line {
                    Ok(line) => self.on_line(&line),
                    Err(SessionError::Stream(e)) if e == "oversized" => {
                        tracing::warn!(endpoint = %self.id, "skipping an oversized event line");
                    }
                    Err(e) => return Err(e),
                },
                _ = tick_opt(&mut poll) => self.poll_events(&types).await?,
                _ = sleep_until_opt(removal_due) => self.run_removals(),
                _ = sleep_until_opt(info_due) => {
                    self.info_due = None;
                    self.publish_info_now();
                }
                _ = sleep_until_opt(facts_due) => {
                    self.facts_due = None;
                    self.refresh_facts().await?;
                    self.info_changed();
                }
                _ = reconcile.tick() => {
                    self.refresh_facts().await?;
                    self.publish_endpoint_device(false);
                    self.full_sync().await?;
                    self.publish_info_now();
                }
                _ = save.tick() => self.save_cursor_soon(),
                Ok(()) = resync.changed() => self.republish_all(),
            }
        }
    }

    /// At shutdown: the answers already on their way are applied (part of
    /// the stop budget), so the last state before a host shutdown is right.
    async fn drain_inspects(&mut self) {
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

    /// Now, on this thread: at the end of a session and at shutdown.
    fn save_cursor(&mut self) {
        if !self.cursor_dirty && !self.cursor_failed.load(Ordering::Acquire) {
            return;
        }
        if let Some(dir) = &self.settings.state_dir
            && let Err(e) = dir.save_cursor(&self.id, &self.cursor)
        {
            tracing::warn!(endpoint = %self.id, error = %e, "cannot save the event cursor");
            self.cursor_failed.store(true, Ordering::Release);
            return;
        }
        self.cursor_failed.store(false, Ordering::Release);
        self.cursor_dirty = false;
    }

    /// Periodic save, off the async workers (fsync can take long on an SD
    /// card). A failed write (disk full, read-only) is retried next time.
    fn save_cursor_soon(&mut self) {
        if self.cursor_saving.load(Ordering::Acquire) {
            return; // the previous write is still under way
        }
        let failed_before = self.cursor_failed.load(Ordering::Acquire);
        if !self.cursor_dirty && !failed_before {
            return;
        }
        let Some(dir) = self.settings.state_dir.clone() else {
            return;
        };
        self.cursor_dirty = false;
        let (id, cursor) = (self.id.clone(), self.cursor.persisted());
        let (saving, failed) = (self.cursor_saving.clone(), self.cursor_failed.clone());
        saving.store(true, Ordering::Release);
        tokio::task::spawn_blocking(move || {
            match dir.save_cursor(&id, &cursor) {
                Ok(()) => {
                    if failed.swap(false, Ordering::AcqRel) {
                        tracing::info!(endpoint = %id, "event cursor saved again");
                    }
                }
                Err(e) => {
                    if failed_before {
                        tracing::debug!(endpoint = %id, error = %e, "still cannot save the event cursor");
                    } else {
                        tracing::warn!(endpoint = %id, error = %e, "cannot save the event cursor; mirroring goes on, retrying every 10 s");
                    }
                    failed.store(true, Ordering::Release);
                }
            }
            saving.store(false, Ordering::Release);
        });
    }

    /// A bounded `since`/`until` read of the events (Portainer flushes bounded
    /// answers even where it holds back a live stream). Lines go through the
    /// same de-duplication as the stream's.
    async fn poll_events(&mut self, types: &[String]) -> Result<(), SessionError> {
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
        while let Some(l) = s.next().await {
            match l {
                Ok(l) => self.on_line(&l),
                Err(LinesCodecError::MaxLineLengthExceeded) => {}
                Err(LinesCodecError::Io(e)) => return Err(SessionError::Stream(e.to_string())),
            }
        }
        Ok(())
    }

    /// The engine's clock (`/info` SystemTime) as Unix nanoseconds.
    async fn engine_now(&self) -> Option<i64> {
        let info = self.client.info().await.ok()?;
        let t = humantime::parse_rfc3339(info.system_time.trim()).ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        i64::try_from(d.as_nanos()).ok()
    }

    async fn refresh_facts(&mut self) -> Result<(), DockerError> {
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
        };
        Ok(())
    }

    /// List + inspect everything; heals whatever the stream missed.
    async fn full_sync(&mut self) -> Result<(), DockerError> {
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
                    let asked = self.overlays.generation(&id);
                    self.apply_inspect(&id, asked, ins)
                }
                Ok(None) => {} // removed meanwhile; its destroy event follows
                Err(DockerError::Decode { what, message }) => {
                    tracing::warn!(endpoint = %self.id, container = %id, %what, %message, "skipping a malformed container")
                }
                Err(e) => return Err(e),
            }
        }
        let gone: Vec<String> = self
            .containers
            .keys()
            .filter(|n| !listed.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(st) = self.containers.remove(&name) {
                self.names.remove(&st.id);
            }
            self.schedule_removal(&name);
        }
        Ok(())
    }

    /// An `update` cut short (dockside or the host went down in the middle)
    /// leaves the old container renamed `<name>.dockside-old`: when no
    /// container took its name, it gets it back.
    async fn recover_interrupted_updates(&self, list: &[crate::docker::models::ContainerSummary]) {
        use crate::docker::recreate::OLD_SUFFIX;
        let names: HashSet<&str> = list.iter().filter_map(|c| c.name()).collect();
        for c in list {
            let Some(base) = c.name().and_then(|n| n.strip_suffix(OLD_SUFFIX)) else {
                continue;
            };
            if self.pending.contains_key(base) {
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

    fn on_line(&mut self, line: &str) {
        let line = line.trim();
        if line.is_empty() {
            return;
        }
        let ev: Event = match serde_json::from_str(line) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(endpoint = %self.id, error = %e, "skipping a malformed event");
                return;
            }
        };
        let nanos = ev.nanos();
        if !self
            .cursor
            .accept(nanos, event_key(nanos, &ev.actor.id, &ev.action))
        {
            return; // replayed duplicate
        }
        self.cursor_dirty = true;
        self.shared_cursor
            .store(self.cursor.time_nano, Ordering::Relaxed);
        let is_container = ev.kind == "container";
        let visible = if is_container {
            self.container_visible(&ev)
        } else {
            // Network (dis)connects name a container: hide those of filtered-out ones.
            ev.actor
                .attributes
                .get("container")
                .is_none_or(|id| self.names.contains_key(id))
        };
        if visible && self.settings.event_types.contains(&ev.kind) {
            match serde_json::to_vec(&EventMessage::from_event(&ev)) {
                Ok(p) => self
                    .outbox
                    .send(self.settings.topics.endpoint_events(&self.id), p),
                Err(e) => tracing::warn!(error = %e, "cannot encode event"),
            }
        }
        match ev.kind.as_str() {
            "container" if visible => self.on_container_event(&ev),
            "image" | "volume" if self.facts_due.is_none() => {
                self.facts_due = Some(Instant::now() + FACTS_DEBOUNCE);
            }
            _ => {}
        }
    }

    fn container_visible(&self, ev: &Event) -> bool {
        if self.excluded.contains(&ev.actor.id) {
            return false;
        }
        match ev.name() {
            Some(n) => self.settings.filter.allows_name(n),
            None => self.names.contains_key(&ev.actor.id),
        }
    }

    fn on_container_event(&mut self, ev: &Event) {
        if let (Some(p), Some(n)) = (&self.settings.test_panic_on, ev.name())
            && p == n
            && !crate::supervise::TEST_PANICKED.swap(true, Ordering::SeqCst)
        {
            panic!("test-only panic on an event of `{n}` (DOCKSIDE_TEST_PANIC_ON)");
        }
        let id = ev.actor.id.clone();
        if id.is_empty() {
            return;
        }
        let action = ev.action.split(':').next().unwrap_or("").trim();
        let name = ev
            .name()
            .map(String::from)
            .or_else(|| self.names.get(&id).cloned());
        if let Some(name) = &name
            && let Some(p) = container_event_payload(ev)
        {
            match serde_json::to_vec(&p) {
                Ok(p) => self
                    .outbox
                    .send(self.settings.topics.container_event(&self.id, name), p),
                Err(e) => tracing::warn!(error = %e, "cannot encode event"),
            }
        }
        match action {
            "destroy" => self.on_gone(&id),
            "rename" => {
                // The old name's topics go unless the name is taken again within
                // the grace (a recreate done by renaming, as Portainer's is).
                if let Some(old) = ev.actor.attributes.get("oldName") {
                    let old = old.trim_start_matches('/');
                    if self.containers.get(old).is_some_and(|s| s.id == id) {
                        let moved = self.containers.remove(old);
                        self.schedule_removal(old);
                        self.info_changed();
                        // The new name shows at once; its inspect fills in the rest.
                        if let (Some(mut st), Some(new)) = (moved, name.clone())
                            && new != old
                            && self.settings.filter.allows_name(&new)
                        {
                            st.name = new.clone();
                            self.names.insert(id.clone(), new.clone());
                            self.removals.remove(&new);
                            self.publish_state(&new, st, false);
                        }
                    }
                }
                self.schedule_inspect(id);
            }
            a if STATELESS_ACTIONS.contains(&a) => {}
            _ => {
                if action == "create"
                    && let Some(n) = &name
                {
                    self.removals.remove(n);
                }
                if let Some(n) = &name
                    && let Some(t) =
                        transitions::transition_of(&ev.action, &ev.actor.attributes, ev.nanos())
                {
                    self.publish_transition(&id, n, t);
                }
                self.schedule_inspect(id);
            }
        }
    }

    fn schedule_inspect(&mut self, id: String) {
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
        let client = self.client.clone();
        let asked = self.overlays.generation(&id);
        self.inspects.spawn(async move {
            let r = client.inspect(&id).await;
            (id, asked, r)
        });
    }

    fn on_inspect(
        &mut self,
        id: String,
        asked: u64,
        r: Result<Option<ContainerInspect>, DockerError>,
    ) {
        self.inflight.remove(&id);
        let r_failed = r.is_err();
        match r {
            Ok(Some(ins)) => {
                if !self.destroyed.contains(&id) {
                    self.apply_inspect(&id, asked, ins);
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
    fn apply_inspect(&mut self, id: &str, asked: u64, ins: ContainerInspect) {
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
            .filter(|(k, _)| k.starts_with("dockside.follow"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if follow.is_empty() {
            self.follow_labels.remove(&name);
        } else {
            self.follow_labels.insert(name.clone(), follow);
        }
        if crate::filter::commands_disabled(&ins.config.labels) {
            self.no_commands.insert(name.clone());
        } else {
            self.no_commands.remove(&name);
        }
        let mut state = ContainerState::from_inspect(&self.id, &ins);
        self.overlays.settle(id, asked, &mut state);
        self.publish_state(&name, state, false);
    }

    /// SPEC §10: what the event tells is published now; the inspect it
    /// triggers confirms or corrects it.
    fn publish_transition(&mut self, id: &str, name: &str, t: transitions::Transition) {
        // Recorded even when the container is not known yet: its first inspect
        // may be older than this event (an `oom` right after `start`).
        let mut state = self.containers.get(name).filter(|s| s.id == id).cloned();
        if self.overlays.on_event(id, t, state.as_mut())
            && let Some(state) = state
        {
            self.publish_state(name, state, false);
        }
    }

    fn publish_state(&mut self, name: &str, state: ContainerState, force: bool) {
        if !force && self.containers.get(name) == Some(&state) {
            return;
        }
        // Discovery before state: HA must know the entities the state feeds.
        self.publish_container_device(name, &state, force);
        let prev = self.containers.get(name);
        let topics = &self.settings.topics;
        match serde_json::to_vec(&state) {
            Ok(p) => self
                .outbox
                .retain(topics.container_state(&self.id, name), p),
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode state");
                return;
            }
        }
        if self.settings.flat_topics {
            let before: HashMap<String, String> = match (force, prev) {
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
        if let Some(inv) = &self.settings.inventory {
            inv.set_container(
                &self.id,
                name,
                crate::watcher::Watched {
                    config_image: state.image.clone(),
                    image_id: state.image_id.clone(),
                    follow: self.follow_labels.get(name).cloned().unwrap_or_default(),
                },
            );
        }
        self.containers.insert(name.to_string(), state);
        self.info_changed();
        self.check_pending(name);
    }

    fn on_gone(&mut self, id: &str) {
        if !self.destroyed.iter().any(|d| d == id) {
            self.destroyed.push_back(id.to_string());
            if self.destroyed.len() > 1024 {
                self.destroyed.pop_front();
            }
        }
        self.excluded.remove(id);
        self.overlays.forget(id);
        self.inspect_failures.remove(id);
        if let Some(name) = self.names.remove(id)
            && self.containers.get(&name).is_some_and(|s| s.id == id)
        {
            self.containers.remove(&name);
            self.schedule_removal(&name);
            self.info_changed();
        }
    }

    fn schedule_removal(&mut self, name: &str) {
        if self.settings.removal_grace.is_zero() {
            self.clear_container(name);
        } else {
            self.removals.insert(
                name.to_string(),
                Instant::now() + self.settings.removal_grace,
            );
        }
    }

    fn next_removal(&self) -> Option<Instant> {
        self.removals.values().min().copied()
    }

    fn run_removals(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .removals
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.removals.remove(&name);
            if !self.containers.contains_key(&name) {
                tracing::info!(endpoint = %self.id, container = %name, "container removed: clearing its topics");
                self.clear_container(&name);
            }
        }
    }

    /// The container's HA device, when what it is built from changed (or `force`).
    fn publish_container_device(&mut self, name: &str, state: &ContainerState, force: bool) {
        let Some(ha) = self.settings.ha.clone() else {
            return;
        };
        let s = &self.settings;
        let who = crate::commands::Subject {
            label_off: self.no_commands.contains(name),
            protected: s.protect.is_match(name),
            own: s.own_ids.contains(&state.id),
        };
        let facts = ContainerFacts {
            image: state.image.clone(),
            words: ha.container_words(&who),
            configuration_url: match (&self.meta.portainer_ui, self.meta.portainer_id) {
                (Some(ui), Some(env)) => {
                    Some(format!("{ui}/#!/{env}/docker/containers/{}", state.id))
                }
                _ => None,
            },
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
    fn publish_endpoint_device(&mut self, force: bool) {
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

    fn clear_container(&mut self, name: &str) {
        self.ha_containers.remove(name);
        let prefix = self.settings.topics.container_prefix(&self.id, name);
        match &self.settings.inventory {
            // Under the inventory lock: no update status can land after the clear.
            Some(inv) => {
                inv.remove_container_then(&self.id, name, || self.outbox.clear_prefix(&prefix))
            }
            None => self.outbox.clear_prefix(&prefix),
        }
    }

    fn set_online(&mut self, online: bool) {
        if self.online == Some(online) {
            return;
        }
        self.online = Some(online);
        let payload = if online { "online" } else { "offline" };
        self.outbox
            .retain(self.settings.topics.endpoint_status(&self.id), payload);
    }

    fn info_changed(&mut self) {
        if self.info_due.is_none() {
            self.info_due = Some(Instant::now() + INFO_DEBOUNCE);
        }
    }

    fn build_info(&self) -> EndpointInfo {
        let (containers, stacks) = ContainerCounts::of(self.containers.values());
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
        }
    }

    fn publish_info_now(&mut self) {
        self.info_due = None;
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
    fn republish_all(&mut self) {
        self.publish_endpoint_device(true);
        if let Some(online) = self.online.take() {
            self.set_online(online);
        }
        self.last_info = None;
        self.publish_info_now();
        let all: Vec<(String, ContainerState)> = self
            .containers
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        for (name, state) in all {
            self.publish_state(&name, state, true);
        }
    }
}

/// Where a session's event lines come from.
enum Lines {
    /// Direct engine: the live stream; its end ends the session.
    Stream(EventStream),
    /// Portainer: a background stream that reconnects on its own.
    Background {
        rx: mpsc::Receiver<String>,
        task: tokio::task::JoinHandle<()>,
    },
}

impl Lines {
    async fn next(&mut self) -> Result<String, SessionError> {
        match self {
            Lines::Stream(s) => match s.next().await {
                Some(Ok(l)) => Ok(l),
                Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                    Err(SessionError::Stream("oversized".into()))
                }
                Some(Err(LinesCodecError::Io(e))) => Err(SessionError::Stream(e.to_string())),
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
async fn background_stream(
    client: Arc<DockerClient>,
    cursor: Arc<AtomicI64>,
    types: Vec<String>,
    tx: mpsc::Sender<String>,
    id: String,
) {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let refs: Vec<&str> = types.iter().map(String::as_str).collect();
    loop {
        backoff.mark_started();
        let since = since_of(cursor.load(Ordering::Relaxed));
        match client.events(since.as_deref(), None, &refs).await {
            Ok((mut s, _)) => {
                while let Some(l) = s.next().await {
                    match l {
                        Ok(l) => {
                            if tx.send(l).await.is_err() {
                                return;
                            }
                        }
                        Err(LinesCodecError::MaxLineLengthExceeded) => {}
                        Err(LinesCodecError::Io(e)) => {
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

fn since_of(nanos: i64) -> Option<String> {
    (nanos > 0).then(|| format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000))
}

async fn tick_opt(i: &mut Option<tokio::time::Interval>) {
    match i {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Engine info is decorative: a malformed or refused answer is logged, not
/// fatal; only a connection failure ends the session.
fn tolerate<T>(what: &str, e: DockerError, id: &str) -> Result<Option<T>, DockerError> {
    match e {
        DockerError::Decode { .. } | DockerError::Status { .. } | DockerError::NotFound => {
            tracing::warn!(endpoint = %id, error = %e, "cannot read engine {what}");
            Ok(None)
        }
        e => Err(e),
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
