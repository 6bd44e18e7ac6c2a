//! The inspect queue: single-flight per container, at most
//! `INSPECT_CONCURRENCY` at a time, retried when the engine is slow, tagged
//! with the event generation they were asked at (see `transitions`), and
//! drained at shutdown.

use super::*;

/// Inspects run at most this many at a time per endpoint.
pub(super) const INSPECT_CONCURRENCY: usize = 8;
/// A failed inspect is asked again this many times.
const INSPECT_RETRIES: u8 = 3;
/// How long a stopping endpoint waits for inspects already asked.
const INSPECT_DRAIN: Duration = Duration::from_millis(300);

/// The queue's bookkeeping and its tasks; the endpoint decides what an
/// answer means.
#[derive(Default)]
pub(super) struct InspectQueue {
    inflight: HashSet<String>,
    /// Inspects asked so far, and the number of each one in flight: a
    /// command's verdict waits for an inspect asked after the engine answered.
    serial: u64,
    inflight_serial: HashMap<String, u64>,
    /// Asked again while in flight: asked once more when it lands.
    again: HashSet<String>,
    queued: VecDeque<String>,
    tasks: JoinSet<InspectResult>,
    /// id → failed inspects in a row.
    failures: HashMap<String, u8>,
}

impl InspectQueue {
    /// Whether `id` may be inspected now; if not, it is asked again once its
    /// running inspect lands, or queued behind the full set.
    fn admit(&mut self, id: &str) -> bool {
        if self.inflight.contains(id) {
            self.again.insert(id.to_string());
            return false;
        }
        if self.tasks.len() >= INSPECT_CONCURRENCY {
            if !self.queued.iter().any(|q| q == id) {
                self.queued.push_back(id.to_string());
            }
            return false;
        }
        self.inflight.insert(id.to_string());
        self.serial += 1;
        self.inflight_serial.insert(id.to_string(), self.serial);
        true
    }

    /// The number of the last inspect asked.
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// An answer landed: the number it was asked under.
    fn landed(&mut self, id: &str) -> u64 {
        self.inflight.remove(id);
        self.inflight_serial.remove(id).unwrap_or(0)
    }

    /// A failed inspect: true when it is asked again (a slow engine), false
    /// once it failed `INSPECT_RETRIES` times in a row.
    fn failed(&mut self, id: &str) -> bool {
        let tries = self.failures.entry(id.to_string()).or_insert(0);
        *tries += 1;
        if *tries <= INSPECT_RETRIES {
            self.again.insert(id.to_string());
            true
        } else {
            self.failures.remove(id);
            false
        }
    }

    pub fn forget_failures(&mut self, id: &str) {
        self.failures.remove(id);
    }

    fn take_again(&mut self, id: &str) -> bool {
        self.again.remove(id)
    }

    /// The next queued id, when a slot is free.
    fn next_queued(&mut self) -> Option<String> {
        if self.tasks.len() >= INSPECT_CONCURRENCY {
            return None;
        }
        self.queued.pop_front()
    }

    pub fn running(&self) -> bool {
        !self.tasks.is_empty()
    }

    /// The next answer (pending forever when none runs: check
    /// [`running`](Self::running) first).
    pub async fn answer(&mut self) -> Option<Result<InspectResult, tokio::task::JoinError>> {
        self.tasks.join_next().await
    }

    /// The inspects in flight, for the loop to collect their answers.
    pub fn tasks(&mut self) -> &mut JoinSet<InspectResult> {
        &mut self.tasks
    }
}

impl Endpoint {
    pub(super) fn schedule_inspect(&mut self, id: String) {
        if !self.inspects.admit(&id) {
            return;
        }
        let client = self.client.clone();
        let asked = self.table.overlays.generation(&id);
        self.inspects.tasks.spawn(async move {
            let r = client.inspect(&id).await;
            (id, asked, r)
        });
    }

    pub(super) fn on_inspect(
        &mut self,
        id: String,
        asked: u64,
        r: Result<Option<ContainerInspect>, DockerError>,
    ) {
        let serial = self.inspects.landed(&id);
        let r_failed = r.is_err();
        match r {
            Ok(Some(ins)) => {
                if !self.table.destroyed.contains(&id) {
                    let confirmed = self.confirm_command(&id, serial);
                    self.apply_inspect(&id, asked, Some(&ins));
                    if let Some(name) = confirmed {
                        self.state_reached(&name);
                    }
                }
            }
            Ok(None) => self.apply_inspect(&id, asked, None),
            Err(e) => {
                // A slow engine (a mass stop's clean-up) is asked again, a few times.
                if self.inspects.failed(&id) {
                    tracing::debug!(endpoint = %self.id, container = %id, error = %e, "inspect failed; asking again");
                } else {
                    tracing::warn!(endpoint = %self.id, container = %id, error = %e, "inspect failed");
                }
            }
        }
        if !r_failed {
            self.inspects.forget_failures(&id);
        }
        if self.inspects.take_again(&id) {
            self.schedule_inspect(id);
        }
        while let Some(next) = self.inspects.next_queued() {
            self.schedule_inspect(next);
        }
    }

    /// An inspect answer (`None`: the container is gone), asked at event
    /// generation `asked`.
    pub(super) fn apply_inspect(&mut self, id: &str, asked: u64, ins: Option<&ContainerInspect>) {
        let filter = &self.settings.filter;
        let effects = self
            .table
            .apply_inspect(&self.id, id, asked, ins, |n, l| filter.allows(n, l));
        self.carry_out(effects);
    }

    /// At shutdown: the answers already on their way are applied (part of
    /// the stop budget), so the last state before a host shutdown is right.
    pub(super) async fn drain_inspects(&mut self) {
        self.inspects.queued.clear();
        self.inspects.again.clear();
        let deadline = Instant::now() + INSPECT_DRAIN;
        while self.inspects.running() {
            match tokio::time::timeout_at(deadline, self.inspects.answer()).await {
                Ok(Some(Ok((id, asked, r)))) => self.on_inspect(id, asked, r),
                Ok(Some(Err(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
        self.inspects.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn single_flight_bounded_and_retried_a_few_times() {
        let mut q = InspectQueue::default();
        assert!(q.admit("a"));
        assert_eq!(q.serial(), 1);
        assert!(!q.admit("a"), "in flight: asked again when it lands");
        assert_eq!(q.landed("a"), 1);
        assert!(q.take_again("a"));
        assert!(!q.take_again("a"));
        for _ in 0..INSPECT_RETRIES {
            assert!(q.failed("b"));
        }
        assert!(!q.failed("b"), "given up after the retries");
        // Full: queued once, handed out when a slot frees.
        for i in 0..INSPECT_CONCURRENCY {
            let id = format!("c{i}");
            assert!(q.admit(&id));
            q.tasks.spawn(async move { (id, 0, Ok(None)) });
        }
        assert!(!q.admit("late"));
        assert!(!q.admit("late"));
        assert_eq!(q.queued.len(), 1);
        assert_eq!(q.next_queued(), None, "no free slot");
        while q.answer().await.is_some() {}
        assert_eq!(q.next_queued().as_deref(), Some("late"));
    }
}
