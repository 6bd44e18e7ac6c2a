//! Stacks (SPEC §13): compose projects (label `com.docker.compose.project`)
//! and Portainer stacks of one endpoint, their retained `state` payload,
//! and the order their containers start in (`com.docker.compose.depends_on`;
//! stop is the reverse). Pure; the endpoint owns the `_stacks` topics.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

/// The topic segment under an endpoint that holds its stacks (`_` cannot
/// start a container name, so it never collides with one).
pub const SEGMENT: &str = "_stacks";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const COMPOSE_DEPENDS_ON: &str = "com.docker.compose.depends_on";
/// Words a stack accepts (SPEC §13).
pub const WORDS: &[&str] = &["start", "stop", "restart", "update"];

/// A container as far as its stack needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub service: Option<String>,
    /// Services it depends on.
    pub depends_on: Vec<String>,
    pub running: bool,
    pub update_available: bool,
}

/// A Portainer stack of this endpoint's environment (`GET /api/stacks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortainerStack {
    pub id: i64,
    pub name: String,
    /// `Status` 1.
    pub active: bool,
    /// Deployed from git: redeploy goes through `git/redeploy`.
    pub git: bool,
}

/// `<ep>/_stacks/<stack>/state` (SPEC §13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackState {
    pub name: String,
    pub endpoint: String,
    pub kind: &'static str,
    pub containers: Vec<String>,
    pub total: usize,
    pub running: usize,
    pub state: &'static str,
    pub updates_available: usize,
    pub portainer_id: Option<i64>,
}

/// A stack name usable as one topic segment.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('_')
        && !name.contains(['/', '+', '#', '\0'])
}

/// `db:service_started:false,cache:service_healthy:true` (compose v2) or
/// `db,cache` (older): the service names.
pub fn parse_depends_on(label: &str) -> Vec<String> {
    label
        .split(',')
        .filter_map(|d| d.split(':').next())
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// The services a container must be restarted after, once they are
/// updated: compose v2's `depends_on` entries with `restart: true`
/// (`db:service_started:true`, SPEC §17).
pub fn restart_after(label: &str) -> Vec<String> {
    label
        .split(',')
        .filter_map(|d| {
            let mut parts = d.trim().split(':');
            let service = parts.next()?.trim();
            let restart = parts.nth(1)?.trim();
            (restart == "true" && !service.is_empty()).then(|| service.to_string())
        })
        .collect()
}

/// Members in start order: every service after the ones it depends on,
/// ties by name; a cycle or a dependency on a service that is not there
/// does not block the rest (the remainder follows in name order).
pub fn start_order(members: &[Member]) -> Vec<String> {
    let mut sorted: Vec<&Member> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let services: BTreeSet<&str> = sorted.iter().filter_map(|m| m.service.as_deref()).collect();
    let mut done_services: BTreeSet<&str> = BTreeSet::new();
    let mut out: Vec<String> = Vec::new();
    let mut left: Vec<&Member> = sorted;
    while !left.is_empty() {
        let ready: Vec<&Member> = left
            .iter()
            .copied()
            .filter(|m| {
                m.depends_on.iter().all(|d| {
                    !services.contains(d.as_str())
                        || done_services.contains(d.as_str())
                        || m.service.as_deref() == Some(d.as_str())
                })
            })
            .collect();
        // A cycle: take the first one left and go on.
        let ready = if ready.is_empty() {
            vec![left[0]]
        } else {
            ready
        };
        // A service is done once all of its containers (replicas) are placed.
        for m in &ready {
            out.push(m.name.clone());
        }
        left.retain(|m| !ready.iter().any(|r| r.name == m.name));
        for m in &ready {
            if let Some(s) = m.service.as_deref()
                && !left.iter().any(|l| l.service.as_deref() == Some(s))
            {
                done_services.insert(s);
            }
        }
    }
    out
}

/// Every stack of an endpoint: compose projects of its containers, and its
/// Portainer stacks (listed even while stopped, when Portainer removed
/// their containers). A Portainer stack and the compose project it deploys
/// are one stack (Portainer lowercases the project name).
pub fn build(
    endpoint: &str,
    projects: &BTreeMap<String, Vec<Member>>,
    portainer: &[PortainerStack],
) -> BTreeMap<String, StackState> {
    let mut by_project: HashMap<String, &PortainerStack> = HashMap::new();
    for p in portainer {
        by_project.insert(p.name.to_lowercase(), p);
    }
    let mut out = BTreeMap::new();
    for (project, members) in projects {
        if !valid_name(project) {
            continue;
        }
        let p = by_project.remove(&project.to_lowercase());
        out.insert(project.clone(), state_of(endpoint, project, members, p));
    }
    for p in by_project.values() {
        let name = p.name.to_lowercase();
        if valid_name(&name) && !out.contains_key(&name) {
            out.insert(name.clone(), state_of(endpoint, &name, &[], Some(p)));
        }
    }
    out
}

/// A stack's `state` from how many of its containers run.
pub fn state_word(total: usize, running: usize) -> &'static str {
    if total > 0 && running == total {
        "running"
    } else if running > 0 {
        "partial"
    } else {
        "stopped"
    }
}

