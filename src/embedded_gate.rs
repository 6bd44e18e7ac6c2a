//! Who may publish what on the embedded broker (SPEC §16), as pure data: the
//! parts of MQTT 3.1.1/5 packets the gate reads (a CONNECT's credentials and
//! will topic, a PUBLISH's topic and QoS), the role a CONNECT's credentials
//! earn, and the one rule of what each role may publish. The front listener
//! (`embedded.rs`) applies it to every packet a client sends.

use crate::config::EmbeddedRole;

/// What a connection may publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// dockside itself (`embedded_username`): everything.
    Own,
    /// The command topics and Home Assistant's birth topic.
    Control,
    /// Home Assistant's birth topic only.
    Read,
    /// No credentials configured at all (a loopback broker, or
    /// `embedded_allow_anonymous`): anything but dockside's own topics.
    Anonymous,
}

impl From<EmbeddedRole> for Role {
    fn from(r: EmbeddedRole) -> Self {
        match r {
            EmbeddedRole::Read => Role::Read,
            EmbeddedRole::Control => Role::Control,
        }
    }
}

/// The topics dockside owns and the ones clients may write to.
#[derive(Debug, Clone)]
pub struct Topics {
    pub base: String,
    pub discovery_prefix: String,
    pub birth: String,
}

impl Topics {
    /// `<base>/set`, `<base>/<ep>/set`, `<base>/<ep>/<ct>/set`,
    /// `<base>/<ep>/_stacks/<stack>/set` (SPEC §5, §13).
    fn is_command(&self, topic: &str) -> bool {
        let Some(rest) = topic
            .strip_prefix(self.base.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let named = |p: &[&str]| p.iter().all(|s| !s.is_empty());
        match parts.as_slice() {
            ["set"] => true,
            [ep, "set"] => named(&[ep]),
            [ep, ct, "set"] => named(&[ep, ct]) && *ct != crate::stacks::SEGMENT,
            [ep, seg, stack, "set"] => *seg == crate::stacks::SEGMENT && named(&[ep, stack]),
            _ => false,
        }
    }

    /// Under `<base>/`, or a discovery config of one of dockside's devices
    /// (object ids start with the sanitised base, SPEC §2).
    fn is_dockside_own(&self, topic: &str) -> bool {
        if topic == self.base || topic.starts_with(&format!("{}/", self.base)) {
            return true;
        }
        let Some(rest) = topic
            .strip_prefix(self.discovery_prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
        else {
            return false;
        };
        let id_base = crate::topics::ha_id(&[&self.base]);
        rest.split('/').nth(1).is_some_and(|object_id| {
            object_id == id_base || object_id.starts_with(&format!("{id_base}_"))
        })
    }

    /// The one rule: may a client with `role` publish to `topic`?
    pub fn may_publish(&self, role: Role, topic: &str) -> bool {
        let birth = topic == self.birth;
        match role {
            Role::Own => true,
            Role::Read => birth,
            Role::Control => birth || self.is_command(topic),
            Role::Anonymous => self.is_command(topic) || !self.is_dockside_own(topic),
        }
    }
}

/// What the gate reads of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub level: u8,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub will_topic: Option<String>,
}

/// Reads a byte-counted MQTT field at `*i`.
fn field<'a>(b: &'a [u8], i: &mut usize) -> Result<&'a [u8], &'static str> {
    let len = usize::from(u16::from_be_bytes([
        *b.get(*i).ok_or("short packet")?,
        *b.get(*i + 1).ok_or("short packet")?,
    ]));
    let out = b.get(*i + 2..*i + 2 + len).ok_or("short packet")?;
    *i += 2 + len;
    Ok(out)
}

/// An MQTT variable byte integer at `*i`.
fn varint(b: &[u8], i: &mut usize) -> Result<usize, &'static str> {
    let mut value = 0usize;
    for shift in [0, 7, 14, 21] {
        let byte = *b.get(*i).ok_or("short packet")?;
        *i += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("bad variable byte integer")
}

/// `body`: a CONNECT packet after its fixed header.
pub fn parse_connect(body: &[u8]) -> Result<Connect, &'static str> {
    let mut i = 0;
    let name = field(body, &mut i)?;
    if name != b"MQTT" && name != b"MQIsdp" {
        return Err("not an MQTT protocol name");
    }
    let level = *body.get(i).ok_or("short packet")?;
    let flags = *body.get(i + 1).ok_or("short packet")?;
    i += 4; // level, flags, keep alive
    if level == 5 {
        let props = varint(body, &mut i)?;
        i += props;
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "a field is not UTF-8");
    field(body, &mut i)?; // client id
    let mut will_topic = None;
    if flags & 0x04 != 0 {
        if level == 5 {
            let props = varint(body, &mut i)?;
            i += props;
        }
        will_topic = Some(text(field(body, &mut i)?)?);
        field(body, &mut i)?; // will payload
    }
    let username = if flags & 0x80 != 0 {
        Some(text(field(body, &mut i)?)?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(field(body, &mut i)?.to_vec())
    } else {
        None
    };
    Ok(Connect {
        level,
        username,
        password,
        will_topic,
    })
}

/// A PUBLISH's topic and QoS; `first` is its fixed header's first byte and
/// `body` what follows the remaining length. An empty topic (an MQTT 5
/// topic alias) is returned as such: the gate refuses it, since it cannot
/// tell what the alias names.
pub fn publish_topic(first: u8, body: &[u8]) -> Result<(String, u8), &'static str> {
    let qos = (first >> 1) & 0x03;
    let mut i = 0;
    let topic = field(body, &mut i)?;
    let topic = String::from_utf8(topic.to_vec()).map_err(|_| "the topic is not UTF-8")?;
    Ok((topic, qos))
}

