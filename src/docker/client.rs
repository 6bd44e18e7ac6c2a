//! One HTTP client per Docker engine. The API version is negotiated with the
//! engine on every (re)connect (Docker 29 refuses anything below 1.44, old engines
//! anything above their own), never hard-coded.

use std::pin::Pin;
use std::sync::RwLock;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{Stream, StreamExt, TryStreamExt};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;

use super::models::{
    ContainerInspect, ContainerSummary, Event, ImageInspect, PruneReport, SystemDf, SystemInfo,
    Version, VolumeList,
};
use crate::config::{EndpointConfig, EngineUrl, parse_engine_url};
use crate::http::{ReadError, error_chain};

/// Newest API version whose fields this client knows; older engines get their own.
pub const MAX_API: (u32, u32) = (1, 53);
/// Oldest API version we accept (Docker 19.03).
pub const MIN_API: (u32, u32) = (1, 40);

pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Caps on what is read from an engine: a list of thousands of containers fits.
pub(super) const MAX_LIST_BODY: usize = 64 << 20;
pub(super) const MAX_OBJECT_BODY: usize = 8 << 20;
/// A prune removes layers from disk: minutes on a Pi with an SD card.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(600);
/// Raw log bytes read for one `logs` command (1,000 lines, each cut at 8 KiB
/// once decoded, fit many times over).
const MAX_LOG_BODY: usize = 8 << 20;
/// One event line; Docker's are well under 4 KiB.
const MAX_EVENT_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("invalid endpoint configuration: {0}")]
    Config(String),
    #[error("cannot reach the engine: {0}")]
    Connect(String),
    #[error("request timed out")]
    Timeout,
    #[error("not found")]
    NotFound,
    #[error("engine answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer from the engine ({what}): {message}")]
    Decode { what: &'static str, message: String },
    #[error("engine API {0} is too old (dockside needs 1.40 or newer)")]
    TooOld(String),
    #[error("the engine needs API {0} or newer, more than dockside speaks (1.53)")]
    TooNew(String),
    #[error("authentication failed: {0}")]
    Auth(String),
}

impl DockerError {
    pub(super) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            DockerError::Timeout
        } else {
            DockerError::Connect(error_chain(&e))
        }
    }
}

/// One item of `/events`, decoded here (untrusted JSON, SPEC §16): an
/// event, or a line that is not one — the reader skips it and says so.
#[derive(Debug, Clone, PartialEq)]
pub enum EventItem {
    Event(Event),
    /// Not an event (the JSON error).
    Malformed(String),
    /// Over `MAX_EVENT_LINE`: dropped unread.
    Oversized,
}

impl EventItem {
    /// Decodes one line; None for a blank one.
    pub fn decode(line: &str) -> Option<EventItem> {
        let line = line.trim();
        if line.is_empty() {
            return None;
        }
        Some(match serde_json::from_str(line) {
            Ok(e) => EventItem::Event(e),
            Err(e) => EventItem::Malformed(e.to_string()),
        })
    }
}

/// `/events` as typed items; an error ends the stream (the connection broke).
pub type EventStream = Pin<Box<dyn Stream<Item = Result<EventItem, std::io::Error>> + Send>>;

/// Credentials added to every request (Portainer's API key or JWT). Exactly
/// one header per request; a 401 invalidates it and the request is tried once more.
pub trait RequestAuth: Send + Sync + std::fmt::Debug {
    fn header(&self) -> BoxFuture<'_, Result<(HeaderName, HeaderValue), String>>;
    fn rejected(&self, value: &HeaderValue);
}

#[derive(Debug)]
pub struct DockerClient {
    http: reqwest::Client,
    base: Url,
    /// `v1.41`-style prefix, set by `negotiate`.
    api: RwLock<String>,
    auth: Option<std::sync::Arc<dyn RequestAuth>>,
    /// The engine keeps images in containerd (learnt from `/info`): image IDs
    /// are then manifest digests and RepoDigests prove nothing (SPEC §4.3).
    containerd_store: std::sync::atomic::AtomicBool,
}

