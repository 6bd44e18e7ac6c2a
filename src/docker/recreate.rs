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
/// How long the new container must stay up to count as started.
pub const SETTLE: Duration = Duration::from_secs(2);
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

/// Pulls and recreates container `id` (named `name`).
pub async fn recreate(
    client: &DockerClient,
    id: &str,
    name: &str,
    registry_auth: Option<&str>,
    pull_timeout: Duration,
) -> Result<Outcome, RecreateError> {
    let inspect = client
        .inspect_raw(id)
        .await
        .map_err(engine("inspecting the container"))?;
    let reference = inspect["Config"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (image, tag) = split_reference(&reference)?;
    client
        .pull(&image, &tag, registry_auth, pull_timeout)
        .await
        .map_err(engine("pulling the image"))?;
    let new_image = client
        .image_inspect_raw(&reference)
        .await
        .map_err(engine("inspecting the pulled image"))?;
    let old_image_id = inspect["Image"].as_str().unwrap_or_default();
    if new_image["Id"].as_str() == Some(old_image_id) {
        return Ok(Outcome::UpToDate);
    }
    let old_image = client
        .image_inspect_raw(old_image_id)
        .await
        .unwrap_or(Value::Null);
    let (body, networks) = create_body(&inspect, &old_image, &reference);
    let was_running = inspect["State"]["Running"] == json!(true);
    let action = |what: &'static str, target: String, query: Vec<(&'static str, String)>| async move {
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        client
            .container_action(&target, what, &q, STOP_TIMEOUT + Duration::from_secs(5))
            .await
    };

    if was_running {
        action("stop", id.to_string(), vec![])
            .await
            .map_err(engine("stopping the container"))?;
    }
    let old_name = format!("{name}{OLD_SUFFIX}");
    if let Err(e) = action("rename", id.to_string(), vec![("name", old_name.clone())]).await {
        if was_running {
            let _ = action("start", id.to_string(), vec![]).await;
        }
        return Err(RecreateError::Engine {
            step: "renaming the old container",
            err: e,
        });
    }
    let started = async {
        let new_id = client
            .create_container(name, &body)
            .await
            .map_err(|e| (None, format!("create: {e}")))?;
        for (net, b) in &networks {
            client
                .network_connect(
                    net,
                    &json!({"Container": new_id, "EndpointConfig": b["EndpointConfig"]}),
                )
                .await
                .map_err(|e| (Some(new_id.clone()), format!("network {net}: {e}")))?;
        }
        if was_running {
            action("start", new_id.clone(), vec![])
                .await
                .map_err(|e| (Some(new_id.clone()), format!("start: {e}")))?;
            tokio::time::sleep(SETTLE).await;
            let st = client
                .inspect_raw(&new_id)
                .await
                .map_err(|e| (Some(new_id.clone()), format!("inspect: {e}")))?;
            let s = &st["State"];
            if s["Running"] != json!(true) || s["Restarting"] == json!(true) {
                return Err((
                    Some(new_id),
                    format!(
                        "it is {} with exit code {}",
                        s["Status"].as_str().unwrap_or("not running"),
                        s["ExitCode"]
                    ),
                ));
            }
        }
        Ok::<String, (Option<String>, String)>(new_id)
    }
    .await;
    match started {
        Ok(new_id) => {
            if let Err(e) = client.remove_container(id).await {
                tracing::warn!(container = %name, error = %e, "updated, but the old container could not be removed");
            }
            Ok(Outcome::Updated {
                id: new_id,
                running: was_running,
            })
        }
        Err((new_id, why)) => {
            if let Some(n) = new_id {
                let _ = client.remove_container(&n).await;
            }
            let restore = async {
                action("rename", id.to_string(), vec![("name", name.to_string())]).await?;
                if was_running {
                    action("start", id.to_string(), vec![]).await?;
                }
                Ok::<(), DockerError>(())
            }
            .await;
            match restore {
                Ok(()) => Err(RecreateError::RolledBack(why)),
                Err(e) => Err(RecreateError::RestoreFailed(why, e.to_string())),
            }
        }
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
