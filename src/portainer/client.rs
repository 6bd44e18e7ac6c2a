//! Portainer's HTTP API: authentication (access token or JWT login) and the
//! environment list. Docker calls go through `/api/endpoints/{id}/docker/…`
//! with the same client and credentials (see `docker::DockerClient::shared`).

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Deserializer};
use tokio::time::Instant;

use crate::config::PortainerConfig;
use crate::docker::client::RequestAuth;
use crate::http::{ReadError, error_chain as chain};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Portainer bans an IP for an hour after 10 logins in a second: never more than one a second.
const LOGIN_SPACING: Duration = Duration::from_secs(1);
/// Renew a JWT this long before it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
const MAX_LIST_BODY: usize = 32 << 20;
const PAGE: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum PortainerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot reach Portainer: {0}")]
    Connect(String),
    #[error("Portainer answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer from Portainer: {0}")]
    Decode(String),
    #[error("login refused: {0}")]
    Login(String),
}

fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One environment of `GET /api/endpoints` (PascalCase on the wire; camelCase aliases
/// for what the swagger shows).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Environment {
    #[serde(rename = "Id", alias = "id")]
    pub id: i64,
    #[serde(rename = "Name", alias = "name", deserialize_with = "nullable")]
    pub name: String,
    #[serde(rename = "Type", alias = "type")]
    pub kind: i64,
    #[serde(rename = "Status", alias = "status")]
    pub status: i64,
    #[serde(
        rename = "PublicURL",
        alias = "publicURL",
        deserialize_with = "nullable"
    )]
    pub public_url: String,
    #[serde(rename = "TagIds", alias = "tagIds", deserialize_with = "nullable")]
    pub tag_ids: Vec<i64>,
    #[serde(rename = "Edge", alias = "edge", deserialize_with = "nullable")]
    pub edge: EdgeSettings,
    #[serde(rename = "Heartbeat", alias = "heartbeat")]
    pub heartbeat: bool,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct EdgeSettings {
    #[serde(rename = "AsyncMode", alias = "asyncMode")]
    pub async_mode: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Tag {
    #[serde(rename = "ID", alias = "Id", alias = "id")]
    id: i64,
    #[serde(rename = "Name", alias = "name")]
    name: String,
}

#[derive(Debug)]
enum Credentials {
    ApiKey(HeaderValue),
    Login { username: String, password: String },
}

#[derive(Debug)]
struct Jwt {
    header: HeaderValue,
    /// When to log in again: before `exp`, by 5 min or a quarter of the lifetime.
    renew_at: Option<SystemTime>,
}

/// Credentials for every request to one Portainer: an access token as
/// `X-API-Key`, or a JWT from `POST /api/auth` as `Authorization: Bearer`,
/// renewed before it expires and after a 401, at most one login a second.
#[derive(Debug)]
pub struct PortainerAuth {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
    jwt: tokio::sync::Mutex<Option<Jwt>>,
    last_login: Mutex<Option<Instant>>,
    /// Current JWT header, for `rejected` (which cannot await the async lock).
    current: Mutex<Option<HeaderValue>>,
}

impl PortainerAuth {
    async fn login(&self, username: &str, password: &str) -> Result<Jwt, PortainerError> {
        let wait = {
            let last = self.last_login.lock().unwrap_or_else(|e| e.into_inner());
            last.map(|t| LOGIN_SPACING.saturating_sub(t.elapsed()))
        };
        if let Some(w) = wait.filter(|w| !w.is_zero()) {
            tokio::time::sleep(w).await;
        }
        *self.last_login.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let mut url = self.base.clone();
        extend(&mut url, &["api", "auth"]);
        let resp = self
            .http
            .post(url)
            .timeout(REQUEST_TIMEOUT)
            .json(&serde_json::json!({"Username": username, "Password": password}))
            .send()
            .await
            .map_err(|e| PortainerError::Connect(chain(&e)))?;
        let status = resp.status();
        let body = read_capped(resp, 64 << 10).await?;
        if !status.is_success() {
            let msg = error_message(&body);
            return Err(PortainerError::Login(match status.as_u16() {
                422 => format!("invalid credentials ({msg})"),
                403 => format!("access denied, possibly a login ban ({msg})"),
                s => format!("{s}: {msg}"),
            }));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| PortainerError::Decode(e.to_string()))?;
        let token = v
            .get("jwt")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| PortainerError::Decode("login answer without `jwt`".into()))?;
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| PortainerError::Decode("jwt is not a valid header value".into()))?;
        header.set_sensitive(true);
        tracing::info!(url = %self.base, "logged in to Portainer");
        Ok(Jwt {
            header,
            renew_at: renew_at(token, SystemTime::now()),
        })
    }

    async fn current_header(&self) -> Result<(HeaderName, HeaderValue), String> {
        match &self.credentials {
            Credentials::ApiKey(v) => Ok((HeaderName::from_static("x-api-key"), v.clone())),
            Credentials::Login { username, password } => {
                let mut jwt = self.jwt.lock().await;
                let fresh = jwt
                    .as_ref()
                    .is_some_and(|j| j.renew_at.is_none_or(|r| r > SystemTime::now()));
                if !fresh {
                    let new = self
                        .login(username, password)
                        .await
                        .map_err(|e| e.to_string())?;
                    *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(new.header.clone());
                    *jwt = Some(new);
                }
                let h = jwt
                    .as_ref()
                    .map(|j| j.header.clone())
                    .ok_or_else(|| "no token".to_string())?;
                Ok((reqwest::header::AUTHORIZATION, h))
            }
        }
    }

    fn drop_token(&self, value: &HeaderValue) {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref() == Some(value) {
            *cur = None;
            if let Ok(mut jwt) = self.jwt.try_lock() {
                *jwt = None;
            }
        }
    }
}

