//! The image watcher (SPEC §6): one task for all endpoints. Endpoints report
//! their containers into the [`Inventory`]; a round classifies them, checks each
//! distinct (registry, repository, tag) once with a manifest HEAD, resolves
//! multi-arch indexes to the running platform, and publishes
//! `<base>/<ep>/<ct>/update`. Results survive restarts (`state.dir/updates.json`),
//! so a restart publishes the last known status at once without re-asking
//! registries whose results are fresh.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clock::{sleep_until_opt, unix_now};
use crate::config::{Config, UpdatesConfig};
use crate::docker::DockerClient;
use crate::docker::models::ImageInspect;
use crate::mqtt::Outbox;
use crate::payloads::now_rfc3339;
use crate::persist::StateDir;
use crate::registry::tags::{self as tagging, Follow};
mod auto;
mod compose;
mod decisions;
mod inventory;
pub mod release;

use crate::registry::{
    Class, Credentials, Platform, Reference, RegistryClient, RegistryError, Remote, classify,
    unproven_verdict,
};

const VERSION_LABEL: &str = "org.opencontainers.image.version";
/// Registry checks in flight at once, all registries together (plus 3 per host in the client).
const GLOBAL_CONCURRENCY: usize = 8;
/// How long "the registry has no such tag" keeps an unproven image a local
/// build without asking again (a later push shows within a day, or at once
/// with `check_updates`).
const UNPROVEN_RECHECK: Duration = Duration::from_secs(24 * 3600);
/// New or changed containers are looked at together after this quiet time.
const INVENTORY_DEBOUNCE: Duration = Duration::from_secs(2);
/// How often statuses whose automatic update waits (the window, the
/// minimum age) are looked at again; no registry request unless due.
const AUTO_RECHECK: Duration = Duration::from_secs(60);
/// Image creation times remembered (`updates.min_age`).
const MAX_CREATED: usize = 1024;

/// What the watcher needs of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub config_image: String,
    pub image_id: String,
    /// The container's labels the watcher reads ([`watched_label`]).
    pub labels: BTreeMap<String, String>,
}

/// The label that turns update checks off for one container.
pub const UPDATES_LABEL: &str = "dockside.updates";

/// The container labels the watcher reads: `dockside.*` (tag following,
/// `dockside.updates`, automatic updates, the release link), the OCI
/// source and title, and compose's project labels.
pub fn watched_label(k: &str) -> bool {
    k.starts_with("dockside.")
        || k == release::SOURCE_LABEL
        || k == release::TITLE_LABEL
        || k.starts_with("com.docker.compose.")
}

pub use auto::{AUTO_LABEL, CHECK_LABEL, Window};
use decisions::Verdict;
use inventory::Key;
pub use inventory::{AutoJob, Facts, Inventory};

/// What a check request covers.
#[derive(Debug, Clone)]
pub enum CheckScope {
    All,
    Endpoint(String),
    Container(String, String),
}

pub type CheckRequest = (CheckScope, oneshot::Sender<Result<(), String>>);

/// A registry answer for one (registry, repository, tag), persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct KeyResult {
    remote: Option<String>,
    media_type: Option<String>,
    error: Option<String>,
    not_found: bool,
    checked_at: String,
    checked_unix: u64,
    /// The repository's tags, when a container follows tags.
    #[serde(default)]
    tags: Option<Vec<String>>,
    /// Digests the registry has answered for this reference, newest last
    /// (at most `KNOWN_DIGESTS`): an image whose ID is one of them came from
    /// the registry even when its tag is gone later (containerd store).
    #[serde(default)]
    known_digests: Vec<String>,
    /// The registry could not be reached at all (connection, timeout).
    #[serde(default)]
    unreachable: bool,
}

const KNOWN_DIGESTS: usize = 8;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    results: BTreeMap<String, KeyResult>,
}

/// SPEC §4.3. Keys with no value are left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UpdateStatus {
    pub status: &'static str,
    pub update_available: bool,
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub installed_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<String>,
    pub in_progress: bool,
    /// Pull progress (0–100) while an `update` runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pending_recreate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The release notes of the version shown (SPEC §17).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Why `latest_version` is not installed automatically, or why an update
    /// of this container is refused (its pre-update check failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked: Option<String>,
    /// The container updates itself (label or `updates.auto`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub auto: bool,
    /// Why a due automatic update waits (the window, `min_age`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_waits: Option<String>,
    /// The image the container's compose file names for its service, when
    /// it is another one (the word `sync` moves the container onto it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compose_image: Option<String>,
}

/// `<ct>/versions` (SPEC §17): the running tag and the tags it may move to.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Versions {
    pub current: String,
    pub available: Vec<String>,
}

