//! Every Home Assistant discovery payload (SPEC §7) is built here: the bridge
//! device, one device per endpoint, one per container. Pure functions of their
//! inputs; the endpoint tasks and the supervisor decide when to publish.
//!
//! Shapes follow HA 2026's MQTT schemas (see `reference/home-assistant.md`):
//! the device form's root holds only `device`, `origin`, `components` and the
//! shared options; every entity has a `unique_id` and a `default_entity_id`
//! (never `object_id`); availability is the bridge status AND the endpoint
//! status (`availability_mode: all`); templates never render a value HA
//! rejects (enum options cover every state, the update entity's JSON only
//! carries keys HA's update schema accepts).

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::config::{Config, DiscoveryMode};
use crate::topics::{DiscoveryTopics, Topics, ha_id};

pub const ORIGIN_NAME: &str = "dockside";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const SUPPORT_URL: &str = env!("CARGO_PKG_HOMEPAGE");

/// The enum sensors' options: every value §4.1 allows.
pub use crate::payloads::{HEALTHS as HEALTH_OPTIONS, STATES as STATE_OPTIONS};

const ON_OFF_RUNNING: &str = "{{ 'ON' if value_json.running else 'OFF' }}";
const ON_OFF_PROBLEM: &str = "{{ 'ON' if value_json.problem else 'OFF' }}";

/// Maps the §4.3 update status onto HA's update-entity JSON: only keys HA's
/// schema accepts, never `null`, absent versions left out (HA drops the whole
/// message on a schema violation).
pub const UPDATE_TEMPLATE: &str = concat!(
    "{%- set v = value_json -%}",
    "{%- set ns = namespace(o=['\"in_progress\":' ~ ('true' if v.in_progress else 'false')]) -%}",
    "{%- if v.installed_version is string and v.installed_version -%}",
    "{%- set ns.o = ns.o + ['\"installed_version\":' ~ (v.installed_version | tojson)] -%}",
    "{%- endif -%}",
    "{%- if v.status == 'skipped' and v.installed_version is string and v.installed_version -%}",
    "{%- set ns.o = ns.o + ['\"latest_version\":' ~ (v.installed_version | tojson)] -%}",
    "{%- elif v.latest_version is string and v.latest_version -%}",
    "{%- set ns.o = ns.o + ['\"latest_version\":' ~ (v.latest_version | tojson)] -%}",
    "{%- endif -%}",
    "{%- if v.title is string and v.title -%}",
    "{%- set ns.o = ns.o + ['\"title\":' ~ (v.title | tojson)] -%}",
    "{%- elif v.image is string and v.image -%}",
    "{%- set ns.o = ns.o + ['\"title\":' ~ (v.image | tojson)] -%}",
    "{%- endif -%}",
    "{%- if v.release_url is string and v.release_url -%}",
    "{%- set ns.o = ns.o + ['\"release_url\":' ~ (v.release_url | tojson)] -%}",
    "{%- endif -%}",
    "{%- if v.error is string and v.error -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":' ~ (v.error[:255] | tojson)] -%}",
    "{%- elif v.blocked is string and v.blocked -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":' ~ (v.blocked[:255] | tojson)] -%}",
    "{%- elif v.compose_image is string and v.compose_image -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":' ~ (('The compose file names ' ~ v.compose_image ~ '.')[:255] | tojson)] -%}",
    "{%- elif v.status == 'skipped' -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":' ~ (('Version ' ~ v.latest_version ~ ' is skipped.')[:255] | tojson)] -%}",
    "{%- elif v.status == 'pinned' -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":\"The image is pinned by digest: not checked for updates.\"'] -%}",
    "{%- elif v.status == 'local_build' -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":\"The image was built locally: no registry to check.\"'] -%}",
    "{%- elif v.status == 'ignored' -%}",
    "{%- set ns.o = ns.o + ['\"release_summary\":\"Update checks are off for this container (dockside.updates=false or updates.ignore).\"'] -%}",
    "{%- endif -%}",
    "{%- if v.progress is number -%}",
    "{%- set ns.o = ns.o + ['\"update_percentage\":' ~ v.progress] -%}",
    "{%- endif -%}",
    "{{ '{' ~ (ns.o | join(',')) ~ '}' }}",
);

/// The "Version" select's choice as an `update` command (SPEC §17).
const VERSION_COMMAND: &str = r#"{"action":"update","version":{{ value | tojson }}}"#;

/// The newest entry of `<ct>/history` (SPEC §14) as the "Last update" sensor.
const LAST_UPDATE_TEMPLATE: &str =
    "{{ value_json[0].status if value_json is sequence and value_json | length > 0 else 'none' }}";
const LAST_UPDATE_ATTRIBUTES: &str =
    "{{ (value_json[0] if value_json is sequence and value_json | length > 0 else {}) | tojson }}";
const LAST_UPDATE_OPTIONS: &[&str] = &["ok", "rolled_back", "failed", "none"];

/// `restart: ok`, `logs: ok`, `stop: forbidden`.
const LAST_RESULT_TEMPLATE: &str = "{{ (value_json.action or 'command') ~ ': ' ~ ('ok' if value_json.ok else (value_json.code or 'failed')) }}";

/// The "Last command" sensor's attributes: the whole result, but a `logs`
/// result keeps only its newest lines that fit in 12,000 bytes of JSON, so
/// the attributes stay under Home Assistant's 16 KiB (the recorder drops
/// larger ones with a warning); `truncated` then says so. Jinja's `tojson`
/// escapes every non-ASCII character, so its length bounds the bytes.
const LAST_RESULT_ATTRIBUTES: &str = concat!(
    "{% if value_json.logs is defined and value_json.logs %}",
    "{% set ns = namespace(keep=[], size=0, full=false) %}",
    "{% for l in value_json.logs | reverse %}",
    "{% set n = (l | tojson | length) + 1 %}",
    "{% if not ns.full and ns.size + n <= 12000 %}",
    "{% set ns.keep = [l] + ns.keep %}{% set ns.size = ns.size + n %}",
    "{% else %}{% set ns.full = true %}{% endif %}",
    "{% endfor %}",
    "{{ dict(value_json, logs=ns.keep, truncated=(ns.full or value_json.truncated)) | tojson }}",
    "{% else %}{{ value_json | tojson }}{% endif %}"
);

/// SPEC §4.4: the event entity's `event_types`.
pub use crate::payloads::CONTAINER_EVENT_TYPES as EVENT_TYPES;

/// What discovery needs from the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    topics: Topics,
    pub discovery: DiscoveryTopics,
    mode: DiscoveryMode,
    qos: u8,
    /// The command policy's settings: which words HA may send.
    commands: crate::config::CommandsConfig,
    updates: bool,
}

/// A container, as far as its device and entities depend on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerFacts {
    pub image: String,
    /// Words this container accepts (labels and protection applied).
    pub words: Vec<String>,
    /// Portainer page of the container, if it comes through Portainer.
    pub configuration_url: Option<String>,
    /// Its resource figures are sampled (SPEC §13 stats).
    pub stats: bool,
    /// Under tag following: the running tag and those it may move to (the
    /// "Version" select, SPEC §17).
    pub versions: Vec<String>,
}

/// An endpoint, as far as its device depends on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointFacts {
    pub name: String,
    /// `docker` or `portainer`.
    pub kind: String,
    pub docker_version: Option<String>,
    pub configuration_url: Option<String>,
}

/// One entity of a device.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Component id, the key in `components` (and `<object_id>` of the per-entity form).
    pub id: &'static str,
    pub platform: &'static str,
    pub config: Map<String, Value>,
}

/// One device with its entities, ready to publish in either form.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub device_id: String,
    pub device: Value,
    /// Shared options set at the device root (device form) or copied into
    /// each entity that does not set them (per-entity form).
    pub shared: Map<String, Value>,
    pub entities: Vec<Entity>,
    /// Optional components not present now (words not allowed, checks off).
    /// The device form lists them as `{"platform": …}`, which makes HA drop
    /// one discovered earlier (HA does not drop a component that is merely
    /// omitted) and is a no-op otherwise: removal survives any restart.
    pub absent: Vec<(&'static str, &'static str)>,
}

impl Device {
    fn finish(mut self, optional: &[(&'static str, &'static str)]) -> Self {
        self.absent = optional
            .iter()
            .filter(|(id, _)| !self.entities.iter().any(|e| e.id == *id))
            .copied()
            .collect();
        self
    }
}

const SCOPE_OPTIONAL: &[(&str, &str)] = &[
    ("check_updates", "button"),
    ("prune", "button"),
    ("updates_available", "sensor"),
];
const CONTAINER_OPTIONAL: &[(&str, &str)] = &[
    ("power", "switch"),
    ("restart", "button"),
    ("pause", "button"),
    ("unpause", "button"),
    ("kill", "button"),
    ("update", "update"),
    ("check_update", "button"),
    ("rollback", "button"),
    ("version", "select"),
    ("sync", "button"),
    ("last_update", "sensor"),
    ("cpu", "sensor"),
    ("memory", "sensor"),
    ("memory_percent", "sensor"),
    ("net_rx", "sensor"),
    ("net_tx", "sensor"),
    ("block_read", "sensor"),
    ("block_write", "sensor"),
    ("pids", "sensor"),
];

