//! An endpoint's disk poller (SPEC §13): `GET /system/df` off the endpoint
//! task, hourly after a success, again in 2–3 s when the engine is busy with
//! another client's, and backing off 2 s doubling to 15 min after an error.
//! The last figures stay meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::docker::models::SystemDf;
use crate::docker::{DockerClient, DockerError};
use crate::payloads::DiskUsage;

/// The disk summary is read at most this often.
const DISK_EVERY: Duration = Duration::from_secs(3600);
/// A `system df` slower than this is given up (it walks every layer).
const DISK_TIMEOUT: Duration = Duration::from_secs(120);
/// After a failed `system df` it is asked again after 2 s, doubling up to this.
const DISK_RETRY_MAX: Duration = Duration::from_secs(900);
/// Docker 20.10 refuses a `system df` while another client's runs ("a disk
/// usage operation is already running"): not a failure, a queue. Asked again
/// this soon (plus up to 1 s of jitter, so instances do not stay in step),
/// however often, so the first summary lands in the first minute.
const DISK_BUSY_RETRY: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(super) struct DiskPoller {
    /// The last summary, for `<ep>/info`.
    pub last: Option<DiskUsage>,
    next: Option<Instant>,
    failures: u32,
    task: JoinSet<Result<SystemDf, DockerError>>,
}

impl DiskPoller {
    /// When the next ask falls due; None while one runs or none is planned.
    pub fn due(&self) -> Option<Instant> {
        self.next.filter(|_| self.task.is_empty())
    }

    pub fn running(&self) -> bool {
        !self.task.is_empty()
    }

    /// Asks when due (or `now`, after a prune); never two at once.
    pub fn ask(&mut self, client: &Arc<DockerClient>, now: bool) {
        let due = self.next.is_none_or(|t| Instant::now() >= t);
        if self.running() || !(now || due) {
            return;
        }
        let client = client.clone();
        self.task.spawn(async move {
            match tokio::time::timeout(DISK_TIMEOUT, client.system_df(DISK_TIMEOUT)).await {
                Ok(r) => r,
                Err(_) => Err(DockerError::Timeout),
            }
        });
    }

    /// The running ask's answer (pending forever when none runs: guard the
    /// `select!` arm with [`running`](Self::running)).
    /// The running ask, for the loop to collect its answer.
    pub fn tasks(&mut self) -> &mut JoinSet<Result<SystemDf, DockerError>> {
        &mut self.task
    }

    /// Takes an answer in; true when the figures changed (publish the info).
    pub fn on_answer(&mut self, ep: &str, r: Result<SystemDf, DockerError>) -> bool {
        match r {
            Ok(df) => {
                self.failures = 0;
                self.next = Some(Instant::now() + DISK_EVERY);
                self.last = Some(DiskUsage::of(&df, crate::payloads::now_rfc3339()));
                true
            }
            Err(e) if disk_busy(&e) => {
                let wait = DISK_BUSY_RETRY + Duration::from_millis(fastrand::u64(0..1000));
                self.next = Some(Instant::now() + wait);
                tracing::debug!(endpoint = %ep, error = %e, "disk usage busy; asking again soon");
                false
            }
            Err(e) => {
                let wait = disk_retry_after(self.failures);
                self.failures = self.failures.saturating_add(1);
                self.next = Some(Instant::now() + wait);
                tracing::warn!(endpoint = %ep, error = %e, retry_in_s = wait.as_secs(), "cannot read disk usage");
                false
            }
        }
    }
}

/// The engine is computing a disk summary for another client (Docker 20.10).
fn disk_busy(e: &DockerError) -> bool {
    matches!(e, DockerError::Status { message, .. } if message.contains("disk usage operation is already running"))
}

/// 2 s, 4 s, 8 s, … up to `DISK_RETRY_MAX`.
fn disk_retry_after(failures: u32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1u32 << failures.min(10))
        .min(DISK_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_retries_back_off_to_the_cap() {
        assert_eq!(disk_retry_after(0), Duration::from_secs(2));
        assert_eq!(disk_retry_after(1), Duration::from_secs(4));
        assert_eq!(disk_retry_after(8), Duration::from_secs(512));
        assert_eq!(disk_retry_after(9), DISK_RETRY_MAX);
        assert_eq!(disk_retry_after(u32::MAX), DISK_RETRY_MAX);
    }

    #[test]
    fn busy_is_a_queue_and_an_error_backs_off() {
        let mut d = DiskPoller::default();
        let busy = DockerError::Status {
            status: 500,
            message: "a disk usage operation is already running".into(),
        };
        assert!(!d.on_answer("ep", Err(busy)));
        let soon = d.due().expect("planned");
        assert!(soon <= Instant::now() + DISK_BUSY_RETRY + Duration::from_secs(1));
        assert_eq!(d.failures, 0, "busy is not a failure");
        assert!(!d.on_answer("ep", Err(DockerError::Timeout)));
        assert_eq!(d.failures, 1);
        assert!(d.last.is_none());
    }
}
