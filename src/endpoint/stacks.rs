//! Stacks on one endpoint (SPEC §13): which containers belong to which
//! compose project, the `_stacks/<stack>/state` topics kept current from the
//! container states (no polling of their own; Portainer's stack list is read
//! at sync and after a stack command), the HA stack devices, and the stack
//! words: compose stacks as a batch in dependency order, Portainer stacks
//! through Portainer's own start, stop and redeploy-with-pull.

use super::*;
use crate::command::{Code, CommandResult, Request};
use crate::portainer::PortainerError;
use crate::stacks::{Member, PortainerStack, StackState};

/// Portainer's stack list is read again at most this often (and after a stack command).
const PORTAINER_STACKS_EVERY: Duration = Duration::from_secs(60);
/// A Portainer stack start/stop/redeploy runs `docker compose` there: minutes.
const PORTAINER_STACK_TIMEOUT: Duration = Duration::from_secs(600);

/// A container's compose labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct StackLabels {
    pub project: String,
    pub service: Option<String>,
    pub depends_on: Vec<String>,
}

impl StackLabels {
    pub(super) fn of(labels: &HashMap<String, String>) -> Option<Self> {
        let project = labels
            .get(crate::payloads::COMPOSE_PROJECT)
            .map(|p| p.trim())
            .filter(|p| !p.is_empty())?;
        Some(Self {
            project: project.to_string(),
            service: labels
                .get(crate::stacks::COMPOSE_SERVICE)
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            depends_on: labels
                .get(crate::stacks::COMPOSE_DEPENDS_ON)
                .map(|d| crate::stacks::parse_depends_on(d))
                .unwrap_or_default(),
        })
    }
}

pub(super) type PortainerStacksAnswer = Result<Vec<PortainerStack>, PortainerError>;

#[derive(Default)]
pub(super) struct StacksState {
    /// container name → its compose labels.
    pub members: HashMap<String, StackLabels>,
    published: BTreeMap<String, StackState>,
    portainer: Vec<PortainerStack>,
    pub portainer_task: JoinSet<PortainerStacksAnswer>,
    portainer_asked: Option<Instant>,
    /// stack → the words its HA device was built with.
    ha: HashMap<String, Vec<String>>,
}

use std::collections::BTreeMap;

fn removal_key(stack: &str) -> String {
    format!("{}/{stack}", crate::stacks::SEGMENT)
}

impl Endpoint {
    /// The published stacks as the sweeps name them (`_stacks/<stack>`).
    pub(super) fn stacks_live(&self) -> Vec<String> {
        self.stacks
            .published
            .keys()
            .map(|s| removal_key(s))
            .collect()
    }

    /// This endpoint's containers with an update available (the image watcher's view).
    fn updates_here(&self) -> HashSet<String> {
        self.settings
            .inventory
            .as_ref()
            .map(|i| i.updates_available(&self.id).into_iter().collect())
            .unwrap_or_default()
    }

    /// Recomputes every stack from the container table; publishes what changed,
    /// schedules the clear of stacks whose last container went.
    pub(super) fn publish_stacks(&mut self, force: bool) {
        self.ask_portainer_stacks(false);
        let updates = self.updates_here();
        let mut projects: BTreeMap<String, Vec<Member>> = BTreeMap::new();
        for (name, st) in &self.table.containers {
            if let Some(l) = self.stacks.members.get(name) {
                projects.entry(l.project.clone()).or_default().push(Member {
                    name: name.clone(),
                    service: l.service.clone(),
                    depends_on: l.depends_on.clone(),
                    running: st.running,
                    update_available: updates.contains(name),
                });
            }
        }
        let now = crate::stacks::build(&self.id, &projects, &self.stacks.portainer);
        let gone: Vec<String> = self
            .stacks
            .published
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for name in gone {
            self.stacks.published.remove(&name);
            self.stacks.ha.remove(&name);
            tracing::info!(endpoint = %self.id, stack = %name, "stack has no containers left");
            self.schedule_removal(&removal_key(&name));
        }
        for (name, st) in now {
            self.table.removals.remove(&removal_key(&name));
            self.publish_stack_device(&name, &st, force);
            if !force && self.stacks.published.get(&name) == Some(&st) {
                continue;
            }
            match serde_json::to_vec(&st) {
                Ok(p) => self
                    .outbox
                    .retain(self.settings.topics.stack_state(&self.id, &name), p),
                Err(e) => tracing::warn!(error = %e, "cannot encode stack state"),
            }
            self.stacks.published.insert(name, st);
        }
    }

    /// The words HA may send to a stack: those the command policy permits
    /// for every one of its containers (`command::Policy`).
    fn stack_words(&self, st: &StackState) -> Vec<String> {
        crate::stacks::WORDS
            .iter()
            .filter(|w| self.stack_refusal(st, w).is_none())
            .filter(|w| **w != "update" || self.settings.inventory.is_some())
            .map(|w| w.to_string())
            .collect()
    }

    /// One policy: a stack word is refused when it is refused for any of the
    /// stack's containers (a protected container is never stopped through its stack).
    fn stack_refusal(&self, st: &StackState, word: &str) -> Option<(Code, String)> {
        let s = &self.settings;
        if let Some(r) = s.commands.policy().refusal(word, None) {
            return Some(r);
        }
        st.containers.iter().find_map(|name| {
            let id = self
                .table
                .containers
                .get(name)
                .map(|c| c.id.as_str())
                .unwrap_or("");
            let who = self.subject(name, id);
            s.commands
                .policy()
                .refusal(word, Some(&who))
                .map(|(code, msg)| (code, format!("{name}: {msg}")))
        })
    }