/// The role earned by a CONNECT's credentials: dockside's own, a user's,
/// or anonymous when no credentials are configured at all. `None`: none
/// (rumqttd then refuses the connection itself).
pub fn role_of(
    c: &Connect,
    own: Option<(&str, &str)>,
    users: &[(String, String, Role)],
) -> Option<Role> {
    let given = (c.username.as_deref(), c.password.as_deref());
    let matches = |u: &str, p: &str| match given {
        (Some(gu), Some(gp)) => {
            crate::embedded::constant_time_eq(gu.as_bytes(), u.as_bytes())
                & crate::embedded::constant_time_eq(gp, p.as_bytes())
        }
        _ => false,
    };
    let mut role = None;
    if let Some((u, p)) = own
        && matches(u, p)
    {
        role = Some(Role::Own);
    }
    for (u, p, r) in users {
        if matches(u, p) {
            role = role.or(Some(*r));
        }
    }
    if own.is_none() && users.is_empty() {
        role = Some(Role::Anonymous);
    }
    role
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            base: "dockside".into(),
            discovery_prefix: "homeassistant".into(),
            birth: "homeassistant/status".into(),
        }
    }

    #[test]
    fn each_role_publishes_only_what_it_may() {
        let t = topics();
        let commands = [
            "dockside/set",
            "dockside/local/set",
            "dockside/local/web/set",
            "dockside/local/_stacks/media/set",
        ];
        let fakes = [
            "dockside/local/web/state",
            "dockside/status",
            "dockside/local/_stacks/set",
            "dockside/local/web/set/x",
            "dockside//set",
            "homeassistant/device/dockside_local_web/config",
            "homeassistant/switch/dockside_local_web_power/config",
        ];
        for c in commands {
            assert!(t.may_publish(Role::Control, c), "{c}");
            assert!(t.may_publish(Role::Anonymous, c), "{c}");
            assert!(!t.may_publish(Role::Read, c), "{c}");
        }
        for f in fakes {
            for r in [Role::Control, Role::Read, Role::Anonymous] {
                assert!(!t.may_publish(r, f), "{r:?} {f}");
            }
            assert!(t.may_publish(Role::Own, f));
        }
        for r in [Role::Control, Role::Read, Role::Anonymous] {
            assert!(t.may_publish(r, "homeassistant/status"));
        }
        // Others' topics: only an anonymous broker's clients (no roles) write there.
        assert!(t.may_publish(Role::Anonymous, "zigbee2mqtt/lamp/set"));
        assert!(t.may_publish(Role::Anonymous, "homeassistant/device/z2m_lamp/config"));
        assert!(!t.may_publish(Role::Control, "zigbee2mqtt/lamp/set"));
        assert!(!t.may_publish(Role::Read, "zigbee2mqtt/lamp/set"));
    }

    fn connect(level: u8, will: Option<&str>, user: Option<(&str, &str)>) -> Vec<u8> {
        let f = |b: &[u8]| {
            let mut v = (b.len() as u16).to_be_bytes().to_vec();
            v.extend_from_slice(b);
            v
        };
        let mut flags = 0x02;
        let mut payload = f(b"client");
        if let Some(w) = will {
            flags |= 0x04;
            if level == 5 {
                payload.push(0);
            }
            payload.extend(f(w.as_bytes()));
            payload.extend(f(b"offline"));
        }
        if let Some((u, p)) = user {
            flags |= 0xC0;
            payload.extend(f(u.as_bytes()));
            payload.extend(f(p.as_bytes()));
        }
        let mut body = f(b"MQTT");
        body.extend([level, flags, 0, 60]);
        if level == 5 {
            body.extend([3, 0x21, 0, 10]); // receive maximum
        }
        body.extend(payload);
        body
    }

    #[test]
    fn connects_of_both_protocols_and_their_roles() {
        for level in [4, 5] {
            let c = parse_connect(&connect(
                level,
                Some("homeassistant/status"),
                Some(("ha", "pw")),
            ))
            .expect("connect");
            assert_eq!(c.level, level);
            assert_eq!(c.username.as_deref(), Some("ha"));
            assert_eq!(c.password.as_deref(), Some(&b"pw"[..]));
            assert_eq!(c.will_topic.as_deref(), Some("homeassistant/status"));
            let users = vec![("ha".to_string(), "pw".to_string(), Role::Read)];
            assert_eq!(role_of(&c, Some(("me", "x")), &users), Some(Role::Read));
            assert_eq!(role_of(&c, Some(("ha", "pw")), &[]), Some(Role::Own));
            assert_eq!(role_of(&c, Some(("me", "x")), &[]), None);
            let anon = parse_connect(&connect(level, None, None)).expect("connect");
            assert_eq!(role_of(&anon, None, &[]), Some(Role::Anonymous));
            assert_eq!(role_of(&anon, None, &users), None);
        }
        assert!(parse_connect(&[0, 4, b'M']).is_err());
        assert!(parse_connect(&[0, 4, b'H', b'T', b'T', b'P', 4, 0, 0, 0]).is_err());
        let body = [0, 5, b'a', b'/', b'b', b'/', b'c', 0, 1];
        assert_eq!(publish_topic(0x32, &body), Ok(("a/b/c".to_string(), 1)));
        assert!(publish_topic(0x30, &[0]).is_err());
    }
}
