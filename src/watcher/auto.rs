//! Automatic updates (SPEC §17), the pure part: which containers update
//! themselves (label or `updates.auto`), the maintenance window, and the
//! minimum age of a version.

use std::collections::BTreeMap;

/// `dockside.update=auto` on a container (or every container of a stack).
pub const AUTO_LABEL: &str = "dockside.update";
/// A command run inside the container before any update of it.
pub const CHECK_LABEL: &str = "dockside.update.check";

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `updates.window = "Sat,Sun 03:00-05:00"`: days (optional, `Mon-Fri`
/// ranges too) and a local time range; a range past midnight belongs to
/// the day it starts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    /// Minutes after midnight.
    start: u16,
    end: u16,
}

impl std::str::FromStr for Window {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (days, times) = match s.rsplit_once(' ') {
            Some((d, t)) => (Some(d.trim()), t),
            None => (None, s),
        };
        let (a, b) = times
            .split_once('-')
            .ok_or_else(|| format!("`{times}` is not a time range like 03:00-05:00"))?;
        let (start, end) = (minutes(a)?, minutes(b)?);
        if start == end {
            return Err("the window's start and end are the same time".into());
        }
        let days = match days {
            None => [true; 7],
            Some(d) => parse_days(d)?,
        };
        Ok(Window { days, start, end })
    }
}

impl Window {
    /// Is this local time (weekday 0 = Monday, minute of the day) inside?
    pub fn contains(&self, weekday: usize, minute: u16) -> bool {
        let today = self.days[weekday % 7];
        let yesterday = self.days[(weekday + 6) % 7];
        if self.start < self.end {
            today && (self.start..self.end).contains(&minute)
        } else {
            (today && minute >= self.start) || (yesterday && minute < self.end)
        }
    }

    /// Now, in local time (`TZ`, else the system's zone, else UTC).
    pub fn contains_now(&self) -> bool {
        let now = jiff::Zoned::now();
        let weekday = now.weekday().to_monday_zero_offset() as usize;
        let minute = now.hour() as u16 * 60 + now.minute() as u16;
        self.contains(weekday, minute)
    }
}

fn minutes(t: &str) -> Result<u16, String> {
    let bad = || format!("`{t}` is not a time like 03:00");
    let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 24 || m > 59 || (h == 24 && m > 0) || t.trim().len() > 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn day(d: &str) -> Result<usize, String> {
    let l = d.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|n| l.len() >= 3 && (l == *n || full_name(n).starts_with(&l)))
        .ok_or_else(|| format!("`{d}` is not a day (Mon … Sun)"))
}

fn full_name(short: &str) -> &'static str {
    match short {
        "mon" => "monday",
        "tue" => "tuesday",
        "wed" => "wednesday",
        "thu" => "thursday",
        "fri" => "friday",
        "sat" => "saturday",
        _ => "sunday",
    }
}

fn parse_days(s: &str) -> Result<[bool; 7], String> {
    let mut out = [false; 7];
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    out[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out[day(part)?] = true,
        }
    }
    if out.iter().all(|d| !d) {
        return Err("no day in the window".into());
    }
    Ok(out)
}

/// Does this container update itself? Its label, or a name glob of
/// `updates.auto`.
pub fn wanted(labels: &BTreeMap<String, String>, name: &str, auto: &globset::GlobSet) -> bool {
    match labels.get(AUTO_LABEL).map(|v| v.trim()) {
        Some("auto") => true,
        // An explicit other value (`manual`) wins over the globs.
        Some(v) if !v.is_empty() => false,
        _ => auto.is_match(name),
    }
}

/// Why an automatic update of a version waits, or `None` when it may run
/// now. `created` is the new image's creation time (Unix seconds).
pub fn waits(
    in_window: bool,
    min_age: Option<std::time::Duration>,
    created: Option<u64>,
    now: u64,
) -> Option<String> {
    if !in_window {
        return Some("outside updates.window".into());
    }
    let min = min_age?;
    match created {
        None => Some("the new image's age is not known yet".into()),
        Some(c) if now.saturating_sub(c) < min.as_secs() => Some(format!(
            "the new image is younger than updates.min_age ({})",
            humantime::format_duration(min)
        )),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Window {
        s.parse().expect("window")
    }

    #[test]
    fn windows() {
        let weekend = w("Sat,Sun 03:00-05:00");
        assert!(weekend.contains(5, 3 * 60));
        assert!(weekend.contains(6, 4 * 60 + 59));
        assert!(!weekend.contains(6, 5 * 60));
        assert!(!weekend.contains(0, 4 * 60));
        // Past midnight: the night starting on Friday reaches into Saturday.
        let night = w("Fri 23:00-01:30");
        assert!(night.contains(4, 23 * 60 + 10));
        assert!(night.contains(5, 60));
        assert!(!night.contains(5, 23 * 60 + 10));
        assert!(!night.contains(4, 60));
        let daily = w("02:00-04:00");
        assert!((0..7).all(|d| daily.contains(d, 150)));
        let weekdays = w("mon-fri 01:00-02:00");
        assert!(weekdays.contains(0, 61) && weekdays.contains(4, 61) && !weekdays.contains(5, 61));
        let wrap = w("Sat-Mon 00:00-24:00");
        assert!(wrap.contains(6, 0) && wrap.contains(0, 1439) && !wrap.contains(1, 10));
        assert!(w("Saturday,sunday 03:00-05:00").contains(6, 200));
        for bad in [
            "",
            "03:00",
            "Sat 3-5",
            "Sat 25:00-26:00",
            "Caturday 03:00-05:00",
            "03:00-03:00",
            "Sat 03:00-05:00:00",
        ] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn who_updates_itself_and_when() {
        let globs = crate::filter::glob_set("updates.auto", &["media-*".to_string()]).expect("g");
        let none = BTreeMap::new();
        let label = |v: &str| BTreeMap::from([(AUTO_LABEL.to_string(), v.to_string())]);
        assert!(wanted(&label("auto"), "db", &globs));
        assert!(wanted(&none, "media-plex", &globs));
        assert!(!wanted(&label("manual"), "media-plex", &globs));
        assert!(!wanted(&none, "db", &globs));

        let day = 86_400;
        let min = Some(std::time::Duration::from_secs(3 * day));
        assert!(waits(false, None, None, 0).is_some());
        assert_eq!(waits(true, None, None, 0), None);
        assert!(waits(true, min, None, 10 * day).is_some());
        assert!(waits(true, min, Some(8 * day), 10 * day).is_some());
        assert_eq!(waits(true, min, Some(7 * day), 10 * day), None);
    }
}
