//! The MQTT side: one task owns the rumqttc client and event loop (SPEC §1);
//! everything else talks to it through the [`Outbox`] and a resync signal.
//!
//! rumqttc has no reconnect delay, forgets subscriptions and queued publishes
//! on a clean-session reconnect, and deadlocks if `publish().await` runs inside
//! the poll loop. So this task: backs off between failed polls, re-subscribes
//! and republishes availability on every ConnAck, asks every producer to
//! republish its retained state (the `resync` generation), only uses
//! `try_publish` inside the loop, and breaks on `Outgoing::Disconnect`.

pub mod outbox;
mod reader;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS, TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use outbox::{Message, Outbox, Sweep};

use crate::backoff::Backoff;
use crate::clock::sleep_until_opt;
use crate::config::Config;
use crate::topics::{DiscoveryTopics, Topics};

/// HA discovery payloads exceed rumqttc's 10 KiB default.
const MAX_PACKET: usize = 1 << 20;
/// Incoming packets larger than this are refused from their fixed header,
/// before their body is read (SPEC §16): the connection is dropped and made
/// again. Commands are refused above 1 KiB anyway; what dockside reads back
/// (its own states and discovery configs) is far smaller.
pub const MAX_INCOMING: usize = 64 << 10;
/// Messages handed to rumqttc's request channel per loop turn, so polling
/// (acks, pings, incoming) is never starved by a burst.
const DRAIN_BATCH: usize = 64;
const READBACK_TIMEOUT: Duration = Duration::from_secs(10);
/// After a ConnAck, `online` and the backlog wait this long at most for the
/// command session to subscribe.
const READER_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("mqtt: cannot read {what} {path}: {err}")]
    File {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
    #[error("mqtt: TLS set-up: {0}")]
    Tls(String),
}

/// A message that arrived on one of our subscriptions (commands, HA birth).
#[derive(Debug, Clone)]
pub struct Inbound {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

/// What producers hold: the outbox and the resync signal.
#[derive(Debug, Clone)]
pub struct MqttHandle {
    pub outbox: Arc<Outbox>,
    resync: watch::Receiver<u64>,
    resync_tx: Arc<watch::Sender<u64>>,
}

impl MqttHandle {
    pub fn topics(&self) -> &Topics {
        self.outbox.topics()
    }
    /// Changes on every reconnect after the first: republish everything retained.
    pub fn resync_signal(&self) -> watch::Receiver<u64> {
        self.resync.clone()
    }
    /// Asks every producer to republish (Home Assistant came back online).
    pub fn request_resync(&self) {
        self.resync_tx.send_modify(|g| *g += 1);
    }
}

#[derive(Clone)]
pub struct MqttTask {
    opts: MqttOptions,
    /// The command session's options (its own client id, no will).
    reader_opts: MqttOptions,
    qos: QoS,
    outbox: Arc<Outbox>,
    resync_tx: Arc<watch::Sender<u64>>,
    subscriptions: Vec<String>,
    inbound: Option<mpsc::Sender<Inbound>>,
    /// Read back at start too, whether discovery is on or off (to clear ours).
    discovery: DiscoveryTopics,
}

pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Builds the task and the handle producers use.
pub fn new(
    cfg: &Config,
    subscriptions: Vec<String>,
    inbound: Option<mpsc::Sender<Inbound>>,
) -> Result<(MqttTask, MqttHandle), MqttError> {
    let topics = Topics::new(cfg.mqtt.base_topic.clone());
    let outbox = Arc::new(Outbox::new(topics, 20_000));
    let (resync_tx, resync) = watch::channel(0);
    let resync_tx = Arc::new(resync_tx);
    let opts = options(cfg, cfg.client_id(), true)?;
    let reader_opts = options(cfg, format!("{}-commands", cfg.client_id()), false)?;
    Ok((
        MqttTask {
            opts,
            reader_opts,
            qos: qos(cfg.mqtt.qos),
            outbox: outbox.clone(),
            resync_tx: resync_tx.clone(),
            subscriptions,
            inbound,
            discovery: DiscoveryTopics::new(cfg.homeassistant.discovery_prefix.clone()),
        },
        MqttHandle {
            outbox,
            resync,
            resync_tx,
        },
    ))
}

fn read(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, MqttError> {
    std::fs::read(path).map_err(|err| MqttError::File {
        what,
        path: path.display().to_string(),
        err,
    })
}

/// One session's options; `will`: the bridge's last will (the publishing session).
fn options(cfg: &Config, client_id: String, will: bool) -> Result<MqttOptions, MqttError> {
    // Validated at load time; fall back to defaults rather than panic.
    let mut addr = cfg.broker_addr().unwrap_or(crate::config::BrokerAddr {
        tls: false,
        host: "localhost".into(),
        port: 1883,
    });
    // dockside's own client goes straight to the embedded broker, not through
    // the front listener that gates what clients publish (SPEC §16).
    if cfg.mqtt.embedded
        && let Some(direct) = crate::embedded::direct_addr()
    {
        addr.host = direct.ip().to_string();
        addr.port = direct.port();
    }
    let topics = Topics::new(cfg.mqtt.base_topic.clone());
    let mut o = MqttOptions::new(client_id, addr.host.clone(), addr.port);
    o.set_keep_alive(cfg.mqtt.keep_alive);
    o.set_max_packet_size(MAX_INCOMING, MAX_PACKET);
    o.set_clean_session(true);
    if will {
        o.set_last_will(LastWill::new(
            topics.bridge_status(),
            "offline",
            qos(cfg.mqtt.qos),
            true,
        ));
    }
    if let Some(user) = &cfg.mqtt.username {
        o.set_credentials(user.clone(), cfg.mqtt.password.clone().unwrap_or_default());
    }
    if addr.tls {
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            std::sync::Arc::new(tls_config(cfg)?),
        )));
    }
    Ok(o)
}

