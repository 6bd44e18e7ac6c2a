//! Small helpers every HTTP client here shares (engine, Portainer, registries).

/// Makes ring the process's TLS crypto provider (the only one compiled in);
/// every TLS client (HTTP and MQTT) calls it before building a config.
pub fn ensure_tls_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when one is installed already, which is what we want.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// `reqwest::Client::builder()` with the crypto provider in place.
/// The roots TLS trusts unless a `ca_file` says otherwise: the platform's
/// store (`SSL_CERT_FILE`, `SSL_CERT_DIR`, the distribution's bundle), and
/// the bundled Mozilla roots when the platform has none.
pub fn platform_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "platform trust store");
    }
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        tracing::info!("no platform trust store: using the bundled Mozilla roots");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    roots
}

pub fn client_builder() -> reqwest::ClientBuilder {
    ensure_tls_provider();
    reqwest::Client::builder()
}

/// A reqwest error with its whole source chain (`error sending request: … : connection refused`).
pub fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

#[derive(Debug)]
pub enum ReadError {
    Network(reqwest::Error),
    /// The answer is larger than the cap: reading stopped there.
    TooLarge(usize),
}

/// Reads a body, refusing to hold more than `cap` bytes of an untrusted answer.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(ReadError::Network)? {
        if out.len() + chunk.len() > cap {
            return Err(ReadError::TooLarge(cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
