//! One task per Docker engine: initial sync (list + inspect) → `/events` stream
//! resumed with `since` → periodic reconcile. It owns the endpoint's container
//! state (keyed by name, never by ID) and hands retained state and events to
//! the MQTT outbox; it never waits on MQTT.
//!
//! Here: the task's state, its run loop with backoff, and how events change
//! the container table. `session` talks to the engine, `inspects` is the
//! inspect queue, `transitions` the pure event → state rules, `publish` what
//! goes to MQTT, `commands` the commands it runs.

mod commands;
mod cursor;
mod disk;
mod finished;
mod inspects;
mod publish;
mod session;
mod stacks;
mod stats;
mod table;
pub(crate) mod transitions;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use globset::GlobSet;
use tokio::sync::mpsc;

use futures_util::{StreamExt, stream};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::clock::sleep_until_opt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
pub use commands::EndpointCommand;

use crate::docker::models::{ContainerInspect, Event};
use crate::docker::{DockerClient, DockerError, EventItem, EventStream};
use crate::filter::ContainerFilter;
use crate::homeassistant::{ContainerFacts, Discovery, EndpointFacts};
use crate::mqtt::{MqttHandle, Outbox, Sweep};
use crate::payloads::{
    ContainerCounts, ContainerState, EndpointInfo, EventMessage, container_event_payload,
};
use crate::persist::StateDir;
use crate::topics::Topics;

use inspects::{INSPECT_CONCURRENCY, InspectQueue};
use table::{ContainerTable, Effect};
/// Coalesces endpoint-info recomputation during bursts.
const INFO_DEBOUNCE: Duration = Duration::from_millis(200);
/// Image/volume counts are re-read at most this often after such events.
const FACTS_DEBOUNCE: Duration = Duration::from_secs(2);
use cursor::{CURSOR_SAVE_EVERY, CursorKeeper};

/// Settings every endpoint task shares (from the config's global sections).
#[derive(Debug)]
pub struct EndpointSettings {
    pub topics: Topics,
    pub filter: ContainerFilter,
    pub event_types: Vec<String>,
    pub removal_grace: Duration,
    pub reconcile_interval: Duration,
    /// `[stats]` (SPEC §13).
    pub stats: crate::config::StatsConfig,
    /// `containers.crashloop_*` (SPEC §13 problem flag).
    pub crashloop_restarts: u32,
    pub crashloop_window: Duration,
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
    /// For `update` to a version: the tag is checked in the registry first.
    pub registry: Option<Arc<crate::registry::RegistryClient>>,
    /// `updates.verify_for`: how long a recreated container must prove itself.
    pub verify_for: Duration,
    /// `updates.check_timeout`: the bound of a pre-update check.
    pub check_timeout: Duration,
    /// Where the image watcher learns which containers run which image.
    pub inventory: Option<Arc<crate::watcher::Inventory>>,
    /// Home Assistant discovery, when on.
    pub ha: Option<Arc<Discovery>>,
    /// The command policy's settings (`command::Policy`).
    pub commands: crate::config::CommandsConfig,
    /// Where `check` goes: the image watcher's queue, while it runs.
    pub checks: crate::watcher::CheckQueue,
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
    services: Option<i64>,
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
    /// The containers as last published, and what events told of them.
    table: ContainerTable,
    /// The last event seen, and when it is written to `state.dir`.
    cursor: CursorKeeper,
    /// Inspects: single-flight per container, bounded, retried.
    inspects: InspectQueue,
    facts: Facts,
    online: Option<bool>,
    /// Why the engine is unreachable, shown in `<ep>/info` until it is back.
    offline_reason: Option<String>,
    last_info: Option<EndpointInfo>,
    info_due: Option<Instant>,
    facts_due: Option<Instant>,
    swept: bool,
    /// Restarted within this run: sweep every known topic, not only leftovers.
    restarted: bool,
    /// Commands running and waiting, one at a time per container.
    runner: commands::CommandRunner,
    /// `GET /system/df`, off the task (SPEC §13).
    disk: disk::DiskPoller,
    /// Container stats (SPEC §13).
    stats: stats::StatsState,
    /// Compose and Portainer stacks (SPEC §13).
    stacks: stacks::StacksState,
    /// Update history per container (SPEC §14).
    history: crate::history::History,
    /// Restart times, for the crash-loop rule of the problem flag.
    crashloops: crate::problem::Crashloops,
    /// What each container's discovery config was last built from.
    ha_containers: HashMap<String, ContainerFacts>,
    ha_endpoint: Option<EndpointFacts>,
    /// Portainer environments: the client and environment id, for Portainer's recreate.
    portainer: Option<(Arc<crate::portainer::PortainerClient>, i64)>,
    /// Woken when the image watcher has news for this endpoint (an
    /// automatic update due, versions or counts changed).
    watcher_news: Arc<tokio::sync::Notify>,
}

