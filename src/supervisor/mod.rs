//! The supervisor: one handle per endpoint (rathole's shape). A reload diffs
//! the endpoint map so only what changed restarts; changes to global sections
//! restart what depends on them.

mod router;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::command::{self, Dedup};
use crate::config::{CommandsConfig, Config, ConfigError, EndpointConfig, KeyedDiff};
use crate::docker::DockerClient;
use crate::endpoint::{Endpoint, EndpointCommand, EndpointMeta, EndpointSettings};
use crate::filter::{ContainerFilter, glob_set};
use crate::homeassistant::Discovery;
use crate::mqtt::{self, Inbound, MqttError, MqttHandle, Sweep};
use crate::payloads::{BridgeInfo, now_rfc3339};
use crate::persist::{StateDir, StateDirError};
use crate::portainer::{self, PortainerClient, PortainerEndpoint, SourceUpdate};
use crate::supervise::{self, Liveness};
use crate::topics::Topics;
use crate::watcher::{CheckRequest, Inventory, Watcher};

/// How long a stopping endpoint may take before it is abandoned.
const ENDPOINT_STOP_GRACE: Duration = Duration::from_millis(700);
/// How long the MQTT task may take to flush, publish `offline` and disconnect.
const MQTT_STOP_GRACE: Duration = Duration::from_millis(1200);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error(transparent)]
    Mqtt(#[from] MqttError),
    /// The embedded broker cannot listen: a setting to change (exit 64).
    #[error(transparent)]
    Embedded(#[from] crate::embedded::EmbeddedError),
    /// `http.listen` cannot be bound (exit 64).
    #[error(transparent)]
    Http(#[from] crate::status_server::BindError),
}

/// What an endpoint is: a direct engine or a Portainer environment.
#[derive(Debug, Clone, PartialEq)]
enum EndpointSpec {
    Direct(EndpointConfig),
    Portainer(PortainerEndpoint),
}

struct EndpointHandle {
    spec: EndpointSpec,
    /// The `[portainer.<key>]` it comes from, if any.
    source: Option<String>,
    token: CancellationToken,
    /// The supervised task (restarted on a crash; see `supervise`).
    join: JoinHandle<()>,
    liveness: Liveness,
    commands: mpsc::Sender<EndpointCommand>,
}

/// Commands waiting per endpoint before `busy`.
const ENDPOINT_COMMAND_QUEUE: usize = 64;

enum Outcome {
    Shutdown,
    Restart(Box<Config>),
}

/// Runs dockside until `shutdown` is cancelled. New configs arriving on
/// `reloads` are applied in place (SIGHUP).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<Config>,
) -> Result<(), RunError> {
    let started_at = now_rfc3339();
    let mut config = config;
    // Before anything connects to it; it lives as long as the process.
    let _broker = if config.mqtt.embedded {
        Some(crate::embedded::start(&config.mqtt, &config.homeassistant)?)
    } else {
        None
    };
    let panel = crate::panel::PanelHandle::default();
    if let Some(addr) = config.http.socket_addr()? {
        let auth = crate::panel::auth::Auth::new(&config.http.users).map(Arc::new);
        crate::status_server::start(addr, shutdown.clone(), panel.clone(), auth).await?;
    }
    // `dockside health` asks here; the state dir is checked (exit 73) first.
    StateDir::open(&config.state.dir)?;
    if let Err(e) = crate::health_socket::serve(&config.state.dir, shutdown.clone()) {
        tracing::warn!(error = %e, "no health socket: `dockside health` cannot ask this instance");
    }
    loop {
        match run_instance(&config, &started_at, &shutdown, &mut reloads, &panel).await? {
            Outcome::Shutdown => return Ok(()),
            Outcome::Restart(new) => {
                tracing::info!("MQTT or state settings changed: restarting all tasks");
                config = *new;
            }
        }
    }
}

struct SourceHandle {
    resync: mpsc::Sender<()>,
    token: CancellationToken,
    join: JoinHandle<()>,
    liveness: Liveness,
    /// Has it listed its environments once (its leftovers may be swept)?
    listed: bool,
}

struct Supervisor {
    /// The image watcher's request queue, when update checks are on.
    checks: crate::watcher::CheckQueue,
    watcher: Option<WatcherHandle>,
    state_dir: StateDir,
    inventory: Option<Arc<Inventory>>,
    settings: Arc<EndpointSettings>,
    sources: BTreeMap<String, SourceHandle>,
    commands: CommandsConfig,
    mqtt: MqttHandle,
    endpoints: BTreeMap<String, EndpointHandle>,
    started_at: String,
    dedup: Dedup,
    scope_limits: command::ScopeLimiter,
    /// HA's birth topic, when discovery is on.
    birth_topic: Option<String>,
    /// A birth-triggered republish is waiting for its random delay.
    birth_pending: Arc<std::sync::atomic::AtomicBool>,
    /// (when, events received so far): the last minute, for events per minute.
    events_window: std::collections::VecDeque<(tokio::time::Instant, u64)>,
    ticks: u64,
    /// The bridge info last published (diagnostics go out when they change).
    last_info: Option<Vec<u8>>,
}

fn settings(
    cfg: &Config,
    state_dir: &StateDir,
    inventory: Option<Arc<Inventory>>,
    checks: &crate::watcher::CheckQueue,
) -> Result<EndpointSettings, ConfigError> {
    let own_ids = command::detect_own_container();
    if !own_ids.is_empty() {
        tracing::info!(ids = ?own_ids, "running in a container: it is protected from commands");
    }
    Ok(EndpointSettings {
        protect: glob_set("commands.protect", &cfg.commands.protect)?,
        own_ids,
        min_interval: cfg.commands.min_interval,
        command_timeout: cfg.commands.timeout,
        update_timeout: cfg.commands.update_timeout,
        registry_credentials: Arc::new(crate::watcher::credentials(&cfg.updates)),
        registry: match crate::watcher::registry_client(&cfg.updates) {
            Ok(r) => Some(Arc::new(r)),
            Err(e) => {
                tracing::warn!(error = %e, "no registry client: `update` to a version cannot check its tag");
                None
            }
        },
        verify_for: cfg.updates.verify_for,
        check_timeout: cfg.updates.check_timeout,
        inventory,
        topics: Topics::new(cfg.mqtt.base_topic.clone()),
        filter: ContainerFilter::new(&cfg.containers.include, &cfg.containers.exclude)?,
        event_types: cfg.events.types.clone(),
        removal_grace: cfg.containers.removal_grace,
        reconcile_interval: cfg.containers.reconcile_interval,
        stats: cfg.stats.clone(),
        crashloop_restarts: cfg.containers.crashloop_restarts,
        crashloop_window: cfg.containers.crashloop_window,
        flat_topics: cfg.mqtt.flat_topics,
        state_dir: Some(state_dir.clone()),
        ha: Discovery::from_config(cfg).map(Arc::new),
        commands: cfg.commands.clone(),
        checks: checks.clone(),
    })
}

struct WatcherHandle {
    token: CancellationToken,
    join: JoinHandle<()>,
    checks: mpsc::Sender<CheckRequest>,
}

/// The image watcher, supervised, when `[updates] enabled`.
/// The direct endpoints of a config as the specs their handles keep.
fn direct_specs(endpoints: BTreeMap<String, EndpointConfig>) -> BTreeMap<String, EndpointSpec> {
    endpoints
        .into_iter()
        .map(|(id, c)| (id, EndpointSpec::Direct(c)))
        .collect()
}

fn start_watcher(
    config: &Config,
    mqtt: &MqttHandle,
    inventory: Option<Arc<Inventory>>,
    state_dir: &StateDir,
) -> Option<WatcherHandle> {
    let inv = inventory.filter(|_| config.updates.enabled)?;
    let token = CancellationToken::new();
    let (checks, check_rx) = mpsc::channel::<CheckRequest>(8);
    let (cfg, outbox, dir) = (config.clone(), mqtt.outbox.clone(), state_dir.clone());
    let (token2, resync) = (token.clone(), mqtt.resync_signal());
    let requests = Arc::new(tokio::sync::Mutex::new(check_rx));
    let join = supervise::spawn(
        "image watcher".into(),
        token.clone(),
        Liveness::default(),
        || {},
        move || {
            let w = Watcher::new(&cfg, outbox.clone(), inv.clone(), Some(dir.clone()))
                .map_err(|e| e.to_string())?;
            let (token, resync, requests) = (token2.clone(), resync.clone(), requests.clone());
            Ok(async move {
                let mut requests = requests.lock_owned().await;
                w.run(token, &mut requests, resync).await
            })
        },
    );
    Some(WatcherHandle {
        token,
        join,
        checks,
    })
}

/// Command topics can stop production services: say so when anyone who can
/// reach the broker (or read its traffic) may send them.
fn warn_if_commands_are_open(config: &Config) {
    if !config.commands.enabled {
        return;
    }
    let tls = config.broker_addr().map(|a| a.tls).unwrap_or(false);
    if config.mqtt.username.is_none() {
        tracing::warn!(
            "commands are enabled on an anonymous MQTT connection: anyone who can publish to the broker can stop containers (set mqtt.username and an ACL, or commands.enabled = false)"
        );
    }
    if !tls {
        tracing::warn!(
            "commands are enabled over plain-text MQTT: credentials and commands cross the network unencrypted (use mqtts:// for a broker on another host)"
        );
    }
}

/// A reload whose new pieces cannot be built is refused before anything stops.
fn preflight(new: &Config, current: &Config) -> Result<(), String> {
    let broker = |m: &crate::config::MqttConfig| {
        (
            m.embedded,
            m.embedded_listen.clone(),
            m.embedded_username.clone(),
            m.embedded_password.clone(),
            m.embedded_users.clone(),
            m.embedded_allow_anonymous,
            m.embedded_max_connections_per_ip,
        )
    };
    if broker(&new.mqtt) != broker(&current.mqtt) {
        return Err(
            "the embedded broker's settings (mqtt.embedded*) take effect at the next start, not on reload"
                .into(),
        );
    }
    if new.http != current.http {
        return Err("[http] (listen, users) takes effect at the next start, not on reload".into());
    }
    if new.state.dir != current.state.dir {
        StateDir::open(&new.state.dir).map_err(|e| e.to_string())?;
    }
    mqtt::new(new, Vec::new(), None).map_err(|e| e.to_string())?;
    ContainerFilter::new(&new.containers.include, &new.containers.exclude)
        .map_err(|e| e.to_string())?;
    glob_set("commands.protect", &new.commands.protect).map_err(|e| e.to_string())?;
    Ok(())
}

/// One incarnation of an endpoint task, from its spec.
fn build_endpoint(
    id: &str,
    spec: &EndpointSpec,
    settings: Arc<EndpointSettings>,
    mqtt: MqttHandle,
) -> Result<Endpoint, String> {
    let (meta, client) = match spec {
        EndpointSpec::Direct(cfg) => (
            EndpointMeta {
                name: id.to_string(),
                kind: "docker",
                public_url: None,
                portainer_id: None,
                poll_interval: None,
                portainer_ui: None,
            },
            DockerClient::new(cfg),
        ),
        EndpointSpec::Portainer(p) => {
            let auth: Arc<dyn crate::docker::client::RequestAuth> = p.client.auth.clone();
            (
                EndpointMeta {
                    name: p.name.clone(),
                    kind: "portainer",
                    public_url: p.public_url.clone(),
                    portainer_id: Some(p.env_id),
                    poll_interval: Some(p.poll_interval),
                    portainer_ui: Some(p.client.base.as_str().trim_end_matches('/').to_string()),
                },
                DockerClient::shared(
                    p.client.http.clone(),
                    &p.client.docker_base(p.env_id),
                    Some(auth),
                ),
            )
        }
    };
    let client = client.map_err(|e| e.to_string())?;
    let mut ep = Endpoint::new(id.to_string(), meta, client, settings, mqtt);
    if let EndpointSpec::Portainer(p) = spec {
        ep = ep.with_portainer(p.client.clone(), p.env_id);
    }
    Ok(ep)
}

/// The MQTT task as `run_instance` holds it: stopped last, after every endpoint.
struct MqttRun {
    token: CancellationToken,
    join: tokio::task::JoinHandle<()>,
    live: Liveness,
}

/// Starts the MQTT task (its own supervised task: its last will tells the
/// broker we are gone while it restarts); commands arrive on the receiver.
type Started = (
    MqttRun,
    MqttHandle,
    mpsc::Receiver<Inbound>,
    mpsc::Sender<Inbound>,
);

fn start_mqtt(config: &Config, topics: &Topics) -> Result<Started, RunError> {
    let (inbound_tx, inbound) = mpsc::channel::<Inbound>(256);
    let panel_tx = inbound_tx.clone();
    let mut subscriptions = topics.command_filters().to_vec();
    if config.homeassistant.enabled {
        subscriptions.push(config.homeassistant.birth_topic());
    }
    let (mqtt_task, mqtt) = mqtt::new(config, subscriptions, Some(inbound_tx))?;
    let token = CancellationToken::new();
    let live = Liveness::default();
    let join = {
        let token = token.clone();
        supervise::spawn(
            "mqtt".into(),
            token.clone(),
            live.clone(),
            || {},
            move || Ok(mqtt_task.clone().run(token.clone())),
        )
    };
    Ok((MqttRun { token, join, live }, mqtt, inbound, panel_tx))
}

impl Supervisor {
    fn new(
        config: &Config,
        started_at: &str,
        mqtt: &MqttHandle,
        state_dir: &StateDir,
    ) -> Result<Self, RunError> {
        // Always there (endpoints feed it), so `[updates]` can be switched on by a reload.
        let inventory = Some(Arc::new(Inventory::with_state(Some(state_dir))));
        let watcher = start_watcher(config, mqtt, inventory.clone(), state_dir);
        let checks: crate::watcher::CheckQueue = Arc::new(std::sync::RwLock::new(
            watcher.as_ref().map(|w| w.checks.clone()),
        ));
        Ok(Supervisor {
            checks: checks.clone(),
            watcher,
            state_dir: state_dir.clone(),
            inventory: inventory.clone(),
            sources: BTreeMap::new(),
            settings: Arc::new(settings(config, state_dir, inventory, &checks)?),
            commands: config.commands.clone(),
            mqtt: mqtt.clone(),
            endpoints: BTreeMap::new(),
            started_at: started_at.to_string(),
            dedup: Dedup::default(),
            scope_limits: command::ScopeLimiter::default(),
            birth_topic: config
                .homeassistant
                .enabled
                .then(|| config.homeassistant.birth_topic()),
            birth_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            events_window: std::collections::VecDeque::new(),
            ticks: 0,
            last_info: None,
        })
    }

    /// Publishes the bridge, starts every endpoint and Portainer source, and
    /// queues the sweep of leftovers from an earlier run.
    fn start_all(&mut self, config: &Config, source_tx: &mpsc::Sender<SourceUpdate>) {
        // Parents before children: the bridge device goes out before any endpoint's.
        self.publish_bridge_device();
        if !config.homeassistant.enabled {
            self.mqtt.outbox.sweep(Sweep::Discovery);
        }
        for (id, cfg) in config.effective_endpoints() {
            self.start(id, EndpointSpec::Direct(cfg), None, false);
        }
        for (key, pcfg) in &config.portainer {
            self.start_source(key, pcfg, source_tx.clone());
        }
        self.publish_info();
        // Leftovers of Portainer environments are swept once their source has listed them.
        self.mqtt.outbox.sweep(Sweep::Endpoints {
            keep: self.endpoints.keys().cloned().collect(),
            keep_prefixes: config.portainer.keys().map(|k| format!("{k}-")).collect(),
        });
    }

    /// READY=1 once the states are on the broker (SPEC §11), or at
    /// `ready_by` anyway; returns whether it was sent.
    fn notify_ready_if_settled(
        &self,
        mqtt_live: &Liveness,
        ready_by: tokio::time::Instant,
    ) -> bool {
        let settled = self.settled();
        if !settled && tokio::time::Instant::now() < ready_by {
            return false;
        }
        // What `dockside health` says right after READY is current, not the
        // verdict of a tick taken before the tasks ran.
        crate::metrics::get().set_health(self.health(mqtt_live));
        let status = if settled {
            format!("mirroring {} endpoint(s)", self.endpoints.len())
        } else {
            tracing::warn!("ready without a broker or an engine answering: still retrying");
            "started; waiting for the broker or an engine (see the log)".to_string()
        };
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        true
    }

    fn on_health_tick(&mut self, mqtt_live: &Liveness, watchdog: bool) {
        let health = self.health(mqtt_live);
        // The watchdog is fed only while our own tasks run (a broker outage
        // is not a reason for systemd to kill us).
        if watchdog && self.tasks_alive(mqtt_live) {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
        crate::metrics::get().set_health(health);
        if self.diagnostics_due() {
            self.publish_info();
        }
    }

    /// A new configuration: applied in place, or `Some(Restart)` when the
    /// MQTT connection, topics or state directory change. `current` follows.
    async fn on_reload(
        &mut self,
        new: Config,
        current: &mut Config,
        source_tx: &mpsc::Sender<SourceUpdate>,
    ) -> Option<Outcome> {
        let _ = sd_notify::notify(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::monotonic_usec_now()
                .unwrap_or(sd_notify::NotifyState::Status("reloading")),
        ]);
        if let Err(e) = preflight(&new, current) {
            tracing::error!(error = %e, "reload refused: keeping the running configuration");
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
            return None;
        }
        let d = current.diff(&new);
        tracing::info!(diff = ?d, "applying the new configuration");
        if d.restart_all {
            return Some(Outcome::Restart(Box::new(new)));
        }
        if d.log {
            tracing::warn!("log settings take effect at the next start");
        }
        self.reload(&new, &d, source_tx).await;
        *current = new;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        tracing::info!(endpoints = self.endpoints.len(), "configuration reloaded");
        None
    }

    /// The router is synchronous and runs in the supervisor's loop: a panic
    /// on one message (a bug, never the input's fault) is logged and
    /// counted, and the next message is routed as usual.
    fn route_guarded(&mut self, msg: Inbound) {
        let topic = msg.topic.clone();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.route(msg))).is_err() {
            supervise::count_restart();
            tracing::error!(task = "command router", %topic, "the router panicked on a message; it goes on with the next one");
        }
    }

    /// Stops everything, the MQTT task last (it publishes `offline`).
    async fn shut_down(mut self, mqtt: MqttRun) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        if let Some(w) = self.watcher.take() {
            w.token.cancel();
        }
        for s in self.sources.values() {
            s.token.cancel();
        }
        self.stop_all().await;
        supervise::stop("mqtt", &mqtt.token, mqtt.join, MQTT_STOP_GRACE).await;
    }
}

