//! Operations: `update` and `rollback` run detached to their end (a
//! recreate cut in the middle would leave the container renamed), with
//! their pull progress, history and verdict (SPEC §14).

use super::*;

/// An `update`/`rollback` that ended (SPEC §14).
#[derive(Debug)]
pub struct OpDone {
    name: String,
    seq: u64,
    op_id: String,
    from_all: bool,
    /// The version it meant to install, when the status named one.
    version: Option<String>,
    trigger: Trigger,
    swap: Swap,
    result: Result<Outcome, RecreateError>,
}

/// Who started an operation (the history's `trigger`, SPEC §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    /// An automatic update: no requester, so no result message.
    Auto,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Auto => "auto",
        }
    }
}

/// Pull progress reaches the `update` topic at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl Endpoint {
    /// Starts an `update` or `rollback` (the checks of `start_command` done):
    /// recorded in the history, run detached to its end (a recreate cut in
    /// the middle would leave the container renamed), its pull progress
    /// shown on the `update` topic.
    pub(in crate::endpoint) fn launch_op(
        &mut self,
        name: &str,
        req: Request,
        received: std::time::Instant,
        from_all: bool,
    ) -> Result<(), Box<CommandResult>> {
        self.launch_op_as(name, req, received, from_all, Trigger::Manual)
    }

    /// [`Self::launch_op`], started by a command or by the automatic updates.
    pub(in crate::endpoint) fn launch_op_as(
        &mut self,
        name: &str,
        req: Request,
        received: std::time::Instant,
        from_all: bool,
        trigger: Trigger,
    ) -> Result<(), Box<CommandResult>> {
        let refuse =
            |code: Code, msg: String| Box::new(CommandResult::refused(&req, code, msg, received));
        if self.runner.prune_running {
            return Err(refuse(
                Code::Busy,
                "a prune is running on this endpoint; retry when it ends".into(),
            ));
        }
        let Some(state) = self.table.containers.get(name) else {
            return Err(refuse(
                Code::NotFound,
                format!("no container `{name}` on endpoint `{}`", self.id),
            ));
        };
        let target = self
            .op_target(name, &req, &state.image_id)
            .map_err(|(code, why)| refuse(code, why))?;
        let version = match (&target, req.action.as_str()) {
            (_, "rollback" | "sync") => None,
            (Target::Tag(v), _) => Some(v.clone()),
            _ => self.offered_version(name),
        };
        let check = self.check_command(name);
        let s = self.settings.clone();
        let timeout = s.update_timeout;
        let pulled = match &target {
            Target::Reference(r) => r.as_str(),
            _ => state.image.as_str(),
        };
        let auth = registry_auth(&s.registry_credentials, pulled);
        let current_image = state.image.clone();
        let deadline = Instant::now() + timeout + s.verify_for;
        let (seq, id) = self.add_pending(name, &req, received, deadline, from_all);
        let op_id = self.history.begin(name, &req.action, trigger.as_str());
        tracing::info!(endpoint = %self.id, container = %name, action = %req.action, version = ?req.version, "running command");
        if let Some(inv) = &s.inventory {
            inv.set_in_progress(&self.id, name, true);
        }
        let (tx, rx) = oneshot::channel();
        let (client, portainer) = (self.client.clone(), self.portainer.clone());
        let (ep, n) = (self.id.clone(), name.to_string());
        tokio::spawn(async move {
            let last = std::sync::Mutex::new(None::<Instant>);
            let inv = s.inventory.clone();
            let on_progress = |p: u8| {
                let mut l = last.lock().unwrap_or_else(|e| e.into_inner());
                if p < 100 && l.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
                    return;
                }
                *l = Some(Instant::now());
                if let Some(inv) = &inv {
                    inv.set_progress(&ep, &n, p);
                }
            };
            let ready = async {
                if let Some(cmd) = &check {
                    let checked = pre_update_check(&client, &id, cmd, s.check_timeout).await;
                    if let Some(inv) = &s.inventory {
                        inv.set_check_failed(&ep, &n, checked.as_ref().err().cloned());
                    }
                    checked.map_err(RecreateError::Blocked)?;
                }
                check_tag(&s, &target, &current_image).await
            };
            let (swap, r) = match ready.await {
                Err(e) => (Swap::default(), Err(e)),
                Ok(()) => match (portainer, &target) {
                    (Some((p, env)), Target::Current) => {
                        via_portainer(&p, env, &client, &id, timeout, s.verify_for).await
                    }
                    _ => {
                        let plan = Plan {
                            target,
                            registry_auth: auth.as_deref(),
                            pull_timeout: timeout,
                            verify_for: s.verify_for,
                            progress: &on_progress,
                        };
                        recreate::recreate(&client, &id, &n, plan).await
                    }
                },
            };
            if let Some(inv) = &s.inventory {
                inv.set_in_progress(&ep, &n, false);
            }
            let _ = tx.send((swap, r));
        });
        let name = name.to_string();
        self.runner.ops.spawn(async move {
            let (swap, result) = rx.await.unwrap_or_else(|_| {
                (
                    Swap::default(),
                    Err(RecreateError::Refused("the update task ended early".into())),
                )
            });
            OpDone {
                name,
                seq,
                op_id,
                from_all,
                version,
                trigger,
                swap,
                result,
            }
        });
        Ok(())
    }

    /// What an `update`, `rollback` or `sync` recreates the container from,
    /// or why it cannot (SPEC §14, §17).
    fn op_target(
        &self,
        name: &str,
        req: &Request,
        image_id: &str,
    ) -> Result<Target, (Code, String)> {
        Ok(match (req.action.as_str(), &req.version) {
            ("rollback", _) => {
                let Some(last) = self.history.last_update(name) else {
                    return Err((
                        Code::Invalid,
                        "nothing to roll back: the history has no successful update of this container"
                            .into(),
                    ));
                };
                let (Some(image), Some(reference)) = (&last.from_image, &last.from_reference)
                else {
                    return Err((
                        Code::Invalid,
                        "the last update did not record the previous image".into(),
                    ));
                };
                if image == image_id {
                    return Err((
                        Code::Invalid,
                        "the container already runs the image it ran before its last update".into(),
                    ));
                }
                Target::Image {
                    id: image.clone(),
                    reference: reference.clone(),
                }
            }
            ("sync", _) => {
                let drift = self
                    .settings
                    .inventory
                    .as_ref()
                    .and_then(|inv| inv.facts(&self.id, name))
                    .and_then(|f| f.compose_image);
                let Some(image) = drift else {
                    return Err((
                        Code::Invalid,
                        "no compose drift: the compose file names the image the container runs, or is not readable here"
                            .into(),
                    ));
                };
                Target::Reference(image)
            }
            (_, Some(v)) => Target::Tag(v.clone()),
            _ => self.latest_target(name),
        })
    }

    /// The container's pre-update check (`dockside.update.check`), if any.
    fn check_command(&self, name: &str) -> Option<String> {
        self.table
            .watched_labels
            .get(name)
            .and_then(|l| l.get(crate::watcher::CHECK_LABEL))
            .filter(|c| !c.trim().is_empty())
            .cloned()
    }

    /// `update` without a version installs what the status offers (SPEC
    /// §17): under tag following the newest tag, else the same tag re-pulled.
    fn latest_target(&self, name: &str) -> Target {
        let facts = self
            .settings
            .inventory
            .as_ref()
            .and_then(|inv| inv.facts(&self.id, name));
        match facts {
            Some(f) if f.latest_is_tag && f.latest != f.versions.first().cloned() => {
                f.latest.map_or(Target::Current, Target::Tag)
            }
            _ => Target::Current,
        }
    }

    /// The version an `update` without a version installs, when the status
    /// offers one (a rolled-back one is then blocked for automatic updates).
    fn offered_version(&self, name: &str) -> Option<String> {
        let f = self.settings.inventory.as_ref()?.facts(&self.id, name)?;
        matches!(f.status, "update_available" | "skipped")
            .then_some(f.latest)
            .flatten()
    }

    /// An `update`/`rollback` ended: the new container runs (verified by the
    /// recreate itself), the image was current, or the old container is back.
    /// Recorded in the history whether or not its result already timed out.
    pub(in crate::endpoint) fn on_op_done(&mut self, done: OpDone) {
        let OpDone {
            name,
            seq,
            op_id,
            from_all,
            version,
            trigger,
            swap,
            result: r,
        } = done;
        let (status, error) = match &r {
            // Nothing changed: not worth a line of history.
            Ok(Outcome::UpToDate) | Err(RecreateError::Blocked(_)) => (None, None),
            Ok(Outcome::Updated { .. }) => (Some("ok"), None),
            Err(RecreateError::RolledBack(_)) => (Some("rolled_back"), Some(r_err(&r))),
            Err(_) => (Some("failed"), Some(r_err(&r))),
        };
        match status {
            Some(st) => self.history.finish(&name, &op_id, &swap, st, error.clone()),
            None => self.history.discard(&name, &op_id),
        }
        if let (Some("rolled_back"), Some(v), Some(inv)) =
            (status, &version, &self.settings.inventory)
        {
            // SPEC §17: never installed automatically again.
            let why = format!(
                "version {v} was rolled back: {}",
                error.as_deref().unwrap_or_default()
            );
            inv.block(&self.id, &name, v, &why);
        }
        if matches!(r, Ok(Outcome::Updated { .. })) {
            self.restart_dependents(&name);
        }
        if trigger == Trigger::Auto {
            tracing::info!(endpoint = %self.id, container = %name, version = ?version, outcome = status.unwrap_or("unchanged"), error = ?error, "automatic update ended");
        }
        // Before the result, whether or not the table shows the name right
        // now (a rollback's renames may not have arrived yet).
        self.publish_history_of(&name);
        let pending = self
            .runner
            .pending
            .get(&name)
            .is_some_and(|p| p.seq == seq)
            .then(|| self.runner.pending.remove(&name))
            .flatten()
            .filter(|_| trigger == Trigger::Manual);
        let state = self.table.containers.get(&name).map(|s| s.state.clone());
        let result = pending.map(|p| {
            let (result, new_id) = op_result(&self.id, &name, &p, r, state, &swap);
            if let Some(id) = new_id {
                self.schedule_inspect(id);
            }
            result
        });
        if from_all {
            let outcome = match &result {
                Some(r) => ContainerOutcome::from((name.as_str(), r)),
                None => ContainerOutcome::refused(
                    &name,
                    Code::Timeout,
                    "the update did not end in time",
                ),
            };
            if let Some(b) = &mut self.runner.batch {
                b.outcomes.push(outcome);
            }
            self.next_of_batch();
        } else if let Some(r) = result {
            self.send_result(&name, r);
        }
        self.after_operation();
    }

    /// `<ct>/history` (retained) of a container in the table, on republish.
    pub(in crate::endpoint) fn publish_history(&self, name: &str) {
        if self.table.containers.contains_key(name) {
            self.publish_history_of(name);
        }
    }

    /// `<ct>/history` (retained) with every ended operation.
    pub(in crate::endpoint) fn publish_history_of(&self, name: &str) {
        if self.history.has_ended(name) {
            self.outbox.retain(
                self.settings.topics.container_history(&self.id, name),
                self.history.payload(name),
            );
        }
    }
}

