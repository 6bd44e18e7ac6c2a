//! State from events (SPEC §10), as pure data: what an event alone tells about
//! a container, and the ordering rule between events and inspects.
//!
//! An event is published at once; the inspect it triggers fills in the rest.
//! An inspect answer can be older than events that arrived while it was in
//! flight, so each answer is tagged with the container's event generation at
//! the time it was asked, and the transitions recorded since are replayed on
//! top of it: a late inspect never overwrites a newer event's state.
//! Transitions are idempotent setters, so replaying one the answer already
//! reflects changes nothing.

use std::collections::{HashMap, VecDeque};

use crate::payloads::{ContainerState, rfc3339_nanos};

/// What an event tells about a container's state by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// `start`: running since the event.
    Started {
        at: String,
    },
    /// `unpause`: running again.
    Unpaused,
    /// `die`: exited with the event's exit code at the event time.
    Died {
        exit_code: i64,
        at: String,
    },
    Paused,
    /// `oom`: the kernel killed it for memory.
    OomKilled,
    /// `health_status: X`.
    Health(String),
}

/// The transition an event carries, if any (`kill`, `stop`, `restart`, … carry none).
pub fn transition_of(
    action: &str,
    attributes: &std::collections::BTreeMap<String, String>,
    time_nano: i64,
) -> Option<Transition> {
    let (verb, rest) = match action.split_once(':') {
        Some((a, r)) => (a.trim(), r.trim()),
        None => (action.trim(), ""),
    };
    match verb {
        "start" => Some(Transition::Started {
            at: rfc3339_nanos(time_nano),
        }),
        "unpause" => Some(Transition::Unpaused),
        "pause" => Some(Transition::Paused),
        "oom" => Some(Transition::OomKilled),
        "die" => Some(Transition::Died {
            // A missing or garbled code still means it stopped; the inspect corrects the code.
            exit_code: attributes
                .get("exitCode")
                .and_then(|c| c.trim().parse().ok())
                .unwrap_or(0),
            at: rfc3339_nanos(time_nano),
        }),
        "health_status" if crate::payloads::HEALTHS.contains(&rest) && rest != "none" => {
            Some(Transition::Health(rest.to_string()))
        }
        _ => None,
    }
}

