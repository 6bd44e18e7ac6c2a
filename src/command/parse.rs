use super::*;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// `remove` of a running container (SPEC §17).
    pub force: bool,
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
        force,
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
    if force.is_some() && action != "remove" {
        return Err(ParseError {
            message: "`force` goes only with `remove`".into(),
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
        force: force.unwrap_or(false),
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
    force: Option<bool>,
}

type Parsed = (String, Option<String>, Extras);

/// Every key a JSON command may carry.
const KEYS: &[&str] = &[
    "action",
    "request_id",
    "version",
    "lines",
    "since",
    "what",
    "label",
    "all_volumes",
    "force",
];

type Object = serde_json::Map<String, serde_json::Value>;

fn parse_json(text: &str) -> Result<Parsed, ParseError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| perr(format!("bad JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| perr("JSON payload must be an object"))?;
    let request_id = request_id_of(obj)?;
    // Past the request id, every refusal carries it (and the action once known).
    let fail = |message: String, action: Option<String>| ParseError {
        message,
        action,
        request_id: request_id.clone(),
    };
    let action = match obj.get("action") {
        Some(serde_json::Value::String(a)) => a.trim().to_ascii_lowercase(),
        Some(_) => return Err(fail("action must be a string".into(), None)),
        None => return Err(fail("missing `action`".into(), None)),
    };
    if let Some(k) = obj.keys().find(|k| !KEYS.contains(&k.as_str())) {
        let k: String = k.chars().take(32).collect();
        return Err(fail(format!("unknown key `{k}`"), None));
    }
    let extras = Extras::of(obj).map_err(|m| fail(m, Some(action.clone())))?;
    Ok((action, request_id, extras))
}

fn request_id_of(obj: &Object) -> Result<Option<String>, ParseError> {
    match obj.get("request_id") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.len() <= MAX_REQUEST_ID => Ok(Some(s.clone())),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(serde_json::Value::String(_)) => Err(perr(format!(
            "request_id is longer than {MAX_REQUEST_ID} characters"
        ))),
        Some(_) => Err(perr("request_id must be a string")),
    }
}

/// A key that may be absent or null; when present, `read` must accept it.
fn optional<T>(
    obj: &Object,
    key: &str,
    read: impl Fn(&serde_json::Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match obj.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => read(v).map(Some),
    }
}

fn or_refuse<T>(v: Option<T>, message: &str) -> Result<T, String> {
    v.ok_or_else(|| message.to_string())
}

impl Extras {
    /// The keys beyond `action` and `request_id`, each checked in turn.
    fn of(obj: &Object) -> Result<Self, String> {
        Ok(Extras {
            version: optional(obj, "version", |v| {
                or_refuse(
                    v.as_str().map(String::from),
                    "`version` must be a string (a tag)",
                )
            })?,
            lines: optional(obj, "lines", lines_of)?,
            since: obj.get("since").filter(|v| !v.is_null()).cloned(),
            what: optional(obj, "what", what_of)?,
            label: optional(obj, "label", label_of)?,
            all_volumes: optional(obj, "all_volumes", |v| {
                or_refuse(v.as_bool(), "`all_volumes` is true or false")
            })?,
            force: optional(obj, "force", |v| {
                or_refuse(v.as_bool(), "`force` is true or false")
            })?,
        })
    }
}

/// More than the most is the most (SPEC §13: at most 1,000).
fn lines_of(v: &serde_json::Value) -> Result<u32, String> {
    match v.as_u64() {
        Some(l) if l >= 1 => Ok(l.min(u64::from(MAX_LOG_LINES)) as u32),
        _ => Err(format!(
            "`lines` must be a whole number from 1 to {MAX_LOG_LINES}"
        )),
    }
}

fn what_of(v: &serde_json::Value) -> Result<Vec<String>, String> {
    let items = match v.as_array() {
        Some(items) if !items.is_empty() && items.len() <= PRUNABLE.len() => items,
        _ => return Err(format!("`what` is a list of {}", PRUNABLE.join(", "))),
    };
    let mut out: Vec<String> = Vec::new();
    for i in items {
        match i.as_str() {
            Some(w) if PRUNABLE.contains(&w) => {
                if !out.iter().any(|o| o == w) {
                    out.push(w.to_string());
                }
            }
            _ => return Err(format!("`what` names {} only", PRUNABLE.join(", "))),
        }
    }
    Ok(out)
}

fn label_of(v: &serde_json::Value) -> Result<String, String> {
    match v.as_str() {
        Some(l)
            if !l.is_empty()
                && l.len() <= 256
                && !l.starts_with('=')
                && l.chars().all(|c| !c.is_control()) =>
        {
            Ok(l.to_string())
        }
        _ => Err("`label` is `key` or `key=value` (at most 256 characters)".into()),
    }
}
