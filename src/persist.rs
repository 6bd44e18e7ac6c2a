//! The state directory (`state.dir`): per-endpoint event cursors, so events that
//! happen while dockside is stopped are delivered when it starts, each once.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("state.dir {path}: {message}")]
pub struct StateDirError {
    pub path: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
    /// Writers of one file never interleave (a background save and the final one).
    writing: std::sync::Arc<std::sync::Mutex<()>>,
    /// Endpoint → sequence number of its last cursor save.
    seqs: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

/// One cursor slot on disk.
#[derive(Debug, Serialize, Deserialize)]
struct Slot {
    seq: u64,
    #[serde(flatten)]
    cursor: Cursor,
}

impl StateDir {
    /// Creates the directory if needed and proves it is writable.
    pub fn open(dir: &Path) -> Result<Self, StateDirError> {
        let err = |message: String| StateDirError {
            path: dir.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create: {e}")))?;
        let probe = dir.join(".write-test");
        std::fs::File::create(&probe)
            .and_then(|mut f| f.write_all(b"ok"))
            .map_err(|e| err(format!("not writable: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        Ok(Self {
            dir: dir.to_path_buf(),
            writing: Default::default(),
            seqs: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The cursor before it had two slots (read once, then replaced).
    fn legacy_cursor_path(&self, ep: &str) -> PathBuf {
        self.dir.join(format!("cursor-{ep}.json"))
    }

    fn slot_path(&self, ep: &str, slot: u64) -> PathBuf {
        self.dir.join(format!(
            "cursor-{ep}.{}.json",
            if slot.is_multiple_of(2) { "a" } else { "b" }
        ))
    }

    /// The newest readable of the two slots (a torn write spoils one at most).
    pub fn load_cursor(&self, ep: &str) -> Option<Cursor> {
        let mut best: Option<Slot> = None;
        for slot in 0..2 {
            let Ok(text) = std::fs::read(self.slot_path(ep, slot)) else {
                continue;
            };
            match serde_json::from_slice::<Slot>(&text) {
                Ok(s) if best.as_ref().is_none_or(|b| s.seq > b.seq) => best = Some(s),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %ep, slot, error = %e, "ignoring an unreadable event cursor slot")
                }
            }
        }
        if let Some(b) = best {
            self.seqs().insert(ep.to_string(), b.seq);
            return Some(b.cursor);
        }
        let text = std::fs::read(self.legacy_cursor_path(ep)).ok()?;
        match serde_json::from_slice::<Cursor>(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(endpoint = %ep, error = %e, "ignoring an unreadable event cursor");
                None
            }
        }
    }

    fn seqs(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, u64>> {
        self.seqs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocking: call it off the async workers (`spawn_blocking`) or at shutdown.
    /// Saves go to two slots in turn, each overwritten in place and
    /// fdatasync'd: one page per save (an SD card's wear), and a power cut in
    /// the middle of one leaves the other.
    pub fn save_cursor(&self, ep: &str, cursor: &Cursor) -> std::io::Result<()> {
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let seq = {
            let mut seqs = self.seqs();
            let n = seqs.entry(ep.to_string()).or_insert(0);
            *n += 1;
            *n
        };
        let slot = Slot {
            seq,
            cursor: cursor.persisted(),
        };
        let data = serde_json::to_vec(&slot).map_err(std::io::Error::other)?;
        self.write_in_place(&self.slot_path(ep, seq), &data)?;
        let _ = std::fs::remove_file(self.legacy_cursor_path(ep));
        Ok(())
    }

    /// Overwrites `path` from offset 0, padded with JSON whitespace to a
    /// 512-byte multiple (stale bytes never follow the new ones), then
    /// fdatasync. The directory is fsync'd only when the file is new.
    fn write_in_place(&self, path: &Path, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let existed = path.exists();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)?;
        let len = data.len().div_ceil(512).max(1) * 512;
        let mut buf = data.to_vec();
        buf.resize(len, b' ');
        if f.metadata()?.len() > len as u64 {
            f.set_len(len as u64)?;
        }
        f.write_all_at(&buf, 0)?;
        f.sync_data()?;
        if !existed {
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Writes `name` whole or not at all, durably: temp file, fsync, rename,
    /// fsync of the directory (a power cut on a Pi leaves the old or the new
    /// file, never a torn one).
    pub fn write_atomic(&self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let _one_writer = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// A JSON file of `state.dir` written in the background (see [`BackgroundFile`]).
    pub fn background_file(&self, name: &str) -> BackgroundFile {
        BackgroundFile {
            dir: self.clone(),
            name: name.to_string(),
            written: Arc::default(),
            latest: Arc::default(),
            seq: 0,
        }
    }

    pub fn remove_cursor(&self, ep: &str) {
        for slot in 0..2 {
            let _ = std::fs::remove_file(self.slot_path(ep, slot));
        }
        let _ = std::fs::remove_file(self.legacy_cursor_path(ep));
        self.seqs().remove(ep);
    }
}

/// Where an endpoint's event stream resumes, plus the keys of the events seen
/// last, to drop the duplicates a `since` replay (or a Portainer poll beside
/// the live stream) brings back. In memory it remembers the last
/// `RECENT_CAP` keys; on disk only what a resume needs: the newest time and
/// the keys at exactly that time (`since` replays from that time on).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Cursor {
    /// Newest event time seen (Unix ns); 0 = none yet.
    pub time_nano: i64,
    /// Keys of recently seen events, oldest first.
    pub recent: VecDeque<String>,
    #[serde(skip)]
    index: HashSet<String>,
}

const RECENT_CAP: usize = 2048;

impl Cursor {
    /// What goes to disk: the newest time and the keys of the events at it.
    pub fn persisted(&self) -> Cursor {
        let at = self.time_nano.to_string();
        Cursor {
            time_nano: self.time_nano,
            recent: self
                .recent
                .iter()
                .filter(|k| k.split('|').next() == Some(at.as_str()))
                .cloned()
                .collect(),
            index: HashSet::new(),
        }
    }

    pub fn rebuild_index(&mut self) {
        self.index = self.recent.iter().cloned().collect();
    }

    /// The `since` parameter: seconds with a nanosecond fraction.
    pub fn since(&self) -> Option<String> {
        (self.time_nano > 0).then(|| {
            format!(
                "{}.{:09}",
                self.time_nano / 1_000_000_000,
                self.time_nano % 1_000_000_000
            )
        })
    }

    /// True the first time an event is seen; false for a replayed duplicate.
    pub fn accept(&mut self, time_nano: i64, key: String) -> bool {
        if self.index.contains(&key) {
            return false;
        }
        self.index.insert(key.clone());
        self.recent.push_back(key);
        while self.recent.len() > RECENT_CAP {
            if let Some(old) = self.recent.pop_front() {
                self.index.remove(&old);
            }
        }
        self.time_nano = self.time_nano.max(time_nano);
        true
    }
}

pub fn event_key(time_nano: i64, actor_id: &str, action: &str) -> String {
    format!("{time_nano}|{actor_id}|{action}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_and_since() {
        let mut c = Cursor::default();
        assert_eq!(c.since(), None);
        assert!(c.accept(15_000_000_005, event_key(15_000_000_005, "a", "start")));
        assert!(!c.accept(15_000_000_005, event_key(15_000_000_005, "a", "start")));
        assert!(c.accept(15_000_000_005, event_key(15_000_000_005, "b", "start")));
        // Slightly out of order live events are still delivered.
        assert!(c.accept(15_000_000_004, event_key(15_000_000_004, "c", "die")));
        assert_eq!(c.since().as_deref(), Some("15.000000005"));
    }

    #[test]
    fn bounded_and_persisted() {
        let dir = tempfile::tempdir().expect("tmp");
        let sd = StateDir::open(&dir.path().join("sub")).expect("open");
        let mut c = Cursor::default();
        for i in 0..(RECENT_CAP as i64 + 10) {
            c.accept(i, event_key(i, "x", "start"));
        }
        assert_eq!(c.recent.len(), RECENT_CAP);
        // Two more events at the newest time, one slightly older that came late.
        let last = RECENT_CAP as i64 + 9;
        c.accept(last, event_key(last, "y", "die"));
        c.accept(last - 3, event_key(last - 3, "z", "die"));
        sd.save_cursor("local", &c).expect("save");
        let mut back = sd.load_cursor("local").expect("load");
        back.rebuild_index();
        assert_eq!(back.time_nano, c.time_nano);
        // Only the keys at the newest time are kept: that is all a resume replays.
        assert_eq!(back.recent.len(), 2, "{:?}", back.recent);
        assert!(!back.accept(last, event_key(last, "x", "start")));
        assert!(!back.accept(last, event_key(last, "y", "die")));
        assert!(back.accept(last, event_key(last, "w", "start")));
        assert!(std::fs::read_dir(sd.path()).expect("ls").all(|e| {
            !e.expect("entry")
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        }));
        sd.remove_cursor("local");
        assert!(sd.load_cursor("local").is_none());
        // The one-file cursor of earlier versions is still read.
        std::fs::write(
            sd.path().join("cursor-old.json"),
            br#"{"time_nano":42,"recent":[]}"#,
        )
        .expect("legacy");
        assert_eq!(sd.load_cursor("old").expect("legacy").time_nano, 42);
    }

    #[test]
    fn unwritable_dir_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let e = StateDir::open(&file.join("sub")).expect_err("not a dir");
        assert!(e.to_string().contains("cannot create"), "{e}");
    }
}

/// A JSON document of `state.dir` (the update history, the crash-loop
/// record): read once at start, saved whole in the background after each
/// change. Without a state directory it lives in memory only; an unreadable
/// or corrupt file starts over empty.
#[derive(Debug)]
pub struct JsonFile {
    file: Option<BackgroundFile>,
    /// Names the data in the warning a failed write leaves.
    what: &'static str,
}

impl JsonFile {
    pub fn load<T: serde::de::DeserializeOwned + Default>(
        dir: Option<&StateDir>,
        name: &str,
        what: &'static str,
    ) -> (Self, T) {
        let file = dir.map(|d| d.background_file(name));
        let data = file
            .as_ref()
            .and_then(BackgroundFile::read)
            .and_then(|b| serde_json::from_slice::<T>(&b).ok())
            .unwrap_or_default();
        (JsonFile { file, what }, data)
    }

    pub fn save<T: Serialize>(&mut self, data: &T) {
        let Some(file) = &mut self.file else { return };
        match serde_json::to_vec(data) {
            Ok(b) => file.save(b, self.what),
            Err(e) => tracing::warn!(error = %e, "cannot encode the {}", self.what),
        }
    }
}

/// One small file of `state.dir`, rewritten whole (atomically) off the async
/// workers: an fsync on an SD card can take a while. Saves run in order of
/// their snapshots; an older one never overwrites a newer one, and one that a
/// newer snapshot already follows is skipped (a burst of changes is one write).
#[derive(Debug)]
pub struct BackgroundFile {
    dir: StateDir,
    name: String,
    written: Arc<std::sync::Mutex<u64>>,
    /// The newest snapshot handed over so far.
    latest: Arc<std::sync::atomic::AtomicU64>,
    seq: u64,
}

impl BackgroundFile {
    pub fn read(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.path().join(&self.name)).ok()
    }

    /// `what` names the data in the warning a failed write leaves.
    pub fn save(&mut self, bytes: Vec<u8>, what: &'static str) {
        use std::sync::atomic::Ordering;
        self.seq += 1;
        self.latest.store(self.seq, Ordering::SeqCst);
        let (seq, written, latest, dir, name) = (
            self.seq,
            self.written.clone(),
            self.latest.clone(),
            self.dir.clone(),
            self.name.clone(),
        );
        tokio::task::spawn_blocking(move || {
            let mut last = written.lock().unwrap_or_else(|e| e.into_inner());
            if *last > seq || latest.load(Ordering::SeqCst) > seq {
                return;
            }
            if let Err(e) = dir.write_atomic(&name, &bytes) {
                tracing::warn!(error = %e, file = %name, "cannot save the {what}");
            }
            *last = seq;
        });
    }
}
