//! The engine's pull stream (`POST /images/create`): one JSON object per line,
//! per layer `Downloading`/`Extracting` with `progressDetail` bytes. Read as
//! it comes so an `update` can show its progress (SPEC §14).

use std::collections::HashMap;

/// A line longer than this is not a progress message: skipped.
pub const MAX_LINE: usize = 64 << 10;
/// Layers followed at most (an image has tens; junk beyond is ignored).
const MAX_LAYERS: usize = 1024;

/// One layer: bytes downloaded and extracted of its size (0 while it waits).
#[derive(Debug, Clone, Copy, Default)]
struct Layer {
    total: u64,
    downloaded: u64,
    extracted: u64,
}

/// Percent of all layers' bytes downloaded and extracted (each half the
/// work), never going back.
#[derive(Debug, Default)]
pub struct PullProgress {
    layers: HashMap<String, Layer>,
    shown: u8,
}

/// What one line of the stream said.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The pull failed: the engine's message.
    Error(String),
    /// Progress moved to this percent.
    Percent(u8),
    Nothing,
}

impl PullProgress {
    /// Takes one line of the stream.
    pub fn feed(&mut self, line: &[u8]) -> Line {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            return Line::Nothing;
        };
        if let Some(e) = v
            .get("error")
            .or_else(|| v.get("errorDetail").and_then(|d| d.get("message")))
        {
            return Line::Error(e.as_str().unwrap_or("pull failed").to_string());
        }
        let (Some(id), Some(status)) = (v["id"].as_str(), v["status"].as_str()) else {
            return Line::Nothing;
        };
        if id.len() > 128 || (!self.layers.contains_key(id) && self.layers.len() >= MAX_LAYERS) {
            return Line::Nothing;
        }
        let detail = &v["progressDetail"];
        let (current, total) = (detail["current"].as_u64(), detail["total"].as_u64());
        let known = self.layers.contains_key(id);
        match status {
            // A layer the image has: counted from now on.
            "Pulling fs layer" | "Waiting" => {
                self.layers.entry(id.to_string()).or_default();
            }
            "Downloading" | "Extracting" => {
                let l = self.layers.entry(id.to_string()).or_default();
                if let Some(t) = total.filter(|t| *t > 0) {
                    l.total = l.total.max(t);
                }
                let c = current.unwrap_or(0).min(l.total);
                if status == "Downloading" {
                    l.downloaded = l.downloaded.max(c);
                } else {
                    l.downloaded = l.total;
                    l.extracted = l.extracted.max(c);
                }
            }
            "Download complete" | "Verifying Checksum" if known => {
                if let Some(l) = self.layers.get_mut(id) {
                    l.downloaded = l.total.max(1);
                    l.total = l.total.max(1);
                }
            }
            "Pull complete" | "Already exists" if known => {
                if let Some(l) = self.layers.get_mut(id) {
                    l.total = l.total.max(1);
                    l.downloaded = l.total;
                    l.extracted = l.total;
                }
            }
            _ => {}
        }
        match self.percent() {
            Some(p) if p > self.shown => {
                self.shown = p;
                Line::Percent(p)
            }
            _ => Line::Nothing,
        }
    }

    /// Work done of the layers seen; a layer whose size is not known yet
    /// counts as an average layer with nothing done.
    fn percent(&self) -> Option<u8> {
        if self.layers.is_empty() {
            return None;
        }
        let sized: Vec<&Layer> = self.layers.values().filter(|l| l.total > 0).collect();
        let avg = if sized.is_empty() {
            1
        } else {
            sized.iter().map(|l| l.total).sum::<u64>() / sized.len() as u64
        }
        .max(1);
        let (mut have, mut all) = (0u128, 0u128);
        for l in self.layers.values() {
            let size = if l.total > 0 { l.total } else { avg } as u128;
            all += 2 * size;
            have += (l.downloaded as u128).min(size) + (l.extracted as u128).min(size);
        }
        // 100 only once the engine says the pull is complete.
        Some(((have * 99) / all.max(1)).min(99) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, status: &str, cur: u64, total: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"id": id, "status": status,
            "progressDetail": {"current": cur, "total": total}}))
        .expect("json")
    }

    #[test]
    fn progress_is_monotonic_and_ends_below_100_until_complete() {
        let mut p = PullProgress::default();
        assert_eq!(
            p.feed(br#"{"status":"Pulling from a/b","id":"1"}"#),
            Line::Nothing
        );
        let mut seen = vec![];
        for l in [
            line("l1", "Pulling fs layer", 0, 0),
            line("l2", "Pulling fs layer", 0, 0),
            line("l1", "Downloading", 500, 1000),
            line("l1", "Downloading", 1000, 1000),
            line("l1", "Download complete", 0, 0),
            line("l1", "Extracting", 500, 1000),
            line("l1", "Pull complete", 0, 0),
            // l2's size turns out far larger: shown progress never goes back.
            line("l2", "Downloading", 10, 100_000),
            line("l2", "Downloading", 50_000, 100_000),
            line("l2", "Downloading", 100_000, 100_000),
            line("l2", "Pull complete", 0, 0),
        ] {
            if let Line::Percent(x) = p.feed(&l) {
                seen.push(x);
            }
        }
        assert!(!seen.is_empty());
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&99));
        assert_eq!(
            p.feed(br#"{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}"#),
            Line::Error("manifest unknown".into())
        );
        assert_eq!(p.feed(b"not json"), Line::Nothing);
        assert_eq!(p.feed(br#"{"id":5,"status":[]}"#), Line::Nothing);
    }
}
