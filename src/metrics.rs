//! Prometheus metrics (SPEC §12) and the health verdict behind `/healthz`.
//! One process-wide set: the modules that see a thing happen count it here;
//! `/metrics` only encodes, so it never waits on an engine or the broker.
//! Names follow Prometheus conventions: `dockside_` prefix, `_total` for
//! counters, base units (`_seconds`).

use std::sync::{Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Registry hosts counted apart at most (image references come from outside).
const MAX_REGISTRIES: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub action: String,
    /// `ok` or the result's `code`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabel {
    pub registry: String,
}

pub struct Metrics {
    registry: Registry,
    pub events_received: Family<EndpointLabel, Counter>,
    pub events_published: Family<EndpointLabel, Counter>,
    pub state_latency: Histogram,
    pub outbox_depth: Gauge,
    pub outbox_dropped: Counter,
    pub mqtt_connected: Gauge,
    pub mqtt_reconnects: Counter,
    pub commands_received: Counter,
    pub command_reads_paused: Counter,
    pub endpoint_up: Family<EndpointLabel, Gauge>,
    /// Containers with the problem flag (SPEC §13), per endpoint.
    pub containers_problem: Family<EndpointLabel, Gauge>,
    /// Containers with an update available (SPEC §17), per endpoint.
    pub updates_available: Family<EndpointLabel, Gauge>,
    pub commands: Family<CommandLabels, Counter>,
    pub registry_requests: Family<RegistryLabel, Counter>,
    pub registry_rate_limited: Family<RegistryLabel, Counter>,
    pub registry_remaining: Family<RegistryLabel, Gauge>,
    pub update_rounds: Counter,
    /// Unix time of the last image update round that asked a registry.
    pub update_last_round: Gauge,
    /// Image references whose last registry check failed.
    pub update_round_errors: Gauge,
    /// Unix time of the last Docker event, per endpoint (the health page).
    pub last_event: Family<EndpointLabel, Gauge>,
    pub stats_calls: Counter,
    pub task_restarts: Counter,
    health: Mutex<Health>,
    /// Events received, all endpoints (for the bridge's events per minute).
    pub events_total: std::sync::atomic::AtomicU64,
    /// Reconnects since the process started (the counter above is the same).
    pub reconnects_total: std::sync::atomic::AtomicU64,
    registries_seen: Mutex<std::collections::HashSet<String>>,
}

/// What `/healthz` and `dockside health` say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Healthy, with something the user should know (an engine unreachable:
    /// dockside reports it, so it is not dockside's own fault).
    OkBut(String),
    Unhealthy(String),
}

impl Health {
    pub fn is_ok(&self) -> bool {
        !matches!(self, Health::Unhealthy(_))
    }

