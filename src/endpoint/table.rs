//! An endpoint's container table: every mirrored container as last
//! published (by name: SPEC §1 keys state by name, never by id), the id →
//! name index, the containers the filters or labels take out, recently
//! destroyed ids, pending removals, the event overlays that no inspect has
//! confirmed yet, and the label facts the command policy and the image
//! watcher read.
//!
//! The pure core of an endpoint: [`ContainerTable::apply`] (an engine event)
//! and [`ContainerTable::apply_inspect`] (an inspect answer) change the table
//! and say what must follow as [`Effect`]s; the endpoint carries them out
//! (publishing, scheduling) and nothing here does I/O.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use tokio::time::Instant;

use super::transitions;
use crate::docker::models::{ContainerInspect, Event};
use crate::payloads::ContainerState;

/// Actions that do not change a container's state: no inspect needed.
const STATELESS_ACTIONS: &[&str] = &[
    "attach",
    "detach",
    "resize",
    "top",
    "copy",
    "export",
    "commit",
    "archive-path",
    "extract-to-dir",
    "exec_create",
    "exec_start",
    "exec_die",
    "exec_detach",
];

/// Recently destroyed ids kept (a late inspect must not resurrect them).
const DESTROYED_KEPT: usize = 1024;

/// What follows a change of the table, for the endpoint to carry out.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// Publish this state of `name` (the endpoint adds the problem flag,
    /// writes it and tells its followers).
    State {
        name: String,
        state: Box<ContainerState>,
    },
    /// An event's transition was taken in (the event → state latency metric).
    Mirrored { event_nanos: i64 },
    /// `name` is gone: its topics go after the removal grace.
    Remove { name: String },
    /// `name` is filtered out: its topics go now.
    Clear { name: String },
    /// Ask the engine about this container.
    Inspect { id: String },
    /// This container was destroyed: forget what else is kept about it.
    Destroyed { id: String },
    /// The number of containers changed.
    Counts,
    /// The labels of a mirrored container, as its inspect read them (stacks
    /// and stats keep their own view of them).
    Labels {
        name: String,
        labels: HashMap<String, String>,
    },
    /// An inspect answer named no usable container (logged, nothing else).
    Unusable { id: String },
}

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
    /// Is this container event about a container we mirror (or may, once its
    /// inspect says)? `allows_name` is the name filter.
    pub fn visible(&self, ev: &Event, allows_name: impl Fn(&str) -> bool) -> bool {
        if self.excluded.contains(&ev.actor.id) {
            return false;
        }
        match ev.name() {
            Some(n) => allows_name(n),
            None => self.names.contains_key(&ev.actor.id),
        }
    }

    /// A visible container event (SPEC §10): what it tells is published at
    /// once, and the container is inspected for the rest.
    pub fn apply(&mut self, ev: &Event, allows_name: impl Fn(&str) -> bool) -> Vec<Effect> {
        let id = ev.actor.id.as_str();
        if id.is_empty() {
            return Vec::new();
        }
        let action = ev.action.split(':').next().unwrap_or("").trim();
        let name = ev
            .name()
            .map(String::from)
            .or_else(|| self.names.get(id).cloned());
        let mut out = Vec::new();
        match action {
            "destroy" => self.gone(id, &mut out),
            "rename" => {
                self.renamed(ev, name, allows_name, &mut out);
                out.push(Effect::Inspect { id: id.to_string() });
            }
            a if STATELESS_ACTIONS.contains(&a) => {}
            _ => {
                if let Some(n) = &name {
                    if action == "create" {
                        self.removals.remove(n);
                    }
                    if let Some(t) =
                        transitions::transition_of(&ev.action, &ev.actor.attributes, ev.nanos())
                    {
                        self.transition(id, n, t, ev.nanos(), &mut out);
                    }
                }
                out.push(Effect::Inspect { id: id.to_string() });
            }
        }
        out
    }

    /// What an event alone tells, recorded even when the container is not
    /// known yet: its first inspect may be older than this event (an `oom`
    /// right after `start`).
    fn transition(
        &mut self,
        id: &str,
        name: &str,
        t: transitions::Transition,
        nanos: i64,
        out: &mut Vec<Effect>,
    ) {
        let mut state = self.containers.get(name).filter(|s| s.id == id).cloned();
        if self.overlays.on_event(id, t, state.as_mut())
            && let Some(state) = state
        {
            out.push(Effect::State {
                name: name.to_string(),
                state: Box::new(state),
            });
        }
        out.push(Effect::Mirrored { event_nanos: nanos });
    }

    /// A rename: the old name's topics go unless the name is taken again
    /// within the grace (a recreate done by renaming, as Portainer's is); the
    /// new name shows at once and its inspect fills in the rest.
    fn renamed(
        &mut self,
        ev: &Event,
        name: Option<String>,
        allows_name: impl Fn(&str) -> bool,
        out: &mut Vec<Effect>,
    ) {
        let id = ev.actor.id.as_str();
        let Some(old) = ev.actor.attributes.get("oldName") else {
            return;
        };
        let old = old.trim_start_matches('/');
        if self.containers.get(old).is_none_or(|s| s.id != id) {
            return;
        }
        let moved = self.containers.remove(old);
        out.push(Effect::Remove {
            name: old.to_string(),
        });
        out.push(Effect::Counts);
        if let (Some(mut st), Some(new)) = (moved, name)
            && new != old
            && allows_name(&new)
        {
            st.name = new.clone();
            self.names.insert(id.to_string(), new.clone());
            self.removals.remove(&new);
            out.push(Effect::State {
                name: new,
                state: Box::new(st),
            });
        }
    }

    /// A destroyed container (or an inspect that found none).
    fn gone(&mut self, id: &str, out: &mut Vec<Effect>) {
        if !self.destroyed.iter().any(|d| d == id) {
            self.destroyed.push_back(id.to_string());
            if self.destroyed.len() > DESTROYED_KEPT {
                self.destroyed.pop_front();
            }
        }
        self.excluded.remove(id);
        self.overlays.forget(id);
        out.push(Effect::Destroyed { id: id.to_string() });
        if let Some(name) = self.names.remove(id)
            && self.containers.get(&name).is_some_and(|s| s.id == id)
        {
            self.containers.remove(&name);
            out.push(Effect::Remove { name });
            out.push(Effect::Counts);
        }
    }

    /// An inspect answer (`None`: no such container), asked at overlay
    /// generation `asked`, for endpoint `ep`; `allows` is the filter. The
    /// caller leaves out answers about destroyed ids.
    pub fn apply_inspect(
        &mut self,
        ep: &str,
        id: &str,
        asked: u64,
        ins: Option<&ContainerInspect>,
        allows: impl Fn(&str, &HashMap<String, String>) -> bool,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(ins) = ins else {
            self.gone(id, &mut out);
            return out;
        };
        let name = ins.name.trim_start_matches('/').to_string();
        if name.is_empty() || name.contains('/') {
            out.push(Effect::Unusable { id: id.to_string() });
            return out;
        }
        let labels = &ins.config.labels;
        if !allows(&name, labels) {
            // By label: its events are ignored from now on. By name: a rename
            // (e.g. an `update` restoring it) may bring it back.
            if crate::filter::label_excludes(labels) {
                self.excluded.insert(id.to_string());
            }
            if self.containers.get(&name).is_some_and(|s| s.id == id) {
                self.containers.remove(&name);
                out.push(Effect::Clear { name });
            }
            return out;
        }
        self.index(id, &name, &mut out);
        self.note_labels(&name, labels);
        out.push(Effect::Labels {
            name: name.clone(),
            labels: labels.clone(),
        });
        let mut state = ContainerState::from_inspect(ep, ins);
        self.overlays.settle(id, asked, &mut state);
        out.push(Effect::State {
            name,
            state: Box::new(state),
        });
        out
    }

    /// `id` is called `name` now: an old name of it goes (renamed while we
    /// were not looking), an old id of that name no longer names it (recreated).
    fn index(&mut self, id: &str, name: &str, out: &mut Vec<Effect>) {
        if let Some(old) = self.names.get(id).cloned()
            && old != name
            && self.containers.get(&old).is_some_and(|s| s.id == id)
        {
            self.containers.remove(&old);
            out.push(Effect::Remove { name: old });
        }
        if let Some(prev) = self.containers.get(name)
            && prev.id != id
        {
            let prev = prev.id.clone();
            self.names.remove(&prev);
        }
        self.names.insert(id.to_string(), name.to_string());
        self.removals.remove(name);
    }

    /// The label facts the command policy and the image watcher read.
    fn note_labels(&mut self, name: &str, labels: &HashMap<String, String>) {
        let watched: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| crate::watcher::watched_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if watched.is_empty() {
            self.watched_labels.remove(name);
        } else {
            self.watched_labels.insert(name.to_string(), watched);
        }
        set_member(
            &mut self.no_commands,
            name,
            crate::filter::commands_disabled(labels),
        );
        set_member(
            &mut self.no_logs,
            name,
            crate::filter::logs_disabled(labels),
        );
    }

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