const STACK_OPTIONAL: &[(&str, &str)] = &[
    ("start", "button"),
    ("stop", "button"),
    ("restart", "button"),
    ("update", "update"),
];
/// `StackState::state` values.
const STACK_STATES: &[&str] = &["running", "partial", "stopped"];
/// A stack's update entity: "n of m current"; the two differ while some
/// container of the stack has an update (SPEC §13 `updates_available`).
const STACK_UPDATE_TEMPLATE: &str = concat!(
    "{%- set v = value_json -%}",
    "{%- set t = v.total | int(0) -%}",
    "{%- set u = v.updates_available | int(0) -%}",
    "{{ {'installed_version': (t - u) ~ ' of ' ~ t ~ ' current',",
    " 'latest_version': t ~ ' of ' ~ t ~ ' current',",
    " 'title': v.name ~ ' (' ~ v.kind ~ ')'} | tojson }}",
);

/// The stats sensors (SPEC §13): component id, payload key, name, and the
/// unit/class options. Byte counters are `total_increasing` (a restart of
/// the container resets them, which HA reads as a new cycle).
const STATS_SENSORS: &[(&str, &str, &str, &str)] = &[
    (
        "cpu",
        "cpu_percent",
        "CPU",
        r#"{"unit_of_measurement":"%","state_class":"measurement","suggested_display_precision":1,"icon":"mdi:cpu-64-bit"}"#,
    ),
    (
        "memory",
        "memory_bytes",
        "Memory",
        r#"{"unit_of_measurement":"B","device_class":"data_size","state_class":"measurement","suggested_unit_of_measurement":"MiB","suggested_display_precision":1}"#,
    ),
    (
        "memory_percent",
        "memory_percent",
        "Memory use",
        r#"{"unit_of_measurement":"%","state_class":"measurement","suggested_display_precision":1,"icon":"mdi:memory"}"#,
    ),
    (
        "net_rx",
        "net_rx_bytes",
        "Network received",
        r#"{"unit_of_measurement":"B","device_class":"data_size","state_class":"total_increasing","suggested_unit_of_measurement":"MiB","suggested_display_precision":1,"icon":"mdi:download-network"}"#,
    ),
    (
        "net_tx",
        "net_tx_bytes",
        "Network sent",
        r#"{"unit_of_measurement":"B","device_class":"data_size","state_class":"total_increasing","suggested_unit_of_measurement":"MiB","suggested_display_precision":1,"icon":"mdi:upload-network"}"#,
    ),
    (
        "block_read",
        "block_read_bytes",
        "Disk read",
        r#"{"unit_of_measurement":"B","device_class":"data_size","state_class":"total_increasing","suggested_unit_of_measurement":"MiB","suggested_display_precision":1,"icon":"mdi:harddisk"}"#,
    ),
    (
        "block_write",
        "block_write_bytes",
        "Disk written",
        r#"{"unit_of_measurement":"B","device_class":"data_size","state_class":"total_increasing","suggested_unit_of_measurement":"MiB","suggested_display_precision":1,"icon":"mdi:harddisk"}"#,
    ),
    (
        "pids",
        "pids",
        "Processes",
        r#"{"state_class":"measurement","icon":"mdi:format-list-numbered"}"#,
    ),
];

impl Discovery {
    /// `None` when discovery is off.
    pub fn from_config(cfg: &Config) -> Option<Self> {
        let ha = &cfg.homeassistant;
        ha.enabled.then(|| Self {
            topics: Topics::new(cfg.mqtt.base_topic.clone()),
            discovery: DiscoveryTopics::new(ha.discovery_prefix.clone()),
            mode: ha.discovery,
            qos: cfg.mqtt.qos,
            commands: cfg.commands.clone(),
            updates: cfg.updates.enabled,
        })
    }

    /// The words HA may send to one container: those the command policy
    /// permits for it (`command::Policy`), and `check`/`update` only when
    /// the image watcher runs.
    pub fn container_words(&self, who: &crate::command::Subject) -> Vec<String> {
        self.commands
            .allow
            .iter()
            .filter(|w| self.commands.policy().refusal(w, Some(who)).is_none())
            .filter(|w| self.updates || (w.as_str() != "check" && w.as_str() != "update"))
            .cloned()
            .collect()
    }

    fn allows(words: &[String], w: &str) -> bool {
        words.iter().any(|x| x == w)
    }

    fn bridge_id(&self) -> String {
        ha_id(&[self.topics.base()])
    }

    fn endpoint_id(&self, ep: &str) -> String {
        ha_id(&[self.topics.base(), ep])
    }

    fn origin() -> Value {
        json!({"name": ORIGIN_NAME, "sw_version": VERSION, "support_url": SUPPORT_URL})
    }

    fn availability(&self, ep: Option<&str>) -> Map<String, Value> {
        let mut items = vec![json!({"topic": self.topics.bridge_status()})];
        if let Some(ep) = ep {
            items.push(json!({"topic": self.topics.endpoint_status(ep)}));
        }
        let mut m = Map::new();
        m.insert("availability".into(), Value::Array(items));
        m.insert("availability_mode".into(), json!("all"));
        m
    }

    /// An entity with its ids filled in.
    fn entity(
        &self,
        device_id: &str,
        id: &'static str,
        platform: &'static str,
        name: &str,
        rest: Value,
    ) -> Entity {
        let unique_id = format!("{device_id}_{id}");
        let mut config = Map::new();
        config.insert("unique_id".into(), json!(unique_id));
        config.insert(
            "default_entity_id".into(),
            json!(format!("{platform}.{}", entity_slug(&unique_id))),
        );
        config.insert("name".into(), json!(name));
        if let Value::Object(m) = rest {
            config.extend(m);
        }
        Entity {
            id,
            platform,
            config,
        }
    }

    /// `resync` and (with update checks on) `check_updates` on a bridge or endpoint `set` topic.
    fn scope_buttons(&self, id: &str, set: &str) -> Vec<Entity> {
        let mut v = vec![self.entity(
            id,
            "resync",
            "button",
            "Resync",
            json!({"command_topic": set, "payload_press": "resync",
                   "entity_category": "config", "icon": "mdi:sync"}),
        )];
        if self.updates {
            v.push(self.entity(
                id,
                "check_updates",
                "button",
                "Check for updates",
                json!({"command_topic": set, "payload_press": "check_updates",
                       "entity_category": "config", "icon": "mdi:update"}),
            ));
        }
        v
    }

    /// The entities of `defs` that `wanted` keeps, their `$` values filled
    /// from `vars`: `when_allowed` keys where `has` allows the word, and the
    /// engine's availability on those bound to it.
    fn entities(
        &self,
        device_id: &str,
        defs: &[EntityDef],
        vars: &BTreeMap<&'static str, Value>,
        wanted: &dyn Fn(When) -> bool,
        has: &dyn Fn(&str) -> bool,
        engine: &Map<String, Value>,
    ) -> Vec<Entity> {
        defs.iter()
            .filter(|d| wanted(d.when))
            .map(|d| {
                let mut config = d.config(vars);
                if let Value::Object(m) = &mut config {
                    if let Some((word, extra)) = d.when_allowed
                        && has(word)
                        && let Ok(mut x) = serde_json::from_str::<Value>(extra)
                    {
                        fill(&mut x, vars);
                        if let Value::Object(x) = x {
                            m.extend(x);
                        }
                    }
                    if d.engine_bound {
                        m.extend(engine.clone());
                    }
                }
                self.entity(device_id, d.id, d.platform, d.name, config)
            })
            .collect()
    }

    /// The bridge device: connectivity, version, and the bridge commands.
    pub fn bridge(&self) -> Device {
        let id = self.bridge_id();
        let t = &self.topics;
        let mut entities = vec![
            // No availability: `offline` (the last will) is what it shows.
            self.entity(
                &id,
                "connected",
                "binary_sensor",
                "Connected",
                json!({"device_class": "connectivity", "state_topic": t.bridge_status(),
                       "payload_on": "online", "payload_off": "offline"}),
            ),
            self.entity(
                &id,
                "version",
                "sensor",
                "Version",
                json!({"state_topic": t.bridge_info(), "value_template": "{{ value_json.version }}",
                       "entity_category": "diagnostic", "icon": "mdi:tag"}),
            ),
            self.entity(
                &id,
                "endpoints",
                "sensor",
                "Endpoints",
                json!({"state_topic": t.bridge_info(), "value_template": "{{ value_json.endpoints | length }}",
                       "state_class": "measurement", "entity_category": "diagnostic", "icon": "mdi:server-network"}),
            ),
        ];
        // SPEC §12: is dockside keeping up?
        for (key, name, field, icon) in [
            (
                "endpoints_connected",
                "Endpoints connected",
                "endpoints_connected",
                "mdi:lan-connect",
            ),
            (
                "events_per_minute",
                "Events per minute",
                "events_per_minute",
                "mdi:pulse",
            ),
            (
                "outbox_depth",
                "Outbox depth",
                "outbox_depth",
                "mdi:tray-full",
            ),
            (
                "broker_reconnects",
                "Broker reconnects",
                "broker_reconnects",
                "mdi:connection",
            ),
            // SPEC §17: totals of every endpoint.
            ("problems", "Problems", "problems", "mdi:alert-circle"),
            (
                "updates_available",
                "Updates available",
                "updates_available",
                "mdi:package-up",
            ),
        ] {
            if key == "updates_available" && !self.updates {
                continue;
            }
            let mut cfg = json!({"state_topic": t.bridge_info(),
                   "value_template": format!("{{{{ value_json.{field} if value_json.{field} is number else 'None' }}}}"),
                   "entity_category": "diagnostic", "icon": icon});
            if matches!(key, "problems" | "updates_available") {
                // What a user watches, not a diagnostic.
                cfg.as_object_mut().map(|m| m.remove("entity_category"));
            }
            cfg["state_class"] = json!(if key == "broker_reconnects" {
                "total_increasing"
            } else {
                "measurement"
            });
            if key == "events_per_minute" {
                cfg["unit_of_measurement"] = json!("events/min");
            }
            entities.push(self.entity(&id, key, "sensor", name, cfg));
        }
        entities.extend(self.scope_buttons(&id, &t.bridge_set()));
        let mut shared = self.availability(None);
        shared.insert("qos".into(), json!(self.qos));
        Device {
            device: json!({
                "identifiers": [id],
                "name": self.topics.base(),
                "manufacturer": "dockside",
                "model": "Docker to MQTT bridge",
                "sw_version": VERSION,
            }),
            device_id: id,
            shared,
            entities,
            absent: Vec::new(),
        }
        .finish(SCOPE_OPTIONAL)
    }

