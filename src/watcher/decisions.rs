//! What users and past updates decided about versions (SPEC §17), kept
//! across restarts in `state.dir/update-decisions.json`: a version skipped
//! with `skip`, a version that was rolled back (never installed
//! automatically again). Both end when a newer version appears. Pure data;
//! the inventory holds and saves it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Containers with a decision per endpoint, at most (oldest names dropped first).
const MAX_PER_ENDPOINT: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    pub version: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decisions {
    /// endpoint → container → the skipped `latest_version`.
    skipped: BTreeMap<String, BTreeMap<String, String>>,
    /// endpoint → container → the version that was rolled back.
    blocked: BTreeMap<String, BTreeMap<String, Blocked>>,
}

/// What a decision does to a status whose newest version is `latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No decision about this version.
    None,
    /// The user skipped exactly this version.
    Skipped,
    /// This version was rolled back: not installed automatically.
    Blocked(String),
}

impl Decisions {
    pub fn skip(&mut self, ep: &str, ct: &str, version: &str) {
        insert(&mut self.skipped, ep, ct, version.to_string());
    }

    /// Undoes a skip; the version it skipped, if any.
    pub fn unskip(&mut self, ep: &str, ct: &str) -> Option<String> {
        remove(&mut self.skipped, ep, ct)
    }

    pub fn block(&mut self, ep: &str, ct: &str, version: &str, why: &str) {
        let b = Blocked {
            version: version.to_string(),
            why: why.chars().take(255).collect(),
        };
        insert(&mut self.blocked, ep, ct, b);
    }

    /// The decisions about `latest` (the status's newest version); decisions
    /// about another version end here (a newer one appeared). Returns the
    /// verdict and whether anything was forgotten (to be saved).
    pub fn judge(&mut self, ep: &str, ct: &str, latest: &str) -> (Verdict, bool) {
        let mut forgot = false;
        let skipped = match get(&self.skipped, ep, ct) {
            Some(v) if v == latest => true,
            Some(_) => {
                forgot |= remove(&mut self.skipped, ep, ct).is_some();
                false
            }
            None => false,
        };
        let blocked = match get(&self.blocked, ep, ct) {
            Some(b) if b.version == latest => Some(b.why.clone()),
            Some(_) => {
                forgot |= remove(&mut self.blocked, ep, ct).is_some();
                None
            }
            None => None,
        };
        let verdict = match (skipped, blocked) {
            (true, _) => Verdict::Skipped,
            (false, Some(why)) => Verdict::Blocked(why),
            _ => Verdict::None,
        };
        (verdict, forgot)
    }
}

fn get<'a, T>(m: &'a BTreeMap<String, BTreeMap<String, T>>, ep: &str, ct: &str) -> Option<&'a T> {
    m.get(ep).and_then(|c| c.get(ct))
}

fn insert<T>(m: &mut BTreeMap<String, BTreeMap<String, T>>, ep: &str, ct: &str, v: T) {
    let cts = m.entry(ep.to_string()).or_default();
    if !cts.contains_key(ct)
        && cts.len() >= MAX_PER_ENDPOINT
        && let Some(first) = cts.keys().next().cloned()
    {
        cts.remove(&first);
    }
    cts.insert(ct.to_string(), v);
}

fn remove<T>(m: &mut BTreeMap<String, BTreeMap<String, T>>, ep: &str, ct: &str) -> Option<T> {
    let cts = m.get_mut(ep)?;
    let v = cts.remove(ct);
    if cts.is_empty() {
        m.remove(ep);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_holds_until_a_newer_version_and_a_block_likewise() {
        let mut d = Decisions::default();
        assert_eq!(d.judge("ep", "app", "2.0"), (Verdict::None, false));
        d.skip("ep", "app", "2.0");
        assert_eq!(d.judge("ep", "app", "2.0"), (Verdict::Skipped, false));
        // A newer version: the skip is over, and says so once.
        assert_eq!(d.judge("ep", "app", "2.1"), (Verdict::None, true));
        assert_eq!(d.judge("ep", "app", "2.0"), (Verdict::None, false));
        d.block("ep", "app", "2.1", "rolled back: unhealthy");
        assert_eq!(
            d.judge("ep", "app", "2.1"),
            (Verdict::Blocked("rolled back: unhealthy".into()), false)
        );
        d.skip("ep", "app", "2.1");
        assert_eq!(d.judge("ep", "app", "2.1").0, Verdict::Skipped);
        assert_eq!(d.unskip("ep", "app").as_deref(), Some("2.1"));
        assert_eq!(d.unskip("ep", "app"), None);
        assert!(matches!(d.judge("ep", "app", "2.1").0, Verdict::Blocked(_)));
        assert_eq!(d.judge("ep", "app", "2.2"), (Verdict::None, true));
        assert_eq!(d, Decisions::default());
    }

    #[test]
    fn bounded_and_round_trips() {
        let mut d = Decisions::default();
        for i in 0..MAX_PER_ENDPOINT + 10 {
            d.skip("ep", &format!("c{i:05}"), "1");
        }
        assert_eq!(d.skipped["ep"].len(), MAX_PER_ENDPOINT);
        let json = serde_json::to_string(&d).expect("json");
        let back: Decisions = serde_json::from_str(&json).expect("back");
        assert_eq!(back, d);
    }
}
