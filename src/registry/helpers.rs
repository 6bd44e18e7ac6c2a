//! Docker credential helpers (`credsStore` / `credHelpers` of a Docker
//! `config.json`, SPEC §17): `docker-credential-<name> get` with the
//! registry on stdin answers `{"ServerURL","Username","Secret"}`. Bounded in
//! time and output; the secret never reaches a log. Answers (and failures)
//! are kept for a few minutes, so a config applied twice runs a helper once.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Credentials;

/// How long a helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a helper's answer read.
const MAX_ANSWER: u64 = 64 << 10;
/// How long an answer is reused.
const KEEP: Duration = Duration::from_secs(300);

type Answer = Result<Option<Credentials>, String>;
/// (helper, server) → when asked, the answer.
type Answers = HashMap<(String, String), (Instant, Answer)>;

static CACHE: Mutex<Option<Answers>> = Mutex::new(None);

/// A helper name as Docker allows it: it becomes part of a program name.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.')
}

/// The credentials `helper` holds for `server`: `Ok(None)` when it has none
/// ("credentials not found"), `Err` with why when it is missing, fails,
/// hangs or answers junk.
pub fn get(helper: &str, server: &str) -> Answer {
    let key = (helper.to_string(), server.to_string());
    {
        let g = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, a)) = g.as_ref().and_then(|m| m.get(&key))
            && at.elapsed() < KEEP
        {
            return a.clone();
        }
    }
    let a = run_get(helper, server);
    let mut g = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let m = g.get_or_insert_with(HashMap::new);
    if m.len() > 256 {
        m.clear();
    }
    m.insert(key, (Instant::now(), a.clone()));
    a
}

fn run_get(helper: &str, server: &str) -> Answer {
    if !valid_name(helper) {
        return Err(format!("`{helper}` is not a credential helper name"));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that does not read is caught by the timeout below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let mut out = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.take(MAX_ANSWER).read_to_end(&mut buf);
        }
        buf
    });
    let deadline = Instant::now() + HELPER_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not answer within {}s",
                    HELPER_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("{program}: {e}")),
        }
    };
    let body = reader.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    if !status.success() {
        // Docker's helpers say so on stdout; nothing else of it is shown.
        if text.contains("credentials not found") {
            return Ok(None);
        }
        return Err(format!("{program} failed ({status})"));
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|_| format!("{program} answered no JSON"))?;
    match (v["Username"].as_str(), v["Secret"].as_str()) {
        (Some(u), Some(s)) if !s.is_empty() => Ok(Some(Credentials {
            username: u.to_string(),
            password: s.to_string(),
        })),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_program_prefix_are_refused() {
        assert!(valid_name("desktop"));
        assert!(valid_name("ecr-login"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", "x;rm"] {
            assert!(!valid_name(bad), "{bad}");
            assert!(get(bad, "h").is_err());
        }
        let e = get("dockside-test-absent-helper", "h").expect_err("missing");
        assert!(
            e.contains("cannot run docker-credential-dockside-test-absent-helper"),
            "{e}"
        );
    }
}