    /// An endpoint device: reachability, counts, engine version, commands
    /// (those of `ENDPOINT_ENTITIES` its settings call for).
    pub fn endpoint(&self, ep: &str, f: &EndpointFacts) -> Device {
        let id = self.endpoint_id(ep);
        let t = &self.topics;
        let vars = BTreeMap::from([
            ("$info", json!(t.endpoint_info(ep))),
            ("$status", json!(t.endpoint_status(ep))),
            ("$set", json!(t.endpoint_set(ep))),
        ]);
        let words: &[String] = if self.commands.enabled {
            &self.commands.allow
        } else {
            &[]
        };
        let has = |w: &str| Self::allows(words, w);
        let wanted = |when: When| match when {
            When::Always => true,
            When::Allows(w) => w.iter().all(|w| has(w)),
            When::Updates => self.updates,
            When::UpdatesAllows(w) => self.updates && has(w),
            When::Versions => false,
        };
        let engine = self.availability(Some(ep));
        let mut entities = self.entities(&id, ENDPOINT_ENTITIES, &vars, &wanted, &has, &engine);
        entities.extend(self.scope_buttons(&id, &t.endpoint_set(ep)));
        entities.extend(self.entities(&id, ENDPOINT_TAIL_ENTITIES, &vars, &wanted, &has, &engine));
        let mut device = json!({
            "identifiers": [id],
            "name": if f.name.is_empty() { ep } else { &f.name },
            "manufacturer": if f.kind == "portainer" { "Portainer" } else { "Docker" },
            "model": if f.kind == "portainer" { "Portainer environment" } else { "Docker engine" },
            "via_device": self.bridge_id(),
        });
        if let Some(v) = &f.docker_version {
            device["sw_version"] = json!(v);
        }
        if let Some(u) = &f.configuration_url {
            device["configuration_url"] = json!(u);
        }
        // Reachability stays available while the bridge is up.
        let mut shared = self.availability(None);
        shared.insert("qos".into(), json!(self.qos));
        Device {
            device_id: id,
            device,
            shared,
            entities,
            absent: Vec::new(),
        }
        .finish(SCOPE_OPTIONAL)
    }

    /// A container device and its entities: those of `CONTAINER_ENTITIES`
    /// (and the stats sensors) that its facts call for.
    pub fn container(&self, ep: &str, ct: &str, f: &ContainerFacts) -> Device {
        let id = ha_id(&[self.topics.base(), ep, ct]);
        let vars = container_vars(&self.topics, ep, ct);
        let has = |w: &str| Self::allows(&f.words, w);
        let wanted = |when: When| match when {
            When::Always => true,
            When::Allows(words) => words.iter().all(|w| has(w)),
            When::Updates => self.updates,
            When::UpdatesAllows(w) => self.updates && has(w),
            When::Versions => self.updates && has("update") && !f.versions.is_empty(),
        };
        let mut vars = vars;
        vars.insert("$VERSIONS", json!(f.versions));
        let vars = vars;
        let engine = self.availability(Some(ep));
        let mut e = self.entities(&id, CONTAINER_ENTITIES, &vars, &wanted, &has, &engine);
        if f.stats {
            let topic = self.topics.container_stats(ep, ct);
            for (cid, key, name, opts) in STATS_SENSORS {
                let mut v: Value = serde_json::from_str(opts).unwrap_or_else(|_| json!({}));
                // A missing figure renders `None`: HA shows it as unknown.
                v["state_topic"] = json!(topic);
                v["value_template"] = json!(format!("{{{{ value_json.{key} | default(None) }}}}"));
                e.push(self.entity(&id, cid, "sensor", name, v));
            }
        }
        e.extend(self.entities(&id, CONTAINER_TAIL_ENTITIES, &vars, &wanted, &has, &engine));
        let mut device = json!({
            "identifiers": [id],
            "name": ct,
            "manufacturer": "Docker",
            "model": f.image,
            "via_device": self.endpoint_id(ep),
        });
        if let Some(u) = &f.configuration_url {
            device["configuration_url"] = json!(u);
        }
        let mut shared = self.availability(Some(ep));
        shared.insert("qos".into(), json!(self.qos));
        Device {
            device_id: id,
            device,
            shared,
            entities: e,
            absent: Vec::new(),
        }
        .finish(CONTAINER_OPTIONAL)
    }

    /// A stack (SPEC §13): its state, running count, and its words.
    pub fn stack(&self, ep: &str, stack: &str, words: &[String]) -> Device {
        let id = ha_id(&[self.topics.base(), ep, crate::stacks::SEGMENT, stack]);
        let t = &self.topics;
        let state = t.stack_state(ep, stack);
        let set = t.stack_set(ep, stack);
        let mut e = vec![
            self.entity(
                &id,
                "state",
                "sensor",
                "State",
                json!({"device_class": "enum", "options": STACK_STATES, "state_topic": state,
                       "value_template": "{{ value_json.state }}", "json_attributes_topic": state,
                       "icon": "mdi:layers-triple"}),
            ),
            self.entity(
                &id,
                "running",
                "sensor",
                "Running containers",
                json!({"state_topic": state, "value_template": "{{ value_json.running }}",
                       "state_class": "measurement", "icon": "mdi:docker"}),
            ),
        ];
        for (word, name, icon) in [
            ("start", "Start", "mdi:play"),
            ("stop", "Stop", "mdi:stop"),
            ("restart", "Restart", "mdi:restart"),
        ] {
            if Self::allows(words, word) {
                e.push(self.entity(
                    &id,
                    word_id(word),
                    "button",
                    name,
                    json!({"command_topic": set, "payload_press": word, "icon": icon}),
                ));
            }
        }
        if self.updates {
            let mut u = json!({"state_topic": state, "value_template": STACK_UPDATE_TEMPLATE,
                               "icon": "mdi:layers-triple"});
            if Self::allows(words, "update") {
                u["command_topic"] = json!(set);
                u["payload_install"] = json!("update");
            }
            e.push(self.entity(&id, "update", "update", "Stack update", u));
        }
        let device = json!({
            "identifiers": [id],
            "name": stack,
            "manufacturer": "Docker Compose",
            "model": "Stack",
            "via_device": self.endpoint_id(ep),
        });
        let mut shared = self.availability(Some(ep));
        shared.insert("qos".into(), json!(self.qos));
        Device {
            device_id: id,
            device,
            shared,
            entities: e,
            absent: Vec::new(),
        }
        .finish(STACK_OPTIONAL)
    }

    /// The retained messages of a device in the configured form.
    pub fn messages(&self, d: &Device) -> Vec<(String, Bytes)> {
        match self.mode {
            DiscoveryMode::Device => {
                let mut root = Map::new();
                root.insert("device".into(), d.device.clone());
                root.insert("origin".into(), Self::origin());
                root.extend(d.shared.clone());
                let mut cmps: Map<String, Value> = d
                    .entities
                    .iter()
                    .map(|e| {
                        let mut c = Map::new();
                        c.insert("platform".into(), json!(e.platform));
                        c.extend(e.config.clone());
                        (e.id.to_string(), Value::Object(c))
                    })
                    .collect();
                for (id, platform) in &d.absent {
                    cmps.insert(id.to_string(), json!({ "platform": platform }));
                }
                root.insert("components".into(), Value::Object(cmps));
                vec![(
                    self.discovery.device(&d.device_id),
                    encode(&Value::Object(root)),
                )]
            }
            DiscoveryMode::Component => d
                .entities
                .iter()
                .map(|e| {
                    let mut c = e.config.clone();
                    for (k, v) in &d.shared {
                        c.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                    c.insert("device".into(), d.device.clone());
                    c.insert("origin".into(), Self::origin());
                    (
                        self.discovery.component(e.platform, &d.device_id, e.id),
                        encode(&Value::Object(c)),
                    )
                })
                .collect(),
        }
    }
}

/// A command word as a component id (which must be `&'static str`).
/// When a container device has an entity.
#[derive(Debug, Clone, Copy)]
enum When {
    Always,
    /// Every one of these words is allowed for the container.
    Allows(&'static [&'static str]),
    /// The image watcher runs.
    Updates,
    /// The image watcher runs and this word is allowed.
    UpdatesAllows(&'static str),
    /// `update` is allowed and the container follows tags (SPEC §17).
    Versions,
}

/// One entity of a container device, as data. In `config`, a JSON string
/// that is exactly `$name` is replaced by that value (`container_vars`);
/// `when_allowed` adds keys when a word is allowed (Install on `update`).
struct EntityDef {
    id: &'static str,
    platform: &'static str,
    name: &'static str,
    when: When,
    config: &'static str,
    when_allowed: Option<(&'static str, &'static str)>,
    /// Unavailable while the engine is away (an endpoint's counts).
    engine_bound: bool,
}

impl EntityDef {
    const fn new(
        id: &'static str,
        platform: &'static str,
        name: &'static str,
        when: When,
        config: &'static str,
    ) -> Self {
        EntityDef {
            id,
            platform,
            name,
            when,
            config,
            when_allowed: None,
            engine_bound: false,
        }
    }

