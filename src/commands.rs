//! Commands over MQTT (SPEC §5): the payload parser, the result payload, the
//! request-id de-duplication and the detection of dockside's own container.
//! Everything here is pure; execution lives with the endpoint that owns the
//! container (`endpoint::commands`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::topics::{CommandTarget, Topics};

/// Payloads larger than this are refused unread.
pub const MAX_PAYLOAD: usize = 1024;
const MAX_REQUEST_ID: usize = 128;
/// A redelivered command (same topic and request id) within this window runs once.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(60);

/// Words a container `set` topic takes.
pub const CONTAINER_WORDS: &[&str] = &[
    "start", "stop", "restart", "pause", "unpause", "kill", "update", "check", "rollback", "logs",
];
/// Words an endpoint `set` topic takes.
pub const ENDPOINT_WORDS: &[&str] = &["resync", "check_updates", "update_all", "prune"];
/// What `commands.allow` may name: every container word, and `prune`
/// (an endpoint word that removes things, so opt-in too).
pub const ALLOWABLE_WORDS: &[&str] = &[
    "start", "stop", "restart", "pause", "unpause", "kill", "update", "check", "rollback", "logs",
    "prune",
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
    "prune",
];
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: String,
    pub request_id: Option<String>,
    /// `update` to this tag of the container's repository (SPEC §14).
    pub version: Option<String>,
    /// `logs` (SPEC §13): how many of the last lines (1–1,000; default 100).
    pub lines: Option<u32>,
    /// `logs`: only lines since this Unix time (from `"10m"`, RFC 3339 or seconds).
    pub since: Option<i64>,
    /// `prune`: what to remove (default [`DEFAULT_PRUNE`]).
    pub what: Option<Vec<String>>,
    /// `prune`: only what carries this label (`key` or `key=value`).
    pub label: Option<String>,
    /// `prune` with `volumes`: named volumes too (SPEC §16; off by default).
    pub all_volumes: bool,
}

/// `logs` without `lines`.
pub const DEFAULT_LOG_LINES: u32 = 100;
/// `logs` never returns more lines than this.
pub const MAX_LOG_LINES: u32 = 1000;

/// A refusal at parse time; carries whatever could be read so the result can echo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub message: String,
    pub action: Option<String>,
    pub request_id: Option<String>,
}

fn perr(message: impl Into<String>) -> ParseError {
    ParseError {
        message: message.into(),
        action: None,
        request_id: None,
    }
}

/// Parses a command payload: a plain word, or `{"action": "...", "request_id": "..."}`.
pub fn parse(payload: &[u8], scope: Scope) -> Result<Request, ParseError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(perr(format!(
            "payload of {} bytes is over the {MAX_PAYLOAD}-byte limit",
            payload.len()
        )));
    }
    let text = std::str::from_utf8(payload).map_err(|_| perr("payload is not UTF-8 text"))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(perr("empty payload"));
    }
    let (action, request_id, extras) = if text.starts_with('{') {
        parse_json(text)?
    } else {
        (text.to_ascii_lowercase(), None, Extras::default())
    };
    let Extras {
        version,
        lines,
        since,
        what,
        label,
        all_volumes,
    } = extras;
    let words = match scope {
        Scope::Container => CONTAINER_WORDS,
        Scope::Endpoint => ENDPOINT_WORDS,
        Scope::Bridge => BRIDGE_WORDS,
        Scope::Stack => crate::stacks::WORDS,
    };
    if !words.contains(&action.as_str()) {
        let shown: String = action.chars().take(32).collect();
        return Err(ParseError {
            message: format!(
                "unknown command `{shown}` (expected one of: {})",
                words.join(", ")
            ),
            action: None,
            request_id,
        });
    }
    if let Some(v) = &version {
        let refuse = |message: String| ParseError {
            message,
            action: Some(action.clone()),
            request_id: request_id.clone(),
        };
        if action != "update" {
            return Err(refuse("`version` goes only with `update`".into()));
        }
        check_tag(v).map_err(refuse)?;
    }
    if (what.is_some() || label.is_some() || all_volumes.is_some()) && action != "prune" {
        return Err(ParseError {
            message: "`what`, `label` and `all_volumes` go only with `prune`".into(),
            action: Some(action),
            request_id,
        });
    }
    if (lines.is_some() || since.is_some()) && action != "logs" {
        return Err(ParseError {
            message: "`lines` and `since` go only with `logs`".into(),
            action: Some(action),
            request_id,
        });
    }
    let since = match since {
        None => None,
        Some(v) => Some(
            parse_since(&v, crate::clock::unix_now()).map_err(|message| ParseError {
                message,
                action: Some(action.clone()),
                request_id: request_id.clone(),
            })?,
        ),
    };
    Ok(Request {
        action,
        request_id,
        version,
        lines,
        since,
        what,
        label,
        all_volumes: all_volumes.unwrap_or(false),
    })
}