/// A container not checked against a registry: pinned by digest, built
/// here, ignored on purpose, or not checkable (the reason as `error`).
fn untracked_status(
    mut s: UpdateStatus,
    w: &Watched,
    class: Class,
    label: Option<String>,
) -> UpdateStatus {
    match class {
        Class::Pinned => {
            s.status = "pinned";
            let d = Reference::parse(&w.config_image).and_then(|r| r.digest);
            s.local_digest = d.clone();
            s.installed_version = label.clone().or(d.as_deref().map(short));
            s.latest_version = s.installed_version.clone();
        }
        Class::LocalBuild => {
            s.status = "local_build";
            s.installed_version = label.clone().or(Some(short(&w.image_id)));
            s.latest_version = s.installed_version.clone();
        }
        Class::Unknown(e) => s.error = Some(e),
        Class::Ignored => {
            s.status = "ignored";
            let tag = Reference::parse(&w.config_image).and_then(|r| r.tag);
            s.installed_version = label.clone().or(tag).or(Some(short(&w.image_id)));
            s.latest_version = s.installed_version.clone();
        }
        Class::Tracked { .. } => {}
    }
    s
}

fn short(d: &str) -> String {
    let hex = d.trim_start_matches("sha256:");
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

/// The registry client of `[updates]` (the watcher's, and `update`'s tag check).
pub fn registry_client(cfg: &UpdatesConfig) -> Result<RegistryClient, RegistryError> {
    // Validated at load time: an unreadable file here just adds nothing.
    let roots = cfg
        .ca_file
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).ok())
        .unwrap_or_default();
    RegistryClient::new(credentials(cfg), cfg.insecure_registries.clone(), roots)
}

/// Credentials from `[updates.registries]`, then a Docker `config.json`
/// (`auths`, `credHelpers`, `credsStore`).
pub fn credentials(cfg: &UpdatesConfig) -> HashMap<String, Credentials> {
    let (mut out, problems) = docker_config(cfg);
    for (host, why) in &problems {
        tracing::warn!(registry = %host, error = %why, "docker_config: no credentials for this registry");
    }
    for (host, c) in &cfg.registries {
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            out.insert(
                host.clone(),
                Credentials {
                    username: u.clone(),
                    password: p.clone(),
                },
            );
        }
    }
    out
}

/// Registries whose credential helper failed, with why (shown in their
/// containers' update status).
pub fn credential_problems(cfg: &UpdatesConfig) -> HashMap<String, String> {
    docker_config(cfg).1
}

/// `docker.io` for Docker Hub's many names; scheme and slashes dropped.
fn registry_host(key: &str) -> String {
    match key {
        "https://index.docker.io/v1/" | "index.docker.io" | "registry-1.docker.io" => {
            "docker.io".to_string()
        }
        h => h
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string(),
    }
}

/// What a Docker `config.json` gives: credentials per registry, and the
/// registries whose helper failed. Helpers are asked per registry named in
/// `credHelpers`, and `credsStore` for every `auths` entry without `auth`
/// (as `docker login` leaves them).
fn docker_config(cfg: &UpdatesConfig) -> (HashMap<String, Credentials>, HashMap<String, String>) {
    use base64::Engine as _;
    let (mut out, mut problems) = (HashMap::new(), HashMap::new());
    let Some(path) = &cfg.docker_config else {
        return (out, problems);
    };
    let v: serde_json::Value = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read updates.docker_config");
            return (out, problems);
        }
    };
    let mut helpers: Vec<(String, String, String)> = Vec::new();
    let store = v["credsStore"].as_str().filter(|s| !s.is_empty());
    if let Some(auths) = v.get("auths").and_then(|a| a.as_object()) {
        for (key, entry) in auths {
            let host = registry_host(key);
            let Some(raw) = entry.get("auth").and_then(|a| a.as_str()) else {
                if let Some(s) = store {
                    helpers.push((host, key.clone(), s.to_string()));
                }
                continue;
            };
            let Ok(dec) = base64::engine::general_purpose::STANDARD.decode(raw.trim()) else {
                tracing::warn!(host = %host, "docker_config: unreadable auth entry");
                continue;
            };
            let text = String::from_utf8_lossy(&dec).to_string();
            if let Some((u, p)) = text.split_once(':') {
                let c = Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                };
                out.insert(host, c);
            }
        }
    }
    if let Some(map) = v.get("credHelpers").and_then(|h| h.as_object()) {
        for (key, helper) in map {
            if let Some(h) = helper.as_str() {
                helpers.retain(|(host, _, _)| *host != registry_host(key));
                helpers.push((registry_host(key), key.clone(), h.to_string()));
            }
        }
    }
    for (host, server, helper) in helpers.into_iter().take(64) {
        match crate::registry::helpers::get(&helper, &server) {
            Ok(Some(c)) => {
                out.insert(host, c);
            }
            Ok(None) => {}
            Err(why) => {
                problems.insert(host, format!("credential helper `{helper}`: {why}"));
            }
        }
    }
    (out, problems)
}

/// The image watcher's request queue, shared by everyone who asks for checks;
/// `None` while update checks are off. The supervisor swaps it when the
/// watcher restarts (a `[updates]` reload).
pub type CheckQueue = Arc<std::sync::RwLock<Option<mpsc::Sender<CheckRequest>>>>;