    fn config(&self, vars: &BTreeMap<&'static str, Value>) -> Value {
        // The table is ours and tested to parse; an error would show as an
        // entity without its keys, never a panic.
        let mut v = serde_json::from_str(self.config).unwrap_or_else(|_| json!({}));
        fill(&mut v, vars);
        v
    }
}

/// Replaces every string that is exactly a key of `vars` by its value.
fn fill(v: &mut Value, vars: &BTreeMap<&'static str, Value>) {
    match v {
        Value::String(s) if s.starts_with('$') => {
            if let Some(x) = vars.get(s.as_str()) {
                *v = x.clone();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| fill(x, vars)),
        Value::Object(m) => m.values_mut().for_each(|x| fill(x, vars)),
        _ => {}
    }
}

/// The values `CONTAINER_ENTITIES` name: a container's topics, and the
/// templates and option lists its entities share.
fn container_vars(t: &Topics, ep: &str, ct: &str) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("$state", json!(t.container_state(ep, ct))),
        ("$set", json!(t.container_set(ep, ct))),
        ("$update", json!(t.container_update(ep, ct))),
        ("$history", json!(t.container_history(ep, ct))),
        ("$versions", json!(t.container_versions(ep, ct))),
        // The container's own list replaces it (`Discovery::container`).
        ("$VERSIONS", json!([])),
        ("$VERSION_COMMAND", json!(VERSION_COMMAND)),
        ("$event", json!(t.container_event(ep, ct))),
        ("$result", json!(t.container_result(ep, ct))),
        ("$ON_OFF_RUNNING", json!(ON_OFF_RUNNING)),
        ("$ON_OFF_PROBLEM", json!(ON_OFF_PROBLEM)),
        ("$STATE_OPTIONS", json!(STATE_OPTIONS)),
        ("$HEALTH_OPTIONS", json!(HEALTH_OPTIONS)),
        ("$EVENT_TYPES", json!(EVENT_TYPES)),
        ("$UPDATE_TEMPLATE", json!(UPDATE_TEMPLATE)),
        ("$LAST_UPDATE_TEMPLATE", json!(LAST_UPDATE_TEMPLATE)),
        ("$LAST_UPDATE_ATTRIBUTES", json!(LAST_UPDATE_ATTRIBUTES)),
        ("$LAST_UPDATE_OPTIONS", json!(LAST_UPDATE_OPTIONS)),
        ("$LAST_RESULT_TEMPLATE", json!(LAST_RESULT_TEMPLATE)),
        ("$LAST_RESULT_ATTRIBUTES", json!(LAST_RESULT_ATTRIBUTES)),
    ])
}

use When::{Allows, Always, Updates, UpdatesAllows, Versions};

/// An endpoint count from its info, unavailable while the engine is away.
macro_rules! count {
    ($id:literal, $name:literal, $tpl:literal, $icon:literal) => {
        EntityDef {
            engine_bound: true,
            ..EntityDef::new(
                $id,
                "sensor",
                $name,
                Always,
                concat!(
                    r#"{"state_topic":"$info","value_template":""#,
                    $tpl,
                    r#"","state_class":"measurement","icon":""#,
                    $icon,
                    r#""}"#
                ),
            )
        }
    };
}

/// An endpoint device's entities before the scope buttons, in order.
const ENDPOINT_ENTITIES: &[EntityDef] = &[
    EntityDef::new(
        "reachable",
        "binary_sensor",
        "Reachable",
        Always,
        r#"{"device_class":"connectivity","state_topic":"$status","payload_on":"online","payload_off":"offline"}"#,
    ),
    count!(
        "containers_running",
        "Containers running",
        "{{ value_json.containers.running }}",
        "mdi:play-circle"
    ),
    count!(
        "containers_stopped",
        "Containers stopped",
        "{{ value_json.containers.stopped }}",
        "mdi:stop-circle"
    ),
    count!(
        "containers_paused",
        "Containers paused",
        "{{ value_json.containers.paused }}",
        "mdi:pause-circle"
    ),
    count!(
        "containers_total",
        "Containers",
        "{{ value_json.containers.total }}",
        "mdi:docker"
    ),
    count!(
        "containers_unhealthy",
        "Containers unhealthy",
        "{{ value_json.containers.unhealthy }}",
        "mdi:heart-broken"
    ),
    count!(
        "images",
        "Images",
        "{{ value_json.images if value_json.images is number else 'None' }}",
        "mdi:layers"
    ),
    EntityDef::new(
        "docker_version",
        "sensor",
        "Docker version",
        Always,
        r#"{"state_topic":"$info","value_template":"{{ value_json.docker_version or 'None' }}","entity_category":"diagnostic","icon":"mdi:docker"}"#,
    ),
    // SPEC §17: what needs a look, per endpoint.
    count!(
        "problems",
        "Problems",
        "{{ value_json.containers.problems | default(0) }}",
        "mdi:alert-circle"
    ),
    EntityDef {
        when: Updates,
        ..count!(
            "updates_available",
            "Updates available",
            "{{ value_json.updates_available if value_json.updates_available is number else 'None' }}",
            "mdi:package-up"
        )
    },
    // SPEC §13 upkeep: services and the disk summary (hourly).
    count!(
        "services",
        "Swarm services",
        "{{ value_json.services if value_json.services is number else 'None' }}",
        "mdi:lan"
    ),
    EntityDef::new(
        "disk_images",
        "sensor",
        "Disk used by images",
        Always,
        r#"{"state_topic":"$info","value_template":"{{ value_json.disk.images_bytes if value_json.disk else 'None' }}","device_class":"data_size","unit_of_measurement":"B","suggested_unit_of_measurement":"GB","state_class":"measurement","entity_category":"diagnostic"}"#,
    ),
    EntityDef::new(
        "disk_reclaimable",
        "sensor",
        "Disk reclaimable",
        Always,
        r#"{"state_topic":"$info","value_template":"{{ value_json.disk.reclaimable_bytes if value_json.disk else 'None' }}","device_class":"data_size","unit_of_measurement":"B","suggested_unit_of_measurement":"GB","state_class":"measurement","entity_category":"diagnostic"}"#,
    ),
];

/// An endpoint device's entities after the scope buttons.
const ENDPOINT_TAIL_ENTITIES: &[EntityDef] = &[
    // Removes things: present, disabled until the user enables it.
    EntityDef::new(
        "prune",
        "button",
        "Prune",
        Allows(&["prune"]),
        r#"{"command_topic":"$set","payload_press":"prune","icon":"mdi:broom","entity_category":"config","enabled_by_default":false}"#,
    ),
];

