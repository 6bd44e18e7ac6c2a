//! Configuration (SPEC §8): a TOML file, `DOCKSIDE__SECTION__KEY` environment
//! overrides, humantime durations, `*_file` secrets, validation errors that
//! name the key. `check-config` prints `Config::redacted_toml()`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const DEFAULT_PATH: &str = "/etc/dockside/dockside.toml";
pub const DEFAULT_SOCKET: &str = "unix:///var/run/docker.sock";
const REDACTED: &str = "<redacted>";

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "events.types",
    "containers.include",
    "containers.exclude",
    "commands.allow",
    "commands.protect",
];

/// Event types Docker reports that dockside can forward.
pub const EVENT_TYPES: &[&str] = &[
    "container",
    "image",
    "network",
    "volume",
    "daemon",
    "plugin",
    "service",
    "node",
    "secret",
    "config",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Parse(String),
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// `{:?}` of a type holding secrets prints its redacted JSON: a secret never
/// reaches a log line, whoever formats it.
macro_rules! redacted_debug {
    ($t:ty, $($field:ident),+) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut c = self.clone();
                $( if c.$field.is_some() { c.$field = Some(REDACTED.to_string()); } )+
                let json = serde_json::to_string(&c).map_err(|_| std::fmt::Error)?;
                write!(f, "{} {json}", stringify!($t))
            }
        }
    };
}
impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(&self.redacted()).map_err(|_| std::fmt::Error)?;
        write!(f, "MqttConfig {json}")
    }
}
redacted_debug!(PortainerConfig, api_key, password);
redacted_debug!(RegistryCredentials, password);

impl From<crate::filter::FilterError> for ConfigError {
    fn from(e: crate::filter::FilterError) -> Self {
        invalid(e.key, e.message)
    }
}

/// What a reload changes (`Config::diff`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigDiff {
    /// `[mqtt]`, `[homeassistant]` or `[state]`: every task restarts in-process
    /// (new connection, topics or state directory), once the new pieces are built.
    pub restart_all: bool,
    /// `[containers]`, `[events]` or `[commands]`: every endpoint restarts.
    pub endpoint_settings: bool,
    /// `[updates]`: the image watcher restarts; nothing else does.
    pub updates: bool,
    /// Direct endpoints (`[endpoints.*]`, the default local one).
    pub endpoints: KeyedDiff,
    /// Portainer sources (`[portainer.*]`).
    pub portainer: KeyedDiff,
    /// `[log]`: takes effect at the next start.
    pub log: bool,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

/// Keys added, removed and changed from one map to another, as data: what a
/// reload or a Portainer listing does to a set of endpoints or sources is
/// computed here, then applied by the supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyedDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl KeyedDiff {
    pub fn between<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Self {
        KeyedDiff {
            added: b.keys().filter(|k| !a.contains_key(*k)).cloned().collect(),
            removed: a.keys().filter(|k| !b.contains_key(*k)).cloned().collect(),
            changed: a
                .iter()
                .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
                .map(|(k, _)| k.clone())
                .collect(),
        }
    }

    /// The same, with every key kept from `a` to `b` counted as changed
    /// (settings they all share changed).
    pub fn all_kept_changed<V>(mut self, a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Self {
        self.changed = a.keys().filter(|k| b.contains_key(*k)).cloned().collect();
        self
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mqtt: MqttConfig,
    pub homeassistant: HomeAssistantConfig,
    pub endpoints: BTreeMap<String, EndpointConfig>,
    pub portainer: BTreeMap<String, PortainerConfig>,
    pub containers: ContainersConfig,
    pub events: EventsConfig,
    pub commands: CommandsConfig,
    pub updates: UpdatesConfig,
    pub stats: StatsConfig,
    pub state: StateConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    /// `DOCKER_HOST` from the environment: the `local` endpoint's address when
    /// no endpoint is configured, as the docker CLI does (rootless engines,
    /// a second engine).
    #[serde(skip)]
    pub docker_host: Option<String>,
}

/// `/healthz`, `/metrics` and the panel (SPEC §12, §18); off unless
/// `listen` is set.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `127.0.0.1:9847`; anything but loopback exposes the metrics to the network.
    pub listen: Option<String>,
    /// `[[http.users]]`: who may sign in to the panel, `read` or `control`
    /// (its buttons). None: the panel is open and read-only.
    pub users: Vec<EmbeddedUser>,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(&self.redacted()).map_err(|_| std::fmt::Error)?;
        write!(f, "HttpConfig {json}")
    }
}

impl HttpConfig {
    /// A copy with every password replaced (Debug, check-config).
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for u in &mut c.users {
            if u.password.is_some() {
                u.password = Some(REDACTED.into());
            }
        }
        c
    }
}

impl HttpConfig {
    pub fn socket_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.listen
            .as_deref()
            .map(|l| {
                l.trim()
                    .parse()
                    .map_err(|e| invalid("http.listen", format!("`{l}`: {e} (want ip:port)")))
            })
            .transpose()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://host:1883` or `mqtts://host:8883`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Defaults to `dockside-<base_topic>-<hostname>`: two instances must not share one.
    pub client_id: Option<String>,
    pub base_topic: String,
    pub qos: u8,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// One plain value per state key under `<ct>/state/<key>` (Jeedom).
    pub flat_topics: bool,
    /// Run an MQTT broker inside dockside (SPEC §12) and publish to it; then
    /// `url`, `username`, `password` and TLS are derived from the keys below.
    pub embedded: bool,
    /// Where the embedded broker listens; loopback unless set otherwise.
    pub embedded_listen: String,
    pub embedded_username: Option<String>,
    pub embedded_password: Option<String>,
    pub embedded_password_file: Option<PathBuf>,
    /// Let clients in without credentials on an address beyond loopback
    /// (SPEC §16: refused unless set; whoever reaches the broker could stop
    /// every container).
    pub embedded_allow_anonymous: bool,
    /// Connections at once from one source address (SPEC §16), so that one
    /// host's idle sockets never lock the others out.
    pub embedded_max_connections_per_ip: usize,
    /// `[[mqtt.embedded_users]]`: who else may connect, and what they may
    /// publish (SPEC §16). `embedded_username` is dockside's own credential.
    pub embedded_users: Vec<EmbeddedUser>,
    /// MQTT over TLS beside (or, with `embedded_listen` on loopback, instead
    /// of) the plain listener, with a PEM certificate chain and key.
    pub embedded_tls_listen: Option<String>,
    pub embedded_cert_file: Option<PathBuf>,
    pub embedded_key_file: Option<PathBuf>,
}

/// A client of the embedded broker with its role (SPEC §16).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedUser {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    pub role: EmbeddedRole,
}

/// `read`: subscribe to anything, publish only Home Assistant's birth topic;
/// `control`: also the command topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedRole {
    Read,
    Control,
}

impl MqttConfig {
    /// A copy with every secret replaced (Debug, check-config).
    pub fn redacted(&self) -> Self {
        let mut c = self.clone();
        for p in [&mut c.password, &mut c.embedded_password] {
            if p.is_some() {
                *p = Some(REDACTED.into());
            }
        }
        for u in &mut c.embedded_users {
            if u.password.is_some() {
                u.password = Some(REDACTED.into());
            }
        }
        c
    }
}

/// Default `mqtt.embedded_listen`.
pub const EMBEDDED_LISTEN: &str = "127.0.0.1:1883";

