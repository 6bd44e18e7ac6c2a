//! The `update` command on a plain engine (SPEC §6): pull the image again,
//! recreate the container with the same configuration, start it; if the new
//! one does not run, put the old one back as it was.
//!
//! The old container is kept (stopped, renamed `<name>.dockside-old`) until
//! the new one runs, so a failed update costs a restart, never the container.
//! Settings the old *image* supplied (env, labels, command, ports, volumes…)
//! are left out of the new container's config so the new image's own apply;
//! what the user set is kept, anonymous volumes included (their data stays).

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{DockerClient, DockerError};

/// Suffix of the old container's name while an update runs. Names with it
/// are not mirrored (filter.rs), so the swap is invisible on MQTT.
pub use crate::filter::OLD_SUFFIX;
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The image was current: nothing recreated.
    UpToDate,
    /// Recreated from the new image; the new container's id.
    Updated { id: String, running: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum RecreateError {
    #[error("{0}")]
    Refused(String),
    #[error("{step}: {err}")]
    Engine {
        step: &'static str,
        err: DockerError,
    },
    #[error("the new container did not start ({0}); the previous one was restored")]
    RolledBack(String),
    #[error("the previous image {0} is no longer on the engine: nothing to roll back to")]
    ImageGone(String),
    #[error("cannot check the tag in the registry: {0}")]
    Registry(String),
    /// The pre-update check said no (SPEC §17): nothing stopped or pulled.
    #[error("the pre-update check failed: {0}")]
    Blocked(String),
    #[error(
        "the new container did not start ({0}) and restoring the previous one failed ({1}); it is kept as `<name>{OLD_SUFFIX}`"
    )]
    RestoreFailed(String, String),
}

fn engine(step: &'static str) -> impl FnOnce(DockerError) -> RecreateError {
    move |err| RecreateError::Engine { step, err }
}

/// `image[:tag]` → (image, tag) for `/images/create`; digests are refused.
pub fn split_reference(reference: &str) -> Result<(String, String), RecreateError> {
    let r = reference.trim();
    if r.contains('@') {
        return Err(RecreateError::Refused(
            "the image is pinned by digest: there is nothing newer to pull".into(),
        ));
    }
    if r.starts_with("sha256:") || r.is_empty() {
        return Err(RecreateError::Refused(
            "the container was created from an image ID, not a name: it cannot be pulled".into(),
        ));
    }
    // A `:` after the last `/` is the tag (before it, it is a registry port).
    let last = r.rsplit('/').next().unwrap_or(r);
    match last.rfind(':') {
        Some(i) => {
            let cut = r.len() - last.len() + i;
            Ok((r[..cut].to_string(), r[cut + 1..].to_string()))
        }
        None => Ok((r.to_string(), "latest".to_string())),
    }
}

