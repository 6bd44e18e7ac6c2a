//! A registry client for update checks: manifest `HEAD` with all four manifest
//! media types (a HEAD is not a Docker Hub pull), `GET` only when the digest
//! header is missing or to resolve a multi-arch index (cached by digest forever).
//! Auth: anonymous, Basic, or Bearer tokens from the challenge's realm (cached
//! until they expire, re-authenticated once after a 401). A 429 cools down that
//! registry host only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use super::reference::Reference;
use crate::http::{ReadError, error_chain as chain};

pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];
const INDEX_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_MANIFEST: usize = 4 << 20;
const PER_HOST: usize = 3;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("cannot reach the registry: {0}")]
    Connect(String),
    #[error("the registry did not answer in time")]
    Timeout,
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("the tag no longer exists in the registry")]
    NotFound,
    #[error("rate limited by the registry for {0} s")]
    RateLimited(u64),
    #[error("registry answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer from the registry: {0}")]
    Decode(String),
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a manifest HEAD says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub digest: String,
    pub media_type: String,
}

impl Remote {
    pub fn is_index(&self) -> bool {
        INDEX_TYPES.iter().any(|t| self.media_type.starts_with(t))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

type Manifest = (String, Arc<Vec<u8>>);

/// Manifests and config blobs by `name@digest` (content-addressed, so never
/// stale), bounded by bytes: past `cap` the oldest entries go.
#[derive(Debug)]
struct BlobCache {
    map: HashMap<String, Manifest>,
    order: std::collections::VecDeque<String>,
    bytes: usize,
    cap: usize,
}

/// What the manifest/config-blob cache may hold.
const BLOB_CACHE_BYTES: usize = 4 << 20;

impl BlobCache {
    fn new(cap: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: std::collections::VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    fn get(&self, key: &str) -> Option<&Manifest> {
        self.map.get(key)
    }

    fn insert(&mut self, key: String, m: Manifest) {
        let size = m.1.len() + key.len();
        if size > self.cap || self.map.contains_key(&key) {
            return;
        }
        while self.bytes + size > self.cap {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(o) = self.map.remove(&old) {
                self.bytes -= o.1.len() + old.len();
            }
        }
        self.bytes += size;
        self.order.push_back(key.clone());
        self.map.insert(key, m);
    }
}

#[derive(Debug)]
struct Host {
    permits: Arc<Semaphore>,
    /// Bearer tokens per repository, with when to drop them.
    tokens: HashMap<String, (HeaderValue, Instant)>,
    cooldown_until: Option<Instant>,
}

/// Shared by every check of a round; one connection pool for all registries.
#[derive(Debug)]
pub struct RegistryClient {
    http: reqwest::Client,
    credentials: HashMap<String, Credentials>,
    insecure: Vec<String>,
    hosts: Mutex<HashMap<String, Host>>,
    /// `name@digest` → (media type, body): content-addressed, bounded by bytes.
    manifests: Mutex<BlobCache>,
    user_agent: HeaderValue,
}

pub fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.starts_with("127.") || h == "::1"
}

impl RegistryClient {
    pub fn new(
        credentials: HashMap<String, Credentials>,
        insecure: Vec<String>,
        extra_roots: Vec<reqwest::Certificate>,
    ) -> Result<Self, RegistryError> {
        let http = crate::http::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .tls_certs_merge(extra_roots)
            .build()
            .map_err(|e| RegistryError::Connect(e.to_string()))?;
        Ok(Self {
            http,
            credentials,
            insecure,
            hosts: Mutex::new(HashMap::new()),
            manifests: Mutex::new(BlobCache::new(BLOB_CACHE_BYTES)),
            user_agent: HeaderValue::from_static(concat!("dockside/", env!("CARGO_PKG_VERSION"))),
        })
    }

    fn scheme(&self, host: &str) -> &'static str {
        if is_loopback(host) || self.insecure.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        }
    }

    fn url(&self, r: &Reference, kind: &str, reference: &str) -> Result<Url, RegistryError> {
        let host = r.api_host();
        Url::parse(&format!(
            "{}://{host}/v2/{}/{kind}/{reference}",
            self.scheme(host),
            r.repository
        ))
        .map_err(|e| RegistryError::Decode(e.to_string()))
    }