/// `since` of `logs`: a duration back from `now` (`"10m"`), an RFC 3339
/// time, or Unix seconds; as Unix seconds.
pub fn parse_since(v: &serde_json::Value, now: u64) -> Result<i64, String> {
    let bad = || "`since` is a duration (\"10m\"), an RFC 3339 time or Unix seconds".to_string();
    match v {
        serde_json::Value::Number(n) => n.as_i64().filter(|s| *s >= 0).ok_or_else(bad),
        serde_json::Value::String(s) => {
            let s = s.trim();
            if let Ok(d) = humantime::parse_duration(s) {
                return Ok((now.saturating_sub(d.as_secs())) as i64);
            }
            if let Ok(t) = humantime::parse_rfc3339_weak(s) {
                return t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .map_err(|_| bad());
            }
            s.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(bad)
        }
        _ => Err(bad()),
    }
}

/// A `version` must be a plain tag of the container's own repository.
pub fn check_tag(v: &str) -> Result<(), String> {
    if v.contains('@') || v.starts_with("sha256:") {
        return Err("`version` must be a tag of the same repository, not a digest".into());
    }
    if v.contains('/') || v.contains(':') {
        return Err(
            "`version` is a tag of the container's repository (like 1.27.3), not an image reference"
                .into(),
        );
    }
    let mut chars = v.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if v.len() > MAX_TAG
        || !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(format!(
            "`version` is not a valid tag (letters, digits, `_`, `.`, `-`; at most {MAX_TAG})"
        ));
    }
    Ok(())
}

/// The keys beyond `action` and `request_id`.
#[derive(Default)]
struct Extras {
    version: Option<String>,
    lines: Option<u32>,
    since: Option<serde_json::Value>,
    what: Option<Vec<String>>,
    label: Option<String>,
    all_volumes: Option<bool>,
}

type Parsed = (String, Option<String>, Extras);

fn parse_json(text: &str) -> Result<Parsed, ParseError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| perr(format!("bad JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| perr("JSON payload must be an object"))?;
    let request_id = match obj.get("request_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.len() <= MAX_REQUEST_ID => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(serde_json::Value::String(_)) => {
            return Err(perr(format!(
                "request_id is longer than {MAX_REQUEST_ID} characters"
            )));
        }
        Some(_) => return Err(perr("request_id must be a string")),
    };
    let action = match obj.get("action") {
        Some(serde_json::Value::String(a)) => a.trim().to_ascii_lowercase(),
        Some(_) => {
            return Err(ParseError {
                message: "action must be a string".into(),
                action: None,
                request_id,
            });
        }
        None => {
            return Err(ParseError {
                message: "missing `action`".into(),
                action: None,
                request_id,
            });
        }
    };
    if let Some(k) = obj.keys().find(|k| {
        !matches!(
            k.as_str(),
            "action"
                | "request_id"
                | "version"
                | "lines"
                | "since"
                | "what"
                | "label"
                | "all_volumes"
        )
    }) {
        let k: String = k.chars().take(32).collect();
        return Err(ParseError {
            message: format!("unknown key `{k}`"),
            action: None,
            request_id,
        });
    }
    let version = match obj.get("version") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(v)) => Some(v.clone()),
        Some(_) => {
            return Err(ParseError {
                message: "`version` must be a string (a tag)".into(),
                action: Some(action),
                request_id,
            });
        }
    };
    let lines = match obj.get("lines") {
        None | Some(serde_json::Value::Null) => None,
        // More than the most is the most (SPEC §13: at most 1,000).
        Some(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|l| l >= 1) => Some(
            n.as_u64()
                .map_or(MAX_LOG_LINES, |l| l.min(u64::from(MAX_LOG_LINES)) as u32),
        ),
        Some(_) => {
            return Err(ParseError {
                message: format!("`lines` must be a whole number from 1 to {MAX_LOG_LINES}"),
                action: Some(action),
                request_id,
            });
        }
    };
    let since = obj.get("since").filter(|v| !v.is_null()).cloned();
    let what = match obj.get("what") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Array(items))
            if !items.is_empty() && items.len() <= PRUNABLE.len() =>
        {
            let mut out: Vec<String> = Vec::new();
            for i in items {
                match i.as_str() {
                    Some(w) if PRUNABLE.contains(&w) => {
                        if !out.iter().any(|o| o == w) {
                            out.push(w.to_string());
                        }
                    }
                    _ => {
                        return Err(ParseError {
                            message: format!("`what` names {} only", PRUNABLE.join(", ")),
                            action: Some(action),
                            request_id,
                        });
                    }
                }
            }
            Some(out)
        }
        Some(_) => {
            return Err(ParseError {
                message: format!("`what` is a list of {}", PRUNABLE.join(", ")),
                action: Some(action),
                request_id,
            });
        }
    };
    let label = match obj.get("label") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(l))
            if !l.is_empty()
                && l.len() <= 256
                && !l.starts_with('=')
                && l.chars().all(|c| !c.is_control()) =>
        {
            Some(l.clone())
        }
        Some(_) => {
            return Err(ParseError {
                message: "`label` is `key` or `key=value` (at most 256 characters)".into(),
                action: Some(action),
                request_id,
            });
        }
    };
    let all_volumes = match obj.get("all_volumes") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(_) => {
            return Err(ParseError {
                message: "`all_volumes` is true or false".into(),
                action: Some(action),
                request_id,
            });
        }
    };
    Ok((
        action,
        request_id,
        Extras {
            version,
            lines,
            since,
            what,
            label,
            all_volumes,
        },
    ))
}

