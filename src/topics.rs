//! The whole MQTT topic layout (SPEC §3) lives here, so a newcomer finds it in one place.
//!
//! ```text
//! <base>/status                     online|offline (retained, last will)
//! <base>/info                       bridge info (retained)
//! <base>/set                        bridge command in
//! <base>/result                     bridge command results (not retained)
//! <base>/<ep>/status                endpoint online|offline (retained)
//! <base>/<ep>/info                  endpoint info (retained)
//! <base>/<ep>/events                every Docker event (not retained)
//! <base>/<ep>/set                   endpoint command in
//! <base>/<ep>/result                endpoint command results (not retained)
//! <base>/<ep>/<ct>/state            container state JSON (retained)
//! <base>/<ep>/<ct>/state/<key>      one plain value per state key (retained, flat_topics)
//! <base>/<ep>/<ct>/update           image update status (retained)
//! <base>/<ep>/<ct>/versions         tags it may move to, under tag following (retained)
//! <base>/<ep>/<ct>/history          its last updates and rollbacks (retained)
//! <base>/<ep>/<ct>/stats            CPU, memory, network, block I/O (retained, [stats])
//! <base>/<ep>/<ct>/stats/<key>      one plain value per stats key (retained, flat_topics)
//! <base>/<ep>/<ct>/event            the container's own events (not retained)
//! <base>/<ep>/<ct>/result           command results (not retained)
//! <base>/<ep>/<ct>/set              container command in
//! <base>/<ep>/_stacks/<stack>/state  a compose stack's state (retained)
//! <base>/<ep>/_stacks/<stack>/set    stack command in
//! <base>/<ep>/_stacks/<stack>/result stack command results (not retained)
//! <base>/.sync/<nonce>              the start-up read-back marker (QoS 0, not retained)
//! ```
//!
//! Home Assistant discovery (SPEC §7), outside the base, under the discovery prefix:
//!
//! ```text
//! <prefix>/device/<base>/config                      bridge device
//! <prefix>/device/<base>_<ep>/config                 endpoint device
//! <prefix>/device/<base>_<ep>_<ct>/config            container device
//! <prefix>/<platform>/<device id>_<component>/config per-entity form (discovery = "component")
//! <prefix>/status                                    HA's birth message (in)
//! ```
//! Each discovery topic has an *owner path* under the base (`<base>/.ha`,
//! `<base>/<ep>/.ha`, `<base>/<ep>/<ct>/.ha`) so clearing a container or an
//! endpoint by prefix clears its discovery too. `.` cannot start a Docker
//! name or an endpoint id, so owner paths never collide with real topics.

/// Builds topics under one base. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
}