impl MqttConfig {
    pub fn embedded_socket_addr(&self) -> Result<std::net::SocketAddr, ConfigError> {
        self.embedded_listen.trim().parse().map_err(|e| {
            invalid(
                "mqtt.embedded_listen",
                format!("`{}`: {e} (want ip:port)", self.embedded_listen),
            )
        })
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://localhost:1883".into(),
            username: None,
            password: None,
            password_file: None,
            client_id: None,
            base_topic: "dockside".into(),
            qos: 1,
            keep_alive: Duration::from_secs(30),
            ca_file: None,
            client_cert: None,
            client_key: None,
            flat_topics: false,
            embedded: false,
            embedded_listen: EMBEDDED_LISTEN.into(),
            embedded_username: None,
            embedded_password: None,
            embedded_password_file: None,
            embedded_allow_anonymous: false,
            embedded_max_connections_per_ip: 16,
            embedded_users: Vec::new(),
            embedded_tls_listen: None,
            embedded_cert_file: None,
            embedded_key_file: None,
        }
    }
}

/// Home Assistant MQTT discovery (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HomeAssistantConfig {
    /// Publish discovery; `false` also clears what this base published before.
    pub enabled: bool,
    pub discovery_prefix: String,
    /// Where HA announces itself (`online` → discovery is re-sent);
    /// defaults to `<discovery_prefix>/status`.
    pub birth_topic: Option<String>,
    /// `device`: one config per container (HA 2024.11+); `component`: one per
    /// entity, for consumers that only read the per-entity form.
    pub discovery: DiscoveryMode,
}

impl Default for HomeAssistantConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            discovery_prefix: "homeassistant".into(),
            birth_topic: None,
            discovery: DiscoveryMode::Device,
        }
    }
}

impl HomeAssistantConfig {
    pub fn birth_topic(&self) -> String {
        self.birth_topic
            .clone()
            .unwrap_or_else(|| format!("{}/status", self.discovery_prefix))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    Device,
    Component,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// `unix:///var/run/docker.sock`, `tcp://host:2375`, `https://host:2376`.
    pub url: String,
    /// CA bundle for `https://` engines.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for `https://` engines.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Turns TLS verification off for this endpoint only.
    pub tls_insecure: bool,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            url: DEFAULT_SOCKET.into(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_insecure: false,
        }
    }
}

/// One Portainer instance; each of its Docker environments becomes an endpoint
/// `<key>-<slug of the environment name>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PortainerConfig {
    /// `https://portainer.lan:9443`
    pub url: String,
    /// Access token (`ptr_…`), or `api_key_file`; else username + password.
    pub api_key: Option<String>,
    pub api_key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
    /// `"*"`, environment names or globs, ids (`"3"`), or tags (`"tag:prod"`).
    pub environments: Vec<String>,
    /// How often the environment list is read again.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Bounded catch-up poll of each environment's events (Portainer may hold
    /// back a live event stream).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub ca_file: Option<PathBuf>,
    /// Turns TLS verification off for this Portainer only.
    pub tls_insecure: bool,
}

impl Default for PortainerConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            api_key: None,
            api_key_file: None,
            username: None,
            password: None,
            password_file: None,
            environments: vec!["*".into()],
            refresh: Duration::from_secs(300),
            poll_interval: Duration::from_secs(10),
            ca_file: None,
            tls_insecure: false,
        }
    }
}