    fn host_permits(&self, host: &str) -> Result<Arc<Semaphore>, RegistryError> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let h = hosts.entry(host.to_string()).or_insert_with(|| Host {
            permits: Arc::new(Semaphore::new(PER_HOST)),
            tokens: HashMap::new(),
            cooldown_until: None,
        });
        if let Some(until) = h.cooldown_until {
            let now = Instant::now();
            if until > now {
                return Err(RegistryError::RateLimited((until - now).as_secs().max(1)));
            }
            h.cooldown_until = None;
        }
        Ok(h.permits.clone())
    }

    fn cool_down(&self, host: &str, secs: u64) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.get_mut(host) {
            h.cooldown_until = Some(Instant::now() + Duration::from_secs(secs.clamp(1, 3600)));
        }
    }

    fn cached_token(&self, host: &str, repo: &str) -> Option<HeaderValue> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let (v, until) = hosts.get(host)?.tokens.get(repo)?;
        (*until > Instant::now()).then(|| v.clone())
    }

    fn store_token(&self, host: &str, repo: &str, v: Option<(HeaderValue, Duration)>) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = hosts.get_mut(host) {
            match v {
                Some((v, ttl)) => {
                    let now = Instant::now();
                    h.tokens.retain(|_, (_, until)| *until > now);
                    h.tokens.insert(repo.to_string(), (v, now + ttl));
                }
                None => {
                    h.tokens.remove(repo);
                }
            }
        }
    }

    fn credentials_for(&self, r: &Reference) -> Option<&Credentials> {
        self.credentials
            .get(&r.registry)
            .or_else(|| self.credentials.get(r.api_host()))
    }

    /// One request with auth handling: cached token → anonymous → challenge → retry once.
    async fn send(
        &self,
        method: Method,
        url: Url,
        r: &Reference,
    ) -> Result<reqwest::Response, RegistryError> {
        let host = r.api_host().to_string();
        let permits = self.host_permits(&host)?;
        let _permit = permits
            .acquire_owned()
            .await
            .map_err(|_| RegistryError::Connect("shutting down".into()))?;
        let mut auth = self.cached_token(&host, &r.repository);
        for attempt in 0..2 {
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .timeout(REQUEST_TIMEOUT)
                .header(ACCEPT, MANIFEST_TYPES.join(", "))
                .header(reqwest::header::USER_AGENT, self.user_agent.clone());
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let m = crate::metrics::get();
            let label = m.registry(&host);
            m.registry_requests.get_or_create(&label).inc();
            let resp = req.send().await.map_err(|e| {
                if e.is_timeout() {
                    RegistryError::Timeout
                } else {
                    RegistryError::Connect(chain(&e))
                }
            })?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.store_token(&host, &r.repository, None);
                    auth = Some(self.authenticate(&challenge, r).await?);
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(RegistryError::Auth(if self.credentials_for(r).is_some() {
                        "the registry refused the credentials".into()
                    } else {
                        "the registry needs credentials ([updates.registries] or docker_config)"
                            .into()
                    }));
                }
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    m.registry_rate_limited.get_or_create(&label).inc();
                    let secs = retry_after(resp.headers()).unwrap_or(60);
                    self.cool_down(&host, secs);
                    return Err(RegistryError::RateLimited(secs));
                }
                _ => {
                    if let Some(rem) = resp
                        .headers()
                        .get("ratelimit-remaining")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split(';').next()?.trim().parse::<u64>().ok())
                        .inspect(|rem| {
                            m.registry_remaining
                                .get_or_create(&label)
                                .set(i64::try_from(*rem).unwrap_or(i64::MAX));
                            if *rem == 0 {
                                m.registry_rate_limited.get_or_create(&label).inc();
                            }
                        })
                        && rem == 0
                    {
                        // Out of quota for this window: stop asking this host for a while.
                        self.cool_down(&host, 3600);
                    }
                    return Ok(resp);
                }
            }
        }
        Err(RegistryError::Auth("credentials rejected".into()))
    }

    /// Answers a `WWW-Authenticate` challenge with a header for the retry.
    async fn authenticate(
        &self,
        challenge: &str,
        r: &Reference,
    ) -> Result<HeaderValue, RegistryError> {
        let creds = self.credentials_for(r);
        let basic = creds.map(|c| {
            let raw = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", c.username, c.password));
            format!("Basic {raw}")
        });
        let (scheme, params) = parse_challenge(challenge);
        match scheme.as_str() {
            "basic" => {
                let b = basic.ok_or_else(|| {
                    RegistryError::Auth(
                        "the registry needs credentials ([updates.registries] or docker_config)"
                            .into(),
                    )
                })?;
                let mut v = HeaderValue::from_str(&b)
                    .map_err(|_| RegistryError::Auth("bad credentials".into()))?;
                v.set_sensitive(true);
                self.store_token(
                    r.api_host(),
                    &r.repository,
                    Some((v.clone(), Duration::from_secs(3600))),
                );
                Ok(v)
            }
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| RegistryError::Auth("bearer challenge without realm".into()))?;
                let mut url = Url::parse(realm)
                    .map_err(|e| RegistryError::Auth(format!("bad realm: {e}")))?;
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(RegistryError::Auth("bad realm scheme".into()));
                }
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = params.get("service") {
                        q.append_pair("service", s);
                    }
                    // The real repository, never the challenge's placeholder scope.
                    q.append_pair("scope", &format!("repository:{}:pull", r.repository));
                }
                let mut req = self.http.get(url.clone()).timeout(REQUEST_TIMEOUT);
                // Credentials go to the realm only on the registry's own host or
                // domain (auth.docker.io for docker.io), never to a third party.
                if let Some(b) = &basic {
                    if realm_may_see_credentials(url.host_str().unwrap_or(""), r) {
                        req = req.header(AUTHORIZATION, b);
                    } else {
                        tracing::warn!(realm = %url.host_str().unwrap_or(""), registry = %r.registry, "token realm on another domain: asking anonymously");
                    }
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| RegistryError::Connect(chain(&e)))?;
                let status = resp.status();
                let body = read_capped(resp, 1 << 20).await?;
                if !status.is_success() {
                    return Err(RegistryError::Auth(format!(
                        "token endpoint answered {status}"
                    )));
                }
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| RegistryError::Auth(format!("token answer: {e}")))?;
                let token = v
                    .get("token")
                    .or_else(|| v.get("access_token"))
                    .and_then(|t| t.as_str())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| RegistryError::Auth("token answer without a token".into()))?;
                let ttl = v
                    .get("expires_in")
                    .and_then(|e| e.as_u64())
                    .unwrap_or(60)
                    .max(60)
                    - 5;
                let mut h = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| RegistryError::Auth("token is not a valid header".into()))?;
                h.set_sensitive(true);
                self.store_token(
                    r.api_host(),
                    &r.repository,
                    Some((h.clone(), Duration::from_secs(ttl))),
                );
                Ok(h)
            }
            _ => Err(RegistryError::Auth(format!(
                "unsupported authentication `{}`",
                challenge.chars().take(40).collect::<String>()
            ))),
        }
    }

    /// The tag's current digest and media type: one HEAD (a GET only when the
    /// registry leaves the digest header out, or refuses HEAD).
    pub async fn head(&self, r: &Reference) -> Result<Remote, RegistryError> {
        let tag = r.tag.as_deref().unwrap_or("latest");
        let url = self.url(r, "manifests", tag)?;
        let resp = self.send(Method::HEAD, url.clone(), r).await?;
        let status = resp.status();
        let media_type = header_str(resp.headers(), "content-type");
        let digest = header_str(resp.headers(), "docker-content-digest");
        if status.is_success() {
            if let Some(digest) = digest.filter(|d| d.starts_with("sha256:")) {
                return Ok(Remote {
                    digest,
                    media_type: media_type.unwrap_or_default(),
                });
            }
        } else if status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED {
            return Err(RegistryError::Status {
                status: status.as_u16(),
                message: "manifest HEAD refused".into(),
            });
        }
        // No digest header, HEAD refused, or 404 to confirm: one GET.
        let (media_type, body) = self.get_manifest(r, tag).await?;
        Ok(Remote {
            digest: sha256(&body),
            media_type,
        })
    }

    /// A GET that must succeed: 404 is `NotFound`, any other failure a `Status`.
    async fn get_ok(
        &self,
        url: Url,
        r: &Reference,
        refused: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let resp = self.send(Method::GET, url, r).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound),
            s if s.is_success() => Ok(resp),
            s => Err(RegistryError::Status {
                status: s.as_u16(),
                message: refused.into(),
            }),
        }
    }

    /// GET a manifest by tag or digest; by digest it is cached for good.
    pub async fn get_manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        let key = format!("{}@{}", r.name(), reference);
        if reference.starts_with("sha256:")
            && let Some(hit) = self
                .manifests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
        {
            return Ok(hit.clone());
        }
        let url = self.url(r, "manifests", reference)?;
        let resp = self.get_ok(url, r, "manifest GET refused").await?;
        let media_type = header_str(resp.headers(), "content-type").unwrap_or_default();
        let body = Arc::new(read_capped(resp, MAX_MANIFEST).await?);
        if reference.starts_with("sha256:") {
            if sha256(&body) != reference {
                return Err(RegistryError::Decode(
                    "manifest does not match its digest".into(),
                ));
            }
            self.manifests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, (media_type.clone(), body.clone()));
        }
        Ok((media_type, body))
    }

    /// Every tag of the repository, following `Link: <…>; rel="next"` pages
    /// (bounded: 50 pages, 4 MiB each).
    pub async fn tags(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        let host = r.api_host();
        let mut url = Url::parse(&format!(
            "{}://{host}/v2/{}/tags/list?n=1000",
            self.scheme(host),
            r.repository
        ))
        .map_err(|e| RegistryError::Decode(e.to_string()))?;
        let mut out = Vec::new();
        for _ in 0..50 {
            let resp = self.get_ok(url.clone(), r, "tag list refused").await?;
            let next = header_str(resp.headers(), "link").and_then(|l| next_link(&l));
            let body = read_capped(resp, MAX_MANIFEST).await?;
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| RegistryError::Decode(format!("tag list: {e}")))?;
            if let Some(tags) = v.get("tags").and_then(|t| t.as_array()) {
                out.extend(tags.iter().filter_map(|t| t.as_str().map(String::from)));
            }
            match next {
                // Relative to the registry; never another host.
                Some(n) => match url.join(&n) {
                    Ok(u) if u.host_str() == url.host_str() && u.port() == url.port() => url = u,
                    _ => break,
                },
                None => break,
            }
        }
        Ok(out)
    }

    /// The config blob of the image manifest `manifest` (a digest or a
    /// tag; an index is resolved to `platform`'s child), parsed; `None`
    /// when there is no such manifest config (an index without platform).
    async fn image_config(
        &self,
        r: &Reference,
        manifest: &str,
        platform: Option<&Platform>,
    ) -> Result<Option<serde_json::Value>, RegistryError> {
        let (media, mut body) = self.get_manifest(r, manifest).await?;
        let is_index = Remote {
            digest: String::new(),
            media_type: media,
        }
        .is_index();
        if is_index {
            let Some(child) = platform.map(|p| child_for(&body, p)).transpose()?.flatten() else {
                return Ok(None);
            };
            body = self.get_manifest(r, &child).await?.1;
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| RegistryError::Decode(format!("manifest: {e}")))?;
        let Some(config) = v["config"]["digest"]
            .as_str()
            .filter(|d| d.starts_with("sha256:"))
        else {
            return Ok(None);
        };
        let key = format!("{}@{config}", r.name());
        let cached = self
            .manifests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        let blob = match cached {
            Some((_, b)) => b,
            None => {
                let url = self.url(r, "blobs", config)?;
                let resp = self.get_ok(url, r, "config blob refused").await?;
                let b = Arc::new(read_capped(resp, MAX_MANIFEST).await?);
                if sha256(&b) != config {
                    return Err(RegistryError::Decode(
                        "config blob does not match its digest".into(),
                    ));
                }
                self.manifests
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (String::new(), b.clone()));
                b
            }
        };
        serde_json::from_slice(&blob)
            .map(Some)
            .map_err(|e| RegistryError::Decode(format!("config: {e}")))
    }

    /// A label of the image manifest `manifest` (one manifest and one config
    /// GET, cached by digest).
    pub async fn image_label(
        &self,
        r: &Reference,
        manifest: &str,
        label: &str,
    ) -> Result<Option<String>, RegistryError> {
        let c = self.image_config(r, manifest, None).await?;
        Ok(c.and_then(|c| {
            c["config"]["Labels"][label]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(String::from)
        }))
    }

    /// When the image `manifest` (digest or tag) was created, in Unix
    /// seconds, for `updates.min_age` (its config's `created`).
    pub async fn image_created(
        &self,
        r: &Reference,
        manifest: &str,
        platform: Option<&Platform>,
    ) -> Result<Option<u64>, RegistryError> {
        let c = self.image_config(r, manifest, platform).await?;
        Ok(c.and_then(|c| {
            let t: jiff::Timestamp = c["created"].as_str()?.parse().ok()?;
            u64::try_from(t.as_second()).ok()
        }))
    }

    /// The child of an index for this platform.
    pub async fn platform_child(
        &self,
        r: &Reference,
        index_digest: &str,
        p: &Platform,
    ) -> Result<Option<String>, RegistryError> {
        let (_, body) = self.get_manifest(r, index_digest).await?;
        child_for(&body, p)
    }
}