/// A container device's entities before its stats sensors, in order.
const CONTAINER_ENTITIES: &[EntityDef] = &[
    EntityDef::new(
        "running",
        "binary_sensor",
        "Running",
        Always,
        r#"{"device_class":"running","state_topic":"$state","value_template":"$ON_OFF_RUNNING","json_attributes_topic":"$state"}"#,
    ),
    EntityDef::new(
        "state",
        "sensor",
        "State",
        Always,
        r#"{"device_class":"enum","options":"$STATE_OPTIONS","state_topic":"$state","value_template":"{{ value_json.state }}","icon":"mdi:docker"}"#,
    ),
    EntityDef::new(
        "health",
        "sensor",
        "Health",
        Always,
        r#"{"device_class":"enum","options":"$HEALTH_OPTIONS","state_topic":"$state","value_template":"{{ value_json.health }}","icon":"mdi:heart-pulse"}"#,
    ),
    // SPEC §13: one flag to alert on; the reason as an attribute.
    EntityDef::new(
        "problem",
        "binary_sensor",
        "Problem",
        Always,
        r#"{"device_class":"problem","state_topic":"$state","value_template":"$ON_OFF_PROBLEM","json_attributes_topic":"$state","json_attributes_template":"{{ {'reason': value_json.problem_reason} | tojson }}"}"#,
    ),
    EntityDef::new(
        "power",
        "switch",
        "Power",
        Allows(&["start", "stop"]),
        r#"{"command_topic":"$set","payload_on":"start","payload_off":"stop","state_topic":"$state","state_on":"ON","state_off":"OFF","value_template":"$ON_OFF_RUNNING","icon":"mdi:power"}"#,
    ),
    EntityDef::new(
        "restart",
        "button",
        "Restart",
        Allows(&["restart"]),
        r#"{"device_class":"restart","command_topic":"$set","payload_press":"restart"}"#,
    ),
    // Rarely wanted: present, disabled until the user enables them.
    EntityDef::new(
        "pause",
        "button",
        "Pause",
        Allows(&["pause"]),
        r#"{"command_topic":"$set","payload_press":"pause","icon":"mdi:pause","enabled_by_default":false}"#,
    ),
    EntityDef::new(
        "unpause",
        "button",
        "Unpause",
        Allows(&["unpause"]),
        r#"{"command_topic":"$set","payload_press":"unpause","icon":"mdi:play-pause","enabled_by_default":false}"#,
    ),
    EntityDef::new(
        "kill",
        "button",
        "Kill",
        Allows(&["kill"]),
        r#"{"command_topic":"$set","payload_press":"kill","icon":"mdi:skull-crossbones","enabled_by_default":false}"#,
    ),
    // The lines arrive on the container's result topic (an MQTT trigger).
    EntityDef::new(
        "logs",
        "button",
        "Fetch logs",
        Allows(&["logs"]),
        r#"{"command_topic":"$set","payload_press":"logs","icon":"mdi:text-box-search","enabled_by_default":false}"#,
    ),
    EntityDef {
        when_allowed: Some((
            "update",
            r#"{"command_topic":"$set","payload_install":"update"}"#,
        )),
        ..EntityDef::new(
            "update",
            "update",
            "Image update",
            Updates,
            r#"{"state_topic":"$update","value_template":"$UPDATE_TEMPLATE","icon":"mdi:docker"}"#,
        )
    },
    // SPEC §17: choosing a tag updates (or goes back) to it.
    EntityDef::new(
        "version",
        "select",
        "Version",
        Versions,
        r#"{"command_topic":"$set","command_template":"$VERSION_COMMAND","state_topic":"$versions","value_template":"{{ value_json.current }}","options":"$VERSIONS","icon":"mdi:tag-multiple"}"#,
    ),
    // SPEC §17 compose drift: onto the image the compose file names.
    EntityDef::new(
        "sync",
        "button",
        "Sync with compose file",
        UpdatesAllows("sync"),
        r#"{"command_topic":"$set","payload_press":"sync","icon":"mdi:file-sync","enabled_by_default":false}"#,
    ),
    EntityDef::new(
        "rollback",
        "button",
        "Roll back",
        UpdatesAllows("rollback"),
        r#"{"command_topic":"$set","payload_press":"rollback","icon":"mdi:undo-variant","enabled_by_default":false}"#,
    ),
    EntityDef::new(
        "last_update",
        "sensor",
        "Last update",
        Updates,
        r#"{"state_topic":"$history","json_attributes_topic":"$history","value_template":"$LAST_UPDATE_TEMPLATE","json_attributes_template":"$LAST_UPDATE_ATTRIBUTES","device_class":"enum","options":"$LAST_UPDATE_OPTIONS","entity_category":"diagnostic","icon":"mdi:history"}"#,
    ),
    EntityDef::new(
        "check_update",
        "button",
        "Check for update",
        UpdatesAllows("check"),
        r#"{"command_topic":"$set","payload_press":"check","entity_category":"config","icon":"mdi:update"}"#,
    ),
];

/// A container device's entities after its stats sensors, in order.
const CONTAINER_TAIL_ENTITIES: &[EntityDef] = &[
    EntityDef::new(
        "event",
        "event",
        "Docker event",
        Always,
        r#"{"state_topic":"$event","event_types":"$EVENT_TYPES","icon":"mdi:docker"}"#,
    ),
    // The last command's result (SPEC §5), whole as attributes: the lines
    // of `logs` are read with `state_attr(…, 'logs')`.
    EntityDef::new(
        "last_result",
        "sensor",
        "Last command",
        Always,
        r#"{"state_topic":"$result","json_attributes_topic":"$result","value_template":"$LAST_RESULT_TEMPLATE","json_attributes_template":"$LAST_RESULT_ATTRIBUTES","entity_category":"diagnostic","icon":"mdi:console"}"#,
    ),
    EntityDef::new(
        "image",
        "sensor",
        "Image",
        Always,
        r#"{"state_topic":"$state","value_template":"{{ value_json.image }}","entity_category":"diagnostic","icon":"mdi:layers"}"#,
    ),
    EntityDef::new(
        "started_at",
        "sensor",
        "Started",
        Always,
        r#"{"state_topic":"$state","value_template":"{{ value_json.started_at or 'None' }}","entity_category":"diagnostic","device_class":"timestamp"}"#,
    ),
    EntityDef::new(
        "restart_count",
        "sensor",
        "Restart count",
        Always,
        r#"{"state_topic":"$state","value_template":"{{ value_json.restart_count }}","entity_category":"diagnostic","state_class":"measurement","icon":"mdi:restart"}"#,
    ),
    EntityDef::new(
        "exit_code",
        "sensor",
        "Exit code",
        Always,
        r#"{"state_topic":"$state","value_template":"{{ value_json.exit_code }}","entity_category":"diagnostic","icon":"mdi:numeric"}"#,
    ),
    EntityDef::new(
        "ip_address",
        "sensor",
        "IP address",
        Always,
        r#"{"state_topic":"$state","value_template":"{{ value_json.ip_address or 'None' }}","entity_category":"diagnostic","icon":"mdi:ip-network"}"#,
    ),
];

fn word_id(w: &str) -> &'static str {
    match w {
        "start" => "start",
        "stop" => "stop",
        "restart" => "restart",
        "pause" => "pause",
        "unpause" => "unpause",
        "logs" => "logs",
        _ => "kill",
    }
}

fn encode(v: &Value) -> Bytes {
    // Serializing a Value cannot fail (string keys only).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// A unique id as the object part of an entity id: lowercase `[a-z0-9_]`, no
/// leading, trailing or doubled `_` (HA's `valid_entity_id`).
pub fn entity_slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    if out.is_empty() {
        out.push_str("dockside");
    }
    out
}