/// SPEC §13 container stats: off unless enabled here or by label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    pub enabled: bool,
    /// How often each sampled container is read (spread over the interval).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Stats calls running at once per engine.
    pub concurrency: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: Duration::from_secs(60),
            concurrency: 4,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersConfig {
    /// Container names or globs to mirror; empty = all.
    pub include: Vec<String>,
    /// Container names or globs to leave out (wins over include).
    pub exclude: Vec<String>,
    /// How long a destroyed container keeps its topics, waiting for a recreate.
    #[serde(with = "humantime_serde")]
    pub removal_grace: Duration,
    /// Full re-list that heals anything the event stream missed.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// SPEC §13: this many restarts within `crashloop_window` is a crash loop
    /// (the container's `problem`); 0 turns the rule off.
    pub crashloop_restarts: u32,
    #[serde(with = "humantime_serde")]
    pub crashloop_window: Duration,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            exclude: Vec::new(),
            removal_grace: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(300),
            crashloop_restarts: 3,
            crashloop_window: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Docker event types published on `<base>/<ep>/events`.
    pub types: Vec<String>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            types: ["container", "image", "network", "volume"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommandsConfig {
    /// Container commands at all (`resync` always works).
    pub enabled: bool,
    /// Words accepted on container `set` topics; `pause unpause kill` are opt-in.
    pub allow: Vec<String>,
    /// Container names or globs that are never stopped, restarted, paused,
    /// killed or recreated (e.g. the broker and Home Assistant).
    pub protect: Vec<String>,
    /// Minimum time between two commands to the same container.
    #[serde(with = "humantime_serde")]
    pub min_interval: Duration,
    /// How long a command waits for the engine and for the state it asks for.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an `update` (pull + recreate) may take.
    #[serde(with = "humantime_serde")]
    pub update_timeout: Duration,
}

impl Default for CommandsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allow: ["start", "stop", "restart"].map(String::from).to_vec(),
            protect: Vec::new(),
            min_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
            update_timeout: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpdatesConfig {
    /// Image update checks at all.
    pub enabled: bool,
    /// Time between two rounds (jittered); a round also runs at start unless
    /// the persisted results are fresh.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A Docker `config.json` whose `auths` give registry credentials.
    pub docker_config: Option<PathBuf>,
    /// Registries reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// Extra CA bundle (PEM) trusted for registries, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Credentials per registry host (`[updates.registries."ghcr.io"]`).
    pub registries: BTreeMap<String, RegistryCredentials>,
    /// Container names (globs) never checked: status `ignored`, like the
    /// label `dockside.updates=false`.
    pub ignore: Vec<String>,
    /// After `update`/`rollback`, the new container must run (and be healthy
    /// when it has a healthcheck) this long, or the old one is restored.
    #[serde(with = "humantime_serde")]
    pub verify_for: Duration,
    /// Container names (globs) updated automatically, like the label
    /// `dockside.update=auto` (SPEC §17).
    pub auto: Vec<String>,
    /// When automatic updates may run: `"Sat,Sun 03:00-05:00"` (local
    /// time); always when unset.
    pub window: Option<String>,
    /// A version is installed automatically only once its image is this old.
    #[serde(with = "humantime_serde")]
    pub min_age: Option<Duration>,
    /// How long a pre-update check (`dockside.update.check`) may run
    /// before it is killed and the update blocked.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
}

impl UpdatesConfig {
    /// The parsed window (validated at load time; `None` = always).
    pub fn window(&self) -> Option<crate::watcher::Window> {
        self.window.as_deref().and_then(|w| w.parse().ok())
    }
}

impl Default for UpdatesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(6 * 3600),
            docker_config: None,
            insecure_registries: Vec::new(),
            ca_file: None,
            registries: BTreeMap::new(),
            ignore: Vec::new(),
            verify_for: Duration::from_secs(10),
            auto: Vec::new(),
            window: None,
            min_age: None,
            check_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    /// Persisted event cursors (and, later, update results).
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("/var/lib/dockside"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error|warn|info|debug|trace`, or a tracing filter such as `dockside=debug`.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Parsed `mqtt.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// `DOCKSIDE__EVENTS__TYPES` → `events.types`, as config-rs's environment source names it.
fn env_key(var: &str) -> String {
    var.trim_start_matches("DOCKSIDE__")
        .to_lowercase()
        .replace("__", ".")
}

/// Where the config comes from, in SPEC §8 order.
pub fn resolve_path(cli: Option<&Path>, env: &HashMap<String, String>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.get("DOCKSIDE_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let default = Path::new(DEFAULT_PATH);
    default.exists().then(|| default.to_path_buf())
}

impl Config {
    /// Loads file + environment, reads `*_file` secrets and validates.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            // Parse with `toml` first: its errors carry line and column.
            toml::from_str::<toml::Value>(&text).map_err(|e| ConfigError::File {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        // Environment overrides (`DOCKSIDE__SECTION__KEY`) through config-rs's own
        // source. Two of them: scalars stay strings (`try_parsing` would turn a
        // secret like `0123` into the number 123), and only the list keys are
        // split at commas (their items trimmed first).
        let (lists, scalars): (HashMap<String, String>, HashMap<String, String>) = env
            .iter()
            .filter(|(k, _)| k.starts_with("DOCKSIDE__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| LIST_KEYS.contains(&env_key(k).as_str()));
        let lists: HashMap<String, String> = lists
            .into_iter()
            .map(|(k, v)| {
                let items: Vec<&str> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect();
                (k, items.join(","))
            })
            .collect();
        let mut list_source = config::Environment::with_prefix("DOCKSIDE")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(lists));
        for key in LIST_KEYS {
            list_source = list_source.with_list_parse_key(key);
        }
        builder = builder
            .add_source(
                config::Environment::with_prefix("DOCKSIDE")
                    .separator("__")
                    .source(Some(scalars)),
            )
            .add_source(list_source);
        let built = builder
            .build()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        let mut cfg: Config = built
            .try_deserialize()
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.docker_host = env.get("DOCKER_HOST").filter(|h| !h.is_empty()).cloned();
        cfg.finish()?;
        Ok(cfg)
    }

    /// Reads secrets from files, fills defaults that depend on other keys, validates.
    fn finish(&mut self) -> Result<(), ConfigError> {
        for (key, p) in self.portainer.iter_mut() {
            if let Some(file) = &p.api_key_file {
                if p.api_key.is_some() {
                    return Err(invalid(
                        format!("portainer.{key}.api_key_file"),
                        "set either api_key or api_key_file, not both",
                    ));
                }
                p.api_key = Some(read_secret(&format!("portainer.{key}.api_key_file"), file)?);
            }
            if let Some(file) = &p.password_file {
                if p.password.is_some() {
                    return Err(invalid(
                        format!("portainer.{key}.password_file"),
                        "set either password or password_file, not both",
                    ));
                }
                p.password = Some(read_secret(
                    &format!("portainer.{key}.password_file"),
                    file,
                )?);
            }
        }
        for (host, r) in self.updates.registries.iter_mut() {
            if let Some(file) = &r.password_file {
                let key = format!("updates.registries.\"{host}\".password_file");
                if r.password.is_some() {
                    return Err(invalid(
                        key,
                        "set either password or password_file, not both",
                    ));
                }
                r.password = Some(read_secret(&key, file)?);
            }
        }
        if let Some(file) = &self.mqtt.password_file {
            if self.mqtt.password.is_some() {
                return Err(invalid(
                    "mqtt.password_file",
                    "set either mqtt.password or mqtt.password_file, not both",
                ));
            }
            self.mqtt.password = Some(read_secret("mqtt.password_file", file)?);
        }
        if self.mqtt.embedded {
            self.use_embedded_broker()?;
        }
        self.resolve_http_users()?;
        self.validate()
    }

    /// `[[http.users]]`: passwords from their files.
    fn resolve_http_users(&mut self) -> Result<(), ConfigError> {
        resolve_users("http.users", &mut self.http.users, None)?;
        if !self.http.users.is_empty() && self.http.listen.is_none() {
            return Err(invalid(
                "http.users",
                "needs http.listen (the panel is off without it)",
            ));
        }
        Ok(())
    }

    /// `mqtt.embedded`: dockside's own client connects to the embedded
    /// broker over loopback, with the embedded credentials.
    fn use_embedded_broker(&mut self) -> Result<(), ConfigError> {
        let m = &mut self.mqtt;
        if let Some(file) = &m.embedded_password_file {
            if m.embedded_password.is_some() {
                return Err(invalid(
                    "mqtt.embedded_password_file",
                    "set either embedded_password or embedded_password_file, not both",
                ));
            }
            m.embedded_password = Some(read_secret("mqtt.embedded_password_file", file)?);
        }
        let addr = m.embedded_socket_addr()?;
        match (&m.embedded_username, &m.embedded_password) {
            (Some(u), Some(p)) if !u.is_empty() && !p.is_empty() => {}
            (None, None) => {}
            _ => {
                return Err(invalid(
                    "mqtt.embedded_username",
                    "set both embedded_username and embedded_password (or neither)",
                ));
            }
        }
        resolve_users(
            "mqtt.embedded_users",
            &mut m.embedded_users,
            m.embedded_username.as_deref(),
        )?;
        if !m.embedded_users.is_empty() && m.embedded_username.is_none() {
            return Err(invalid(
                "mqtt.embedded_users",
                "needs embedded_username and embedded_password: the credential dockside itself uses",
            ));
        }
        if let Some(tls) = &m.embedded_tls_listen {
            let tls_addr: std::net::SocketAddr = tls.trim().parse().map_err(|e| {
                invalid(
                    "mqtt.embedded_tls_listen",
                    format!("`{tls}`: {e} (want ip:port)"),
                )
            })?;
            for (key, f) in [
                ("mqtt.embedded_cert_file", &m.embedded_cert_file),
                ("mqtt.embedded_key_file", &m.embedded_key_file),
            ] {
                let Some(f) = f else {
                    return Err(invalid(key, "needed with mqtt.embedded_tls_listen"));
                };
                std::fs::metadata(f)
                    .map_err(|e| invalid(key, format!("cannot read {}: {e}", f.display())))?;
            }
            if !tls_addr.ip().is_loopback()
                && m.embedded_username.is_none()
                && !m.embedded_allow_anonymous
            {
                return Err(invalid(
                    "mqtt.embedded_allow_anonymous",
                    format!(
                        "the embedded broker would serve TLS on {tls_addr}, beyond this machine, with no credentials"
                    ),
                ));
            }
        }
        if !(1..=256).contains(&m.embedded_max_connections_per_ip) {
            return Err(invalid(
                "mqtt.embedded_max_connections_per_ip",
                "from 1 to 256",
            ));
        }
        if !addr.ip().is_loopback() && m.embedded_username.is_none() && !m.embedded_allow_anonymous
        {
            return Err(invalid(
                "mqtt.embedded_allow_anonymous",
                format!(
                    "the embedded broker would listen on {addr}, beyond this machine, with no credentials: \
                     anyone on the network could stop your containers. Set embedded_username and \
                     embedded_password[_file], or embedded_allow_anonymous = true to accept that"
                ),
            ));
        }
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        m.url = format!("mqtt://{host}:{}", addr.port());
        m.username = m.embedded_username.clone();
        m.password = m.embedded_password.clone();
        m.password_file = None;
        m.ca_file = None;
        m.client_cert = None;
        m.client_key = None;
        Ok(())
    }

    /// Every file-valued key names a readable file: a reload that points at a
    /// missing CA or key is refused before anything is torn down.
    fn check_files(&self) -> Result<(), ConfigError> {
        let mut files: Vec<(String, &PathBuf)> = Vec::new();
        let m = &self.mqtt;
        for (k, v) in [
            ("ca_file", &m.ca_file),
            ("client_cert", &m.client_cert),
            ("client_key", &m.client_key),
        ] {
            if let Some(p) = v {
                files.push((format!("mqtt.{k}"), p));
            }
        }
        for (id, e) in &self.endpoints {
            for (k, v) in [
                ("ca_file", &e.ca_file),
                ("client_cert", &e.client_cert),
                ("client_key", &e.client_key),
            ] {
                if let Some(p) = v {
                    files.push((format!("endpoints.{id}.{k}"), p));
                }
            }
        }
        for (key, p) in &self.portainer {
            if let Some(f) = &p.ca_file {
                files.push((format!("portainer.{key}.ca_file"), f));
            }
        }
        if let Some(f) = &self.updates.docker_config {
            files.push(("updates.docker_config".into(), f));
        }
        for (key, path) in files {
            std::fs::File::open(path)
                .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
        }
        Ok(())
    }

    /// What changed between this config and `new`, as data: the supervisor
    /// restarts only that.
    pub fn diff(&self, new: &Config) -> ConfigDiff {
        ConfigDiff {
            restart_all: self.mqtt != new.mqtt
                || self.homeassistant != new.homeassistant
                || self.state != new.state,
            endpoint_settings: self.containers != new.containers
                || self.stats != new.stats
                || self.events != new.events
                || self.commands != new.commands,
            updates: self.updates != new.updates,
            endpoints: KeyedDiff::between(&self.effective_endpoints(), &new.effective_endpoints()),
            portainer: KeyedDiff::between(&self.portainer, &new.portainer),
            log: self.log != new.log,
        }
    }

    /// Each section validates itself; what spans sections is checked here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_files()?;
        self.broker_addr()?;
        let base = &self.mqtt.base_topic;
        if !valid_topic_name(base) {
            return Err(invalid(
                "mqtt.base_topic",
                "must be a non-empty topic without wildcards, leading `$` or leading/trailing `/`",
            ));
        }
        self.mqtt.validate()?;
        self.homeassistant.validate(base)?;
        for (id, ep) in &self.endpoints {
            ep.validate(id)?;
        }
        for (key, p) in &self.portainer {
            p.validate(key, &self.endpoints)?;
        }
        self.events.validate()?;
        if let Some(host) = &self.docker_host
            && self.endpoints.is_empty()
            && self.portainer.is_empty()
        {
            parse_engine_url(host).map_err(|m| invalid("DOCKER_HOST", m))?;
        }
        self.containers.validate()?;
        self.commands.validate()?;
        self.updates.validate()?;
        self.http.socket_addr()?;
        self.stats.validate()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        if self.state.dir.as_os_str().is_empty() {
            return Err(invalid("state.dir", "must not be empty"));
        }
        Ok(())
    }

    /// The endpoints to watch: the configured ones, or the local socket as
    /// `local` when neither endpoints nor Portainer sources are configured.
    pub fn effective_endpoints(&self) -> BTreeMap<String, EndpointConfig> {
        if self.endpoints.is_empty() && self.portainer.is_empty() {
            let mut local = EndpointConfig::default();
            if let Some(host) = &self.docker_host {
                local.url = host.clone();
            }
            BTreeMap::from([("local".to_string(), local)])
        } else {
            self.endpoints.clone()
        }
    }

    pub fn broker_addr(&self) -> Result<BrokerAddr, ConfigError> {
        parse_broker_url(&self.mqtt.url).map_err(|m| invalid("mqtt.url", m))
    }

    pub fn client_id(&self) -> String {
        self.mqtt.client_id.clone().unwrap_or_else(|| {
            format!(
                "dockside-{}-{}",
                self.mqtt.base_topic.replace('/', "-"),
                hostname()
            )
        })
    }

    /// The effective config as TOML with every secret replaced.
    pub fn redacted_toml(&self) -> String {
        let mut copy = self.clone();
        copy.mqtt = self.mqtt.redacted();
        copy.http = self.http.redacted();
        for r in copy.updates.registries.values_mut() {
            if r.password.is_some() {
                r.password = Some(REDACTED.into());
            }
        }
        for p in copy.portainer.values_mut() {
            if p.api_key.is_some() {
                p.api_key = Some(REDACTED.into());
            }
            if p.password.is_some() {
                p.password = Some(REDACTED.into());
            }
        }
        let mut out = String::from("# effective configuration (secrets redacted)\n");
        if self.endpoints.is_empty() && self.portainer.is_empty() {
            out.push_str("# no endpoints configured: watching the local socket as `local`\n");
            copy.endpoints = self.effective_endpoints();
        }
        match toml::to_string_pretty(&copy) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!("# cannot render: {e}\n")),
        }
        out
    }
}

fn read_secret(key: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// A topic we publish under or subscribe to literally.
fn valid_topic_name(t: &str) -> bool {
    !(t.is_empty()
        || t.starts_with('/')
        || t.ends_with('/')
        || t.starts_with('$')
        || t.contains(['+', '#', '\0']))
}

pub fn valid_endpoint_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn parse_broker_url(url: &str) -> Result<BrokerAddr, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://").or(url.strip_prefix("tcp://")) {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://").or(url.strip_prefix("ssl://")) {
        (true, r)
    } else {
        return Err(format!(
            "`{url}`: expected mqtt://host[:port] or mqtts://host[:port]"
        ));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        return Err("put credentials in mqtt.username / mqtt.password, not in the URL".into());
    }
    let (host, port) = split_host_port(rest, if tls { 8883 } else { 1883 })?;
    Ok(BrokerAddr { tls, host, port })
}

fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    if s.is_empty() {
        return Err("missing host".into());
    }
    // [v6]:port
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed `[` in host")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("bad port `{p}`"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("unexpected `{after}` after host")),
        };
        return Ok((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) => {
            let port: u16 = p.parse().map_err(|_| format!("bad port `{p}`"))?;
            if h.is_empty() || h.contains('/') {
                return Err(format!("bad host `{h}`"));
            }
            Ok((h.to_string(), port))
        }
        None if s.contains('/') => Err(format!("bad host `{s}`")),
        None => Ok((s.to_string(), default_port)),
    }
}

