//! Tag following (`dockside.follow=semver`): pick the newest tag of the same
//! shape as the running one (prefix, number of components, suffix), skipping
//! pre-releases unless the running tag is one, optionally pinned to the major
//! or minor version and filtered by a regex (registry.md §8).

use std::cmp::Ordering;

pub const FOLLOW_LABEL: &str = "dockside.follow";
pub const PIN_LABEL: &str = "dockside.follow.pin";
pub const INCLUDE_LABEL: &str = "dockside.follow.include";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagVersion {
    pub prefix: String,
    pub nums: Vec<u64>,
    /// `rc1` in `1.2.0-rc1`.
    pub pre: Option<String>,
    /// `-alpine` in `1.2.3-alpine`.
    pub suffix: String,
}

fn is_pre(token: &str) -> bool {
    let t = token.to_ascii_lowercase();
    ["alpha", "beta", "rc", "pre", "dev", "preview"]
        .iter()
        .any(|p| t.starts_with(p) && t[p.len()..].chars().all(|c| c.is_ascii_digit() || c == '.'))
}

/// `v1.2.3-rc1-alpine` → prefix `v`, [1,2,3], pre `rc1`, suffix `-alpine`.
pub fn parse(tag: &str) -> Option<TagVersion> {
    if tag.starts_with("sha256-") || tag.ends_with(".sig") || tag.ends_with(".att") {
        return None;
    }
    let start = tag.find(|c: char| c.is_ascii_digit())?;
    let prefix = &tag[..start];
    if prefix.len() > 16 || prefix.contains(['.', '-']) && !prefix.ends_with(['-', '_']) {
        return None;
    }
    let rest = &tag[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let numeric = rest[..end].trim_end_matches('.');
    let nums: Vec<u64> = numeric
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let mut after = &rest[numeric.len()..];
    let mut pre = None;
    if let Some(t) = after.strip_prefix('-') {
        let tok_end = t.find('-').unwrap_or(t.len());
        if is_pre(&t[..tok_end]) {
            pre = Some(t[..tok_end].to_string());
            after = &t[tok_end..];
        }
    }
    Some(TagVersion {
        prefix: prefix.to_string(),
        nums,
        pre,
        suffix: after.to_string(),
    })
}

fn cmp(a: &TagVersion, b: &TagVersion) -> Ordering {
    a.nums.cmp(&b.nums).then_with(|| match (&a.pre, &b.pre) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Greater,
        (Some(_), None) => Ordering::Less,
        (Some(x), Some(y)) => natural(x, y),
    })
}

/// `rc2` < `rc10`.
fn natural(a: &str, b: &str) -> Ordering {
    let split = |s: &str| {
        let i = s.find(|c: char| c.is_ascii_digit()).unwrap_or(s.len());
        (s[..i].to_string(), s[i..].parse::<u64>().unwrap_or(0))
    };
    split(a).cmp(&split(b))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pin {
    Major,
    Minor,
}

/// What the labels ask for; `None` when the container does not follow tags.
#[derive(Debug, Clone)]
pub struct Follow {
    pub pin: Option<Pin>,
    pub include: Option<regex::Regex>,
}

impl Follow {
    /// From a container's labels; a bad label is an error to show in the status.
    pub fn from_labels<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Option<Self>, String> {
        match get(FOLLOW_LABEL) {
            None => return Ok(None),
            Some("semver") => {}
            Some(other) => {
                return Err(format!(
                    "{FOLLOW_LABEL}={other}: only `semver` is supported"
                ));
            }
        }
        let pin = match get(PIN_LABEL) {
            None | Some("") => None,
            Some("major") => Some(Pin::Major),
            Some("minor") => Some(Pin::Minor),
            Some(other) => return Err(format!("{PIN_LABEL}={other}: expected `major` or `minor`")),
        };
        let include = match get(INCLUDE_LABEL) {
            None | Some("") => None,
            Some(re) => Some(
                regex::RegexBuilder::new(re)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("{INCLUDE_LABEL}: {e}"))?,
            ),
        };
        Ok(Some(Self { pin, include }))
    }
}

/// May a container on `cur` move to tag `t` (version `v`)? Same shape,
/// no pre-release unless running one, within the pin and the include regex.
fn fits(cur: &TagVersion, t: &str, v: &TagVersion, follow: &Follow) -> bool {
    if v.prefix != cur.prefix || v.nums.len() != cur.nums.len() || v.suffix != cur.suffix {
        return false;
    }
    if v.pre.is_some() && cur.pre.is_none() {
        return false;
    }
    let pinned_out = match follow.pin {
        Some(Pin::Major) => v.nums.first() != cur.nums.first(),
        Some(Pin::Minor) => v.nums.get(..2) != cur.nums.get(..2),
        None => false,
    };
    !pinned_out && follow.include.as_ref().is_none_or(|re| re.is_match(t))
}

/// The newest tag of `tags` that `current` may move to (`current` itself when
/// nothing newer fits); `None` when `current` has no version shape.
pub fn newest(current: &str, tags: &[String], follow: &Follow) -> Option<String> {
    let cur = parse(current)?;
    let mut best: (TagVersion, String) = (cur.clone(), current.to_string());
    for t in tags {
        let Some(v) = parse(t) else { continue };
        if fits(&cur, t, &v, follow) && cmp(&v, &best.0) == Ordering::Greater {
            best = (v, t.clone());
        }
    }
    Some(best.1)
}