/// One run with one MQTT connection: set up, then the loop, until shutdown
/// or a reload that needs a new connection.
async fn run_instance(
    config: &Config,
    started_at: &str,
    shutdown: &CancellationToken,
    reloads: &mut mpsc::Receiver<Config>,
    panel: &crate::panel::PanelHandle,
) -> Result<Outcome, RunError> {
    let state_dir = StateDir::open(&config.state.dir)?;
    warn_if_commands_are_open(config);
    let topics = Topics::new(config.mqtt.base_topic.clone());
    let (mqtt_run, mqtt, mut inbound, panel_tx) = start_mqtt(config, &topics)?;
    panel.set(mqtt.outbox.clone(), panel_tx, &config.commands);
    let mut sup = Supervisor::new(config, started_at, &mqtt, &state_dir)?;
    let (source_tx, mut source_rx) = mpsc::channel::<SourceUpdate>(16);
    sup.start_all(config, &source_tx);
    let mut ready = false;
    let ready_by = tokio::time::Instant::now() + READY_AT_MOST;
    let mut ready_tick = tokio::time::interval(Duration::from_millis(50));
    let watchdog = sd_notify::watchdog_enabled().is_some();
    let mut current = config.clone();
    let mut resync = mqtt.resync_signal();
    let mut health_tick = tokio::time::interval(HEALTH_EVERY);
    let outcome = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Outcome::Shutdown,
            _ = ready_tick.tick(), if !ready => {
                ready = sup.notify_ready_if_settled(&mqtt_run.live, ready_by);
            }
            _ = health_tick.tick() => sup.on_health_tick(&mqtt_run.live, watchdog),
            Some(new) = reloads.recv() => {
                if let Some(o) = sup.on_reload(new, &mut current, &source_tx).await {
                    break o;
                }
                panel.set_commands(&current.commands);
            }
            Ok(()) = resync.changed() => {
                sup.publish_bridge_device();
                sup.last_info = None; // the broker may have lost it
                sup.publish_info();
            }
            Some(msg) = inbound.recv() => sup.route_guarded(msg),
            Some(update) = source_rx.recv() => sup.apply_source(update).await,
        }
    };
    sup.shut_down(mqtt_run).await;
    Ok(outcome)
}

