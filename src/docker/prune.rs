//! `prune` under the command policy (SPEC §16): the engine's own container
//! prune removes every stopped container, protected or not mirrored ones and
//! an update's backup included, and Docker 20.10's volume prune removes named
//! volumes too. So containers are removed one by one from the list the
//! endpoint's policy allowed, and on engines older than API 1.42 volumes are
//! filtered here. Images and build cache go through the engine's prune.

use std::collections::{HashMap, HashSet};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::client::{MAX_LIST_BODY, REQUEST_TIMEOUT, parse_api, status_error};
use super::{DockerClient, DockerError};

/// What one `prune` may touch, decided by the endpoint before it runs.
#[derive(Debug, Clone, Default)]
pub struct PrunePlan {
    pub what: Vec<String>,
    pub label: Option<String>,
    pub all_volumes: bool,
    /// Ids of the stopped containers the command policy lets go.
    pub containers: HashSet<String>,
}

#[derive(Debug, Deserialize)]
struct Listed {
    #[serde(rename = "Id", default)]
    id: String,
    #[serde(rename = "SizeRw", default)]
    size_rw: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Volumes {
    #[serde(rename = "Volumes", default)]
    volumes: Option<Vec<Volume>>,
}

#[derive(Debug, Deserialize)]
struct Volume {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// An anonymous volume: labelled so by the engine (Docker 23+), or named
/// with 64 hex digits as the engine names them. Pure.
pub fn is_anonymous(name: &str, labels: &HashMap<String, String>) -> bool {
    labels.contains_key("com.docker.volume.anonymous")
        || (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn filters(pairs: &[(&str, &str)], label: Option<&str>) -> String {
    let mut f = serde_json::Map::new();
    for (k, v) in pairs {
        f.insert((*k).into(), serde_json::json!([v]));
    }
    if let Some(l) = label {
        f.insert("label".into(), serde_json::json!([l]));
    }
    serde_json::Value::Object(f).to_string()
}

impl DockerClient {
    /// Runs `plan`: the bytes reclaimed, or the first failure with the kind.
    pub async fn prune_planned(&self, plan: &PrunePlan) -> Result<i64, (String, DockerError)> {
        let mut reclaimed = 0i64;
        for w in &plan.what {
            let label = plan.label.as_deref();
            let r = match w.as_str() {
                "containers" => self.remove_allowed(&plan.containers, label).await,
                "volumes" => self.prune_volumes(label, plan.all_volumes).await,
                other => self.prune(other, label).await,
            };
            reclaimed += r.map_err(|e| (w.clone(), e))?;
        }
        Ok(reclaimed)
    }

    /// Removes the stopped containers (with `label`) that are in `allowed`,
    /// without force: one started meanwhile stays. Their writable layers'
    /// bytes are what is reclaimed.
    async fn remove_allowed(
        &self,
        allowed: &HashSet<String>,
        label: Option<&str>,
    ) -> Result<i64, DockerError> {
        let mut listed: Vec<Listed> = Vec::new();
        for status in ["exited", "created", "dead"] {
            let f = filters(&[("status", status)], label);
            let mut l: Vec<Listed> = self
                .get_json(
                    "containers/json",
                    &["containers", "json"],
                    &[("all", "1"), ("size", "1"), ("filters", &f)],
                    MAX_LIST_BODY,
                )
                .await?;
            listed.append(&mut l);
        }
        let mut reclaimed = 0;
        for c in listed.into_iter().filter(|c| allowed.contains(&c.id)) {
            let url = self.url(&["containers", &c.id]);
            let resp = self
                .execute(Method::DELETE, url, Some(REQUEST_TIMEOUT))
                .await?;
            match resp.status() {
                s if s.is_success() => reclaimed += c.size_rw.unwrap_or(0).max(0),
                // Gone, or started meanwhile (409): not ours to remove now.
                StatusCode::NOT_FOUND | StatusCode::CONFLICT => {}
                _ => return Err(status_error(resp).await),
            }
        }
        Ok(reclaimed)
    }

    /// Unused volumes: anonymous ones only unless `all`. API ≥ 1.42 prunes
    /// only anonymous volumes by itself (`all` for the rest); older engines
    /// prune named ones too, so those are listed and removed one by one
    /// (their sizes are not known then: 0 is counted).
    async fn prune_volumes(&self, label: Option<&str>, all: bool) -> Result<i64, DockerError> {
        if parse_api(&self.api_version()).is_some_and(|v| v >= (1, 42)) {
            return self.prune_with("volumes", label, all).await;
        }
        let f = filters(&[("dangling", "true")], label);
        let list: Volumes = self
            .get_json("volumes", &["volumes"], &[("filters", &f)], MAX_LIST_BODY)
            .await?;
        for v in list.volumes.unwrap_or_default() {
            if !all && !is_anonymous(&v.name, &v.labels.unwrap_or_default()) {
                continue;
            }
            let url = self.url(&["volumes", &v.name]);
            let resp = self
                .execute(Method::DELETE, url, Some(REQUEST_TIMEOUT))
                .await?;
            match resp.status() {
                s if s.is_success() => {}
                StatusCode::NOT_FOUND | StatusCode::CONFLICT => {}
                _ => return Err(status_error(resp).await),
            }
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_volumes_by_label_or_engine_name() {
        let none = HashMap::new();
        let hex = "a".repeat(64);
        assert!(is_anonymous(&hex, &none));
        assert!(!is_anonymous("pgdata", &none));
        assert!(!is_anonymous(&"g".repeat(64), &none));
        assert!(!is_anonymous(&"a".repeat(63), &none));
        let labelled = HashMap::from([("com.docker.volume.anonymous".to_string(), String::new())]);
        assert!(is_anonymous("x", &labelled));
        assert_eq!(
            filters(&[("status", "exited")], Some("a=b")),
            r#"{"label":["a=b"],"status":["exited"]}"#
        );
    }
}
