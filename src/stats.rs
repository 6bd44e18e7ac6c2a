//! Container resource figures (SPEC §13): which containers are sampled, and
//! the `<ct>/stats` payload computed from the engine's one-shot stats answer
//! the way `docker stats` computes it (CPU from two samples, memory without
//! the page cache, cgroup v1 and v2). Pure; the endpoint schedules the calls.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `dockside.stats=true` samples a container although `[stats]` is off;
/// `false` never samples it.
pub const STATS_LABEL: &str = "dockside.stats";

/// Whether a container with these labels is sampled (`global`: `stats.enabled`).
pub fn wanted(global: bool, labels: &HashMap<String, String>) -> bool {
    match labels
        .get(STATS_LABEL)
        .map(|v| v.trim().to_ascii_lowercase())
    {
        Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => true,
        Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => false,
        _ => global,
    }
}

/// Where in the interval a container's samples fall: spread by its name so
/// that 100 containers do not all ask at the same second (and the same
/// container keeps its slot across restarts of dockside).
pub fn offset(name: &str, interval: Duration) -> Duration {
    // FNV-1a: stable across runs and platforms (std's hasher is seeded).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let ms = interval.as_millis().max(1) as u64;
    Duration::from_millis(h % ms)
}

/// The engine's `GET /containers/{id}/stats?stream=false` answer, as far as
/// it is read. Every field is optional: engines and cgroup versions differ.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct EngineStats {
    pub read: Option<String>,
    pub cpu_stats: CpuStats,
    pub precpu_stats: CpuStats,
    pub memory_stats: MemoryStats,
    pub networks: Option<BTreeMap<String, NetStats>>,
    pub blkio_stats: BlkioStats,
    pub pids_stats: PidsStats,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CpuStats {
    pub cpu_usage: CpuUsage,
    pub system_cpu_usage: Option<u64>,
    pub online_cpus: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CpuUsage {
    pub total_usage: Option<u64>,
    pub percpu_usage: Option<Vec<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub stats: Option<HashMap<String, u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct NetStats {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BlkioStats {
    pub io_service_bytes_recursive: Option<Vec<BlkioEntry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BlkioEntry {
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PidsStats {
    pub current: Option<u64>,
}

/// A CPU reading kept between calls: with one-shot calls (API ≥ 1.41) the
/// engine leaves `precpu_stats` empty, so the previous answer is the first sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub total: u64,
    pub system: u64,
}

/// `<ct>/stats` (SPEC §13); unknown values are left out.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsPayload {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_write_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    pub at: String,
}

/// The payload's numeric keys (the HA sensors and Jeedom leaf topics).
pub const KEYS: &[&str] = &[
    "cpu_percent",
    "memory_bytes",
    "memory_limit_bytes",
    "memory_percent",
    "net_rx_bytes",
    "net_tx_bytes",
    "block_read_bytes",
    "block_write_bytes",
    "pids",
];

impl EngineStats {
    /// A stopped container answers with a zero `read` time and no figures.
    pub fn is_empty(&self) -> bool {
        self.read
            .as_deref()
            .is_none_or(|r| r.starts_with("0001-01-01"))
            || (self.memory_stats.usage.is_none() && self.cpu_stats.cpu_usage.total_usage.is_none())
    }

    fn sample(c: &CpuStats) -> Option<CpuSample> {
        Some(CpuSample {
            total: c.cpu_usage.total_usage?,
            system: c.system_cpu_usage.filter(|s| *s > 0)?,
        })
    }

    /// This answer's CPU reading, to keep for the next one-shot call.
    pub fn cpu_sample(&self) -> Option<CpuSample> {
        Self::sample(&self.cpu_stats)
    }

    /// CPU % as `docker stats` shows it (100 % = one core busy), from
    /// `precpu_stats` when the engine filled it, else from `prev`.
    pub fn cpu_percent(&self, prev: Option<CpuSample>) -> Option<f64> {
        let now = self.cpu_sample()?;
        let before = Self::sample(&self.precpu_stats).or(prev)?;
        let cpu = now.total.checked_sub(before.total)? as f64;
        let system = now.system.checked_sub(before.system)? as f64;
        if system <= 0.0 {
            return None;
        }
        let cpus = self
            .cpu_stats
            .online_cpus
            .filter(|n| *n > 0)
            .map(f64::from)
            .or_else(|| {
                self.cpu_stats
                    .cpu_usage
                    .percpu_usage
                    .as_ref()
                    .map(|v| v.len() as f64)
            })
            .filter(|n| *n > 0.0)
            .unwrap_or(1.0);
        Some(round2(cpu / system * cpus * 100.0))
    }

    /// Memory in use without the page cache, as `docker stats` shows it:
    /// usage minus `total_inactive_file` (cgroup v1) or `inactive_file` (v2).
    pub fn memory_bytes(&self) -> Option<u64> {
        let usage = self.memory_stats.usage?;
        let stats = self.memory_stats.stats.as_ref();
        let cache = stats.and_then(|s| {
            s.get("total_inactive_file")
                .or_else(|| s.get("inactive_file"))
                .copied()
        });
        Some(match cache {
            Some(c) if c < usage => usage - c,
            _ => usage,
        })
    }

    pub fn payload(&self, prev: Option<CpuSample>, at: String) -> StatsPayload {
        let memory = self.memory_bytes();
        // No limit set reads as the host's memory; a zero is unknown.
        let limit = self.memory_stats.limit.filter(|l| *l > 0);
        let memory_percent = match (memory, limit) {
            (Some(m), Some(l)) => Some(round2(m as f64 / l as f64 * 100.0)),
            _ => None,
        };
        let (rx, tx) = match &self.networks {
            Some(n) => (
                Some(n.values().map(|v| v.rx_bytes).sum()),
                Some(n.values().map(|v| v.tx_bytes).sum()),
            ),
            None => (None, None),
        };
        // v1 says "Read"/"Write", v2 "read"/"write".
        let io = self.blkio_stats.io_service_bytes_recursive.as_ref();
        let sum = |op: &str| {
            io.map(|v| {
                v.iter()
                    .filter(|e| e.op.eq_ignore_ascii_case(op))
                    .map(|e| e.value)
                    .sum::<u64>()
            })
        };
        StatsPayload {
            cpu_percent: self.cpu_percent(prev),
            memory_bytes: memory,
            memory_limit_bytes: limit,
            memory_percent,
            net_rx_bytes: rx,
            net_tx_bytes: tx,
            block_read_bytes: sum("read"),
            block_write_bytes: sum("write"),
            pids: self.pids_stats.current,
            at,
        }
    }
}

impl StatsPayload {
    /// `(key, value)` of every known figure, for Jeedom's leaf topics.
    pub fn flat_values(&self) -> Vec<(&'static str, String)> {
        let v = serde_json::to_value(self).unwrap_or_default();
        KEYS.iter()
            .filter_map(|k| v.get(*k).map(|x| (*k, x.to_string())))
            .collect()
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> EngineStats {
        serde_json::from_str(s).expect("stats json")
    }

    // Shapes as Docker 20.10 (cgroup v1) and 28 (cgroup v2) send them, trimmed.
    const V1: &str = r#"{"read":"2026-12-01T10:00:01Z",
        "cpu_stats":{"cpu_usage":{"total_usage":3000000000,"percpu_usage":[1,2]},
                     "system_cpu_usage":20000000000,"online_cpus":2},
        "precpu_stats":{"cpu_usage":{"total_usage":2000000000},"system_cpu_usage":18000000000},
        "memory_stats":{"usage":104857600,"limit":1073741824,
                        "stats":{"total_inactive_file":4194304,"cache":8388608}},
        "networks":{"eth0":{"rx_bytes":100,"tx_bytes":50},"eth1":{"rx_bytes":1,"tx_bytes":2}},
        "blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"Read","value":4096},
            {"major":8,"minor":0,"op":"Write","value":8192},{"major":8,"minor":0,"op":"Total","value":12288}]},
        "pids_stats":{"current":3}}"#;
    const V2_ONE_SHOT: &str = r#"{"read":"2026-12-01T10:00:01Z",
        "cpu_stats":{"cpu_usage":{"total_usage":5000000000},"system_cpu_usage":40000000000,"online_cpus":4},
        "precpu_stats":{"cpu_usage":{"total_usage":0},"system_cpu_usage":0},
        "memory_stats":{"usage":52428800,"limit":2147483648,"stats":{"inactive_file":2097152,"anon":1}},
        "blkio_stats":{"io_service_bytes_recursive":[{"major":8,"minor":0,"op":"read","value":10},
            {"major":8,"minor":0,"op":"write","value":20}]},
        "pids_stats":{"current":1}}"#;
    const STOPPED: &str = r#"{"read":"0001-01-01T00:00:00Z","preread":"0001-01-01T00:00:00Z",
        "pids_stats":{},"blkio_stats":{"io_service_bytes_recursive":null},"cpu_stats":{"cpu_usage":{"total_usage":0},"throttling_data":{}},
        "precpu_stats":{"cpu_usage":{"total_usage":0},"throttling_data":{}},"memory_stats":{}}"#;

    #[test]
    fn cgroup_v1_figures_match_docker_stats() {
        let s = parse(V1);
        let p = s.payload(None, "t".into());
        // (3e9-2e9)/(20e9-18e9) * 2 cpus * 100
        assert_eq!(p.cpu_percent, Some(100.0));
        assert_eq!(p.memory_bytes, Some(104857600 - 4194304));
        assert_eq!(p.memory_limit_bytes, Some(1073741824));
        assert_eq!(p.memory_percent, Some(9.38));
        assert_eq!((p.net_rx_bytes, p.net_tx_bytes), (Some(101), Some(52)));
        assert_eq!(
            (p.block_read_bytes, p.block_write_bytes),
            (Some(4096), Some(8192))
        );
        assert_eq!(p.pids, Some(3));
    }

    #[test]
    fn cgroup_v2_one_shot_uses_the_previous_sample() {
        let s = parse(V2_ONE_SHOT);
        assert_eq!(
            s.payload(None, "t".into()).cpu_percent,
            None,
            "one sample only"
        );
        let prev = CpuSample {
            total: 4_000_000_000,
            system: 30_000_000_000,
        };
        let p = s.payload(Some(prev), "t".into());
        // 1e9/10e9 * 4 * 100
        assert_eq!(p.cpu_percent, Some(40.0));
        assert_eq!(p.memory_bytes, Some(52428800 - 2097152));
        assert_eq!(
            (p.block_read_bytes, p.block_write_bytes),
            (Some(10), Some(20))
        );
        // No network (network mode none or host): left out, not zero.
        let v = serde_json::to_value(&p).expect("json");
        assert!(v.get("net_rx_bytes").is_none(), "{v}");
        assert_eq!(
            s.cpu_sample(),
            Some(CpuSample {
                total: 5_000_000_000,
                system: 40_000_000_000
            })
        );
    }

    #[test]
    fn a_stopped_container_and_odd_answers_give_no_figures() {
        assert!(parse(STOPPED).is_empty());
        assert!(parse("{}").is_empty());
        assert!(!parse(V1).is_empty());
        // A counter that went backwards (container restarted) is no CPU figure.
        let s = parse(V1);
        let later = CpuSample {
            total: u64::MAX,
            system: 1,
        };
        assert_eq!(
            EngineStats {
                precpu_stats: CpuStats::default(),
                ..s
            }
            .cpu_percent(Some(later)),
            None
        );
        // Cache larger than usage: usage as it is.
        let odd = parse(r#"{"read":"x","memory_stats":{"usage":10,"stats":{"inactive_file":20}}}"#);
        assert_eq!(odd.memory_bytes(), Some(10));
    }

    #[test]
    fn labels_turn_sampling_on_and_off() {
        let l = |v: &str| HashMap::from([(STATS_LABEL.to_string(), v.to_string())]);
        assert!(!wanted(false, &HashMap::new()));
        assert!(wanted(true, &HashMap::new()));
        assert!(wanted(false, &l("true")));
        assert!(!wanted(true, &l("false")));
        assert!(
            wanted(true, &l("bogus")),
            "unknown values keep the global choice"
        );
    }

    #[test]
    fn offsets_spread_over_the_interval_and_are_stable() {
        let i = Duration::from_secs(30);
        let offs: Vec<Duration> = (0..100).map(|n| offset(&format!("c{n}"), i)).collect();
        assert!(offs.iter().all(|o| *o < i));
        assert_eq!(offset("c1", i), offset("c1", i));
        // Every 5 s slice of the interval gets some of them.
        for slice in 0..6 {
            let (lo, hi) = (
                Duration::from_secs(slice * 5),
                Duration::from_secs(slice * 5 + 5),
            );
            assert!(offs.iter().any(|o| *o >= lo && *o < hi), "slice {slice}");
        }
    }

    #[test]
    fn flat_values_carry_only_known_figures() {
        let p = parse(V2_ONE_SHOT).payload(None, "t".into());
        let f = p.flat_values();
        assert!(f.iter().any(|(k, v)| *k == "pids" && v == "1"));
        assert!(!f.iter().any(|(k, _)| *k == "cpu_percent"));
    }
}