impl RequestAuth for PortainerAuth {
    fn header(&self) -> BoxFuture<'_, Result<(HeaderName, HeaderValue), String>> {
        Box::pin(self.current_header())
    }
    fn rejected(&self, value: &HeaderValue) {
        if matches!(self.credentials, Credentials::Login { .. }) {
            tracing::info!(url = %self.base, "Portainer rejected the token: logging in again");
            self.drop_token(value);
        }
    }
}

/// `exp` and `iat` from a JWT's payload (not verified: only to know when to renew).
fn jwt_times(token: &str) -> Option<(SystemTime, Option<SystemTime>)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let at = |k: &str| {
        v.get(k)?
            .as_u64()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    };
    Some((at("exp")?, at("iat")))
}

fn renew_at(token: &str, now: SystemTime) -> Option<SystemTime> {
    let (exp, iat) = jwt_times(token)?;
    let lifetime = exp.duration_since(iat.unwrap_or(now)).unwrap_or_default();
    Some(exp - RENEW_BEFORE.min(lifetime / 4))
}

fn extend(url: &mut Url, segs: &[&str]) {
    if let Ok(mut p) = url.path_segments_mut() {
        p.pop_if_empty().extend(segs);
    }
}

/// Portainer's `{"message","details"}`, or the start of whatever else came (an HTML
/// error page from a reverse proxy, say).
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(m) = v.get("message").and_then(|m| m.as_str())
    {
        return m.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let t: String = text.chars().take(120).collect();
    if t.trim_start().starts_with('<') {
        "an HTML page (a reverse proxy error?)".into()
    } else {
        t.trim().to_string()
    }
}

/// One Portainer instance: its HTTP client (shared by all its environments) and credentials.
#[derive(Debug)]
pub struct PortainerClient {
    pub http: reqwest::Client,
    pub base: Url,
    pub auth: std::sync::Arc<PortainerAuth>,
}

