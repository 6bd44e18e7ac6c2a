//! Transports: an engine over `tcp://` and over `https://` with a CA and a
//! client certificate (socat fronting the real engine socket, requiring the
//! client certificate), and the broker over `mqtts://` with a custom CA.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(20);

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate.
fn make_certs(dir: &Path) {
    sh(
        dir,
        r#"
        ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
        openssl req -x509 $ec -keyout ca.key -out ca.pem -days 2 -subj /CN=dockside-test-ca 2>/dev/null
        openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext 2>/dev/null
        openssl req $ec -keyout client.key -out client.csr -subj /CN=dockside 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\n' > client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext 2>/dev/null
        "#,
    );
}

fn socat(args: &[String]) -> Proc {
    let child = Command::new("socat")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat is missing: run scripts/test-env.sh");
    Proc(child)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TLS front for the engine socket that requires a client certificate signed
/// by the test CA (what `dockerd --tlsverify` does).
async fn tls_front(dir: &Path, port: u16) {
    use tokio_rustls::rustls::{self, pki_types::PrivateKeyDer, server::WebPkiClientVerifier};
    let read = |f: &str| std::fs::read(dir.join(f)).expect("cert file");
    let certs: Vec<_> = rustls_pemfile::certs(&mut &read("server.pem")[..])
        .collect::<Result<_, _>>()
        .expect("server cert");
    let key: PrivateKeyDer = rustls_pemfile::private_key(&mut &read("server.key")[..])
        .expect("key")
        .expect("a key");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("ca.pem")[..]) {
        roots.add(c.expect("ca")).expect("add ca");
    }
    let verifier = WebPkiClientVerifier::builder(std::sync::Arc::new(roots))
        .build()
        .expect("verifier");
    let config = rustls::ServerConfig::builder()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut engine) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut engine).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_over_tcp_and_mutual_tls() {
    let ct = Containers::new(&unique("dtr"));
    let name = ct.name("x");
    docker(&["run", "-d", "--name", &name, IMAGE]);
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    make_certs(d);
    let tcp_port = free_port();
    let tls_port = free_port();
    let _tcp = socat(&[
        format!("TCP-LISTEN:{tcp_port},bind=127.0.0.1,reuseaddr,fork"),
        "UNIX-CONNECT:/var/run/docker.sock".into(),
    ]);
    tls_front(d, tls_port).await;
    wait_port(tcp_port);
    let broker = Broker::start();
    let base = unique("t");
    let cfg = format!(
        r#"{base_cfg}
[endpoints.viatcp]
url = "tcp://127.0.0.1:{tcp_port}"
[endpoints.viatls]
url = "https://localhost:{tls_port}"
ca_file = "{dir}/ca.pem"
client_cert = "{dir}/client.pem"
client_key = "{dir}/client.key"
[endpoints.nocert]
url = "https://127.0.0.1:{tls_port}"
ca_file = "{dir}/ca.pem"
[endpoints.untrusted]
url = "https://127.0.0.1:{tls_port}"
client_cert = "{dir}/client.pem"
client_key = "{dir}/client.key"
"#,
        base_cfg = base_config(&broker, &base, &d.join("state"), &ct.prefix),
        dir = d.display()
    );
    let c = Collector::start(broker.port, &format!("{base}/#")).await;
    let _ds = Dockside::start(d, &cfg);
    for ep in ["viatcp", "viatls"] {
        c.wait_state(&format!("{base}/{ep}/{name}/state"), T, |s| {
            s["running"] == true
        })
        .await;
        c.wait_latest(&format!("{base}/{ep}/status"), T, |m| m.text() == "online")
            .await;
    }
    // Without a client certificate, or without trusting the CA: offline, never a fallback.
    for ep in ["nocert", "untrusted"] {
        c.wait_latest(&format!("{base}/{ep}/status"), T, |m| m.text() == "offline")
            .await;
    }
    // Live events arrive through TLS too.
    docker(&["stop", "-t", "0", &name]);
    c.wait_state(&format!("{base}/viatls/{name}/state"), T, |s| {
        s["state"] == "exited"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_over_mqtts_with_a_custom_ca() {
    let ct = Containers::new(&unique("dtm"));
    let name = ct.name("x");
    docker(&["run", "-d", "--name", &name, IMAGE]);
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    make_certs(d);
    // One broker, a plain listener for the test's subscriber and a TLS one for dockside.
    let plain = free_port();
    let tls = free_port();
    std::fs::write(
        d.join("m.conf"),
        format!(
            "user root\nper_listener_settings false\nallow_anonymous true\npersistence false\nlistener {plain} 127.0.0.1\nlistener {tls} 127.0.0.1\ncafile {0}/ca.pem\ncertfile {0}/server.pem\nkeyfile {0}/server.key\n",
            d.display()
        ),
    )
    .expect("conf");
    let _m = Proc(
        Command::new("mosquitto")
            .arg("-c")
            .arg(d.join("m.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    wait_port(plain);
    wait_port(tls);
    let base = unique("t");
    let cfg = format!(
        "[mqtt]\nurl = \"mqtts://localhost:{tls}\"\nbase_topic = \"{base}\"\nca_file = \"{0}/ca.pem\"\n[state]\ndir = \"{0}/s\"\n[containers]\ninclude = [\"{1}-*\"]\n",
        d.display(),
        ct.prefix
    );
    let c = Collector::start(plain, &format!("{base}/#")).await;
    let _ds = Dockside::start(d, &cfg);
    c.wait_state(&format!("{base}/local/{name}/state"), T, |s| {
        s["running"] == true
    })
    .await;
    c.wait_latest(&format!("{base}/status"), T, |m| m.text() == "online")
        .await;

    // No ca_file: the platform's trust store decides. A CA that is only in
    // the store (SSL_CERT_FILE, as OpenSSL and rustls-native-certs read it)
    // is trusted; without it the same broker is refused.
    for (trusted, env) in [
        (
            true,
            vec![("SSL_CERT_FILE", format!("{}/ca.pem", d.display()))],
        ),
        (false, vec![]),
    ] {
        let sub = tempfile::tempdir().expect("tmp");
        let base = unique("t");
        let cfg = format!(
            "[mqtt]\nurl = \"mqtts://localhost:{tls}\"\nbase_topic = \"{base}\"\n[state]\ndir = \"{0}/s\"\n[containers]\ninclude = [\"{1}-*\"]\n",
            sub.path().display(),
            ct.prefix
        );
        let c = Collector::start(plain, &format!("{base}/#")).await;
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let ds = Dockside::start_with_env(sub.path(), &cfg, &env);
        if trusted {
            c.wait_latest(&format!("{base}/status"), T, |m| m.text() == "online")
                .await;
        } else {
            tokio::time::sleep(Duration::from_secs(3)).await;
            assert!(
                c.on(&format!("{base}/status")).is_empty(),
                "connected without trusting the CA"
            );
            let log = ds.log_text();
            assert!(log.to_lowercase().contains("certificate"), "{log}");
        }
    }
}