/// The most a result message weighs (SPEC §13: a `logs` result is at most 64 KiB).
pub const MAX_RESULT_BYTES: usize = 64 << 10;

/// The result payload on `<…>/result` (SPEC §5).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CommandResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// `update_all`: each container's outcome, in the order they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<Vec<ContainerOutcome>>,
    /// `logs` (SPEC §13): the lines, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<crate::docker::logs::LogLine>>,
    /// `logs`: more lines than fit in 64 KiB, a line cut, or a stream cut short.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    /// `prune`: bytes the engine freed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaimed_bytes: Option<i64>,
    pub duration_ms: u64,
    pub at: String,
}

/// One container's part of an `update_all` result.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContainerOutcome {
    pub container: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<Code>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

impl ContainerOutcome {
    pub fn refused(container: &str, code: Code, error: impl Into<String>) -> Self {
        Self {
            container: container.to_string(),
            ok: false,
            code: Some(code),
            error: Some(error.into()),
            state: None,
        }
    }
}

impl From<(&str, &CommandResult)> for ContainerOutcome {
    fn from((container, r): (&str, &CommandResult)) -> Self {
        Self {
            container: container.to_string(),
            ok: r.ok,
            code: r.code,
            error: r.error.clone(),
            state: r.state.clone(),
        }
    }
}

impl CommandResult {
    pub fn ok(req: &Request, state: Option<String>, started: Instant) -> Self {
        Self {
            request_id: req.request_id.clone(),
            action: Some(req.action.clone()),
            ok: true,
            code: None,
            error: None,
            state,
            outcomes: None,
            logs: None,
            truncated: None,
            reclaimed_bytes: None,
            duration_ms: started.elapsed().as_millis() as u64,
            at: crate::payloads::now_rfc3339(),
        }
    }

    pub fn failed(
        action: Option<String>,
        request_id: Option<String>,
        code: Code,
        error: impl Into<String>,
        started: Instant,
    ) -> Self {
        Self {
            request_id,
            action,
            ok: false,
            code: Some(code),
            error: Some(error.into()),
            state: None,
            outcomes: None,
            logs: None,
            truncated: None,
            reclaimed_bytes: None,
            duration_ms: started.elapsed().as_millis() as u64,
            at: crate::payloads::now_rfc3339(),
        }
    }

    pub fn refused(req: &Request, code: Code, error: impl Into<String>, started: Instant) -> Self {
        Self::failed(
            Some(req.action.clone()),
            req.request_id.clone(),
            code,
            error,
            started,
        )
    }

    pub fn with_state(mut self, state: Option<String>) -> Self {
        self.state = state;
        self
    }