/// Asks the image watcher for a check now; one result on `result_topic` when
/// it is done (or refused, or timed out).
pub fn request_check(
    queue: &CheckQueue,
    scope: CheckScope,
    req: crate::command::Request,
    result_topic: String,
    received: std::time::Instant,
    timeout: Duration,
    outbox: &Arc<Outbox>,
) {
    use crate::command::{Code, CommandResult};
    let refuse = |code, why: &str| {
        let r = CommandResult::refused(&req, code, why, received);
        outbox.send(result_topic.clone(), r.to_json());
    };
    let sender = queue.read().unwrap_or_else(|e| e.into_inner()).clone();
    let Some(checks) = sender else {
        return refuse(
            Code::Invalid,
            "update checks are off (updates.enabled = false)",
        );
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if checks.try_send((scope, tx)).is_err() {
        return refuse(Code::Busy, "update checks are already queued");
    }
    let outbox = outbox.clone();
    tokio::spawn(async move {
        let r = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(()))) => CommandResult::ok(&req, None, received),
            Ok(Ok(Err(e))) => CommandResult::refused(&req, Code::NotFound, e, received),
            Ok(Err(_)) => CommandResult::refused(
                &req,
                Code::EngineError,
                "the image watcher stopped",
                received,
            ),
            Err(_) => CommandResult::refused(
                &req,
                Code::Timeout,
                "the check did not finish in time",
                received,
            ),
        };
        outbox.send(result_topic, r.to_json());
    });
}

/// A container of a round: its key, what it runs, its image, class, pending recreate.
type Classified = (Key, Watched, Option<Arc<ImageInspect>>, Class, bool);

pub struct Watcher {
    cfg: UpdatesConfig,
    topics: crate::topics::Topics,
    outbox: Arc<Outbox>,
    inventory: Arc<Inventory>,
    registry: RegistryClient,
    state_dir: Option<StateDir>,
    images: HashMap<(String, String), Result<Arc<ImageInspect>, String>>,
    results: BTreeMap<String, KeyResult>,
    published: HashMap<Key, UpdateStatus>,
    published_versions: HashMap<Key, Versions>,
    /// `updates.ignore`: names never checked.
    ignore: globset::GlobSet,
    /// `updates.auto`: names updated automatically.
    auto: globset::GlobSet,
    /// Image creation times by `name@manifest` (`updates.min_age`).
    created: HashMap<String, Option<u64>>,
    /// When statuses whose automatic update waits are looked at again.
    auto_recheck: Option<Instant>,
    /// Registries whose credential helper failed, with why.
    credential_problems: HashMap<String, String>,
}

impl Watcher {
    pub fn new(
        cfg: &Config,
        outbox: Arc<Outbox>,
        inventory: Arc<Inventory>,
        state_dir: Option<StateDir>,
    ) -> Result<Self, RegistryError> {
        let registry = registry_client(&cfg.updates)?;
        let results = state_dir
            .as_ref()
            .and_then(|d| std::fs::read(d.path().join("updates.json")).ok())
            .and_then(|b| serde_json::from_slice::<Persisted>(&b).ok())
            .map(|p| p.results)
            .unwrap_or_default();
        Ok(Self {
            cfg: cfg.updates.clone(),
            topics: crate::topics::Topics::new(cfg.mqtt.base_topic.clone()),
            outbox,
            inventory,
            registry,
            state_dir,
            images: HashMap::new(),
            results,
            published: HashMap::new(),
            published_versions: HashMap::new(),
            // Validated at load time.
            ignore: crate::filter::glob_set("updates.ignore", &cfg.updates.ignore)
                .unwrap_or_else(|_| globset::GlobSet::empty()),
            auto: crate::filter::glob_set("updates.auto", &cfg.updates.auto)
                .unwrap_or_else(|_| globset::GlobSet::empty()),
            created: HashMap::new(),
            auto_recheck: None,
            credential_problems: credential_problems(&cfg.updates),
        })
    }