/// Same host, or the registry's own domain (last two labels).
fn realm_may_see_credentials(realm_host: &str, r: &Reference) -> bool {
    let strip = |h: &str| {
        h.rsplit_once(':')
            .map(|(h, _)| h.to_string())
            .unwrap_or(h.to_string())
    };
    let realm = strip(realm_host);
    let domain = |h: &str| {
        let parts: Vec<&str> = h.split('.').collect();
        parts[parts.len().saturating_sub(2)..].join(".")
    };
    [strip(r.api_host()), strip(&r.registry)].iter().any(|h| {
        *h == realm
            || (h.contains('.')
                && !h.chars().all(|c| c.is_ascii_digit() || c == '.')
                && domain(h) == domain(&realm))
    })
}

/// Picks the platform's entry of an index (attestations, `unknown` os, skipped).
pub fn child_for(index: &[u8], p: &Platform) -> Result<Option<String>, RegistryError> {
    let v: serde_json::Value =
        serde_json::from_slice(index).map_err(|e| RegistryError::Decode(format!("index: {e}")))?;
    let manifests = v
        .get("manifests")
        .and_then(|m| m.as_array())
        .ok_or_else(|| RegistryError::Decode("index without manifests".into()))?;
    let mut first_arch_match = None;
    for m in manifests {
        let plat = &m["platform"];
        let (os, arch) = (
            plat["os"].as_str().unwrap_or(""),
            plat["architecture"].as_str().unwrap_or(""),
        );
        if os != p.os || arch != p.architecture {
            continue;
        }
        let Some(d) = m["digest"].as_str() else {
            continue;
        };
        let variant = plat["variant"].as_str();
        if variant.map(String::from) == p.variant {
            return Ok(Some(d.to_string()));
        }
        first_arch_match.get_or_insert(d.to_string());
    }
    Ok(first_arch_match)
}

