//! A Portainer-compatible server for tests (not a mock of dockside's calls: a
//! stand-in for Portainer, after `reference/portainer.md`): API-key and JWT auth
//! (expiry, invalidated by a restart, both headers refused, 10 logins/s ban),
//! `GET /api/endpoints` paged and in wire casing, `/api/endpoints/{id}/docker/…`
//! forwarded to the real engine with streaming, and a switch that holds back
//! event streams the way Portainer's socket proxy does (no flush under 4 KiB).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use crate::common::stand_in::{Conn, Request, serve_tcp};

pub const API_KEY: &str = "ptr_testkey0123";
pub const USER: &str = "admin";
pub const PASSWORD: &str = "s3cret-pw";

#[derive(Debug, Clone)]
pub struct Env {
    pub id: i64,
    pub name: String,
    pub kind: i64,
    pub status: i64,
    pub async_edge: bool,
    /// The proxy answers 502 (agent unreachable).
    pub down: bool,
    /// The proxy answers 403.
    pub forbidden: bool,
}

impl Env {
    pub fn new(id: i64, name: &str, kind: i64) -> Self {
        Self {
            id,
            name: name.into(),
            kind,
            status: 1,
            async_edge: false,
            down: false,
            forbidden: false,
        }
    }
}

#[derive(Default)]
struct State {
    envs: Vec<Env>,
    epoch: u64,
    tokens: HashMap<String, (u64, Instant)>,
    jwt_lifetime: Duration,
    logins: VecDeque<Instant>,
    login_count: usize,
    banned: bool,
    buffer_events: bool,
    html_env_list: bool,
    /// Container ids Portainer's recreate was called for.
    recreates: Vec<String>,
    stacks: Vec<Stack>,
    /// "start 11 env 1", "redeploy 11 pull=true", … in call order.
    stack_calls: Vec<String>,
}

/// A compose stack as Portainer holds it: start/stop/redeploy act on its
/// containers in the real engine (Portainer runs `docker compose` there).
#[derive(Debug, Clone)]
pub struct Stack {
    pub id: i64,
    pub name: String,
    pub env: i64,
    pub active: bool,
    pub containers: Vec<String>,
    pub file: String,
    /// `start` fails the way a broken compose file does.
    pub fail_start: bool,
}

fn stack_json(k: &Stack) -> serde_json::Value {
    serde_json::json!({"Id": k.id, "Name": k.name, "Type": 2, "EndpointId": k.env, "SwarmId": "",
        "EntryPoint": "docker-compose.yml", "Env": [{"name": "TZ", "value": "Europe/Paris"}],
        "Status": if k.active { 1 } else { 2 }, "ProjectPath": format!("/data/compose/{}", k.id),
        "GitConfig": null, "AutoUpdate": null, "Option": null, "Namespace": ""})
}

#[derive(Clone)]
pub struct FakePortainer {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FakePortainer {
    pub async fn start(envs: Vec<Env>) -> Self {
        let state = Arc::new(Mutex::new(State {
            envs,
            jwt_lifetime: Duration::from_secs(8 * 3600),
            ..Default::default()
        }));
        let st = state.clone();
        let port = serve_tcp(move |c, _| handle(c, st.clone())).await;
        Self { port, state }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().expect("lock"))
    }
    pub fn add(&self, e: Env) {
        self.with(|s| s.envs.push(e));
    }
    pub fn remove(&self, id: i64) {
        self.with(|s| s.envs.retain(|e| e.id != id));
    }
    pub fn rename(&self, id: i64, name: &str) {
        self.with(|s| {
            s.envs
                .iter_mut()
                .filter(|e| e.id == id)
                .for_each(|e| e.name = name.into())
        });
    }
    pub fn set_down(&self, id: i64, down: bool) {
        self.with(|s| {
            s.envs
                .iter_mut()
                .filter(|e| e.id == id)
                .for_each(|e| e.down = down)
        });
    }
    pub fn add_stack(&self, k: Stack) {
        self.with(|s| s.stacks.push(k));
    }
    pub fn set_stack_fail_start(&self, id: i64, fail: bool) {
        self.with(|s| {
            for k in s.stacks.iter_mut().filter(|k| k.id == id) {
                k.fail_start = fail;
            }
        });
    }
    pub fn stack_calls(&self) -> Vec<String> {
        self.with(|s| s.stack_calls.clone())
    }
    pub fn recreates(&self) -> Vec<String> {
        self.with(|s| s.recreates.clone())
    }
    /// Every JWT becomes invalid, as when Portainer restarts.
    pub fn restart(&self) {
        self.with(|s| {
            s.epoch += 1;
            s.tokens.clear();
        });
    }
    pub fn set_jwt_lifetime(&self, d: Duration) {
        self.with(|s| s.jwt_lifetime = d);
    }
    pub fn set_buffering(&self, on: bool) {
        self.with(|s| s.buffer_events = on);
    }
    pub fn set_html_env_list(&self, on: bool) {
        self.with(|s| s.html_env_list = on);
    }
    pub fn logins(&self) -> usize {
        self.with(|s| s.login_count)
    }
    pub fn banned(&self) -> bool {
        self.with(|s| s.banned)
    }
}