/// A Docker engine address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineUrl {
    Unix(PathBuf),
    /// `http://host:port/` or `https://host:port/` base URL.
    Http {
        base: String,
        tls: bool,
    },
}

pub fn parse_engine_url(url: &str) -> Result<EngineUrl, String> {
    if let Some(path) = url.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!("`{url}`: unix:// needs an absolute path"));
        }
        return Ok(EngineUrl::Unix(PathBuf::from(path)));
    }
    let (tls, rest) = if let Some(r) = url.strip_prefix("tcp://").or(url.strip_prefix("http://")) {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "`{url}`: expected unix:///path, tcp://host:port or https://host:port"
        ));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = split_host_port(rest, if tls { 2376 } else { 2375 })?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(EngineUrl::Http {
        base: format!("{scheme}://{host}:{port}/"),
        tls,
    })
}

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{:08x}", fastrand::u32(..)))
}

impl MqttConfig {
    /// `[mqtt]` on its own (the base topic and broker address are checked with the whole).
    fn validate(&self) -> Result<(), ConfigError> {
        if self.qos > 2 {
            return Err(invalid("mqtt.qos", "must be 0, 1 or 2"));
        }
        if self.keep_alive < Duration::from_secs(5) {
            return Err(invalid("mqtt.keep_alive", "must be at least 5s"));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(invalid("mqtt.username", "a password needs a username"));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                "mqtt.client_key",
                "client_cert and client_key go together",
            ));
        }
        if let Some(id) = &self.client_id
            && id.is_empty()
        {
            return Err(invalid("mqtt.client_id", "must not be empty"));
        }
        Ok(())
    }
}

