//! Image references: normalisation (`docker.io`, `library/`, default tag,
//! `host:port`) and the classification of a running container's image
//! (registry.md §5, §6).

use std::collections::BTreeSet;

/// A normalised reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io` for Docker Hub (its API host is `registry-1.docker.io`).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

pub const DOCKER_HUB: &str = "docker.io";

impl Reference {
    /// Parses what a user wrote (`nginx`, `ghcr.io/o/i:1`, `host:5000/x@sha256:…`).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() || s.contains(char::is_whitespace) {
            return None;
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (s, None),
        };
        if let Some(d) = &digest {
            let (alg, hex) = d.split_once(':')?;
            if alg.is_empty() || hex.is_empty() {
                return None;
            }
        }
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if name.is_empty() || tag.as_deref() == Some("") {
            return None;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, more))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), more.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository
                .split('/')
                .any(|p| p.is_empty() || p.chars().any(|c| c.is_ascii_uppercase()))
        {
            return None;
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Some(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the key RepoDigests are matched on.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The host the registry API is served on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }
}

/// How a container's image is checked (SPEC §4.3 `status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Checked against the registry; `local_digests` are the running image's
    /// digests for that repository.
    Tracked {
        reference: Reference,
        local_digests: BTreeSet<String>,
        /// The only digest is the image's own ID: the containerd image store
        /// lists `name@<Id>` for every tag, pushed or never (SPEC §4.3), so it
        /// does not prove the image came from a registry. The registry decides:
        /// "no such tag" makes it a local build (see `unproven_verdict`).
        unproven: bool,
    },
    /// Runs an image referenced by digest.
    Pinned,
    /// No registry digest at all (built or loaded locally).
    LocalBuild,
    /// Not checkable; the reason is shown as `error`.
    Unknown(String),
    /// Never checked on purpose (label `dockside.updates=false`,
    /// `updates.ignore`): set by the watcher, never by [`classify`].
    Ignored,
}

/// Classifies from what the container was created with (`Config.Image`) and
/// the running image's `RepoDigests` and `Id`. On the containerd store
/// (`containerd`) the ID is the manifest (or index) digest the image was
/// pulled or built as, and stays its digest after the tag moves on (when the
/// engine drops the old name and its RepoDigest with it).
pub fn classify(
    config_image: &str,
    repo_digests: &[String],
    image_id: &str,
    containerd: bool,
) -> Class {
    let config_image = config_image.trim();
    if config_image.starts_with("sha256:") {
        return Class::Unknown("the container was created from a bare image ID".into());
    }
    let Some(reference) = Reference::parse(config_image) else {
        return Class::Unknown(format!("cannot parse the image reference `{config_image}`"));
    };
    if reference.digest.is_some() {
        return Class::Pinned;
    }
    if containerd {
        return Class::Tracked {
            reference,
            local_digests: BTreeSet::from([image_id.to_string()]),
            unproven: true,
        };
    }
    if repo_digests.is_empty() {
        return Class::LocalBuild;
    }
    let local_digests: BTreeSet<String> = repo_digests
        .iter()
        .filter_map(|rd| {
            let (name, digest) = rd.split_once('@')?;
            let r = Reference::parse(name)?;
            (r.name() == reference.name()).then(|| digest.to_string())
        })
        .collect();
    if local_digests.is_empty() {
        return Class::Unknown(format!(
            "the image has no registry digest for {} (it was pulled under another name); not checked",
            reference.name()
        ));
    }
    let unproven = local_digests.iter().all(|d| d == image_id);
    Class::Tracked {
        reference,
        local_digests,
        unproven,
    }
}

