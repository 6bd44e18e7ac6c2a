//! An endpoint's cursor keeper: the last event seen (to resume `/events`
//! with `since` after a restart, SPEC §4.4) and when it is written to
//! `state.dir` — every 10 s after a state event, every 2 min when only
//! healthcheck runs moved it (an SD card wears per write), at once at the end
//! of a session, off the async workers, retried after a failed write.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::persist::{Cursor, StateDir, event_key};

/// The cursor is written at most this often (and at the end of a session):
/// with 1 s healthchecks events never stop, and an SD card wears per write
/// (one page per save, `persist::StateDir::save_cursor`).
pub(super) const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(10);
/// When only routine events (a healthcheck's `exec_*` runs) moved the cursor
/// since the last save, it is saved this rarely: replaying them after a
/// crash changes no state, and 1 s healthchecks never let the stream rest.
const CURSOR_ROUTINE_SAVE_EVERY: Duration = Duration::from_secs(120);

/// Events that change no container state and are replayed harmlessly.
fn routine_event(action: &str) -> bool {
    action.starts_with("exec_")
}

/// Is a periodic save due? The keeper's pure policy.
fn save_due(dirty: bool, routine_only: bool, since_save: Duration) -> bool {
    dirty && (!routine_only || since_save >= CURSOR_ROUTINE_SAVE_EVERY)
}

pub(super) struct CursorKeeper {
    cursor: Cursor,
    dirty: bool,
    /// Every event since the last save was routine.
    routine_only: bool,
    saved_at: Instant,
    /// A background write is under way / the last one failed (retry).
    saving: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    /// The cursor, for the background stream task (Portainer mode).
    shared: Arc<AtomicI64>,
}

impl CursorKeeper {
    pub fn load(dir: Option<&StateDir>, ep: &str) -> Self {
        let mut cursor = dir.and_then(|d| d.load_cursor(ep)).unwrap_or_default();
        cursor.rebuild_index();
        CursorKeeper {
            cursor,
            dirty: false,
            routine_only: true,
            saved_at: Instant::now(),
            saving: Default::default(),
            failed: Default::default(),
            shared: Arc::new(AtomicI64::new(0)),
        }
    }

    /// An event arrived: false when it is a replayed duplicate (drop it).
    pub fn accept(&mut self, nanos: i64, actor: &str, action: &str) -> bool {
        if !self.cursor.accept(nanos, event_key(nanos, actor, action)) {
            return false;
        }
        self.dirty = true;
        self.routine_only &= routine_event(action);
        self.shared.store(self.cursor.time_nano, Ordering::Relaxed);
        true
    }

    /// No event seen yet: start from the engine's clock (so a resume never
    /// replays what happened before dockside listened).
    pub fn start_if_new(&mut self, time_nano: i64) {
        if self.cursor.time_nano == 0 {
            self.cursor.time_nano = time_nano;
            self.dirty = true;
        }
    }

    pub fn is_new(&self) -> bool {
        self.cursor.time_nano == 0
    }

    /// `since` for `/events`.
    pub fn since(&self) -> Option<String> {
        self.cursor.since()
    }

    /// The shared copy, current, for the background stream task.
    pub fn shared(&self) -> Arc<AtomicI64> {
        self.shared.store(self.cursor.time_nano, Ordering::Relaxed);
        self.shared.clone()
    }

    /// Now, on this thread: at the end of a session and at shutdown.
    pub fn save_now(&mut self, dir: Option<&StateDir>, ep: &str) {
        if !self.dirty && !self.failed.load(Ordering::Acquire) {
            return;
        }
        if let Some(dir) = dir
            && let Err(e) = dir.save_cursor(ep, &self.cursor)
        {
            tracing::warn!(endpoint = %ep, error = %e, "cannot save the event cursor");
            self.failed.store(true, Ordering::Release);
            return;
        }
        self.failed.store(false, Ordering::Release);
        self.dirty = false;
    }

    /// Periodic save, off the async workers (fsync can take long on an SD
    /// card). A failed write (disk full, read-only) is retried next time.
    pub fn save_soon(&mut self, dir: Option<&StateDir>, ep: &str) {
        if self.saving.load(Ordering::Acquire) {
            return; // the previous write is still under way
        }
        let failed_before = self.failed.load(Ordering::Acquire);
        if !save_due(self.dirty, self.routine_only, self.saved_at.elapsed()) && !failed_before {
            return;
        }
        let Some(dir) = dir.cloned() else {
            return;
        };
        self.dirty = false;
        self.routine_only = true;
        self.saved_at = Instant::now();
        let (id, cursor) = (ep.to_string(), self.cursor.persisted());
        let (saving, failed) = (self.saving.clone(), self.failed.clone());
        saving.store(true, Ordering::Release);
        tokio::task::spawn_blocking(move || {
            match dir.save_cursor(&id, &cursor) {
                Ok(()) => {
                    if failed.swap(false, Ordering::AcqRel) {
                        tracing::info!(endpoint = %id, "event cursor saved again");
                    }
                }
                Err(e) => {
                    if failed_before {
                        tracing::debug!(endpoint = %id, error = %e, "still cannot save the event cursor");
                    } else {
                        tracing::warn!(endpoint = %id, error = %e, "cannot save the event cursor; mirroring goes on, retrying every 10 s");
                    }
                    failed.store(true, Ordering::Release);
                }
            }
            saving.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_moved_only_by_healthcheck_runs_is_saved_rarely() {
        assert!(routine_event("exec_start: /bin/sh -c test -f /ok"));
        assert!(routine_event("exec_die"));
        for a in [
            "start",
            "die",
            "health_status: unhealthy",
            "destroy",
            "rename",
        ] {
            assert!(!routine_event(a), "{a}");
        }
        let tick = CURSOR_SAVE_EVERY;
        assert!(!save_due(false, false, tick), "nothing new");
        assert!(save_due(true, false, tick), "a state event: every tick");
        assert!(!save_due(true, true, tick), "healthchecks only: not yet");
        assert!(save_due(true, true, CURSOR_ROUTINE_SAVE_EVERY));
    }

    #[test]
    fn a_replayed_event_is_refused_and_the_first_contact_sets_the_start() {
        let mut k = CursorKeeper::load(None, "ep");
        assert!(k.is_new());
        k.start_if_new(5_000_000_000);
        assert!(!k.is_new());
        k.start_if_new(9_000_000_000);
        assert_eq!(k.shared().load(Ordering::Relaxed), 5_000_000_000);
        assert!(k.accept(6_000_000_000, "a", "start"));
        assert!(!k.accept(6_000_000_000, "a", "start"), "a replay");
        assert_eq!(k.shared().load(Ordering::Relaxed), 6_000_000_000);
    }
}