/// systemd gets READY=1 by then even if the broker or an engine does not
/// answer (it would kill a unit that never gets ready; dockside retries).
const READY_AT_MOST: Duration = Duration::from_secs(30);
/// How often the health verdict (`/healthz`, `dockside health`) is renewed.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// The bridge's diagnostics on `<base>/info`: every this many health ticks.
const DIAGNOSTICS_EVERY: u64 = 5;

impl Supervisor {
    /// Healthy: connected to the broker, and the MQTT loop and every endpoint
    /// task alive (an unreachable engine is reported, not a fault of ours).
    fn health(&self, mqtt_live: &Liveness) -> crate::metrics::Health {
        use crate::metrics::Health;
        if !mqtt_live.is_alive() {
            return Health::Unhealthy("the MQTT task is restarting".into());
        }
        if crate::metrics::get().mqtt_connected.get() != 1 {
            return Health::Unhealthy("not connected to the MQTT broker".into());
        }
        let down: Vec<&str> = self
            .endpoints
            .iter()
            .filter(|(_, h)| !h.liveness.is_alive())
            .map(|(id, _)| id.as_str())
            .collect();
        if !down.is_empty() {
            return Health::Unhealthy(format!("endpoint task restarting: {}", down.join(", ")));
        }
        let m = crate::metrics::get();
        let unreachable: Vec<&str> = self
            .endpoints
            .keys()
            .filter(|ep| {
                m.endpoint_up
                    .get(&crate::metrics::Metrics::endpoint(ep))
                    .is_some_and(|g| g.get() == 0)
            })
            .map(String::as_str)
            .collect();
        if unreachable.is_empty() {
            Health::Ok
        } else {
            Health::OkBut(format!(
                "engine unreachable (see the log): {}",
                unreachable.join(", ")
            ))
        }
    }

