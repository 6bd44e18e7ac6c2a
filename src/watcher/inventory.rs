//! The containers of every endpoint as the image watcher sees them, shared
//! by the endpoint tasks (which write) and the watcher (which reads and
//! publishes), with what the last status said (for `update`, `skip` and
//! automatic updates).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::Watched;
use crate::docker::DockerClient;

pub(super) type Key = (String, String);

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
        then();
    }
    /// Runs `f` (a publish) only if the container is still there, under the lock.
    pub(super) fn publish_if_present(&self, key: &Key, f: impl FnOnce()) {
        let g = self.lock();
        if g.containers.contains_key(key) {
            f();
        }
    }
    pub(super) fn take_changed(&self) -> BTreeSet<Key> {
        std::mem::take(&mut self.lock().changed)
    }
    pub(super) fn snapshot(&self) -> (HashMap<String, Arc<DockerClient>>, BTreeMap<Key, Watched>) {
        let g = self.lock();
        (g.endpoints.clone(), g.containers.clone())
    }
}

