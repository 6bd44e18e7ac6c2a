//! The jMQTT templates in `config/jeedom/` only name topics and JSON keys that
//! dockside publishes (SPEC §3, §4) and only send words it accepts (§5).

use serde_json::{Value, json};

fn load(name: &str) -> Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/jeedom")
        .join(name);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `[a][b]` → the value at a.b, if present.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.trim_start_matches('[')
        .trim_end_matches(']')
        .split("][")
        .try_fold(v, |v, k| v.get(k))
}

fn check(file: &str, payloads: &[(&str, Value)], words: &[&str]) {
    let t = load(file);
    let (_, tpl) = t
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("one template");
    assert_eq!(tpl["eqType_name"], "jMQTT");
    let cmds = tpl["commands"].as_array().expect("commands");
    assert!(cmds.len() > 5);
    for c in cmds {
        let conf = &c["configuration"];
        let topic = conf["topic"].as_str().expect("topic");
        let suffix = topic
            .strip_prefix("%s/")
            .expect("topic under the equipment's base");
        match c["type"].as_str() {
            Some("info") => {
                let payload = payloads
                    .iter()
                    .find(|(s, _)| *s == suffix)
                    .map(|(_, p)| p)
                    .unwrap_or_else(|| panic!("{file}: no such topic {topic}"));
                if let Some(path) = conf["jsonPath"].as_str() {
                    assert!(at(payload, path).is_some(), "{file}: {topic} has no {path}");
                }
            }
            Some("action") => {
                assert_eq!(suffix, "set", "{file}");
                let word = conf["request"].as_str().expect("request");
                assert!(words.contains(&word), "{file}: `{word}` is no command");
                assert_eq!(conf["retain"], "0", "{file}: commands must not be retained");
                if let Some(v) = c.get("value").and_then(Value::as_str) {
                    assert!(
                        cmds.iter().any(|x| x["name"] == v && x["type"] == "info"),
                        "{file}: value names a missing info `{v}`"
                    );
                }
            }
            other => panic!("{file}: command type {other:?}"),
        }
    }
}

#[test]
fn container_template_matches_the_topics() {
    // Every key the real payload has (a sample written by hand would drift).
    let state = serde_json::to_value(dockside::payloads::ContainerState::from_inspect(
        "local",
        &Default::default(),
    ))
    .expect("state json");
    let update = json!({"status":"update_available","update_available":true,"image":"nginx:1.27",
        "installed_version":"1.27.2","latest_version":"1.27.3","in_progress":false});
    let event = json!({"event_type":"start","time":"x","attributes":{}});
    let result = json!({"action":"start","ok":true});
    let stats = serde_json::to_value(dockside::stats::StatsPayload {
        cpu_percent: Some(1.0),
        memory_bytes: Some(1),
        memory_percent: Some(1.0),
        ..Default::default()
    })
    .expect("stats json");
    check(
        "dockside_container.json",
        &[
            ("stats", stats),
            ("state", state),
            ("update", update),
            ("event", event),
            ("result", result),
        ],
        dockside::command::CONTAINER_WORDS,
    );
}

#[test]
fn endpoint_template_matches_the_topics() {
    let info = json!({"id":"local","name":"local","kind":"docker","reachable":true,"docker_version":"28.2.2",
        "cpus":2,"memory_bytes":1,"public_url":"https://docker.example","portainer_id":null,
        "containers":{"total":1,"running":1,"paused":0,"stopped":0,"healthy":0,"unhealthy":0},
        "images":3,"volumes":1,"stacks":0,"services":0,
        "disk":{"images_bytes":1,"containers_bytes":0,"volumes_bytes":0,"build_cache_bytes":0,"reclaimable_bytes":0,"at":"x"}});
    check(
        "dockside_endpoint.json",
        &[
            ("status", json!("online")),
            ("info", info),
            ("result", json!({"ok":true})),
        ],
        dockside::command::ENDPOINT_WORDS,
    );
}

#[test]
fn stack_template_matches_the_topics() {
    let mut projects = std::collections::BTreeMap::new();
    projects.insert(
        "media".to_string(),
        vec![dockside::stacks::Member {
            name: "media-db".into(),
            service: Some("db".into()),
            depends_on: vec![],
            running: true,
            update_available: false,
        }],
    );
    let state = serde_json::to_value(&dockside::stacks::build("local", &projects, &[])["media"])
        .expect("stack json");
    check(
        "dockside_stack.json",
        &[
            ("state", state),
            ("result", json!({"action":"start","ok":true,"error":"x"})),
        ],
        dockside::stacks::WORDS,
    );
}