fn set_member(set: &mut HashSet<String>, name: &str, member: bool) {
    if member {
        set.insert(name.to_string());
    } else {
        set.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::models::Actor;
    use std::time::Duration;

    const ID: &str = "c0ffee";

    fn event(action: &str, nanos: i64, attrs: &[(&str, &str)]) -> Event {
        let mut attributes: BTreeMap<String, String> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        attributes
            .entry("name".into())
            .or_insert_with(|| "web".into());
        Event {
            kind: "container".into(),
            action: action.into(),
            actor: Actor {
                id: ID.into(),
                attributes,
            },
            time: nanos / 1_000_000_000,
            time_nano: nanos,
        }
    }

    /// The engine's answer for our container, as `GET /containers/{id}/json` gives it.
    fn inspect(running: bool, exit_code: i64, labels: &[(&str, &str)]) -> ContainerInspect {
        let labels: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "Id": ID, "Name": "/web", "Image": "sha256:1",
            "Config": {"Image": "nginx:1", "Labels": labels},
            "State": {
                "Status": if running { "running" } else { "exited" },
                "Running": running, "ExitCode": exit_code,
                "StartedAt": "2026-11-20T08:00:00Z", "FinishedAt": "0001-01-01T00:00:00Z"
            }
        }))
        .expect("a valid inspect")
    }

    fn allow_all(_: &str) -> bool {
        true
    }

    /// A table that mirrors our running container, as after a sync.
    fn synced() -> ContainerTable {
        let mut t = ContainerTable::default();
        let fx = t.apply_inspect("local", ID, 0, Some(&inspect(true, 0, &[])), |_, _| true);
        assert!(matches!(fx.last(), Some(Effect::State { .. })));
        t.carry(fx);
        t
    }

    impl ContainerTable {
        /// What the endpoint's publisher does to the table with a state effect.
        fn carry(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
            for e in &fx {
                if let Effect::State { name, state } = e {
                    self.containers.insert(name.clone(), (**state).clone());
                }
            }
            fx
        }

        fn feed(&mut self, events: &[Event]) -> Vec<Effect> {
            events
                .iter()
                .flat_map(|e| {
                    let fx = self.apply(e, allow_all);
                    self.carry(fx)
                })
                .collect()
        }
    }

    fn states(fx: &[Effect]) -> Vec<(String, i64)> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::State { state, .. } => Some((state.state.clone(), state.exit_code)),
                _ => None,
            })
            .collect()
    }

    fn inspects(fx: &[Effect]) -> usize {
        fx.iter()
            .filter(|e| matches!(e, Effect::Inspect { .. }))
            .count()
    }

    // 2027-01-15, after the inspect's StartedAt.
    const T: i64 = 1_800_000_000_000_000_000;

    #[test]
    fn a_stop_publishes_exited_once_in_both_engines_orders() {
        // Docker 20.10: kill, die, stop. Docker 28.5: kill, stop, die.
        let kill = event("kill", T + 1, &[("signal", "15")]);
        let die = event("die", T + 2, &[("exitCode", "143")]);
        let stop = event("stop", T + 3, &[]);
        for order in [[&kill, &die, &stop], [&kill, &stop, &die]] {
            let mut t = synced();
            let evs: Vec<Event> = order.iter().map(|e| (*e).clone()).collect();
            let fx = t.feed(&evs);
            assert_eq!(states(&fx), vec![("exited".to_string(), 143)]);
            assert_eq!(
                inspects(&fx),
                3,
                "each of kill, stop and die asks an inspect"
            );
            assert_eq!(t.containers["web"].state, "exited");
        }
    }

    #[test]
    fn an_oom_after_die_sticks_through_the_older_inspect() {
        // Docker reports `oom` after `die` for a memory-killed container.
        let mut t = synced();
        let asked = t.overlays.generation(ID);
        let fx = t.feed(&[
            event("die", T + 1, &[("exitCode", "137")]),
            event("oom", T + 2, &[]),
        ]);
        assert_eq!(states(&fx).first(), Some(&("exited".to_string(), 137)));
        assert!(t.containers["web"].oom_killed);
        // An inspect asked before those events still says running: it does not win.
        let fx = t.apply_inspect("local", ID, asked, Some(&inspect(true, 0, &[])), |_, _| {
            true
        });
        let fx = t.carry(fx);
        assert_eq!(states(&fx), vec![("exited".to_string(), 137)]);
        assert!(t.containers["web"].oom_killed);
    }

    #[test]
    fn a_restart_loop_publishes_every_turn() {
        let mut t = synced();
        let mut evs = Vec::new();
        for i in 0..5 {
            evs.push(event("die", T + 10 * i + 1, &[("exitCode", "1")]));
            evs.push(event("start", T + 10 * i + 2, &[]));
        }
        let fx = t.feed(&evs);
        let shown: Vec<String> = states(&fx).into_iter().map(|(s, _)| s).collect();
        assert_eq!(shown, ["exited", "running"].repeat(5));
        assert_eq!(t.containers["web"].state, "running");
    }

    #[test]
    fn stateless_events_change_nothing_and_ask_nothing() {
        let mut t = synced();
        let fx = t.feed(&[
            event("exec_create: sh -c true", T + 1, &[]),
            event("exec_start: sh -c true", T + 2, &[]),
            event("exec_die", T + 3, &[("exitCode", "0")]),
            event("attach", T + 4, &[]),
        ]);
        assert!(fx.is_empty(), "{fx:?}");
    }

    #[test]
    fn a_destroy_removes_after_the_grace_and_forgets_the_id() {
        let mut t = synced();
        let fx = t.feed(&[event("destroy", T + 1, &[])]);
        assert_eq!(
            fx,
            vec![
                Effect::Destroyed { id: ID.into() },
                Effect::Remove { name: "web".into() },
                Effect::Counts,
            ]
        );
        assert!(t.containers.is_empty() && t.names.is_empty());
        assert!(t.destroyed.contains(&ID.to_string()));
        // A second destroy (replayed) removes nothing more.
        let fx = t.feed(&[event("destroy", T + 1, &[])]);
        assert_eq!(fx, vec![Effect::Destroyed { id: ID.into() }]);
    }

    #[test]
    fn a_rename_moves_the_state_at_once() {
        let mut t = synced();
        let fx = t.feed(&[event(
            "rename",
            T + 1,
            &[("name", "web2"), ("oldName", "/web")],
        )]);
        assert_eq!(fx[0], Effect::Remove { name: "web".into() });
        assert!(
            matches!(&fx[2], Effect::State { name, state } if name == "web2" && state.name == "web2")
        );
        assert_eq!(fx.last(), Some(&Effect::Inspect { id: ID.into() }));
        assert_eq!(t.names[ID], "web2");
        // Renamed to a name the filter refuses: removed, not republished.
        let mut t = synced();
        let fx = t.apply(
            &event("rename", T + 1, &[("name", "web-old"), ("oldName", "/web")]),
            |n| !n.ends_with("-old"),
        );
        assert_eq!(states(&fx), vec![]);
        assert!(fx.contains(&Effect::Remove { name: "web".into() }));
    }

    #[test]
    fn an_event_before_the_first_inspect_is_kept_for_it() {
        // `start` of a container created a moment ago: nothing known yet.
        let mut t = ContainerTable::default();
        let asked = t.overlays.generation(ID);
        let fx = t.feed(&[event("pause", T + 1, &[])]);
        assert_eq!(states(&fx), vec![]);
        assert_eq!(inspects(&fx), 1);
        // The inspect asked before the pause answers running; the pause is replayed.
        let fx = t.apply_inspect("local", ID, asked, Some(&inspect(true, 0, &[])), |_, _| {
            true
        });
        assert_eq!(states(&fx), vec![("paused".to_string(), 0)]);
    }

    #[test]
    fn an_inspect_of_a_label_excluded_container_clears_it_and_hides_its_events() {
        let mut t = synced();
        let allows = |_: &str, l: &HashMap<String, String>| !crate::filter::label_excludes(l);
        let ins = inspect(true, 0, &[("dockside.enable", "false")]);
        let fx = t.apply_inspect("local", ID, 0, Some(&ins), allows);
        assert_eq!(fx, vec![Effect::Clear { name: "web".into() }]);
        assert!(!t.visible(&event("start", T, &[]), allow_all));
    }

    #[test]
    fn an_inspect_records_the_label_facts() {
        let mut t = ContainerTable::default();
        let ins = inspect(
            true,
            0,
            &[("dockside.commands", "false"), ("dockside.logs", "false")],
        );
        let fx = t.apply_inspect("local", ID, 0, Some(&ins), |_, _| true);
        assert!(t.no_commands.contains("web") && t.no_logs.contains("web"));
        assert!(matches!(&fx[0], Effect::Labels { name, .. } if name == "web"));
        let fx = t.apply_inspect("local", ID, 0, Some(&inspect(true, 0, &[])), |_, _| true);
        assert!(t.no_commands.is_empty() && t.no_logs.is_empty());
        assert_eq!(states(&fx), vec![("running".to_string(), 0)]);
    }

    #[test]
    fn an_inspect_that_finds_nothing_is_a_destroy() {
        let mut t = synced();
        let fx = t.apply_inspect("local", ID, 0, None, |_, _| true);
        assert!(fx.contains(&Effect::Remove { name: "web".into() }));
        assert!(t.containers.is_empty());
    }

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
