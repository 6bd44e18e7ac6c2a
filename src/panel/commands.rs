//! Sign-in, sign-out and the buttons (SPEC §18). A button is a form post
//! with the session's CSRF token; it becomes the same `set` message an MQTT
//! client would publish, routed through the same router (retained guard,
//! parse, policy, de-duplication, rate limit), and its one result is shown
//! on the next page.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{PanelState, auth, html, render};
use crate::config::EmbeddedRole;

/// The words the panel has buttons for.
pub const BUTTONS: &[&str] = &["start", "stop", "restart", "update"];
/// How long a button waits for its result before the page comes back
/// (the result still arrives on MQTT; an update can take minutes).
const RESULT_WAIT: Duration = Duration::from_secs(20);

pub async fn login_page(State(st): State<PanelState>) -> Response {
    if st.auth.is_none() {
        return Redirect::to("/").into_response();
    }
    html(render::login(None))
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

/// Checks the password after the address's penalty; a failure waits one
/// more second and counts, so guessing gets slower and slower.
pub async fn login(
    State(st): State<PanelState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(f): Form<LoginForm>,
) -> Response {
    let Some(a) = &st.auth else {
        return Redirect::to("/").into_response();
    };
    tokio::time::sleep(a.delay(peer.ip())).await;
    match a.check(&f.username, &f.password) {
        Some(role) => {
            let id = a.sign_in(peer.ip(), &f.username, role);
            tracing::info!(user = %f.username, %peer, "panel: signed in");
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = auth::set_cookie(Some(&id)).parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        None => {
            a.failed(peer.ip());
            tokio::time::sleep(Duration::from_secs(1)).await;
            let shown: String = f.username.chars().take(64).collect();
            tracing::warn!(user = %shown, %peer, "panel: sign-in refused");
            let mut r = html(render::login(Some("Wrong user name or password.")));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: String,
}

pub async fn logout(
    State(st): State<PanelState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    let Some(a) = &st.auth else {
        return Redirect::to("/").into_response();
    };
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    match a.session(cookie) {
        Some((id, s)) if auth::same(&s.csrf, &f.csrf) => {
            a.sign_out(&id);
            let mut r = Redirect::to("/login").into_response();
            if let Ok(v) = auth::set_cookie(None).parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        _ => forbidden("sign-out refused: no session or a stale page"),
    }
}

#[derive(Deserialize)]
pub struct CommandForm {
    endpoint: String,
    container: String,
    action: String,
    /// Missing is refused like wrong.
    #[serde(default)]
    csrf: String,
}

fn forbidden(why: &str) -> Response {
    (StatusCode::FORBIDDEN, format!("{why}\n")).into_response()
}

/// A button: a signed-in `control` user, the session's CSRF token, a word
/// the panel has buttons for; then the router decides as for MQTT.
pub async fn command(
    State(st): State<PanelState>,
    headers: HeaderMap,
    Form(f): Form<CommandForm>,
) -> Response {
    let Some(a) = &st.auth else {
        return forbidden(
            "the panel is read-only: configure [[http.users]] with role = \"control\"",
        );
    };
    let cookie = headers.get(header::COOKIE).and_then(|v| v.to_str().ok());
    let Some((id, s)) = a.session(cookie) else {
        return forbidden("sign in first");
    };
    if !auth::same(&s.csrf, &f.csrf) {
        tracing::warn!(user = %s.user, "panel: a command without a valid CSRF token; refused");
        return forbidden("refused: the form's token is missing or stale (reload the page)");
    }
    if s.role != EmbeddedRole::Control {
        return forbidden("refused: this user may only look (role = \"read\")");
    }
    if !BUTTONS.contains(&f.action.as_str())
        || f.endpoint.contains(['/', '+', '#'])
        || f.container.contains(['/', '+', '#'])
    {
        return (StatusCode::BAD_REQUEST, "no such button\n").into_response();
    }
    let text = run(&st, &f, &s.user).await;
    a.set_flash(&id, text);
    Redirect::to("/").into_response()
}

/// Sends the command into the router and waits (bounded) for its result.
async fn run(st: &PanelState, f: &CommandForm, user: &str) -> String {
    let Some(live) = st.handle.live() else {
        return format!("{}: dockside is starting; try again", f.action);
    };
    let topics = live.outbox.topics();
    let set = topics.container_set(&f.endpoint, &f.container);
    let result_topic = topics.container_result(&f.endpoint, &f.container);
    let rid = format!("panel-{}", &auth::token()[..16]);
    let payload = serde_json::json!({"action": f.action, "request_id": rid}).to_string();
    let mut results = live.outbox.subscribe_results();
    tracing::info!(%user, endpoint = %f.endpoint, container = %f.container, action = %f.action, "panel: command");
    let msg = crate::mqtt::Inbound {
        topic: set,
        payload: payload.into(),
        retain: false,
    };
    if live.commands.try_send(msg).is_err() {
        return format!(
            "{}: busy, too many commands are waiting; try again",
            f.action
        );
    }
    let wait = async {
        loop {
            match results.recv().await {
                Ok((t, p)) if t == result_topic => {
                    let v: serde_json::Value = serde_json::from_slice(&p).unwrap_or_default();
                    if v["request_id"] == rid.as_str() {
                        return v;
                    }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return serde_json::Value::Null,
            }
        }
    };
    match tokio::time::timeout(RESULT_WAIT, wait).await {
        Ok(v) if v["ok"] == true => format!(
            "{} {}: ok{}",
            f.action,
            f.container,
            v["state"]
                .as_str()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        Ok(v) if v.is_object() => format!(
            "{} {}: {} — {}",
            f.action,
            f.container,
            v["code"].as_str().unwrap_or("failed"),
            v["error"].as_str().unwrap_or("")
        ),
        _ => format!(
            "{} {}: sent; its result will show on the container's result topic",
            f.action, f.container
        ),
    }
}
