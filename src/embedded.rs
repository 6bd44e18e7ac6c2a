//! The embedded MQTT broker (SPEC §12): rumqttd inside dockside's process,
//! so a machine with nothing but Docker can run the whole thing. dockside's
//! own client connects to it over loopback like to any broker (same outbox,
//! last will, retained state, commands in), and Home Assistant or Jeedom
//! connect to `mqtt.embedded_listen`.
//!
//! rumqttd runs its router and listener on threads of its own; it lives as
//! long as the process (a reload cannot move it: `preflight` refuses that).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::config::MqttConfig;

/// Largest packet a client may send (discovery configs are the biggest: ~30 KiB).
const MAX_PAYLOAD: usize = 256 << 10;
/// Messages kept per subscription filter for slow subscribers: two segments
/// of this size (bounds memory on a Raspberry Pi).
const SEGMENT_BYTES: usize = 64 << 10;
const SEGMENTS: usize = 2;
const MAX_CONNECTIONS: usize = 256;
const START_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error(
        "mqtt.embedded_listen {addr}: {err} (another broker on that port? set mqtt.embedded_listen)"
    )]
    Bind {
        addr: SocketAddr,
        err: std::io::Error,
    },
    #[error("mqtt.embedded_listen {0}: the embedded broker did not start listening")]
    NotListening(SocketAddr),
    #[error("cannot start the embedded broker: {0}")]
    Start(String),
}

/// The broker, running. Dropping it does not stop it (rumqttd has no stop);
/// it ends with the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub addr: SocketAddr,
}

/// Starts the broker on `mqtt.embedded_listen` and waits until it accepts.
pub fn start(cfg: &MqttConfig) -> Result<EmbeddedBroker, EmbeddedError> {
    let addr = cfg
        .embedded_socket_addr()
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    // rumqttd binds on a thread of its own and only logs a failure there:
    // a port in use is found here first, with the key that sets it.
    TcpListener::bind(addr).map_err(|err| EmbeddedError::Bind { addr, err })?;
    let config = broker_config(cfg, addr);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let connect_to = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    let deadline = Instant::now() + START_TIMEOUT;
    while !answers_connect(connect_to, cfg) {
        if Instant::now() > deadline {
            return Err(EmbeddedError::NotListening(addr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(listen = %addr, auth = cfg.embedded_username.is_some(), "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr })
}

/// One MQTT 3.1.1 CONNECT → CONNACK → DISCONNECT: the broker is up and
/// takes dockside's credentials (a bare TCP probe would log an error there).
fn answers_connect(to: SocketAddr, cfg: &MqttConfig) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let field = |b: &[u8]| {
        let mut v = (b.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    };
    let mut flags = 0x02u8; // clean session
    let mut payload = field(b"dockside-probe");
    if let (Some(u), Some(p)) = (&cfg.embedded_username, &cfg.embedded_password) {
        flags |= 0xC0;
        payload.extend(field(u.as_bytes()));
        payload.extend(field(p.as_bytes()));
    }
    let mut body = field(b"MQTT");
    body.extend([4, flags, 0, 10]);
    body.extend(payload);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend(body);
    let mut ack = [0u8; 4];
    let ok = s.write_all(&packet).is_ok()
        && s.read_exact(&mut ack).is_ok()
        && ack[0] == 0x20
        && ack[3] == 0;
    let _ = s.write_all(&[0xE0, 0]);
    ok
}

fn broker_config(cfg: &MqttConfig, addr: SocketAddr) -> rumqttd::Config {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PAYLOAD,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    if let (Some(user), Some(pass)) = (&cfg.embedded_username, &cfg.embedded_password) {
        let (user, pass) = (user.clone(), pass.clone());
        connections.set_auth_handler(move |_client, u: String, p: String| {
            let ok = constant_time_eq(u.as_bytes(), user.as_bytes())
                & constant_time_eq(p.as_bytes(), pass.as_bytes());
            async move { ok }
        });
    }
    let server = rumqttd::ServerSettings {
        name: "embedded".into(),
        listen: addr,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: MAX_CONNECTIONS,
            max_outgoing_packet_count: 200,
            max_segment_size: SEGMENT_BYTES,
            max_segment_count: SEGMENTS,
            ..Default::default()
        },
        v4: Some(HashMap::from([("embedded".to_string(), server)])),
        v5: None,
        ws: None,
        cluster: None,
        console: None,
        bridge: None,
        prometheus: None,
        metrics: None,
    }
}

/// Compares secrets without leaking, through timing, how much of them matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(!x));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