/// The most versions `<ct>/versions` lists (SPEC §17).
pub const MAX_AVAILABLE: usize = 20;

/// The tags `current` may move to, newer or older, newest first, without
/// `current` itself, at most [`MAX_AVAILABLE`] (`<ct>/versions`, SPEC §17);
/// `None` when `current` has no version shape.
pub fn available(current: &str, tags: &[String], follow: &Follow) -> Option<Vec<String>> {
    let cur = parse(current)?;
    let mut fit: Vec<(TagVersion, &String)> = tags
        .iter()
        .filter(|t| *t != current)
        .filter_map(|t| parse(t).map(|v| (v, t)))
        .filter(|(v, t)| fits(&cur, t, v, follow))
        .collect();
    fit.sort_by(|a, b| cmp(&b.0, &a.0).then_with(|| b.1.cmp(a.1)));
    fit.dedup_by(|a, b| a.1 == b.1);
    Some(
        fit.into_iter()
            .take(MAX_AVAILABLE)
            .map(|(_, t)| t.clone())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn follow(pin: Option<Pin>, include: Option<&str>) -> Follow {
        Follow {
            pin,
            include: include.map(|r| regex::Regex::new(r).expect("re")),
        }
    }

    #[test]
    fn parsing() {
        let v = parse("v1.2.3-rc1-alpine").expect("v");
        assert_eq!(
            (
                v.prefix.as_str(),
                v.nums.clone(),
                v.pre.as_deref(),
                v.suffix.as_str()
            ),
            ("v", vec![1, 2, 3], Some("rc1"), "-alpine")
        );
        let v = parse("16-alpine").expect("v");
        assert_eq!(
            (v.nums.clone(), v.pre, v.suffix.as_str()),
            (vec![16], None, "-alpine")
        );
        assert!(parse("latest").is_none());
        assert!(parse("sha256-abc.sig").is_none());
        assert_eq!(parse("2026.04.1").expect("date").nums, vec![2026, 4, 1]);
    }

    #[test]
    fn newest_keeps_shape_and_skips_prereleases() {
        // distribution 2.8 lists tags unsorted.
        let all = tags(&[
            "2.0.0",
            "1.1.0",
            "latest",
            "1.0.0",
            "v2.1",
            "1.10.0",
            "1.2.0",
            "2.0.0-rc1",
            "3.0",
            "1.10.0-alpine",
            "2.1.0-rc2",
        ]);
        let f = follow(None, None);
        assert_eq!(newest("1.1.0", &all, &f).as_deref(), Some("2.0.0"));
        assert_eq!(
            newest("1.1.0", &all, &follow(Some(Pin::Major), None)).as_deref(),
            Some("1.10.0")
        );
        assert_eq!(
            newest("1.1.0", &all, &follow(Some(Pin::Minor), None)).as_deref(),
            Some("1.1.0")
        );
        assert_eq!(
            newest("1.0.0-alpine", &all, &f).as_deref(),
            Some("1.10.0-alpine")
        );
        assert_eq!(newest("v2.0", &all, &f).as_deref(), Some("v2.1"));
        // Already on a pre-release: newer pre-releases and releases count.
        assert_eq!(newest("2.0.0-rc1", &all, &f).as_deref(), Some("2.1.0-rc2"));
        assert_eq!(
            newest("2.0.0", &all, &follow(None, Some(r"^1\."))).as_deref(),
            Some("2.0.0")
        );
        assert_eq!(newest("latest", &all, &f), None);
        let rcs = tags(&["1.0.0-rc2", "1.0.0-rc10", "1.0.0-rc9"]);
        assert_eq!(newest("1.0.0-rc2", &rcs, &f).as_deref(), Some("1.0.0-rc10"));
    }

    #[test]
    fn available_is_newest_first_same_shape_and_bounded() {
        let all = tags(&[
            "1.27.2",
            "1.28.0",
            "latest",
            "1.27.3",
            "1.26.0",
            "1.28.0-alpine",
            "1.29.0-rc1",
            "2.0",
        ]);
        let f = follow(None, None);
        assert_eq!(
            available("1.27.2", &all, &f).expect("shape"),
            tags(&["1.28.0", "1.27.3", "1.26.0"])
        );
        assert_eq!(
            available("1.27.2", &all, &follow(Some(Pin::Minor), None)).expect("shape"),
            tags(&["1.27.3"])
        );
        assert!(available("latest", &all, &f).is_none());
        let many: Vec<String> = (0..50).map(|i| format!("1.{i}.0")).collect();
        let a = available("1.3.0", &many, &f).expect("shape");
        assert_eq!(a.len(), MAX_AVAILABLE);
        assert_eq!(a[0], "1.49.0");
    }

    #[test]
    fn labels() {
        let l = |k: &str| match k {
            FOLLOW_LABEL => Some("semver"),
            PIN_LABEL => Some("major"),
            _ => None,
        };
        let f = Follow::from_labels(l).expect("ok").expect("follows");
        assert_eq!(f.pin, Some(Pin::Major));
        assert!(Follow::from_labels(|_| None).expect("ok").is_none());
        assert!(Follow::from_labels(|k| (k == FOLLOW_LABEL).then_some("calver")).is_err());
        assert!(
            Follow::from_labels(|k| match k {
                FOLLOW_LABEL => Some("semver"),
                INCLUDE_LABEL => Some("(("),
                _ => None,
            })
            .is_err()
        );
    }
}
