//! Commands over MQTT (SPEC §5, §13, §16), the pure part: the words and
//! codes (here), the payload parser (`parse`), the result payload
//! (`result`), the one command policy with its guards — refusals, request-id
//! de-duplication, per-scope rate limit (`policy`) — and the detection of
//! dockside's own container (`own`). Nothing here does I/O: commands run in
//! the endpoint that owns the container (`endpoint::commands`), reached
//! through the router (`supervisor::router`, which applies the retained
//! guard and the busy check of the inbound queue).

mod own;
mod parse;
mod policy;
mod result;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::topics::{CommandTarget, Topics};

pub use own::*;
pub use parse::*;
pub use policy::*;
pub use result::*;

/// Payloads larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 1024;
const MAX_REQUEST_ID: usize = 128;
/// A redelivered command (same topic and request id) within this window runs once.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// Words a container `set` topic takes.
pub const CONTAINER_WORDS: &[&str] = &[
    "start", "stop", "restart", "pause", "unpause", "kill", "update", "check", "rollback", "logs",
    "skip", "unskip", "remove", "sync",
];
/// Words an endpoint `set` topic takes.
pub const ENDPOINT_WORDS: &[&str] = &["resync", "check_updates", "update_all", "prune"];
/// What `commands.allow` may name: every container word, and `prune`
/// (an endpoint word that removes things, so opt-in too).
pub const ALLOWABLE_WORDS: &[&str] = &[
    "start", "stop", "restart", "pause", "unpause", "kill", "update", "check", "rollback", "logs",
    "prune", "remove",
];
/// Words allowed whenever another word is (`skip`/`unskip` with `update`, SPEC §17).
pub const RIDES_ON: &[(&str, &str)] = &[
    ("update_all", "update"),
    ("skip", "update"),
    ("unskip", "update"),
    ("sync", "update"),
];
/// What a plain `prune` removes; `volumes` only when named (SPEC §13).
pub const DEFAULT_PRUNE: &[&str] = &["images", "containers", "build_cache"];
const PRUNABLE: &[&str] = &["images", "containers", "build_cache", "volumes"];
/// Words the bridge `set` topic takes.
pub const BRIDGE_WORDS: &[&str] = &["resync", "check_updates"];
/// Words that would stop, kill, pause or recreate a container: refused for
/// dockside's own container and for `commands.protect`.
pub const DISRUPTIVE: &[&str] = &[
    "stop", "restart", "pause", "kill", "update", "rollback",
    // A stopped container removed by the endpoint word `prune`.
    "prune", "remove", "sync",
];
/// Words that recreate a container (run detached to their end, SPEC §14, §17).
pub fn is_operation(word: &str) -> bool {
    matches!(word, "update" | "rollback" | "sync")
}

/// Longest tag a registry accepts (distribution's reference grammar).
const MAX_TAG: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    Invalid,
    NotFound,
    Forbidden,
    RateLimited,
    EngineError,
    Timeout,
    Busy,
    /// The container's pre-update check said no (SPEC §17).
    Blocked,
}

impl Code {
    /// `busy` and `rate_limited` are flow control that the result already
    /// reports: logged at debug, or a flood would write one warning per
    /// command. Every other refusal or failure is a warning.
    pub fn is_routine(code: Option<Code>) -> bool {
        matches!(code, Some(Code::Busy | Code::RateLimited))
    }
}

/// Which kind of `set` topic a payload arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Container,
    Endpoint,
    Bridge,
    /// `<ep>/_stacks/<stack>/set` (SPEC §13).
    Stack,
}