    /// The one line `/healthz` and `dockside health` print.
    pub fn line(&self) -> String {
        match self {
            Health::Ok => "ok".into(),
            Health::OkBut(note) => format!("ok; {note}"),
            Health::Unhealthy(why) => format!("unhealthy: {why}"),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::Unhealthy("starting".into())
    }
}

/// `register!(m, "name", "help" => field; …)`: each metric under its name.
macro_rules! register {
    ($m:ident, $($name:literal, $help:literal => $field:ident;)*) => {
        $( $m.registry.register($name, $help, $m.$field.clone()); )*
    };
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            registry: Registry::with_prefix("dockside"),
            events_received: Family::default(),
            events_published: Family::default(),
            // 0.5 ms … ~8 s: one-by-one changes take milliseconds, mass stops seconds.
            state_latency: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15),
            ),
            outbox_depth: Gauge::default(),
            outbox_dropped: Counter::default(),
            mqtt_connected: Gauge::default(),
            mqtt_reconnects: Counter::default(),
            commands_received: Counter::default(),
            command_reads_paused: Counter::default(),
            endpoint_up: Family::default(),
            containers_problem: Family::default(),
            updates_available: Family::default(),
            commands: Family::default(),
            registry_requests: Family::default(),
            registry_rate_limited: Family::default(),
            registry_remaining: Family::default(),
            update_rounds: Counter::default(),
            update_last_round: Gauge::default(),
            update_round_errors: Gauge::default(),
            last_event: Family::default(),
            stats_calls: Counter::default(),
            task_restarts: Counter::default(),
            health: Mutex::new(Health::default()),
            events_total: Default::default(),
            reconnects_total: Default::default(),
            registries_seen: Mutex::default(),
        };
        let mut m = m;
        register!(m,
            "events_received", "Docker events received, per endpoint" => events_received;
            "events_published", "Docker events published to MQTT, per endpoint" => events_published;
            "state_publish_latency_seconds", "Engine event time to its container state being handed to the MQTT client" => state_latency;
            "outbox_messages", "Messages waiting in the outbox for the broker" => outbox_depth;
            "outbox_dropped", "Messages dropped because the outbox was full" => outbox_dropped;
            "mqtt_connected", "1 while connected to the MQTT broker" => mqtt_connected;
            "mqtt_reconnects", "Connections to the MQTT broker after the first" => mqtt_reconnects;
            "commands_received", "Messages that arrived on the command topics" => commands_received;
            "command_reads_paused", "Times the reading of commands paused until results went out (flow control)" => command_reads_paused;
            "endpoint_up", "1 while the endpoint's engine is reachable" => endpoint_up;
            "containers_problem", "Containers whose problem flag is on" => containers_problem;
            "updates_available", "Containers with an image update available" => updates_available;
            "commands", "Command results sent, by action and result code" => commands;
            "registry_requests", "Requests to image registries, per registry host" => registry_requests;
            "registry_rate_limited", "Registry answers 429/503 or a rate-limit remaining of 0, per registry host" => registry_rate_limited;
            "registry_rate_limit_remaining", "The last ratelimit-remaining a registry announced" => registry_remaining;
            "update_rounds", "Image update rounds run" => update_rounds;
            "update_last_round_seconds", "Unix time of the last image update round that asked a registry" => update_last_round;
            "update_round_errors", "Image references whose last registry check failed" => update_round_errors;
            "last_event_seconds", "Unix time of the endpoint's last Docker event" => last_event;
            "stats_calls", "One-shot container stats calls made" => stats_calls;
            "task_restarts", "Supervised tasks restarted after a panic or an unexpected end" => task_restarts;
        );
        m
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn endpoint(ep: &str) -> EndpointLabel {
        EndpointLabel {
            endpoint: ep.to_string(),
        }
    }

    /// A registry host's label; beyond [`MAX_REGISTRIES`] hosts, `other`.
    pub fn registry(&self, host: &str) -> RegistryLabel {
        let mut seen = self
            .registries_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let known = seen.contains(host) || seen.len() < MAX_REGISTRIES;
        if known {
            seen.insert(host.to_string());
        }
        RegistryLabel {
            registry: if known {
                host.to_string()
            } else {
                "other".into()
            },
        }
    }

    /// State latency of an event stamped `event_nanos` (engine clock); a
    /// replayed old event (catch-up after a restart) is not a latency.
    pub fn observe_since(&self, event_nanos: i64) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let late = now.saturating_sub(event_nanos).max(0) as f64 / 1e9;
        if late < 60.0 {
            self.state_latency.observe(late);
        }
    }

    pub fn count_command(&self, action: Option<&str>, code: Option<&str>) {
        let l = CommandLabels {
            action: action.unwrap_or("unknown").to_string(),
            result: code.unwrap_or("ok").to_string(),
        };
        self.commands.get_or_create(&l).inc();
    }

    pub fn set_health(&self, h: Health) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }

    pub fn health(&self) -> Health {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = Metrics::new();
        m.events_received
            .get_or_create(&Metrics::endpoint("local"))
            .inc();
        m.count_command(Some("restart"), None);
        m.state_latency.observe(0.002);
        let text = m.encode();
        assert!(
            text.contains("dockside_events_received_total{endpoint=\"local\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dockside_commands_total{action=\"restart\",result=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE dockside_state_publish_latency_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("dockside_mqtt_connected 0"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        for i in 0..100 {
            let l = m.registry(&format!("r{i}.example"));
            m.registry_requests.get_or_create(&l).inc();
        }
        assert_eq!(m.registry("r99.example").registry, "other");
        assert_eq!(m.registry("r1.example").registry, "r1.example");
    }
}