impl PortainerClient {
    pub fn new(cfg: &PortainerConfig) -> Result<Self, PortainerError> {
        let mut b = crate::http::client_builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| PortainerError::Config(format!("ca_file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| PortainerError::Config(format!("ca_file {}: {e}", ca.display())))?;
            b = b.tls_certs_merge(certs);
        }
        if cfg.tls_insecure {
            tracing::warn!(url = %cfg.url, "TLS verification is OFF for this Portainer");
            b = b.tls_danger_accept_invalid_certs(true);
        }
        if cfg.url.starts_with("http://") {
            b = b.tls_certs_only([]);
        }
        let http = b.build().map_err(|e| PortainerError::Config(chain(&e)))?;
        let base = Url::parse(&cfg.url).map_err(|e| PortainerError::Config(e.to_string()))?;
        let credentials = match (&cfg.api_key, &cfg.username, &cfg.password) {
            (Some(k), _, _) => {
                let mut v = HeaderValue::from_str(k.trim()).map_err(|_| {
                    PortainerError::Config("api_key is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                Credentials::ApiKey(v)
            }
            (None, Some(u), Some(p)) => Credentials::Login {
                username: u.clone(),
                password: p.clone(),
            },
            _ => return Err(PortainerError::Config("no credentials".into())),
        };
        let auth = std::sync::Arc::new(PortainerAuth {
            http: http.clone(),
            base: base.clone(),
            credentials,
            jwt: tokio::sync::Mutex::new(None),
            last_login: Mutex::new(None),
            current: Mutex::new(None),
        });
        Ok(Self { http, base, auth })
    }

    /// `…/api/endpoints/{id}/docker/` for the Docker proxy.
    pub fn docker_base(&self, env_id: i64) -> String {
        let mut url = self.base.clone();
        extend(
            &mut url,
            &["api", "endpoints", &env_id.to_string(), "docker", ""],
        );
        url.to_string()
    }

    async fn get(
        &self,
        segs: &[&str],
        query: &[(&str, String)],
    ) -> Result<(Vec<u8>, Option<usize>), PortainerError> {
        self.request(reqwest::Method::GET, segs, query, None, REQUEST_TIMEOUT)
            .await
    }

    /// Portainer's own recreate (CE ≥ 2.19): pulls the image, recreates the
    /// container with its configuration and Portainer's resource controls,
    /// starts it. Returns the new container's id.
    pub async fn recreate(
        &self,
        env_id: i64,
        container_id: &str,
        timeout: Duration,
    ) -> Result<String, PortainerError> {
        let body = serde_json::json!({"PullImage": true});
        let (answer, _) = self
            .request(
                reqwest::Method::POST,
                &[
                    "api",
                    "docker",
                    &env_id.to_string(),
                    "containers",
                    container_id,
                    "recreate",
                ],
                &[],
                Some(&body),
                timeout,
            )
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&answer)
            .map_err(|e| PortainerError::Decode(format!("recreate answer: {e}")))?;
        v.get("Id")
            .and_then(|i| i.as_str())
            .filter(|i| !i.is_empty())
            .map(String::from)
            .ok_or_else(|| PortainerError::Decode("recreate answer has no Id".into()))
    }

    async fn request(
        &self,
        method: reqwest::Method,
        segs: &[&str],
        query: &[(&str, String)],
        json: Option<&serde_json::Value>,
        timeout: Duration,
    ) -> Result<(Vec<u8>, Option<usize>), PortainerError> {
        let mut url = self.base.clone();
        extend(&mut url, segs);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        for attempt in 0..2 {
            let (name, value) = self
                .auth
                .current_header()
                .await
                .map_err(PortainerError::Login)?;
            let mut req = self
                .http
                .request(method.clone(), url.clone())
                .header(name, value.clone())
                .timeout(timeout);
            if let Some(b) = json {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| PortainerError::Connect(chain(&e)))?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                self.auth.rejected(&value);
                continue;
            }
            let total = resp
                .headers()
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = read_capped(resp, MAX_LIST_BODY).await?;
            if !status.is_success() {
                return Err(PortainerError::Status {
                    status: status.as_u16(),
                    message: error_message(&body),
                });
            }
            return Ok((body, total));
        }
        Err(PortainerError::Login("credentials rejected twice".into()))
    }

    /// Every environment, all pages. Malformed entries are skipped and logged.
    pub async fn environments(&self) -> Result<Vec<Environment>, PortainerError> {
        let mut out = Vec::new();
        let mut start = 1usize; // Portainer's `start` is 1-based
        for _ in 0..1000 {
            let (body, total) = self
                .get(
                    &["api", "endpoints"],
                    &[
                        ("start", start.to_string()),
                        ("limit", PAGE.to_string()),
                        ("excludeSnapshots", "true".into()),
                    ],
                )
                .await?;
            let page: Vec<serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|e| PortainerError::Decode(format!("environment list: {e}")))?;
            let n = page.len();
            for v in page {
                match serde_json::from_value::<Environment>(v) {
                    Ok(e) if e.id > 0 => out.push(e),
                    Ok(_) => {
                        tracing::warn!(url = %self.base, "skipping an environment without an Id")
                    }
                    Err(e) => {
                        tracing::warn!(url = %self.base, error = %e, "skipping a malformed environment")
                    }
                }
            }
            start += n;
            let done = match total {
                Some(t) => start > t,
                None => n < PAGE,
            };
            if n == 0 || done {
                break;
            }
        }
        Ok(out)
    }

    /// The compose stacks of one environment (`GET /api/stacks` filtered by
    /// `EndpointID`; `null` and `204` mean none). Malformed entries are skipped.
    pub async fn stacks(
        &self,
        env_id: i64,
    ) -> Result<Vec<crate::stacks::PortainerStack>, PortainerError> {
        let filter = serde_json::json!({ "EndpointID": env_id }).to_string();
        let (body, _) = self.get(&["api", "stacks"], &[("filters", filter)]).await?;
        if body.is_empty() {
            return Ok(Vec::new());
        }
        let list: Option<Vec<serde_json::Value>> = serde_json::from_slice(&body)
            .map_err(|e| PortainerError::Decode(format!("stack list: {e}")))?;
        let mut out = Vec::new();
        for v in list.unwrap_or_default() {
            match serde_json::from_value::<StackWire>(v) {
                // Only this environment's compose stacks (Type 2).
                Ok(s) if s.id > 0 && s.kind == 2 && s.endpoint_id == env_id => {
                    out.push(crate::stacks::PortainerStack {
                        id: s.id,
                        name: s.name,
                        active: s.status == 1,
                        git: s.git_config.is_some_and(|g| !g.is_null()),
                    })
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(url = %self.base, error = %e, "skipping a malformed stack")
                }
            }
        }
        Ok(out)
    }

    /// `POST /api/stacks/{id}/start|stop?endpointId=` (`word`: start or stop).
    pub async fn stack_action(
        &self,
        stack_id: i64,
        env_id: i64,
        word: &str,
        timeout: Duration,
    ) -> Result<(), PortainerError> {
        self.request(
            reqwest::Method::POST,
            &["api", "stacks", &stack_id.to_string(), word],
            &[("endpointId", env_id.to_string())],
            None,
            timeout,
        )
        .await
        .map(|_| ())
    }

    /// Redeploy with pull, as Portainer's "Update the stack" with "Re-pull
    /// image": the same compose file (or the git reference) and variables.
    pub async fn stack_redeploy(
        &self,
        stack_id: i64,
        env_id: i64,
        git: bool,
        timeout: Duration,
    ) -> Result<(), PortainerError> {
        let id = stack_id.to_string();
        let q = [("endpointId", env_id.to_string())];
        let (body, _) = self.get(&["api", "stacks", &id], &q).await?;
        let stack: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| PortainerError::Decode(format!("stack: {e}")))?;
        let env = stack
            .get("Env")
            .cloned()
            .filter(|e| e.is_array())
            .unwrap_or(serde_json::json!([]));
        let prune = stack
            .pointer("/Option/Prune")
            .and_then(|p| p.as_bool())
            .unwrap_or(false);
        let (segs, payload): (Vec<&str>, serde_json::Value) = if git {
            (
                vec!["api", "stacks", &id, "git", "redeploy"],
                serde_json::json!({"env": env, "prune": prune, "pullImage": true}),
            )
        } else {
            let (file, _) = self.get(&["api", "stacks", &id, "file"], &q).await?;
            let file: StackFile = serde_json::from_slice(&file)
                .map_err(|e| PortainerError::Decode(format!("stack file: {e}")))?;
            (
                vec!["api", "stacks", &id],
                serde_json::json!({"stackFileContent": file.content, "env": env,
                                   "prune": prune, "pullImage": true}),
            )
        };
        self.request(reqwest::Method::PUT, &segs, &q, Some(&payload), timeout)
            .await
            .map(|_| ())
    }