/// Is time `a` strictly before `b`? Unparsable or missing times are never
/// before anything (the transition then applies as it always did).
fn earlier(a: &str, b: Option<&str>) -> bool {
    let parse = |t: &str| humantime::parse_rfc3339_weak(t).ok();
    match (parse(a), b.and_then(parse)) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

/// Is `t` older than what `s` already shows? A `die` from before the
/// current run's start belongs to a run that is over (the die of a restart,
/// replayed over an inspect that already saw the new run); a `start` from
/// before the last exit belongs to a run that already ended.
pub fn is_stale(s: &ContainerState, t: &Transition) -> bool {
    match t {
        Transition::Died { at, .. } => earlier(at, s.started_at.as_deref()),
        Transition::Started { at } => !s.running && earlier(at, s.finished_at.as_deref()),
        _ => false,
    }
}

/// Applies `t` to `s`; true when something changed.
pub fn apply(s: &mut ContainerState, t: &Transition) -> bool {
    if is_stale(s, t) {
        return false;
    }
    let before = s.clone();
    match t {
        Transition::Started { at } => {
            // As the engine does when a container starts: running, fresh start
            // time, exit code and OOM flag reset.
            set_running(s);
            s.exit_code = 0;
            s.oom_killed = false;
            s.started_at = Some(at.clone());
        }
        Transition::Unpaused => set_running(s),
        Transition::Died { exit_code, at } => {
            s.state = "exited".into();
            s.running = false;
            s.paused = false;
            s.restarting = false;
            s.exit_code = *exit_code;
            s.finished_at = Some(at.clone());
        }
        Transition::Paused => {
            if s.running {
                s.state = "paused".into();
                s.paused = true;
            }
        }
        Transition::OomKilled => s.oom_killed = true,
        Transition::Health(h) => {
            // A stopped container's health is not reported (the inspect says what it is).
            if s.running {
                s.health = h.clone();
            }
        }
    }
    *s != before
}

fn set_running(s: &mut ContainerState) {
    s.state = "running".into();
    s.running = true;
    s.paused = false;
    s.restarting = false;
    s.dead = false;
}

/// Transitions recorded per container id since its last settled inspect.
#[derive(Debug, Default)]
pub struct Overlays {
    by_id: HashMap<String, Overlay>,
    /// Ids with an `oom` since their last `start`: the engine's inspect only
    /// shows `OOMKilled` once the container has exited, so an answer between
    /// `oom` and `die` must not take the flag back.
    oom: std::collections::HashSet<String>,
}

#[derive(Debug, Default)]
struct Overlay {
    generation: u64,
    recent: VecDeque<(u64, Transition)>,
}

/// More transitions than this between two inspects of one container: the
/// oldest are dropped (the inspect that follows them is newer anyway).
const RECENT_PER_CONTAINER: usize = 32;
/// Containers with unsettled transitions; past this the table is reset (an
/// inspect is queued for each of them, which settles them again).
const MAX_CONTAINERS: usize = 16_384;

impl Overlays {
    /// Records a transition from an event and applies it to the container's
    /// state when it is known; true when that changed it.
    pub fn on_event(
        &mut self,
        id: &str,
        t: Transition,
        state: Option<&mut ContainerState>,
    ) -> bool {
        match &t {
            Transition::OomKilled => {
                if self.oom.len() >= MAX_CONTAINERS {
                    self.oom.clear();
                }
                self.oom.insert(id.to_string());
            }
            Transition::Started { .. } => {
                self.oom.remove(id);
            }
            _ => {}
        }
        let changed = state.is_some_and(|s| apply(s, &t));
        self.record(id, t);
        changed
    }

    fn record(&mut self, id: &str, t: Transition) {
        if self.by_id.len() >= MAX_CONTAINERS && !self.by_id.contains_key(id) {
            self.by_id.clear();
        }
        let o = self.by_id.entry(id.to_string()).or_default();
        o.generation += 1;
        let g = o.generation;
        o.recent.push_back((g, t));
        while o.recent.len() > RECENT_PER_CONTAINER {
            o.recent.pop_front();
        }
    }

    /// The tag an inspect asked now carries.
    pub fn generation(&self, id: &str) -> u64 {
        self.by_id.get(id).map_or(0, |o| o.generation)
    }

    /// An inspect asked at `asked` answered `state`: replays what happened
    /// since on top of it and forgets what the answer already covers.
    pub fn settle(&mut self, id: &str, asked: u64, state: &mut ContainerState) {
        if self.oom.contains(id) {
            state.oom_killed = true;
        }
        let Some(o) = self.by_id.get_mut(id) else {
            return;
        };
        o.recent.retain(|(g, _)| *g > asked);
        for (_, t) in &o.recent {
            apply(state, t);
        }
        if o.recent.is_empty() {
            self.by_id.remove(id);
        }
    }

    pub fn forget(&mut self, id: &str) {
        self.by_id.remove(id);
        self.oom.remove(id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::models::ContainerInspect;
    use std::collections::BTreeMap;

    fn running() -> ContainerState {
        let mut s = ContainerState::from_inspect("e", &ContainerInspect::default());
        s.id = "abc".into();
        s.name = "web".into();
        s.state = "running".into();
        s.running = true;
        s.health = "healthy".into();
        s.started_at = Some("2026-11-20T08:00:00Z".into());
        s
    }

    fn attrs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_kind_of_event_maps_to_its_transition() {
        let none = BTreeMap::new();
        let t = 1_700_000_000_123_456_789;
        assert_eq!(
            transition_of("die", &attrs(&[("exitCode", "137")]), t),
            Some(Transition::Died {
                exit_code: 137,
                at: "2023-11-14T22:13:20.123456789Z".into()
            })
        );
        assert!(matches!(
            transition_of("start", &none, t),
            Some(Transition::Started { .. })
        ));
        assert_eq!(transition_of("pause", &none, t), Some(Transition::Paused));
        assert_eq!(
            transition_of("unpause", &none, t),
            Some(Transition::Unpaused)
        );
        assert_eq!(transition_of("oom", &none, t), Some(Transition::OomKilled));
        assert_eq!(
            transition_of("health_status: unhealthy", &none, t),
            Some(Transition::Health("unhealthy".into()))
        );
        for silent in [
            "kill",
            "stop",
            "restart",
            "create",
            "exec_start: sh",
            "health_status: bogus",
            "health_status",
            "",
        ] {
            assert_eq!(transition_of(silent, &none, t), None, "{silent}");
        }
        // A garbled exit code still means it died.
        assert!(matches!(
            transition_of("die", &attrs(&[("exitCode", "x")]), t),
            Some(Transition::Died { exit_code: 0, .. })
        ));
    }

    #[test]
    fn transitions_set_what_the_engine_would_show() {
        let mut s = running();
        assert!(apply(
            &mut s,
            &Transition::Died {
                exit_code: 3,
                at: "T1".into()
            }
        ));
        assert_eq!(
            (s.state.as_str(), s.running, s.exit_code),
            ("exited", false, 3)
        );
        assert_eq!(s.finished_at.as_deref(), Some("T1"));
        // Health of a stopped container is left to the inspect; pause needs it running.
        assert!(!apply(&mut s, &Transition::Health("unhealthy".into())));
        assert!(!apply(&mut s, &Transition::Paused));
        assert!(apply(&mut s, &Transition::Started { at: "T2".into() }));
        assert_eq!(
            (s.state.as_str(), s.running, s.exit_code),
            ("running", true, 0)
        );
        assert_eq!(s.started_at.as_deref(), Some("T2"));
        assert!(apply(&mut s, &Transition::Paused));
        assert_eq!((s.state.as_str(), s.paused), ("paused", true));
        assert!(apply(&mut s, &Transition::Unpaused));
        assert_eq!((s.state.as_str(), s.paused), ("running", false));
        assert!(!apply(&mut s, &Transition::Unpaused), "idempotent");
        assert!(apply(&mut s, &Transition::OomKilled));
        assert!(s.oom_killed);
        assert!(apply(&mut s, &Transition::Health("starting".into())));
        assert_eq!(s.health, "starting");
    }

    #[test]
    fn a_late_inspect_never_overwrites_a_newer_event() {
        let mut o = Overlays::default();
        // die → inspect asked (gen 1) → start arrives (gen 2) → the inspect
        // answers with what it saw before the start: exited.
        o.record(
            "abc",
            Transition::Died {
                exit_code: 0,
                at: "T1".into(),
            },
        );
        let asked = o.generation("abc");
        o.record("abc", Transition::Started { at: "T2".into() });
        let mut answer = running();
        answer.state = "exited".into();
        answer.running = false;
        o.settle("abc", asked, &mut answer);
        assert_eq!(answer.state, "running");
        assert!(answer.running);
        assert!(!o.is_empty(), "the start is not settled by that answer");
        // The next inspect (asked after the start) settles it.
        let asked = o.generation("abc");
        let mut answer = running();
        o.settle("abc", asked, &mut answer);
        assert_eq!(answer, running());
        assert!(o.is_empty());
    }

    /// Docker 28.5 (containerd store), and 20.10 behind a socket proxy: the
    /// `kill` of a restart asks an inspect; the restart's `die` arrives while
    /// it is in flight; the answer already shows the new run. Replaying that
    /// die over it would show `exited` and fail the restart.
    #[test]
    fn the_die_of_a_restart_never_overrides_an_inspect_of_the_new_run() {
        let mut o = Overlays::default();
        let asked = o.generation("abc"); // inspect asked on `kill`
        let die = Transition::Died {
            exit_code: 0,
            at: "2026-11-20T08:00:05.100000000Z".into(),
        };
        o.record("abc", die.clone());
        let mut answer = running();
        answer.started_at = Some("2026-11-20T08:00:05.25Z".into());
        answer.finished_at = Some("2026-11-20T08:00:05.0999Z".into());
        o.settle("abc", asked, &mut answer);
        assert_eq!(answer.state, "running");
        assert!(answer.running);
        // The same die on a state still showing the old run applies.
        let mut old = running();
        assert!(o.on_event("abc", die, Some(&mut old)));
        assert_eq!(old.state, "exited");
        // A start older than the exit an inspect saw is stale too; a die
        // after the new start (a start that fails at once) is not.
        let mut exited = old.clone();
        exited.finished_at = Some("2026-11-20T08:00:07Z".into());
        let late_start = Transition::Started {
            at: "2026-11-20T08:00:06Z".into(),
        };
        assert!(!apply(&mut exited, &late_start));
        assert_eq!(exited.state, "exited");
        let mut s = running();
        s.started_at = Some("2026-11-20T08:00:06Z".into());
        assert!(apply(
            &mut s,
            &Transition::Died {
                exit_code: 1,
                at: "2026-11-20T08:00:06.5Z".into()
            }
        ));
        assert_eq!((s.state.as_str(), s.exit_code), ("exited", 1));
    }

    #[test]
    fn an_inspect_newer_than_every_event_is_taken_as_it_is() {
        let mut o = Overlays::default();
        o.record("abc", Transition::Paused);
        let asked = o.generation("abc");
        let mut answer = running(); // unpaused again by the time it answered
        o.settle("abc", asked, &mut answer);
        assert_eq!(answer, running());
        // Unknown ids and an empty table are no-ops.
        o.settle("zzz", 0, &mut answer);
        assert_eq!(o.generation("zzz"), 0);
    }

    #[test]
    fn an_oom_sticks_until_the_next_start() {
        let mut o = Overlays::default();
        let mut s = running();
        assert!(o.on_event("abc", Transition::OomKilled, Some(&mut s)));
        // The engine answers running, OOMKilled false, until the container exits.
        let asked = o.generation("abc");
        let mut answer = running();
        o.settle("abc", asked, &mut answer);
        assert!(answer.oom_killed);
        o.on_event(
            "abc",
            Transition::Died {
                exit_code: 137,
                at: "T".into(),
            },
            Some(&mut answer),
        );
        assert!(answer.oom_killed && !answer.running);
        o.on_event(
            "abc",
            Transition::Started { at: "T2".into() },
            Some(&mut answer),
        );
        assert!(!answer.oom_killed);
        let mut answer = running();
        o.settle("abc", o.generation("abc"), &mut answer);
        assert!(!answer.oom_killed);
    }

    #[test]
    fn bounded_per_container_and_overall() {
        let mut o = Overlays::default();
        for _ in 0..(RECENT_PER_CONTAINER * 3) {
            o.record("abc", Transition::Paused);
        }
        assert_eq!(o.by_id["abc"].recent.len(), RECENT_PER_CONTAINER);
        for i in 0..(MAX_CONTAINERS + 10) {
            o.record(&format!("id{i}"), Transition::Paused);
        }
        assert!(o.len() <= MAX_CONTAINERS);
        o.forget("id1");
    }
}
