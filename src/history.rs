//! Update history per container (SPEC §14): the last operations of `update`
//! and `rollback`, newest first, retained on `<base>/<ep>/<ct>/history` and
//! persisted in `state.dir/history-<ep>.json`.
//!
//! An operation is written to disk as `failed` ("dockside stopped before it
//! finished") when it starts and replaced when it ends, so a dockside killed
//! in the middle leaves the truth behind; nothing of that is published
//! until the operation ends.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::docker::recreate::Swap;
use crate::persist::{JsonFile, StateDir};

/// Operations kept per container.
pub const KEEP: usize = 10;
/// Containers with a history per endpoint (oldest-touched forgotten beyond).
const MAX_CONTAINERS: usize = 4096;
const INTERRUPTED: &str = "dockside stopped before the operation finished";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub action: String,
    /// `manual` (a command) or `auto` (an automatic update, SPEC §17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_image: Option<String>,
    /// The image references, so `rollback` can bring the name back too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_reference: Option<String>,
    /// `ok`, `rolled_back` (the new one failed its check, the old one is
    /// back) or `failed`.
    pub status: String,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    containers: BTreeMap<String, VecDeque<Entry>>,
}

/// One endpoint's histories; owned by its endpoint task.
#[derive(Debug)]
pub struct History {
    /// `history-<ep>.json`, saved in the background (none without a state dir).
    file: JsonFile,
    data: File,
    /// Operations of this run not ended yet: on disk (as interrupted) but
    /// never published, so the topic only ever shows ended operations.
    running: std::collections::HashSet<String>,
}

impl History {
    pub fn load(dir: Option<StateDir>, ep: &str) -> Self {
        let (file, mut data) = JsonFile::load::<File>(
            dir.as_ref(),
            &format!("history-{ep}.json"),
            "update history",
        );
        for list in data.containers.values_mut() {
            list.truncate(KEEP);
        }
        Self {
            file,
            data,
            running: Default::default(),
        }
    }

    pub fn get(&self, ct: &str) -> Option<&VecDeque<Entry>> {
        self.data.containers.get(ct)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.data.containers.keys()
    }

    /// The ended operations of `ct`, newest first (what is published).
    fn ended(&self, ct: &str) -> impl Iterator<Item = &Entry> {
        self.get(ct)
            .into_iter()
            .flatten()
            .filter(|e| !self.running.contains(&e.id))
    }

    /// Is there anything to publish for `ct`?
    pub fn has_ended(&self, ct: &str) -> bool {
        self.ended(ct).next().is_some()
    }