/// Start-up read-back: is this retained discovery config one of ours (this
/// base, published by dockside), and what owner path does it belong to?
pub fn owner_of(
    topics: &Topics,
    discovery: &DiscoveryTopics,
    topic: &str,
    payload: &[u8],
) -> Option<String> {
    let object_id = discovery.object_id_of(topic)?;
    let base_id = ha_id(&[topics.base()]);
    if object_id != base_id && !object_id.starts_with(&format!("{base_id}_")) {
        return None;
    }
    let v: Value = serde_json::from_slice(payload).ok()?;
    let o = v.get("origin").or_else(|| v.get("o"))?;
    if o.get("name").and_then(Value::as_str) != Some(ORIGIN_NAME) {
        return None;
    }
    // The topics the config points at say whose it is.
    let keys = ["state_topic", "stat_t", "command_topic", "cmd_t"];
    let mut maps: Vec<&Value> = vec![&v];
    if let Some(Value::Object(cmps)) = v.get("components").or_else(|| v.get("cmps")) {
        maps.extend(cmps.values());
    }
    let candidates = maps
        .into_iter()
        .flat_map(|m| keys.iter().filter_map(move |k| m.get(*k)));
    for c in candidates {
        let Some(segs) = c.as_str().and_then(|s| topics.parse(s)) else {
            continue;
        };
        let owner = match segs.as_slice() {
            ["status" | "info" | "set"] => topics.bridge_owner(),
            [ep, "status" | "info" | "set"] => topics.endpoint_owner(ep),
            [ep, crate::stacks::SEGMENT, stack, "state" | "set"] => topics.stack_owner(ep, stack),
            [
                ep,
                ct,
                "state" | "update" | "event" | "set" | "history" | "stats" | "result",
            ] => topics.container_owner(ep, ct),
            _ => continue,
        };
        return Some(owner);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeSet;

    fn cfg(mode: DiscoveryMode, allow: &[&str]) -> Config {
        let mut c = Config::default();
        c.homeassistant.discovery = mode;
        c.commands.allow = allow.iter().map(|s| s.to_string()).collect();
        c
    }

    fn all_words() -> Vec<String> {
        crate::command::CONTAINER_WORDS
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn facts(words: Vec<String>) -> ContainerFacts {
        ContainerFacts {
            image: "nginx:1.27".into(),
            words,
            configuration_url: None,
            stats: false,
            versions: Vec::new(),
        }
    }

    #[test]
    fn stats_sensors_only_for_sampled_containers_with_units_and_classes() {
        let d = Discovery::from_config(&cfg(DiscoveryMode::Device, &["start"])).expect("on");
        let off = d.container("local", "web", &facts(all_words()));
        assert!(!off.entities.iter().any(|e| e.id == "cpu"));
        assert!(
            off.absent.contains(&("cpu", "sensor")),
            "a stale one is dropped"
        );
        let mut f = facts(all_words());
        f.stats = true;
        let on = d.container("local", "web", &f);
        let get = |id: &str| {
            on.entities
                .iter()
                .find(|e| e.id == id)
                .expect(id)
                .config
                .clone()
        };
        let mem = get("memory");
        assert_eq!(mem["state_topic"], "dockside/local/web/stats");
        assert_eq!(mem["device_class"], "data_size");
        assert_eq!(mem["unit_of_measurement"], "B");
        assert_eq!(mem["state_class"], "measurement");
        assert_eq!(get("net_rx")["state_class"], "total_increasing");
        assert_eq!(get("cpu")["unit_of_measurement"], "%");
        let payload = json!({"cpu_percent": 12.5, "memory_bytes": 1048576, "at": "t"});
        assert_eq!(
            render(
                get("cpu")["value_template"].as_str().expect("tpl"),
                &payload
            ),
            "12.5"
        );
        assert_eq!(
            render(mem["value_template"].as_str().expect("tpl"), &payload),
            "1048576"
        );
        assert!(!on.absent.iter().any(|(id, _)| *id == "cpu"));
    }

    /// Every container device form (no words, each word alone, all words;
    /// with and without updates, stats and a Portainer link; both discovery
    /// modes) as the discovery messages it sends: pinned byte for byte in
    /// `testdata/ha_container_golden.txt`, so a change to how entities are
    /// declared cannot change what Home Assistant receives.
    fn container_forms() -> String {
        let mut out = String::new();
        for mode in [DiscoveryMode::Device, DiscoveryMode::Component] {
            for updates in [false, true] {
                let mut c = cfg(mode, crate::command::CONTAINER_WORDS);
                c.updates.enabled = updates;
                let d = Discovery::from_config(&c).expect("on");
                let mut word_sets = vec![Vec::new(), all_words()];
                word_sets.extend(all_words().into_iter().map(|w| vec![w]));
                for words in word_sets {
                    for (stats, url) in [
                        (false, None),
                        (true, Some("https://p/#!/1/docker/containers/x".to_string())),
                    ] {
                        let f = ContainerFacts {
                            image: "nginx:1.27".into(),
                            words: words.clone(),
                            configuration_url: url,
                            stats,
                            // The version select where tags are followed.
                            versions: if stats {
                                vec!["1.27".into(), "1.28".into()]
                            } else {
                                Vec::new()
                            },
                        };
                        for (t, b) in d.messages(&d.container("local", "my.app", &f)) {
                            out.push_str(&format!("{t} {}\n", String::from_utf8_lossy(&b)));
                        }
                    }
                }
            }
        }
        out
    }

    /// Every endpoint device form (commands off, on, with prune; with and
    /// without updates; Docker and Portainer facts; both modes), pinned in
    /// `testdata/ha_endpoint_golden.txt` like the container forms.
    fn endpoint_forms() -> String {
        let mut out = String::new();
        for mode in [DiscoveryMode::Device, DiscoveryMode::Component] {
            for updates in [false, true] {
                for (enabled, allow) in [
                    (false, vec!["prune"]),
                    (true, vec!["start", "stop"]),
                    (true, vec!["prune"]),
                ] {
                    let mut c = cfg(mode, &allow);
                    c.commands.enabled = enabled;
                    c.updates.enabled = updates;
                    let d = Discovery::from_config(&c).expect("on");
                    let facts = [
                        EndpointFacts {
                            name: String::new(),
                            kind: "docker".into(),
                            docker_version: None,
                            configuration_url: None,
                        },
                        EndpointFacts {
                            name: "NAS".into(),
                            kind: "portainer".into(),
                            docker_version: Some("28.5.1".into()),
                            configuration_url: Some("https://p/#!/2/docker/dashboard".into()),
                        },
                    ];
                    for f in &facts {
                        for (t, b) in d.messages(&d.endpoint("nas", f)) {
                            out.push_str(&format!("{t} {}\n", String::from_utf8_lossy(&b)));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn endpoint_discovery_is_pinned() {
        let now = endpoint_forms();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/ha_endpoint_golden.txt"
        );
        if std::env::var_os("DOCKSIDE_WRITE_GOLDEN").is_some() {
            std::fs::write(path, &now).expect("write the golden file");
        }
        let pinned = std::fs::read_to_string(path).expect("testdata/ha_endpoint_golden.txt");
        assert!(
            now == pinned,
            "endpoint discovery changed: regenerate with DOCKSIDE_WRITE_GOLDEN=1 only if intended"
        );
    }

    #[test]
    fn every_entity_definition_parses_and_names_only_known_values() {
        let vars = container_vars(&Topics::new("b"), "ep", "ct");
        fn no_placeholder(v: &Value) -> bool {
            match v {
                Value::String(s) => !s.starts_with('$'),
                Value::Array(a) => a.iter().all(no_placeholder),
                Value::Object(m) => m.values().all(no_placeholder),
                _ => true,
            }
        }
        let endpoint_vars: BTreeMap<&'static str, Value> =
            ["$info", "$status", "$set"].map(|k| (k, json!("t"))).into();
        let tables = [
            (CONTAINER_ENTITIES, &vars),
            (CONTAINER_TAIL_ENTITIES, &vars),
            (ENDPOINT_ENTITIES, &endpoint_vars),
            (ENDPOINT_TAIL_ENTITIES, &endpoint_vars),
        ];
        for (defs, vars) in tables {
            for d in defs {
                let raw = std::iter::once(d.config).chain(d.when_allowed.map(|(_, x)| x));
                for text in raw {
                    let mut v: Value = serde_json::from_str(text).expect(d.id);
                    assert!(v.is_object(), "{}", d.id);
                    fill(&mut v, vars);
                    assert!(no_placeholder(&v), "{}: {v}", d.id);
                }
            }
        }
    }

    #[test]
    fn container_discovery_is_pinned() {
        let now = container_forms();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/ha_container_golden.txt"
        );
        if std::env::var_os("DOCKSIDE_WRITE_GOLDEN").is_some() {
            std::fs::write(path, &now).expect("write the golden file");
        }
        let pinned = std::fs::read_to_string(path).expect("testdata/ha_container_golden.txt");
        assert!(
            now == pinned,
            "container discovery changed: regenerate with DOCKSIDE_WRITE_GOLDEN=1 only if intended"
        );
    }

    fn devices(d: &Discovery) -> Vec<Device> {
        vec![
            d.bridge(),
            d.endpoint(
                "local",
                &EndpointFacts {
                    name: "local".into(),
                    kind: "docker".into(),
                    docker_version: Some("28.2.2".into()),
                    configuration_url: None,
                },
            ),
            d.container("local", "my.app", &facts(all_words())),
            d.container("local", "web", &facts(Vec::new())),
        ]
    }

    fn parse(b: &Bytes) -> Value {
        serde_json::from_slice(b).expect("discovery payload is JSON")
    }

    /// HA 2026 `DEVICE_DISCOVERY_SCHEMA`: anything else at the root rejects the device.
    const ROOT_KEYS: &[&str] = &[
        "device",
        "origin",
        "components",
        "availability",
        "availability_mode",
        "availability_template",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "state_topic",
        "command_topic",
        "qos",
        "encoding",
        "message_expiry_interval",
    ];

    fn required(platform: &str) -> &'static [&'static str] {
        match platform {
            "binary_sensor" | "sensor" => &["state_topic"],
            "switch" | "button" => &["command_topic"],
            "event" => &["state_topic", "event_types"],
            "update" => &["state_topic"],
            _ => panic!("unexpected platform {platform}"),
        }
    }

    fn valid_id(s: &str) -> bool {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    fn valid_entity_id(s: &str) -> bool {
        // HA's valid_entity_id without look-around: domain.object, lowercase,
        // no leading/trailing/double underscore in either part.
        let Some((d, o)) = s.split_once('.') else {
            return false;
        };
        [d, o].iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !p.starts_with('_')
                && !p.ends_with('_')
                && !p.contains("__")
        })
    }

    #[test]
    fn device_form_roots_and_components_are_valid() {
        let d = Discovery::from_config(&cfg(DiscoveryMode::Device, &[])).expect("enabled");
        let mut uids = BTreeSet::new();
        for dev in devices(&d) {
            let msgs = d.messages(&dev);
            assert_eq!(msgs.len(), 1);
            let (topic, payload) = &msgs[0];
            assert_eq!(
                d.discovery.object_id_of(topic),
                Some(dev.device_id.as_str())
            );
            assert!(valid_id(&dev.device_id), "{}", dev.device_id);
            let v = parse(payload);
            let root = v.as_object().expect("object");
            for k in root.keys() {
                assert!(ROOT_KEYS.contains(&k.as_str()), "root key {k} not allowed");
            }
            for k in ["device", "origin", "components"] {
                assert!(root.contains_key(k), "missing {k}");
            }
            assert_eq!(v["origin"]["name"], "dockside");
            assert!(v["origin"]["sw_version"].is_string());
            assert!(
                v["origin"]["support_url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("https://"))
            );
            assert!(v["device"]["identifiers"][0].is_string());
            for (cid, c) in v["components"].as_object().expect("cmps") {
                assert!(valid_id(cid), "component id {cid}");
                let p = c["platform"].as_str().expect("platform");
                if c.as_object().is_some_and(|m| m.len() == 1) {
                    // A removal stub: only a platform, only for absent optional ones.
                    assert!(dev.absent.contains(&(cid.as_str(), p)), "{cid}");
                    continue;
                }
                for k in required(p) {
                    assert!(c.get(*k).is_some(), "{cid}: {p} needs {k}");
                }
                let uid = c["unique_id"].as_str().expect("unique_id");
                assert!(valid_id(uid), "{uid}");
                assert!(uids.insert(uid.to_string()), "duplicate unique_id {uid}");
                assert_eq!(uid, format!("{}_{cid}", dev.device_id));
                let def = c["default_entity_id"].as_str().expect("default_entity_id");
                assert!(valid_entity_id(def), "{def}");
                assert!(def.starts_with(&format!("{p}.")));
                assert!(c.get("object_id").is_none());
                if c.get("device_class") == Some(&json!("enum")) {
                    assert!(
                        c.get("state_class").is_none() && c.get("unit_of_measurement").is_none()
                    );
                }
                if p == "event" {
                    assert_eq!(c["event_types"], json!(EVENT_TYPES));
                }
            }
        }
    }

    #[test]
    fn container_availability_is_bridge_and_endpoint() {
        let d = Discovery::from_config(&cfg(DiscoveryMode::Device, &[])).expect("enabled");
        let dev = d.container("local", "web", &facts(Vec::new()));
        let v = parse(&d.messages(&dev)[0].1);
        assert_eq!(
            v["availability"],
            json!([{"topic": "dockside/status"}, {"topic": "dockside/local/status"}])
        );
        assert_eq!(v["availability_mode"], "all");
        assert_eq!(v["device"]["via_device"], "dockside_local");
        assert_eq!(v["device"]["identifiers"], json!(["dockside_local_web"]));
        let ep = d.endpoint("local", &EndpointFacts::default());
        let v = parse(&d.messages(&ep)[0].1);
        assert_eq!(v["device"]["via_device"], "dockside");
        assert_eq!(v["components"]["reachable"].get("availability"), None);
        assert_eq!(
            v["components"]["containers_running"]["availability"],
            json!([{"topic": "dockside/status"}, {"topic": "dockside/local/status"}])
        );
    }

    #[test]
    fn command_entities_follow_the_allowed_words() {
        let d = Discovery::from_config(&cfg(DiscoveryMode::Device, &[])).expect("enabled");
        let ids = |words: Vec<String>| -> BTreeSet<String> {
            d.container("local", "web", &facts(words))
                .entities
                .iter()
                .map(|e| e.id.to_string())
                .collect()
        };
        let none = ids(Vec::new());
        assert!(!none.contains("power") && !none.contains("restart"));
        // ...and the device form names them as removal stubs.
        let dev = d.container("local", "web", &facts(Vec::new()));
        let v = parse(&d.messages(&dev)[0].1);
        assert_eq!(v["components"]["power"], json!({"platform": "switch"}));
        assert_eq!(v["components"]["restart"], json!({"platform": "button"}));
        let dev = d.container("local", "web", &facts(all_words()));
        let v = parse(&d.messages(&dev)[0].1);
        assert!(v["components"]["restart"]["unique_id"].is_string());
        let all = ids(all_words());
        for c in [
            "power",
            "restart",
            "pause",
            "unpause",
            "kill",
            "check_update",
        ] {
            assert!(all.contains(c), "{c}");
        }
        // start without stop: no switch.
        assert!(!ids(vec!["start".into(), "restart".into()]).contains("power"));
        let dev = d.container("local", "web", &facts(all_words()));
        let kill = dev.entities.iter().find(|e| e.id == "kill").expect("kill");
        assert_eq!(kill.config["enabled_by_default"], json!(false));
        let upd = dev.entities.iter().find(|e| e.id == "update").expect("u");
        assert_eq!(upd.config["payload_install"], "update");
        let dev = d.container("local", "web", &facts(vec!["start".into()]));
        let upd = dev.entities.iter().find(|e| e.id == "update").expect("u");
        assert!(upd.config.get("command_topic").is_none());
    }

    #[test]
    fn container_words_respect_labels_protection_and_settings() {
        let mut c = cfg(
            DiscoveryMode::Device,
            &["start", "stop", "restart", "check"],
        );
        let d = Discovery::from_config(&c).expect("enabled");
        use crate::command::Subject;
        let plain = Subject::default();
        assert_eq!(d.container_words(&plain).len(), 4);
        assert!(
            d.container_words(&Subject {
                label_off: true,
                ..plain
            })
            .is_empty()
        );
        assert_eq!(
            d.container_words(&Subject {
                protected: true,
                ..plain
            }),
            vec!["start", "check"]
        );
        assert_eq!(
            d.container_words(&Subject { own: true, ..plain }),
            vec!["start", "check"]
        );
        c.updates.enabled = false;
        let d = Discovery::from_config(&c).expect("enabled");
        assert_eq!(d.container_words(&plain), vec!["start", "stop", "restart"]);
        c.commands.enabled = false;
        let d = Discovery::from_config(&c).expect("enabled");
        assert!(d.container_words(&plain).is_empty());
        c.homeassistant.enabled = false;
        assert!(Discovery::from_config(&c).is_none());
    }

    #[test]
    fn component_form_has_one_topic_per_entity_with_the_same_ids() {
        let dd = Discovery::from_config(&cfg(DiscoveryMode::Device, &[])).expect("on");
        let dc = Discovery::from_config(&cfg(DiscoveryMode::Component, &[])).expect("on");
        let f = facts(all_words());
        let dev = dd.container("local", "my.app", &f);
        let device_uids: BTreeSet<String> = parse(&dd.messages(&dev)[0].1)["components"]
            .as_object()
            .expect("cmps")
            .values()
            // Absent optional components carry only their platform.
            .filter_map(|c| c["unique_id"].as_str().map(str::to_string))
            .collect();
        let msgs = dc.messages(&dc.container("local", "my.app", &f));
        assert_eq!(msgs.len(), dev.entities.len());
        let mut uids = BTreeSet::new();
        for (topic, payload) in &msgs {
            let v = parse(payload);
            let p = topic.split('/').nth(1).expect("platform");
            // Object id = unique id: never the device form's discovery id.
            assert_eq!(
                topic,
                &format!(
                    "homeassistant/{p}/{}/config",
                    v["unique_id"].as_str().expect("uid")
                )
            );
            assert!(v.get("platform").is_none());
            assert_eq!(v["availability_mode"], "all");
            assert_eq!(v["origin"]["name"], "dockside");
            assert_eq!(v["device"]["identifiers"], json!(["dockside_local_my_app"]));
            uids.insert(v["unique_id"].as_str().unwrap_or_default().to_string());
        }
        assert_eq!(uids, device_uids);
    }

    #[test]
    fn readback_recognises_only_this_base_and_dockside() {
        let topics = Topics::new("dockside");
        for mode in [DiscoveryMode::Device, DiscoveryMode::Component] {
            let d = Discovery::from_config(&cfg(mode, &["start", "stop"])).expect("on");
            for dev in devices(&d) {
                for (topic, payload) in d.messages(&dev) {
                    let owner = owner_of(&topics, &d.discovery, &topic, &payload)
                        .unwrap_or_else(|| panic!("not recognised: {topic}"));
                    let expect = if dev.device_id == "dockside" {
                        topics.bridge_owner()
                    } else if dev.device_id == "dockside_local" {
                        topics.endpoint_owner("local")
                    } else if dev.device_id == "dockside_local_web" {
                        topics.container_owner("local", "web")
                    } else {
                        topics.container_owner("local", "my.app")
                    };
                    assert_eq!(owner, expect, "{topic}");
                    // Another base on the same broker never claims it.
                    assert_eq!(
                        owner_of(&Topics::new("other"), &d.discovery, &topic, &payload),
                        None
                    );
                }
            }
        }
        for mode in [DiscoveryMode::Device, DiscoveryMode::Component] {
            let d = Discovery::from_config(&cfg(mode, &["start", "stop"])).expect("on");
            let dev = d.stack("local", "media", &["start".to_string()]);
            for (topic, payload) in d.messages(&dev) {
                assert_eq!(
                    owner_of(&topics, &d.discovery, &topic, &payload).as_deref(),
                    Some(topics.stack_owner("local", "media").as_str()),
                    "{topic}"
                );
            }
        }
        let d = DiscoveryTopics::new("homeassistant");
        let foreign = br#"{"device":{"identifiers":["x"]},"origin":{"name":"zigbee2mqtt"},
            "components":{"a":{"platform":"sensor","state_topic":"dockside/local/web/state"}}}"#;
        assert_eq!(
            owner_of(
                &topics,
                &d,
                "homeassistant/device/dockside_x/config",
                foreign
            ),
            None
        );
        assert_eq!(
            owner_of(
                &topics,
                &d,
                "homeassistant/device/dockside_x/config",
                b"\xff"
            ),
            None
        );
    }

    #[test]
    fn entity_slugs_are_valid_entity_ids() {
        for (i, o) in [
            (
                "dockside_local_nginx_running",
                "dockside_local_nginx_running",
            ),
            (
                "Dock-Side_local_my--app_power",
                "dock_side_local_my_app_power",
            ),
            ("__x__", "x"),
            ("---", "dockside"),
        ] {
            assert_eq!(entity_slug(i), o);
            assert!(valid_entity_id(&format!("sensor.{}", entity_slug(i))));
        }
    }

    /// Renders a discovery template the way HA would (Jinja semantics, via
    /// minijinja) against a payload dockside publishes.
    fn render(tpl: &str, payload: &Value) -> String {
        let mut env = minijinja::Environment::new();
        env.add_template("t", tpl).expect("template parses");
        env.get_template("t")
            .expect("template")
            .render(minijinja::context! { value_json => payload })
            .expect("template renders")
    }

    #[test]
    fn the_last_command_attributes_stay_under_has_16_kib() {
        let lines: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"stream":"stdout","time":"2026-12-01T10:00:00.123456789Z",
                            "text": format!("{i} {}", "x".repeat(100))})
            })
            .collect();
        let result = json!({"request_id":"r","action":"logs","ok":true,"logs":lines,
                            "truncated":false,"duration_ms":3,"at":"2026-12-01T10:00:01Z"});
        let out = render(LAST_RESULT_ATTRIBUTES, &result);
        let attrs: Value = serde_json::from_str(&out).expect("JSON attributes");
        assert!(out.len() < 13_000, "{}", out.len());
        let kept = attrs["logs"].as_array().expect("logs");
        assert!(kept.len() > 50, "{}", kept.len());
        assert!(
            kept.last()
                .is_some_and(|l| l["text"].as_str().is_some_and(|t| t.starts_with("999 ")))
        );
        assert_eq!(attrs["truncated"], true);
        assert_eq!(attrs["request_id"], "r");
        // Other results pass whole.
        let stop = json!({"action":"stop","ok":true,"state":"exited"});
        let attrs: Value =
            serde_json::from_str(&render(LAST_RESULT_ATTRIBUTES, &stop)).expect("json");
        assert_eq!(attrs, stop);
    }

    fn container_templates(d: &Discovery) -> Vec<(String, Value)> {
        let dev = d.container("local", "web", &facts(all_words()));
        dev.entities
            .iter()
            .filter(|e| e.config.get("state_topic") == Some(&json!("dockside/local/web/state")))
            .map(|e| (e.id.to_string(), Value::Object(e.config.clone())))
            .collect()
    }

    fn sample_state(state: &str, health: &str, running: bool, started: Value) -> Value {
        json!({"name":"web","id":"0123","endpoint":"local","image":"nginx:1.27","image_id":"sha256:ab",
               "state":state,"health":health,"running":running,"paused":state=="paused",
               "restarting":state=="restarting","dead":state=="dead","oom_killed":false,
               "exit_code":0,"restart_count":3,"created":"2026-11-01T10:00:00Z",
               "started_at":started,"finished_at":null,"ip_address":null,"mac_address":null,
               "gateway":null,"ports":[],"stack":null,"service":null})
    }

    #[test]
    fn state_templates_render_a_valid_value_for_every_state() {
        let d = Discovery::from_config(&cfg(DiscoveryMode::Device, &[])).expect("on");
        for state in STATE_OPTIONS {
            for health in HEALTH_OPTIONS {
                for started in [json!(null), json!("2026-11-20T08:00:00Z")] {
                    let running = *state == "running";
                    let p = sample_state(state, health, running, started.clone());
                    for (id, c) in container_templates(&d) {
                        let out = render(c["value_template"].as_str().expect("tpl"), &p);
                        if let Some(opts) = c.get("options") {
                            assert!(
                                opts.as_array().expect("options").contains(&json!(out)),
                                "{id}: {out} not in options"
                            );
                        }
                        match id.as_str() {
                            "running" | "power" => {
                                assert_eq!(out, if running { "ON" } else { "OFF" })
                            }
                            "started_at" if started.is_null() => assert_eq!(out, "None"),
                            "started_at" => assert_eq!(out, "2026-11-20T08:00:00Z"),
                            "ip_address" => assert_eq!(out, "None"),
                            "restart_count" => assert_eq!(out, "3"),
                            _ => assert!(!out.is_empty(), "{id}"),
                        }
                    }
                }
            }
        }
    }

    fn update_json(payload: Value) -> Map<String, Value> {
        let out = render(UPDATE_TEMPLATE, &payload);
        match serde_json::from_str(&out) {
            Ok(Value::Object(m)) => m,
            other => panic!("update template gave {out}: {other:?}"),
        }
    }

    #[test]
    fn update_template_emits_only_keys_ha_accepts_and_never_null() {
        let allowed = [
            "installed_version",
            "latest_version",
            "title",
            "release_summary",
            "release_url",
            "entity_picture",
            "in_progress",
            "update_percentage",
        ];
        let statuses = [
            "up_to_date",
            "update_available",
            "skipped",
            "pinned",
            "local_build",
            "unknown",
            "error",
        ];
        for status in statuses {
            for versions in [false, true] {
                for in_progress in [false, true] {
                    let mut p = json!({"status": status, "update_available": status == "update_available",
                                       "image": "nginx:1.27", "checked_at": "2026-11-22T06:00:00Z",
                                       "in_progress": in_progress, "local_digest": "sha256:aa",
                                       "remote_digest": "sha256:bb"});
                    if versions {
                        p["installed_version"] = json!("1.27.2");
                        p["latest_version"] = json!(if status == "update_available" {
                            "1.27.3"
                        } else {
                            "1.27.2"
                        });
                    }
                    if status == "error" || status == "unknown" {
                        p["error"] = json!("x".repeat(400));
                    }
                    if in_progress {
                        p["progress"] = json!(40);
                    }
                    let m = update_json(p);
                    for (k, v) in &m {
                        assert!(allowed.contains(&k.as_str()), "{status}: key {k}");
                        assert!(!v.is_null(), "{status}: {k} is null");
                    }
                    assert_eq!(m["in_progress"], json!(in_progress));
                    assert_eq!(m["title"], "nginx:1.27");
                    assert_eq!(m.contains_key("installed_version"), versions);
                    if let Some(s) = m.get("release_summary") {
                        assert!(s.as_str().is_some_and(|s| s.chars().count() <= 255));
                    }
                    if in_progress {
                        assert_eq!(m["update_percentage"], json!(40));
                    }
                    if versions && status == "update_available" {
                        assert_ne!(m["installed_version"], m["latest_version"]);
                    }
                }
            }
        }
        // Quotes and backslashes in values stay valid JSON.
        let m = update_json(
            json!({"status":"error","image":"a\"b\\c","in_progress":false,
                                   "error":"bad \"thing\"\n"}),
        );
        assert_eq!(m["title"], "a\"b\\c");
        // SPEC §17: the title and release link; a skipped version shows no
        // update; a blocked one says why.
        let m = update_json(json!({"status":"update_available","update_available":true,
            "image":"ghcr.io/x/app:1.2","title":"App","installed_version":"1.2","latest_version":"1.3",
            "release_url":"https://github.com/x/app/releases/tag/1.3","in_progress":false,
            "blocked":"version 1.3 was rolled back: unhealthy"}));
        assert_eq!(m["title"], "App");
        assert_eq!(
            m["release_url"],
            "https://github.com/x/app/releases/tag/1.3"
        );
        assert_eq!(m["latest_version"], "1.3");
        assert_eq!(
            m["release_summary"],
            "version 1.3 was rolled back: unhealthy"
        );
        let m = update_json(
            json!({"status":"skipped","update_available":false,"image":"app:1.2",
            "installed_version":"1.2","latest_version":"1.3","in_progress":false}),
        );
        assert_eq!(m["latest_version"], m["installed_version"]);
        assert_eq!(m["release_summary"], "Version 1.3 is skipped.");
    }

    #[test]
    fn endpoint_templates_render_counts() {
        let d = Discovery::from_config(&cfg(DiscoveryMode::Device, &[])).expect("on");
        let info = json!({"id":"local","name":"local","kind":"docker","reachable":true,
            "docker_version":null,"containers":{"total":12,"running":10,"paused":0,"stopped":2,
            "healthy":5,"unhealthy":1,"problems":2},"images":null,"volumes":7,"stacks":3,
            "updates_available":4});
        let ep = d.endpoint("local", &EndpointFacts::default());
        for e in &ep.entities {
            let Some(tpl) = e.config.get("value_template").and_then(Value::as_str) else {
                continue;
            };
            let out = render(tpl, &info);
            match e.id {
                "containers_running" => assert_eq!(out, "10"),
                "containers_total" => assert_eq!(out, "12"),
                "problems" => assert_eq!(out, "2"),
                "updates_available" => assert_eq!(out, "4"),
                "images" | "docker_version" => assert_eq!(out, "None"),
                _ => assert!(!out.is_empty()),
            }
        }
        let bridge = d.bridge();
        let info = json!({"version":"0.1.0","started_at":"x","endpoints":["a","b"],
            "endpoints_connected":1,"events_per_minute":42,"outbox_depth":0,"broker_reconnects":3,
            "problems":1,"updates_available":5});
        let old = json!({"version":"0.1.0","started_at":"x","endpoints":["a","b"]});
        for e in &bridge.entities {
            if let Some(tpl) = e.config.get("value_template").and_then(Value::as_str) {
                let out = render(tpl, &info);
                let want = match e.id {
                    "version" => "0.1.0",
                    "endpoints" => "2",
                    "endpoints_connected" => "1",
                    "events_per_minute" => "42",
                    "outbox_depth" => "0",
                    "broker_reconnects" => "3",
                    "problems" => "1",
                    "updates_available" => "5",
                    other => panic!("unexpected {other}"),
                };
                assert_eq!(out, want, "{}", e.id);
                // An info from before the diagnostics: `None`, never an error.
                let out = render(tpl, &old);
                assert!(!out.is_empty(), "{}", e.id);
            }
        }
    }
}