pub(super) fn parse_api(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim().trim_start_matches('v').split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

impl DockerClient {
    pub fn new(cfg: &EndpointConfig) -> Result<Self, DockerError> {
        let url = parse_engine_url(&cfg.url).map_err(DockerError::Config)?;
        let mut builder = crate::http::client_builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(90))
            .no_proxy();
        let base = match url {
            EngineUrl::Unix(path) => {
                // No TLS here: never load the system trust store (a scratch
                // sidecar image has none, and reqwest would refuse to build).
                builder = builder.unix_socket(path).tls_certs_only([]);
                "http://docker/".to_string()
            }
            EngineUrl::Http { base, tls: false } => {
                builder = builder.tls_certs_only([]);
                base
            }
            EngineUrl::Http { base, tls: true } => {
                builder = tls_options(builder, cfg)?;
                base
            }
        };
        Self::with_client(builder, &base)
    }

    /// For sources that build their own reqwest client (Portainer's proxy prefix).
    pub fn with_client(builder: reqwest::ClientBuilder, base: &str) -> Result<Self, DockerError> {
        let http = builder
            .build()
            .map_err(|e| DockerError::Config(e.to_string()))?;
        Self::shared(http, base, None)
    }

    /// Over an existing client (one connection pool per Portainer instance),
    /// with credentials added to every request.
    pub fn shared(
        http: reqwest::Client,
        base: &str,
        auth: Option<std::sync::Arc<dyn RequestAuth>>,
    ) -> Result<Self, DockerError> {
        let base = Url::parse(base).map_err(|e| DockerError::Config(e.to_string()))?;
        Ok(Self {
            http,
            base,
            api: RwLock::new(format!("v{}.{}", MIN_API.0, MIN_API.1)),
            containerd_store: std::sync::atomic::AtomicBool::new(false),
            auth,
        })
    }

    /// Sends a request with the credential header; after a 401 the credential
    /// is dropped (a JWT is renewed) and the request is sent once more.
    pub(super) async fn execute(
        &self,
        method: Method,
        url: Url,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, DockerError> {
        self.execute_with(method, url, timeout, None, None).await
    }

    /// [`Self::execute`] with a JSON body and one extra header.
    pub(super) async fn execute_with(
        &self,
        method: Method,
        url: Url,
        timeout: Option<Duration>,
        body: Option<&serde_json::Value>,
        header: Option<(&str, &str)>,
    ) -> Result<reqwest::Response, DockerError> {
        for attempt in 0..2 {
            let mut req = self.http.request(method.clone(), url.clone());
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some((k, v)) = header {
                req = req.header(k, v);
            }
            let mut sent_auth = None;
            if let Some(auth) = &self.auth {
                let (name, value) = auth.header().await.map_err(DockerError::Auth)?;
                req = req.header(name, value.clone());
                sent_auth = Some(value);
            }
            let resp = match timeout {
                Some(_) => req.send().await.map_err(DockerError::from_reqwest)?,
                // Streams: only the response head is bounded.
                None => tokio::time::timeout(REQUEST_TIMEOUT, req.send())
                    .await
                    .map_err(|_| DockerError::Timeout)?
                    .map_err(DockerError::from_reqwest)?,
            };
            if resp.status() == StatusCode::UNAUTHORIZED
                && attempt == 0
                && let (Some(auth), Some(v)) = (&self.auth, &sent_auth)
            {
                auth.rejected(v);
                continue;
            }
            if resp.status() == StatusCode::BAD_REQUEST && self.versioned(&url) {
                // "client version 1.41 is too old/new": the engine (or a proxy in
                // front) changed under us. Renegotiate once and resend; anything
                // else is the caller's error as usual.
                let err = status_error(resp).await;
                if attempt == 0 && is_version_refusal(&err) {
                    let before = self.api_version();
                    let now = Box::pin(self.negotiate_via(true)).await?;
                    tracing::warn!(refused = %before, chosen = %now, error = %err, "engine refused the API version: renegotiated");
                    if let Some(retry) = self.with_current_version(&url) {
                        return Box::pin(self.execute_with(method, retry, timeout, body, header))
                            .await;
                    }
                }
                return Err(err);
            }
            return Ok(resp);
        }
        Err(DockerError::Auth("credentials rejected twice".into()))
    }

    pub fn api_version(&self) -> String {
        self.api
            .read()
            .map(|v| v.trim_start_matches('v').to_string())
            .unwrap_or_default()
    }

    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        let api = self.api.read().map(|v| v.clone()).unwrap_or_default();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty();
            if !api.is_empty() {
                segs.push(&api);
            }
            segs.extend(segments);
        }
        url
    }

    /// `GET /_ping` (unversioned) and pick `min(engine, MAX_API)`.
    pub async fn negotiate(&self) -> Result<String, DockerError> {
        self.negotiate_via(false).await
    }

    /// `full`: ask the unversioned `/version` for both ends of the engine's
    /// range (after a refusal, when `_ping`'s maximum alone was not enough).
    async fn negotiate_via(&self, full: bool) -> Result<String, DockerError> {
        if full {
            let (engine, floor) = self.version_range().await?;
            return self.choose(engine, floor);
        }
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().push("_ping");
        }
        let resp = self
            .execute(Method::GET, url, Some(REQUEST_TIMEOUT))
            .await?;
        let status = resp.status();
        let header = resp
            .headers()
            .get("api-version")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        if !status.is_success() {
            return Err(status_error(resp).await);
        }
        let (engine, floor) = match header.as_deref().and_then(parse_api) {
            Some(v) => (v, None),
            // A proxy that drops the header: the unversioned `/version` says
            // both ends of the engine's range.
            None => self.version_range().await?,
        };
        self.choose(engine, floor)
    }

    /// `min(engine, MAX_API)`, refused when outside what both ends speak.
    fn choose(&self, engine: (u32, u32), floor: Option<(u32, u32)>) -> Result<String, DockerError> {
        if engine < MIN_API {
            return Err(DockerError::TooOld(format!("{}.{}", engine.0, engine.1)));
        }
        let chosen = engine.min(MAX_API);
        if let Some(floor) = floor
            && chosen < floor
        {
            return Err(DockerError::TooNew(format!("{}.{}", floor.0, floor.1)));
        }
        let v = format!("v{}.{}", chosen.0, chosen.1);
        if let Ok(mut api) = self.api.write() {
            *api = v.clone();
        }
        Ok(v)
    }

    /// `GET /version` without a version prefix: (ApiVersion, MinAPIVersion).
    async fn version_range(&self) -> Result<((u32, u32), Option<(u32, u32)>), DockerError> {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().push("version");
        }
        let v: Version = self
            .send_json(
                "version",
                Method::GET,
                url,
                REQUEST_TIMEOUT,
                MAX_OBJECT_BODY,
            )
            .await?;
        let max = parse_api(&v.api_version).ok_or_else(|| DockerError::Decode {
            what: "version",
            message: "no Api-Version header on _ping and no ApiVersion in /version".into(),
        })?;
        Ok((max, parse_api(&v.min_api_version)))
    }

    /// One request to a full `url` whose JSON answer must be a success.
    async fn send_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        method: Method,
        url: Url,
        timeout: Duration,
        cap: usize,
    ) -> Result<T, DockerError> {
        let resp = self.execute(method, url, Some(timeout)).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let body = read_capped(resp, cap, what).await?;
        serde_json::from_slice(&body).map_err(|e| DockerError::Decode {
            what,
            message: e.to_string(),
        })
    }

    /// Whether `url` carries the negotiated version prefix.
    fn versioned(&self, url: &Url) -> bool {
        self.version_segment(url).is_some()
    }

    /// Index of the `v1.NN` path segment right after the base path.
    fn version_segment(&self, url: &Url) -> Option<usize> {
        let base = self.base.path_segments()?.filter(|s| !s.is_empty()).count();
        let seg = url.path_segments()?.nth(base)?;
        (seg.starts_with('v') && parse_api(seg).is_some()).then_some(base)
    }

    /// `url` with its version segment replaced by the negotiated one.
    fn with_current_version(&self, url: &Url) -> Option<Url> {
        let i = self.version_segment(url)?;
        let api = self.api.read().ok()?.clone();
        let segs: Vec<String> = url.path_segments()?.map(String::from).collect();
        let mut out = url.clone();
        {
            let mut m = out.path_segments_mut().ok()?;
            m.clear();
            for (n, s) in segs.iter().enumerate() {
                m.push(if n == i { &api } else { s });
            }
        }
        Some(out)
    }

    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        segments: &[&str],
        query: &[(&str, &str)],
        cap: usize,
    ) -> Result<T, DockerError> {
        let body = self.get_bytes(what, segments, query, cap).await?;
        serde_json::from_slice(&body).map_err(|e| DockerError::Decode {
            what,
            message: e.to_string(),
        })
    }

    async fn get_bytes(
        &self,
        what: &'static str,
        segments: &[&str],
        query: &[(&str, &str)],
        cap: usize,
    ) -> Result<Vec<u8>, DockerError> {
        let mut url = self.url(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let resp = self
            .execute(Method::GET, url, Some(REQUEST_TIMEOUT))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(DockerError::NotFound);
        }
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        read_capped(resp, cap, what).await
    }

    pub async fn version(&self) -> Result<Version, DockerError> {
        self.get_json("version", &["version"], &[], MAX_OBJECT_BODY)
            .await
    }

    pub async fn info(&self) -> Result<SystemInfo, DockerError> {
        let info: SystemInfo = self
            .get_json("info", &["info"], &[], MAX_OBJECT_BODY)
            .await?;
        self.containerd_store.store(
            info.containerd_store(),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(info)
    }

    /// Whether the last `/info` said images live in containerd.
    pub fn containerd_store(&self) -> bool {
        self.containerd_store
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Swarm services; 0 when the engine is no swarm manager (it answers 503).
    pub async fn service_count(&self) -> Result<usize, DockerError> {
        match self
            .get_json::<Vec<serde_json::Value>>("services", &["services"], &[], MAX_LIST_BODY)
            .await
        {
            Ok(v) => Ok(v.len()),
            Err(DockerError::Status {
                status: 503 | 406, ..
            }) => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// `GET /system/df`: it walks every layer, so it gets a budget of its
    /// own and callers run it off the endpoint task.
    pub async fn system_df(&self, timeout: Duration) -> Result<SystemDf, DockerError> {
        let url = self.url(&["system", "df"]);
        self.send_json("system df", Method::GET, url, timeout, MAX_LIST_BODY)
            .await
    }

    /// `POST /{what}/prune` (`images` only dangling ones, as `docker image
    /// prune`; `volumes` only anonymous ones on API ≥ 1.42): bytes reclaimed.
    /// `label`: only what carries it (`key` or `key=value`).
    pub async fn prune(&self, what: &str, label: Option<&str>) -> Result<i64, DockerError> {
        self.prune_with(what, label, false).await
    }

    /// [`Self::prune`]; `all_volumes`: named volumes too (API ≥ 1.42's `all`).
    pub async fn prune_with(
        &self,
        what: &str,
        label: Option<&str>,
        all_volumes: bool,
    ) -> Result<i64, DockerError> {
        let mut filters = serde_json::Map::new();
        if what == "volumes" && all_volumes {
            filters.insert("all".into(), serde_json::json!(["true"]));
        }
        if let Some(l) = label {
            filters.insert("label".into(), serde_json::json!([l]));
        }
        let segment = match what {
            "images" => {
                filters.insert("dangling".into(), serde_json::json!(["true"]));
                "images"
            }
            "containers" => "containers",
            "volumes" => "volumes",
            "build_cache" => "build",
            other => {
                return Err(DockerError::Config(format!(
                    "nothing to prune called `{other}`"
                )));
            }
        };
        let mut url = self.url(&[segment, "prune"]);
        if !filters.is_empty() {
            let f = serde_json::Value::Object(filters).to_string();
            url.query_pairs_mut().append_pair("filters", &f);
        }
        let r: PruneReport = self
            .send_json("prune", Method::POST, url, PRUNE_TIMEOUT, MAX_LIST_BODY)
            .await?;
        Ok(r.space_reclaimed.max(0))
    }

    /// One stats answer, never a stream (SPEC §13). `one_shot` (API ≥ 1.41)
    /// answers at once without a second sample: the caller keeps the
    /// previous one. Without it the engine waits about a second for
    /// `precpu_stats`.
    pub async fn stats(
        &self,
        id: &str,
        one_shot: bool,
        timeout: Duration,
    ) -> Result<crate::stats::EngineStats, DockerError> {
        let mut url = self.url(&["containers", id, "stats"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("stream", "false");
            if one_shot && parse_api(&self.api_version()).is_some_and(|v| v >= (1, 41)) {
                q.append_pair("one-shot", "true");
            }
        }
        let resp = self.execute(Method::GET, url, Some(timeout)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(DockerError::NotFound);
        }
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let body = read_capped(resp, MAX_OBJECT_BODY, "stats").await?;
        serde_json::from_slice(&body).map_err(|e| DockerError::Decode {
            what: "stats",
            message: e.to_string(),
        })
    }

    pub async fn volume_count(&self) -> Result<usize, DockerError> {
        let v: VolumeList = self
            .get_json("volumes", &["volumes"], &[], MAX_LIST_BODY)
            .await?;
        Ok(v.volumes.len())
    }

    /// All containers. A malformed entry is skipped and logged, not fatal.
    pub async fn list_containers(&self) -> Result<Vec<ContainerSummary>, DockerError> {
        let raw: Vec<serde_json::Value> = self
            .get_json(
                "containers/json",
                &["containers", "json"],
                &[("all", "1")],
                MAX_LIST_BODY,
            )
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|v| match serde_json::from_value::<ContainerSummary>(v) {
                Ok(c) if !c.id.is_empty() => Some(c),
                Ok(_) => {
                    tracing::warn!("skipping a container list entry without Id");
                    None
                }
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a malformed container list entry");
                    None
                }
            })
            .collect())
    }

    /// `None` when the container no longer exists.
    /// The last `tail` log lines of container `id` (since `since`, Unix
    /// seconds), decoded ([`super::logs::decode`]). The raw answer is read up
    /// to `MAX_LOG_BODY`; a longer one keeps what was read and is `truncated`.
    pub async fn logs(
        &self,
        id: &str,
        tail: u32,
        since: Option<i64>,
    ) -> Result<super::logs::Logs, DockerError> {
        let Some(c) = self.inspect(id).await? else {
            return Err(DockerError::NotFound);
        };
        let mut url = self.url(&["containers", id, "logs"]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("stdout", "1")
                .append_pair("stderr", "1")
                .append_pair("timestamps", "1")
                .append_pair("tail", &tail.to_string());
            if let Some(s) = since {
                q.append_pair("since", &s.to_string());
            }
        }
        let mut resp = self
            .execute(Method::GET, url, Some(REQUEST_TIMEOUT))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(DockerError::NotFound);
        }
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let mut body = Vec::new();
        let mut cut = false;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_LOG_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if chunk.len() > room {
                        cut = true;
                        break;
                    }
                }
                Ok(None) => break,
                // Cut half-way: the lines read so far, marked truncated.
                Err(e) => {
                    tracing::debug!(error = %e, "log stream ended early");
                    cut = true;
                    break;
                }
            }
        }
        let mut logs = super::logs::decode(&body, c.config.tty);
        logs.truncated |= cut;
        Ok(logs)
    }

    pub async fn inspect(&self, id: &str) -> Result<Option<ContainerInspect>, DockerError> {
        match self
            .get_json(
                "containers/{id}/json",
                &["containers", id, "json"],
                &[],
                MAX_OBJECT_BODY,
            )
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(DockerError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /images/{id}/json` by image id; `None` when the image is gone.
    pub async fn image_inspect(&self, id: &str) -> Result<Option<ImageInspect>, DockerError> {
        match self
            .get_json(
                "images/{id}/json",
                &["images", id, "json"],
                &[],
                MAX_OBJECT_BODY,
            )
            .await
        {
            Ok(i) => Ok(Some(i)),
            Err(DockerError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST /containers/{id}/{action}` (start, stop, restart, pause, unpause,
    /// kill). Returns false when the engine says it was already so (304).
    pub async fn container_action(
        &self,
        id: &str,
        action: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<bool, DockerError> {
        let mut url = self.url(&["containers", id, action]);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let resp = self.execute(Method::POST, url, Some(timeout)).await?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => Ok(false),
            StatusCode::NOT_FOUND => Err(DockerError::NotFound),
            s if s.is_success() => Ok(true),
            _ => Err(status_error(resp).await),
        }
    }

    /// `GET /containers/{id}/json` as raw JSON: every field, for a recreate.
    pub async fn inspect_raw(&self, id: &str) -> Result<serde_json::Value, DockerError> {
        self.get_json(
            "container inspect",
            &["containers", id, "json"],
            &[],
            MAX_OBJECT_BODY,
        )
        .await
    }

    /// `GET /images/{id}/json` as raw JSON.
    pub async fn image_inspect_raw(&self, id: &str) -> Result<serde_json::Value, DockerError> {
        self.get_json(
            "image inspect",
            &["images", id, "json"],
            &[],
            MAX_OBJECT_BODY,
        )
        .await
    }

    /// `POST /images/create`: pulls `image:tag`, reading the progress stream to
    /// its end; an `error` line in it is the pull's failure.
    /// `POST /images/create`: the stream is read as it comes; `on_progress`
    /// gets each new percent (monotonic, below 100 until the pull is done).
    pub async fn pull(
        &self,
        image: &str,
        tag: &str,
        registry_auth: Option<&str>,
        timeout: Duration,
        on_progress: &(dyn Fn(u8) + Send + Sync),
    ) -> Result<(), DockerError> {
        use super::pull::{Line, MAX_LINE, PullProgress};
        let mut url = self.url(&["images", "create"]);
        url.query_pairs_mut()
            .append_pair("fromImage", image)
            .append_pair("tag", tag);
        let header = registry_auth.map(|a| ("X-Registry-Auth", a));
        let mut resp = self
            .execute_with(Method::POST, url, Some(timeout), None, header)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let mut progress = PullProgress::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut skipping = false;
        let mut handle = |line: &[u8]| match progress.feed(line) {
            Line::Error(message) => Err(DockerError::Status {
                status: 500,
                message,
            }),
            Line::Percent(p) => {
                on_progress(p);
                Ok(())
            }
            Line::Nothing => Ok(()),
        };
        while let Some(chunk) = resp.chunk().await.map_err(DockerError::from_reqwest)? {
            for part in chunk.split_inclusive(|b| *b == b'\n') {
                let ends = part.last() == Some(&b'\n');
                if !skipping {
                    buf.extend_from_slice(part);
                }
                if buf.len() > MAX_LINE {
                    buf.clear();
                    skipping = true;
                }
                if ends {
                    if !skipping {
                        handle(&buf)?;
                    }
                    buf.clear();
                    skipping = false;
                }
            }
        }
        if !buf.is_empty() && !skipping {
            handle(&buf)?;
        }
        on_progress(100);
        Ok(())
    }

    /// `POST /images/{id}/tag`: points `repo:tag` at image `id` (rollback).
    pub async fn tag_image(&self, id: &str, repo: &str, tag: &str) -> Result<(), DockerError> {
        let mut url = self.url(&["images", id, "tag"]);
        url.query_pairs_mut()
            .append_pair("repo", repo)
            .append_pair("tag", tag);
        let resp = self
            .execute(Method::POST, url, Some(REQUEST_TIMEOUT))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(DockerError::NotFound),
            _ => Err(status_error(resp).await),
        }
    }

    /// `POST /containers/create?name=`; returns the new id.
    pub async fn create_container(
        &self,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<String, DockerError> {
        let mut url = self.url(&["containers", "create"]);
        url.query_pairs_mut().append_pair("name", name);
        let resp = self
            .execute_with(Method::POST, url, Some(REQUEST_TIMEOUT), Some(body), None)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let v: serde_json::Value =
            serde_json::from_slice(&read_capped(resp, MAX_OBJECT_BODY, "container create").await?)
                .map_err(|e| DockerError::Decode {
                    what: "container create",
                    message: e.to_string(),
                })?;
        v.get("Id")
            .and_then(|i| i.as_str())
            .map(String::from)
            .ok_or(DockerError::Decode {
                what: "container create",
                message: "no Id".into(),
            })
    }

    /// `POST /networks/{net}/connect`.
    pub async fn network_connect(
        &self,
        network: &str,
        body: &serde_json::Value,
    ) -> Result<(), DockerError> {
        let url = self.url(&["networks", network, "connect"]);
        let resp = self
            .execute_with(Method::POST, url, Some(REQUEST_TIMEOUT), Some(body), None)
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        Ok(())
    }

    /// `DELETE /containers/{id}?force=true` (volumes are kept).
    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        self.remove_container_with(id, true).await
    }

    /// `DELETE /containers/{id}`; without `force` the engine refuses a running one.
    pub async fn remove_container_with(&self, id: &str, force: bool) -> Result<(), DockerError> {
        let mut url = self.url(&["containers", id]);
        url.query_pairs_mut()
            .append_pair("force", if force { "true" } else { "false" });
        let resp = self
            .execute(Method::DELETE, url, Some(REQUEST_TIMEOUT))
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(DockerError::NotFound),
            _ => Err(status_error(resp).await),
        }
    }

    /// Opens `/events` (no total or read timeout: Docker sends no heartbeats).
    /// Returns the stream of lines and the engine's `Date` header as Unix seconds.
    pub async fn events(
        &self,
        since: Option<&str>,
        until: Option<&str>,
        types: &[&str],
    ) -> Result<(EventStream, Option<i64>), DockerError> {
        let mut url = self.url(&["events"]);
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = since {
                q.append_pair("since", s);
            }
            if let Some(u) = until {
                q.append_pair("until", u);
            }
            if !types.is_empty() {
                let filters = serde_json::json!({ "type": types });
                q.append_pair("filters", &filters.to_string());
            }
        }
        // A bounded (`until`) request has a total timeout; a live stream only a
        // bounded response head: its body may idle for hours.
        let timeout = until.map(|_| REQUEST_TIMEOUT);
        let resp = self.execute(Method::GET, url, timeout).await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(httpdate_to_unix);
        let bytes = resp.bytes_stream().map_err(std::io::Error::other);
        let reader = StreamReader::new(bytes);
        let lines = FramedRead::new(reader, LinesCodec::new_with_max_length(MAX_EVENT_LINE));
        let items = lines.filter_map(|r| {
            std::future::ready(match r {
                Ok(line) => EventItem::decode(&line).map(Ok),
                Err(LinesCodecError::MaxLineLengthExceeded) => Some(Ok(EventItem::Oversized)),
                Err(LinesCodecError::Io(e)) => Some(Err(e)),
            })
        });
        Ok((items.boxed(), date))
    }
}