impl HomeAssistantConfig {
    /// `[homeassistant]`; `base` is `mqtt.base_topic`, which discovery must stay out of.
    fn validate(&self, base: &str) -> Result<(), ConfigError> {
        if !valid_topic_name(&self.discovery_prefix) {
            return Err(invalid(
                "homeassistant.discovery_prefix",
                "must be a non-empty topic without wildcards, leading `$` or leading/trailing `/`",
            ));
        }
        if let Some(b) = &self.birth_topic
            && !valid_topic_name(b)
        {
            return Err(invalid(
                "homeassistant.birth_topic",
                "must be a non-empty topic without wildcards, leading `$` or leading/trailing `/`",
            ));
        }
        if self.discovery_prefix == *base || self.discovery_prefix.starts_with(&format!("{base}/"))
        {
            return Err(invalid(
                "homeassistant.discovery_prefix",
                "must not be mqtt.base_topic or under it",
            ));
        }
        Ok(())
    }
}

impl EndpointConfig {
    /// `[endpoints.<id>]`.
    fn validate(&self, id: &str) -> Result<(), ConfigError> {
        let key = format!("endpoints.{id}");
        if !valid_endpoint_id(id) {
            return Err(invalid(
                key,
                "endpoint ids are lowercase and use only [a-z0-9_-]",
            ));
        }
        parse_engine_url(&self.url).map_err(|m| invalid(format!("{key}.url"), m))?;
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(invalid(
                format!("{key}.client_key"),
                "client_cert and client_key go together",
            ));
        }
        Ok(())
    }
}

impl PortainerConfig {
    /// `[portainer.<key>]`; `endpoints` are the direct ones, which must not look like its environments.
    fn validate(
        &self,
        key: &str,
        endpoints: &BTreeMap<String, EndpointConfig>,
    ) -> Result<(), ConfigError> {
        let k = format!("portainer.{key}");
        if !valid_endpoint_id(key) {
            return Err(invalid(
                k,
                "portainer keys are lowercase and use only [a-z0-9_-]",
            ));
        }
        match parse_engine_url(&self.url) {
            Ok(EngineUrl::Http { .. }) if self.url.starts_with("http") => {}
            _ => {
                return Err(invalid(
                    format!("{k}.url"),
                    "expected https://host[:port] (or http:// on a trusted network)",
                ));
            }
        }
        let login = self.username.is_some() || self.password.is_some();
        match (&self.api_key, login) {
            (Some(_), true) => {
                return Err(invalid(k, "use api_key or username + password, not both"));
            }
            (None, false) => {
                return Err(invalid(
                    format!("{k}.api_key"),
                    "an access token (api_key) or username + password is needed",
                ));
            }
            (None, true) if self.username.is_none() || self.password.is_none() => {
                return Err(invalid(
                    format!("{k}.password"),
                    "username and password go together",
                ));
            }
            _ => {}
        }
        if self.environments.is_empty() {
            return Err(invalid(
                format!("{k}.environments"),
                "empty: use [\"*\"] for all",
            ));
        }
        if self.refresh < Duration::from_secs(5) {
            return Err(invalid(format!("{k}.refresh"), "must be at least 5s"));
        }
        if self.poll_interval < Duration::from_secs(1) {
            return Err(invalid(format!("{k}.poll_interval"), "must be at least 1s"));
        }
        // Portainer endpoints are `<key>-<env>`: a direct endpoint may not look like one.
        if let Some(id) = endpoints
            .keys()
            .find(|id| id.starts_with(&format!("{key}-")))
        {
            return Err(invalid(
                format!("endpoints.{id}"),
                format!("collides with the endpoints of [portainer.{key}] (`{key}-<environment>`)"),
            ));
        }
        Ok(())
    }
}

impl EventsConfig {
    /// `[events]`.
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, t) in self.types.iter().enumerate() {
            if !EVENT_TYPES.contains(&t.as_str()) {
                return Err(invalid(
                    format!("events.types[{i}]"),
                    format!(
                        "unknown event type `{t}` (one of {})",
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl ContainersConfig {
    /// `[containers]`.
    fn validate(&self) -> Result<(), ConfigError> {
        crate::filter::ContainerFilter::new(&self.include, &self.exclude)?;
        if self.crashloop_restarts > 1000 {
            return Err(invalid(
                "containers.crashloop_restarts",
                "must be at most 1000",
            ));
        }
        if self.crashloop_window < Duration::from_secs(10)
            || self.crashloop_window > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(invalid(
                "containers.crashloop_window",
                "must be between 10s and 7d",
            ));
        }
        if self.reconcile_interval < Duration::from_secs(1) {
            return Err(invalid(
                "containers.reconcile_interval",
                "must be at least 1s",
            ));
        }
        Ok(())
    }
}

impl CommandsConfig {
    /// `[commands]`.
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, w) in self.allow.iter().enumerate() {
            if !crate::command::ALLOWABLE_WORDS.contains(&w.as_str()) {
                return Err(invalid(
                    format!("commands.allow[{i}]"),
                    format!(
                        "unknown command `{w}` (one of {})",
                        crate::command::ALLOWABLE_WORDS.join(", ")
                    ),
                ));
            }
        }
        crate::filter::glob_set("commands.protect", &self.protect)?;
        if self.timeout < Duration::from_secs(1) {
            return Err(invalid("commands.timeout", "must be at least 1s"));
        }
        if self.update_timeout < Duration::from_secs(10) {
            return Err(invalid("commands.update_timeout", "must be at least 10s"));
        }
        Ok(())
    }
}

/// Users with a role (the embedded broker's, the panel's): a name given
/// once (and not `reserved`), a password inline or from its file, never empty.
fn resolve_users(
    section: &str,
    users: &mut [EmbeddedUser],
    reserved: Option<&str>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, u) in users.iter_mut().enumerate() {
        let key = format!("{section}[{i}]");
        if u.username.is_empty() || u.username.contains(['\0', ':']) {
            return Err(invalid(&key, "username must be a non-empty name"));
        }
        if !seen.insert(u.username.clone()) || reserved == Some(u.username.as_str()) {
            return Err(invalid(
                &key,
                format!("username `{}` is given twice", u.username),
            ));
        }
        match (&u.password, &u.password_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    &key,
                    "set either password or password_file, not both",
                ));
            }
            (None, None) => return Err(invalid(&key, "set password or password_file")),
            (None, Some(f)) => u.password = Some(read_secret(&format!("{key}.password_file"), f)?),
            (Some(_), None) => {}
        }
        if u.password.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(&key, "the password is empty"));
        }
    }
    Ok(())
}

