//! tracing set-up: human or JSON lines on stderr, level from `log.level`
//! (`RUST_LOG`, when set, wins).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// The embedded broker (rumqttd) logs every connection at `info` and every
/// ordinary disconnect at `error`: silent unless the filter names it
/// (`log.level = "info,rumqttd=info"`). dockside logs the broker's own
/// failures (port in use, not listening) itself.
fn with_quiet_broker(filter: &str) -> String {
    if filter.contains("rumqttd") {
        filter.to_string()
    } else {
        format!("{filter},rumqttd=off")
    }
}

pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(with_quiet_broker(&v)).ok())
        .or_else(|| EnvFilter::try_new(with_quiet_broker(&cfg.level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match cfg.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("dockside: logging already initialised: {e}");
    }
}