/// `</v2/x/tags/list?last=b&n=2>; rel="next"` → the URL.
pub(crate) fn next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params.contains("rel=\"next\"").then(|| {
            url.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

fn header_str(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
}

fn sha256(body: &[u8]) -> String {
    let d = Sha256::digest(body);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<u64> {
    let v = header_str(h, "retry-after")?;
    if let Ok(s) = v.parse::<u64>() {
        return Some(s);
    }
    let t = httpdate(&v)?;
    Some(
        t.duration_since(SystemTime::now())
            .map(|d| d.as_secs())
            .unwrap_or(1),
    )
}

fn httpdate(v: &str) -> Option<SystemTime> {
    let p: Vec<&str> = v.split_whitespace().collect();
    if p.len() != 6 {
        return None;
    }
    let mon = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == p[2])?
        + 1;
    humantime::parse_rfc3339(&format!("{}-{mon:02}-{:0>2}T{}Z", p[3], p[1], p[4])).ok()
}

/// `Bearer realm="…",service="…"` → ("bearer", {realm, service}).
#[cfg(test)]
mod blob_cache_tests {
    use super::*;

    #[test]
    fn the_blob_cache_stays_within_its_bytes() {
        let mut c = BlobCache::new(1000);
        for i in 0..100 {
            c.insert(
                format!("r@sha256:{i}"),
                (String::new(), Arc::new(vec![0u8; 90])),
            );
            assert!(c.bytes <= 1000, "{}", c.bytes);
        }
        assert!(c.get("r@sha256:99").is_some());
        assert!(c.get("r@sha256:0").is_none(), "the oldest went first");
        c.insert("huge".into(), (String::new(), Arc::new(vec![0u8; 5000])));
        assert!(c.get("huge").is_none(), "larger than the cache: not kept");
        assert_eq!(c.map.len(), c.order.len());
    }
}

pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((k, after)) = rest.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(k, v.to_string());
        rest = next.trim_start_matches([',', ' ']);
    }
    (scheme.to_ascii_lowercase(), params)
}

