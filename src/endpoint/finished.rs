//! The loop's two collective inputs: background work that finished (every
//! kind, one `select!` arm) and the timers of each concern (one deadline, the
//! earliest). Each concern keeps its own tasks and deadline; this file only
//! gathers them so the loop has a handful of arms.

use std::future::poll_fn;
use std::task::{Context, Poll};

use tokio::task::JoinError;

use super::commands::{ActionResult, OpDone};
use super::stacks::PortainerStacksAnswer;
use super::stats::StatsAnswer;
use super::*;
use crate::command::CommandResult;
use crate::docker::models::SystemDf;

/// A background task that ended, by kind.
pub(super) enum Finished {
    Action(Result<ActionResult, JoinError>),
    Op(Result<OpDone, JoinError>),
    Read(Result<(String, CommandResult), JoinError>),
    Disk(Result<Result<SystemDf, DockerError>, JoinError>),
    Inspect(Result<InspectResult, JoinError>),
    PortainerStacks(Result<PortainerStacksAnswer, JoinError>),
    Stats(Result<StatsAnswer, JoinError>),
}

/// The first ready answer of a task set (`None` when it has none ready; an
/// empty set registers no waker, which is fine: tasks are only started from
/// the loop, which polls again after each arm).
fn ready<T: 'static>(set: &mut JoinSet<T>, cx: &mut Context<'_>) -> Option<Result<T, JoinError>> {
    match set.poll_join_next(cx) {
        Poll::Ready(r) => r,
        Poll::Pending => None,
    }
}

/// Periodic work of the loop itself: the reconcile and the cursor's save.
pub(super) struct Ticks {
    pub reconcile: Instant,
    pub save: Instant,
    period: Duration,
}

impl Ticks {
    pub fn new(period: Duration) -> Self {
        let now = Instant::now();
        Self {
            reconcile: now + period,
            save: now + CURSOR_SAVE_EVERY,
            period,
        }
    }
}

impl Endpoint {
    /// The next finished task, command work first (pending while none ends).
    pub(super) async fn next_finished(&mut self) -> Finished {
        poll_fn(|cx| {
            let found = ready(&mut self.runner.actions, cx)
                .map(Finished::Action)
                .or_else(|| ready(&mut self.runner.ops, cx).map(Finished::Op))
                .or_else(|| ready(&mut self.runner.reads, cx).map(Finished::Read))
                .or_else(|| ready(self.disk.tasks(), cx).map(Finished::Disk))
                .or_else(|| ready(self.inspects.tasks(), cx).map(Finished::Inspect))
                .or_else(|| {
                    ready(&mut self.stacks.portainer_task, cx).map(Finished::PortainerStacks)
                })
                .or_else(|| ready(&mut self.stats.calls, cx).map(Finished::Stats));
            match found {
                Some(f) => Poll::Ready(f),
                None => Poll::Pending,
            }
        })
        .await
    }

    pub(super) fn on_finished(&mut self, f: Finished) {
        let ep = self.id.clone();
        let failed = |what: &str, e: JoinError| {
            tracing::error!(endpoint = %ep, error = %e, "{what} task failed");
        };
        match f {
            Finished::Action(Ok(r)) => self.on_action_done(r),
            Finished::Action(Err(e)) => failed("command", e),
            Finished::Op(Ok(r)) => self.on_op_done(r),
            Finished::Op(Err(e)) => failed("update", e),
            Finished::Read(r) => self.on_read_done(r),
            Finished::Disk(Ok(r)) => self.on_disk(r),
            Finished::Disk(Err(e)) => failed("disk usage", e),
            Finished::Inspect(Ok((id, asked, r))) => self.on_inspect(id, asked, r),
            Finished::Inspect(Err(e)) => failed("inspect", e),
            Finished::PortainerStacks(Ok(r)) => self.on_portainer_stacks(r),
            Finished::PortainerStacks(Err(e)) => failed("Portainer stack list", e),
            Finished::Stats(Ok(a)) => self.on_stats(a),
            Finished::Stats(Err(e)) => failed("stats", e),
        }
    }

    /// The earliest deadline of any concern (the ticks always have one).
    pub(super) fn next_due(&self, ticks: &Ticks) -> Instant {
        [
            self.next_command_deadline(),
            self.next_removal(),
            self.disk.due(),
            self.next_stats_due(),
            self.info_due,
            self.facts_due,
        ]
        .into_iter()
        .flatten()
        .fold(ticks.reconcile.min(ticks.save), Instant::min)
    }

    /// Runs every concern whose deadline passed.
    pub(super) async fn on_due(&mut self, ticks: &mut Ticks) -> Result<(), SessionError> {
        let now = Instant::now();
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.next_command_deadline()) {
            self.expire_commands();
        }
        if due(self.next_removal()) {
            self.run_removals();
        }
        if due(self.disk.due()) {
            self.ask_disk(false);
        }
        if due(self.next_stats_due()) {
            self.run_due_stats();
        }
        if due(self.info_due) {
            self.info_due = None;
            self.publish_info_now();
        }
        if due(self.facts_due) {
            self.facts_due = None;
            self.refresh_facts().await?;
            self.info_changed();
        }
        if ticks.reconcile <= now {
            ticks.reconcile = now + ticks.period;
            self.refresh_facts().await?;
            self.publish_endpoint_device(false);
            self.full_sync().await?;
            self.publish_info_now();
            // The loop waits for it (events queue meanwhile): say how long.
            tracing::debug!(endpoint = %self.id, containers = self.table.containers.len(), elapsed_ms = now.elapsed().as_millis() as u64, "reconcile done");
        }
        if ticks.save <= now {
            ticks.save = now + CURSOR_SAVE_EVERY;
            self.save_cursor_soon();
            self.recheck_problems();
            // Update statuses change without a container event.
            self.publish_stacks(false);
        }
        Ok(())
    }
}
