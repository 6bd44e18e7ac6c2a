//! The panel (SPEC §18) on `[http] listen`: `GET /` shows every endpoint,
//! its stacks and containers as dockside publishes them, live (the page
//! asks every second whether anything changed: `204` when not); `GET
//! /health` what an operator wants when Home Assistant shows nothing. Both
//! read the outbox's copy of the published topics and the metrics, never
//! the engines: a slow browser costs a render, never the event path.
//! Without `[[http.users]]` it is open and read-only; with them, only
//! signed-in users see it (`auth`), and `control` users get buttons that
//! send the same commands as MQTT, through the same router and policy
//! (`commands`).

mod assets;
pub mod auth;
mod commands;
pub mod model;
pub mod render;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::mqtt::{Inbound, Outbox};

/// What the running instance gives the panel (replaced when a reload
/// restarts everything in-process); empty until the first one starts.
#[derive(Debug, Clone, Default)]
pub struct PanelHandle(Arc<RwLock<Option<Live>>>);

#[derive(Debug, Clone)]
struct Live {
    outbox: Arc<Outbox>,
    /// Into the command router, as if from MQTT.
    commands: mpsc::Sender<Inbound>,
    /// The words `commands.allow` permits (none when commands are off).
    allowed: Vec<String>,
}

impl PanelHandle {
    pub fn set(
        &self,
        outbox: Arc<Outbox>,
        commands: mpsc::Sender<Inbound>,
        cfg: &crate::config::CommandsConfig,
    ) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Live {
            outbox,
            commands,
            allowed: allowed_words(cfg),
        });
    }
    /// A reload changed `[commands]`: the buttons follow.
    pub fn set_commands(&self, cfg: &crate::config::CommandsConfig) {
        if let Some(l) = self.0.write().unwrap_or_else(|e| e.into_inner()).as_mut() {
            l.allowed = allowed_words(cfg);
        }
    }
    fn live(&self) -> Option<Live> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn outbox(&self) -> Option<Arc<Outbox>> {
        self.live().map(|l| l.outbox)
    }
}

fn allowed_words(cfg: &crate::config::CommandsConfig) -> Vec<String> {
    commands::BUTTONS
        .iter()
        .filter(|w| cfg.policy().refusal(w, None).is_none())
        .map(|w| w.to_string())
        .collect()
}

/// The handlers' state: the instance, and the users when there are any.
#[derive(Debug, Clone)]
pub struct PanelState {
    handle: PanelHandle,
    auth: Option<Arc<auth::Auth>>,
}

/// Who asks: nobody (an open panel), or a signed-in user's session.
struct Viewer {
    session: Option<(String, auth::Session)>,
}

impl PanelState {
    /// The viewer, or the answer for one who must sign in first.
    fn viewer(&self, headers: &HeaderMap, page: bool) -> Result<Viewer, Denied> {
        let Some(a) = &self.auth else {
            return Ok(Viewer { session: None });
        };
        let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
        match a.session(cookie) {
            Some(s) => Ok(Viewer { session: Some(s) }),
            None if page => Err(Denied::SignIn),
            None => Err(Denied::Unauthorized),
        }
    }
}

/// No session: a page sends the browser to sign in, a fragment says `401`.
enum Denied {
    SignIn,
    Unauthorized,
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::SignIn => Redirect::to("/login").into_response(),
            Denied::Unauthorized => StatusCode::UNAUTHORIZED.into_response(),
        }
    }
}

impl Viewer {
    /// The buttons this viewer gets: a `control` user's, of the allowed words.
    fn controls(&self, handle: &PanelHandle) -> Option<render::Controls> {
        let (_, s) = self.session.as_ref()?;
        (s.role == crate::config::EmbeddedRole::Control).then(|| render::Controls {
            csrf: s.csrf.clone(),
            words: handle.live().map(|l| l.allowed).unwrap_or_default(),
        })
    }
    fn chrome(&self, auth: Option<&auth::Auth>) -> render::Chrome {
        match &self.session {
            Some((id, s)) => render::Chrome {
                user: Some((s.user.clone(), role_name(s.role), s.csrf.clone())),
                flash: auth.and_then(|a| a.take_flash(id)),
            },
            None => render::Chrome::default(),
        }
    }
}

fn role_name(r: crate::config::EmbeddedRole) -> &'static str {
    match r {
        crate::config::EmbeddedRole::Read => "read",
        crate::config::EmbeddedRole::Control => "control",
    }
}

/// `GET /health` (also `?format=json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthView {
    pub overall: String,
    pub broker_connected: bool,
    pub broker_reconnects: u64,
    pub outbox_depth: i64,
    pub task_restarts: u64,
    pub last_update_round: Option<String>,
    pub update_errors: i64,
    pub endpoints: Vec<EndpointHealth>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EndpointHealth {
    pub id: String,
    pub connected: bool,
    pub api_version: Option<String>,
    pub docker_version: Option<String>,
    pub last_event: Option<String>,
    pub last_error: Option<String>,
}