    /// The broker is connected, every endpoint has synced or failed once,
    /// and what they had to say has left the outbox.
    fn settled(&self) -> bool {
        let m = crate::metrics::get();
        m.mqtt_connected.get() == 1
            && m.outbox_depth.get() == 0
            && self.endpoints.keys().all(|ep| {
                m.endpoint_up
                    .get(&crate::metrics::Metrics::endpoint(ep))
                    .is_some()
            })
    }

    /// The MQTT loop and every endpoint task run (not waiting for a restart).
    fn tasks_alive(&self, mqtt_live: &Liveness) -> bool {
        mqtt_live.is_alive() && self.endpoints.values().all(|h| h.liveness.is_alive())
    }

    fn start(&mut self, id: String, spec: EndpointSpec, source: Option<String>, restarted: bool) {
        let token = CancellationToken::new();
        let (commands, cmd_rx) = mpsc::channel(ENDPOINT_COMMAND_QUEUE);
        let cmd_rx = Arc::new(tokio::sync::Mutex::new(cmd_rx));
        let liveness = Liveness::default();
        let (settings, mqtt) = (self.settings.clone(), self.mqtt.clone());
        let (spec2, id2, token2) = (spec.clone(), id.clone(), token.clone());
        let mut restarted = restarted;
        // Each incarnation is built afresh: a set-up failure (a bad certificate
        // file) is retried like a crash, and a crash starts from a clean table.
        let make = move || {
            let mut ep = build_endpoint(&id2, &spec2, settings.clone(), mqtt.clone())?;
            if restarted {
                ep = ep.restarted();
            }
            restarted = true;
            let (token, rx) = (token2.clone(), cmd_rx.clone());
            Ok(async move {
                let mut rx = rx.lock_owned().await;
                ep.run(token, &mut rx).await
            })
        };
        let (outbox, status) = (
            self.mqtt.outbox.clone(),
            self.settings.topics.endpoint_status(&id),
        );
        let join = supervise::spawn(
            format!("endpoint {id}"),
            token.clone(),
            liveness.clone(),
            move || outbox.retain(status.clone(), "offline"),
            make,
        );
        self.endpoints.insert(
            id,
            EndpointHandle {
                spec,
                source,
                token,
                join,
                liveness,
                commands,
            },
        );
    }

