use super::*;

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
    /// `update`/`rollback`: the versions it went from and to (SPEC §17).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
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
            from_version: None,
            to_version: None,
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
            from_version: None,
            to_version: None,
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