    /// Keeps the newest log lines for which the whole message, as a
    /// subscriber receives it, weighs at most `max` bytes (SPEC §13: the cap
    /// is on the result, whose JSON escapes make it heavier than the text).
    /// Whole lines only; `truncated` says when some were left out.
    pub fn fit_logs(&mut self, max: usize) {
        let Some(lines) = self.logs.take() else {
            return;
        };
        let was_truncated = self.truncated.unwrap_or(false);
        // Measured with `false`, the longer of the two words.
        self.logs = Some(Vec::new());
        self.truncated = Some(false);
        let mut total = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        let mut keep = lines.len();
        for l in lines.iter().rev() {
            // The line and the comma before it.
            let size = serde_json::to_vec(l).map_or(usize::MAX, |v| v.len() + 1);
            if total.saturating_add(size) > max {
                break;
            }
            total += size;
            keep -= 1;
        }
        let mut lines = lines;
        self.logs = Some(lines.split_off(keep));
        self.truncated = Some(was_truncated || keep > 0);
    }

    /// The payload, encoded once per result sent: counted here, so every
    /// result of every kind is in `dockside_commands_total`.
    pub fn to_json(&self) -> Vec<u8> {
        let code = self.code.and_then(|c| {
            serde_json::to_value(c)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
        });
        crate::metrics::get().count_command(self.action.as_deref(), code.as_deref());
        serde_json::to_vec(self).unwrap_or_else(|_| b"{\"ok\":false}".to_vec())
    }
}

/// Remembers (topic, request id) pairs for `DEDUP_WINDOW`, at most
/// `DEDUP_CAP` of them (a flood of distinct ids forgets the oldest first).
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashMap<(String, String), Instant>,
    order: std::collections::VecDeque<((String, String), Instant)>,
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
    // An endpoint's `update_all` is `update` on each of its containers.
    let word = if word == "update_all" { "update" } else { word };
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

/// The one result for a command that cannot even be queued (the inbound
/// queue is full): `busy`, with the request's id when it has one.
pub fn overflow_reply(topics: &Topics, topic: &str, payload: &[u8]) -> Option<(String, Vec<u8>)> {
    let (scope, result_topic) = match topics.parse_command(topic)? {
        CommandTarget::Bridge => (Scope::Bridge, topics.bridge_result()),
        CommandTarget::Endpoint(ep) => (Scope::Endpoint, topics.endpoint_result(ep)),
        CommandTarget::Container(ep, ct) => (Scope::Container, topics.container_result(ep, ct)),
        CommandTarget::Stack(ep, st) => (Scope::Stack, topics.stack_result(ep, st)),
    };
    if payload.is_empty() {
        return None; // deletes a retained message; never a command
    }
    let (action, request_id) = match parse(payload, scope) {
        Ok(r) => (Some(r.action), r.request_id),
        Err(e) => (e.action, e.request_id),
    };
    let r = CommandResult::failed(
        action,
        request_id,
        Code::Busy,
        "too many commands are waiting; try again",
        Instant::now(),
    );
    Some((result_topic, r.to_json()))
}

