//! The words and automatic updates of SPEC §17 on one endpoint: `skip` /
//! `unskip` (decisions kept by the image watcher's inventory), `remove`,
//! and the automatic updates the watcher finds due, run one at a time as
//! normal `update` operations.

use super::*;
use crate::command::Policy;
use ops::Trigger;

impl Endpoint {
    /// `skip` / `unskip`: the update the status offers now is skipped (or
    /// offered again); the status follows at once.
    pub(in crate::endpoint) fn skip_word(
        &mut self,
        name: &str,
        req: Request,
        received: std::time::Instant,
    ) {
        let Some(inv) = &self.settings.inventory else {
            let r = CommandResult::refused(
                &req,
                Code::Invalid,
                "update checks are off (updates.enabled = false)",
                received,
            );
            return self.send_result(name, r);
        };
        let done = if req.action == "skip" {
            inv.skip(&self.id, name)
        } else {
            inv.unskip(&self.id, name)
        };
        let r = match done {
            Ok(version) => {
                tracing::info!(endpoint = %self.id, container = %name, action = %req.action, %version, "update decision");
                let mut r = CommandResult::ok(&req, None, received);
                r.to_version = Some(version);
                r
            }
            Err(why) => CommandResult::refused(&req, Code::Invalid, why, received),
        };
        self.send_result(name, r);
    }

    /// `remove` (opt-in, SPEC §17): a stopped container, a running one only
    /// with `force`; the policy already refused protected ones. Its topics
    /// are cleared when the engine's `destroy` event arrives.
    pub(in crate::endpoint) fn launch_remove(
        &mut self,
        name: String,
        req: Request,
        received: std::time::Instant,
    ) {
        let Some((id, running)) = self
            .table
            .containers
            .get(&name)
            .map(|s| (s.id.clone(), s.running))
        else {
            return;
        };
        if running && !req.force {
            let r = CommandResult::refused(
                &req,
                Code::Invalid,
                "the container is running: stop it first, or send {\"action\":\"remove\",\"force\":true}",
                received,
            )
            .with_state(Some("running".into()));
            return self.send_result(&name, r);
        }
        tracing::info!(endpoint = %self.id, container = %name, force = req.force, "removing the container");
        let topic = self.settings.topics.container_result(&self.id, &name);
        let client = self.client.clone();
        self.runner.reads.spawn(async move {
            let r = match client.remove_container_with(&id, req.force).await {
                Ok(()) => CommandResult::ok(&req, Some("removed".into()), received),
                Err(DockerError::NotFound) => {
                    CommandResult::refused(&req, Code::NotFound, "the container is gone", received)
                }
                Err(e) => CommandResult::refused(&req, Code::EngineError, e.to_string(), received),
            };
            (topic, r)
        });
    }

    /// The image watcher has news: HA's version selects and the counts
    /// follow, and a due automatic update starts.
    pub(in crate::endpoint) fn on_watcher_news(&mut self) {
        for (name, state) in self.table.snapshot() {
            self.publish_container_device(&name, &state, false);
        }
        self.info_changed();
        self.start_auto_update();
    }

