//! The containers of every endpoint as the image watcher sees them, shared
//! by the endpoint tasks (which write) and the watcher (which reads and
//! publishes), with what the last status said (for `update`, `skip` and
//! automatic updates).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Watched;
use super::decisions::{Decisions, Verdict};
use crate::docker::DockerClient;
use crate::persist::{JsonFile, StateDir};

pub(super) type Key = (String, String);

/// An automatic update that did not install its version (it failed, the
/// endpoint was busy) is offered again after this long; a rolled-back
/// version never is.
const AUTO_RETRY: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Default)]
struct InventoryInner {
    endpoints: HashMap<String, Arc<DockerClient>>,
    containers: BTreeMap<Key, Watched>,
    changed: BTreeSet<Key>,
    /// Containers an `update` is running on.
    in_progress: BTreeSet<Key>,
    /// Pull progress of those, 0–99.
    progress: BTreeMap<Key, u8>,
    /// Containers whose last status was `update_available` (`update_all`).
    available: BTreeSet<Key>,
    /// A change that must not wait for the debounce (an update starting).
    urgent: bool,
    /// Containers whose reference is checked again at the next round,
    /// fresh result or not (an `update` just pulled it).
    recheck: BTreeSet<Key>,
    /// What each container's last published status said.
    facts: BTreeMap<Key, Facts>,
    /// Skipped and rolled-back versions (SPEC §17), saved in `file`.
    decisions: Decisions,
    file: Option<JsonFile>,
    /// Failed pre-update checks: the container's update is blocked until
    /// its check passes (SPEC §17).
    check_failed: BTreeMap<Key, String>,
    /// Automatic updates the watcher found due, per container.
    auto_due: BTreeMap<Key, AutoJob>,
    /// Automatic updates started: (version, when), not offered again for [`AUTO_RETRY`].
    auto_tried: BTreeMap<Key, (String, std::time::Instant)>,
    /// Per endpoint: woken when the watcher has news for it (an automatic
    /// update due, versions that changed the HA select, counts).
    news: HashMap<String, Arc<Notify>>,
}

/// What the last published status of a container said (SPEC §4.3, §17).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub status: &'static str,
    pub installed: Option<String>,
    pub latest: Option<String>,
    /// `latest` is a tag of the container's repository (tag following).
    pub latest_is_tag: bool,
    /// The tags `<ct>/versions` offers (current first), for HA's select.
    pub versions: Vec<String>,
    /// Compose drift: the image the compose file names instead.
    pub compose_image: Option<String>,
}

/// An automatic update the watcher found due (SPEC §17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoJob {
    /// The version it installs (the status's `latest_version`).
    pub version: String,
    /// The tag to move to under tag following; `None` re-pulls the same tag.
    pub tag: Option<String>,
}

/// Containers of every endpoint, written by the endpoint tasks, read by the watcher.
#[derive(Default)]
pub struct Inventory {
    inner: Mutex<InventoryInner>,
    pub(super) notify: Notify,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inventory")
    }
}

