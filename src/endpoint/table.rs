//! An endpoint's container table: every mirrored container as last
//! published (by name: SPEC §1 keys state by name, never by id), the id →
//! name index, the containers the filters or labels take out, recently
//! destroyed ids, pending removals, the event overlays that no inspect has
//! confirmed yet, and the label facts the command policy and the image
//! watcher read. Plain data: the endpoint's methods change it and publish.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use tokio::time::Instant;

use super::transitions;
use crate::payloads::ContainerState;

#[derive(Default)]
pub(super) struct ContainerTable {
    /// name → last published state.
    pub containers: HashMap<String, ContainerState>,
    /// id → name, for events that only carry an id.
    pub names: HashMap<String, String>,
    /// Containers taken out by the `dockside.enable=false` label.
    pub excluded: HashSet<String>,
    /// Recently destroyed ids: a late inspect answer must not resurrect them.
    pub destroyed: VecDeque<String>,
    /// name → when its topics are cleared unless it comes back.
    pub removals: HashMap<String, Instant>,
    /// Transitions published from events that no inspect has confirmed yet.
    pub overlays: transitions::Overlays,
    /// The labels the image watcher reads, per container name.
    pub watched_labels: HashMap<String, BTreeMap<String, String>>,
    /// Names whose label `dockside.commands=false` refuses commands.
    pub no_commands: HashSet<String>,
    /// Containers with the label `dockside.logs=false`.
    pub no_logs: HashSet<String>,
}

impl ContainerTable {
    /// A copy of every container's state (to republish while the table changes).
    pub fn snapshot(&self) -> Vec<(String, ContainerState)> {
        self.containers
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }

    /// When the next pending removal falls due.
    pub fn next_removal(&self) -> Option<Instant> {
        self.removals.values().min().copied()
    }

    /// Removals due by `now`, taken out of the list.
    pub fn take_due_removals(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self
            .removals
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &due {
            self.removals.remove(n);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn removals_fall_due_in_time_and_once() {
        let mut t = ContainerTable::default();
        let now = Instant::now();
        t.removals.insert("a".into(), now);
        t.removals.insert("b".into(), now + Duration::from_secs(60));
        assert_eq!(t.next_removal(), Some(now));
        assert_eq!(t.take_due_removals(now), vec!["a".to_string()]);
        assert!(t.take_due_removals(now).is_empty());
        assert_eq!(t.next_removal(), Some(now + Duration::from_secs(60)));
    }
}
