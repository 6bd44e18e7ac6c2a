//! Sign-in for the panel (SPEC §18): the users of `[[http.users]]`,
//! sessions in `HttpOnly` + `SameSite=Strict` cookies, a CSRF token per
//! session that every state-changing request must carry, and failed
//! sign-ins slowed per address. Tokens come from the system's CSPRNG;
//! passwords are compared as SHA-256 digests in constant time and never
//! kept or logged in clear.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{EmbeddedRole as Role, EmbeddedUser};

pub const COOKIE: &str = "dockside_session";
/// A session lasts this long after sign-in.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest goes first).
const MAX_SESSIONS: usize = 1024;
/// The first failed sign-in from an address waits this long, doubling up to
/// [`MAX_DELAY`]; forgotten after [`FAILURE_MEMORY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(8);
const FAILURE_MEMORY: Duration = Duration::from_secs(900);
const MAX_ADDRESSES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    /// A message for the next page (a command's result), shown once.
    pub flash: Option<String>,
    expires: Instant,
}

struct User {
    name: String,
    digest: [u8; 32],
    role: Role,
}

/// The panel's users and sessions.
pub struct Auth {
    users: Vec<User>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Auth({} users)", self.users.len())
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 32 random bytes as hex, from the system's CSPRNG.
pub fn token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    // The system's generator does not fail on Linux; if it did, no session
    // could be guessed from an all-zero token mixed with the time.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = Sha256::digest(t.to_le_bytes()).into();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Equal strings, in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    digest(a).ct_eq(&digest(b)).into()
}

impl Auth {
    /// `None` when no users are configured: the panel is open, read-only.
    pub fn new(users: &[EmbeddedUser]) -> Option<Self> {
        (!users.is_empty()).then(|| Auth {
            users: users
                .iter()
                .map(|u| User {
                    name: u.username.clone(),
                    digest: digest(u.password.as_deref().unwrap_or_default()),
                    role: u.role,
                })
                .collect(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The user's role when the password is theirs. Every user's digest is
    /// compared, so the time does not tell which names exist.
    pub fn check(&self, name: &str, password: &str) -> Option<Role> {
        let d = digest(password);
        let mut found = None;
        for u in &self.users {
            let ok: bool = u.digest.ct_eq(&d).into();
            if ok && same(&u.name, name) {
                found = Some(u.role);
            }
        }
        found
    }

    /// How long a sign-in from `ip` waits because of its earlier failures.
    pub fn delay(&self, ip: IpAddr) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.retain(|_, (_, at)| at.elapsed() < FAILURE_MEMORY);
        match f.get(&ip) {
            Some((n, _)) => FIRST_DELAY
                .saturating_mul(1 << (*n).saturating_sub(1).min(3))
                .min(MAX_DELAY),
            None => Duration::ZERO,
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_ADDRESSES && !f.contains_key(&ip) {
            f.clear();
        }
        let e = f.entry(ip).or_insert((0, Instant::now()));
        *e = (e.0.saturating_add(1), Instant::now());
    }

    /// A new session for a signed-in user; its id (the cookie's value).
    pub fn sign_in(&self, ip: IpAddr, user: &str, role: Role) -> String {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
        let id = token();
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.retain(|_, v| v.expires > Instant::now());
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s
                .iter()
                .min_by_key(|(_, v)| v.expires)
                .map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                role,
                csrf: token(),
                flash: None,
                expires: Instant::now() + SESSION_TTL,
            },
        );
        id
    }

    /// The session of a `Cookie` header, if it is a live one.
    pub fn session(&self, cookie_header: Option<&str>) -> Option<(String, Session)> {
        let id = session_id(cookie_header?)?;
        let s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.get(id)
            .filter(|v| v.expires > Instant::now())
            .map(|v| (id.to_string(), v.clone()))
    }

    /// Takes the session's message (shown once).
    pub fn take_flash(&self, id: &str) -> Option<String> {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.get_mut(id).and_then(|v| v.flash.take())
    }

    pub fn set_flash(&self, id: &str, text: String) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = s.get_mut(id) {
            v.flash = Some(text);
        }
    }

    pub fn sign_out(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// `dockside_session=<id>` out of a `Cookie` header.
fn session_id(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
}

/// The `Set-Cookie` value of a session (none: one that ends it).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_TTL.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<EmbeddedUser> {
        vec![
            EmbeddedUser {
                username: "alice".into(),
                password: Some("a-pass".into()),
                password_file: None,
                role: Role::Control,
            },
            EmbeddedUser {
                username: "bob".into(),
                password: Some("b-pass".into()),
                password_file: None,
                role: Role::Read,
            },
        ]
    }

    #[test]
    fn passwords_sessions_and_cookies() {
        assert!(Auth::new(&[]).is_none());
        let a = Auth::new(&users()).expect("users");
        assert_eq!(a.check("alice", "a-pass"), Some(Role::Control));
        assert_eq!(a.check("bob", "b-pass"), Some(Role::Read));
        assert_eq!(a.check("alice", "b-pass"), None);
        assert_eq!(a.check("carol", "a-pass"), None);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let id = a.sign_in(ip, "alice", Role::Control);
        assert_eq!(id.len(), 64);
        let cookie = format!("other=1; {COOKIE}={id}");
        let (sid, s) = a.session(Some(&cookie)).expect("session");
        assert_eq!((sid.as_str(), s.user.as_str()), (id.as_str(), "alice"));
        assert_ne!(s.csrf, id);
        assert!(a.session(Some(&format!("{COOKIE}={}", token()))).is_none());
        assert!(a.session(Some(&format!("{COOKIE}=../../x"))).is_none());
        a.set_flash(&id, "restart: ok".into());
        assert_eq!(a.take_flash(&id).as_deref(), Some("restart: ok"));
        assert_eq!(a.take_flash(&id), None);
        a.sign_out(&id);
        assert!(a.session(Some(&cookie)).is_none());
        let c = set_cookie(Some(&id));
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        assert!(same("x", "x") && !same("x", "y"));
    }

    #[test]
    fn failed_sign_ins_are_slowed_per_address() {
        let a = Auth::new(&users()).expect("users");
        let (ip, other): (IpAddr, IpAddr) = (
            "10.0.0.1".parse().expect("ip"),
            "10.0.0.2".parse().expect("ip"),
        );
        assert_eq!(a.delay(ip), Duration::ZERO);
        let delays: Vec<u64> = (0..6)
            .map(|_| {
                a.failed(ip);
                a.delay(ip).as_secs()
            })
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 8, 8]);
        assert_eq!(a.delay(other), Duration::ZERO);
        a.sign_in(ip, "bob", Role::Read);
        assert_eq!(a.delay(ip), Duration::ZERO);
    }
}