/// The state a Portainer stack reaches when Portainer says a word succeeded
/// (Portainer answers once compose has done it).
pub fn state_after(word: &str) -> &'static str {
    if word == "stop" { "stopped" } else { "running" }
}

fn state_of(
    endpoint: &str,
    name: &str,
    members: &[Member],
    p: Option<&PortainerStack>,
) -> StackState {
    let running = members.iter().filter(|m| m.running).count();
    let total = members.len();
    StackState {
        name: name.to_string(),
        endpoint: endpoint.to_string(),
        kind: if p.is_some() { "portainer" } else { "compose" },
        containers: start_order(members),
        total,
        running,
        state: state_word(total, running),
        updates_available: members.iter().filter(|m| m.update_available).count(),
        portainer_id: p.map(|p| p.id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, service: &str, deps: &[&str], running: bool) -> Member {
        Member {
            name: name.into(),
            service: Some(service.into()),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            running,
            update_available: false,
        }
    }

    #[test]
    fn depends_on_labels_of_both_compose_generations() {
        assert_eq!(
            parse_depends_on("db:service_started:false,cache:service_healthy:true"),
            vec!["db", "cache"]
        );
        assert_eq!(parse_depends_on("db, cache"), vec!["db", "cache"]);
        assert_eq!(
            restart_after("db:service_started:false,cache:service_healthy:true, q:x:true"),
            vec!["cache", "q"]
        );
        assert!(restart_after("db,cache").is_empty());
        assert!(parse_depends_on("").is_empty());
    }

    #[test]
    fn start_order_follows_dependencies_and_survives_cycles() {
        // web → api → db; names chosen so that name order is wrong.
        let ms = vec![
            m("a-web", "web", &["api"], false),
            m("b-db", "db", &[], false),
            m("c-api", "api", &["db", "missing"], false),
        ];
        assert_eq!(start_order(&ms), vec!["b-db", "c-api", "a-web"]);
        let cyc = vec![
            m("x", "x", &["y"], false),
            m("y", "y", &["x"], false),
            m("z", "z", &[], false),
        ];
        let o = start_order(&cyc);
        assert_eq!(o.len(), 3);
        assert_eq!(o[0], "z");
        // Replicas of a service all come before its dependents.
        let reps = vec![
            m("app", "app", &["db"], false),
            m("db-1", "db", &[], false),
            m("db-2", "db", &[], false),
        ];
        assert_eq!(start_order(&reps), vec!["db-1", "db-2", "app"]);
    }

    #[test]
    fn stacks_from_projects_and_portainer() {
        let mut projects = BTreeMap::new();
        projects.insert(
            "media".to_string(),
            vec![
                m("m-db", "db", &[], true),
                m("m-app", "app", &["db"], false),
            ],
        );
        projects.insert("bad/name".to_string(), vec![m("x", "x", &[], true)]);
        projects.insert("web".to_string(), vec![m("w", "w", &[], true)]);
        let portainer = vec![
            PortainerStack {
                id: 3,
                name: "Media".into(),
                active: true,
                git: false,
            },
            PortainerStack {
                id: 4,
                name: "idle".into(),
                active: false,
                git: true,
            },
        ];
        let s = build("ep", &projects, &portainer);
        assert_eq!(s.len(), 3, "{s:?}");
        let media = &s["media"];
        assert_eq!((media.kind, media.portainer_id), ("portainer", Some(3)));
        assert_eq!((media.total, media.running, media.state), (2, 1, "partial"));
        assert_eq!(media.containers, vec!["m-db", "m-app"]);
        assert_eq!(s["web"].state, "running");
        assert_eq!(s["web"].kind, "compose");
        let idle = &s["idle"];
        assert_eq!(
            (idle.total, idle.state, idle.portainer_id),
            (0, "stopped", Some(4))
        );
    }
}
