//! The embedded MQTT broker (SPEC §12): rumqttd inside dockside's process,
//! so a machine with nothing but Docker can run the whole thing. dockside's
//! own client connects to it over loopback like to any broker (same outbox,
//! last will, retained state, commands in), and Home Assistant or Jeedom
//! connect to `mqtt.embedded_listen`.
//!
//! rumqttd runs its router and listeners on threads of its own; it lives as
//! long as the process (a reload cannot move it: `preflight` refuses that).
//!
//! rumqttd serves MQTT 3.1.1 and 5 on separate listeners, but clients expect
//! both on one port (Home Assistant 2026.11 speaks 5 by default, dockside and
//! Jeedom 3.1.1). So `mqtt.embedded_listen` is a small front listener of ours:
//! it reads a connection's CONNECT header up to the protocol level and splices
//! the connection to rumqttd's v4 or v5 listener on loopback. Written by hand
//! because no crate does this for rumqttd; it is a byte copy, nothing more.

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
/// How long a new connection may take to send its CONNECT (SPEC §16).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

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
    // rumqttd binds on threads of its own and only logs a failure there: the
    // user's port is bound here, by the front listener, with the key that sets it.
    let front = TcpListener::bind(addr).map_err(|err| EmbeddedError::Bind { addr, err })?;
    let v4 = loopback_port()?;
    let v5 = loopback_port()?;
    let config = broker_config(cfg, v4, v5);
    let per_ip = cfg.embedded_max_connections_per_ip;
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let deadline = Instant::now() + START_TIMEOUT;
    for (backend, level) in [(v4, 4), (v5, 5)] {
        while !answers_connect(backend, level, cfg) {
            if Instant::now() > deadline {
                return Err(EmbeddedError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    front
        .set_nonblocking(true)
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    std::thread::Builder::new()
        .name("mqtt-front".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the embedded broker's listener cannot start");
                    return;
                }
            };
            runtime.block_on(front_listener(front, v4, v5, per_ip));
        })
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    let connect_to = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    for level in [4, 5] {
        while !answers_connect(connect_to, level, cfg) {
            if Instant::now() > deadline {
                return Err(EmbeddedError::NotListening(addr));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    tracing::info!(listen = %addr, auth = cfg.embedded_username.is_some(), "embedded MQTT broker listening");
    Ok(EmbeddedBroker { addr })
}

/// One MQTT CONNECT (3.1.1 or 5, `level`) → CONNACK → DISCONNECT: the broker
/// is up and takes dockside's credentials (a bare TCP probe would log an error).
fn answers_connect(to: SocketAddr, level: u8, cfg: &MqttConfig) -> bool {
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
    // A client id of its own per probe: rumqttd ties will bookkeeping to ids.
    static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut payload = field(format!("dockside-probe-{}-{n}", std::process::id()).as_bytes());
    if let (Some(u), Some(p)) = (&cfg.embedded_username, &cfg.embedded_password) {
        flags |= 0xC0;
        payload.extend(field(u.as_bytes()));
        payload.extend(field(p.as_bytes()));
    }
    let mut body = field(b"MQTT");
    body.extend([level, flags, 0, 10]);
    if level == 5 {
        body.push(0); // no properties
    }
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

/// A free loopback port for one of rumqttd's own listeners.
fn loopback_port() -> Result<SocketAddr, EmbeddedError> {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| EmbeddedError::Start(format!("no loopback port for the broker: {e}")))
}

/// Connections open per source address; a slot is given back when dropped.
#[derive(Debug, Default, Clone)]
struct PerAddress(std::sync::Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>);

struct AddressSlot(PerAddress, std::net::IpAddr);

impl PerAddress {
    fn take(&self, ip: std::net::IpAddr, cap: usize) -> Option<AddressSlot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            return None;
        }
        *n += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// Accepts on the user's address and splices each connection to rumqttd's
/// listener for its protocol level. At most `MAX_CONNECTIONS` at once, and
/// `per_ip` from one source address.
async fn front_listener(front: TcpListener, v4: SocketAddr, v5: SocketAddr, per_ip: usize) {
    let listener = match tokio::net::TcpListener::from_std(front) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the embedded broker's listener cannot start");
            return;
        }
    };
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = PerAddress::default();
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "embedded broker: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(mine) = per_address.take(peer.ip(), per_ip) else {
            tracing::warn!(%peer, limit = per_ip, "embedded broker: too many connections from this address, refused one");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "embedded broker: too many connections, refused one");
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = splice(client, v4, v5).await {
                tracing::debug!(%peer, error = %e, "embedded broker: connection ended");
            }
            drop((slot, mine));
        });
    }
}