/// What an unproven image (containerd store, see [`Class::Tracked`]) is when
/// the registry could not confirm its tag. `not_found`: the registry said the
/// tag or repository does not exist; `built_here`: the registry could not be
/// reached and the engine records a classic-builder parent; `other_names`: the image has tags in other
/// repositories. `None`: report the registry's error as for any image.
pub fn unproven_verdict(
    reference: &Reference,
    not_found: bool,
    built_here: bool,
    other_names: bool,
) -> Option<Class> {
    match (not_found, other_names) {
        (true, true) => Some(Class::Unknown(format!(
            "no registry has {} and the image is known under other names (an alias); not checked",
            reference.name()
        ))),
        (true, false) => Some(Class::LocalBuild),
        // Registry unreachable: an image the classic builder made here is a
        // local build whatever the network says.
        (false, false) if built_here => Some(Class::LocalBuild),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).expect(s)
    }

    #[test]
    fn normalisation() {
        assert_eq!(r("nginx").name(), "docker.io/library/nginx");
        assert_eq!(r("nginx").tag.as_deref(), Some("latest"));
        assert_eq!(r("nginx:1.27").tag.as_deref(), Some("1.27"));
        assert_eq!(r("grafana/grafana:10").name(), "docker.io/grafana/grafana");
        assert_eq!(
            r("index.docker.io/library/nginx").name(),
            "docker.io/library/nginx"
        );
        assert_eq!(r("ghcr.io/o/i:1").name(), "ghcr.io/o/i");
        let local = r("127.0.0.1:5000/x/y:2");
        assert_eq!(
            (local.registry.as_str(), local.repository.as_str()),
            ("127.0.0.1:5000", "x/y")
        );
        assert_eq!(local.api_host(), "127.0.0.1:5000");
        assert_eq!(r("localhost/app").registry, "localhost");
        assert_eq!(r("nginx").api_host(), "registry-1.docker.io");
        let pinned = r("nginx:1.27@sha256:abc");
        assert_eq!(
            (pinned.tag.as_deref(), pinned.digest.as_deref()),
            (Some("1.27"), Some("sha256:abc"))
        );
        assert_eq!(r("nginx@sha256:abc").tag, None);
        for bad in ["", "a b", "Nginx", "x:", "host:5000/", "n@sha256", "n@:x"] {
            assert!(Reference::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn classes() {
        assert_eq!(
            classify(
                "nginx@sha256:abc",
                &["nginx@sha256:abc".into()],
                "sha256:abc",
                false
            ),
            Class::Pinned
        );
        assert_eq!(
            classify("app:dev", &[], "sha256:1", false),
            Class::LocalBuild
        );
        assert!(matches!(
            classify("sha256:0123", &[], "sha256:0123", true),
            Class::Unknown(_)
        ));
        // Short daemon form in RepoDigests matches the normalised reference.
        match classify(
            "nginx:1.27",
            &["nginx@sha256:aaa".into(), "nginx@sha256:bbb".into()],
            "sha256:c0nf",
            false,
        ) {
            Class::Tracked {
                reference,
                local_digests,
                unproven,
            } => {
                assert_eq!(reference.name(), "docker.io/library/nginx");
                assert_eq!(local_digests.len(), 2);
                assert!(!unproven, "legacy store: the ID is the config digest");
            }
            other => panic!("{other:?}"),
        }
        // Legacy store, digest equal to the ID (never happens there, but
        // then it proves nothing either).
        match classify("acc/bb:1", &["acc/bb@sha256:1d".into()], "sha256:1d", false) {
            Class::Tracked { unproven, .. } => assert!(unproven),
            other => panic!("{other:?}"),
        }
        // Containerd store: the ID is the digest, with or without RepoDigests
        // (a moved tag leaves the old image without any), never proof.
        for digests in [
            vec![],
            vec!["acc/bb@sha256:1d".to_string()],
            vec!["other/x@sha256:1d".into()],
        ] {
            match classify("acc/bb:1", &digests, "sha256:1d", true) {
                Class::Tracked {
                    local_digests,
                    unproven,
                    ..
                } => {
                    assert!(unproven);
                    assert_eq!(local_digests, BTreeSet::from(["sha256:1d".to_string()]));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            classify("acc/bb@sha256:1d", &[], "sha256:1d", true),
            Class::Pinned
        );
        // Alias: runs `local/bb:1` whose only digest is for another repository.
        match classify(
            "local/bb:1",
            &["127.0.0.1:5000/bb@sha256:77fc".into()],
            "sha256:9",
            false,
        ) {
            Class::Unknown(e) => assert!(e.contains("docker.io/local/bb"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unproven_images_are_decided_by_the_registry() {
        let r = r("acc/bb:1");
        assert_eq!(
            unproven_verdict(&r, true, false, false),
            Some(Class::LocalBuild)
        );
        assert_eq!(
            unproven_verdict(&r, true, true, false),
            Some(Class::LocalBuild)
        );
        assert!(matches!(
            unproven_verdict(&r, true, false, true),
            Some(Class::Unknown(e)) if e.contains("other names")
        ));
        // Unreachable: only the classic builder's parent tells.
        assert_eq!(
            unproven_verdict(&r, false, true, false),
            Some(Class::LocalBuild)
        );
        assert_eq!(unproven_verdict(&r, false, false, false), None);
        assert_eq!(unproven_verdict(&r, false, true, true), None);
    }
}