async fn respond(
    s: &mut Conn<TcpStream>,
    status: &str,
    extra: &str,
    body: &str,
) -> std::io::Result<()> {
    let extra = format!("Content-Type: application/json\r\nConnection: close\r\n{extra}");
    s.reply(status, &extra, body.as_bytes()).await
}

fn err(message: &str, details: &str) -> String {
    serde_json::json!({"message": message, "details": details}).to_string()
}

fn b64url(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..(c.len() + 1) {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn env_json(e: &Env) -> serde_json::Value {
    serde_json::json!({
        "Id": e.id, "Name": e.name, "Type": e.kind, "ContainerEngine": "docker",
        "URL": "unix:///var/run/docker.sock", "GroupId": 1, "PublicURL": format!("{}.example", e.name.to_lowercase().replace(' ', "-")),
        "Gpus": [], "TLSConfig": {"TLS": false, "TLSSkipVerify": false}, "TagIds": [], "Status": e.status,
        "Snapshots": [], "UserAccessPolicies": {}, "TeamAccessPolicies": {}, "EdgeKey": "", "EdgeCheckinInterval": 5,
        "SecuritySettings": {"allowBindMountsForRegularUsers": true},
        "LastCheckInDate": 0, "QueryDate": 0, "Heartbeat": e.kind == 4,
        "Edge": {"AsyncMode": e.async_edge, "PingInterval": 0, "SnapshotInterval": 0, "CommandInterval": 0},
        "Agent": {"Version": if e.kind == 1 { "" } else { "2.23.0" }},
        "AuthorizedUsers": null, "AuthorizedTeams": null, "Tags": null
    })
}

fn param(query: &str, key: &str) -> Option<usize> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(&format!("{key}="))?.parse().ok())
}

