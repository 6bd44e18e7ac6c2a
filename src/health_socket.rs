//! `dockside health` (SPEC §11): the running instance answers one line on
//! `<state.dir>/health.sock` — `ok`, or why not — and the command prints it
//! and exits 0 or 1. A socket, not a file rewritten every second: no wear on
//! an SD card, and a dead process cannot leave a stale `ok` behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::metrics;

pub const SOCKET: &str = "health.sock";

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Serves the health line until `shutdown`; the socket goes with it.
pub fn serve(state_dir: &Path, shutdown: CancellationToken) -> std::io::Result<()> {
    let p = path(state_dir);
    // A socket left by a killed instance: ours to replace.
    let _ = std::fs::remove_file(&p);
    let listener = tokio::net::UnixListener::bind(&p)?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((mut s, _)) => {
                        let line = format!("{}\n", metrics::get().health().line());
                        tokio::spawn(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(1), s.write_all(line.as_bytes())).await;
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "health socket");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&p);
    });
    Ok(())
}

/// The `dockside health` command: (healthy, the line to print).
pub fn check(state_dir: &Path) -> (bool, String) {
    use std::io::Read;
    let p = path(state_dir);
    let mut s = match std::os::unix::net::UnixStream::connect(&p) {
        Ok(s) => s,
        Err(e) => {
            return (
                false,
                format!("unhealthy: dockside is not running ({}: {e})", p.display()),
            );
        }
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    let mut line = String::new();
    match s.read_to_string(&mut line) {
        Ok(_) if line.trim() == "ok" || line.starts_with("ok; ") => {
            (true, line.trim().chars().take(300).collect())
        }
        Ok(_) if !line.trim().is_empty() => (false, line.trim().chars().take(300).collect()),
        Ok(_) => (false, "unhealthy: no answer from dockside".into()),
        Err(e) => (false, format!("unhealthy: dockside did not answer ({e})")),
    }
}
