//! The panel's HTML (SPEC §18), rendered on the server from the [`Model`]:
//! pure functions, everything from Docker escaped.

use std::fmt::Write as _;

use serde_json::Value;

use super::HealthView;
use super::model::{ContainerView, EndpointView, Model};

/// HTML-escapes text from anywhere (container names, errors, labels).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A `control` user's buttons: the words they may send, and the session's
/// CSRF token every form carries.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    pub csrf: String,
    pub words: Vec<String>,
}

/// The page around the content: who is signed in (name, role, CSRF token
/// for the sign-out form) and a message from the last command.
#[derive(Debug, Clone, Default)]
pub struct Chrome {
    pub user: Option<(String, &'static str, String)>,
    pub flash: Option<String>,
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or("")
}

/// The whole page: a shell around [`fragment`], which the page's script
/// replaces when dockside publishes something new.
pub fn page(title: &str, body: &str, version: u64, live: &str, chrome: &Chrome) -> String {
    let user = match &chrome.user {
        Some((name, role, csrf)) => format!(
            "<form class=\"who\" method=\"post\" action=\"/logout\">{} ({}) <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button>Sign out</button></form>",
            esc(name),
            role,
            esc(csrf)
        ),
        None => String::new(),
    };
    let flash = chrome
        .flash
        .as_deref()
        .map(|f| format!("<p class=\"banner\" id=\"flash\">{}</p>", esc(f)))
        .unwrap_or_default();
    format!(
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>{title}</title><link rel=\"icon\" href=\"/favicon.svg\"><link rel=\"stylesheet\" href=\"/panel.css\"></head><body>",
            "<header><h1>dockside</h1><nav><a href=\"/\">Panel</a> <a href=\"/health\">Health</a></nav>",
            "{filter}{user}",
            "</header>{flash}<p id=\"stale\" class=\"banner bad\" hidden>dockside is not answering: what follows may be out of date.</p>",
            "<main id=\"panel\" data-version=\"{version}\" data-live=\"{live}\">{body}</main>",
            "<script src=\"/panel.js\"></script></body></html>"
        ),
        title = esc(title),
        // Only the panel has names to filter.
        filter = if live == "/panel/fragment" {
            "<input id=\"filter\" type=\"search\" placeholder=\"Filter by name\" aria-label=\"Filter by name\" autocomplete=\"off\">"
        } else {
            ""
        },
        user = user,
        flash = flash,
        body = body,
        version = version,
        live = esc(live)
    )
}

/// Every endpoint with its stacks and containers.
pub fn fragment(m: &Model, broker_connected: bool, controls: Option<&Controls>) -> String {
    let mut out = String::new();
    if !broker_connected {
        out.push_str("<p class=\"banner bad\">The MQTT broker is not connected: this is the last known state; Home Assistant sees nothing new.</p>");
    }
    if m.endpoints.is_empty() {
        out.push_str("<p class=\"empty\">No endpoint has reported yet.</p>");
    }
    for (id, ep) in &m.endpoints {
        endpoint(&mut out, id, ep, controls);
    }
    out
}