    /// Starts the next automatic update the watcher found due, unless an
    /// operation or a prune runs here (one at a time per endpoint). The
    /// command policy's container rules hold (never dockside's own
    /// container, `commands.protect`, `dockside.commands=false`); the word
    /// itself need not be in `commands.allow`, the label or
    /// `updates.auto` asked for it.
    pub(in crate::endpoint) fn start_auto_update(&mut self) {
        if self.operations_running() || self.runner.prune_running {
            return;
        }
        let Some(inv) = self.settings.inventory.clone() else {
            return;
        };
        let update = ["update".to_string()];
        let policy = Policy {
            enabled: true,
            allow: &update,
        };
        let rank = self.start_ranks();
        while let Some((name, job)) =
            inv.take_auto(&self.id, |n| rank.get(n).copied().unwrap_or(usize::MAX))
        {
            let Some(state) = self.table.containers.get(&name) else {
                continue;
            };
            let who = self.subject(&name, &state.id);
            if let Some((_, why)) = policy.refusal("update", Some(&who)) {
                tracing::info!(endpoint = %self.id, container = %name, %why, "automatic update not run");
                continue;
            }
            if self.runner.pending.contains_key(&name) {
                continue; // a command runs on it: offered again later
            }
            let req = Request {
                action: "update".into(),
                request_id: Some(format!("auto-{:08x}", fastrand::u32(..))),
                version: job.tag.clone(),
                ..Default::default()
            };
            tracing::info!(endpoint = %self.id, container = %name, version = %job.version, "automatic update");
            match self.launch_op_as(&name, req, std::time::Instant::now(), false, Trigger::Auto) {
                Ok(()) => return,
                Err(r) => {
                    tracing::warn!(endpoint = %self.id, container = %name, error = ?r.error, "automatic update refused")
                }
            }
        }
    }

    /// Each compose container's place in its project's start order (SPEC
    /// §17: a stack's automatic updates go in the order the stack word uses).
    fn start_ranks(&self) -> HashMap<String, usize> {
        let mut projects: HashMap<&str, Vec<crate::stacks::Member>> = HashMap::new();
        for (name, l) in &self.stacks.members {
            projects
                .entry(l.project.as_str())
                .or_default()
                .push(crate::stacks::Member {
                    name: name.clone(),
                    service: l.service.clone(),
                    depends_on: l.depends_on.clone(),
                    running: false,
                    update_available: false,
                });
        }
        projects
            .values()
            .flat_map(|m| crate::stacks::start_order(m).into_iter().enumerate())
            .map(|(i, n)| (n, i))
            .collect()
    }

    /// After `name` (a compose service) was updated: the containers of its
    /// project that depend on it with `restart: true` are restarted (SPEC
    /// §17), under the command policy's container rules; each gets the
    /// result of its restart on its own topic.
    pub(in crate::endpoint) fn restart_dependents(&mut self, name: &str) {
        const PROJECT: &str = "com.docker.compose.project";
        let Some(labels) = self.table.watched_labels.get(name) else {
            return;
        };
        let (Some(project), Some(service)) = (
            labels.get(PROJECT).cloned(),
            labels.get(crate::stacks::COMPOSE_SERVICE).cloned(),
        ) else {
            return;
        };
        let dependents: Vec<String> = self
            .table
            .watched_labels
            .iter()
            .filter(|(n, l)| {
                *n != name
                    && l.get(PROJECT) == Some(&project)
                    && l.get(crate::stacks::COMPOSE_DEPENDS_ON)
                        .is_some_and(|d| crate::stacks::restart_after(d).contains(&service))
            })
            .map(|(n, _)| n.clone())
            .collect();
        let restart = ["restart".to_string()];
        let policy = Policy {
            enabled: true,
            allow: &restart,
        };
        for d in dependents {
            let Some(state) = self.table.containers.get(&d) else {
                continue;
            };
            let who = self.subject(&d, &state.id);
            let why = if !state.running {
                Some("not running".to_string())
            } else if self.runner.pending.contains_key(&d) {
                Some("another command is running on it".to_string())
            } else {
                policy.refusal("restart", Some(&who)).map(|(_, w)| w)
            };
            if let Some(why) = why {
                tracing::info!(endpoint = %self.id, container = %d, %why, "not restarted after its dependency's update");
                continue;
            }
            tracing::info!(endpoint = %self.id, container = %d, dependency = %service, "restarting after its dependency's update");
            let req = Request {
                action: "restart".into(),
                request_id: Some(format!("after-update-{service}")),
                ..Default::default()
            };
            self.runner
                .last_command
                .insert(d.clone(), tokio::time::Instant::now());
            self.launch_word(d, req, std::time::Instant::now(), false);
        }
    }
}