/// The `/containers/create` body that recreates `inspect` from `reference`.
/// `old_image` is the old image's inspect (`Null` when it is gone). Returns the
/// body and the networks to connect after creation (the API takes one at create).
pub fn create_body(
    inspect: &Value,
    old_image: &Value,
    reference: &str,
) -> (Value, Vec<(String, Value)>) {
    let mut cfg: Map<String, Value> = inspect["Config"].as_object().cloned().unwrap_or_default();
    let img = &old_image["Config"];
    cfg.insert("Image".into(), json!(reference));
    for key in [
        "Cmd",
        "Entrypoint",
        "WorkingDir",
        "User",
        "Healthcheck",
        "StopSignal",
        "Shell",
    ] {
        if cfg
            .get(key)
            .is_some_and(|v| !v.is_null() && img.get(key) == Some(v))
        {
            cfg.remove(key);
        }
    }
    if let Some(Value::Array(env)) = cfg.get_mut("Env") {
        let from_image = img["Env"].as_array().cloned().unwrap_or_default();
        env.retain(|e| !from_image.contains(e));
    }
    for key in ["Labels", "ExposedPorts", "Volumes"] {
        if let Some(Value::Object(m)) = cfg.get_mut(key) {
            let from_image = img[key].as_object().cloned().unwrap_or_default();
            m.retain(|k, v| from_image.get(k) != Some(v));
        }
    }
    // A hostname Docker generated (the short id) must not stick to the new container.
    let id = inspect["Id"].as_str().unwrap_or_default();
    if let Some(h) = cfg.get("Hostname").and_then(Value::as_str)
        && !h.is_empty()
        && id.starts_with(h)
    {
        cfg.remove("Hostname");
    }
    let mut host = inspect["HostConfig"].clone();
    // Anonymous volumes keep their data: mount the same volumes again.
    let named: Vec<String> = host["Binds"]
        .as_array()
        .map(|b| {
            b.iter()
                .filter_map(|x| x.as_str()?.split(':').nth(1).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut extra_binds = Vec::new();
    for m in inspect["Mounts"].as_array().cloned().unwrap_or_default() {
        let (Some("volume"), Some(name), Some(dest)) = (
            m["Type"].as_str(),
            m["Name"].as_str(),
            m["Destination"].as_str(),
        ) else {
            continue;
        };
        let declared = host["Mounts"]
            .as_array()
            .is_some_and(|ms| ms.iter().any(|x| x["Target"] == dest));
        if !named.iter().any(|n| n == dest) && !declared {
            let rw = if m["RW"] == json!(false) { ":ro" } else { "" };
            extra_binds.push(json!(format!("{name}:{dest}{rw}")));
        }
    }
    if !extra_binds.is_empty() {
        match host.get_mut("Binds") {
            Some(Value::Array(b)) => b.extend(extra_binds),
            _ => host["Binds"] = Value::Array(extra_binds),
        }
    }
    let mut body = Value::Object(cfg);
    body["HostConfig"] = host;
    // Networks: the primary one at create, the others connected afterwards.
    let mode = inspect["HostConfig"]["NetworkMode"]
        .as_str()
        .unwrap_or_default();
    let nets = inspect["NetworkSettings"]["Networks"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let short = &id[..id.len().min(12)];
    let endpoint = |n: &Value| {
        let aliases: Vec<Value> = n["Aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x.as_str().is_some_and(|s| s != short && !id.starts_with(s)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let mut e = json!({ "Aliases": aliases });
        for k in ["IPAMConfig", "Links", "DriverOpts"] {
            if !n[k].is_null() {
                e[k] = n[k].clone();
            }
        }
        e
    };
    let mut extra = Vec::new();
    let shared_stack = mode == "host" || mode == "none" || mode.starts_with("container:");
    if !shared_stack && !nets.is_empty() {
        let primary = if nets.contains_key(mode) {
            mode.to_string()
        } else if mode == "default" && nets.contains_key("bridge") {
            "bridge".to_string()
        } else {
            nets.keys().next().cloned().unwrap_or_default()
        };
        let mut eps = Map::new();
        for (name, n) in &nets {
            if *name == primary {
                eps.insert(name.clone(), endpoint(n));
            } else {
                extra.push((name.clone(), json!({ "EndpointConfig": endpoint(n) })));
            }
        }
        body["NetworkingConfig"] = json!({ "EndpointsConfig": eps });
    }
    (body, extra)
}

/// What to recreate the container from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its own reference, pulled again (the newest of that tag).
    Current,
    /// Another tag of the same repository, pulled (`update` with `version`).
    Tag(String),
    /// An image already on the engine, by ID, under this reference (`rollback`).
    Image { id: String, reference: String },
    /// Another image reference, pulled (`sync`: what the compose file names).
    Reference(String),
}

/// How one `update`/`rollback` runs.
pub struct Plan<'a> {
    pub target: Target,
    pub registry_auth: Option<&'a str>,
    pub pull_timeout: Duration,
    /// The new container must run (and be healthy) this long.
    pub verify_for: Duration,
    /// Pull progress, 0–99 (SPEC §14).
    pub progress: &'a (dyn Fn(u8) + Send + Sync),
}

/// What an operation went from and to, for the history (SPEC §14).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swap {
    pub from_image: Option<String>,
    pub from_reference: Option<String>,
    pub from_version: Option<String>,
    pub to_image: Option<String>,
    pub to_reference: Option<String>,
    pub to_version: Option<String>,
}

/// Extra time a healthcheck gets, past `verify_for`, to first say `healthy`.
const HEALTH_GRACE: Duration = Duration::from_secs(60);
/// Compose v2 compares this label with the image's ID on `up`: kept in step
/// so `docker compose up -d` does not recreate an updated container again.
const COMPOSE_IMAGE_LABEL: &str = "com.docker.compose.image";
const VERSION_LABEL: &str = "org.opencontainers.image.version";

/// The version an image shows: its OCI version label, else the reference's
/// tag, else the short ID.
pub fn version_of(image: &Value, reference: &str) -> Option<String> {
    if let Some(v) = image["Config"]["Labels"][VERSION_LABEL]
        .as_str()
        .filter(|v| !v.is_empty())
    {
        return Some(v.to_string());
    }
    if let Ok((_, tag)) = split_reference(reference) {
        return Some(tag);
    }
    image["Id"].as_str().map(|id| {
        let hex = id.trim_start_matches("sha256:");
        format!("sha256:{}", &hex[..hex.len().min(12)])
    })
}

/// The new container must stay up for `verify_for` — running, not
/// restarting, never restarted — and, when it has a healthcheck, say
/// `healthy` (within `verify_for` + [`HEALTH_GRACE`]) and never `unhealthy`.
pub async fn verify(client: &DockerClient, id: &str, verify_for: Duration) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let poll = (verify_for / 8).clamp(Duration::from_millis(100), Duration::from_millis(500));
    loop {
        let st = client
            .inspect_raw(id)
            .await
            .map_err(|e| format!("inspect: {e}"))?;
        let s = &st["State"];
        let restarts = st["RestartCount"].as_u64().unwrap_or(0);
        if s["Running"] != json!(true) || s["Restarting"] == json!(true) || restarts > 0 {
            let status = if s["Restarting"] == json!(true) || restarts > 0 {
                "restarting"
            } else {
                s["Status"].as_str().unwrap_or("not running")
            };
            return Err(format!(
                "it is {status} with exit code {}",
                s["ExitCode"].as_i64().unwrap_or(-1)
            ));
        }
        let health = s["Health"]["Status"].as_str();
        if health == Some("unhealthy") {
            let last = s["Health"]["Log"]
                .as_array()
                .and_then(|l| l.last())
                .and_then(|l| l["Output"].as_str())
                .map(|o| o.trim().chars().take(200).collect::<String>())
                .unwrap_or_default();
            return Err(format!("it turned unhealthy ({last})"));
        }
        let healthy = matches!(health, None | Some("healthy") | Some("none") | Some(""));
        let elapsed = started.elapsed();
        if elapsed >= verify_for && healthy {
            return Ok(());
        }
        if elapsed >= verify_for + HEALTH_GRACE {
            return Err(format!(
                "its healthcheck did not report healthy within {}",
                humantime::format_duration(verify_for + HEALTH_GRACE)
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

/// Pulls (unless rolling back) and recreates container `id` (named `name`).
/// The `Swap` tells what it went from and to, whatever the outcome.
pub async fn recreate(
    client: &DockerClient,
    id: &str,
    name: &str,
    plan: Plan<'_>,
) -> (Swap, Result<Outcome, RecreateError>) {
    let mut swap = Swap::default();
    let r = recreate_inner(client, id, name, plan, &mut swap).await;
    (swap, r)
}

async fn recreate_inner(
    client: &DockerClient,
    id: &str,
    name: &str,
    plan: Plan<'_>,
    swap: &mut Swap,
) -> Result<Outcome, RecreateError> {
    let old = Current::read(client, id, swap).await?;
    let reference = target_reference(&plan.target, &old.reference)?;
    swap.to_reference = Some(reference.clone());
    let new_image = new_image(client, &plan, &reference).await?;
    let new_image_id = new_image["Id"].as_str().unwrap_or_default().to_string();
    swap.to_image = Some(new_image_id.clone()).filter(|s| !s.is_empty());
    swap.to_version = version_of(&new_image, &reference);
    if new_image_id == old.image_id && reference == old.reference {
        return Ok(Outcome::UpToDate);
    }
    let (mut body, networks) = create_body(&old.inspect, &old.image, &reference);
    if let Some(Value::Object(labels)) = body.get_mut("Labels")
        && labels.contains_key(COMPOSE_IMAGE_LABEL)
    {
        labels.insert(COMPOSE_IMAGE_LABEL.into(), json!(new_image_id));
    }
    let swapped = Replace {
        client,
        id,
        name,
        was_running: old.inspect["State"]["Running"] == json!(true),
        verify_for: plan.verify_for,
    }
    .run(&body, &networks)
    .await;
    // A rollback moved the tag: when the swap was undone, point it back.
    if matches!(
        swapped,
        Err(RecreateError::RolledBack(_) | RecreateError::RestoreFailed(..))
    ) && let (Target::Image { .. }, Ok((r, t))) = (&plan.target, split_reference(&old.reference))
        && !old.image_id.is_empty()
    {
        let _ = client.tag_image(&old.image_id, &r, &t).await;
    }
    swapped
}

/// The container as it is before the recreate, and its image.
struct Current {
    inspect: Value,
    /// `Config.Image`: the reference it was created from.
    reference: String,
    image_id: String,
    image: Value,
}

impl Current {
    async fn read(client: &DockerClient, id: &str, swap: &mut Swap) -> Result<Self, RecreateError> {
        let inspect = client
            .inspect_raw(id)
            .await
            .map_err(engine("inspecting the container"))?;
        let reference = inspect["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let image_id = inspect["Image"].as_str().unwrap_or_default().to_string();
        let image = client
            .image_inspect_raw(&image_id)
            .await
            .unwrap_or(Value::Null);
        swap.from_image = Some(image_id.clone()).filter(|s| !s.is_empty());
        swap.from_reference = Some(reference.clone());
        swap.from_version = version_of(&image, &reference);
        Ok(Self {
            inspect,
            reference,
            image_id,
            image,
        })
    }
}

/// The reference the new container is created from.
fn target_reference(target: &Target, current: &str) -> Result<String, RecreateError> {
    Ok(match target {
        Target::Current => {
            split_reference(current)?;
            current.to_string()
        }
        Target::Tag(tag) => {
            let (repo, _) = split_reference(current)?;
            format!("{repo}:{tag}")
        }
        Target::Image { reference, .. } | Target::Reference(reference) => reference.clone(),
    })
}

/// The new image: pulled, or (a rollback) the previous one tagged again.
async fn new_image(
    client: &DockerClient,
    plan: &Plan<'_>,
    reference: &str,
) -> Result<Value, RecreateError> {
    let (repo, tag) = split_reference(reference)?;
    if let Target::Image { id: image_id, .. } = &plan.target {
        let img = match client.image_inspect_raw(image_id).await {
            Ok(i) => i,
            Err(DockerError::NotFound) => return Err(RecreateError::ImageGone(image_id.clone())),
            Err(e) => return Err(engine("inspecting the previous image")(e)),
        };
        // The reference names the old image again, so the container
        // keeps a name (not a bare ID) the watcher can check.
        client
            .tag_image(image_id, &repo, &tag)
            .await
            .map_err(engine("tagging the previous image"))?;
        return Ok(img);
    }
    client
        .pull(
            &repo,
            &tag,
            plan.registry_auth,
            plan.pull_timeout,
            plan.progress,
        )
        .await
        .map_err(engine("pulling the image"))?;
    client
        .image_inspect_raw(reference)
        .await
        .map_err(engine("inspecting the pulled image"))
}

/// The swap itself: stop the old container, rename it aside, create, start
/// and verify the new one; on failure the old one is put back.
struct Replace<'a> {
    client: &'a DockerClient,
    id: &'a str,
    name: &'a str,
    was_running: bool,
    verify_for: Duration,
}

impl Replace<'_> {
    async fn action(
        &self,
        what: &'static str,
        target: &str,
        query: &[(&str, &str)],
    ) -> Result<(), DockerError> {
        self.client
            .container_action(target, what, query, STOP_TIMEOUT + Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    async fn run(
        self,
        body: &Value,
        networks: &[(String, Value)],
    ) -> Result<Outcome, RecreateError> {
        let id = self.id;
        if self.was_running {
            self.action("stop", id, &[])
                .await
                .map_err(engine("stopping the container"))?;
        }
        let old_name = format!("{}{OLD_SUFFIX}", self.name);
        if let Err(e) = self.action("rename", id, &[("name", &old_name)]).await {
            if self.was_running {
                let _ = self.action("start", id, &[]).await;
            }
            return Err(RecreateError::Engine {
                step: "renaming the old container",
                err: e,
            });
        }
        match self.create_and_start(body, networks).await {
            Ok(new_id) => {
                if let Err(e) = self.client.remove_container(id).await {
                    tracing::warn!(container = %self.name, error = %e, "updated, but the old container could not be removed");
                }
                Ok(Outcome::Updated {
                    id: new_id,
                    running: self.was_running,
                })
            }
            Err((new_id, why)) => {
                if let Some(n) = new_id {
                    let _ = self.client.remove_container(&n).await;
                }
                match self.restore().await {
                    Ok(()) => Err(RecreateError::RolledBack(why)),
                    Err(e) => Err(RecreateError::RestoreFailed(why, e.to_string())),
                }
            }
        }
    }

    /// The new container; on failure its id (when created) and why.
    async fn create_and_start(
        &self,
        body: &Value,
        networks: &[(String, Value)],
    ) -> Result<String, (Option<String>, String)> {
        let new_id = self
            .client
            .create_container(self.name, body)
            .await
            .map_err(|e| (None, format!("create: {e}")))?;
        for (net, b) in networks {
            self.client
                .network_connect(
                    net,
                    &json!({"Container": new_id, "EndpointConfig": b["EndpointConfig"]}),
                )
                .await
                .map_err(|e| (Some(new_id.clone()), format!("network {net}: {e}")))?;
        }
        if self.was_running {
            self.action("start", &new_id, &[])
                .await
                .map_err(|e| (Some(new_id.clone()), format!("start: {e}")))?;
            verify(self.client, &new_id, self.verify_for)
                .await
                .map_err(|e| (Some(new_id.clone()), e))?;
        }
        Ok(new_id)
    }

    /// The old container back under its name, running if it was.
    async fn restore(&self) -> Result<(), DockerError> {
        self.action("rename", self.id, &[("name", self.name)])
            .await?;
        if self.was_running {
            self.action("start", self.id, &[]).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let ok = |r: &str| split_reference(r).expect(r);
        assert_eq!(ok("nginx"), ("nginx".into(), "latest".into()));
        assert_eq!(ok("nginx:1.27"), ("nginx".into(), "1.27".into()));
        assert_eq!(
            ok("127.0.0.1:5000/a/b:2"),
            ("127.0.0.1:5000/a/b".into(), "2".into())
        );
        assert_eq!(
            ok("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b".into(), "latest".into())
        );
        assert!(split_reference("nginx@sha256:abc").is_err());
        assert!(split_reference("sha256:abc").is_err());
        assert!(split_reference("").is_err());
    }

    #[test]
    fn body_keeps_user_settings_and_drops_image_defaults() {
        let id = "0123456789abcdef0123456789abcdef";
        let inspect = json!({
            "Id": id, "Image": "sha256:old",
            "Config": {"Hostname": "0123456789ab", "Image": "app:1",
                "Env": ["PATH=/bin", "MODE=prod"], "Cmd": ["serve"], "Entrypoint": null,
                "Labels": {"org.opencontainers.image.version": "1", "com.example.mine": "x"},
                "ExposedPorts": {"80/tcp": {}, "9000/tcp": {}}, "WorkingDir": "/app"},
            "HostConfig": {"NetworkMode": "appnet", "Binds": ["/srv/data:/data"],
                "RestartPolicy": {"Name": "unless-stopped"}, "PortBindings": {"80/tcp": [{"HostPort": "8080"}]}},
            "Mounts": [
                {"Type": "bind", "Source": "/srv/data", "Destination": "/data", "RW": true},
                {"Type": "volume", "Name": "f00d", "Destination": "/cache", "RW": true}],
            "NetworkSettings": {"Networks": {
                "appnet": {"Aliases": ["web", "0123456789ab"], "IPAMConfig": {"IPv4Address": "10.0.0.5"}},
                "backend": {"Aliases": ["web-b"]}}}
        });
        let image = json!({"Config": {"Env": ["PATH=/bin"], "Cmd": ["serve"], "WorkingDir": "/app",
            "Labels": {"org.opencontainers.image.version": "1"}, "ExposedPorts": {"80/tcp": {}}}});
        let (b, extra) = create_body(&inspect, &image, "app:1");
        assert_eq!(b["Image"], "app:1");
        assert_eq!(b["Env"], json!(["MODE=prod"]));
        assert!(b.get("Cmd").is_none() && b.get("WorkingDir").is_none());
        assert!(b.get("Hostname").is_none(), "generated hostname dropped");
        assert_eq!(b["Labels"], json!({"com.example.mine": "x"}));
        assert_eq!(b["ExposedPorts"], json!({"9000/tcp": {}}));
        assert_eq!(b["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
        assert_eq!(
            b["HostConfig"]["Binds"],
            json!(["/srv/data:/data", "f00d:/cache"])
        );
        assert_eq!(
            b["NetworkingConfig"]["EndpointsConfig"]["appnet"],
            json!({"Aliases": ["web"], "IPAMConfig": {"IPv4Address": "10.0.0.5"}})
        );
        assert_eq!(extra.len(), 1);
        assert_eq!(extra[0].0, "backend");
        assert_eq!(extra[0].1["EndpointConfig"]["Aliases"], json!(["web-b"]));
        // Host networking: no networking config at all.
        let mut host = inspect.clone();
        host["HostConfig"]["NetworkMode"] = json!("host");
        let (b, extra) = create_body(&host, &Value::Null, "app:1");
        assert!(b.get("NetworkingConfig").is_none() && extra.is_empty());
        // Old image gone: nothing is dropped but the generated hostname.
        assert_eq!(b["Cmd"], json!(["serve"]));
    }
}