/// The one result of an ended operation (SPEC §5, §14, §17), with the
/// versions it went from and to, and the new container to inspect.
fn op_result(
    ep: &str,
    name: &str,
    p: &Pending,
    r: Result<Outcome, RecreateError>,
    state: Option<String>,
    swap: &Swap,
) -> (CommandResult, Option<String>) {
    let (mut result, new_id) = match r {
        Ok(Outcome::UpToDate) => {
            tracing::info!(endpoint = %ep, container = %name, "update: the image is current");
            (CommandResult::ok(&p.req, state, p.received), None)
        }
        Ok(Outcome::Updated { id, running }) => {
            tracing::info!(endpoint = %ep, container = %name, new_id = %id, action = %p.req.action, "recreated from the new image");
            let st = if running { "running" } else { "created" };
            let r = CommandResult::ok(&p.req, Some(st.to_string()), p.received);
            (r, Some(id))
        }
        Err(RecreateError::Refused(why)) => (
            CommandResult::refused(&p.req, Code::Invalid, why, p.received).with_state(state),
            None,
        ),
        Err(e @ RecreateError::Blocked(_)) => (
            CommandResult::refused(&p.req, Code::Blocked, e.to_string(), p.received)
                .with_state(state),
            None,
        ),
        Err(RecreateError::Engine {
            err: DockerError::NotFound,
            ..
        }) => (
            CommandResult::refused(
                &p.req,
                Code::NotFound,
                "the container no longer exists",
                p.received,
            ),
            None,
        ),
        Err(e) => (
            CommandResult::refused(&p.req, Code::EngineError, e.to_string(), p.received)
                .with_state(state),
            None,
        ),
    };
    result.from_version = swap.from_version.clone();
    result.to_version = swap.to_version.clone();
    (result, new_id)
}