    async fn stop(&mut self, id: &str) {
        if let Some(h) = self.endpoints.remove(id) {
            supervise::stop(
                &format!("endpoint {id}"),
                &h.token,
                h.join,
                ENDPOINT_STOP_GRACE,
            )
            .await;
        }
    }

    async fn stop_all(&mut self) {
        let handles: Vec<_> = std::mem::take(&mut self.endpoints).into_iter().collect();
        futures_util::future::join_all(handles.into_iter().map(|(id, h)| async move {
            supervise::stop(
                &format!("endpoint {id}"),
                &h.token,
                h.join,
                ENDPOINT_STOP_GRACE,
            )
            .await
        }))
        .await;
    }

    /// Applies a reload that keeps the MQTT connection: only what `d` names restarts.
    async fn reload(
        &mut self,
        new: &Config,
        d: &crate::config::ConfigDiff,
        source_tx: &mpsc::Sender<SourceUpdate>,
    ) {
        self.commands = new.commands.clone();
        if d.endpoint_settings || d.updates {
            match settings(new, &self.state_dir, self.inventory.clone(), &self.checks) {
                Ok(s) => self.settings = Arc::new(s),
                Err(e) => tracing::error!(error = %e, "cannot apply the new settings"),
            }
        }
        if d.updates {
            if let Some(w) = self.watcher.take() {
                supervise::stop("image watcher", &w.token, w.join, ENDPOINT_STOP_GRACE).await;
            }
            self.watcher = start_watcher(new, &self.mqtt, self.inventory.clone(), &self.state_dir);
            *self.checks.write().unwrap_or_else(|e| e.into_inner()) =
                self.watcher.as_ref().map(|w| w.checks.clone());
            tracing::info!("image watcher restarted with the new [updates] settings");
        }
        for key in d.portainer.removed.iter().chain(&d.portainer.changed) {
            if let Some(h) = self.sources.remove(key) {
                supervise::stop(
                    &format!("portainer source {key}"),
                    &h.token,
                    h.join,
                    ENDPOINT_STOP_GRACE,
                )
                .await;
            }
        }
        for key in &d.portainer.removed {
            // Its environments go, with their topics.
            self.apply_set(Some(key), BTreeMap::new(), false).await;
            tracing::info!(source = %key, "Portainer source removed");
        }
        for key in d.portainer.added.iter().chain(&d.portainer.changed) {
            if let Some(pcfg) = new.portainer.get(key) {
                // A changed source's environments are diffed when it lists them.
                self.start_source(key, pcfg, source_tx.clone());
            }
        }
        // The direct endpoints: exactly what the diff names (all of them
        // when their shared settings changed).
        let wanted = direct_specs(new.effective_endpoints());
        let mut changes = d.endpoints.clone();
        if d.endpoint_settings {
            let current = self.specs_of(None);
            changes = changes.all_kept_changed(&current, &wanted);
        }
        self.apply_changes(None, &changes, &wanted).await;
        if d.endpoint_settings {
            // Portainer environments depend on the same settings.
            let ids: Vec<String> = self
                .endpoints
                .iter()
                .filter(|(_, h)| h.source.is_some())
                .map(|(id, _)| id.clone())
                .collect();
            for id in ids {
                if let Some(h) = self.endpoints.get(&id) {
                    let (spec, source) = (h.spec.clone(), h.source.clone());
                    self.stop(&id).await;
                    self.start(id, spec, source, true);
                }
            }
        }
        self.retry_failed_now();
    }