fn endpoint(out: &mut String, id: &str, ep: &EndpointView, controls: Option<&Controls>) {
    let info = ep.info.clone().unwrap_or(Value::Null);
    let name = Some(str_of(&info, "name"))
        .filter(|n| !n.is_empty())
        .unwrap_or(id);
    let online = ep.status.as_deref() == Some("online");
    let _ = write!(
        out,
        "<section class=\"endpoint\" data-endpoint=\"{}\"><h2>{} <span class=\"pill {}\">{}</span></h2>",
        esc(id),
        esc(name),
        if online { "ok" } else { "bad" },
        if online { "online" } else { "offline" }
    );
    if let Some(e) = info["error"].as_str() {
        let _ = write!(out, "<p class=\"banner bad\">{}</p>", esc(e));
    }
    let c = &info["containers"];
    let _ = write!(
        out,
        "<p class=\"counts\">{} running · {} stopped · {} unhealthy · {} problems",
        c["running"].as_i64().unwrap_or(0),
        c["stopped"].as_i64().unwrap_or(0),
        c["unhealthy"].as_i64().unwrap_or(0),
        c["problems"].as_i64().unwrap_or(0),
    );
    if let Some(n) = info["updates_available"].as_i64() {
        let _ = write!(out, " · {n} updates available");
    }
    out.push_str("</p>");
    if !ep.stacks.is_empty() {
        out.push_str("<ul class=\"stacks\">");
        for (name, s) in &ep.stacks {
            let _ = write!(
                out,
                "<li class=\"stack\" data-name=\"{}\"><b>{}</b> <span class=\"state s-{}\">{}</span> {}/{}</li>",
                esc(name),
                esc(name),
                esc(str_of(s, "state")),
                esc(str_of(s, "state")),
                s["running"].as_i64().unwrap_or(0),
                s["total"].as_i64().unwrap_or(0),
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("<ul class=\"containers\">");
    for (name, ct) in &ep.containers {
        container(out, name, ct);
        if let Some(c) = controls {
            buttons(out, id, name, ct, c);
        }
        out.push_str("</li>");
    }
    out.push_str("</ul></section>");
}

fn container(out: &mut String, name: &str, ct: &ContainerView) {
    let s = &ct.state;
    let state = str_of(s, "state");
    let health = str_of(s, "health");
    let _ = write!(
        out,
        "<li class=\"ct\" data-name=\"{n}\" data-state=\"{st}\"><span class=\"name\">{n}</span> <span class=\"state s-{st}\">{st}</span>",
        n = esc(name),
        st = esc(state)
    );
    if !health.is_empty() && health != "none" {
        let _ = write!(
            out,
            " <span class=\"health h-{h}\">{h}</span>",
            h = esc(health)
        );
    }
    if s["problem"] == true {
        let _ = write!(
            out,
            " <span class=\"problem\">problem: {}</span>",
            esc(str_of(s, "problem_reason"))
        );
    }
    let _ = write!(
        out,
        " <span class=\"image\">{}</span>",
        esc(str_of(s, "image"))
    );
    if let Some(u) = &ct.update {
        update(out, u);
    }
    if let Some(st) = &ct.stats {
        stats(out, st);
    }
}

/// The words that make sense for the container's state, of those allowed;
/// the command policy decides again when one is pressed.
fn buttons(out: &mut String, ep: &str, name: &str, ct: &ContainerView, c: &Controls) {
    let running = ct.state["running"] == true || ct.state["state"] == "running";
    let update = ct
        .update
        .as_ref()
        .is_some_and(|u| u["update_available"] == true);
    let fits = |w: &str| match w {
        "start" => !running,
        "stop" | "restart" => running,
        "update" => update,
        _ => false,
    };
    let words: Vec<&String> = c.words.iter().filter(|w| fits(w)).collect();
    if words.is_empty() {
        return;
    }
    out.push_str(" <span class=\"buttons\">");
    for w in words {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/command\"><input type=\"hidden\" name=\"endpoint\" value=\"{}\"><input type=\"hidden\" name=\"container\" value=\"{}\"><input type=\"hidden\" name=\"action\" value=\"{w}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button data-action=\"{w}\">{w}</button></form>",
            esc(ep),
            esc(name),
            esc(&c.csrf),
            w = esc(w)
        );
    }
    out.push_str("</span>");
}

/// The sign-in page (`error`: why the last attempt failed).
pub fn login(error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"banner bad\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        concat!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<title>dockside: sign in</title><link rel=\"icon\" href=\"/favicon.svg\"><link rel=\"stylesheet\" href=\"/panel.css\"></head><body>",
            "<header><h1>dockside</h1></header><main>{error}<form class=\"login\" method=\"post\" action=\"/login\">",
            "<label>User <input name=\"username\" autocomplete=\"username\" required></label>",
            "<label>Password <input name=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>",
            "<button>Sign in</button></form></main></body></html>"
        ),
        error = error
    )
}

fn update(out: &mut String, u: &Value) {
    let status = str_of(u, "status");
    let installed = str_of(u, "installed_version");
    let latest = str_of(u, "latest_version");
    let _ = write!(out, " <span class=\"update u-{st}\">", st = esc(status));
    match status {
        "update_available" => {
            let _ = write!(out, "update {} → ", esc(installed));
            match u["release_url"]
                .as_str()
                .filter(|l| l.starts_with("https://") || l.starts_with("http://"))
            {
                Some(link) => {
                    let _ = write!(
                        out,
                        "<a href=\"{}\" rel=\"noopener noreferrer\" target=\"_blank\">{}</a>",
                        esc(link),
                        esc(latest)
                    );
                }
                None => out.push_str(&esc(latest)),
            }
        }
        "" => {}
        other => {
            let _ = write!(out, "{} {}", esc(&other.replace('_', " ")), esc(installed));
        }
    }
    if u["in_progress"] == true {
        let _ = write!(out, " (updating {}%)", u["progress"].as_u64().unwrap_or(0));
    }
    for key in ["blocked", "error", "compose_image", "auto_waits"] {
        if let Some(t) = u[key].as_str() {
            let _ = write!(out, " <em>{}: {}</em>", key.replace('_', " "), esc(t));
        }
    }
    out.push_str("</span>");
}

