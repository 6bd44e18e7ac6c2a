//! OS signals in one place: SIGTERM/SIGINT → shutdown, SIGHUP → reload.

use futures_util::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_tokio::Signals;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Registers the handlers now (so a signal during start-up is not fatal) and
/// returns a task that cancels `shutdown` on TERM/INT and sends `()` on HUP.
pub fn install(
    shutdown: CancellationToken,
) -> std::io::Result<(mpsc::Receiver<()>, tokio::task::JoinHandle<()>)> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    let (tx, rx) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                sig = signals.next() => match sig {
                    Some(SIGHUP) => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        // A reload already waiting covers this one too.
                        let _ = tx.try_send(());
                    }
                    Some(SIGTERM) => { tracing::info!("SIGTERM: shutting down"); shutdown.cancel(); }
                    Some(SIGINT) => { tracing::info!("SIGINT: shutting down"); shutdown.cancel(); }
                    Some(_) => {}
                    None => return,
                },
                // The handlers stay registered after this: a second SIGTERM
                // while stopping does not kill the process half-way.
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Ok((rx, task))
}