async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, RegistryError> {
    crate::http::read_capped(resp, cap)
        .await
        .map_err(|e| match e {
            ReadError::Network(e) => RegistryError::Connect(chain(&e)),
            ReadError::TooLarge(cap) => {
                RegistryError::Decode(format!("answer larger than {cap} bytes"))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(
            (s.as_str(), p["realm"].as_str()),
            ("basic", "Registry Realm")
        );
        let (s, p) = parse_challenge("garbage");
        assert_eq!(s, "garbage");
        assert!(p.is_empty());
    }

    #[test]
    fn platform_children() {
        let index = br#"{"manifests":[
            {"digest":"sha256:arm","platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"digest":"sha256:att","platform":{"os":"unknown","architecture":"unknown"}},
            {"digest":"sha256:amd","platform":{"os":"linux","architecture":"amd64"}},
            {"digest":"sha256:arm6","platform":{"os":"linux","architecture":"arm","variant":"v6"}}]}"#;
        let p = |a: &str, v: Option<&str>| Platform {
            os: "linux".into(),
            architecture: a.into(),
            variant: v.map(String::from),
        };
        assert_eq!(
            child_for(index, &p("amd64", None)).expect("ok").as_deref(),
            Some("sha256:amd")
        );
        assert_eq!(
            child_for(index, &p("arm", Some("v6")))
                .expect("ok")
                .as_deref(),
            Some("sha256:arm6")
        );
        assert_eq!(
            child_for(index, &p("arm", Some("v8")))
                .expect("ok")
                .as_deref(),
            Some("sha256:arm")
        );
        assert_eq!(child_for(index, &p("s390x", None)).expect("ok"), None);
        assert!(child_for(b"{}", &p("amd64", None)).is_err());
        assert!(child_for(b"nope", &p("amd64", None)).is_err());
    }

    #[test]
    fn credentials_stay_on_the_registry_domain() {
        let hub = Reference::parse("nginx").expect("ref");
        assert!(realm_may_see_credentials("auth.docker.io", &hub));
        let ghcr = Reference::parse("ghcr.io/o/i").expect("ref");
        assert!(realm_may_see_credentials("ghcr.io", &ghcr));
        let lscr = Reference::parse("lscr.io/linuxserver/x").expect("ref");
        assert!(!realm_may_see_credentials("ghcr.io", &lscr));
        let local = Reference::parse("127.0.0.1:5000/x").expect("ref");
        assert!(realm_may_see_credentials("127.0.0.1", &local));
        assert!(!realm_may_see_credentials("10.0.0.1", &local));
        assert!(!realm_may_see_credentials("evil.example", &ghcr));
    }

    #[test]
    fn link_headers() {
        assert_eq!(
            next_link(r#"</v2/x/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/x/tags/list?last=b&n=2")
        );
        assert_eq!(next_link(r#"<https://h/a>; rel="prev""#), None);
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("120"));
        assert_eq!(retry_after(&h), Some(120));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(1));
        assert!(
            is_loopback("127.0.0.1:5000") && is_loopback("localhost") && !is_loopback("ghcr.io")
        );
        assert_eq!(
            sha256(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