    fn save(&self) {
        let Some(dir) = &self.state_dir else { return };
        let p = Persisted {
            results: self.results.clone(),
        };
        let r = serde_json::to_vec(&p)
            .map_err(std::io::Error::other)
            .and_then(|b| dir.write_atomic("updates.json", &b));
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot save update results");
        }
    }

    pub async fn run(
        mut self,
        token: CancellationToken,
        requests: &mut mpsc::Receiver<CheckRequest>,
        mut resync: tokio::sync::watch::Receiver<u64>,
    ) {
        resync.mark_unchanged();
        let mut next_round = Instant::now() + jitter(self.cfg.interval);
        // Started by a reload: the containers already known get statuses
        // under the new settings at once (fresh results reused).
        self.inventory.mark_all_changed();
        let mut debounce: Option<Instant> = Some(Instant::now());
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep_until(next_round) => {
                    let _ = self.round(&CheckScope::All, None, false).await;
                    next_round = Instant::now() + jitter(self.cfg.interval);
                }
                _ = self.inventory.notify.notified() => {
                    let wait = if self.inventory.take_urgent() { Duration::ZERO } else { INVENTORY_DEBOUNCE };
                    let at = Instant::now() + wait;
                    debounce = Some(debounce.map_or(at, |d| d.min(at)));
                }
                _ = sleep_until_opt(debounce) => {
                    debounce = None;
                    let changed = self.inventory.take_changed();
                    if !changed.is_empty() {
                        // New or changed containers: fresh results are reused, the rest is checked.
                        let _ = self.round(&CheckScope::All, Some(&changed), false).await;
                    }
                }
                Some((scope, reply)) = requests.recv() => {
                    let r = self.round(&scope, None, true).await;
                    let _ = reply.send(r);
                }
                Ok(()) = resync.changed() => self.republish(),
                _ = sleep_until_opt(self.auto_recheck) => {
                    self.auto_recheck = None;
                    let waiting: BTreeSet<Key> = self
                        .published
                        .iter()
                        .filter(|(_, s)| s.auto_waits.is_some())
                        .map(|(k, _)| k.clone())
                        .collect();
                    let _ = self.round(&CheckScope::All, Some(&waiting), false).await;
                }
            }
        }
    }

    async fn image(
        &mut self,
        ep: &str,
        client: &Arc<DockerClient>,
        id: &str,
    ) -> Result<Arc<ImageInspect>, String> {
        let key = (ep.to_string(), id.to_string());
        if let Some(Ok(i)) = self.images.get(&key) {
            return Ok(i.clone());
        }
        let r = match client.image_inspect(id).await {
            Ok(Some(i)) => Ok(Arc::new(i)),
            Ok(None) => Err("the running image is no longer on the engine".to_string()),
            Err(e) => Err(format!("cannot inspect the image: {e}")),
        };
        self.images.insert(key, r.clone());
        r
    }

    /// After a full round: results, image facts and statuses of references,
    /// images and containers no longer in use are dropped (and not persisted).
    fn forget_unused(&mut self, classified: &[Classified]) {
        let refs: BTreeSet<String> = classified
            .iter()
            .filter_map(|(_, _, _, c, _)| match c {
                Class::Tracked { reference, .. } => Some(key_of(reference)),
                _ => None,
            })
            .collect();
        let images: BTreeSet<(String, String)> = classified
            .iter()
            .map(|((ep, _), w, _, _, _)| (ep.clone(), w.image_id.clone()))
            .collect();
        let keys: BTreeSet<&Key> = classified.iter().map(|(k, _, _, _, _)| k).collect();
        let before = self.results.len();
        self.results.retain(|k, _| refs.contains(k));
        self.images.retain(|k, _| images.contains(k));
        self.published.retain(|k, _| keys.contains(k));
        self.published_versions.retain(|k, _| keys.contains(k));
        if self.results.len() != before {
            self.save();
        }
    }

    /// After a broker reconnect (or HA's birth): every status again, for the
    /// containers that still exist.
    fn republish(&self) {
        for (key, v) in &self.published_versions {
            let topic = self.topics.container_versions(&key.0, &key.1);
            let payload = serde_json::to_vec(v).unwrap_or_default();
            let outbox = self.outbox.clone();
            self.inventory
                .publish_if_present(key, || outbox.retain(topic, payload));
        }
        for (key, status) in &self.published {
            let topic = self.topics.container_update(&key.0, &key.1);
            let payload = serde_json::to_vec(status).unwrap_or_default();
            let outbox = self.outbox.clone();
            self.inventory
                .publish_if_present(key, || outbox.retain(topic, payload));
        }
    }

    /// Classifies, checks what is due (or everything in scope when `force`), publishes.
    async fn round(
        &mut self,
        scope: &CheckScope,
        only: Option<&BTreeSet<Key>>,
        force: bool,
    ) -> Result<(), String> {
        let round_started = Instant::now();
        let classified = self.classify_in_scope(scope, only).await?;
        if matches!(scope, CheckScope::All) && only.is_none() {
            self.forget_unused(&classified);
        }
        let due = self.due_checks(&classified, force);
        let checked = due.len();
        if !due.is_empty() {
            self.check_references(due).await;
        }
        self.publish_statuses(classified).await;
        if checked > 0 {
            let m = crate::metrics::get();
            m.update_rounds.inc();
            m.update_last_round.set(unix_now() as i64);
            let errors = self.results.values().filter(|r| r.error.is_some()).count();
            m.update_round_errors.set(errors as i64);
            tracing::info!(
                references = checked,
                elapsed_ms = round_started.elapsed().as_millis() as u64,
                "update round done"
            );
        }
        Ok(())
    }

    /// The containers in scope with their image facts, classes and whether a
    /// recreate is pending (the tag names another local image now).
    async fn classify_in_scope(
        &mut self,
        scope: &CheckScope,
        only: Option<&BTreeSet<Key>>,
    ) -> Result<Vec<Classified>, String> {
        let (clients, containers) = self.inventory.snapshot();
        let in_scope: Vec<(Key, Watched)> = containers
            .into_iter()
            .filter(|((ep, ct), _)| match scope {
                CheckScope::All => true,
                CheckScope::Endpoint(e) => e == ep,
                CheckScope::Container(e, c) => e == ep && c == ct,
            })
            .filter(|(k, _)| only.is_none_or(|o| o.contains(k)))
            .collect();
        if let CheckScope::Container(ep, ct) = scope
            && in_scope.is_empty()
        {
            return Err(format!("no container `{ct}` on endpoint `{ep}`"));
        }
        // Image facts and classes.
        let mut classified: Vec<Classified> = Vec::new();
        for ((ep, ct), w) in in_scope {
            let Some(client) = clients.get(&ep).cloned() else {
                continue;
            };
            let image = self.image(&ep, &client, &w.image_id).await;
            let ignored = w.labels.get(UPDATES_LABEL).is_some_and(|v| v == "false")
                || self.ignore.is_match(&ct);
            let class = match &image {
                _ if ignored => Class::Ignored,
                Ok(i) => classify(
                    &w.config_image,
                    &i.repo_digests,
                    &i.id,
                    client.containerd_store(),
                ),
                Err(e) => Class::Unknown(e.clone()),
            };
            // Pending recreate: the tag now names another local image than the running one.
            let pending = match (&class, client.image_inspect(&w.config_image).await) {
                (Class::Tracked { .. }, Ok(Some(tagged))) => tagged.id != w.image_id,
                _ => false,
            };
            classified.push(((ep, ct), w, image.ok(), class, pending));
        }
        Ok(classified)
    }

    /// One check per distinct reference: those whose last answer is stale (a
    /// local build's "no such tag" daily), asked again, or all when `force`.
    fn due_checks(
        &mut self,
        classified: &[Classified],
        force: bool,
    ) -> BTreeMap<String, (Reference, bool)> {
        let stale_before = unix_now().saturating_sub(self.cfg.interval.as_secs() * 9 / 10);
        let mut due: BTreeMap<String, (Reference, bool)> = BTreeMap::new();
        let recheck = self.inventory.take_recheck();
        let unproven_stale_before = unix_now().saturating_sub(UNPROVEN_RECHECK.as_secs());
        for (key, w, _, class, _) in classified {
            if let Class::Tracked {
                reference,
                unproven,
                ..
            } = class
            {
                let k = key_of(reference);
                let follows = w.labels.contains_key(tagging::FOLLOW_LABEL);
                let fresh = self.results.get(&k).is_some_and(|r| {
                    // A tag the registry does not have, on an image that never
                    // proved it came from one: a local build, asked again daily.
                    (*unproven && r.not_found && r.checked_unix >= unproven_stale_before)
                        || (r.checked_unix >= stale_before
                            && (!follows || r.tags.is_some() || r.error.is_some()))
                });
                if force || !fresh || recheck.contains(key) {
                    let e = due.entry(k).or_insert((reference.clone(), false));
                    e.1 |= follows;
                }
            }
        }
        due
    }

    /// Asks the registries (bounded concurrency) and keeps their answers.
    async fn check_references(&mut self, due: BTreeMap<String, (Reference, bool)>) {
        tracing::info!(references = due.len(), "checking image references");
        let registry = &self.registry;
        type Answer = (
            String,
            String,
            Result<(Remote, Option<Vec<String>>), RegistryError>,
        );
        let answers: Vec<Answer> = stream::iter(due)
            .map(|(k, (r, follows))| async move {
                let a = match registry.head(&r).await {
                    Ok(remote) if follows => registry.tags(&r).await.map(|t| (remote, Some(t))),
                    Ok(remote) => Ok((remote, None)),
                    Err(e) => Err(e),
                };
                (k, r.registry.clone(), a)
            })
            .buffer_unordered(GLOBAL_CONCURRENCY)
            .collect()
            .await;
        let (at, unix) = (now_rfc3339(), unix_now());
        for (k, host, a) in answers {
            let mut known = self
                .results
                .get(&k)
                .map(|r| r.known_digests.clone())
                .unwrap_or_default();
            if let Ok((remote, _)) = &a {
                known.retain(|d| *d != remote.digest);
                known.push(remote.digest.clone());
                if known.len() > KNOWN_DIGESTS {
                    known.remove(0);
                }
            }
            let r = match a {
                Ok((remote, tags)) => KeyResult {
                    known_digests: known,
                    unreachable: false,
                    remote: Some(remote.digest),
                    media_type: Some(remote.media_type),
                    error: None,
                    not_found: false,
                    checked_at: at.clone(),
                    checked_unix: unix,
                    tags,
                },
                Err(e) => {
                    tracing::warn!(reference = %k, error = %e, "update check failed");
                    // A credential helper that failed is the likely cause: said first.
                    let error = match self.credential_problems.get(&host) {
                        Some(p) => format!("{p}; {e}"),
                        None => e.to_string(),
                    };
                    KeyResult {
                        known_digests: known,
                        unreachable: matches!(
                            e,
                            RegistryError::Connect(_) | RegistryError::Timeout
                        ),
                        remote: None,
                        media_type: None,
                        not_found: e == RegistryError::NotFound,
                        error: Some(error),
                        checked_at: at.clone(),
                        checked_unix: unix,
                        tags: None,
                    }
                }
            };
            self.results.insert(k, r);
        }
        self.save();
    }

    /// Publishes each container's status (and versions) when it changed,
    /// and tells the endpoints which automatic updates are due.
    async fn publish_statuses(&mut self, classified: Vec<Classified>) {
        let keys: BTreeSet<Key> = classified.iter().map(|c| c.0.clone()).collect();
        let mut due = BTreeMap::new();
        let in_window = self.cfg.window().is_none_or(|w| w.contains_now());
        for (key, w, image, class, pending) in classified {
            let versions = self.versions(&w, &class);
            let tracked = match &class {
                Class::Tracked { reference, .. } => Some(reference.clone()),
                _ => None,
            };
            let platform = image.as_deref().map(platform_of);
            let mut status = self.status(&w, image.as_deref(), class, pending).await;
            (status.in_progress, status.progress) = self.inventory.in_progress(&key);
            self.decide(&key, &w, &mut status);
            let facts = facts_of(&status, versions.as_ref());
            if let (Some(r), true) = (&tracked, status.auto && status.update_available) {
                let tag = facts.latest_is_tag;
                if let Some(job) = self
                    .auto_job(r, &mut status, platform.as_ref(), in_window, tag)
                    .await
                {
                    due.insert(key.clone(), job);
                }
            }
            self.inventory.set_available(&key, status.update_available);
            self.inventory.set_facts(&key, facts);
            self.publish_versions(&key, versions);
            if self.published.get(&key) != Some(&status) {
                let topic = self.topics.container_update(&key.0, &key.1);
                let payload = serde_json::to_vec(&status).unwrap_or_default();
                let outbox = self.outbox.clone();
                self.inventory
                    .publish_if_present(&key, || outbox.retain(topic, payload));
                self.published.insert(key, status);
            }
        }
        self.inventory.set_auto_due(&keys, due);
        self.auto_recheck = self
            .published
            .values()
            .any(|s| s.auto_waits.is_some())
            .then(|| Instant::now() + AUTO_RECHECK);
    }

    /// The user's and past updates' decisions, the release link and title,
    /// and whether the container updates itself (SPEC §17).
    fn decide(&self, key: &Key, w: &Watched, s: &mut UpdateStatus) {
        s.title = release::title(&w.labels, &w.config_image);
        s.auto = auto::wanted(&w.labels, &key.1, &self.auto);
        s.compose_image = compose::drift(&w.labels, &w.config_image);
        if let Some(line) = self.inventory.check_failed(key) {
            s.blocked = Some(format!("the pre-update check failed: {line}"));
        }
        if let (true, Some(latest)) = (s.update_available, s.latest_version.clone()) {
            match self.inventory.judge(key, &latest) {
                Verdict::Skipped => {
                    s.status = "skipped";
                    s.update_available = false;
                }
                Verdict::Blocked(why) => {
                    s.blocked.get_or_insert(why);
                }
                Verdict::None => {}
            }
        }
        let shown = if s.update_available {
            s.latest_version.as_deref()
        } else {
            s.installed_version.as_deref()
        };
        s.release_url = release::release_url(&w.labels, shown);
    }

    /// An automatic update of a container whose status offers one: due now,
    /// or why it waits (in the status).
    async fn auto_job(
        &mut self,
        reference: &Reference,
        s: &mut UpdateStatus,
        platform: Option<&Platform>,
        in_window: bool,
        latest_is_tag: bool,
    ) -> Option<AutoJob> {
        if s.blocked.is_some() || s.in_progress {
            return None;
        }
        let latest = s.latest_version.clone()?;
        // Under tag following the new version is a tag; else the same tag's new digest.
        let tag = latest_is_tag.then(|| latest.clone());
        let created = match self.cfg.min_age {
            Some(_) if in_window => {
                let manifest = tag.clone().or_else(|| s.remote_digest.clone())?;
                self.created(reference, &manifest, platform).await
            }
            _ => None,
        };
        s.auto_waits = auto::waits(in_window, self.cfg.min_age, created, unix_now());
        s.auto_waits.is_none().then_some(AutoJob {
            version: latest,
            tag,
        })
    }

    /// The creation time of an image manifest (tag or digest), asked of
    /// the registry once per manifest.
    async fn created(
        &mut self,
        reference: &Reference,
        manifest: &str,
        platform: Option<&Platform>,
    ) -> Option<u64> {
        let key = format!("{}@{manifest}", reference.name());
        if let Some(c) = self.created.get(&key) {
            return *c;
        }
        let r = self
            .registry
            .image_created(reference, manifest, platform)
            .await;
        let c = match r {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(reference = %key, error = %e, "cannot read the new image's creation time");
                return None;
            }
        };
        if self.created.len() >= MAX_CREATED {
            self.created.clear();
        }
        self.created.insert(key, c);
        c
    }

    /// `<ct>/versions` of a container that follows tags, when it changed;
    /// cleared when it no longer follows.
    fn publish_versions(&mut self, key: &Key, versions: Option<Versions>) {
        if self.published_versions.get(key) == versions.as_ref() {
            return;
        }
        let topic = self.topics.container_versions(&key.0, &key.1);
        let payload = versions
            .as_ref()
            .map(|v| serde_json::to_vec(v).unwrap_or_default())
            .unwrap_or_default();
        let outbox = self.outbox.clone();
        self.inventory
            .publish_if_present(key, || outbox.retain(topic, payload));
        match versions {
            Some(v) => self.published_versions.insert(key.clone(), v),
            None => self.published_versions.remove(key),
        };
    }

    /// The tags a container under tag following may move to (SPEC §17).
    fn versions(&self, w: &Watched, class: &Class) -> Option<Versions> {
        let Class::Tracked { reference, .. } = class else {
            return None;
        };
        let tag = reference.tag.as_ref()?;
        let follow = Follow::from_labels(|k| w.labels.get(k).map(String::as_str)).ok()??;
        let tags = self.results.get(&key_of(reference))?.tags.as_ref()?;
        let available = tagging::available(tag, tags, &follow)?;
        Some(Versions {
            current: tag.clone(),
            available,
        })
    }

    /// The update status of one watched container, from its class (SPEC §4.3).
    async fn status(
        &self,
        w: &Watched,
        image: Option<&ImageInspect>,
        class: Class,
        pending: bool,
    ) -> UpdateStatus {
        let label = image
            .and_then(|i| i.config.labels.get(VERSION_LABEL))
            .filter(|v| !v.is_empty())
            .cloned();
        let s = UpdateStatus {
            status: "unknown",
            image: w.config_image.clone(),
            pending_recreate: pending,
            ..Default::default()
        };
        match class {
            Class::Tracked {
                reference,
                local_digests,
                unproven,
            } => {
                let tracked = (reference, local_digests, unproven);
                self.tracked_status(s, w, image, label, tracked, pending)
                    .await
            }
            class => untracked_status(s, w, class, label),
        }
    }

    /// A container checked against its registry: the registry's answer
    /// (digests, tags when following), this platform's child of an index,
    /// and the version the new image carries.
    async fn tracked_status(
        &self,
        mut s: UpdateStatus,
        w: &Watched,
        image: Option<&ImageInspect>,
        label: Option<String>,
        (reference, local_digests, unproven): (Reference, BTreeSet<String>, bool),
        pending: bool,
    ) -> UpdateStatus {
        let Some(r) = self.results.get(&key_of(&reference)) else {
            s.error = Some("not checked yet".into());
            return s;
        };
        let proven = r.known_digests.iter().any(|d| local_digests.contains(d));
        if unproven && !proven && r.error.is_some() {
            // Only an unreachable registry leaves the question open; a
            // refusal (credentials, rate limit) is reported as it is.
            let built_here = r.unreachable && image.is_some_and(|i| !i.parent.is_empty());
            let other_names = image.is_some_and(|i| {
                i.repo_tags.iter().chain(&i.repo_digests).any(|n| {
                    let name = n.split('@').next().unwrap_or(n);
                    Reference::parse(name).is_some_and(|o| o.name() != reference.name())
                })
            });
            if let Some(class) = unproven_verdict(&reference, r.not_found, built_here, other_names)
            {
                return Box::pin(self.status(w, image, class, pending)).await;
            }
        }
        s.checked_at = Some(r.checked_at.clone());
        s.local_digest = local_digests.iter().next().cloned();
        let (Some(remote), None) = (&r.remote, &r.error) else {
            s.status = if r.not_found { "unknown" } else { "error" };
            s.error = r.error.clone();
            return s;
        };
        s.remote_digest = Some(remote.clone());
        let follow = match Follow::from_labels(|k| w.labels.get(k).map(String::as_str)) {
            Ok(f) => f,
            Err(e) => {
                s.status = "error";
                s.error = Some(e);
                return s;
            }
        };
        let followed_tag = follow.as_ref().and(reference.tag.clone());
        if let (Some(f), Some(tag)) = (&follow, &followed_tag) {
            match r.tags.as_deref().and_then(|t| tagging::newest(tag, t, f)) {
                Some(newest) if newest != *tag => {
                    s.status = "update_available";
                    s.update_available = true;
                    s.installed_version = label.clone().or(Some(tag.clone()));
                    s.latest_version = Some(newest);
                    return s;
                }
                Some(_) => {}
                None => {
                    s.error = Some(format!(
                        "tag `{tag}` has no version shape to follow; checking its digest only"
                    ));
                }
            }
        }
        let platform = image.map(platform_of);
        let verdict = if local_digests.contains(remote) {
            s.local_digest = Some(remote.clone());
            Ok((false, remote.clone(), remote.clone()))
        } else if r.media_type.as_deref().is_some_and(|m| {
            Remote {
                digest: String::new(),
                media_type: m.into(),
            }
            .is_index()
        }) {
            self.resolve(
                &reference,
                remote,
                &local_digests,
                platform.as_ref(),
                &w.image_id,
            )
            .await
        } else {
            Ok((
                true,
                s.local_digest.clone().unwrap_or_default(),
                remote.clone(),
            ))
        };
        match verdict {
            Ok((update, installed, latest)) => {
                s.status = if update {
                    "update_available"
                } else {
                    "up_to_date"
                };
                s.update_available = update;
                // The label, else the tag when following tags, else the digest.
                let version = label.clone().or(followed_tag.clone());
                s.installed_version = version.or(Some(short(&installed)));
                s.latest_version = if !update {
                    s.installed_version.clone()
                } else if label.is_some() {
                    // The new image's own version label (one manifest + config
                    // GET per new digest), else its digest.
                    match self
                        .registry
                        .image_label(&reference, &latest, VERSION_LABEL)
                        .await
                    {
                        Ok(Some(v)) => Some(v),
                        _ => Some(short(&latest)),
                    }
                } else {
                    // Same tag, new digest: the digest is what changed.
                    Some(short(&latest))
                };
            }
            Err(e) => {
                s.status = "error";
                s.error = Some(e.to_string());
            }
        }
        s
    }

    /// The remote is an index whose digest is not local: compare the children for
    /// this platform, so a change on another architecture is not an update.
    /// Returns (update?, installed digest, latest digest).
    async fn resolve(
        &self,
        r: &Reference,
        remote: &str,
        local: &BTreeSet<String>,
        platform: Option<&Platform>,
        image_id: &str,
    ) -> Result<(bool, String, String), RegistryError> {
        let Some(p) = platform else {
            return Ok((
                true,
                local.iter().next().cloned().unwrap_or_default(),
                remote.to_string(),
            ));
        };
        let Some(remote_child) = self.registry.platform_child(r, remote, p).await? else {
            return Err(RegistryError::Decode(format!(
                "the image has no {}/{} variant anymore",
                p.os, p.architecture
            )));
        };
        if local.contains(&remote_child) {
            return Ok((false, remote_child.clone(), remote_child));
        }
        // The same image may be known under several digests (Docker and OCI
        // manifests, several indexes): any local index resolving to the remote
        // child means this platform did not change.
        let mut installed = None;
        for d in local {
            if let Ok(Some(c)) = self.registry.platform_child(r, d, p).await {
                if c == remote_child {
                    return Ok((false, c.clone(), c));
                }
                installed.get_or_insert(c);
            }
        }
        // Last word: the remote child's config is the running image (classic store).
        let (_, body) = self.registry.get_manifest(r, &remote_child).await?;
        let config = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["config"]["digest"].as_str().map(String::from));
        let installed =
            installed.unwrap_or_else(|| local.iter().next().cloned().unwrap_or_default());
        Ok(match config {
            Some(c) if c == image_id => (false, remote_child.clone(), remote_child),
            _ => (true, installed, remote_child),
        })
    }
}