fn tls_options(
    mut builder: reqwest::ClientBuilder,
    cfg: &EndpointConfig,
) -> Result<reqwest::ClientBuilder, DockerError> {
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| DockerError::Config(format!("ca_file {}: {e}", ca.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| DockerError::Config(format!("ca_file {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(DockerError::Config(format!(
                "ca_file {}: no certificate in it",
                ca.display()
            )));
        }
        // The engine's own CA only, as `docker --tlsverify` does.
        builder = builder.tls_certs_only(certs);
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert, &cfg.client_key) {
        let mut pem = std::fs::read(cert)
            .map_err(|e| DockerError::Config(format!("client_cert {}: {e}", cert.display())))?;
        pem.push(b'\n');
        pem.extend(
            std::fs::read(key)
                .map_err(|e| DockerError::Config(format!("client_key {}: {e}", key.display())))?,
        );
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| DockerError::Config(format!("client certificate: {e}")))?;
        builder = builder.identity(id);
    }
    if cfg.tls_insecure {
        tracing::warn!(url = %cfg.url, "TLS verification is OFF for this endpoint");
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    Ok(builder)
}

/// Engine error bodies are `{"message": "..."}`; anything else is shown truncated.
pub(super) async fn read_capped(
    resp: reqwest::Response,
    cap: usize,
    what: &'static str,
) -> Result<Vec<u8>, DockerError> {
    crate::http::read_capped(resp, cap)
        .await
        .map_err(|e| match e {
            ReadError::Network(e) => DockerError::from_reqwest(e),
            ReadError::TooLarge(cap) => DockerError::Decode {
                what,
                message: format!("answer larger than {cap} bytes"),
            },
        })
}

