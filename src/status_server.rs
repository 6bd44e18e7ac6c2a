//! `[http] listen` (SPEC §12, §18): `GET /healthz` (200 `ok`, or 503 with
//! why), `GET /metrics` (Prometheus/OpenMetrics text), and the panel
//! (`panel`: `/`, `/health`). All read what the rest of dockside already
//! recorded, so they answer at once whatever the engines or the broker are
//! doing.

use std::net::SocketAddr;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::metrics;

#[derive(Debug, thiserror::Error)]
#[error("http.listen {addr}: {err}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub err: std::io::Error,
}

/// Binds now (a port in use is a clear error before anything starts) and
/// serves until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    shutdown: CancellationToken,
    panel: crate::panel::PanelHandle,
    auth: Option<std::sync::Arc<crate::panel::auth::Auth>>,
) -> Result<(), BindError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| BindError { addr, err })?;
    tracing::info!(listen = %addr, "serving the panel (/, /health), /healthz and /metrics");
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .merge(crate::panel::routes(panel, auth))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .layer(axum::middleware::map_response(
            |r: axum::response::Response| async move { crate::panel::secure(r) },
        ));
    tokio::spawn(async move {
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "the /metrics server stopped");
        }
    });
    Ok(())
}

async fn healthz() -> impl IntoResponse {
    let h = metrics::get().health();
    let status = if h.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", h.line()))
}

/// OpenMetrics to scrapers that ask for it (Prometheus does), the classic
/// text format (what `promtool check metrics` and older tools read) otherwise.
async fn metrics_text(headers: axum::http::HeaderMap) -> impl IntoResponse {
    let open = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let text = metrics::get().encode();
    if open {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            classic(&text),
        )
    }
}

/// OpenMetrics text → Prometheus 0.0.4 text: a counter family `x` is named by
/// its sample `x_total` there, and there is no `# EOF`.
fn classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    let mut help: Option<&str> = None;
    for line in open.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" && !name.ends_with("_total") {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let open = "# HELP dockside_a Things.\n# TYPE dockside_a counter\ndockside_a_total{x=\"1\"} 2\n# HELP dockside_b Level.\n# TYPE dockside_b gauge\ndockside_b 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP dockside_a_total Things.\n# TYPE dockside_a_total counter\ndockside_a_total{x=\"1\"} 2\n# HELP dockside_b Level.\n# TYPE dockside_b gauge\ndockside_b 1\n"
        );
    }
}
