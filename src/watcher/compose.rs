//! Compose drift (SPEC §17, Docksmith's "compose mismatch"): the compose
//! file a container was created from (label
//! `com.docker.compose.project.config_files`) names another image for its
//! service than the one it runs. Parsing and comparing are pure; reading the
//! files is one bounded read each. Anything not known for sure (a file not
//! readable here, a variable with no value, `extends`) is no drift: dockside
//! never claims one it cannot show.

use std::collections::{BTreeMap, HashMap};

use crate::registry::Reference;

pub const CONFIG_FILES_LABEL: &str = "com.docker.compose.project.config_files";
pub const WORKING_DIR_LABEL: &str = "com.docker.compose.project.working_dir";
const SERVICE_LABEL: &str = "com.docker.compose.service";
/// The most of a compose or `.env` file read.
const MAX_FILE: u64 = 1 << 20;
const MAX_FILES: usize = 8;

/// The image the compose files name for the container's service when it
/// differs from `running` (its `Config.Image`); `None` when they agree or
/// nothing can be said.
pub fn drift(labels: &BTreeMap<String, String>, running: &str) -> Option<String> {
    let service = labels.get(SERVICE_LABEL)?;
    let files: Vec<String> = labels
        .get(CONFIG_FILES_LABEL)?
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .take(MAX_FILES)
        .map(read)
        .collect::<Option<_>>()?;
    let env = labels
        .get(WORKING_DIR_LABEL)
        .and_then(|d| read(&format!("{}/.env", d.trim_end_matches('/'))))
        .map(|t| parse_env(&t))
        .unwrap_or_default();
    let named = service_image(&files, service, &env)?;
    (!same_image(&named, running)).then_some(named)
}

fn read(path: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut text = String::new();
    f.take(MAX_FILE).read_to_string(&mut text).ok()?;
    Some(text)
}

/// The `image:` of `service` in these files (later files override earlier
/// ones, as `-f a.yml -f b.yml` does), interpolated; `None` when there is
/// none (a `build:`-only service), the service is not there, or a file or
/// variable cannot be read.
pub fn service_image(
    files: &[String],
    service: &str,
    env: &HashMap<String, String>,
) -> Option<String> {
    use yaml_rust2::{Yaml, YamlLoader};
    let mut image = None;
    for text in files {
        let docs = YamlLoader::load_from_str(text).ok()?;
        let doc = docs.first()?;
        let svc = &doc["services"][service];
        if !svc["extends"].is_badvalue() {
            return None; // the image may come from elsewhere
        }
        match &svc["image"] {
            Yaml::String(s) => image = Some(s.clone()),
            Yaml::BadValue => {}
            _ => return None,
        }
    }
    let image = interpolate(&image?, env)?;
    (!image.is_empty()).then_some(image)
}

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR` and `$$`, from
/// the project's `.env`; a variable without a value and without a default
/// gives `None`.
pub fn interpolate(s: &str, env: &HashMap<String, String>) -> Option<String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(r) = rest.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = rest.strip_prefix('{') {
            let end = r.find('}')?;
            let expr = &r[..end];
            rest = &r[end + 1..];
            let (name, default) = match (expr.find(":-"), expr.find('-')) {
                (Some(p), _) => (&expr[..p], Some((&expr[p + 2..], true))),
                (None, Some(p)) => (&expr[..p], Some((&expr[p + 1..], false))),
                _ => (expr, None),
            };
            let value = env.get(name);
            match (value, default) {
                (Some(v), Some((d, true))) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(v),
                (None, Some((d, _))) => out.push_str(d),
                (None, None) => return None,
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push_str(env.get(&rest[..end])?);
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    Some(out)
}

/// `KEY=value` lines of a `.env` file (quotes removed, comments skipped).
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|x| x.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|x| x.strip_suffix('\'')))
                .unwrap_or(v);
            (k.trim().to_string(), v.to_string())
        })
        .take(1024)
        .collect()
}

/// The same image reference, spelled either way (`nginx` and
/// `docker.io/library/nginx:latest`).
pub fn same_image(a: &str, b: &str) -> bool {
    match (Reference::parse(a), Reference::parse(b)) {
        (Some(x), Some(y)) => {
            x.name() == y.name()
                && x.tag.as_deref().unwrap_or("latest") == y.tag.as_deref().unwrap_or("latest")
                && (x.digest.is_none() || y.digest.is_none() || x.digest == y.digest)
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_service_image_with_overrides_and_variables() {
        let base =
            "services:\n  web:\n    image: nginx:${TAG:-1.27}\n  app:\n    build: .\n".to_string();
        let over = "services:\n  web:\n    image: ghcr.io/me/web:${TAG}\n".to_string();
        let e = env(&[]);
        assert_eq!(
            service_image(std::slice::from_ref(&base), "web", &e).as_deref(),
            Some("nginx:1.27")
        );
        assert_eq!(
            service_image(&[base.clone(), over.clone()], "web", &env(&[("TAG", "2")])).as_deref(),
            Some("ghcr.io/me/web:2")
        );
        // A variable without a value: nothing is claimed.
        assert_eq!(service_image(&[base.clone(), over], "web", &e), None);
        // build without image, a missing service, extends, junk: no drift.
        assert_eq!(service_image(std::slice::from_ref(&base), "app", &e), None);
        assert_eq!(service_image(std::slice::from_ref(&base), "nope", &e), None);
        let ext =
            "services:\n  web:\n    extends: {file: x.yml, service: w}\n    image: a\n".to_string();
        assert_eq!(service_image(&[ext], "web", &e), None);
        assert_eq!(service_image(&["{{{".to_string()], "web", &e), None);
    }

    #[test]
    fn interpolation_and_env_files() {
        let e = parse_env("# c\nTAG=1.2\nEMPTY=\nexport Q=\"quoted\"\nS='single'\n");
        assert_eq!(e["TAG"], "1.2");
        assert_eq!(e["Q"], "quoted");
        assert_eq!(e["S"], "single");
        assert_eq!(interpolate("a:${TAG}", &e).as_deref(), Some("a:1.2"));
        assert_eq!(interpolate("a:$TAG-x", &e).as_deref(), Some("a:1.2-x"));
        assert_eq!(interpolate("a:${EMPTY:-d}", &e).as_deref(), Some("a:d"));
        assert_eq!(interpolate("a:${EMPTY-d}", &e).as_deref(), Some("a:"));
        assert_eq!(interpolate("$$x", &e).as_deref(), Some("$x"));
        assert_eq!(interpolate("a:${NOPE}", &e), None);
        assert_eq!(interpolate("a:${TAG", &e), None);
    }

    #[test]
    fn same_image_either_spelling() {
        assert!(same_image("nginx", "docker.io/library/nginx:latest"));
        assert!(same_image(
            "nginx:1.27",
            "index.docker.io/library/nginx:1.27"
        ));
        assert!(!same_image("nginx:1.27", "nginx:1.28"));
        assert!(!same_image("ghcr.io/a/b:1", "docker.io/a/b:1"));
    }
}
