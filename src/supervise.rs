//! Long-lived tasks that cannot die silently: each runs inside a watcher
//! that restarts it with backoff when it ends on its own or panics (logged at
//! error with the cause, counted), calls `on_down` first so nothing is left
//! showing `online` while it is away, and aborts it when the watcher itself is
//! stopped or aborted (a task that overruns its stop grace never lingers).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use crate::backoff::Backoff;

/// Unexpected ends and panics of supervised tasks since start.
pub static TASK_RESTARTS: AtomicU64 = AtomicU64::new(0);

/// A task restarted (or the router survived a panic): counted here and in
/// `/metrics`, the one place both move.
pub fn count_restart() {
    TASK_RESTARTS.fetch_add(1, Ordering::Relaxed);
    crate::metrics::get().task_restarts.inc();
}

/// What the owner keeps of a supervised task.
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// The task is running (not waiting for its restart).
    pub alive: Arc<AtomicBool>,
    /// Wakes a task waiting for its restart (a SIGHUP retries at once).
    pub retry_now: Arc<Notify>,
}

impl Liveness {
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }
}

/// Runs `make()` until `token` is cancelled. `make` builds one incarnation
/// (it may fail: a set-up error is retried the same way as a crash).
pub fn spawn<F, Fut>(
    name: String,
    token: CancellationToken,
    liveness: Liveness,
    on_down: impl Fn() + Send + 'static,
    mut make: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Result<Fut, String> + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            backoff.mark_started();
            let why = match make() {
                Ok(fut) => {
                    // Cleared however this ends, an abort of the watcher included.
                    let _alive = AliveWhile::new(&liveness.alive);
                    let task = AbortOnDropHandle::new(tokio::spawn(fut));
                    let r = task.await;
                    drop(_alive);
                    if token.is_cancelled() {
                        return;
                    }
                    match r {
                        Ok(()) => "it ended on its own".to_string(),
                        Err(e) if e.is_panic() => format!("it panicked: {}", panic_text(e)),
                        Err(e) => format!("it was cancelled: {e}"),
                    }
                }
                Err(e) => {
                    liveness.alive.store(false, Ordering::Release);
                    format!("cannot set it up: {e}")
                }
            };
            count_restart();
            on_down();
            let delay = backoff.next_delay();
            tracing::error!(task = %name, reason = %why, retry_in = ?delay, "task stopped unexpectedly; restarting it");
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
                _ = liveness.retry_now.notified() => {}
            }
        }
    })
}

struct AliveWhile(Arc<AtomicBool>);

impl AliveWhile {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        flag.store(true, Ordering::Release);
        Self(flag.clone())
    }
}

impl Drop for AliveWhile {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

fn panic_text(e: tokio::task::JoinError) -> String {
    let p = e.into_panic();
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Stops a supervised task: cancel, wait up to `grace`, then abort it.
pub async fn stop(name: &str, token: &CancellationToken, join: JoinHandle<()>, grace: Duration) {
    token.cancel();
    let mut join = join;
    if tokio::time::timeout(grace, &mut join).await.is_err() {
        tracing::warn!(task = %name, "did not stop in time: aborted");
        join.abort();
        // Returns once the task is dropped (its own task aborted with it).
        let _ = join.await;
    }
}

/// Supervision tests make an endpoint task panic on an event of the
/// container named in `DOCKSIDE_TEST_PANIC_ON`, once per process (the
/// replayed event must not crash the restarted task again). Debug builds
/// only: a release build has no such check on its event path.
#[cfg(debug_assertions)]
pub fn maybe_test_panic(container: Option<&str>) {
    static NAME: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    static FIRED: AtomicBool = AtomicBool::new(false);
    let name = NAME.get_or_init(|| std::env::var("DOCKSIDE_TEST_PANIC_ON").ok());
    if let (Some(p), Some(n)) = (name, container)
        && p == n
        && !FIRED.swap(true, Ordering::SeqCst)
    {
        panic!("test-only panic on an event of `{n}` (DOCKSIDE_TEST_PANIC_ON)");
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn maybe_test_panic(_container: Option<&str>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_a_stopped_one_is_not() {
        let runs = Arc::new(AtomicU64::new(0));
        let downs = Arc::new(AtomicU64::new(0));
        let token = CancellationToken::new();
        let live = Liveness::default();
        let (r, d) = (runs.clone(), downs.clone());
        let join = spawn(
            "t".into(),
            token.clone(),
            live.clone(),
            move || {
                d.fetch_add(1, Ordering::SeqCst);
            },
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                Ok(async move {
                    if n == 0 {
                        panic!("boom");
                    }
                    std::future::pending::<()>().await
                })
            },
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while runs.load(Ordering::SeqCst) < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(downs.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(live.is_alive());
        stop("t", &token, join, Duration::from_secs(1)).await;
        assert!(!live.is_alive());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn set_up_failures_retry_and_retry_now_skips_the_wait() {
        let tries = Arc::new(AtomicU64::new(0));
        let token = CancellationToken::new();
        let live = Liveness::default();
        let t = tries.clone();
        let join = spawn(
            "s".into(),
            token.clone(),
            live.clone(),
            || {},
            move || {
                t.fetch_add(1, Ordering::SeqCst);
                Err::<std::future::Pending<()>, _>("no cert".to_string())
            },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = tries.load(Ordering::SeqCst);
        live.retry_now.notify_one();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(tries.load(Ordering::SeqCst) > before);
        // An overrunning task is aborted at the end of its grace.
        let token2 = CancellationToken::new();
        let stuck = tokio::spawn(async { std::future::pending::<()>().await });
        let t0 = std::time::Instant::now();
        stop("stuck", &token2, stuck, Duration::from_millis(50)).await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        token.cancel();
        let _ = join.await;
    }
}