    /// A SIGHUP retries at once whatever is waiting to be set up again.
    fn retry_failed_now(&self) {
        for h in self.endpoints.values() {
            if !h.liveness.is_alive() {
                h.liveness.retry_now.notify_one();
            }
        }
        for s in self.sources.values() {
            if !s.liveness.is_alive() {
                s.liveness.retry_now.notify_one();
            }
        }
    }

    /// The endpoints that come from `source` (None = direct), with their specs.
    fn specs_of(&self, source: Option<&str>) -> BTreeMap<String, EndpointSpec> {
        self.endpoints
            .iter()
            .filter(|(_, h)| h.source.as_deref() == source)
            .map(|(id, h)| (id.clone(), h.spec.clone()))
            .collect()
    }

    /// Brings the endpoints that come from `source` (None = direct) to `wanted`.
    async fn apply_set(
        &mut self,
        source: Option<&str>,
        wanted: BTreeMap<String, EndpointSpec>,
        restart_all: bool,
    ) {
        let current = self.specs_of(source);
        let mut changes = KeyedDiff::between(&current, &wanted);
        if restart_all {
            changes = changes.all_kept_changed(&current, &wanted);
        }
        self.apply_changes(source, &changes, &wanted).await;
    }

    /// Whether endpoint `id` runs and comes from `source` (None = direct).
    fn owns(&self, source: Option<&str>, id: &str) -> bool {
        self.endpoints
            .get(id)
            .is_some_and(|h| h.source.as_deref() == source)
    }

