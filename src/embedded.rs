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
//! it reads a connection's CONNECT, connects it to rumqttd's v4 or v5 listener
//! on loopback, and passes each packet the client sends through the gate
//! (`embedded_gate`: what its credentials' role may publish, SPEC §16);
//! what the broker sends goes back untouched. rumqttd has no publish hook,
//! so this is where the rule is enforced, without patching it.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::config::{HomeAssistantConfig, MqttConfig};
use crate::embedded_gate::{self as gate, Role};

/// Largest packet a client may send (discovery configs are the biggest: ~30 KiB).
const MAX_PAYLOAD: usize = 256 << 10;
/// Messages kept per subscription filter for a subscriber that lags: four
/// segments of this size, filled only by traffic. 1 MiB holds ~6,000 command
/// results, so a subscriber to a result topic keeps up with a flood that
/// dockside answers (SPEC §16); two of 64 KiB lost two thirds of them.
const SEGMENT_BYTES: usize = 256 << 10;
const SEGMENTS: usize = 4;
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

/// rumqttd's own MQTT 3.1.1 listener on loopback, for dockside's own client:
/// it publishes everything, so it does not pass the gate. The broker lives
/// as long as the process, so this is set once.
static DIRECT: std::sync::OnceLock<SocketAddr> = std::sync::OnceLock::new();

/// Where dockside's own client connects, once the embedded broker runs.
pub fn direct_addr() -> Option<SocketAddr> {
    DIRECT.get().copied()
}

/// Who may connect and publish what: credentials and topics (SPEC §16).
#[derive(Clone)]
struct Gate {
    own: Option<(String, String)>,
    users: Vec<(String, String, Role)>,
    topics: gate::Topics,
}

impl Gate {
    fn new(cfg: &MqttConfig, ha: &HomeAssistantConfig) -> Self {
        Self {
            own: cfg
                .embedded_username
                .clone()
                .zip(cfg.embedded_password.clone()),
            users: cfg
                .embedded_users
                .iter()
                .filter_map(|u| Some((u.username.clone(), u.password.clone()?, u.role.into())))
                .collect(),
            topics: gate::Topics {
                base: cfg.base_topic.clone(),
                discovery_prefix: ha.discovery_prefix.clone(),
                birth: ha
                    .birth_topic
                    .clone()
                    .unwrap_or_else(|| format!("{}/status", ha.discovery_prefix)),
            },
        }
    }
}

/// Starts the broker on `mqtt.embedded_listen` and waits until it accepts.
pub fn start(cfg: &MqttConfig, ha: &HomeAssistantConfig) -> Result<EmbeddedBroker, EmbeddedError> {
    let addr = cfg
        .embedded_socket_addr()
        .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    // rumqttd binds on threads of its own and only logs a failure there: the
    // user's port is bound here, by the front listener, with the key that sets it.
    let front = TcpListener::bind(addr).map_err(|err| EmbeddedError::Bind { addr, err })?;
    let tls = tls_listener(cfg)?;
    let v4 = loopback_port()?;
    let v5 = loopback_port()?;
    let config = broker_config(cfg, v4, v5);
    let per_ip = cfg.embedded_max_connections_per_ip;
    let gate = Gate::new(cfg, ha);
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
    let _ = DIRECT.set(v4);
    for l in std::iter::once(&front).chain(tls.as_ref().map(|(l, _)| l)) {
        l.set_nonblocking(true)
            .map_err(|e| EmbeddedError::Start(e.to_string()))?;
    }
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
            let shared = Shared {
                backends: (v4, v5),
                per_ip,
                gate,
                slots: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
                per_address: PerAddress::default(),
            };
            let plain = front_listener(front, None, shared.clone());
            match tls {
                Some((l, acceptor)) => {
                    runtime.block_on(async {
                        tokio::join!(plain, front_listener(l, Some(acceptor), shared));
                    });
                }
                None => runtime.block_on(plain),
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
    let packet = encode(0x10, &body);
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

/// What both front listeners (plain and TLS) share.
#[derive(Clone)]
struct Shared {
    backends: (SocketAddr, SocketAddr),
    per_ip: usize,
    gate: Gate,
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    per_address: PerAddress,
}

/// `mqtt.embedded_tls_listen` bound, with its certificate and key loaded.
fn tls_listener(
    cfg: &MqttConfig,
) -> Result<Option<(TcpListener, tokio_rustls::TlsAcceptor)>, EmbeddedError> {
    let Some(listen) = &cfg.embedded_tls_listen else {
        return Ok(None);
    };
    let bad = |key: &str, m: String| EmbeddedError::Start(format!("{key}: {m}"));
    let addr: SocketAddr = listen
        .trim()
        .parse()
        .map_err(|e| bad("mqtt.embedded_tls_listen", format!("{e}")))?;
    let read = |key: &str, f: &Option<std::path::PathBuf>| {
        let f = f.as_ref().ok_or_else(|| bad(key, "not set".into()))?;
        std::fs::read(f).map_err(|e| bad(key, format!("{}: {e}", f.display())))
    };
    let cert_pem = read("mqtt.embedded_cert_file", &cfg.embedded_cert_file)?;
    let key_pem = read("mqtt.embedded_key_file", &cfg.embedded_key_file)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| bad("mqtt.embedded_cert_file", e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(
            "mqtt.embedded_cert_file",
            "no certificate in it".into(),
        ));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| bad("mqtt.embedded_key_file", e.to_string()))?
        .ok_or_else(|| bad("mqtt.embedded_key_file", "no private key in it".into()))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("mqtt.embedded_tls_listen", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("mqtt.embedded_cert_file", e.to_string()))?;
    let listener = TcpListener::bind(addr).map_err(|err| EmbeddedError::Bind { addr, err })?;
    Ok(Some((
        listener,
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server)),
    )))
}