/// What the inventory keeps of a published status.
fn facts_of(s: &UpdateStatus, versions: Option<&Versions>) -> Facts {
    Facts {
        status: s.status,
        installed: s.installed_version.clone(),
        latest: s.latest_version.clone(),
        latest_is_tag: versions.is_some_and(|v| {
            s.latest_version
                .as_ref()
                .is_some_and(|l| *l == v.current || v.available.contains(l))
        }),
        versions: versions
            .map(|v| {
                std::iter::once(v.current.clone())
                    .chain(v.available.clone())
                    .collect()
            })
            .unwrap_or_default(),
        compose_image: s.compose_image.clone(),
    }
}

fn platform_of(i: &ImageInspect) -> Platform {
    Platform {
        os: i.os.clone(),
        architecture: i.architecture.clone(),
        variant: i.variant.clone().filter(|v| !v.is_empty()),
    }
}

fn key_of(r: &Reference) -> String {
    format!("{}:{}", r.name(), r.tag.as_deref().unwrap_or("latest"))
}

/// `interval` ± up to 5 %, so many instances do not ask at the same moment.
fn jitter(interval: Duration) -> Duration {
    let spread = interval.as_millis() as u64 / 20;
    let off = fastrand::u64(0..=spread.saturating_mul(2));
    (interval + Duration::from_millis(off)).saturating_sub(Duration::from_millis(spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_from_config_and_docker_config() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},"127.0.0.1:5000":{"auth":"dTpw"},"bad":{"auth":"!!"}}}"#,
        )
        .expect("write");
        let mut cfg = UpdatesConfig {
            docker_config: Some(path),
            ..Default::default()
        };
        cfg.registries.insert(
            "ghcr.io".into(),
            crate::config::RegistryCredentials {
                username: Some("me".into()),
                password: Some("pat".into()),
                password_file: None,
            },
        );
        let c = credentials(&cfg);
        assert_eq!(
            c["docker.io"],
            Credentials {
                username: "hub".into(),
                password: "secret".into()
            }
        );
        assert_eq!(c["127.0.0.1:5000"].username, "u");
        assert_eq!(c["ghcr.io"].password, "pat");
        assert!(!c.contains_key("bad"));
    }

    #[test]
    fn statuses_leave_out_empty_keys_and_jitter_is_bounded() {
        let s = UpdateStatus {
            status: "local_build",
            update_available: false,
            image: "app:dev".into(),
            installed_version: Some("sha256:0123456789ab".into()),
            latest_version: Some("sha256:0123456789ab".into()),
            ..Default::default()
        };
        let v = serde_json::to_value(&s).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("obj")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "image",
                "in_progress",
                "installed_version",
                "latest_version",
                "status",
                "update_available",
            ]
        );
        assert!(v.as_object().expect("obj").values().all(|x| !x.is_null()));
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(3600));
            assert!(j >= Duration::from_secs(3420) && j <= Duration::from_secs(3780));
        }
        assert_eq!(short("sha256:0123456789abcdef"), "sha256:0123456789ab");
    }
}