fn r_err(r: &Result<Outcome, RecreateError>) -> String {
    r.as_ref().err().map(|e| e.to_string()).unwrap_or_default()
}

/// The pre-update check (SPEC §17): `Err` with the command's last output
/// line when it exits non-zero, cannot run, or outlives `bound`.
async fn pre_update_check(
    client: &crate::docker::DockerClient,
    id: &str,
    command: &str,
    bound: Duration,
) -> Result<(), String> {
    use crate::docker::exec::CheckOutcome;
    match client.exec_check(id, command, bound).await {
        Ok(CheckOutcome::Exited(0, _)) => Ok(()),
        Ok(CheckOutcome::Exited(code, line)) if line.is_empty() => Err(format!("exit code {code}")),
        Ok(CheckOutcome::Exited(code, line)) => Err(format!("exit code {code}: {line}")),
        Ok(CheckOutcome::TimedOut) => Err(format!(
            "still running after {}; killed",
            humantime::format_duration(bound)
        )),
        Err(e) => Err(format!("cannot run it: {e}")),
    }
}

/// `update` to a version: the tag must exist in the container's repository
/// (SPEC §14), asked of the registry before anything is pulled or stopped.
async fn check_tag(
    s: &crate::endpoint::EndpointSettings,
    target: &Target,
    current: &str,
) -> Result<(), RecreateError> {
    let Target::Tag(tag) = target else {
        return Ok(());
    };
    let (repo, _) = recreate::split_reference(current)?;
    let Some(reference) = crate::registry::Reference::parse(&format!("{repo}:{tag}")) else {
        return Err(RecreateError::Refused(format!(
            "`{repo}:{tag}` is not an image reference"
        )));
    };
    let Some(registry) = &s.registry else {
        return Err(RecreateError::Registry(
            "no registry client (see the log at start)".into(),
        ));
    };
    match registry.head(&reference).await {
        Ok(_) => Ok(()),
        Err(crate::registry::RegistryError::NotFound) => Err(RecreateError::Refused(format!(
            "tag `{tag}` does not exist in {repo}"
        ))),
        Err(e) => Err(RecreateError::Registry(e.to_string())),
    }
}

