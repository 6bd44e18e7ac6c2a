//! The few Docker Engine API fields dockside reads. Everything is defaulted so a
//! missing or `null` field never fails a whole object.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Deserializer};

/// `null` → `T::default()` (Docker sends `null` for empty maps and lists).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSummary {
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub names: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub labels: HashMap<String, String>,
    pub state: String,
}

impl ContainerSummary {
    /// The primary name without the leading `/`.
    pub fn name(&self) -> Option<&str> {
        self.names
            .iter()
            .map(|n| n.trim_start_matches('/'))
            .find(|n| !n.is_empty() && !n.contains('/'))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInspect {
    pub id: String,
    pub name: String,
    pub created: Option<String>,
    /// The running image ID (`sha256:…`).
    pub image: String,
    pub restart_count: i64,
    pub state: InspectState,
    pub config: InspectConfig,
    pub network_settings: NetworkSettings,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InspectState {
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub exit_code: i64,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct InspectConfig {
    /// The reference the container was created with, as written.
    pub image: String,
    #[serde(deserialize_with = "nullable")]
    pub labels: HashMap<String, String>,
    /// A TTY container's logs are one raw stream, not multiplexed frames.
    pub tty: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSettings {
    /// BTreeMap: "the first network" is by name order (SPEC §4.1).
    #[serde(deserialize_with = "nullable")]
    pub networks: BTreeMap<String, NetworkEndpoint>,
    #[serde(deserialize_with = "nullable")]
    pub ports: BTreeMap<String, Option<Vec<PortBinding>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkEndpoint {
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    pub mac_address: String,
    pub gateway: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

/// `GET /images/{id}/json`: what an update check needs of the running image.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageInspect {
    pub id: String,
    /// Set by the classic builder (both stores): the image was built here.
    #[serde(deserialize_with = "nullable")]
    pub parent: String,
    #[serde(deserialize_with = "nullable")]
    pub repo_digests: Vec<String>,
    #[serde(deserialize_with = "nullable")]
    pub repo_tags: Vec<String>,
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
    pub config: ImageConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageConfig {
    #[serde(deserialize_with = "nullable")]
    pub labels: HashMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Version {
    #[serde(rename = "Version")]
    pub version: String,
    #[serde(rename = "ApiVersion")]
    pub api_version: String,
    #[serde(rename = "MinAPIVersion")]
    pub min_api_version: String,
    #[serde(rename = "Os")]
    pub os: String,
    #[serde(rename = "Arch")]
    pub arch: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SystemInfo {
    #[serde(rename = "NCPU")]
    pub ncpu: i64,
    #[serde(rename = "MemTotal")]
    pub mem_total: i64,
    #[serde(rename = "Images")]
    pub images: i64,
    #[serde(rename = "ServerVersion")]
    pub server_version: String,
    #[serde(rename = "OSType")]
    pub os_type: String,
    #[serde(rename = "Architecture")]
    pub architecture: String,
    /// The engine's clock, RFC 3339 with nanoseconds.
    #[serde(rename = "SystemTime")]
    pub system_time: String,
    #[serde(rename = "Driver")]
    pub driver: String,
    /// `[["driver-type", "io.containerd.snapshotter.v1"]]` on the containerd store.
    #[serde(rename = "DriverStatus", deserialize_with = "nullable")]
    pub driver_status: Vec<Vec<String>>,
}

impl SystemInfo {
    /// Images live in containerd (Docker 29's default, opt-in before).
    pub fn containerd_store(&self) -> bool {
        self.driver_status.iter().any(|kv| {
            kv.first().is_some_and(|k| k == "driver-type")
                && kv
                    .get(1)
                    .is_some_and(|v| v.starts_with("io.containerd.snapshotter"))
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VolumeList {
    #[serde(rename = "Volumes", deserialize_with = "nullable")]
    pub volumes: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Event {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "Action")]
    pub action: String,
    #[serde(rename = "Actor")]
    pub actor: Actor,
    pub time: i64,
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Actor {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Attributes", deserialize_with = "nullable")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    /// Nanoseconds since the epoch, from `timeNano` or, on odd engines, `time`.
    pub fn nanos(&self) -> i64 {
        if self.time_nano > 0 {
            self.time_nano
        } else {
            self.time.saturating_mul(1_000_000_000)
        }
    }

    /// The container name an event refers to (`Actor.Attributes.name`).
    pub fn name(&self) -> Option<&str> {
        self.actor
            .attributes
            .get("name")
            .map(|n| n.trim_start_matches('/'))
            .filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerant_inspect() {
        let json = r#"{"Id":"abc","Name":"/web","Created":"2026-11-01T10:00:00.1Z","Image":"sha256:1",
          "State":{"Status":"running","Running":true,"OOMKilled":false,"Health":null,"StartedAt":"2026-11-20T08:00:00Z"},
          "Config":{"Image":"nginx:1.27","Labels":null},
          "NetworkSettings":{"Networks":{"b":{"IPAddress":"172.18.0.3"},"a":{"IPAddress":"172.17.0.2","Gateway":"172.17.0.1","MacAddress":"02:42"}},
                             "Ports":{"80/tcp":[{"HostIp":"0.0.0.0","HostPort":"8080"}],"443/tcp":null}},
          "Unknown":{"x":1}}"#;
        let c: ContainerInspect = serde_json::from_str(json).expect("inspect");
        assert_eq!(c.name, "/web");
        assert!(c.state.running);
        assert!(c.config.labels.is_empty());
        assert_eq!(
            c.network_settings
                .networks
                .keys()
                .next()
                .map(String::as_str),
            Some("a")
        );
        assert_eq!(c.network_settings.ports.len(), 2);
    }

    #[test]
    fn events_parse() {
        let line = r#"{"status":"start","id":"8dfa","from":"nginx","Type":"container","Action":"start","Actor":{"ID":"8dfa","Attributes":{"image":"nginx","name":"nginx"}},"scope":"local","time":1729600000,"timeNano":1729600000123456789}"#;
        let e: Event = serde_json::from_str(line).expect("event");
        assert_eq!(e.kind, "container");
        assert_eq!(e.name(), Some("nginx"));
        assert_eq!(e.nanos(), 1729600000123456789);
        let old: Event =
            serde_json::from_str(r#"{"Type":"image","Action":"pull","time":5}"#).expect("e");
        assert_eq!(old.nanos(), 5_000_000_000);
        assert_eq!(old.name(), None);
    }

    #[test]
    fn summary_name() {
        let s: ContainerSummary =
            serde_json::from_str(r#"{"Id":"x","Names":["/web","/other/link"],"Labels":null}"#)
                .expect("s");
        assert_eq!(s.name(), Some("web"));
    }
}

/// `GET /system/df`, the parts the disk summary needs (SPEC §13 upkeep).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SystemDf {
    pub layers_size: i64,
    #[serde(deserialize_with = "nullable")]
    pub images: Vec<DfImage>,
    #[serde(deserialize_with = "nullable")]
    pub containers: Vec<DfContainer>,
    #[serde(deserialize_with = "nullable")]
    pub volumes: Vec<DfVolume>,
    #[serde(deserialize_with = "nullable")]
    pub build_cache: Vec<DfBuildCache>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DfImage {
    pub containers: i64,
    pub size: i64,
    pub shared_size: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DfContainer {
    pub size_rw: i64,
    pub state: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DfVolume {
    pub usage_data: Option<DfUsage>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DfUsage {
    pub size: i64,
    pub ref_count: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DfBuildCache {
    pub size: i64,
    pub in_use: bool,
    pub shared: bool,
}

/// The answer of every `POST /{images,containers,volumes,build}/prune`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PruneReport {
    pub space_reclaimed: i64,
}