/// Container ids dockside runs in, if it runs in a container: Docker bind-mounts
/// `/etc/hostname` & co. from `/var/lib/docker/containers/<id>/`, and cgroup v1
/// paths end in the id.
pub fn own_container_ids(mountinfo: &str, cgroup: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for line in mountinfo.lines() {
        for part in line.split_whitespace() {
            if let Some(rest) = part.split("/containers/").nth(1)
                && let Some(id) = rest.split('/').next().filter(|id| is_container_id(id))
            {
                ids.insert(id.to_string());
            }
        }
    }
    for line in cgroup.lines() {
        let last = line.rsplit('/').next().unwrap_or("");
        let last = last
            .trim_start_matches("docker-")
            .trim_end_matches(".scope");
        if is_container_id(last) {
            ids.insert(last.to_string());
        }
    }
    ids
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Reads `/proc/self` for `own_container_ids`.
pub fn detect_own_container() -> HashSet<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own_container_ids(&mountinfo, &cgroup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logs_result(lines: Vec<crate::docker::logs::LogLine>, truncated: bool) -> CommandResult {
        let req = parse(br#"{"action":"logs","request_id":"r"}"#, Scope::Container).expect("req");
        let mut r = CommandResult::ok(&req, None, Instant::now());
        r.logs = Some(lines);
        r.truncated = Some(truncated);
        r
    }

    fn line(text: String) -> crate::docker::logs::LogLine {
        crate::docker::logs::LogLine {
            stream: "stdout",
            time: Some("2026-12-01T10:00:00.123456789Z".into()),
            text,
        }
    }

    #[test]
    fn a_logs_result_fits_64_kib_as_sent_keeping_the_newest_whole_lines() {
        // What users saw: 1,000 lines → 73.6 KB; escapes weigh more than text.
        for (n, text) in [
            (1000, "x".repeat(60)),
            (3000, "\u{1b}[31m\"quoted\"\t".repeat(20)),
            (10, "short".to_string()),
        ] {
            let lines: Vec<_> = (0..n).map(|i| line(format!("{i} {text}"))).collect();
            let mut r = logs_result(lines, false);
            let whole = serde_json::to_vec(&r).expect("json").len();
            r.fit_logs(MAX_RESULT_BYTES);
            let sent = serde_json::to_vec(&r).expect("json");
            assert!(sent.len() <= MAX_RESULT_BYTES, "{n}: {}", sent.len());
            let kept = r.logs.as_ref().expect("logs");
            assert_eq!(r.truncated, Some(whole > MAX_RESULT_BYTES), "{n}");
            assert!(
                kept.last()
                    .is_some_and(|l| l.text.starts_with(&format!("{} ", n - 1)))
            );
            assert!(
                kept.iter().all(|l| l.text.ends_with(&text)),
                "whole lines only"
            );
            if whole > MAX_RESULT_BYTES {
                assert!(
                    sent.len() > MAX_RESULT_BYTES - 2_000,
                    "as much as fits: {}",
                    sent.len()
                );
            }
        }
        // Truncated by the decoder stays truncated.
        let mut r = logs_result(vec![line("a".into())], true);
        r.fit_logs(MAX_RESULT_BYTES);
        assert_eq!(r.truncated, Some(true));
    }

    #[test]
    fn dedup_is_bounded_and_forgets_the_oldest_first() {
        let mut d = Dedup::default();
        let now = Instant::now();
        for i in 0..(DEDUP_CAP * 25) {
            assert!(!d.is_duplicate("t", &format!("r{i}"), now));
        }
        assert!(d.len() <= DEDUP_CAP, "{}", d.len());
        assert!(d.order.len() <= DEDUP_CAP);
        let last = format!("r{}", DEDUP_CAP * 25 - 1);
        assert!(
            d.is_duplicate("t", &last, now),
            "recent ids are still known"
        );
        assert!(!d.is_duplicate("t", "r0", now), "the oldest was forgotten");
        // Expired ones go too, and an id seen again after expiry counts anew.
        let later = now + DEDUP_WINDOW + Duration::from_secs(1);
        assert!(!d.is_duplicate("t", &last, later));
        assert!(d.is_duplicate("t", &last, later));
    }

    #[test]
    fn heavy_scope_commands_are_rate_limited_per_scope_and_word() {
        let mut l = ScopeLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.check("b/set", "resync", t0), None);
        assert!(
            l.check("b/set", "resync", t0 + Duration::from_secs(1))
                .is_some()
        );
        assert_eq!(l.check("b/set", "check_updates", t0), None);
        assert_eq!(l.check("b/local/set", "resync", t0), None);
        assert_eq!(l.check("b/set", "resync", t0 + SCOPE_MIN_INTERVAL), None);
    }

    #[test]
    fn prune_and_logs_follow_the_same_policy() {
        let allow: Vec<String> = vec!["prune".into(), "logs".into()];
        let plain = Subject::default();
        assert_eq!(refusal(true, &allow, "prune", Some(&plain)), None);
        assert_eq!(refusal(true, &allow, "logs", Some(&plain)), None);
        for who in [
            Subject { own: true, ..plain },
            Subject {
                protected: true,
                ..plain
            },
            Subject {
                label_off: true,
                ..plain
            },
        ] {
            assert!(
                refusal(true, &allow, "prune", Some(&who)).is_some(),
                "{who:?}"
            );
        }
        let busy = Subject {
            in_operation: true,
            ..plain
        };
        assert_eq!(
            refusal(true, &allow, "prune", Some(&busy)).map(|r| r.0),
            Some(Code::Busy)
        );
        for who in [
            Subject {
                protected: true,
                ..plain
            },
            Subject {
                logs_off: true,
                ..plain
            },
        ] {
            assert_eq!(
                refusal(true, &allow, "logs", Some(&who)).map(|r| r.0),
                Some(Code::Forbidden),
                "{who:?}"
            );
        }
        // Reading its own logs harms nothing.
        assert_eq!(
            refusal(true, &allow, "logs", Some(&Subject { own: true, ..plain })),
            None
        );
    }

    #[test]
    fn one_policy_for_every_word_and_container() {
        let allow: Vec<String> = vec!["start".into(), "stop".into(), "check".into()];
        let mut enabled = true;
        let plain = Subject::default();
        assert_eq!(refusal(enabled, &allow, "stop", Some(&plain)), None);
        assert_eq!(refusal(enabled, &allow, "stop", None), None);
        assert!(
            refusal(enabled, &allow, "kill", None)
                .is_some_and(|(c, m)| c == Code::Forbidden && m.contains("commands.allow"))
        );
        let label = Subject {
            label_off: true,
            ..plain
        };
        // The label turns off every word, `check` included.
        for w in ["start", "stop", "check"] {
            assert!(refusal(enabled, &allow, w, Some(&label)).is_some(), "{w}");
        }
        let own = Subject { own: true, ..plain };
        assert!(
            refusal(enabled, &allow, "stop", Some(&own))
                .is_some_and(|(_, m)| m.contains("its own"))
        );
        assert_eq!(refusal(enabled, &allow, "start", Some(&own)), None);
        let protected = Subject {
            protected: true,
            ..plain
        };
        assert!(refusal(enabled, &allow, "stop", Some(&protected)).is_some());
        assert_eq!(refusal(enabled, &allow, "check", Some(&protected)), None);
        enabled = false;
        assert!(
            refusal(enabled, &allow, "start", None)
                .is_some_and(|(_, m)| m.contains("commands.enabled"))
        );
    }

    #[test]
    fn overflow_reply_is_busy_with_the_request_id() {
        let topics = Topics::new("b");
        let (t, r) = overflow_reply(
            &topics,
            "b/local/web/set",
            br#"{"action":"stop","request_id":"x1"}"#,
        )
        .expect("reply");
        assert_eq!(t, "b/local/web/result");
        let v: serde_json::Value = serde_json::from_slice(&r).expect("json");
        assert_eq!(
            (
                v["code"].as_str(),
                v["request_id"].as_str(),
                v["ok"].as_bool()
            ),
            (Some("busy"), Some("x1"), Some(false))
        );
        assert!(overflow_reply(&topics, "b/local/web/set", b"").is_none());
        assert!(overflow_reply(&topics, "b/local/web/state", b"stop").is_none());
        assert!(overflow_reply(&topics, "b/set", b"\xff\xfe").is_some());
    }

    #[test]
    fn words_and_json() {
        let r = parse(b"restart", Scope::Container).expect("word");
        assert_eq!((r.action.as_str(), r.request_id), ("restart", None));
        let r = parse(b"  STOP\n", Scope::Container).expect("case and spaces");
        assert_eq!(r.action, "stop");
        let r = parse(
            br#"{"action":"pause","request_id":"abc"}"#,
            Scope::Container,
        )
        .expect("json");
        assert_eq!(
            (r.action.as_str(), r.request_id.as_deref()),
            ("pause", Some("abc"))
        );
        let r = parse(br#"{"action":"resync","request_id":42}"#, Scope::Bridge).expect("num id");
        assert_eq!(r.request_id.as_deref(), Some("42"));
        assert_eq!(
            parse(b"resync", Scope::Endpoint).expect("ep").action,
            "resync"
        );
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], Scope, &str)] = &[
            (b"", Scope::Container, "empty"),
            (b"reboot", Scope::Container, "unknown command"),
            (b"resync", Scope::Container, "unknown command"),
            (b"restart", Scope::Bridge, "unknown command"),
            (b"\xff\xfe", Scope::Container, "UTF-8"),
            (b"{", Scope::Container, "bad JSON"),
            (b"[1,2]", Scope::Container, "unknown command"),
            (br#"["start"]"#, Scope::Container, "unknown command"),
            (br#"{"action":5}"#, Scope::Container, "must be a string"),
            (br#"{"request_id":"x"}"#, Scope::Container, "missing"),
            (
                br#"{"action":"start","request_id":{}}"#,
                Scope::Container,
                "request_id",
            ),
            (
                br#"{"action":"start","extra":1}"#,
                Scope::Container,
                "unknown key",
            ),
        ];
        for (payload, scope, want) in cases {
            let e = parse(payload, *scope).expect_err("must fail");
            assert!(e.message.contains(want), "{payload:?}: {}", e.message);
        }
        let big = vec![b'a'; MAX_PAYLOAD + 1];
        assert!(
            parse(&big, Scope::Container)
                .expect_err("big")
                .message
                .contains("limit")
        );
        let deep = format!("{}{}", "[".repeat(400), "]".repeat(400));
        assert!(parse(deep.as_bytes(), Scope::Container).is_err());
        // The request id is echoed even when the action is bad.
        let e = parse(br#"{"action":"nope","request_id":"r1"}"#, Scope::Container).expect_err("x");
        assert_eq!(e.request_id.as_deref(), Some("r1"));
    }

    /// Property: any byte string is classified (Ok or Err), never panics, and an
    /// Ok always names a word of its scope. Bounded: 200k random inputs plus
    /// mutations of valid payloads.
    #[test]
    fn parser_never_panics_and_classifies_everything() {
        let seeds: &[&[u8]] = &[
            b"start",
            br#"{"action":"restart","request_id":"abc"}"#,
            br#"{"action":"resync"}"#,
            b"{\"action\":\"\xc3\xa9\"}",
        ];
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        for i in 0..200_000 {
            let mut input: Vec<u8> = if i % 2 == 0 {
                let len = rng.usize(0..64);
                (0..len).map(|_| rng.u8(..)).collect()
            } else {
                seeds[rng.usize(0..seeds.len())].to_vec()
            };
            for _ in 0..rng.usize(0..4) {
                if input.is_empty() {
                    break;
                }
                let at = rng.usize(0..input.len());
                match rng.u8(0..3) {
                    0 => input[at] = rng.u8(..),
                    1 => {
                        input.remove(at);
                    }
                    _ => input.insert(at, rng.u8(..)),
                }
            }
            for scope in [
                Scope::Container,
                Scope::Endpoint,
                Scope::Bridge,
                Scope::Stack,
            ] {
                if let Ok(r) = parse(&input, scope) {
                    let words = match scope {
                        Scope::Container => CONTAINER_WORDS,
                        Scope::Endpoint => ENDPOINT_WORDS,
                        Scope::Bridge => BRIDGE_WORDS,
                        Scope::Stack => crate::stacks::WORDS,
                    };
                    assert!(words.contains(&r.action.as_str()), "{input:?}");
                }
            }
        }
    }

    #[test]
    fn prune_arguments() {
        let r = parse(
            br#"{"action":"prune","what":["images","volumes","images"],"label":"a=b"}"#,
            Scope::Endpoint,
        )
        .expect("ok");
        assert_eq!(
            r.what,
            Some(vec!["images".to_string(), "volumes".to_string()])
        );
        assert_eq!(r.label.as_deref(), Some("a=b"));
        assert_eq!(parse(b"prune", Scope::Endpoint).expect("word").what, None);
        assert!(
            parse(b"prune", Scope::Container).is_err(),
            "an endpoint word"
        );
        for bad in [
            &br#"{"action":"prune","what":"images"}"#[..],
            br#"{"action":"prune","what":["networks"]}"#,
            br#"{"action":"prune","label":"=x"}"#,
            br#"{"action":"resync","what":["images"]}"#,
        ] {
            assert!(
                parse(bad, Scope::Endpoint).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let allow = vec!["start".to_string()];
        assert!(refusal(true, &allow, "prune", None).is_some(), "opt-in");
        assert!(refusal(true, &["prune".to_string()], "prune", None).is_none());
    }

    #[test]
    fn logs_arguments() {
        let r = parse(
            br#"{"action":"logs","lines":20,"since":"10m"}"#,
            Scope::Container,
        )
        .expect("ok");
        assert_eq!(r.lines, Some(20));
        let now = crate::clock::unix_now() as i64;
        assert!(r.since.is_some_and(|s| (now - 600 - s).abs() <= 2), "{r:?}");
        let r = parse(br#"{"action":"logs","lines":99999}"#, Scope::Container).expect("clamped");
        assert_eq!(r.lines, Some(MAX_LOG_LINES));
        assert_eq!(parse(b"logs", Scope::Container).expect("word").lines, None);
        assert_eq!(
            parse_since(&serde_json::json!(1_700_000_000), 0),
            Ok(1_700_000_000)
        );
        assert_eq!(
            parse_since(&serde_json::json!("2026-12-01T00:00:00Z"), 0),
            Ok(1_796_083_200)
        );
        for bad in [
            &br#"{"action":"logs","lines":0}"#[..],
            br#"{"action":"logs","lines":-1}"#,
            br#"{"action":"logs","lines":1.5}"#,
            br#"{"action":"logs","since":"soon"}"#,
            br#"{"action":"logs","since":-5}"#,
            br#"{"action":"restart","lines":5}"#,
        ] {
            assert!(
                parse(bad, Scope::Container).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // Opt-in like `pause`: refused unless commands.allow names it.
        let allow = vec![
            "start".to_string(),
            "stop".to_string(),
            "restart".to_string(),
        ];
        assert!(matches!(
            refusal(true, &allow, "logs", None),
            Some((Code::Forbidden, _))
        ));
    }

    #[test]
    fn update_to_a_version() {
        let r = parse(
            br#"{"action":"update","version":"1.27.3","request_id":"v"}"#,
            Scope::Container,
        )
        .expect("ok");
        assert_eq!(r.version.as_deref(), Some("1.27.3"));
        let junk = format!(r#"{{"action":"update","version":"{}"}}"#, "x".repeat(900));
        let bad: &[(&[u8], &str)] = &[
            (br#"{"action":"update","version":"sha256:abcd"}"#, "digest"),
            (br#"{"action":"update","version":"1@sha256:ab"}"#, "digest"),
            (
                br#"{"action":"update","version":"other/repo:1"}"#,
                "reference",
            ),
            (br#"{"action":"update","version":"1 2"}"#, "valid tag"),
            (br#"{"action":"update","version":""}"#, "valid tag"),
            (br#"{"action":"update","version":".x"}"#, "valid tag"),
            (br#"{"action":"update","version":7}"#, "string"),
            (
                br#"{"action":"restart","version":"1"}"#,
                "only with `update`",
            ),
            (junk.as_bytes(), "valid tag"),
        ];
        for (p, want) in bad {
            let e = parse(p, Scope::Container).expect_err("refused");
            assert!(
                e.message.contains(want),
                "{}: {}",
                String::from_utf8_lossy(p),
                e.message
            );
        }
        assert!(parse(b"update_all", Scope::Endpoint).is_ok());
        assert!(parse(b"update_all", Scope::Bridge).is_err());
        assert!(parse(b"update_all", Scope::Container).is_err());
        assert!(parse(b"rollback", Scope::Container).is_ok());
    }

    #[test]
    fn dedup_window() {
        let mut d = Dedup::default();
        let t0 = Instant::now();
        assert!(!d.is_duplicate("b/e/c/set", "r1", t0));
        assert!(d.is_duplicate("b/e/c/set", "r1", t0 + Duration::from_secs(30)));
        assert!(!d.is_duplicate("b/e/d/set", "r1", t0));
        assert!(!d.is_duplicate("b/e/c/set", "r1", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn own_container_detection() {
        let id = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100";
        let mountinfo = format!(
            "1465 1446 0:52 / / rw,relatime - overlay overlay rw\n\
             1480 1465 8:1 /var/lib/docker/containers/{id}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(
            own_container_ids(&mountinfo, ""),
            HashSet::from([id.to_string()])
        );
        let cgroup = format!("12:memory:/docker/{id}\n0::/system.slice/docker-{id}.scope\n");
        assert_eq!(
            own_container_ids("", &cgroup),
            HashSet::from([id.to_string()])
        );
        assert!(
            own_container_ids("1 2 0:1 / / rw - ext4 /dev/sda1 rw\n", "0::/user.slice\n")
                .is_empty()
        );
    }

    #[test]
    fn results_leave_out_empty_keys() {
        let req = Request {
            action: "restart".into(),
            request_id: Some("abc".into()),
            version: None,
            lines: None,
            since: None,
            what: None,
            label: None,
            all_volumes: false,
        };
        let ok = serde_json::to_value(CommandResult::ok(
            &req,
            Some("running".into()),
            Instant::now(),
        ))
        .expect("json");
        assert_eq!(ok["ok"], true);
        assert_eq!(ok["request_id"], "abc");
        assert!(ok.get("code").is_none() && ok.get("error").is_none());
        let no = serde_json::to_value(CommandResult::refused(
            &req,
            Code::Forbidden,
            "no",
            Instant::now(),
        ))
        .expect("json");
        assert_eq!(no["code"], "forbidden");
        assert_eq!(no["error"], "no");
    }
}