impl UpdatesConfig {
    /// `[updates]`.
    fn validate(&self) -> Result<(), ConfigError> {
        crate::filter::glob_set("updates.ignore", &self.ignore)?;
        crate::filter::glob_set("updates.auto", &self.auto)?;
        if let Some(w) = &self.window {
            w.parse::<crate::watcher::Window>()
                .map_err(|e| invalid("updates.window", e))?;
        }
        if self.verify_for > Duration::from_secs(600) {
            return Err(invalid("updates.verify_for", "must be at most 10m"));
        }
        if self.check_timeout < Duration::from_secs(1)
            || self.check_timeout > Duration::from_secs(600)
        {
            return Err(invalid(
                "updates.check_timeout",
                "must be between 1s and 10m",
            ));
        }
        if let Some(ca) = &self.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                invalid(
                    "updates.ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                )
            })?;
            match reqwest::Certificate::from_pem_bundle(&pem) {
                Ok(c) if !c.is_empty() => {}
                _ => return Err(invalid("updates.ca_file", "no PEM certificate in it")),
            }
        }
        if self.interval < Duration::from_secs(60) {
            return Err(invalid("updates.interval", "must be at least 1m"));
        }
        for (host, r) in &self.registries {
            if r.username.is_some() != r.password.is_some() {
                return Err(invalid(
                    format!("updates.registries.\"{host}\".password"),
                    "username and password go together",
                ));
            }
        }
        Ok(())
    }
}