impl Topics {
    pub fn new(base: impl Into<String>) -> Self {
        Self { base: base.into() }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn bridge_status(&self) -> String {
        format!("{}/status", self.base)
    }
    pub fn bridge_info(&self) -> String {
        format!("{}/info", self.base)
    }
    pub fn bridge_set(&self) -> String {
        format!("{}/set", self.base)
    }
    pub fn bridge_result(&self) -> String {
        format!("{}/result", self.base)
    }
    pub fn endpoint_result(&self, ep: &str) -> String {
        format!("{}/{}/result", self.base, ep)
    }
    pub fn endpoint_prefix(&self, ep: &str) -> String {
        format!("{}/{}/", self.base, ep)
    }
    pub fn endpoint_status(&self, ep: &str) -> String {
        format!("{}/{}/status", self.base, ep)
    }
    pub fn endpoint_info(&self, ep: &str) -> String {
        format!("{}/{}/info", self.base, ep)
    }
    pub fn endpoint_events(&self, ep: &str) -> String {
        format!("{}/{}/events", self.base, ep)
    }
    pub fn endpoint_set(&self, ep: &str) -> String {
        format!("{}/{}/set", self.base, ep)
    }
    pub fn container_prefix(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/", self.base, ep, ct)
    }
    pub fn container_state(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/state", self.base, ep, ct)
    }
    pub fn container_state_key(&self, ep: &str, ct: &str, key: &str) -> String {
        format!("{}/{}/{}/state/{}", self.base, ep, ct, key)
    }
    pub fn container_update(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/update", self.base, ep, ct)
    }
    pub fn container_versions(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/versions", self.base, ep, ct)
    }
    pub fn container_history(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/history", self.base, ep, ct)
    }
    pub fn container_event(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/event", self.base, ep, ct)
    }
    pub fn container_result(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/result", self.base, ep, ct)
    }
    pub fn container_stats(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/stats", self.base, ep, ct)
    }
    pub fn container_stats_key(&self, ep: &str, ct: &str, key: &str) -> String {
        format!("{}/{}/{}/stats/{}", self.base, ep, ct, key)
    }
    pub fn stack_prefix(&self, ep: &str, stack: &str) -> String {
        format!("{}/{}/{}/{}", self.base, ep, crate::stacks::SEGMENT, stack)
    }
    pub fn stack_state(&self, ep: &str, stack: &str) -> String {
        format!("{}/state", self.stack_prefix(ep, stack))
    }
    pub fn stack_set(&self, ep: &str, stack: &str) -> String {
        format!("{}/set", self.stack_prefix(ep, stack))
    }
    pub fn stack_result(&self, ep: &str, stack: &str) -> String {
        format!("{}/result", self.stack_prefix(ep, stack))
    }
    /// Owner path of a stack's discovery config.
    pub fn stack_owner(&self, ep: &str, stack: &str) -> String {
        format!("{}/{}", self.stack_prefix(ep, stack), OWNER_LEAF)
    }
    pub fn container_set(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/set", self.base, ep, ct)
    }

    /// Subscriptions for commands (SPEC §5).
    pub fn command_filters(&self) -> [String; 4] {
        [
            self.bridge_set(),
            format!("{}/+/set", self.base),
            format!("{}/+/+/set", self.base),
            format!("{}/+/{}/+/set", self.base, crate::stacks::SEGMENT),
        ]
    }

    /// Subscriptions used once at start to read back our own retained topics
    /// (the leftover sweep). They never overlap the command filters, so a
    /// command cannot arrive twice.
    pub fn readback_filters(&self) -> [String; 8] {
        [
            format!("{}/+/status", self.base),
            format!("{}/+/info", self.base),
            format!("{}/+/+/state", self.base),
            format!("{}/+/+/state/+", self.base),
            format!("{}/+/+/update", self.base),
            format!("{}/+/+/stats", self.base),
            format!("{}/+/+/stats/+", self.base),
            format!("{}/+/_stacks/+/state", self.base),
        ]
    }

    /// Where the read-back marker goes: `.` cannot appear in an endpoint id,
    /// so this never collides with a real endpoint.
    pub fn readback_marker(&self, nonce: &str) -> String {
        format!("{}/.sync/{}", self.base, nonce)
    }

    /// Owner path of the bridge's discovery config.
    pub fn bridge_owner(&self) -> String {
        format!("{}/{}", self.base, OWNER_LEAF)
    }
    /// Owner path of an endpoint's discovery config.
    pub fn endpoint_owner(&self, ep: &str) -> String {
        format!("{}/{}/{}", self.base, ep, OWNER_LEAF)
    }
    /// Owner path of a container's discovery config(s).
    pub fn container_owner(&self, ep: &str, ct: &str) -> String {
        format!("{}/{}/{}/{}", self.base, ep, ct, OWNER_LEAF)
    }

    /// Splits a topic under our base into its segments after the base.
    pub fn parse<'a>(&self, topic: &'a str) -> Option<Vec<&'a str>> {
        let rest = topic.strip_prefix(&self.base)?.strip_prefix('/')?;
        Some(rest.split('/').collect())
    }

    /// Classifies an incoming command topic.
    pub fn parse_command<'a>(&self, topic: &'a str) -> Option<CommandTarget<'a>> {
        let segs = self.parse(topic)?;
        match segs.as_slice() {
            ["set"] => Some(CommandTarget::Bridge),
            [ep, "set"] => Some(CommandTarget::Endpoint(ep)),
            [ep, crate::stacks::SEGMENT, stack, "set"] => Some(CommandTarget::Stack(ep, stack)),
            [ep, ct, "set"] if *ct != crate::stacks::SEGMENT => {
                Some(CommandTarget::Container(ep, ct))
            }
            _ => None,
        }
    }
}

/// Last segment of discovery owner paths.
pub const OWNER_LEAF: &str = ".ha";

/// Home Assistant discovery topics under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryTopics {
    prefix: String,
}

