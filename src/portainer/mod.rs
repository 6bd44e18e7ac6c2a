//! Portainer sources: each `[portainer.<key>]` lists its environments at start,
//! every `refresh` and on `resync`, and hands the supervisor the Docker ones as
//! endpoints `<key>-<slug of the name>`, reached through Portainer's Docker proxy.

pub mod client;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use globset::Glob;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use client::{Environment, PortainerClient, PortainerError};

use crate::backoff::Backoff;
use crate::config::PortainerConfig;
use crate::topics::slug;

/// A Portainer environment as an endpoint.
#[derive(Debug, Clone)]
pub struct PortainerEndpoint {
    pub client: Arc<PortainerClient>,
    pub env_id: i64,
    pub name: String,
    pub public_url: Option<String>,
    pub poll_interval: Duration,
}

impl PartialEq for PortainerEndpoint {
    fn eq(&self, o: &Self) -> bool {
        Arc::ptr_eq(&self.client, &o.client)
            && self.env_id == o.env_id
            && self.name == o.name
            && self.public_url == o.public_url
            && self.poll_interval == o.poll_interval
    }
}

/// The full current set of one source's endpoints.
#[derive(Debug)]
pub struct SourceUpdate {
    pub source: String,
    pub endpoints: BTreeMap<String, PortainerEndpoint>,
}

/// What, of an endpoint, makes a new listing worth sending: id, name, public URL.
type Summary = (i64, String, Option<String>);

/// Environment types whose Docker proxy works: 1 (socket/TCP), 2 (agent), 4 (edge, standard mode).
fn is_docker(e: &Environment) -> bool {
    matches!(e.kind, 1 | 2) || (e.kind == 4 && !e.edge.async_mode)
}

/// Does `environments = [...]` select this environment?
pub fn selected(selectors: &[String], e: &Environment, tags: &[(i64, String)]) -> bool {
    selectors.iter().any(|s| {
        let s = s.trim();
        if s == "*" {
            return true;
        }
        if let Ok(id) = s.parse::<i64>() {
            return id == e.id;
        }
        if let Some(tag) = s.strip_prefix("tag:") {
            return tags
                .iter()
                .any(|(id, name)| name == tag && e.tag_ids.contains(id));
        }
        Glob::new(s)
            .map(|g| g.compile_matcher().is_match(&e.name))
            .unwrap_or(false)
    })
}

/// Turns an environment list into endpoints; logs each skipped environment once.
pub fn endpoints_from(
    key: &str,
    cfg: &PortainerConfig,
    client: &Arc<PortainerClient>,
    envs: &[Environment],
    tags: &[(i64, String)],
    reported: &mut HashSet<i64>,
) -> BTreeMap<String, PortainerEndpoint> {
    let mut out = BTreeMap::new();
    let mut sorted: Vec<&Environment> = envs.iter().collect();
    sorted.sort_by_key(|e| e.id);
    for e in sorted {
        if !is_docker(e) {
            if reported.insert(e.id) {
                let why = if e.kind == 4 {
                    "async Edge (no Docker proxy)"
                } else {
                    "not a Docker environment"
                };
                tracing::info!(source = %key, environment = %e.name, id = e.id, kind = e.kind, "skipping environment: {why}");
            }
            continue;
        }
        if !selected(&cfg.environments, e, tags) {
            continue;
        }
        let s = slug(&e.name);
        let id = format!("{key}-{}", if s.is_empty() { e.id.to_string() } else { s });
        if out.contains_key(&id) {
            if reported.insert(-e.id) {
                tracing::error!(source = %key, environment = %e.name, id = e.id, endpoint = %id, "two environments map to the same endpoint id: skipping this one (rename one in Portainer)");
            }
            continue;
        }
        out.insert(
            id,
            PortainerEndpoint {
                client: client.clone(),
                env_id: e.id,
                name: e.name.clone(),
                public_url: Some(e.public_url.clone()).filter(|u| !u.is_empty()),
                poll_interval: cfg.poll_interval,
            },
        );
    }
    out
}

