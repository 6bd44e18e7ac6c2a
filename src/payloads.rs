//! The JSON payloads of SPEC §4 (container state, endpoint info, events) and
//! how they are built from Docker's answers.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

use crate::docker::models::{ContainerInspect, Event};

pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// SPEC §4.1. Field order is the wire order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerState {
    pub name: String,
    pub id: String,
    pub endpoint: String,
    pub image: String,
    pub image_id: String,
    pub state: String,
    pub health: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    pub dead: bool,
    pub oom_killed: bool,
    pub exit_code: i64,
    pub restart_count: i64,
    pub created: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub ip_address: Option<String>,
    pub mac_address: Option<String>,
    pub gateway: Option<String>,
    pub ports: Vec<String>,
    pub stack: Option<String>,
    pub service: Option<String>,
    /// SPEC §13: something an automation should alert on, and why
    /// (`crate::problem::assess`; set by the endpoint when it publishes).
    pub problem: bool,
    pub problem_reason: Option<String>,
}

/// SPEC §4.1 `state` values (also the HA enum sensor's options).
pub const STATES: &[&str] = &[
    "created",
    "running",
    "paused",
    "restarting",
    "removing",
    "exited",
    "dead",
];
/// SPEC §4.1 `health` values.
pub const HEALTHS: &[&str] = &["none", "starting", "healthy", "unhealthy"];