    /// The history as published (a JSON array, newest first).
    pub fn payload(&self, ct: &str) -> Vec<u8> {
        let list: Vec<&Entry> = self.ended(ct).collect();
        serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec())
    }

    /// An operation starts: on disk at once as interrupted, replaced by [`Self::finish`].
    pub fn begin(&mut self, ct: &str, action: &str, trigger: &str) -> String {
        let id = format!("{:016x}", fastrand::u64(..));
        if !self.data.containers.contains_key(ct)
            && self.data.containers.len() >= MAX_CONTAINERS
            && let Some(oldest) = self
                .data
                .containers
                .iter()
                .min_by(|a, b| {
                    a.1.front()
                        .map(|e| &e.started_at)
                        .cmp(&b.1.front().map(|e| &e.started_at))
                })
                .map(|(k, _)| k.clone())
        {
            self.data.containers.remove(&oldest);
        }
        let list = self.data.containers.entry(ct.to_string()).or_default();
        list.push_front(Entry {
            id: id.clone(),
            action: action.to_string(),
            trigger: Some(trigger.to_string()),
            from_version: None,
            to_version: None,
            from_image: None,
            to_image: None,
            from_reference: None,
            to_reference: None,
            status: "failed".into(),
            started_at: crate::payloads::now_rfc3339(),
            finished_at: None,
            error: Some(INTERRUPTED.into()),
        });
        list.truncate(KEEP);
        if self.running.len() < MAX_CONTAINERS {
            self.running.insert(id.clone());
        }
        self.save();
        id
    }

    /// The operation `id` ended. `status` is `ok`, `rolled_back` or `failed`.
    pub fn finish(&mut self, ct: &str, id: &str, swap: &Swap, status: &str, error: Option<String>) {
        self.running.remove(id);
        let Some(e) = self
            .data
            .containers
            .get_mut(ct)
            .and_then(|l| l.iter_mut().find(|e| e.id == id))
        else {
            return;
        };
        e.from_version = swap.from_version.clone();
        e.from_image = swap.from_image.clone();
        e.from_reference = swap.from_reference.clone();
        // Where it did not get to, the "to" side still says what was tried.
        e.to_version = swap.to_version.clone();
        e.to_image = swap.to_image.clone();
        e.to_reference = swap.to_reference.clone();
        e.status = status.to_string();
        e.finished_at = Some(crate::payloads::now_rfc3339());
        e.error = error;
        self.save();
    }

    /// The operation `id` changed nothing (the image was current): dropped.
    pub fn discard(&mut self, ct: &str, id: &str) {
        self.running.remove(id);
        if let Some(list) = self.data.containers.get_mut(ct) {
            list.retain(|e| e.id != id);
            if list.is_empty() {
                self.data.containers.remove(ct);
            }
            self.save();
        }
    }

    /// The operation `rollback` undoes: the newest successful `update`.
    pub fn last_update(&self, ct: &str) -> Option<&Entry> {
        self.get(ct)?
            .iter()
            .find(|e| e.action == "update" && e.status == "ok" && e.from_image.is_some())
    }

    /// The container is gone for good: its history goes with its topics.
    pub fn forget(&mut self, ct: &str) {
        if self.data.containers.remove(ct).is_some() {
            self.save();
        }
    }

    fn save(&mut self) {
        self.file.save(&self.data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn begin_is_interrupted_until_finished_and_survives_a_reload() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = StateDir::open(tmp.path()).expect("dir");
        let mut h = History::load(Some(dir.clone()), "local");
        let id = h.begin("app", "update", "manual");
        // Saves run in the background: wait for this one (slow disks, busy CI).
        let on_disk = |want: &dyn Fn(&History) -> bool| {
            let dir = dir.clone();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let h = History::load(Some(dir.clone()), "local");
                if want(&h) || std::time::Instant::now() > deadline {
                    return h;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        // Killed here: the next start sees a failed operation, with why.
        let h2 = on_disk(&|h| h.get("app").is_some());
        // Not published while it runs; a later run shows it as interrupted.
        assert!(!h.has_ended("app"));
        assert_eq!(h.payload("app"), b"[]");
        assert!(h2.has_ended("app"));
        let e = &h2.get("app").expect("entry")[0];
        assert_eq!(e.status, "failed");
        assert_eq!(e.error.as_deref(), Some(INTERRUPTED));
        let swap = Swap {
            from_image: Some("sha256:a".into()),
            to_image: Some("sha256:b".into()),
            from_version: Some("1".into()),
            to_version: Some("2".into()),
            ..Swap::default()
        };
        h.finish("app", &id, &swap, "ok", None);
        assert!(h.has_ended("app"));
        assert_eq!(
            h.last_update("app").expect("last").to_version.as_deref(),
            Some("2")
        );
        for _ in 0..15 {
            let id = h.begin("app", "rollback", "manual");
            h.finish("app", &id, &swap, "failed", Some("x".into()));
        }
        assert_eq!(h.get("app").map(|l| l.len()), Some(KEEP));
        assert!(h.last_update("app").is_none(), "older than the last 10");
        let h3 = on_disk(&|h| {
            h.get("app").is_some_and(|l| {
                l.len() == KEEP
                    && l.iter()
                        .all(|e| e.action == "rollback" && e.finished_at.is_some())
            })
        });
        assert_eq!(h3.get("app").map(|l| l.len()), Some(KEEP));
        assert_eq!(h3.get("app").expect("l")[0].action, "rollback");
        let v: serde_json::Value = serde_json::from_slice(&h3.payload("app")).expect("json");
        assert!(v.is_array() && v[0]["finished_at"].is_string());
        assert!(v[0].get("to_reference").is_none(), "absent keys left out");
    }
}
