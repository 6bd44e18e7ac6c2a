//! The panel (SPEC §18) on `[http] listen`: `GET /` shows every endpoint,
//! its stacks and containers as dockside publishes them, live (the page
//! asks every second whether anything changed: `204` when not); `GET
//! /health` what an operator wants when Home Assistant shows nothing. Both
//! read the outbox's copy of the published topics and the metrics, never
//! the engines: a slow browser costs a render, never the event path.
//! Read-only: there are no buttons.

mod assets;
pub mod model;
pub mod render;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::mqtt::Outbox;

/// The outbox of the running instance (replaced when a reload restarts
/// everything in-process); empty until the first one starts.
#[derive(Debug, Clone, Default)]
pub struct PanelHandle(Arc<RwLock<Option<Arc<Outbox>>>>);

impl PanelHandle {
    pub fn set(&self, outbox: Arc<Outbox>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(outbox);
    }
    fn outbox(&self) -> Option<Arc<Outbox>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
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
pub fn routes(panel: PanelHandle) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/panel/fragment", get(panel_fragment))
        .route("/health", get(health_page))
        .route("/health/fragment", get(health_fragment))
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
        .with_state(panel)
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

async fn index(State(panel): State<PanelHandle>) -> Response {
    let (v, m) = snapshot(&panel);
    let body = render::fragment(&m, broker_connected());
    html(render::page("dockside", &body, v, "/panel/fragment"))
}

#[derive(serde::Deserialize)]
struct Since {
    v: Option<String>,
}

/// The changing part, or `204` when nothing was published since `v` (and
/// the broker's connection did not change either).
async fn panel_fragment(State(panel): State<PanelHandle>, Query(q): Query<Since>) -> Response {
    let connected = broker_connected();
    let now = panel.outbox().map_or(0, |o| o.view_version());
    let tag = format!("{now}{}", if connected { "" } else { "d" });
    if q.v.as_deref() == Some(tag.as_str()) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let (v, m) = snapshot(&panel);
    let tag = format!("{v}{}", if connected { "" } else { "d" });
    let mut r = html(render::fragment(&m, connected));
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

async fn health_page(State(panel): State<PanelHandle>, Query(f): Query<Format>) -> Response {
    let h = health_view(&panel);
    if f.format.as_deref() == Some("json") {
        return axum::Json(h).into_response();
    }
    html(render::page(
        "dockside health",
        &render::health(&h),
        0,
        "/health/fragment",
    ))
}

/// The health page is small: sent whole every time.
async fn health_fragment(State(panel): State<PanelHandle>) -> Response {
    let mut r = html(render::health(&health_view(&panel)));
    r.headers_mut()
        .insert("x-panel-version", HeaderValue::from_static("0"));
    r
}
