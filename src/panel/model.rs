//! What the panel shows (SPEC §18), built from what dockside publishes
//! (the outbox's copy of the retained topics under the base): pure.

use std::collections::BTreeMap;

use serde_json::Value;

/// One container as published: its state, update status and stats.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ContainerView {
    pub state: Value,
    pub update: Option<Value>,
    pub stats: Option<Value>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct EndpointView {
    /// `online` / `offline`.
    pub status: Option<String>,
    pub info: Option<Value>,
    pub containers: BTreeMap<String, ContainerView>,
    pub stacks: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Model {
    pub bridge_status: Option<String>,
    pub bridge_info: Option<Value>,
    pub endpoints: BTreeMap<String, EndpointView>,
}

/// Sorts the published topics (`<base>/…`) into endpoints, containers and
/// stacks. Payloads that are not the JSON they should be are left out.
pub fn build(base: &str, view: &[(String, bytes::Bytes)]) -> Model {
    let mut m = Model::default();
    let json = |p: &[u8]| serde_json::from_slice::<Value>(p).ok();
    let text = |p: &[u8]| String::from_utf8_lossy(p).to_string();
    for (topic, payload) in view {
        let Some(rest) = topic.strip_prefix(base).and_then(|r| r.strip_prefix('/')) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["status"] => m.bridge_status = Some(text(payload)),
            ["info"] => m.bridge_info = json(payload),
            [ep, "status"] => ep_of(&mut m, ep).status = Some(text(payload)),
            [ep, "info"] => ep_of(&mut m, ep).info = json(payload),
            [ep, seg, stack, "state"] if *seg == crate::stacks::SEGMENT => {
                if let Some(v) = json(payload) {
                    ep_of(&mut m, ep).stacks.insert(stack.to_string(), v);
                }
            }
            [ep, ct, "state"] => {
                if let Some(v) = json(payload).filter(Value::is_object) {
                    ct_of(&mut m, ep, ct).state = v;
                }
            }
            [ep, ct, "update"] => ct_of(&mut m, ep, ct).update = json(payload),
            [ep, ct, "stats"] => ct_of(&mut m, ep, ct).stats = json(payload),
            _ => {}
        }
    }
    // An update or stats topic without a state is a container on its way out.
    for ep in m.endpoints.values_mut() {
        ep.containers.retain(|_, c| c.state.is_object());
    }
    m
}

fn ep_of<'a>(m: &'a mut Model, ep: &str) -> &'a mut EndpointView {
    m.endpoints.entry(ep.to_string()).or_default()
}

fn ct_of<'a>(m: &'a mut Model, ep: &str, ct: &str) -> &'a mut ContainerView {
    ep_of(m, ep).containers.entry(ct.to_string()).or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_sort_into_endpoints_containers_and_stacks() {
        let view: Vec<(String, bytes::Bytes)> = [
            ("d/status", "online"),
            ("d/info", r#"{"version":"0.1.0"}"#),
            ("d/local/status", "online"),
            ("d/local/info", r#"{"containers":{"total":2}}"#),
            ("d/local/web/state", r#"{"state":"running"}"#),
            ("d/local/web/update", r#"{"status":"up_to_date"}"#),
            ("d/local/web/stats", r#"{"cpu_percent":1.5}"#),
            ("d/local/web/state/running", "true"),
            ("d/local/gone/update", r#"{"status":"up_to_date"}"#),
            ("d/local/bad/state", "not json"),
            ("d/local/_stacks/shop/state", r#"{"state":"running"}"#),
            ("other/local/x/state", r#"{"state":"running"}"#),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), bytes::Bytes::from(*p)))
        .collect();
        let m = build("d", &view);
        assert_eq!(m.bridge_status.as_deref(), Some("online"));
        let ep = &m.endpoints["local"];
        assert_eq!(ep.status.as_deref(), Some("online"));
        assert_eq!(ep.containers.keys().collect::<Vec<_>>(), ["web"]);
        assert_eq!(
            ep.containers["web"]
                .stats
                .as_ref()
                .map(|s| s["cpu_percent"].clone()),
            Some(1.5.into())
        );
        assert!(ep.stacks.contains_key("shop"));
        assert_eq!(m.endpoints.len(), 1);
    }
}