/// Lists environments at start, every `refresh`, and when `resync` fires; sends
/// the full set each time it changes. A failed listing keeps the current set.
pub async fn run_source(
    key: String,
    cfg: PortainerConfig,
    client: Arc<PortainerClient>,
    updates: mpsc::Sender<SourceUpdate>,
    resync: &mut mpsc::Receiver<()>,
    token: CancellationToken,
) {
    let mut reported = HashSet::new();
    let mut last: Option<BTreeMap<String, Summary>> = None;
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        cfg.refresh.max(Duration::from_secs(5)),
    );
    loop {
        let wait = match list(&cfg, &client).await {
            Ok((envs, tags)) => {
                backoff.reset();
                let eps = endpoints_from(&key, &cfg, &client, &envs, &tags, &mut reported);
                let summary: BTreeMap<_, _> = eps
                    .iter()
                    .map(|(id, e)| (id.clone(), (e.env_id, e.name.clone(), e.public_url.clone())))
                    .collect();
                if last.as_ref() != Some(&summary) {
                    tracing::info!(source = %key, environments = eps.len(), "Portainer environments listed");
                    last = Some(summary);
                    if updates
                        .send(SourceUpdate {
                            source: key.clone(),
                            endpoints: eps,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                cfg.refresh
            }
            Err(e) => {
                let d = backoff.next_delay();
                tracing::warn!(source = %key, error = %e, retry_in = ?d, "cannot list Portainer environments");
                d
            }
        };
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            Some(()) = resync.recv() => {}
        }
    }
}

async fn list(
    cfg: &PortainerConfig,
    client: &PortainerClient,
) -> Result<(Vec<Environment>, Vec<(i64, String)>), PortainerError> {
    let envs = client.environments().await?;
    let tags = if cfg
        .environments
        .iter()
        .any(|s| s.trim().starts_with("tag:"))
    {
        client.tags().await?
    } else {
        Vec::new()
    };
    Ok((envs, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(id: i64, name: &str, kind: i64) -> Environment {
        Environment {
            id,
            name: name.into(),
            kind,
            status: 1,
            ..Default::default()
        }
    }

    #[test]
    fn selection_and_ids() {
        let cfg = PortainerConfig {
            url: "https://p".into(),
            api_key: Some("k".into()),
            environments: vec!["prod*".into(), "7".into(), "tag:lab".into()],
            ..Default::default()
        };
        let client = Arc::new(PortainerClient::new(&cfg).expect("client"));
        let mut lab = env(9, "Lab Box", 2);
        lab.tag_ids = vec![4];
        let mut async_edge = env(10, "prod-edge-async", 4);
        async_edge.edge.async_mode = true;
        let envs = vec![
            env(1, "Prod Main", 1),
            env(2, "prod-2", 2),
            env(3, "dev", 1),
            env(7, "seven", 4),
            env(8, "prod k8s", 5),
            lab,
            async_edge,
            env(11, "PROD 2", 1), // slugs like another: skipped
        ];
        let tags = vec![(4, "lab".to_string())];
        let mut reported = HashSet::new();
        let eps = endpoints_from("home", &cfg, &client, &envs, &tags, &mut reported);
        let ids: Vec<&str> = eps.keys().map(String::as_str).collect();
        // "Prod Main" does not match the case-sensitive glob `prod*`.
        assert_eq!(ids, vec!["home-lab-box", "home-prod-2", "home-seven"]);
        assert_eq!(eps["home-seven"].env_id, 7);
        assert!(reported.contains(&8) && reported.contains(&10));
        let all = PortainerConfig {
            environments: vec!["*".into()],
            ..cfg.clone()
        };
        let eps = endpoints_from("home", &all, &client, &envs, &tags, &mut HashSet::new());
        assert!(eps.contains_key("home-prod-main"));
        assert_eq!(
            eps["home-prod-2"].env_id, 2,
            "first by id wins the collision"
        );
    }
}