/// The engine's answer to a request in an API version it does not serve.
fn is_version_refusal(err: &DockerError) -> bool {
    matches!(err, DockerError::Status { status: 400, message }
        if message.contains("client version") && (message.contains("too old") || message.contains("too new")))
}

pub(super) async fn status_error(resp: reqwest::Response) -> DockerError {
    let status = resp.status().as_u16();
    let body = read_capped(resp, 64 << 10, "error body")
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(String::from))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            text.chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string()
        });
    DockerError::Status { status, message }
}

/// `Sun, 22 Nov 2026 06:56:53 GMT` → Unix seconds.
fn httpdate_to_unix(v: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(&rfc1123_to_rfc3339(v)?).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

fn rfc1123_to_rfc3339(v: &str) -> Option<String> {
    // "Sun, 22 Nov 2026 06:56:53 GMT"
    let mut parts = v.split_whitespace();
    let _dow = parts.next()?;
    let day: u32 = parts.next()?.parse().ok()?;
    let mon = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: u32 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" {
        return None;
    }
    Some(format!("{year:04}-{mon:02}-{day:02}T{time}Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_decoded_here_and_bad_ones_named() {
        assert_eq!(EventItem::decode("  \r"), None);
        assert!(matches!(
            EventItem::decode("{not json"),
            Some(EventItem::Malformed(_))
        ));
        let line = r#"{"Type":"container","Action":"die","Actor":{"ID":"abc","Attributes":{"exitCode":"137"}},"time":1,"timeNano":1000000001}"#;
        let Some(EventItem::Event(ev)) = EventItem::decode(line) else {
            panic!("an event");
        };
        assert_eq!(
            (
                ev.kind.as_str(),
                ev.action.as_str(),
                ev.actor.id.as_str(),
                ev.time_nano
            ),
            ("container", "die", "abc", 1_000_000_001)
        );
    }

    #[test]
    fn api_versions() {
        assert_eq!(parse_api("1.41"), Some((1, 41)));
        assert_eq!(parse_api("v1.53"), Some((1, 53)));
        assert_eq!(parse_api("x"), None);
        assert!((1, 41) < MAX_API && (1, 9) < MIN_API && (1, 100) > MAX_API);
    }

    #[test]
    fn a_refused_version_is_replaced_in_place() {
        let c = DockerClient::with_client(
            crate::http::client_builder(),
            "https://p.example/api/endpoints/3/docker",
        )
        .expect("client");
        let old = c.url(&["containers", "json"]);
        assert!(c.versioned(&old));
        let unversioned =
            Url::parse("https://p.example/api/endpoints/3/docker/_ping").expect("url");
        assert!(!c.versioned(&unversioned));
        c.choose((1, 51), Some((1, 44))).expect("in range");
        let new = c.with_current_version(&old).expect("rewritten");
        assert_eq!(new.path(), "/api/endpoints/3/docker/v1.51/containers/json");
        assert!(matches!(
            c.choose((1, 30), None),
            Err(DockerError::TooOld(_))
        ));
        assert!(matches!(
            c.choose((1, 70), Some((1, 60))),
            Err(DockerError::TooNew(_))
        ));
        let refusal = |m: &str| DockerError::Status {
            status: 400,
            message: m.into(),
        };
        assert!(is_version_refusal(&refusal(
            "client version 1.41 is too old. Minimum supported API version is 1.44"
        )));
        assert!(is_version_refusal(&refusal(
            "client version 1.60 is too new. Maximum supported API version is 1.51"
        )));
        assert!(!is_version_refusal(&refusal("invalid filter")));
    }

    #[test]
    fn url_keeps_base_path() {
        let c = DockerClient::with_client(
            crate::http::client_builder(),
            "https://p.example/api/endpoints/3/docker",
        )
        .expect("client");
        let u = c.url(&["containers", "a/b", "json"]);
        assert_eq!(
            u.as_str(),
            "https://p.example/api/endpoints/3/docker/v1.40/containers/a%2Fb/json"
        );
    }

    #[test]
    fn http_dates() {
        assert_eq!(httpdate_to_unix("Thu, 01 Jan 1970 00:01:40 GMT"), Some(100));
        assert_eq!(httpdate_to_unix("garbage"), None);
    }
}