impl Endpoint {
    pub fn new(
        id: String,
        meta: EndpointMeta,
        client: DockerClient,
        settings: Arc<EndpointSettings>,
        mqtt: MqttHandle,
    ) -> Self {
        let cursor = CursorKeeper::load(settings.state_dir.as_ref(), &id);
        let history = crate::history::History::load(settings.state_dir.clone(), &id);
        let watcher_news = settings
            .inventory
            .as_ref()
            .map(|inv| inv.news(&id))
            .unwrap_or_default();
        let crashloops = crate::problem::Crashloops::load(
            settings.state_dir.as_ref(),
            &id,
            settings.crashloop_window,
            settings.crashloop_restarts as usize,
        );
        Self {
            id,
            meta,
            outbox: mqtt.outbox.clone(),
            mqtt,
            settings,
            client: Arc::new(client),
            table: ContainerTable::default(),
            cursor,
            inspects: InspectQueue::default(),
            facts: Facts::default(),
            online: None,
            offline_reason: None,
            last_info: None,
            info_due: None,
            facts_due: None,
            swept: false,
            restarted: false,
            runner: commands::CommandRunner::default(),
            disk: disk::DiskPoller::default(),
            stats: Default::default(),
            stacks: Default::default(),
            history,
            crashloops,
            ha_containers: HashMap::new(),
            ha_endpoint: None,
            portainer: None,
            watcher_news,
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
            self.offline_reason = Some(err.to_string());
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

    /// One item of the event stream (decoded by the Docker client).
    fn on_item(&mut self, item: EventItem) {
        match item {
            EventItem::Event(ev) => self.on_event(ev),
            EventItem::Malformed(e) => {
                tracing::warn!(endpoint = %self.id, error = %e, "skipping a malformed event")
            }
            EventItem::Oversized => {
                tracing::warn!(endpoint = %self.id, "skipping an oversized event line")
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        let nanos = ev.nanos();
        if !self.cursor.accept(nanos, &ev.actor.id, &ev.action) {
            return; // replayed duplicate
        }
        let m = crate::metrics::get();
        let label = crate::metrics::Metrics::endpoint(&self.id);
        m.events_received.get_or_create(&label).inc();
        m.last_event
            .get_or_create(&label)
            .set(nanos / 1_000_000_000);
        m.events_total.fetch_add(1, Ordering::Relaxed);
        let is_container = ev.kind == "container";
        let visible = if is_container {
            let filter = &self.settings.filter;
            self.table.visible(&ev, |n| filter.allows_name(n))
        } else {
            // Network (dis)connects name a container: hide those of filtered-out ones.
            ev.actor
                .attributes
                .get("container")
                .is_none_or(|id| self.table.names.contains_key(id))
        };
        if visible && self.settings.event_types.contains(&ev.kind) {
            match serde_json::to_vec(&EventMessage::from_event(&ev)) {
                Ok(p) => {
                    m.events_published
                        .get_or_create(&crate::metrics::Metrics::endpoint(&self.id))
                        .inc();
                    self.outbox
                        .send(self.settings.topics.endpoint_events(&self.id), p)
                }
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

    fn on_container_event(&mut self, ev: &Event) {
        crate::supervise::maybe_test_panic(ev.name());
        self.publish_container_event(ev);
        let filter = &self.settings.filter;
        let effects = self.table.apply(ev, |n| filter.allows_name(n));
        self.carry_out(effects);
    }

    /// The event on the container's own events topic (SPEC §4).
    fn publish_container_event(&self, ev: &Event) {
        let name = ev
            .name()
            .map(String::from)
            .or_else(|| self.table.names.get(&ev.actor.id).cloned());
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
    }
}