fn stats(out: &mut String, s: &Value) {
    let mut parts = Vec::new();
    if let Some(c) = s["cpu_percent"].as_f64() {
        parts.push(format!("CPU {c:.1}%"));
    }
    if let Some(m) = s["memory_bytes"].as_f64() {
        parts.push(format!("mem {:.0} MB", m / 1e6));
    }
    if !parts.is_empty() {
        let _ = write!(out, " <span class=\"stats\">{}</span>", parts.join(" · "));
    }
}

/// The health page's body.
pub fn health(h: &HealthView) -> String {
    let yes_no = |b: bool| {
        if b {
            "<span class=\"pill ok\">yes</span>"
        } else {
            "<span class=\"pill bad\">no</span>"
        }
    };
    let mut out = String::from("<section class=\"health-page\"><h2>Broker</h2><table>");
    let _ = write!(
        out,
        "<tr><th>Connected</th><td>{}</td></tr><tr><th>Reconnects</th><td>{}</td></tr><tr><th>Outbox depth</th><td>{}</td></tr><tr><th>Task restarts</th><td>{}</td></tr><tr><th>Overall</th><td>{}</td></tr></table>",
        yes_no(h.broker_connected),
        h.broker_reconnects,
        h.outbox_depth,
        h.task_restarts,
        esc(&h.overall)
    );
    out.push_str("<h2>Endpoints</h2><table><tr><th>Endpoint</th><th>Connected</th><th>API</th><th>Last event</th><th>Last error</th></tr>");
    for e in &h.endpoints {
        let _ = write!(
            out,
            "<tr data-endpoint=\"{id}\"><td>{id}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            yes_no(e.connected),
            esc(e.api_version.as_deref().unwrap_or("—")),
            esc(e.last_event.as_deref().unwrap_or("—")),
            esc(e.last_error.as_deref().unwrap_or("—")),
            id = esc(&e.id),
        );
    }
    out.push_str("</table><h2>Image updates</h2><table>");
    let _ = write!(
        out,
        "<tr><th>Last round</th><td>{}</td></tr><tr><th>References failing</th><td>{}</td></tr></table></section>",
        esc(h.last_update_round.as_deref().unwrap_or("none yet")),
        h.update_errors
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panel::model::build;

    #[test]
    fn everything_from_docker_is_escaped_and_links_are_http_only() {
        let view: Vec<(String, bytes::Bytes)> = [
            ("d/local/status", "online".to_string()),
            ("d/local/<b>x/state", r#"{"state":"running","health":"healthy","image":"<script>alert(1)</script>"}"#.to_string()),
            ("d/local/<b>x/update", r#"{"status":"update_available","installed_version":"1","latest_version":"2","release_url":"javascript:alert(1)"}"#.to_string()),
            ("d/local/app/state", r#"{"state":"exited","problem":true,"problem_reason":"exited with 1"}"#.to_string()),
            ("d/local/app/update", r#"{"status":"update_available","update_available":true,"installed_version":"1.0","latest_version":"1.1","release_url":"https://github.com/a/b/releases/tag/1.1"}"#.to_string()),
        ]
        .iter()
        .map(|(t, p)| (t.to_string(), bytes::Bytes::from(p.clone())))
        .collect();
        let html = fragment(&build("d", &view), false, None);
        assert!(
            !html.contains("<script>") && !html.contains("<b>x"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;"));
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://github.com/a/b/releases/tag/1.1\""));
        assert!(html.contains("problem: exited with 1"));
        assert!(html.contains("The MQTT broker is not connected"));
        let page = page("dockside", &html, 7, "/panel/fragment", &Chrome::default());
        assert!(page.contains("data-version=\"7\""));
        assert!(!html.contains("<form"), "no buttons without controls");
        let c = Controls {
            csrf: "tok\"en".into(),
            words: vec!["restart".into(), "start".into(), "update".into()],
        };
        let html = fragment(&build("d", &view), true, Some(&c));
        // <b>x runs, app has exited with an update: restart and start, update.
        assert!(html.contains("value=\"restart\""), "{html}");
        assert!(html.contains("value=\"tok&quot;en\""), "{html}");
        assert!(html.contains("value=\"&lt;b&gt;x\""), "{html}");
        assert_eq!(html.matches("data-action=\"update\"").count(), 1, "{html}");
        assert_eq!(html.matches("data-action=\"start\"").count(), 1, "{html}");
    }
}