/// Docker's zero time and empty strings become `None`.
fn time_or_null(t: Option<&str>) -> Option<String> {
    let t = t?.trim();
    if t.is_empty() || t.starts_with("0001-01-01") {
        None
    } else {
        Some(t.to_string())
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl ContainerState {
    pub fn from_inspect(endpoint: &str, c: &ContainerInspect) -> Self {
        let st = &c.state;
        let state = if STATES.contains(&st.status.as_str()) {
            st.status.clone()
        } else if st.running {
            "running".into()
        } else {
            "exited".into()
        };
        let health = st
            .health
            .as_ref()
            .map(|h| h.status.as_str())
            .filter(|h| HEALTHS.contains(h))
            .unwrap_or("none")
            .to_string();
        let net = c.network_settings.networks.values().next();
        let mut ports: Vec<String> = c
            .network_settings
            .ports
            .iter()
            .flat_map(|(container_port, bindings)| {
                bindings.iter().flatten().filter_map(move |b| {
                    if b.host_port.is_empty() {
                        return None;
                    }
                    let any = b.host_ip.is_empty() || b.host_ip == "0.0.0.0" || b.host_ip == "::";
                    Some(if any {
                        format!("{}:{}", b.host_port, container_port)
                    } else if b.host_ip.contains(':') {
                        format!("[{}]:{}:{}", b.host_ip, b.host_port, container_port)
                    } else {
                        format!("{}:{}:{}", b.host_ip, b.host_port, container_port)
                    })
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        let labels = &c.config.labels;
        Self {
            name: c.name.trim_start_matches('/').to_string(),
            id: c.id.clone(),
            endpoint: endpoint.to_string(),
            image: c.config.image.clone(),
            image_id: c.image.clone(),
            state,
            health,
            running: st.running,
            paused: st.paused,
            restarting: st.restarting,
            dead: st.dead,
            oom_killed: st.oom_killed,
            exit_code: st.exit_code,
            restart_count: c.restart_count,
            created: time_or_null(c.created.as_deref()),
            started_at: time_or_null(st.started_at.as_deref()),
            finished_at: time_or_null(st.finished_at.as_deref()),
            ip_address: net.and_then(|n| non_empty(&n.ip_address)),
            mac_address: net.and_then(|n| non_empty(&n.mac_address)),
            gateway: net.and_then(|n| non_empty(&n.gateway)),
            ports,
            stack: labels.get(COMPOSE_PROJECT).and_then(|s| non_empty(s)),
            service: labels.get(COMPOSE_SERVICE).and_then(|s| non_empty(s)),
            problem: false,
            problem_reason: None,
        }
    }

    /// One plain value per key, for `flat_topics` (Jeedom): strings as they are,
    /// numbers and booleans as text, lists comma-joined, `null` as an empty payload.
    pub fn flat_values(&self) -> Vec<(String, String)> {
        let Ok(serde_json::Value::Object(map)) = serde_json::to_value(self) else {
            return Vec::new();
        };
        map.into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Array(items) => items
                        .iter()
                        .map(|i| {
                            i.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| i.to_string())
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect()
    }
}

/// SPEC §4.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointInfo {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub reachable: bool,
    pub docker_version: Option<String>,
    pub api_version: Option<String>,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub cpus: Option<i64>,
    pub memory_bytes: Option<i64>,
    pub containers: ContainerCounts,
    pub images: Option<i64>,
    pub volumes: Option<i64>,
    pub stacks: i64,
    pub public_url: Option<String>,
    pub portainer_id: Option<i64>,
    /// Swarm services (0 when the engine is no swarm manager).
    pub services: Option<i64>,
    /// Disk usage, refreshed at most hourly (SPEC §13).
    pub disk: Option<DiskUsage>,
    /// Containers with an image update available (with update checks on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates_available: Option<i64>,
    /// While unreachable: why (engine down, refused credentials, an API
    /// version outside what dockside speaks). Absent when reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// SPEC §13 `disk` of `<ep>/info`, from `GET /system/df`, as `docker system
/// df` counts it: reclaimable = images no container uses (less what they
/// share), stopped containers' layers, unused volumes, build cache not in use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub images_bytes: i64,
    pub containers_bytes: i64,
    pub volumes_bytes: i64,
    pub build_cache_bytes: i64,
    pub reclaimable_bytes: i64,
    pub at: String,
}

impl DiskUsage {
    pub fn of(df: &crate::docker::models::SystemDf, at: String) -> Self {
        let pos = |v: i64| v.max(0);
        let containers_bytes = df.containers.iter().map(|c| pos(c.size_rw)).sum();
        let volumes_bytes = df
            .volumes
            .iter()
            .filter_map(|v| v.usage_data.as_ref())
            .map(|u| pos(u.size))
            .sum();
        let build_cache_bytes = df
            .build_cache
            .iter()
            .filter(|b| !b.shared)
            .map(|b| pos(b.size))
            .sum();
        let unused_images: i64 = df
            .images
            .iter()
            .filter(|i| i.containers == 0)
            .map(|i| pos(i.size - pos(i.shared_size)))
            .sum();
        let stopped: i64 = df
            .containers
            .iter()
            .filter(|c| c.state != "running" && c.state != "paused")
            .map(|c| pos(c.size_rw))
            .sum();
        let unused_volumes: i64 = df
            .volumes
            .iter()
            .filter_map(|v| v.usage_data.as_ref())
            .filter(|u| u.ref_count == 0)
            .map(|u| pos(u.size))
            .sum();
        let idle_cache: i64 = df
            .build_cache
            .iter()
            .filter(|b| !b.in_use && !b.shared)
            .map(|b| pos(b.size))
            .sum();
        Self {
            images_bytes: pos(df.layers_size),
            containers_bytes,
            volumes_bytes,
            build_cache_bytes,
            reclaimable_bytes: unused_images.min(pos(df.layers_size))
                + stopped
                + unused_volumes
                + idle_cache,
            at,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContainerCounts {
    pub total: i64,
    pub running: i64,
    pub paused: i64,
    pub stopped: i64,
    pub healthy: i64,
    pub unhealthy: i64,
    /// With the problem flag on (SPEC §13, §17).
    pub problems: i64,
}

impl ContainerCounts {
    pub fn of<'a>(states: impl Iterator<Item = &'a ContainerState>) -> (Self, i64) {
        let mut c = Self::default();
        let mut stacks = std::collections::BTreeSet::new();
        for s in states {
            c.total += 1;
            match s.state.as_str() {
                "running" | "restarting" => c.running += 1,
                "paused" => c.paused += 1,
                _ => c.stopped += 1,
            }
            match s.health.as_str() {
                "healthy" => c.healthy += 1,
                "unhealthy" => c.unhealthy += 1,
                _ => {}
            }
            c.problems += i64::from(s.problem);
            if let Some(stack) = &s.stack {
                stacks.insert(stack.clone());
            }
        }
        (c, stacks.len() as i64)
    }
}

/// SPEC §3 `<base>/info`.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeInfo {
    pub version: &'static str,
    pub started_at: String,
    pub endpoints: Vec<String>,
    /// SPEC §12 diagnostics: endpoints whose engine is reachable now,
    pub endpoints_connected: usize,
    /// Docker events received over the last minute (all endpoints),
    pub events_per_minute: u64,
    /// messages waiting for the broker, and reconnects since start.
    pub outbox_depth: i64,
    pub broker_reconnects: u64,
    /// SPEC §17: containers with the problem flag, all endpoints,
    pub problems: i64,
    /// and with an update available (with update checks on).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updates_available: Option<i64>,
}

/// RFC 3339 UTC with nanoseconds from Unix nanoseconds.
pub fn rfc3339_nanos(nanos: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(nanos.max(0) as u64);
    humantime::format_rfc3339_nanos(t).to_string()
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// SPEC §4.4 `<base>/<ep>/events`.
#[derive(Debug, Clone, Serialize)]
pub struct EventMessage<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub action: &'a str,
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub time: String,
    pub attributes: &'a BTreeMap<String, String>,
}

impl<'a> EventMessage<'a> {
    pub fn from_event(e: &'a Event) -> Self {
        Self {
            kind: &e.kind,
            action: &e.action,
            id: &e.actor.id,
            name: e.name(),
            time: rfc3339_nanos(e.nanos()),
            attributes: &e.actor.attributes,
        }
    }
}

/// The event types of a container's HA event entity (SPEC §4.4).
pub const CONTAINER_EVENT_TYPES: &[&str] = &[
    "create",
    "start",
    "restart",
    "stop",
    "die",
    "kill",
    "pause",
    "unpause",
    "oom",
    "health_status",
    "destroy",
    "rename",
    "update",
];

/// SPEC §4.4 `<base>/<ep>/<ct>/event`, or `None` for actions outside the list
/// (exec_*, attach, resize…).
pub fn container_event_payload(e: &Event) -> Option<serde_json::Value> {
    let (event_type, status) = match e.action.split_once(':') {
        Some((a, rest)) => (a.trim(), Some(rest.trim())),
        None => (e.action.as_str(), None),
    };
    if !CONTAINER_EVENT_TYPES.contains(&event_type) {
        return None;
    }
    let mut attributes = serde_json::Map::new();
    for (k, v) in &e.actor.attributes {
        attributes.insert(k.clone(), serde_json::Value::String(v.clone()));
    }
    if event_type == "health_status"
        && let Some(s) = status
    {
        attributes.insert("health_status".into(), serde_json::Value::String(s.into()));
    }
    Some(serde_json::json!({
        "event_type": event_type,
        "time": rfc3339_nanos(e.nanos()),
        "attributes": attributes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inspect(json: &str) -> ContainerInspect {
        serde_json::from_str(json).expect("inspect json")
    }

    #[test]
    fn state_from_inspect() {
        let c = inspect(
            r#"{"Id":"abc","Name":"/nginx","Created":"2026-11-01T10:00:00Z","Image":"sha256:img",
            "RestartCount":2,
            "State":{"Status":"running","Running":true,"ExitCode":0,"StartedAt":"2026-11-20T08:00:00Z",
                     "FinishedAt":"0001-01-01T00:00:00Z","Health":{"Status":"healthy"}},
            "Config":{"Image":"nginx:1.27","Labels":{"com.docker.compose.project":"web","com.docker.compose.service":"nginx"}},
            "NetworkSettings":{"Networks":{"bridge":{"IPAddress":"172.17.0.2","MacAddress":"02:42:ac:11:00:02","Gateway":"172.17.0.1"}},
              "Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"},{"HostIp":"::","HostPort":"8080"}],
                       "53/udp":[{"HostIp":"127.0.0.1","HostPort":"5353"}],"443/tcp":null}}}"#,
        );
        let s = ContainerState::from_inspect("local", &c);
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(v["name"], "nginx");
        assert_eq!(v["state"], "running");
        assert_eq!(v["health"], "healthy");
        assert_eq!(v["finished_at"], serde_json::Value::Null);
        assert_eq!(v["restart_count"], 2);
        assert_eq!(v["stack"], "web");
        assert_eq!(v["service"], "nginx");
        assert_eq!(v["ip_address"], "172.17.0.2");
        assert_eq!(
            v["ports"],
            serde_json::json!(["127.0.0.1:5353:53/udp", "8080:80/tcp"])
        );
        let keys: Vec<_> = v.as_object().expect("obj").keys().cloned().collect();
        assert_eq!(keys.len(), 25);
        let flat = s.flat_values();
        assert!(flat.contains(&("running".into(), "true".into())));
        assert!(flat.contains(&("finished_at".into(), String::new())));
        assert!(flat.contains(&("ports".into(), "127.0.0.1:5353:53/udp,8080:80/tcp".into())));
    }

    #[test]
    fn stopped_container_has_nulls_and_no_health() {
        let c = inspect(
            r#"{"Id":"x","Name":"/db","State":{"Status":"exited","ExitCode":137,"OOMKilled":true},
                "NetworkSettings":{"Networks":{"bridge":{"IPAddress":""}}}}"#,
        );
        let s = ContainerState::from_inspect("nas", &c);
        assert_eq!(s.health, "none");
        assert_eq!(s.ip_address, None);
        assert!(s.oom_killed);
        assert_eq!(s.exit_code, 137);
        assert_eq!(s.stack, None);
        let weird = inspect(
            r#"{"Id":"y","Name":"/z","State":{"Status":"bogus","Health":{"Status":"??"}}}"#,
        );
        let s = ContainerState::from_inspect("nas", &weird);
        assert_eq!((s.state.as_str(), s.health.as_str()), ("exited", "none"));
    }

    #[test]
    fn container_events() {
        let e: Event = serde_json::from_str(
            r#"{"Type":"container","Action":"health_status: unhealthy","Actor":{"ID":"a","Attributes":{"name":"web"}},"time":1,"timeNano":1000000001}"#,
        )
        .expect("event");
        let p = container_event_payload(&e).expect("payload");
        assert_eq!(p["event_type"], "health_status");
        assert_eq!(p["attributes"]["health_status"], "unhealthy");
        assert_eq!(p["time"], "1970-01-01T00:00:01.000000001Z");
        let exec: Event = serde_json::from_str(
            r#"{"Type":"container","Action":"exec_start: sh -c true","Actor":{"ID":"a"}}"#,
        )
        .expect("event");
        assert!(container_event_payload(&exec).is_none());
        let msg = serde_json::to_value(EventMessage::from_event(&e)).expect("json");
        assert_eq!(msg["type"], "container");
        assert_eq!(msg["name"], "web");
    }

    #[test]
    fn counts() {
        let mk = |state: &str, health: &str, stack: Option<&str>| {
            let mut s = ContainerState::from_inspect("e", &ContainerInspect::default());
            s.state = state.into();
            s.health = health.into();
            s.stack = stack.map(String::from);
            s
        };
        let all = [
            mk("running", "healthy", Some("a")),
            mk("running", "unhealthy", Some("a")),
            mk("paused", "none", Some("b")),
            mk("exited", "none", None),
        ];
        let (c, stacks) = ContainerCounts::of(all.iter());
        assert_eq!((c.total, c.running, c.paused, c.stopped), (4, 2, 1, 1));
        assert_eq!((c.healthy, c.unhealthy, stacks), (1, 1, 2));
    }

    #[test]
    fn disk_usage_counts_what_docker_system_df_counts() {
        use crate::docker::models::*;
        let df: SystemDf = serde_json::from_str(
            r#"{"LayersSize":1000,
                "Images":[{"Containers":1,"Size":600,"SharedSize":100},{"Containers":0,"Size":400,"SharedSize":100}],
                "Containers":[{"SizeRw":10,"State":"running"},{"SizeRw":20,"State":"exited"}],
                "Volumes":[{"UsageData":{"Size":50,"RefCount":0}},{"UsageData":{"Size":-1,"RefCount":1}},{"UsageData":null}],
                "BuildCache":[{"Size":70,"InUse":false,"Shared":false},{"Size":5,"InUse":true,"Shared":false},{"Size":9,"Shared":true}]}"#,
        )
        .expect("df");
        let d = DiskUsage::of(&df, "t".into());
        assert_eq!(
            (
                d.images_bytes,
                d.containers_bytes,
                d.volumes_bytes,
                d.build_cache_bytes
            ),
            (1000, 30, 50, 75)
        );
        // unused image 400-100, stopped container 20, unused volume 50, idle cache 70
        assert_eq!(d.reclaimable_bytes, 300 + 20 + 50 + 70);
        let empty = DiskUsage::of(&serde_json::from_str("{}").expect("df"), "t".into());
        assert_eq!(empty.reclaimable_bytes, 0);
    }
}