impl DiscoveryTopics {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// `<prefix>/device/<id>/config`
    pub fn device(&self, device_id: &str) -> String {
        format!("{}/device/{}/config", self.prefix, device_id)
    }
    /// `<prefix>/<platform>/<device id>_<component>/config`. No `<node_id>`: HA
    /// would then give it the same discovery id as the device form's component,
    /// and refuse one of the two while a switch between forms is under way.
    pub fn component(&self, platform: &str, device_id: &str, component: &str) -> String {
        format!(
            "{}/{}/{}_{}/config",
            self.prefix, platform, device_id, component
        )
    }
    /// Read back at start to find our leftovers (both forms, whatever the mode).
    pub fn readback_filter(&self) -> String {
        format!("{}/+/+/config", self.prefix)
    }
    /// The `<object_id>` of a discovery topic: the device id (device form) or
    /// `<device id>_<component>` (per-entity form).
    pub fn object_id_of<'a>(&self, topic: &'a str) -> Option<&'a str> {
        let rest = topic.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        match rest.split('/').collect::<Vec<_>>().as_slice() {
            [_, id, "config"] => Some(id),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandTarget<'a> {
    Bridge,
    Endpoint(&'a str),
    Container(&'a str, &'a str),
    /// `<ep>/_stacks/<stack>/set`.
    Stack(&'a str, &'a str),
}

/// Home Assistant ids (SPEC §2): every character outside `[A-Za-z0-9_-]` becomes `_`.
pub fn ha_id(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// Slug of a Portainer environment name (SPEC §2): lowercase, `[a-z0-9_-]`,
/// other runs become one `-`.
pub fn slug(name: &str) -> String {
    let mut out = String::new();
    let mut in_run = false;
    for c in name.chars().flat_map(|c| c.to_lowercase()) {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let t = Topics::new("dockside");
        assert_eq!(t.bridge_status(), "dockside/status");
        assert_eq!(t.endpoint_status("local"), "dockside/local/status");
        assert_eq!(
            t.container_state("local", "nginx"),
            "dockside/local/nginx/state"
        );
        assert_eq!(
            t.container_state_key("local", "nginx", "health"),
            "dockside/local/nginx/state/health"
        );
        assert_eq!(t.endpoint_events("nas"), "dockside/nas/events");
        assert_eq!(t.container_prefix("nas", "db"), "dockside/nas/db/");
    }

    #[test]
    fn parse_commands() {
        let t = Topics::new("ds");
        assert_eq!(t.parse_command("ds/set"), Some(CommandTarget::Bridge));
        assert_eq!(
            t.parse_command("ds/local/set"),
            Some(CommandTarget::Endpoint("local"))
        );
        assert_eq!(
            t.parse_command("ds/local/web/set"),
            Some(CommandTarget::Container("local", "web"))
        );
        assert_eq!(t.parse_command("ds/local/web/state"), None);
        assert_eq!(
            t.parse_command("ds/local/_stacks/media/set"),
            Some(CommandTarget::Stack("local", "media"))
        );
        // `_stacks` is never a container.
        assert_eq!(t.parse_command("ds/local/_stacks/set"), None);
        assert_eq!(t.parse_command("dsx/local/web/set"), None);
        assert_eq!(t.parse_command("other/set"), None);
    }

    #[test]
    fn discovery_topics() {
        let d = DiscoveryTopics::new("homeassistant");
        assert_eq!(
            d.device("dockside_local_nginx"),
            "homeassistant/device/dockside_local_nginx/config"
        );
        assert_eq!(
            d.component("switch", "dockside_local_nginx", "power"),
            "homeassistant/switch/dockside_local_nginx_power/config"
        );
        assert_eq!(
            d.object_id_of("homeassistant/device/dockside_local_nginx/config"),
            Some("dockside_local_nginx")
        );
        assert_eq!(
            d.object_id_of("homeassistant/switch/dockside_local_nginx_power/config"),
            Some("dockside_local_nginx_power")
        );
        assert_eq!(d.object_id_of("homeassistant/status"), None);
        assert_eq!(d.object_id_of("homeassistant/switch/n/o/config"), None);
        assert_eq!(d.object_id_of("other/device/x/config"), None);
        let t = Topics::new("dockside");
        assert_eq!(t.container_owner("local", "web"), "dockside/local/web/.ha");
        assert!(
            t.container_owner("local", "web")
                .starts_with(&t.container_prefix("local", "web"))
        );
        assert!(
            t.endpoint_owner("local")
                .starts_with(&t.endpoint_prefix("local"))
        );
    }

    #[test]
    fn ids_and_slugs() {
        assert_eq!(
            ha_id(&["dockside", "local", "my.app"]),
            "dockside_local_my_app"
        );
        assert_eq!(ha_id(&["ds", "nas-1", "a b/c"]), "ds_nas-1_a_b_c");
        assert_eq!(slug("Home Lab  (NAS)"), "home-lab-nas-");
        assert_eq!(slug("prod_01"), "prod_01");
        assert_eq!(slug("Édge"), "-dge");
    }
}
