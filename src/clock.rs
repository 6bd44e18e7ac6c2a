//! Time helpers shared by every task: the wall clock in Unix seconds (for
//! persisted and published times) and an optional deadline for `select!`.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Seconds since the Unix epoch; 0 if the clock is before it.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Sleeps until `deadline`, or forever when there is none: a `select!` arm
/// that is only armed when something is due.
pub async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_fires_and_none_never_does() {
        let at = Instant::now() + std::time::Duration::from_millis(20);
        sleep_until_opt(Some(at)).await;
        assert!(Instant::now() >= at);
        let never =
            tokio::time::timeout(std::time::Duration::from_millis(50), sleep_until_opt(None)).await;
        assert!(never.is_err());
        assert!(unix_now() > 1_700_000_000);
    }
}