    /// Applies a computed diff to the endpoints of `source`: removed ones stop
    /// and lose their topics, changed ones restart, added ones start.
    async fn apply_changes(
        &mut self,
        source: Option<&str>,
        changes: &KeyedDiff,
        wanted: &BTreeMap<String, EndpointSpec>,
    ) {
        for id in &changes.removed {
            if !self.owns(source, id) {
                continue;
            }
            self.stop(id).await;
            let prefix = self.settings.topics.endpoint_prefix(id);
            let outbox = self.mqtt.outbox.clone();
            match &self.inventory {
                Some(inv) => inv.remove_endpoint_then(id, || outbox.clear_prefix(&prefix)),
                None => outbox.clear_prefix(&prefix),
            }
            if let Some(dir) = &self.settings.state_dir {
                dir.remove_cursor(id);
            }
            tracing::info!(endpoint = %id, "endpoint removed");
        }
        for id in &changes.changed {
            let Some(spec) = wanted.get(id) else { continue };
            if !self.owns(source, id) {
                continue;
            }
            self.stop(id).await;
            self.start(id.clone(), spec.clone(), source.map(String::from), true);
            tracing::info!(endpoint = %id, "endpoint restarted with its new settings");
        }
        for id in &changes.added {
            let Some(spec) = wanted.get(id) else { continue };
            if let Some(h) = self.endpoints.get(id) {
                tracing::error!(endpoint = %id, owner = ?h.source, "endpoint id already in use: skipping this one");
                continue;
            }
            tracing::info!(endpoint = %id, "endpoint added");
            self.start(id.clone(), spec.clone(), source.map(String::from), false);
        }
        self.publish_info();
    }