async fn handle(mut s: Conn<TcpStream>, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some(req) = s.next_request().await? else {
        return Ok(());
    };
    if req.path == "/api/auth" && req.method == "POST" {
        let (status, body) = {
            let mut g = st.lock().expect("lock");
            let now = Instant::now();
            g.logins.push_back(now);
            while g
                .logins
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
            {
                g.logins.pop_front();
            }
            if g.logins.len() > 10 {
                g.banned = true;
            }
            let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if g.banned {
                (
                    "403 Forbidden",
                    err("Access denied", "Access denied to resource"),
                )
            } else if v["Username"] != USER || v["Password"] != PASSWORD {
                (
                    "422 Unprocessable Entity",
                    err("Invalid credentials", "Unauthorized"),
                )
            } else {
                g.login_count += 1;
                let exp = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
                    + g.jwt_lifetime.as_secs();
                let iat = exp - g.jwt_lifetime.as_secs();
                let payload = b64url(
                    format!(r#"{{"id":1,"username":"admin","role":1,"iat":{iat},"exp":{exp}}}"#)
                        .as_bytes(),
                );
                let token = format!("eyJhbGciOiJIUzI1NiJ9.{payload}.{:016x}", fastrand::u64(..));
                let epoch = g.epoch;
                let lifetime = g.jwt_lifetime;
                g.tokens.insert(token.clone(), (epoch, now + lifetime));
                ("200 OK", serde_json::json!({"jwt": token}).to_string())
            }
        };
        return respond(&mut s, status, "", &body).await;
    }
    // Everything else needs exactly one credential.
    let auth_err = {
        let g = st.lock().expect("lock");
        let key = req.header("x-api-key");
        let bearer = req.header("authorization");
        match (key, bearer) {
            (Some(_), Some(_)) => Some((
                "403 Forbidden",
                err(
                    "api key and auth header are not allowed at the same time",
                    "Forbidden",
                ),
            )),
            (Some(k), None) if k == API_KEY => None,
            (Some(_), None) => Some(("401 Unauthorized", err("Invalid JWT token", "Unauthorized"))),
            (None, Some(b)) => {
                let t = b.strip_prefix("Bearer ").unwrap_or("");
                match g.tokens.get(t) {
                    Some((epoch, exp)) if *epoch == g.epoch && *exp > Instant::now() => None,
                    _ => Some(("401 Unauthorized", err("Invalid JWT token", "Unauthorized"))),
                }
            }
            (None, None) => Some((
                "401 Unauthorized",
                err("A valid authorization token is missing", "Unauthorized"),
            )),
        }
    };
    if let Some((status, body)) = auth_err {
        return respond(&mut s, status, "", &body).await;
    }
    if req.path == "/api/endpoints" {
        let (html, page, total) = {
            let g = st.lock().expect("lock");
            let start = param(&req.query, "start").unwrap_or(1).max(1) - 1;
            let limit = param(&req.query, "limit")
                .filter(|l| *l > 0)
                .unwrap_or(usize::MAX);
            let page: Vec<serde_json::Value> = g
                .envs
                .iter()
                .skip(start)
                .take(limit)
                .map(env_json)
                .collect();
            (g.html_env_list, page, g.envs.len())
        };
        if html {
            let body = "<html><body><h1>502 Bad Gateway</h1></body></html>";
            let head = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.raw(head.as_bytes()).await?;
            return s.raw(body.as_bytes()).await;
        }
        let body = serde_json::Value::Array(page).to_string();
        return respond(
            &mut s,
            "200 OK",
            &format!("X-Total-Count: {total}\r\nX-Total-Available: {total}\r\n"),
            &body,
        )
        .await;
    }
    // Portainer's own recreate (CE >= 2.19): pull, stop, rename the old one,
    // create from its Config/HostConfig, start, remove the old one; answers the
    // new container's inspect.
    if let Some(rest) = req.path.strip_prefix("/api/docker/")
        && req.method == "POST"
        && let [env, "containers", id, "recreate"] = rest.split('/').collect::<Vec<_>>()[..]
    {
        let known = {
            let g = st.lock().expect("lock");
            g.envs.iter().any(|e| e.id.to_string() == env)
        };
        if !known {
            return respond(
                &mut s,
                "404 Not Found",
                "",
                &err("Unable to find an environment", ""),
            )
            .await;
        }
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        st.lock().expect("lock").recreates.push(id.to_string());
        return match recreate(id, body["PullImage"] == true).await {
            Ok(v) => respond(&mut s, "200 OK", "", &v.to_string()).await,
            Err(e) => {
                respond(
                    &mut s,
                    "500 Internal Server Error",
                    "",
                    &err("Error recreating container", &e),
                )
                .await
            }
        };
    }
    if let Some(rest) = req.path.strip_prefix("/api/stacks") {
        return stacks(s, &req, rest, st).await;
    }
    if req.path == "/api/tags" {
        return respond(&mut s, "200 OK", "", "[]").await;
    }
    if let Some(rest) = req.path.strip_prefix("/api/endpoints/") {
        let (id, docker_path) = match rest.split_once("/docker") {
            Some((id, p)) => (id.parse::<i64>().unwrap_or(-1), p.to_string()),
            None => (-1, String::new()),
        };
        let (env, buffer) = {
            let g = st.lock().expect("lock");
            (g.envs.iter().find(|e| e.id == id).cloned(), g.buffer_events)
        };
        let Some(env) = env else {
            return respond(&mut s, "404 Not Found", "", &err("Unable to find an environment with the specified identifier inside the database", "Object not found inside the database")).await;
        };
        if !matches!(env.kind, 1 | 2 | 4) {
            return respond(
                &mut s,
                "400 Bad Request",
                "",
                &err("environment is not a docker environment", ""),
            )
            .await;
        }
        if env.forbidden {
            return respond(
                &mut s,
                "403 Forbidden",
                "",
                &err("Permission denied to access environment", "Forbidden"),
            )
            .await;
        }
        if env.down || (env.kind == 4 && env.async_edge) {
            return respond(
                &mut s,
                "502 Bad Gateway",
                "",
                &err(
                    "Unable to proxy the request via the Docker socket",
                    "dial unix: connection refused",
                ),
            )
            .await;
        }
        return forward(s, &req, &docker_path, buffer).await;
    }
    respond(&mut s, "404 Not Found", "", &err("Not found", "")).await
}

/// `/api/stacks…` (reference/portainer.md §8).
async fn stacks(
    mut s: Conn<TcpStream>,
    req: &Request,
    rest: &str,
    st: Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let q = |key: &str| {
        req.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .map(|v| v.to_string())
    };
    if rest.is_empty() && req.method == "GET" {
        let filter = q("filters").map(|f| url_decode(&f));
        let env: Option<i64> = filter
            .and_then(|f| serde_json::from_str::<serde_json::Value>(&f).ok())
            .and_then(|v| v["EndpointID"].as_i64());
        let list: Vec<serde_json::Value> = st
            .lock()
            .expect("lock")
            .stacks
            .iter()
            .filter(|k| env.is_none_or(|e| e == k.env))
            .map(stack_json)
            .collect();
        return respond(
            &mut s,
            "200 OK",
            "",
            &serde_json::Value::Array(list).to_string(),
        )
        .await;
    }
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let Some(id) = parts.first().and_then(|i| i.parse::<i64>().ok()) else {
        return respond(
            &mut s,
            "400 Bad Request",
            "",
            &err("Invalid stack identifier route variable", ""),
        )
        .await;
    };
    let Some(stack) = st
        .lock()
        .expect("lock")
        .stacks
        .iter()
        .find(|k| k.id == id)
        .cloned()
    else {
        return respond(
            &mut s,
            "404 Not Found",
            "",
            &err(
                "Unable to find a stack with the specified identifier inside the database",
                "Object not found inside the database",
            ),
        )
        .await;
    };
    let env_ok = q("endpointId").and_then(|e| e.parse::<i64>().ok()) == Some(stack.env);
    match (req.method.as_str(), &parts[1..]) {
        ("GET", []) => respond(&mut s, "200 OK", "", &stack_json(&stack).to_string()).await,
        ("GET", ["file"]) => {
            let body = serde_json::json!({"StackFileContent": stack.file}).to_string();
            respond(&mut s, "200 OK", "", &body).await
        }
        ("POST", [word @ ("start" | "stop")]) => {
            if !env_ok {
                return respond(
                    &mut s,
                    "400 Bad Request",
                    "",
                    &err("Invalid query parameter: endpointId", ""),
                )
                .await;
            }
            let start = *word == "start";
            if stack.active == start {
                let m = if start {
                    "Stack is already active"
                } else {
                    "Stack is already inactive"
                };
                return respond(&mut s, "400 Bad Request", "", &err(m, "")).await;
            }
            st.lock()
                .expect("lock")
                .stack_calls
                .push(format!("{word} {id} env {}", stack.env));
            if start && stack.fail_start {
                return respond(&mut s, "500 Internal Server Error", "", &err("Unable to start stack", "failed to deploy a stack: service \"db\" has neither an image nor a build context specified")).await;
            }
            for c in &stack.containers {
                if let Err(e) = engine("POST", &format!("/containers/{c}/{word}?t=1"), None).await
                    && !e.contains(" 304 ")
                {
                    return respond(
                        &mut s,
                        "500 Internal Server Error",
                        "",
                        &err("Unable to stop stack", &e),
                    )
                    .await;
                }
            }
            let updated = {
                let mut g = st.lock().expect("lock");
                let k = g.stacks.iter_mut().find(|k| k.id == id).expect("stack");
                k.active = start;
                stack_json(k)
            };
            respond(&mut s, "200 OK", "", &updated.to_string()).await
        }
        ("PUT", []) => {
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if !env_ok || body["stackFileContent"] != stack.file.as_str() {
                return respond(
                    &mut s,
                    "400 Bad Request",
                    "",
                    &err("Invalid request payload", "stackFileContent"),
                )
                .await;
            }
            st.lock().expect("lock").stack_calls.push(format!(
                "redeploy {id} pull={} env={}",
                body["pullImage"], body["env"]
            ));
            for c in &stack.containers {
                let _ = engine("POST", &format!("/containers/{c}/restart?t=1"), None).await;
            }
            respond(&mut s, "200 OK", "", &stack_json(&stack).to_string()).await
        }
        _ => {
            respond(
                &mut s,
                "405 Method Not Allowed",
                "",
                &err("Method not allowed", ""),
            )
            .await
        }
    }
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request to the engine socket; (status, body).
async fn engine(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, Vec<u8>), String> {
    let mut sock = UnixStream::connect("/var/run/docker.sock")
        .await
        .map_err(|e| e.to_string())?;
    let data = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    sock.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    sock.write_all(data.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    sock.read_to_end(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut b = String::new();
        let mut r = rest;
        while let Some((size, tail)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            b.push_str(&tail[..n]);
            r = tail[n..].trim_start_matches("\r\n");
        }
        b
    } else {
        rest.to_string()
    };
    if status >= 400 {
        return Err(format!("{method} {path}: {status} {body}"));
    }
    Ok((status, body.into_bytes()))
}

async fn recreate(id: &str, pull: bool) -> Result<serde_json::Value, String> {
    let (_, b) = engine("GET", &format!("/containers/{id}/json"), None).await?;
    let old: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
    let name = old["Name"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let image = old["Config"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if pull {
        let (repo, tag) = image.rsplit_once(':').unwrap_or((&image, "latest"));
        engine(
            "POST",
            &format!("/images/create?fromImage={repo}&tag={tag}"),
            None,
        )
        .await?;
    }
    engine("POST", &format!("/containers/{id}/stop?t=1"), None).await?;
    engine(
        "POST",
        &format!("/containers/{id}/rename?name={name}-old"),
        None,
    )
    .await?;
    let mut create = old["Config"].clone();
    create["HostConfig"] = old["HostConfig"].clone();
    let (_, b) = engine(
        "POST",
        &format!("/containers/create?name={name}"),
        Some(&create),
    )
    .await?;
    let new: serde_json::Value = serde_json::from_slice(&b).map_err(|e| e.to_string())?;
    let new_id = new["Id"].as_str().unwrap_or_default().to_string();
    engine("POST", &format!("/containers/{new_id}/start"), None).await?;
    engine("DELETE", &format!("/containers/{id}?force=true"), None).await?;
    let (_, b) = engine("GET", &format!("/containers/{new_id}/json"), None).await?;
    serde_json::from_slice(&b).map_err(|e| e.to_string())
}

/// Forwards one request to the engine socket and streams the answer back.
async fn forward(
    mut client: Conn<TcpStream>,
    req: &Request,
    path: &str,
    buffer_events: bool,
) -> std::io::Result<()> {
    let mut engine = UnixStream::connect("/var/run/docker.sock").await?;
    let target = if req.query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", req.query)
    };
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n",
        req.method, target
    );
    for (k, v) in &req.headers() {
        if !matches!(
            k.as_str(),
            "host" | "connection" | "x-api-key" | "authorization"
        ) {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    engine.write_all(head.as_bytes()).await?;
    engine.write_all(&req.body).await?;
    // Portainer's socket proxy copies without flushing: small event lines (and
    // even the headers) wait until 4 KiB pile up or the answer ends.
    let hold_back = buffer_events && path.ends_with("/events") && !req.query.contains("until=");
    let mut pending = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = engine.read(&mut chunk).await?;
        if n == 0 {
            return client.raw(&pending).await;
        }
        if hold_back {
            pending.extend_from_slice(&chunk[..n]);
            if pending.len() >= 4096 {
                client.raw(&pending).await?;
                pending.clear();
            }
        } else {
            client.raw(&chunk[..n]).await?;
        }
    }
}