/// `update` on a Portainer environment: Portainer's recreate (it pulls with
/// its own registry credentials and keeps its access controls), then a check
/// that the new container runs.
async fn via_portainer(
    portainer: &crate::portainer::PortainerClient,
    env: i64,
    client: &crate::docker::DockerClient,
    id: &str,
    timeout: Duration,
    verify_for: Duration,
) -> (Swap, Result<Outcome, RecreateError>) {
    let mut swap = Swap::default();
    let r = async {
        let before = client
            .inspect_raw(id)
            .await
            .map_err(|err| RecreateError::Engine {
                step: "inspecting the container",
                err,
            })?;
        let reference = before["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        recreate::split_reference(&reference)?;
        let old_image = before["Image"].as_str().unwrap_or_default().to_string();
        let old = client
            .image_inspect_raw(&old_image)
            .await
            .unwrap_or_default();
        swap.from_image = Some(old_image.clone());
        swap.from_reference = Some(reference.clone());
        swap.from_version = recreate::version_of(&old, &reference);
        swap.to_reference = Some(reference.clone());
        let was_running = before["State"]["Running"] == serde_json::json!(true);
        let new_id =
            portainer
                .recreate(env, id, timeout)
                .await
                .map_err(|e| RecreateError::Engine {
                    step: "Portainer's recreate",
                    err: DockerError::Status {
                        status: 502,
                        message: e.to_string(),
                    },
                })?;
        let after = client.inspect_raw(&new_id).await.unwrap_or_default();
        if let Some(img) = after["Image"].as_str() {
            let new = client.image_inspect_raw(img).await.unwrap_or_default();
            swap.to_image = Some(img.to_string());
            swap.to_version = recreate::version_of(&new, &reference);
        }
        if was_running {
            // Portainer removed the old container: nothing to restore.
            recreate::verify(client, &new_id, verify_for)
                .await
                .map_err(|message| RecreateError::Engine {
                    step: "checking the new container",
                    err: DockerError::Status {
                        status: 500,
                        message,
                    },
                })?;
        }
        Ok(Outcome::Updated {
            id: new_id,
            running: was_running,
        })
    }
    .await;
    (swap, r)
}

/// `X-Registry-Auth` for pulling `image`: base64url of the registry's
/// credentials, when configured.
fn registry_auth(
    creds: &std::collections::HashMap<String, crate::registry::client::Credentials>,
    image: &str,
) -> Option<String> {
    use base64::Engine as _;
    let r = crate::registry::reference::Reference::parse(image)?;
    let c = creds.get(&r.registry).or_else(|| creds.get(r.api_host()))?;
    let json = serde_json::json!({"username": c.username, "password": c.password,
                                  "serveraddress": r.registry});
    Some(base64::engine::general_purpose::URL_SAFE.encode(json.to_string()))
}
