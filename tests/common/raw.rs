//! An MQTT publisher at full speed: pre-encoded QoS 0 PUBLISH packets written
//! in large batches over a plain socket, paced to a rate. rumqttc writes and
//! flushes one message per turn, which caps a test near 10,000 a second; a
//! real client (or a script in a loop) sends far faster.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::QoS;
use rumqttc::mqttbytes::v4::{Connect, Publish};

pub struct RawPublisher {
    stream: TcpStream,
}

impl RawPublisher {
    pub fn connect(port: u16) -> Self {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the broker");
        stream.set_nodelay(true).expect("nodelay");
        let mut buf = BytesMut::new();
        let mut c = Connect::new(super::unique("raw-"));
        c.keep_alive = 60;
        c.write(&mut buf).expect("encode CONNECT");
        stream.write_all(&buf).expect("send CONNECT");
        let mut ack = [0u8; 4];
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.read_exact(&mut ack).expect("CONNACK");
        assert_eq!((ack[0], ack[3]), (0x20, 0), "CONNACK refused: {ack:?}");
        Self { stream }
    }

    /// Publishes every (topic, payload) at QoS 0, `per_second` of them a
    /// second in 10 ms batches; returns how long it took.
    pub fn flood(
        &mut self,
        msgs: impl IntoIterator<Item = (String, Vec<u8>)>,
        per_second: u64,
    ) -> Duration {
        let per_batch = (per_second / 100).max(1) as usize;
        let started = Instant::now();
        let mut next = started;
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let mut buf = BytesMut::new();
            for (topic, payload) in msgs.by_ref().take(per_batch) {
                Publish::new(topic, QoS::AtMostOnce, payload)
                    .write(&mut buf)
                    .expect("encode PUBLISH");
            }
            self.stream.write_all(&buf).expect("send a batch");
            next += Duration::from_millis(10);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        started.elapsed()
    }
}

/// What dockside made of a flood, once it stopped reading and answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// Commands that reached dockside (its `commands_received` counter).
    pub received: usize,
    /// Results on the topic, and how many distinct request ids they carry.
    pub results: usize,
    pub distinct: usize,
    pub outbox_dropped: usize,
    pub reads_paused: usize,
}

/// Waits (at most 3 minutes) until dockside has answered every command it
/// read and reads no more; `http` is its `[http] listen` port.
pub async fn answered(http: u16, results: &super::Collector, topic: &str) -> Answered {
    let metric = |text: &str, name: &str| super::sample(text, name).unwrap_or(-1.0) as usize;
    let read = || {
        let text = super::get(http, "/metrics").1;
        let mut ids: Vec<String> = results
            .on(topic)
            .iter()
            .filter_map(|m| m.json()["request_id"].as_str().map(String::from))
            .collect();
        let total = ids.len();
        ids.sort();
        ids.dedup();
        Answered {
            received: metric(&text, "dockside_commands_received_total"),
            results: total,
            distinct: ids.len(),
            outbox_dropped: metric(&text, "dockside_outbox_dropped_total"),
            reads_paused: metric(&text, "dockside_command_reads_paused_total"),
        }
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut last = None;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = read();
        if last == Some(now) && now.received == now.results {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "still answering after 3 minutes: {now:?}"
        );
        last = Some(now);
    }
}