    /// Tag id → name, for `tag:` selectors.
    pub async fn tags(&self) -> Result<Vec<(i64, String)>, PortainerError> {
        let (body, _) = self.get(&["api", "tags"], &[]).await?;
        let tags: Vec<Tag> = serde_json::from_slice(&body)
            .map_err(|e| PortainerError::Decode(format!("tag list: {e}")))?;
        Ok(tags.into_iter().map(|t| (t.id, t.name)).collect())
    }
}

async fn read_capped(resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, PortainerError> {
    crate::http::read_capped(resp, cap)
        .await
        .map_err(|e| match e {
            ReadError::Network(e) => PortainerError::Connect(chain(&e)),
            ReadError::TooLarge(cap) => {
                PortainerError::Decode(format!("answer larger than {cap} bytes"))
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_in_wire_and_swagger_casing() {
        let wire = r#"{"Id":2,"Name":"nas-agent","Type":2,"URL":"tcp://x:9001","PublicURL":"192.168.1.20",
            "TagIds":[3],"Status":1,"Snapshots":[],"Edge":{"AsyncMode":false},"Agent":{"Version":"2.23.0"},
            "Heartbeat":false,"AuthorizedUsers":null,"Tags":null}"#;
        let e: Environment = serde_json::from_str(wire).expect("wire");
        assert_eq!((e.id, e.kind, e.status), (2, 2, 1));
        assert_eq!(e.public_url, "192.168.1.20");
        assert_eq!(e.tag_ids, vec![3]);
        let swagger = r#"{"id":5,"name":"edge","type":4,"edge":{"asyncMode":true},"tagIds":null,"publicURL":null}"#;
        let e: Environment = serde_json::from_str(swagger).expect("swagger");
        assert!(e.edge.async_mode);
        assert!(e.tag_ids.is_empty() && e.public_url.is_empty());
    }

    #[test]
    fn jwt_expiry_is_read_without_verifying() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"id":1,"username":"admin","exp":1767225600}"#);
        let token = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.sig");
        let exp = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(jwt_times(&token), Some((exp, None)));
        assert_eq!(jwt_times("garbage"), None);
        assert_eq!(jwt_times("a.!!!.c"), None);
        // 8 h token: renewed 5 min before it expires.
        let p =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"iat":1000,"exp":29800}"#);
        let t = format!("h.{p}.s");
        assert_eq!(
            renew_at(&t, UNIX_EPOCH),
            Some(UNIX_EPOCH + Duration::from_secs(29500))
        );
        // 20 s token: renewed a quarter of its life before expiry, not at once.
        let p =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"iat":1000,"exp":1020}"#);
        let t = format!("h.{p}.s");
        assert_eq!(
            renew_at(&t, UNIX_EPOCH),
            Some(UNIX_EPOCH + Duration::from_secs(1015))
        );
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"message":"Invalid JWT token","details":"Unauthorized"}"#),
            "Invalid JWT token"
        );
        assert!(error_message(b"<html><body>502 Bad Gateway</body></html>").contains("HTML"));
        assert_eq!(
            error_message(b"Forbidden - CSRF token invalid\n"),
            "Forbidden - CSRF token invalid"
        );
    }

    #[test]
    fn docker_base_keeps_the_prefix() {
        let cfg = PortainerConfig {
            url: "https://p.example:9443/portainer".into(),
            api_key: Some("ptr_x".into()),
            ..Default::default()
        };
        let c = PortainerClient::new(&cfg).expect("client");
        assert_eq!(
            c.docker_base(7),
            "https://p.example:9443/portainer/api/endpoints/7/docker/"
        );
    }
}

/// A stack as `GET /api/stacks` sends it, as far as it is read.
#[derive(Debug, serde::Deserialize)]
struct StackWire {
    #[serde(rename = "Id")]
    id: i64,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Type", default)]
    kind: i64,
    #[serde(rename = "EndpointId", default)]
    endpoint_id: i64,
    #[serde(rename = "Status", default)]
    status: i64,
    #[serde(rename = "GitConfig", default)]
    git_config: Option<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize)]
struct StackFile {
    #[serde(rename = "StackFileContent")]
    content: String,
}
