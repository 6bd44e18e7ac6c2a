//! tracing set-up: human or JSON lines on stderr, level from `log.level`
//! (`RUST_LOG`, when set, wins). Colour only on a terminal (never in a pipe,
//! a file or the journal, and never with `NO_COLOR`); under systemd, when
//! stderr is the journal's stream (`JOURNAL_STREAM`), each line starts with
//! its syslog priority (`<3>` error … `<7>` debug) so `journalctl -p warning`
//! filters, and the journal's own timestamps are used (SPEC §16).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
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

/// Where stderr goes, as far as the format cares. Pure: decided from facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Terminal,
    Journal,
    Plain,
}

/// `JOURNAL_STREAM` is `<device>:<inode>` of the stream systemd connected;
/// it names stderr only if stderr still is that stream (not redirected).
pub fn sink(
    is_terminal: bool,
    journal_stream: Option<&str>,
    stderr_id: Option<(u64, u64)>,
) -> Sink {
    let journal = journal_stream
        .and_then(|v| v.split_once(':'))
        .and_then(|(d, i)| Some((d.trim().parse::<u64>().ok()?, i.trim().parse::<u64>().ok()?)));
    match (journal, stderr_id) {
        (Some(j), Some(s)) if j == s => Sink::Journal,
        _ if is_terminal => Sink::Terminal,
        _ => Sink::Plain,
    }
}

/// The syslog priority journald reads from a `<N>` line prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes each event with its priority, then formats it as `inner` does.
struct Prioritised<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritised<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

fn stderr_sink() -> Sink {
    let id = std::fs::metadata("/proc/self/fd/2")
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let colour_ok = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    sink(
        std::io::stderr().is_terminal() && colour_ok,
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        id,
    )
}

pub fn init(cfg: &LogConfig) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(with_quiet_broker(&v)).ok())
        .or_else(|| EnvFilter::try_new(with_quiet_broker(&cfg.level)).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let sink = stderr_sink();
    let fmt = || {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(sink == Sink::Terminal)
    };
    let result = match (cfg.format, sink) {
        (LogFormat::Json, Sink::Journal) => registry
            .with(fmt().event_format(Prioritised(tracing_subscriber::fmt::format().json())))
            .try_init(),
        (LogFormat::Json, _) => registry.with(fmt().json()).try_init(),
        (LogFormat::Text, Sink::Journal) => registry
            .with(
                fmt().event_format(Prioritised(
                    tracing_subscriber::fmt::format()
                        .without_time()
                        .with_ansi(false),
                )),
            )
            .try_init(),
        (LogFormat::Text, _) => registry.with(fmt()).try_init(),
    };
    if let Err(e) = result {
        eprintln!("dockside: logging already initialised: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_and_priorities_only_to_the_journal() {
        assert_eq!(sink(true, None, Some((1, 2))), Sink::Terminal);
        assert_eq!(sink(false, None, Some((1, 2))), Sink::Plain);
        assert_eq!(sink(false, Some("1:2"), Some((1, 2))), Sink::Journal);
        // Inherited by a child whose stderr was redirected: not the journal.
        assert_eq!(sink(false, Some("1:2"), Some((1, 3))), Sink::Plain);
        assert_eq!(sink(true, Some("garbage"), Some((1, 2))), Sink::Terminal);
        assert_eq!(sink(false, Some("1:2"), None), Sink::Plain);
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