/// TLS to the broker: `mqtt.ca_file` alone when set, else the platform's
/// roots (`http::platform_roots`); a client certificate when configured.
fn tls_config(cfg: &Config) -> Result<rustls::ClientConfig, MqttError> {
    crate::http::ensure_tls_provider();
    let bad = |what: &'static str, path: &std::path::Path, m: String| MqttError::File {
        what,
        path: path.display().to_string(),
        err: std::io::Error::new(std::io::ErrorKind::InvalidData, m),
    };
    let roots = match &cfg.mqtt.ca_file {
        Some(p) => {
            let pem = read("ca_file", p)?;
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut &pem[..]) {
                let c = c.map_err(|e| bad("ca_file", p, e.to_string()))?;
                roots.add(c).map_err(|e| bad("ca_file", p, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("ca_file", p, "no certificate in it".into()));
            }
            roots
        }
        None => crate::http::platform_roots(),
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&cfg.mqtt.client_cert, &cfg.mqtt.client_key) {
        (Some(c), Some(k)) => {
            let pem = read("client_cert", c)?;
            let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
                .collect::<Result<_, _>>()
                .map_err(|e| bad("client_cert", c, e.to_string()))?;
            let pem = read("client_key", k)?;
            let key = rustls_pemfile::private_key(&mut &pem[..])
                .map_err(|e| bad("client_key", k, e.to_string()))?
                .ok_or_else(|| bad("client_key", k, "no private key in it".into()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| MqttError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn valid_publish_topic(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0'])
}

impl MqttTask {
    /// Runs until `token` is cancelled, then publishes `offline` and disconnects.
    /// Two sessions: this one publishes (and reads back at start); the
    /// command session (`reader.rs`) reads commands only while their results
    /// can leave.
    pub async fn run(self, token: CancellationToken) {
        let (ready_tx, ready) = watch::channel(false);
        let reader = match (&self.inbound, self.subscriptions.is_empty()) {
            (Some(tx), false) => Some(reader::Reader {
                opts: self.reader_opts.clone(),
                qos: self.qos,
                subscriptions: self.subscriptions.clone(),
                inbound: tx.clone(),
                ready: ready_tx,
            }),
            _ => {
                ready_tx.send_replace(true);
                None
            }
        };
        let outbox = self.outbox.clone();
        let commands = async {
            if let Some(r) = reader {
                r.run(&outbox, token.clone()).await;
            }
        };
        tokio::join!(self.publish(ready, token.clone()), commands);
    }

    async fn publish(self, mut reader_ready: watch::Receiver<bool>, token: CancellationToken) {
        let MqttTask {
            opts,
            qos,
            outbox,
            resync_tx,
            discovery,
            ..
        } = self;
        let topics = outbox.topics().clone();
        let (client, mut eventloop, mut backoff) = session(opts, 256);
        let mut connected = false;
        let mut client_full = false;
        let mut first_connect = true;
        let mut failures = 0u32;
        let marker = topics.readback_marker(&format!("{:016x}", fastrand::u64(..)));
        let mut readback_deadline: Option<Instant> = None;
        // Some from a ConnAck until the command session is subscribed (or
        // READER_WAIT passed): `online` and the backlog wait till then.
        let mut wait_reader: Option<Instant> = None;

        loop {
            if let Some(until) = wait_reader
                && (*reader_ready.borrow() || Instant::now() >= until)
            {
                wait_reader = None;
                let _ = client.try_publish(topics.bridge_status(), qos, true, "online");
            }
            let open = connected && wait_reader.is_none();
            if open && !client_full {
                client_full = drain(&client, &outbox, qos);
            }
            tokio::select! {
                biased;
                _ = token.cancelled() => break,
                ev = eventloop.poll() => match ev {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                        connected = true;
                        client_full = false;
                        failures = 0;
                        backoff.mark_started();
                        wait_reader = Some(Instant::now() + READER_WAIT);
                        tracing::info!("connected to the MQTT broker");
                        let m = crate::metrics::get();
                        m.mqtt_connected.set(1);
                        if !first_connect {
                            m.mqtt_reconnects.inc();
                            m.reconnects_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        if first_connect {
                            first_connect = false;
                            // Read back our retained topics (QoS 0, like the marker, so
                            // they arrive in order), then the marker ends the read-back.
                            for f in readback_filters(&topics, &discovery) {
                                let _ = client.try_subscribe(f, QoS::AtMostOnce);
                            }
                            let _ = client.try_subscribe(marker.clone(), QoS::AtMostOnce);
                            let _ = client.try_publish(marker.clone(), QoS::AtMostOnce, false, "sync");
                            readback_deadline = Some(Instant::now() + READBACK_TIMEOUT);
                        } else {
                            resync_tx.send_modify(|g| *g += 1);
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        if p.topic == marker {
                            finish_readback(&client, &outbox, &topics, &discovery, &marker);
                            readback_deadline = None;
                        } else if readback_deadline.is_some() && p.retain && !p.payload.is_empty() {
                            note_readback(&outbox, &topics, &discovery, &p);
                        }
                        // Commands come on the command session, retained ones too.
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => {}
                    Ok(_) => { client_full = false; }
                    Err(e) => {
                        connected = false;
                        crate::metrics::get().mqtt_connected.set(0);
                        client_full = false;
                        failures += 1;
                        let delay = backoff.next_delay();
                        if oversize(&e) {
                            tracing::warn!(error = %e, limit = MAX_INCOMING, retry_in = ?delay, "a message over 64 KiB arrived from the broker: refused unread, reconnecting");
                        } else if failures == 1 {
                            tracing::warn!(error = %e, retry_in = ?delay, "MQTT connection lost");
                        } else {
                            tracing::debug!(error = %e, retry_in = ?delay, failures, "MQTT reconnect failed");
                        }
                        tokio::select! {
                            _ = token.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                },
                _ = outbox.notified(), if open && !client_full => {}
                Ok(()) = reader_ready.changed(), if wait_reader.is_some() => {}
                _ = sleep_until_opt(wait_reader) => {}
                _ = sleep_until_opt(outbox.next_deferred()) => outbox.run_deferred(),
                _ = sleep_until_opt(readback_deadline) => {
                    tracing::warn!("no read-back marker from the broker; sweeping what was read");
                    finish_readback(&client, &outbox, &topics, &discovery, &marker);
                    readback_deadline = None;
                }
            }
        }

        if connected {
            shutdown(client, eventloop, &outbox, qos, &topics).await;
        }
    }
}

/// One session's client and event loop, and the back-off between its
/// failed polls (both sessions use this).
fn session(opts: MqttOptions, cap: usize) -> (AsyncClient, rumqttc::EventLoop, Backoff) {
    let (client, mut eventloop) = AsyncClient::new(opts, cap);
    // Small packets (states, results, acks) must not wait for Nagle + delayed ACK (~40 ms).
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
    (client, eventloop, backoff)
}

/// A retained topic the start-up read-back found: ours under the base (not a
/// command topic), or a discovery config one of ours owns.
fn note_readback(
    outbox: &Outbox,
    topics: &Topics,
    discovery: &DiscoveryTopics,
    p: &rumqttc::Publish,
) {
    if discovery.object_id_of(&p.topic).is_some() {
        if let Some(owner) = crate::homeassistant::owner_of(topics, discovery, &p.topic, &p.payload)
        {
            outbox.note_existing_owned(p.topic.clone(), owner);
        }
    } else if topics.parse_command(&p.topic).is_none() {
        outbox.note_existing(p.topic.clone());
    }
}

/// The broker sent a packet over `MAX_INCOMING`.
fn oversize(e: &rumqttc::ConnectionError) -> bool {
    matches!(
        e,
        rumqttc::ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)
        ))
    )
}

fn readback_filters(topics: &Topics, discovery: &DiscoveryTopics) -> Vec<String> {
    let mut f = topics.readback_filters().to_vec();
    f.push(discovery.readback_filter());
    f
}

fn finish_readback(
    client: &AsyncClient,
    outbox: &Outbox,
    topics: &Topics,
    discovery: &DiscoveryTopics,
    marker: &str,
) {
    for f in readback_filters(topics, discovery) {
        let _ = client.try_unsubscribe(f);
    }
    let _ = client.try_unsubscribe(marker.to_string());
    outbox.finish_readback();
}

/// Hands queued messages to rumqttc; returns true when its channel is full.
fn drain(client: &AsyncClient, outbox: &Outbox, qos: QoS) -> bool {
    for _ in 0..DRAIN_BATCH {
        let Some(m) = outbox.pop() else {
            return false;
        };
        if !valid_publish_topic(&m.topic) {
            tracing::warn!(topic = %m.topic, "dropping a message with an invalid topic");
            continue;
        }
        let res = client.try_publish(m.topic.clone(), qos, m.retain, m.payload.to_vec());
        if res.is_err() {
            outbox.unpop(m);
            return true;
        }
    }
    false
}

/// Flush what is queued (bounded), publish `offline`, disconnect cleanly.
async fn shutdown(
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    outbox: &Outbox,
    qos: QoS,
    topics: &Topics,
) {
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut offline_sent = false;
    loop {
        if !offline_sent {
            let full = drain(&client, outbox, qos);
            if !full && outbox.is_empty() {
                let _ = client.try_publish(topics.bridge_status(), qos, true, "offline");
                let _ = client.try_disconnect();
                offline_sent = true;
            }
        }
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "MQTT error during shutdown");
                break;
            }
            Err(_) => {
                tracing::warn!("MQTT shutdown did not complete in time");
                break;
            }
        }
        if !offline_sent && Instant::now() + Duration::from_millis(300) > deadline {
            // Out of time for the backlog: make sure `offline` still goes out.
            let _ = client.try_publish(topics.bridge_status(), qos, true, "offline");
            let _ = client.try_disconnect();
            offline_sent = true;
        }
    }
}