/// Reads the CONNECT packet's start, picks the backend, copies both ways.
async fn splice(
    mut client: tokio::net::TcpStream,
    v4: SocketAddr,
    v5: SocketAddr,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let _ = client.set_nodelay(true);
    let mut head = Vec::with_capacity(16);
    let level = tokio::time::timeout(CONNECT_WAIT, read_protocol_level(&mut client, &mut head))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNECT in time"))??;
    let backend = if level == 5 { v5 } else { v4 };
    let mut server = tokio::net::TcpStream::connect(backend).await?;
    let _ = server.set_nodelay(true);
    server.write_all(&head).await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

/// Reads bytes into `head` until the CONNECT's protocol level is in it:
/// fixed header, remaining length (1–4 bytes), protocol name, level byte.
async fn read_protocol_level(
    client: &mut tokio::net::TcpStream,
    head: &mut Vec<u8>,
) -> std::io::Result<u8> {
    use tokio::io::AsyncReadExt;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut byte = [0u8; 1];
    loop {
        if let Some(level) = protocol_level(head).map_err(bad)? {
            return Ok(level);
        }
        if client.read(&mut byte).await? == 0 {
            return Err(bad("closed before CONNECT"));
        }
        head.push(byte[0]);
    }
}

/// The protocol level of a CONNECT packet's first bytes, `None` while more are needed.
fn protocol_level(head: &[u8]) -> Result<Option<u8>, &'static str> {
    let Some(&first) = head.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err("the first packet is not CONNECT");
    }
    let mut i = 1;
    loop {
        let Some(&b) = head.get(i) else {
            return Ok(None);
        };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err("bad remaining length");
        }
    }
    let (Some(&hi), Some(&lo)) = (head.get(i), head.get(i + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    if name_len > 6 {
        return Err("not an MQTT protocol name");
    }
    Ok(head.get(i + 2 + name_len).copied())
}

fn broker_config(cfg: &MqttConfig, v4: SocketAddr, v5: SocketAddr) -> rumqttd::Config {
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
    let server = |name: &str, listen| rumqttd::ServerSettings {
        name: name.into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections: connections.clone(),
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
        v4: Some(HashMap::from([("v4".to_string(), server("v4", v4))])),
        v5: Some(HashMap::from([("v5".to_string(), server("v5", v5))])),
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
    fn protocol_level_of_connect_headers() {
        // MQTT 3.1.1 and 5 ("MQTT"), 3.1 ("MQIsdp"), a two-byte remaining length.
        let v4 = [0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 2];
        assert_eq!(protocol_level(&v4), Ok(Some(4)));
        let v5 = [0x10, 0x80, 0x01, 0, 4, b'M', b'Q', b'T', b'T', 5];
        assert_eq!(protocol_level(&v5), Ok(Some(5)));
        let v3 = [0x10, 0x12, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(protocol_level(&v3), Ok(Some(3)));
        for n in 0..v5.len() {
            assert_eq!(protocol_level(&v5[..n]), Ok(None), "{n} bytes");
        }
        assert!(protocol_level(&[0x30, 0]).is_err(), "PUBLISH first");
        assert!(protocol_level(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(protocol_level(&[0x10, 0x10, 0xff, 0xff]).is_err());
    }

    #[test]
    fn connections_per_address_are_capped_and_given_back() {
        let p = PerAddress::default();
        let a: std::net::IpAddr = [127, 0, 0, 1].into();
        let b: std::net::IpAddr = [127, 0, 0, 2].into();
        let held: Vec<_> = (0..3).map(|_| p.take(a, 3).expect("slot")).collect();
        assert!(p.take(a, 3).is_none(), "a fourth from the same address");
        assert!(p.take(b, 3).is_some(), "another address is not locked out");
        drop(held);
        assert!(p.take(a, 3).is_some(), "given back");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