    fn start_source(
        &mut self,
        key: &str,
        cfg: &crate::config::PortainerConfig,
        tx: mpsc::Sender<SourceUpdate>,
    ) {
        let (resync, resync_rx) = mpsc::channel(1);
        let resync_rx = Arc::new(tokio::sync::Mutex::new(resync_rx));
        let token = CancellationToken::new();
        let liveness = Liveness::default();
        let (key2, cfg2, token2) = (key.to_string(), cfg.clone(), token.clone());
        let join = supervise::spawn(
            format!("portainer source {key}"),
            token.clone(),
            liveness.clone(),
            || {},
            move || {
                let client = Arc::new(PortainerClient::new(&cfg2).map_err(|e| e.to_string())?);
                let (key, cfg, tx, token, rx) = (
                    key2.clone(),
                    cfg2.clone(),
                    tx.clone(),
                    token2.clone(),
                    resync_rx.clone(),
                );
                Ok(async move {
                    let mut rx = rx.lock_owned().await;
                    portainer::run_source(key, cfg, client, tx, &mut rx, token).await
                })
            },
        );
        self.sources.insert(
            key.to_string(),
            SourceHandle {
                resync,
                token,
                join,
                liveness,
                listed: false,
            },
        );
    }

    async fn apply_source(&mut self, update: SourceUpdate) {
        let key = update.source.clone();
        let wanted: BTreeMap<String, EndpointSpec> = update
            .endpoints
            .into_iter()
            .map(|(id, e)| (id, EndpointSpec::Portainer(e)))
            .collect();
        let keep: HashSet<String> = wanted.keys().cloned().collect();
        self.apply_set(Some(&key), wanted, false).await;
        if let Some(s) = self.sources.get_mut(&key)
            && !s.listed
        {
            s.listed = true;
            self.mqtt.outbox.sweep(Sweep::Prefixed {
                prefix: format!("{key}-"),
                keep,
            });
        }
    }

    fn publish_info(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        let topics = &self.settings.topics;
        let m = crate::metrics::get();
        let events_per_minute = self
            .events_window
            .front()
            .map(|(_, first)| m.events_total.load(Relaxed).saturating_sub(*first))
            .unwrap_or(0);
        let info = BridgeInfo {
            version: env!("CARGO_PKG_VERSION"),
            started_at: self.started_at.clone(),
            endpoints: self.endpoints.keys().cloned().collect(),
            endpoints_connected: self
                .endpoints
                .keys()
                .filter(|ep| {
                    m.endpoint_up
                        .get(&crate::metrics::Metrics::endpoint(ep))
                        .is_some_and(|g| g.get() == 1)
                })
                .count(),
            events_per_minute,
            outbox_depth: m.outbox_depth.get(),
            broker_reconnects: m.reconnects_total.load(Relaxed),
            problems: self.sum_over_endpoints(&m.containers_problem).unwrap_or(0),
            updates_available: self.sum_over_endpoints(&m.updates_available),
        };
        match serde_json::to_vec(&info) {
            Ok(p) if self.last_info.as_deref() != Some(&p[..]) => {
                self.mqtt.outbox.retain(topics.bridge_info(), p.clone());
                self.last_info = Some(p);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot encode bridge info"),
        }
    }

    /// A per-endpoint gauge summed over the endpoints running now; `None`
    /// when none of them set it.
    fn sum_over_endpoints(
        &self,
        family: &prometheus_client::metrics::family::Family<
            crate::metrics::EndpointLabel,
            prometheus_client::metrics::gauge::Gauge,
        >,
    ) -> Option<i64> {
        self.endpoints
            .keys()
            .filter_map(|ep| {
                family
                    .get(&crate::metrics::Metrics::endpoint(ep))
                    .map(|g| g.get())
            })
            .reduce(|a, b| a + b)
    }

    /// Samples the event count every second (a minute kept) and says when the
    /// bridge's diagnostics are due (every 5 s; sent only when they changed).
    fn diagnostics_due(&mut self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = tokio::time::Instant::now();
        self.events_window
            .push_back((now, crate::metrics::get().events_total.load(Relaxed)));
        while self
            .events_window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.events_window.pop_front();
        }
        self.ticks += 1;
        self.ticks.is_multiple_of(DIAGNOSTICS_EVERY)
    }

    fn publish_bridge_device(&self) {
        if let Some(ha) = &self.settings.ha {
            let owner = self.settings.topics.bridge_owner();
            self.mqtt
                .outbox
                .retain_owned(&owner, ha.messages(&ha.bridge()));
        }
    }
}