/// Accepts on one of the user's addresses (TLS when `tls`) and splices each
/// connection to rumqttd's listener for its protocol level. At most
/// `MAX_CONNECTIONS` at once, and `per_ip` from one source address.
async fn front_listener(
    front: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Shared,
) {
    let Shared {
        backends: (v4, v5),
        per_ip,
        gate,
        slots,
        per_address,
    } = shared;
    let listener = match tokio::net::TcpListener::from_std(front) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the embedded broker's listener cannot start");
            return;
        }
    };
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
        let gate = gate.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let r = match tls {
                None => splice(client, v4, v5, &gate).await,
                Some(acceptor) => {
                    match tokio::time::timeout(CONNECT_WAIT, acceptor.accept(client)).await {
                        Ok(Ok(stream)) => splice(stream, v4, v5, &gate).await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "no TLS handshake in time",
                        )),
                    }
                }
            };
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "embedded broker: connection ended");
            }
            drop((slot, mine));
        });
    }
}

/// Reads the CONNECT, picks the backend by its protocol level, and passes
/// the client's packets on one by one through the gate; the broker's go
/// back as they come.
async fn splice<S>(client: S, v4: SocketAddr, v5: SocketAddr, gate: &Gate) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncWriteExt;
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let (first, body) = tokio::time::timeout(CONNECT_WAIT, read_packet(&mut from_client))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no CONNECT in time"))??;
    if first >> 4 != 1 {
        return Err(invalid("the first packet is not CONNECT"));
    }
    let connect = gate::parse_connect(&body).map_err(invalid)?;
    let own = gate.own.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    // No role: forwarded all the same, so the broker refuses it as it does.
    let role = gate::role_of(&connect, own, &gate.users).unwrap_or(Role::Read);
    if let Some(w) = &connect.will_topic
        && !gate.topics.may_publish(role, w)
    {
        tracing::warn!(topic = %w, ?role, "embedded broker: a will on a topic its client may not publish; refused");
        return Err(invalid("forbidden will topic"));
    }
    let backend = if connect.level == 5 { v5 } else { v4 };
    let server = tokio::net::TcpStream::connect(backend).await?;
    let _ = server.set_nodelay(true);
    let (mut from_server, mut to_server) = server.into_split();
    to_server.write_all(&encode(first, &body)).await?;
    let down = tokio::spawn(async move { tokio::io::copy(&mut from_server, &mut to_client).await });
    let up = async {
        loop {
            let (first, body) = read_packet(&mut from_client).await?;
            if first >> 4 == 3 {
                let (topic, qos) = gate::publish_topic(first, &body).map_err(invalid)?;
                if topic.is_empty() || !gate.topics.may_publish(role, &topic) {
                    if qos > 0 {
                        tracing::warn!(%topic, ?role, "embedded broker: a publish its client may not make; disconnected");
                        return Err(invalid("forbidden publish"));
                    }
                    tracing::debug!(%topic, ?role, "embedded broker: a publish its client may not make; dropped");
                    continue;
                }
            }
            to_server.write_all(&encode(first, &body)).await?;
        }
    };
    let r: std::io::Result<()> = up.await;
    down.abort();
    r
}

fn invalid(m: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string())
}

/// One whole packet: its first byte and what follows the remaining length
/// (at most `MAX_PAYLOAD` plus headers, else the connection is dropped).
async fn read_packet<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let first = r.read_u8().await?;
    let mut len = 0usize;
    for shift in [0, 7, 14, 21, 28] {
        if shift == 28 {
            return Err(invalid("bad remaining length"));
        }
        let b = r.read_u8().await?;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_PAYLOAD + 1024 {
        return Err(invalid("packet too large"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok((first, body))
}

/// A packet back on the wire.
fn encode(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
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
        let mut known = vec![(user.clone(), pass.clone())];
        known.extend(
            cfg.embedded_users
                .iter()
                .filter_map(|x| Some((x.username.clone(), x.password.clone()?))),
        );
        connections.set_auth_handler(move |_client, u: String, p: String| {
            let mut ok = false;
            for (user, pass) in &known {
                ok |= constant_time_eq(u.as_bytes(), user.as_bytes())
                    & constant_time_eq(p.as_bytes(), pass.as_bytes());
            }
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

/// Compares secrets without leaking through timing how much of them
/// matched, or their length: their SHA-256 digests, compared by `subtle`.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a)
        .as_slice()
        .ct_eq(Sha256::digest(b).as_slice())
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

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