    fn publish_stack_device(&mut self, name: &str, st: &StackState, force: bool) {
        let Some(ha) = self.settings.ha.clone() else {
            return;
        };
        let words = self.stack_words(st);
        if !force && self.stacks.ha.get(name) == Some(&words) {
            return;
        }
        let owner = self.settings.topics.stack_owner(&self.id, name);
        self.outbox
            .retain_owned(&owner, ha.messages(&ha.stack(&self.id, name, &words)));
        self.stacks.ha.insert(name.to_string(), words);
    }

    /// Portainer environments: their stack list, read off the endpoint task.
    pub(super) fn ask_portainer_stacks(&mut self, now: bool) {
        let Some((p, env)) = self.portainer.clone() else {
            return;
        };
        let due = self
            .stacks
            .portainer_asked
            .is_none_or(|t| t.elapsed() >= PORTAINER_STACKS_EVERY);
        if !self.stacks.portainer_task.is_empty() || !(now || due) {
            return;
        }
        self.stacks.portainer_asked = Some(Instant::now());
        self.stacks
            .portainer_task
            .spawn(async move { p.stacks(env).await });
    }

    pub(super) fn on_portainer_stacks(&mut self, r: PortainerStacksAnswer) {
        match r {
            Ok(list) => {
                if list != self.stacks.portainer {
                    self.stacks.portainer = list;
                    self.publish_stacks(false);
                }
            }
            // The last list stays; compose projects show without Portainer's.
            Err(e) => {
                tracing::warn!(endpoint = %self.id, error = %e, "cannot list Portainer stacks")
            }
        }
    }

    /// A word on a stack (SPEC §13): one result on the stack's result topic.
    pub(super) fn start_stack_command(
        &mut self,
        stack: String,
        req: Request,
        received: std::time::Instant,
    ) {
        let topic = self.settings.topics.stack_result(&self.id, &stack);
        let refuse = |code: Code, msg: String| CommandResult::refused(&req, code, msg, received);
        let Some(st) = self.stacks.published.get(&stack).cloned() else {
            let r = refuse(
                Code::NotFound,
                format!("no stack `{stack}` on endpoint `{}`", self.id),
            );
            return self.send_result_to(topic, r);
        };
        if let Some((code, msg)) = self.stack_refusal(&st, &req.action) {
            return self.send_result_to(topic, refuse(code, msg));
        }
        if self.runner.batch.is_some() {
            let r = refuse(
                Code::Busy,
                "an update_all or a stack command is already running on this endpoint".into(),
            );
            return self.send_result_to(topic, r);
        }
        if let Some(n) = st
            .containers
            .iter()
            .find(|n| self.runner.pending.contains_key(*n))
        {
            let r = refuse(
                Code::Busy,
                format!("another command is running on container `{n}`"),
            );
            return self.send_result_to(topic, r);
        }
        tracing::info!(endpoint = %self.id, stack = %stack, action = %req.action, kind = st.kind, "running stack command");
        if let (Some(id), Some((p, env))) = (st.portainer_id, self.portainer.clone()) {
            let word = req.action.clone();
            let before = st.state;
            self.runner.reads.spawn(async move {
                let r = portainer_stack_word(&p, id, env, &word).await;
                let r = match r {
                    Ok(()) => {
                        let reached = crate::stacks::state_after(&word);
                        CommandResult::ok(&req, Some(reached.to_string()), received)
                    }
                    Err(e) => {
                        CommandResult::refused(&req, Code::EngineError, e.to_string(), received)
                            .with_state(Some(before.to_string()))
                    }
                };
                (topic, r)
            });
            return;
        }
        let order = st.containers.clone();
        let queue: std::collections::VecDeque<(String, String)> = match req.action.as_str() {
            "start" => order.iter().map(|n| (n.clone(), "start".into())).collect(),
            "stop" => order
                .iter()
                .rev()
                .map(|n| (n.clone(), "stop".into()))
                .collect(),
            "restart" => order
                .iter()
                .rev()
                .map(|n| (n.clone(), "stop".into()))
                .chain(order.iter().map(|n| (n.clone(), "start".into())))
                .collect(),
            _ => {
                let updates = self.updates_here();
                order
                    .iter()
                    .filter(|n| updates.contains(*n))
                    .map(|n| (n.clone(), "update".into()))
                    .collect()
            }
        };
        self.runner.batch = Some(commands::Batch::new(
            req,
            received,
            queue,
            topic,
            Some(order),
        ));
        self.next_of_batch();
    }
}

/// Portainer's own stack calls: `restart` is stop then start (Portainer has
/// no restart), `update` is a redeploy with pull. "Already active/inactive"
/// means there was nothing to do.
async fn portainer_stack_word(
    p: &crate::portainer::PortainerClient,
    id: i64,
    env: i64,
    word: &str,
) -> Result<(), PortainerError> {
    let t = PORTAINER_STACK_TIMEOUT;
    let tolerate = |r: Result<(), PortainerError>| match r {
        Err(PortainerError::Status {
            status: 400,
            message,
        }) if message.to_ascii_lowercase().contains("already") => Ok(()),
        other => other,
    };
    match word {
        "start" => tolerate(p.stack_action(id, env, "start", t).await),
        "stop" => tolerate(p.stack_action(id, env, "stop", t).await),
        "restart" => {
            tolerate(p.stack_action(id, env, "stop", t).await)?;
            p.stack_action(id, env, "start", t).await
        }
        _ => {
            let git = p.stacks(env).await?.iter().any(|s| s.id == id && s.git);
            p.stack_redeploy(id, env, git, t).await
        }
    }
}