/// The panel's routes (merged into the status server's).
pub fn routes(handle: PanelHandle, auth: Option<Arc<auth::Auth>>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/panel/fragment", get(panel_fragment))
        .route("/health", get(health_page))
        .route("/health/fragment", get(health_fragment))
        .route("/login", get(commands::login_page).post(commands::login))
        .route("/logout", post(commands::logout))
        .route("/command", post(commands::command))
        // Forms are small: anything larger is refused unread.
        .layer(axum::extract::DefaultBodyLimit::max(4096))
        .route(
            "/panel.css",
            get(|| async { asset("text/css; charset=utf-8", assets::CSS) }),
        )
        .route(
            "/panel.js",
            get(|| async { asset("text/javascript; charset=utf-8", assets::JS) }),
        )
        .route(
            "/favicon.svg",
            get(|| async { asset("image/svg+xml", assets::ICON) }),
        )
        .route(
            "/favicon.ico",
            get(|| async { asset("image/svg+xml", assets::ICON) }),
        )
        .with_state(PanelState { handle, auth })
}

/// Headers every answer carries: nothing inline runs, nothing frames it.
pub fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k: header::HeaderName, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    );
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::REFERRER_POLICY, "no-referrer");
    r
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// What the outbox holds now, as the panel's model, with its version.
fn snapshot(panel: &PanelHandle) -> (u64, model::Model) {
    match panel.outbox() {
        Some(o) => {
            let (v, view) = o.view();
            (v, model::build(o.topics().base(), &view))
        }
        None => (0, model::Model::default()),
    }
}

fn broker_connected() -> bool {
    crate::metrics::get().mqtt_connected.get() == 1
}

async fn index(State(st): State<PanelState>, headers: HeaderMap) -> Response {
    let viewer = match st.viewer(&headers, true) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let (v, m) = snapshot(&st.handle);
    let controls = viewer.controls(&st.handle);
    let body = render::fragment(&m, broker_connected(), controls.as_ref());
    let chrome = viewer.chrome(st.auth.as_deref());
    html(render::page(
        "dockside",
        &body,
        v,
        "/panel/fragment",
        &chrome,
    ))
}

#[derive(serde::Deserialize)]
struct Since {
    v: Option<String>,
}

/// The changing part, or `204` when nothing was published since `v` (and
/// the broker's connection did not change either).
async fn panel_fragment(
    State(st): State<PanelState>,
    headers: HeaderMap,
    Query(q): Query<Since>,
) -> Response {
    let viewer = match st.viewer(&headers, false) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let panel = &st.handle;
    let connected = broker_connected();
    let now = panel.outbox().map_or(0, |o| o.view_version());
    let tag = format!("{now}{}", if connected { "" } else { "d" });
    if q.v.as_deref() == Some(tag.as_str()) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let (v, m) = snapshot(panel);
    let tag = format!("{v}{}", if connected { "" } else { "d" });
    let controls = viewer.controls(panel);
    let mut r = html(render::fragment(&m, connected, controls.as_ref()));
    if let Ok(h) = HeaderValue::from_str(&tag) {
        r.headers_mut().insert("x-panel-version", h);
    }
    r
}

/// The health of every part, from the metrics and what endpoints published.
pub fn health_view(panel: &PanelHandle) -> HealthView {
    use std::sync::atomic::Ordering::Relaxed;
    let m = crate::metrics::get();
    let (_, model) = snapshot(panel);
    let when = |secs: i64| {
        (secs > 0).then(|| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64),
            )
            .to_string()
        })
    };
    let endpoints = model
        .endpoints
        .iter()
        .map(|(id, ep)| {
            let label = crate::metrics::Metrics::endpoint(id);
            let info = ep.info.clone().unwrap_or_default();
            let s = |k: &str| info[k].as_str().map(String::from);
            EndpointHealth {
                id: id.clone(),
                connected: m.endpoint_up.get(&label).is_some_and(|g| g.get() == 1),
                api_version: s("api_version"),
                docker_version: s("docker_version"),
                last_event: m.last_event.get(&label).and_then(|g| when(g.get())),
                last_error: s("error"),
            }
        })
        .collect();
    HealthView {
        overall: m.health().line(),
        broker_connected: m.mqtt_connected.get() == 1,
        broker_reconnects: m.reconnects_total.load(Relaxed),
        outbox_depth: m.outbox_depth.get(),
        task_restarts: m.task_restarts.get(),
        last_update_round: when(m.update_last_round.get()),
        update_errors: m.update_round_errors.get(),
        endpoints,
    }
}

#[derive(serde::Deserialize)]
struct Format {
    format: Option<String>,
}

async fn health_page(
    State(st): State<PanelState>,
    headers: HeaderMap,
    Query(f): Query<Format>,
) -> Response {
    let viewer = match st.viewer(&headers, true) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let h = health_view(&st.handle);
    if f.format.as_deref() == Some("json") {
        return axum::Json(h).into_response();
    }
    let chrome = viewer.chrome(st.auth.as_deref());
    html(render::page(
        "dockside health",
        &render::health(&h),
        0,
        "/health/fragment",
        &chrome,
    ))
}

/// The health page is small: sent whole every time.
async fn health_fragment(State(st): State<PanelState>, headers: HeaderMap) -> Response {
    if let Err(r) = st.viewer(&headers, false) {
        return r.into_response();
    }
    let mut r = html(render::health(&health_view(&st.handle)));
    r.headers_mut()
        .insert("x-panel-version", HeaderValue::from_static("0"));
    r
}