impl StatsConfig {
    /// `[stats]`.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_secs(5) || self.interval > Duration::from_secs(24 * 3600)
        {
            return Err(invalid("stats.interval", "must be between 5s and 1d"));
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err(invalid("stats.concurrency", "must be between 1 and 64"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_keyed_diff_names_added_removed_changed_and_on_demand_all_kept() {
        let a: BTreeMap<String, u8> = [("x".into(), 1), ("y".into(), 2), ("z".into(), 3)].into();
        let b: BTreeMap<String, u8> = [("y".into(), 2), ("z".into(), 4), ("w".into(), 5)].into();
        let d = KeyedDiff::between(&a, &b);
        assert_eq!(
            (d.added.clone(), d.removed.clone(), d.changed.clone()),
            (vec!["w".into()], vec!["x".into()], vec!["z".into()])
        );
        let all = d.all_kept_changed(&a, &b);
        assert_eq!(all.changed, vec!["y".to_string(), "z".to_string()]);
        assert_eq!(all.added, vec!["w".to_string()]);
    }
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load_str(toml_text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("tempfile");
        f.write_all(toml_text.as_bytes()).expect("write");
        Config::load(Some(f.path()), &env(vars))
    }

    #[test]
    fn embedded_users_need_a_role_and_never_show_their_passwords() {
        let cfg = load_str(
            "[mqtt]\nembedded = true\nembedded_username = \"self\"\nembedded_password = \"s-secret\"\n[[mqtt.embedded_users]]\nusername = \"ha\"\npassword = \"h-secret\"\nrole = \"read\"\n",
            &[],
        )
        .expect("config");
        assert_eq!(cfg.mqtt.embedded_users[0].role, EmbeddedRole::Read);
        let shown = format!("{:?}\n{}", cfg.mqtt, cfg.redacted_toml());
        assert!(
            !shown.contains("h-secret") && !shown.contains("s-secret"),
            "{shown}"
        );
        for (toml, key) in [
            (
                "[[mqtt.embedded_users]]\nusername = \"ha\"\npassword = \"p\"\nrole = \"admin\"\n",
                "mqtt",
            ),
            (
                "[[mqtt.embedded_users]]\nusername = \"ha\"\nrole = \"read\"\n",
                "embedded_users[0]",
            ),
            (
                "[[mqtt.embedded_users]]\nusername = \"self\"\npassword = \"p\"\nrole = \"read\"\n",
                "embedded_users[0]",
            ),
        ] {
            let text = format!(
                "[mqtt]\nembedded = true\nembedded_username = \"self\"\nembedded_password = \"s\"\n{toml}"
            );
            let e = load_str(&text, &[]).expect_err(toml);
            assert!(e.to_string().contains(key), "{e}");
        }
        let e = load_str(
            "[mqtt]\nembedded = true\n[[mqtt.embedded_users]]\nusername = \"ha\"\npassword = \"p\"\nrole = \"read\"\n",
            &[],
        )
        .expect_err("users without dockside's own credential");
        assert!(e.to_string().contains("mqtt.embedded_users"), "{e}");
    }

    #[test]
    fn panel_users_have_roles_and_their_passwords_never_show() {
        let dir = tempfile::tempdir().expect("tmp");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "from-file-secret\n").expect("pw");
        let text = format!(
            "[http]\nlisten = \"127.0.0.1:9847\"\n[[http.users]]\nusername = \"alice\"\npassword = \"inline-secret\"\nrole = \"control\"\n[[http.users]]\nusername = \"bob\"\npassword_file = \"{}\"\nrole = \"read\"\n",
            pw.display()
        );
        let cfg = load_str(&text, &[]).expect("config");
        assert_eq!(
            cfg.http.users[1].password.as_deref(),
            Some("from-file-secret")
        );
        assert_eq!(cfg.http.users[0].role, EmbeddedRole::Control);
        let shown = format!("{:?} {}", cfg, cfg.redacted_toml());
        assert!(
            !shown.contains("inline-secret") && !shown.contains("from-file-secret"),
            "{shown}"
        );
        for (bad, key) in [
            (
                "[[http.users]]\nusername = \"a\"\npassword = \"p\"\nrole = \"read\"\n",
                "http.users",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"\n[[http.users]]\nusername = \"a\"\nrole = \"read\"\n",
                "http.users[0]",
            ),
            (
                "[http]\nlisten = \"127.0.0.1:1\"\n[[http.users]]\nusername = \"a\"\npassword = \"p\"\nrole = \"admin\"\n",
                "role",
            ),
        ] {
            let e = load_str(bad, &[]).expect_err(bad);
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    /// Every key of every section, with its section (`updates.window`).
    fn all_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(m) = v.as_object() {
            for (k, x) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match x {
                    serde_json::Value::Object(_) if prefix.is_empty() => all_keys(x, &path, out),
                    _ => out.push(path),
                }
            }
        }
    }

    #[test]
    fn the_example_config_names_every_key() {
        // One of each keyed table, so their keys are listed too.
        let cfg = load_str(
            "[endpoints.x]\nurl = \"unix:///x.sock\"\n[portainer.p]\nurl = \"https://p\"\napi_key = \"k\"\n",
            &[],
        )
        .expect("config");
        let mut keys = Vec::new();
        all_keys(&serde_json::to_value(&cfg).expect("json"), "", &mut keys);
        for table in ["endpoints.x", "portainer.p"] {
            let v = serde_json::to_value(&cfg).expect("json");
            let (a, b) = table.split_once('.').expect("dot");
            if let Some(m) = v[a][b].as_object() {
                keys.extend(m.keys().map(|k| format!("{a}.{k}")));
            }
        }
        let text = include_str!("../config/dockside.example.toml");
        // Secrets are shown by their `_file` form; tables of tables by their header.
        let shown_otherwise = [
            "password",
            "api_key",
            "embedded_password",
            "embedded_users",
            "users",
            "registries",
            "docker_host",
        ];
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| {
                let key = k.rsplit('.').next().unwrap_or(k);
                !shown_otherwise.contains(&key)
                    && !["endpoints.x", "portainer.p"].contains(&k.as_str())
                    && !text.lines().any(|l| {
                        let l = l.trim_start_matches('#').trim_start();
                        l.starts_with(&format!("{key} ")) || l.starts_with(&format!("{key}="))
                    })
            })
            .collect();
        assert!(
            missing.is_empty(),
            "config/dockside.example.toml does not name: {missing:?}"
        );
    }

    #[test]
    fn the_example_config_loads() {
        let text = include_str!("../config/dockside.example.toml");
        let cfg = load_str(text, &[]).expect("config/dockside.example.toml");
        assert_eq!(cfg.mqtt.embedded_max_connections_per_ip, 16);
        assert!(!cfg.mqtt.embedded);
        // Every section a user may write is in the example (SPEC §18, item 6).
        let sections = serde_json::to_value(Config::default()).expect("json");
        for key in sections.as_object().expect("object").keys() {
            if key == "docker_host" {
                continue; // a legacy top-level key, not a section
            }
            assert!(
                text.contains(&format!("[{key}]")) || text.contains(&format!("[{key}.")),
                "config/dockside.example.toml has no [{key}] section"
            );
        }
    }

    #[test]
    fn an_embedded_broker_beyond_loopback_needs_users_or_an_explicit_yes() {
        let e = load_str(
            "[mqtt]\nembedded = true\nembedded_listen = \"0.0.0.0:1883\"\n",
            &[],
        )
        .expect_err("anonymous on the LAN");
        assert!(
            e.to_string().contains("mqtt.embedded_allow_anonymous"),
            "{e}"
        );
        load_str(
            "[mqtt]\nembedded = true\nembedded_listen = \"0.0.0.0:1883\"\nembedded_allow_anonymous = true\n",
            &[],
        )
        .expect("said yes");
        load_str(
            "[mqtt]\nembedded = true\nembedded_listen = \"0.0.0.0:1883\"\nembedded_username = \"ha\"\nembedded_password = \"pw\"\n",
            &[],
        )
        .expect("with a user");
        load_str(
            "[mqtt]\nembedded = true\nembedded_listen = \"127.0.0.1:1883\"\n",
            &[],
        )
        .expect("loopback");
        load_str(
            "[mqtt]\nembedded = true\nembedded_listen = \"[::1]:1883\"\n",
            &[],
        )
        .expect("loopback v6");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let c = load_str(
            "[mqtt]\nusername = \"u\"\npassword = \"hunter2-mqtt\"\n[portainer.p]\nurl = \"https://p\"\napi_key = \"ptr_hunter2\"\n[updates.registries.\"r.example\"]\nusername = \"u\"\npassword = \"hunter2-reg\"\n",
            &[],
        )
        .expect("config");
        let text = format!("{c:?} {:?}", crate::watcher::credentials(&c.updates));
        for secret in ["hunter2-mqtt", "ptr_hunter2", "hunter2-reg"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn reload_diff_names_only_what_changed() {
        let base = r#"
[endpoints.a]
url = "unix:///a.sock"
[endpoints.b]
url = "unix:///b.sock"
[portainer.p]
url = "https://p.example"
api_key = "k"
"#;
        let old = load_str(base, &[]).expect("old");
        assert!(old.diff(&old).is_empty());
        let new = load_str(&format!("{base}[updates]\ninterval = \"1h\"\n"), &[]).expect("new");
        let d = old.diff(&new);
        assert!(d.updates && !d.restart_all && !d.endpoint_settings, "{d:?}");
        assert!(d.endpoints.changed.is_empty() && d.portainer.changed.is_empty());
        let new = load_str(
            &format!("{base}[portainer.q]\nurl = \"https://q.example\"\napi_key = \"k\"\n")
                .replace("unix:///b.sock", "tcp://127.0.0.1:2375"),
            &[],
        )
        .expect("new");
        let d = old.diff(&new);
        assert_eq!(d.portainer.added, vec!["q".to_string()]);
        assert_eq!(d.endpoints.changed, vec!["b".to_string()]);
        assert!(!d.restart_all && !d.updates && d.endpoints.added.is_empty());
        let new = load_str(
            &format!("{base}[mqtt]\nkeep_alive = \"60s\"\n[containers]\nexclude = [\"x\"]\n"),
            &[],
        )
        .expect("new");
        let d = old.diff(&new);
        assert!(d.restart_all && d.endpoint_settings);
    }

    #[test]
    fn every_file_valued_key_must_be_readable() {
        for (toml, key) in [
            (
                "[mqtt]\nurl = \"mqtts://h:8883\"\nca_file = \"/nonexistent/ca.pem\"\n",
                "mqtt.ca_file",
            ),
            (
                "[endpoints.x]\nurl = \"https://h:2376\"\nclient_cert = \"/nonexistent/c\"\nclient_key = \"/nonexistent/k\"\n",
                "endpoints.x.client_cert",
            ),
            (
                "[portainer.p]\nurl = \"https://p\"\napi_key = \"k\"\nca_file = \"/nonexistent/ca\"\n",
                "portainer.p.ca_file",
            ),
        ] {
            let e = load_str(toml, &[]).expect_err(key);
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn defaults_without_any_config() {
        let cfg = Config::load(None, &HashMap::new()).expect("defaults");
        assert_eq!(cfg.mqtt.url, "mqtt://localhost:1883");
        assert_eq!(cfg.mqtt.base_topic, "dockside");
        let eps = cfg.effective_endpoints();
        assert_eq!(eps.len(), 1);
        assert_eq!(eps["local"].url, DEFAULT_SOCKET);
        assert_eq!(cfg.containers.removal_grace, Duration::from_secs(30));
    }

    #[test]
    fn docker_host_is_the_local_endpoint_only_when_none_is_configured() {
        let env = |h: &str| HashMap::from([("DOCKER_HOST".to_string(), h.to_string())]);
        let cfg = Config::load(None, &env("unix:///run/user/1000/docker.sock")).expect("load");
        assert_eq!(
            cfg.effective_endpoints()["local"].url,
            "unix:///run/user/1000/docker.sock"
        );
        let e = Config::load(None, &env("ssh://me@host")).expect_err("ssh is not supported");
        assert!(e.to_string().contains("DOCKER_HOST"), "{e}");
        // Configured endpoints win, and then DOCKER_HOST is not even parsed.
        let cfg = load_str(
            "[endpoints.nas]\nurl = \"tcp://10.0.0.2:2375\"\n",
            &[("DOCKER_HOST", "ssh://x")],
        )
        .expect("load");
        assert_eq!(cfg.effective_endpoints().len(), 1);
        assert!(cfg.effective_endpoints().contains_key("nas"));
    }

    #[test]
    fn file_and_env_override() {
        let cfg = load_str(
            r#"
            [mqtt]
            url = "mqtt://broker:1884"
            username = "u"
            password = "0123"
            [endpoints.nas]
            url = "tcp://10.0.0.2:2375"
            [containers]
            removal_grace = "1m 30s"
            "#,
            &[
                ("DOCKSIDE__MQTT__QOS", "0"),
                ("DOCKSIDE__ENDPOINTS__NAS__TLS_INSECURE", "true"),
                ("DOCKSIDE__ENDPOINTS__EXTRA__URL", "unix:///run/x.sock"),
                ("DOCKSIDE__EVENTS__TYPES", "container, image"),
                ("DOCKSIDE__CONTAINERS__EXCLUDE", "tmp-*"),
                // A number-looking secret stays the string it is.
                ("DOCKSIDE__MQTT__USERNAME", "007"),
            ],
        )
        .expect("load");
        assert_eq!(cfg.mqtt.qos, 0);
        assert_eq!(cfg.mqtt.password.as_deref(), Some("0123"));
        assert_eq!(cfg.mqtt.username.as_deref(), Some("007"));
        assert!(cfg.endpoints["nas"].tls_insecure);
        assert_eq!(cfg.endpoints["extra"].url, "unix:///run/x.sock");
        assert_eq!(cfg.events.types, vec!["container", "image"]);
        assert_eq!(cfg.containers.exclude, vec!["tmp-*"]);
        assert_eq!(cfg.containers.removal_grace, Duration::from_secs(90));
        assert_eq!(
            cfg.broker_addr().expect("addr"),
            BrokerAddr {
                tls: false,
                host: "broker".into(),
                port: 1884
            }
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load_str("[mqtt]\nqos = 5\n", &[]).expect_err("qos");
        assert!(e.to_string().contains("mqtt.qos"), "{e}");
        let e = load_str("[mqtt]\nbogus = 1\n", &[]).expect_err("unknown");
        assert!(e.to_string().contains("bogus"), "{e}");
        let e = load_str("[containers]\nremoval_grace = \"soon\"\n", &[]).expect_err("dur");
        assert!(e.to_string().contains("removal_grace"), "{e}");
        let e = load_str("[endpoints.Nas]\nurl = \"tcp://h:1\"\n", &[]).expect_err("id");
        assert!(e.to_string().contains("endpoints.Nas"), "{e}");
        let e = load_str("[endpoints.a]\nurl = \"ftp://h\"\n", &[]).expect_err("url");
        assert!(e.to_string().contains("endpoints.a.url"), "{e}");
        let e = load_str("[events]\ntypes = [\"container\", \"nope\"]\n", &[]).expect_err("t");
        assert!(e.to_string().contains("events.types[1]"), "{e}");
        let e = load_str("[mqtt]\nurl = \"http://x\"\n", &[]).expect_err("mqtt url");
        assert!(e.to_string().contains("mqtt.url"), "{e}");
        let e = load_str("[log]\nformat = \"xml\"\n", &[]).expect_err("fmt");
        assert!(e.to_string().contains("format"), "{e}");
        let e = load_str("[mqtt\n", &[]).expect_err("syntax");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn homeassistant_section() {
        let c = load_str("", &[]).expect("defaults");
        assert!(c.homeassistant.enabled);
        assert_eq!(c.homeassistant.birth_topic(), "homeassistant/status");
        assert_eq!(c.homeassistant.discovery, DiscoveryMode::Device);
        let c = load_str(
            "[homeassistant]\ndiscovery_prefix = \"ha\"\ndiscovery = \"component\"\n",
            &[("DOCKSIDE__HOMEASSISTANT__ENABLED", "false")],
        )
        .expect("load");
        assert!(!c.homeassistant.enabled);
        assert_eq!(c.homeassistant.birth_topic(), "ha/status");
        assert_eq!(c.homeassistant.discovery, DiscoveryMode::Component);
        for (text, key) in [
            (
                "[homeassistant]\ndiscovery_prefix = \"ha/#\"\n",
                "homeassistant.discovery_prefix",
            ),
            (
                "[homeassistant]\ndiscovery_prefix = \"dockside/ha\"\n",
                "homeassistant.discovery_prefix",
            ),
            (
                "[homeassistant]\nbirth_topic = \"\"\n",
                "homeassistant.birth_topic",
            ),
            ("[homeassistant]\ndiscovery = \"entity\"\n", "discovery"),
        ] {
            let e = load_str(text, &[]).expect_err(text);
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn password_file_and_redaction() {
        let mut secret = tempfile::NamedTempFile::new().expect("tempfile");
        secret.write_all(b"s3cr3t-pw\n").expect("write");
        let path = secret.path().display().to_string();
        let cfg = load_str(
            &format!("[mqtt]\nusername = \"u\"\npassword_file = \"{path}\"\n"),
            &[],
        )
        .expect("load");
        assert_eq!(cfg.mqtt.password.as_deref(), Some("s3cr3t-pw"));
        let shown = cfg.redacted_toml();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains(REDACTED));
        assert!(shown.contains("[endpoints.local]"), "{shown}");
        // The redacted output is itself a valid config (modulo the secret).
        toml::from_str::<toml::Value>(&shown).expect("valid toml");
    }

    #[test]
    fn portainer_sections() {
        let mut key = tempfile::NamedTempFile::new().expect("tmp");
        key.write_all(b"ptr_0123secret\n").expect("write");
        let cfg = load_str(
            &format!(
                "[portainer.home]\nurl = \"https://p:9443\"\napi_key_file = \"{}\"\n",
                key.path().display()
            ),
            &[("DOCKSIDE__PORTAINER__HOME__POLL_INTERVAL", "3s")],
        )
        .expect("load");
        let p = &cfg.portainer["home"];
        assert_eq!(p.api_key.as_deref(), Some("ptr_0123secret"));
        assert_eq!(p.poll_interval, Duration::from_secs(3));
        assert_eq!(p.environments, vec!["*"]);
        assert!(
            cfg.effective_endpoints().is_empty(),
            "no implicit local with a Portainer source"
        );
        assert!(!cfg.redacted_toml().contains("0123secret"));
        let e = load_str("[portainer.home]\nurl = \"https://p\"\n", &[]).expect_err("no auth");
        assert!(e.to_string().contains("portainer.home.api_key"), "{e}");
        let e = load_str(
            "[portainer.home]\nurl = \"https://p\"\napi_key = \"k\"\nusername = \"u\"\npassword = \"p\"\n",
            &[],
        )
        .expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
        let e = load_str(
            "[portainer.home]\nurl = \"https://p\"\napi_key = \"k\"\n[endpoints.home-x]\nurl = \"tcp://h:1\"\n",
            &[],
        )
        .expect_err("collision");
        assert!(e.to_string().contains("endpoints.home-x"), "{e}");
    }

    #[test]
    fn engine_urls() {
        assert_eq!(
            parse_engine_url("unix:///var/run/docker.sock"),
            Ok(EngineUrl::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            parse_engine_url("tcp://10.0.0.2"),
            Ok(EngineUrl::Http {
                base: "http://10.0.0.2:2375/".into(),
                tls: false
            })
        );
        assert_eq!(
            parse_engine_url("https://[::1]:2376/"),
            Ok(EngineUrl::Http {
                base: "https://[::1]:2376/".into(),
                tls: true
            })
        );
        assert!(parse_engine_url("unix://relative").is_err());
        assert!(parse_engine_url("tcp://h:99999").is_err());
        assert!(parse_broker_url("mqtt://u:p@h").is_err());
        assert_eq!(
            parse_broker_url("mqtts://h").map(|b| (b.tls, b.port)),
            Ok((true, 8883))
        );
    }
}
