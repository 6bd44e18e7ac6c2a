//! Which containers dockside mirrors: `containers.include` / `exclude` (names or
//! globs) and the per-container label `dockside.enable=false`.

use std::collections::HashMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

use crate::config::{ConfigError, ContainersConfig};

/// Label that takes one container out of dockside entirely.
pub const ENABLE_LABEL: &str = "dockside.enable";
/// Label that refuses every command to one container.
pub const COMMANDS_LABEL: &str = "dockside.commands";

/// True when the container's labels turn commands off.
pub fn commands_disabled(labels: &HashMap<String, String>) -> bool {
    labels
        .get(COMMANDS_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

#[derive(Debug, Clone)]
pub struct ContainerFilter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

/// Compiles names/globs; errors name the key and index.
pub fn glob_set(key: &str, patterns: &[String]) -> Result<GlobSet, ConfigError> {
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        let glob = Glob::new(p).map_err(|e| ConfigError::Invalid {
            key: format!("{key}[{i}]"),
            message: e.to_string(),
        })?;
        b.add(glob);
    }
    b.build().map_err(|e| ConfigError::Invalid {
        key: key.into(),
        message: e.to_string(),
    })
}

impl ContainerFilter {
    pub fn new(cfg: &ContainersConfig) -> Result<Self, ConfigError> {
        let include = if cfg.include.is_empty() {
            None
        } else {
            Some(glob_set("containers.include", &cfg.include)?)
        };
        Ok(Self {
            include,
            exclude: glob_set("containers.exclude", &cfg.exclude)?,
        })
    }

    /// By name alone (events carry the name; the label check needs inspect data).
    pub fn allows_name(&self, name: &str) -> bool {
        // The old container during an `update`: never mirrored.
        if name.ends_with(crate::docker::recreate::OLD_SUFFIX) || self.exclude.is_match(name) {
            return false;
        }
        self.include.as_ref().is_none_or(|inc| inc.is_match(name))
    }

    pub fn allows(&self, name: &str, labels: &HashMap<String, String>) -> bool {
        !label_excludes(labels) && self.allows_name(name)
    }
}

/// The label `dockside.enable=false`: excluded whatever the name.
pub fn label_excludes(labels: &HashMap<String, String>) -> bool {
    labels
        .get(ENABLE_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_exclude_and_label() {
        let cfg = ContainersConfig {
            include: vec!["web*".into(), "db".into()],
            exclude: vec!["web-tmp*".into()],
            ..Default::default()
        };
        let f = ContainerFilter::new(&cfg).expect("filter");
        assert!(f.allows_name("web"));
        assert!(f.allows_name("web-1"));
        assert!(f.allows_name("db"));
        assert!(!f.allows_name("db2"));
        assert!(!f.allows_name("web-tmp-3"));
        let labels = HashMap::from([(ENABLE_LABEL.to_string(), "False".to_string())]);
        assert!(!f.allows("web", &labels));
        let all = ContainerFilter::new(&ContainersConfig::default()).expect("filter");
        assert!(all.allows_name("anything"));
        let bad = ContainersConfig {
            exclude: vec!["a[".into()],
            ..Default::default()
        };
        let e = ContainerFilter::new(&bad).expect_err("bad glob");
        assert!(e.to_string().contains("containers.exclude[0]"));
    }
}