impl Inventory {
    /// An inventory whose decisions (skips, rolled-back versions) live in
    /// `state.dir/update-decisions.json`.
    pub fn with_state(dir: Option<&StateDir>) -> Self {
        let (file, decisions) =
            JsonFile::load::<Decisions>(dir, "update-decisions.json", "update decisions");
        let inv = Self::default();
        {
            let mut g = inv.lock();
            g.decisions = decisions;
            g.file = Some(file);
        }
        inv
    }
    fn lock(&self) -> MutexGuard<'_, InventoryInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn set_endpoint(&self, ep: &str, client: Arc<DockerClient>) {
        self.lock().endpoints.insert(ep.to_string(), client);
    }
    /// Forgets an endpoint; `then` runs under the lock (clearing its topics), so no
    /// update message of the watcher can land after it.
    pub fn remove_endpoint_then(&self, ep: &str, then: impl FnOnce()) {
        let mut g = self.lock();
        g.endpoints.remove(ep);
        g.containers.retain(|(e, _), _| e != ep);
        g.available.retain(|(e, _)| e != ep);
        g.facts.retain(|(e, _), _| e != ep);
        g.auto_due.retain(|(e, _), _| e != ep);
        g.check_failed.retain(|(e, _), _| e != ep);
        g.news.remove(ep);
        then();
    }
    pub fn set_container(&self, ep: &str, ct: &str, w: Watched) {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        if g.containers.get(&key) != Some(&w) {
            g.containers.insert(key.clone(), w);
            g.changed.insert(key);
            drop(g);
            self.notify.notify_one();
        }
    }
    /// An `update` started or ended on a container: its status says so at once.
    pub fn set_in_progress(&self, ep: &str, ct: &str, on: bool) {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        let changed = if on {
            g.in_progress.insert(key.clone())
        } else {
            g.recheck.insert(key.clone());
            g.progress.remove(&key);
            g.in_progress.remove(&key)
        };
        if changed {
            g.changed.insert(key);
            g.urgent = true;
            drop(g);
            self.notify.notify_one();
        }
    }
    /// The pull of a running `update` moved on: shown at once.
    pub fn set_progress(&self, ep: &str, ct: &str, percent: u8) {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        if !g.in_progress.contains(&key) || g.progress.get(&key) == Some(&percent) {
            return;
        }
        g.progress.insert(key.clone(), percent);
        g.changed.insert(key);
        g.urgent = true;
        drop(g);
        self.notify.notify_one();
    }
    pub(super) fn in_progress(&self, key: &Key) -> (bool, Option<u8>) {
        let g = self.lock();
        (g.in_progress.contains(key), g.progress.get(key).copied())
    }
    pub(super) fn set_available(&self, key: &Key, on: bool) {
        let mut g = self.lock();
        if on {
            g.available.insert(key.clone());
        } else {
            g.available.remove(key);
        }
    }
    /// Containers of `ep` whose image has an update, by name.
    pub fn updates_available(&self, ep: &str) -> Vec<String> {
        self.lock()
            .available
            .iter()
            .filter(|(e, _)| e == ep)
            .map(|(_, c)| c.clone())
            .collect()
    }
    pub(super) fn take_recheck(&self) -> BTreeSet<Key> {
        std::mem::take(&mut self.lock().recheck)
    }
    pub(super) fn take_urgent(&self) -> bool {
        std::mem::take(&mut self.lock().urgent)
    }
    /// Forgets a container; `then` (clearing its topics) runs under the lock.
    pub fn remove_container_then(&self, ep: &str, ct: &str, then: impl FnOnce()) {
        let mut g = self.lock();
        let key = (ep.to_string(), ct.to_string());
        g.containers.remove(&key);
        g.available.remove(&key);
        g.facts.remove(&key);
        g.auto_due.remove(&key);
        g.check_failed.remove(&key);
        then();
    }
    /// Runs `f` (a publish) only if the container is still there, under the lock.
    pub(super) fn publish_if_present(&self, key: &Key, f: impl FnOnce()) {
        let g = self.lock();
        if g.containers.contains_key(key) {
            f();
        }
    }
    /// Every container counts as changed (a watcher started by a reload
    /// looks at all of them, reusing fresh results).
    pub(super) fn mark_all_changed(&self) {
        let mut g = self.lock();
        let all: Vec<Key> = g.containers.keys().cloned().collect();
        g.changed.extend(all);
    }
    pub(super) fn take_changed(&self) -> BTreeSet<Key> {
        std::mem::take(&mut self.lock().changed)
    }
    pub(super) fn snapshot(&self) -> (HashMap<String, Arc<DockerClient>>, BTreeMap<Key, Watched>) {
        let g = self.lock();
        (g.endpoints.clone(), g.containers.clone())
    }

    /// What the last status of a container said.
    pub fn facts(&self, ep: &str, ct: &str) -> Option<Facts> {
        self.lock()
            .facts
            .get(&(ep.to_string(), ct.to_string()))
            .cloned()
    }
    /// The watcher published a status; tells the endpoint when what its HA
    /// device or counts show changed.
    pub(super) fn set_facts(&self, key: &Key, facts: Facts) {
        let mut g = self.lock();
        let old = g.facts.insert(key.clone(), facts.clone());
        let news = old.is_none_or(|o| o.versions != facts.versions || o.status != facts.status);
        let notify = news.then(|| g.news.get(&key.0).cloned()).flatten();
        drop(g);
        if let Some(n) = notify {
            n.notify_one();
        }
    }
    /// Woken when the watcher has news for endpoint `ep`.
    pub fn news(&self, ep: &str) -> Arc<Notify> {
        self.lock().news.entry(ep.to_string()).or_default().clone()
    }
    fn changed_now(&self, mut g: MutexGuard<'_, InventoryInner>, key: Key) {
        g.changed.insert(key);
        g.urgent = true;
        drop(g);
        self.notify.notify_one();
    }
    fn save(g: &mut InventoryInner) {
        let data = g.decisions.clone();
        if let Some(f) = &mut g.file {
            f.save(&data);
        }
    }

    /// `skip`: the update the status offers now is skipped until a newer
    /// version appears. The skipped version, or why not.
    pub fn skip(&self, ep: &str, ct: &str) -> Result<String, String> {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        let f = g.facts.get(&key).cloned().unwrap_or_default();
        let version = match (f.status, f.latest) {
            ("update_available", Some(v)) => v,
            ("skipped", Some(v)) => return Err(format!("version {v} is already skipped")),
            _ => return Err("no update is available to skip".into()),
        };
        g.decisions.skip(ep, ct, &version);
        Self::save(&mut g);
        self.changed_now(g, key);
        Ok(version)
    }
    /// `unskip`: the skipped version is offered again.
    pub fn unskip(&self, ep: &str, ct: &str) -> Result<String, String> {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        let Some(v) = g.decisions.unskip(ep, ct) else {
            return Err("no version is skipped".into());
        };
        Self::save(&mut g);
        self.changed_now(g, key);
        Ok(v)
    }
    /// `version` was rolled back: never installed automatically again.
    pub fn block(&self, ep: &str, ct: &str, version: &str, why: &str) {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        g.decisions.block(ep, ct, version, why);
        Self::save(&mut g);
        self.changed_now(g, key);
    }
    /// The decisions about `latest` for a container (forgetting older ones).
    pub(super) fn judge(&self, key: &Key, latest: &str) -> Verdict {
        let mut g = self.lock();
        let (v, forgot) = g.decisions.judge(&key.0, &key.1, latest);
        if forgot {
            Self::save(&mut g);
        }
        v
    }
    /// The pre-update check of a container failed (`Some(line)`) or passed.
    pub fn set_check_failed(&self, ep: &str, ct: &str, failed: Option<String>) {
        let key = (ep.to_string(), ct.to_string());
        let mut g = self.lock();
        let changed = match failed {
            Some(line) => g.check_failed.insert(key.clone(), line.clone()) != Some(line),
            None => g.check_failed.remove(&key).is_some(),
        };
        if changed {
            self.changed_now(g, key);
        }
    }
    pub(super) fn check_failed(&self, key: &Key) -> Option<String> {
        self.lock().check_failed.get(key).cloned()
    }
    /// The watcher looked at `keys` and found these automatic updates due
    /// (a version tried within [`AUTO_RETRY`] is not offered again); the
    /// endpoints are told.
    pub(super) fn set_auto_due(&self, keys: &BTreeSet<Key>, due: BTreeMap<Key, AutoJob>) {
        let mut g = self.lock();
        let now = std::time::Instant::now();
        g.auto_tried
            .retain(|_, (_, at)| now.duration_since(*at) < AUTO_RETRY);
        let before = g.auto_due.clone();
        g.auto_due.retain(|k, _| !keys.contains(k));
        for (k, job) in due {
            let tried = g.auto_tried.get(&k).is_some_and(|(v, _)| *v == job.version);
            if !tried {
                g.auto_due.insert(k, job);
            }
        }
        if g.auto_due == before {
            return;
        }
        let eps: BTreeSet<String> = g.auto_due.keys().map(|(e, _)| e.clone()).collect();
        let wake: Vec<Arc<Notify>> = eps.iter().filter_map(|e| g.news.get(e).cloned()).collect();
        drop(g);
        wake.iter().for_each(|n| n.notify_one());
    }
    /// The next automatic update due on `ep`, taken (the endpoint runs it):
    /// the lowest `rank` first (a stack's start order), then by name.
    pub fn take_auto(&self, ep: &str, rank: impl Fn(&str) -> usize) -> Option<(String, AutoJob)> {
        let mut g = self.lock();
        let key = g
            .auto_due
            .keys()
            .filter(|(e, _)| e == ep)
            .min_by_key(|(_, c)| (rank(c), c.clone()))
            .cloned()?;
        let job = g.auto_due.remove(&key)?;
        g.auto_tried.insert(
            key.clone(),
            (job.version.clone(), std::time::Instant::now()),
        );
        Some((key.1, job))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ct: &str) -> Key {
        ("ep".to_string(), ct.to_string())
    }

    fn job(v: &str) -> AutoJob {
        AutoJob {
            version: v.to_string(),
            tag: Some(v.to_string()),
        }
    }

    #[test]
    fn automatic_updates_go_in_rank_order_and_a_tried_version_waits() {
        let inv = Inventory::default();
        let keys: BTreeSet<Key> = [key("a-web"), key("b-db")].into();
        let due = BTreeMap::from([(key("a-web"), job("2")), (key("b-db"), job("5"))]);
        inv.set_auto_due(&keys, due.clone());
        // The database starts first in its stack: it goes first.
        let rank = |n: &str| usize::from(n != "b-db");
        assert_eq!(
            inv.take_auto("ep", rank).map(|(c, _)| c).as_deref(),
            Some("b-db")
        );
        assert_eq!(inv.take_auto("other", rank), None);
        // Offered again in the next round: the version just tried is not.
        inv.set_auto_due(&keys, due);
        assert_eq!(
            inv.take_auto("ep", rank).map(|(c, _)| c).as_deref(),
            Some("a-web")
        );
        assert_eq!(inv.take_auto("ep", rank), None);
        // A newer version is offered at once.
        inv.set_auto_due(&keys, BTreeMap::from([(key("b-db"), job("6"))]));
        assert_eq!(
            inv.take_auto("ep", rank).map(|(_, j)| j.version).as_deref(),
            Some("6")
        );
    }

    #[test]
    fn skip_needs_an_offered_update() {
        let inv = Inventory::default();
        assert!(inv.skip("ep", "app").is_err());
        let facts = Facts {
            status: "update_available",
            latest: Some("2".into()),
            ..Default::default()
        };
        inv.set_facts(&key("app"), facts);
        assert_eq!(inv.skip("ep", "app").as_deref(), Ok("2"));
        assert_eq!(inv.judge(&key("app"), "2"), Verdict::Skipped);
        assert_eq!(inv.unskip("ep", "app").as_deref(), Ok("2"));
        assert!(inv.unskip("ep", "app").is_err());
    }
}
