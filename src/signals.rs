//! OS signals in one place: SIGTERM/SIGINT → shutdown, SIGHUP → reload.

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Registers the handlers now (so a signal during start-up is not fatal) and
/// returns a task that cancels `shutdown` on TERM/INT and sends `()` on HUP.
pub fn install(
    shutdown: CancellationToken,
) -> std::io::Result<(mpsc::Receiver<()>, tokio::task::JoinHandle<()>)> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); shutdown.cancel(); }
                _ = int.recv() => { tracing::info!("SIGINT: shutting down"); shutdown.cancel(); }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    // A reload already waiting covers this one too.
                    let _ = tx.try_send(());
                }
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok((rx, task))
}
