//! The problem flag (SPEC §13): one boolean per container that an automation
//! can alert on, with the reason. Pure rules in [`assess`]; the crash-loop
//! memory ([`Crashloops`]) is kept per endpoint and persisted in
//! `state.dir/crashloop-<ep>.json`, so a dockside restart in the middle of a
//! crash loop still sees it.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::payloads::ContainerState;
use crate::persist::{JsonFile, StateDir};

/// Containers remembered per endpoint (a bound on what engines can make us keep).
const MAX_TRACKED: usize = 4096;

/// Exit codes of a stop someone asked for (SIGINT, SIGKILL after the stop
/// timeout, SIGTERM): `docker stop` is no problem. OOM kills are told apart
/// by `oom_killed`.
const STOP_CODES: [i64; 3] = [130, 137, 143];

/// Whether `state` is a problem and why (reasons joined with `; `).
/// `recent_restarts`: restarts seen within the crash-loop window.
pub fn assess(state: &ContainerState, recent_restarts: usize, threshold: usize) -> Option<String> {
    let mut why = Vec::new();
    if state.oom_killed {
        why.push("OOM-killed".to_string());
    }
    if threshold > 0 && recent_restarts >= threshold {
        why.push(format!("crash loop: {recent_restarts} restarts"));
    }
    if state.health == "unhealthy" {
        why.push("unhealthy".into());
    }
    if state.restarting {
        why.push("restarting".into());
    }
    if state.dead {
        why.push("dead".into());
    }
    if state.state == "exited"
        && state.exit_code != 0
        && !STOP_CODES.contains(&state.exit_code)
        && !state.oom_killed
    {
        why.push(format!("exited with code {}", state.exit_code));
    }
    (!why.is_empty()).then(|| why.join("; "))
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Track {
    /// The last restart count seen (the engine's `RestartCount`).
    count: i64,
    /// Unix seconds of the restarts seen within the window, oldest first.
    restarts: VecDeque<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    containers: BTreeMap<String, Track>,
}

/// Restart times per container name; owned by its endpoint task.
#[derive(Debug)]
pub struct Crashloops {
    file: JsonFile,
    data: File,
    window: Duration,
    threshold: usize,
}

impl Crashloops {
    pub fn load(dir: Option<&StateDir>, ep: &str, window: Duration, threshold: usize) -> Self {
        let (file, data) =
            JsonFile::load::<File>(dir, &format!("crashloop-{ep}.json"), "crash-loop record");
        Self {
            file,
            data,
            window,
            threshold,
        }
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Records `restart_count` seen at `now` (Unix seconds) and returns the
    /// restarts within the window. A lower count (a new container under the
    /// same name) starts over.
    pub fn observe(&mut self, name: &str, restart_count: i64, now: u64) -> usize {
        if !self.data.containers.contains_key(name) && self.data.containers.len() >= MAX_TRACKED {
            // The quietest container is forgotten first.
            if let Some(oldest) = self
                .data
                .containers
                .iter()
                .min_by_key(|(_, t)| t.restarts.back().copied().unwrap_or(0))
                .map(|(k, _)| k.clone())
            {
                self.data.containers.remove(&oldest);
            }
        }
        let cap = self.threshold.max(1) * 2;
        let window = self.window.as_secs();
        let first_sight = !self.data.containers.contains_key(name);
        let t = self.data.containers.entry(name.to_string()).or_default();
        if first_sight {
            // Restarts before dockside first saw it are not counted: no times known.
            t.count = restart_count;
        }
        let before = t.clone();
        if restart_count > t.count {
            let grew = usize::try_from(restart_count - t.count)
                .unwrap_or(cap)
                .min(cap);
            t.restarts.extend(std::iter::repeat_n(now, grew));
        } else if restart_count < t.count {
            t.restarts.clear();
        }
        t.count = restart_count;
        while t.restarts.front().is_some_and(|&r| r + window < now) {
            t.restarts.pop_front();
        }
        while t.restarts.len() > cap {
            t.restarts.pop_front();
        }
        let recent = t.restarts.len();
        // Written only when the restarts on record change: a crash loop is
        // rare, a dockside start with 100 containers is not (SD cards).
        if t.restarts != before.restarts {
            self.save();
        }
        recent
    }

    /// Restarts within the window at `now`, without recording anything.
    pub fn recent(&self, name: &str, now: u64) -> usize {
        let window = self.window.as_secs();
        self.data
            .containers
            .get(name)
            .map(|t| t.restarts.iter().filter(|&&r| r + window >= now).count())
            .unwrap_or(0)
    }

    /// Names with restarts on record (whose flag may change as time passes).
    pub fn tracked(&self) -> impl Iterator<Item = &String> {
        self.data
            .containers
            .iter()
            .filter(|(_, t)| !t.restarts.is_empty())
            .map(|(k, _)| k)
    }

    /// The container is gone for good. Written only when it had restarts on
    /// record: removing a thousand quiet containers writes nothing (SD cards).
    pub fn forget(&mut self, name: &str) {
        if self
            .data
            .containers
            .remove(name)
            .is_some_and(|t| !t.restarts.is_empty())
        {
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

    fn state(f: impl FnOnce(&mut ContainerState)) -> ContainerState {
        let mut s = ContainerState::from_inspect("e", &Default::default());
        s.state = "running".into();
        s.health = "none".into();
        s.running = true;
        f(&mut s);
        s
    }

    #[test]
    fn reasons() {
        assert_eq!(assess(&state(|_| {}), 0, 3), None);
        assert_eq!(
            assess(&state(|s| s.health = "unhealthy".into()), 0, 3).as_deref(),
            Some("unhealthy")
        );
        let exited = |code| {
            state(move |s| {
                s.state = "exited".into();
                s.running = false;
                s.exit_code = code;
            })
        };
        assert_eq!(assess(&exited(0), 0, 3), None);
        assert_eq!(assess(&exited(137), 0, 3), None, "docker stop");
        assert_eq!(
            assess(&exited(3), 0, 3).as_deref(),
            Some("exited with code 3")
        );
        let oom = state(|s| {
            s.state = "exited".into();
            s.exit_code = 137;
            s.oom_killed = true;
        });
        assert_eq!(assess(&oom, 0, 3).as_deref(), Some("OOM-killed"));
        assert_eq!(
            assess(&state(|s| s.restarting = true), 3, 3).as_deref(),
            Some("crash loop: 3 restarts; restarting")
        );
        assert_eq!(assess(&state(|_| {}), 2, 3), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn restarts_within_the_window_and_across_a_reload() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = StateDir::open(tmp.path()).expect("dir");
        let mut c = Crashloops::load(Some(&dir), "local", Duration::from_secs(600), 3);
        assert_eq!(
            c.observe("app", 5, 1_000),
            0,
            "first sight: no growth known"
        );
        assert_eq!(c.observe("app", 6, 1_010), 1);
        assert_eq!(c.observe("app", 8, 1_020), 3);
        assert_eq!(c.recent("app", 1_500), 3);
        assert_eq!(c.recent("app", 1_615), 2, "the first is out of the window");
        assert_eq!(c.recent("app", 1_625), 0);
        assert_eq!(c.observe("app", 0, 1_700), 0, "recreated: starts over");
        assert_eq!(c.observe("app", 2, 1_710), 2);
        // Saved in the background: the next start sees the same restarts.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let again = Crashloops::load(Some(&dir), "local", Duration::from_secs(600), 3);
            if again.recent("app", 1_720) == 2 {
                assert_eq!(again.tracked().count(), 1);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.forget("app");
        assert_eq!(c.recent("app", 1_720), 0);
    }
}
