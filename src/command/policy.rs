use super::*;

/// What the command policy needs to know about the container a word is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subject {
    /// Label `dockside.commands=false`.
    pub label_off: bool,
    /// Label `dockside.logs=false`.
    pub logs_off: bool,
    /// An operation is using it (an update's `.dockside-old` backup, a
    /// container being recreated): `prune` leaves it alone.
    pub in_operation: bool,
    /// Matches `commands.protect`.
    pub protected: bool,
    /// The container dockside itself runs in.
    pub own: bool,
}

/// The one command policy (SPEC §5): whether `word` may run on a container.
/// `None` means permitted. With `who = None` (the container is not known
/// yet, as in the router) only the container-independent rules apply; the
/// endpoint asks again with the container, and Home Assistant's buttons are
/// built from the same answer.
/// `enabled` and `allow` are `commands.enabled` and `commands.allow`.
/// The command policy of one configuration (SPEC §5, §16): which words are
/// allowed, and for a container, what its [`Subject`] forbids. Every word,
/// from MQTT or Home Assistant's buttons, goes through [`Policy::refusal`].
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub enabled: bool,
    pub allow: &'a [String],
}

impl crate::config::CommandsConfig {
    pub fn policy(&self) -> Policy<'_> {
        Policy {
            enabled: self.enabled,
            allow: &self.allow,
        }
    }
}

impl Policy<'_> {
    /// Why `word` is refused (`who`: the container, when there is one), or None.
    pub fn refusal(&self, word: &str, who: Option<&Subject>) -> Option<(Code, String)> {
        refusal(self.enabled, self.allow, word, who)
    }
}

fn refusal(
    enabled: bool,
    allow: &[String],
    word: &str,
    who: Option<&Subject>,
) -> Option<(Code, String)> {
    let forbid = |m: String| Some((Code::Forbidden, m));
    // `update_all` is `update` on each container; `skip` decides about updates.
    let word = RIDES_ON
        .iter()
        .find(|(w, _)| *w == word)
        .map_or(word, |(_, on)| on);
    if !enabled {
        return forbid("commands are disabled (commands.enabled = false)".into());
    }
    if !allow.iter().any(|w| w == word) {
        return forbid(format!("`{word}` is not in commands.allow"));
    }
    let who = who?;
    let disruptive = DISRUPTIVE.contains(&word);
    if who.label_off {
        forbid("commands are disabled for this container (label dockside.commands=false)".into())
    } else if disruptive && who.own {
        forbid(format!("dockside never {word}s its own container"))
    } else if disruptive && who.protected {
        forbid(format!(
            "the container is protected (commands.protect): no {word}"
        ))
    } else if word == "logs" && who.protected {
        forbid("the container is protected (commands.protect): its logs are not read".into())
    } else if word == "logs" && who.logs_off {
        forbid("logs are off for this container (label dockside.logs=false)".into())
    } else if word == "prune" && who.in_operation {
        Some((Code::Busy, "an operation is using this container".into()))
    } else {
        None
    }
}

/// Remembers (topic, request id) pairs for `DEDUP_WINDOW`, at most
/// `DEDUP_CAP` of them (a flood of distinct ids forgets the oldest first).
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashMap<(String, String), Instant>,
    pub(super) order: std::collections::VecDeque<((String, String), Instant)>,
}

pub const DEDUP_CAP: usize = 4096;

impl Dedup {
    /// True when this pair was already seen within the window.
    pub fn is_duplicate(&mut self, topic: &str, request_id: &str, now: Instant) -> bool {
        while let Some((k, t)) = self.order.front() {
            let expired = now.duration_since(*t) >= DEDUP_WINDOW;
            if !expired && self.order.len() < DEDUP_CAP {
                break;
            }
            // Only the newest sighting of a key removes it from the map.
            if self.seen.get(k) == Some(t) {
                self.seen.remove(k);
            }
            self.order.pop_front();
        }
        let key = (topic.to_string(), request_id.to_string());
        match self.seen.get(&key) {
            Some(t) if now.duration_since(*t) < DEDUP_WINDOW => true,
            _ => {
                self.seen.insert(key.clone(), now);
                self.order.push_back((key, now));
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// `resync` and `check_updates` are heavy (a full re-list and republish, a
/// registry round): at most one per scope and word this often.
pub const SCOPE_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Last accepted `resync` / `check_updates` per (topic, word). Keys are the
/// bridge and existing endpoints only (unknown ones are refused first).
#[derive(Debug, Default)]
pub struct ScopeLimiter {
    last: HashMap<(String, String), Instant>,
}

impl ScopeLimiter {
    /// `Some(wait)` when this word on this scope must wait that long.
    pub fn check(&mut self, topic: &str, word: &str, now: Instant) -> Option<Duration> {
        let key = (topic.to_string(), word.to_string());
        if let Some(t) = self.last.get(&key) {
            let since = now.duration_since(*t);
            if since < SCOPE_MIN_INTERVAL {
                return Some(SCOPE_MIN_INTERVAL - since);
            }
        }
        if self.last.len() > 1024 {
            self.last
                .retain(|_, t| now.duration_since(*t) < SCOPE_MIN_INTERVAL);
        }
        self.last.insert(key, now);
        None
    }
}
