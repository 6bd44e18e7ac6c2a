//! Where a version's release notes live and what the software is called
//! (SPEC §17): pure functions of a container's labels.

use std::collections::BTreeMap;

/// A container's own link template; `{version}` is replaced.
pub const RELEASE_URL_LABEL: &str = "dockside.release_url";
/// The image's source repository (OCI annotation, also a label).
pub const SOURCE_LABEL: &str = "org.opencontainers.image.source";
/// The image's human name.
pub const TITLE_LABEL: &str = "org.opencontainers.image.title";

/// The longest link or title put into a status (HA caps its attributes).
const MAX_LEN: usize = 255;

/// The release page of `version`: the label's template, else the source
/// repository's release page on GitHub, GitLab or Codeberg. A version that
/// is a digest, or has characters a tag cannot have, links to the list of
/// releases instead.
pub fn release_url(labels: &BTreeMap<String, String>, version: Option<&str>) -> Option<String> {
    let version = version.filter(|v| is_tag_like(v));
    if let Some(t) = labels.get(RELEASE_URL_LABEL).filter(|t| is_http(t)) {
        return match (t.contains("{version}"), version) {
            (true, Some(v)) => Some(t.replace("{version}", v)),
            (true, None) => None,
            (false, _) => Some(t.clone()),
        }
        .filter(|u| u.len() <= MAX_LEN);
    }
    let source = labels.get(SOURCE_LABEL)?;
    let repo = source
        .trim()
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .strip_prefix("https://")
        .or_else(|| source.trim().strip_prefix("http://"))?;
    let (host, path) = repo.split_once('/')?;
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let safe = |p: &&str| {
        p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() < 2 || !parts.iter().all(safe) {
        return None;
    }
    let url = match host.to_ascii_lowercase().as_str() {
        "github.com" | "codeberg.org" => {
            let base = format!("https://{host}/{}/{}/releases", parts[0], parts[1]);
            match version {
                Some(v) => format!("{base}/tag/{v}"),
                None => base,
            }
        }
        "gitlab.com" => {
            let base = format!("https://gitlab.com/{}/-/releases", parts.join("/"));
            match version {
                Some(v) => format!("{base}/{v}"),
                None => base,
            }
        }
        _ => return None,
    };
    (url.len() <= MAX_LEN).then_some(url)
}

/// The software's name: its title label, else the image repository's last
/// path part (`ghcr.io/home-assistant/home-assistant` → `home-assistant`).
pub fn title(labels: &BTreeMap<String, String>, image: &str) -> Option<String> {
    if let Some(t) = labels.get(TITLE_LABEL).map(|t| t.trim())
        && !t.is_empty()
    {
        return Some(t.chars().take(MAX_LEN).collect());
    }
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    let repo = match last.rsplit_once(':') {
        Some((r, _)) => r,
        None => last,
    };
    (!repo.is_empty()).then(|| repo.to_string())
}

fn is_http(t: &str) -> bool {
    (t.starts_with("https://") || t.starts_with("http://"))
        && !t.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A registry tag's characters (`[A-Za-z0-9_.-]`), not a digest.
fn is_tag_like(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && !v.starts_with("sha256:")
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn release_links() {
        let gh = labels(&[(SOURCE_LABEL, "https://github.com/home-assistant/core.git")]);
        assert_eq!(
            release_url(&gh, Some("2026.12.1")).as_deref(),
            Some("https://github.com/home-assistant/core/releases/tag/2026.12.1")
        );
        assert_eq!(
            release_url(&gh, Some("sha256:0123456789ab")).as_deref(),
            Some("https://github.com/home-assistant/core/releases")
        );
        let gl = labels(&[(SOURCE_LABEL, "https://gitlab.com/group/sub/app/")]);
        assert_eq!(
            release_url(&gl, Some("v1.2")).as_deref(),
            Some("https://gitlab.com/group/sub/app/-/releases/v1.2")
        );
        let cb = labels(&[(SOURCE_LABEL, "https://codeberg.org/forgejo/forgejo")]);
        assert_eq!(
            release_url(&cb, Some("9.0.1")).as_deref(),
            Some("https://codeberg.org/forgejo/forgejo/releases/tag/9.0.1")
        );
        // The label wins; `{version}` replaced; no version, no templated link.
        let own = labels(&[
            (
                RELEASE_URL_LABEL,
                "https://example.org/notes/{version}.html",
            ),
            (SOURCE_LABEL, "https://github.com/a/b"),
        ]);
        assert_eq!(
            release_url(&own, Some("1.0")).as_deref(),
            Some("https://example.org/notes/1.0.html")
        );
        assert_eq!(release_url(&own, None), None);
        // Unknown hosts, odd paths and non-links give nothing.
        for bad in [
            "https://example.org/a/b",
            "git@github.com:a/b.git",
            "https://github.com/only",
            "https://github.com/a/b c",
        ] {
            assert_eq!(
                release_url(&labels(&[(SOURCE_LABEL, bad)]), Some("1")),
                None
            );
        }
        let js = labels(&[(RELEASE_URL_LABEL, "javascript:alert(1)")]);
        assert_eq!(release_url(&js, Some("1")), None);
        // A version that is not tag-like never reaches a link.
        assert_eq!(
            release_url(&gh, Some("1.0/../../x")).as_deref(),
            Some("https://github.com/home-assistant/core/releases")
        );
    }

    #[test]
    fn titles() {
        assert_eq!(
            title(&labels(&[(TITLE_LABEL, "Home Assistant")]), "x").as_deref(),
            Some("Home Assistant")
        );
        assert_eq!(
            title(&labels(&[]), "ghcr.io/home-assistant/home-assistant:stable").as_deref(),
            Some("home-assistant")
        );
        assert_eq!(
            title(&labels(&[]), "127.0.0.1:5000/app@sha256:ab").as_deref(),
            Some("app")
        );
        assert_eq!(title(&labels(&[]), "nginx").as_deref(), Some("nginx"));
    }
}
