//! Which containers dockside mirrors: `containers.include` / `exclude` (names or
//! globs) and the per-container label `dockside.enable=false`.

use std::collections::HashMap;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// A pattern that does not compile, and the key it came from. (This module
/// depends on nothing else of dockside's: the config validates with it.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct FilterError {
    pub key: String,
    pub message: String,
}

/// The old container during an `update` is renamed `<name>` + this, and
/// never mirrored.
pub const OLD_SUFFIX: &str = ".dockside-old";

/// Label that takes one container out of dockside entirely.
pub const ENABLE_LABEL: &str = "dockside.enable";
/// Label that refuses every command to one container.
pub const COMMANDS_LABEL: &str = "dockside.commands";

/// True when the container's labels turn commands off.
/// Label `dockside.logs=false`: the word `logs` is refused (SPEC §16).
pub const LOGS_LABEL: &str = "dockside.logs";

pub fn logs_disabled(labels: &HashMap<String, String>) -> bool {
    labels
        .get(LOGS_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("false"))
}

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
pub fn glob_set(key: &str, patterns: &[String]) -> Result<GlobSet, FilterError> {
    let mut b = GlobSetBuilder::new();
    for (i, p) in patterns.iter().enumerate() {
        let glob = Glob::new(p).map_err(|e| FilterError {
            key: format!("{key}[{i}]"),
            message: e.to_string(),
        })?;
        b.add(glob);
    }
    b.build().map_err(|e| FilterError {
        key: key.into(),
        message: e.to_string(),
    })
}

impl ContainerFilter {
    /// From `containers.include` and `containers.exclude`.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        let include = if include.is_empty() {
            None
        } else {
            Some(glob_set("containers.include", include)?)
        };
        Ok(Self {
            include,
            exclude: glob_set("containers.exclude", exclude)?,
        })
    }

    /// By name alone (events carry the name; the label check needs inspect data).
    pub fn allows_name(&self, name: &str) -> bool {
        // The old container during an `update`: never mirrored.
        if name.ends_with(OLD_SUFFIX) || self.exclude.is_match(name) {
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
        let f = ContainerFilter::new(&["web*".into(), "db".into()], &["web-tmp*".into()])
            .expect("filter");
        assert!(f.allows_name("web"));
        assert!(f.allows_name("web-1"));
        assert!(f.allows_name("db"));
        assert!(!f.allows_name("db2"));
        assert!(!f.allows_name("web-tmp-3"));
        let labels = HashMap::from([(ENABLE_LABEL.to_string(), "False".to_string())]);
        assert!(!f.allows("web", &labels));
        let all = ContainerFilter::new(&[], &[]).expect("filter");
        assert!(all.allows_name("anything"));
        assert!(!all.allows_name("web.dockside-old"));
        let e = ContainerFilter::new(&[], &["a[".into()]).expect_err("bad glob");
        assert!(e.to_string().contains("containers.exclude[0]"));
    }
}
