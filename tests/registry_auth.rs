//! The registry client against a stand-in registry for what Debian's
//! `docker-registry` cannot do: the Bearer token flow (realm on the same
//! server, placeholder scope, tokens that expire server-side), 429 with
//! `Retry-After` (that registry only slows down), a registry that leaves the
//! digest header out, and a token realm that hangs.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::stand_in::{Conn, serve_tcp};
use dockside::registry::{Credentials, Reference, RegistryClient, RegistryError};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

const BODY: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"digest":"sha256:c"},"layers":[]}"#;

#[derive(Default)]
struct State {
    tokens: HashMap<String, (String, Instant)>,
    token_ttl: Duration,
    issued: usize,
    requests: Vec<String>,
    token_auth_headers: Vec<Option<String>>,
}

async fn serve(mut s: Conn<TcpStream>, port: u16, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let Some(req) = s.next_request().await? else {
        return Ok(());
    };
    let (method, path, query) = (req.method.as_str(), req.path.as_str(), req.query.as_str());
    let auth = req.header("authorization").map(String::from);
    st.lock()
        .expect("lock")
        .requests
        .push(format!("{method} {path}"));
    let digest = format!(
        "sha256:{}",
        Sha256::digest(BODY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    // One request per connection, as the registry client's pool may not reuse it.
    let close = |headers: &str| format!("Connection: close\r\n{headers}");
    if path == "/token" {
        if query.contains("hang") {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let scope = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("scope="))
            .unwrap_or("")
            .replace("%3A", ":")
            .replace("%2F", "/");
        let repo = scope
            .trim_start_matches("repository:")
            .trim_end_matches(":pull")
            .to_string();
        let tok = {
            let mut g = st.lock().expect("lock");
            g.issued += 1;
            g.token_auth_headers.push(auth.clone());
            let tok = format!("tok{}", g.issued);
            let ttl = g.token_ttl;
            g.tokens.insert(tok.clone(), (repo, Instant::now() + ttl));
            tok
        };
        let body = format!(r#"{{"token":"{tok}","expires_in":300}}"#);
        return s
            .reply(
                "200 OK",
                &close("Content-Type: application/json\r\n"),
                body.as_bytes(),
            )
            .await;
    }
    if let Some(repo) = path
        .strip_prefix("/v2/")
        .and_then(|p| p.strip_suffix("/tags/list"))
    {
        // Two pages, the second reached through a relative `Link`.
        let (body, link) = if query.contains("last=") {
            (
                r#"{"name":"x","tags":["1.10.0","2.0.0"]}"#.to_string(),
                String::new(),
            )
        } else {
            (
                r#"{"name":"x","tags":["1.0.0","1.1.0"]}"#.to_string(),
                format!("Link: </v2/{repo}/tags/list?last=1.1.0&n=2>; rel=\"next\"\r\n"),
            )
        };
        return s
            .reply(
                "200 OK",
                &close(&format!("Content-Type: application/json\r\n{link}")),
                body.as_bytes(),
            )
            .await;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return s.reply("404 Not Found", &close(""), b"").await;
    };
    let repo = rest.split("/manifests/").next().unwrap_or("").to_string();
    let realm = if repo.starts_with("hang") {
        format!("http://127.0.0.1:{port}/token?hang=1")
    } else {
        format!("http://127.0.0.1:{port}/token")
    };
    let challenge = format!(
        "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"double\",scope=\"repository:user/image:pull\"\r\n"
    );
    let valid = auth
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .and_then(|t| st.lock().expect("lock").tokens.get(t).cloned())
        .is_some_and(|(r, exp)| r == repo && exp > Instant::now());
    if !valid {
        return s
            .reply(
                "401 Unauthorized",
                &close(&challenge),
                br#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            )
            .await;
    }
    if repo.starts_with("limited") {
        return s
            .reply("429 Too Many Requests", &close("Retry-After: 120\r\n"), b"")
            .await;
    }
    let ctype = "Content-Type: application/vnd.docker.distribution.manifest.v2+json\r\n";
    let digest_header = if repo.starts_with("nodigest") {
        String::new()
    } else {
        format!("Docker-Content-Digest: {digest}\r\n")
    };
    let headers = format!("{ctype}{digest_header}");
    let body = if method == "HEAD" {
        String::new()
    } else {
        BODY.to_string()
    };
    // A HEAD answer says the length of the body it does not send.
    let msg = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        BODY.len()
    );
    s.raw(msg.as_bytes()).await
}

async fn double(token_ttl: Duration) -> (u16, Arc<Mutex<State>>) {
    let st = Arc::new(Mutex::new(State {
        token_ttl,
        ..Default::default()
    }));
    let st2 = st.clone();
    let port = serve_tcp(move |c, port| serve(c, port, st2.clone())).await;
    (port, st)
}

fn r(port: u16, repo: &str) -> Reference {
    Reference::parse(&format!("127.0.0.1:{port}/{repo}:1")).expect("reference")
}

fn count(st: &Arc<Mutex<State>>, prefix: &str) -> usize {
    st.lock()
        .expect("lock")
        .requests
        .iter()
        .filter(|q| q.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn bearer_tokens_are_fetched_cached_and_renewed_after_a_401() {
    let (port, st) = double(Duration::from_secs(3600)).await;
    let creds = HashMap::from([(
        format!("127.0.0.1:{port}"),
        Credentials {
            username: "u".into(),
            password: "p".into(),
        },
    )]);
    let c = RegistryClient::new(creds, vec![], vec![]).expect("client");
    let remote = c.head(&r(port, "ok/app")).await.expect("head");
    assert!(remote.digest.starts_with("sha256:"));
    // Token for the real repository (not the challenge's placeholder), with credentials.
    {
        let g = st.lock().expect("lock");
        assert_eq!(g.issued, 1);
        assert!(g.tokens.values().any(|(repo, _)| repo == "ok/app"));
        assert!(
            g.token_auth_headers[0]
                .as_deref()
                .is_some_and(|a| a.starts_with("Basic "))
        );
    }
    // Cached: a second check costs one HEAD, no token.
    c.head(&r(port, "ok/app")).await.expect("head");
    assert_eq!(st.lock().expect("lock").issued, 1);
    assert_eq!(
        count(&st, "HEAD /v2/ok/app/manifests/1"),
        3,
        "anonymous try, then with token, then cached"
    );
    // The server forgets every token (expiry, clock skew): one 401, one new token, success.
    st.lock().expect("lock").tokens.clear();
    c.head(&r(port, "ok/app")).await.expect("head after expiry");
    assert_eq!(st.lock().expect("lock").issued, 2);
}

#[tokio::test]
async fn a_registry_without_the_digest_header_costs_one_get() {
    let (port, st) = double(Duration::from_secs(3600)).await;
    let c = RegistryClient::new(HashMap::new(), vec![], vec![]).expect("client");
    let remote = c.head(&r(port, "nodigest/app")).await.expect("head");
    let want = format!(
        "sha256:{}",
        Sha256::digest(BODY.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(remote.digest, want, "the body's sha256");
    assert_eq!(count(&st, "GET /v2/nodigest/app/manifests/1"), 1);
    // Anonymous token flow: no credentials sent to the realm.
    assert!(
        st.lock()
            .expect("lock")
            .token_auth_headers
            .iter()
            .all(Option::is_none)
    );
}

#[tokio::test]
async fn a_429_slows_down_that_registry_only() {
    let (port, st) = double(Duration::from_secs(3600)).await;
    let (port2, st2) = double(Duration::from_secs(3600)).await;
    let c = RegistryClient::new(HashMap::new(), vec![], vec![]).expect("client");
    assert_eq!(
        c.head(&r(port, "limited/app")).await,
        Err(RegistryError::RateLimited(120))
    );
    let before = count(&st, "HEAD");
    // Cooling down: no request reaches that registry at all…
    assert!(matches!(
        c.head(&r(port, "ok/app")).await,
        Err(RegistryError::RateLimited(_))
    ));
    assert_eq!(count(&st, "HEAD"), before);
    // …while another registry answers as usual.
    c.head(&r(port2, "ok/app")).await.expect("other registry");
    assert!(count(&st2, "HEAD") >= 1);
}

#[tokio::test]
async fn a_hanging_token_realm_times_out_and_other_checks_go_on() {
    let (port, _st) = double(Duration::from_secs(3600)).await;
    let c = Arc::new(RegistryClient::new(HashMap::new(), vec![], vec![]).expect("client"));
    let c2 = c.clone();
    let hang = tokio::spawn(async move { c2.head(&r(port, "hang/app")).await });
    let t = Instant::now();
    c.head(&r(port, "ok/app"))
        .await
        .expect("not delayed by the hanging one");
    assert!(t.elapsed() < Duration::from_secs(5));
    let res = tokio::time::timeout(Duration::from_secs(40), hang)
        .await
        .expect("bounded")
        .expect("join");
    assert!(
        matches!(
            res,
            Err(RegistryError::Connect(_) | RegistryError::Timeout | RegistryError::Auth(_))
        ),
        "{res:?}"
    );
}

#[tokio::test]
async fn tag_lists_follow_link_pages() {
    let (port, st) = double(Duration::from_secs(3600)).await;
    let c = RegistryClient::new(HashMap::new(), vec![], vec![]).expect("client");
    let tags = c.tags(&r(port, "ok/app")).await.expect("tags");
    assert_eq!(tags, vec!["1.0.0", "1.1.0", "1.10.0", "2.0.0"]);
    assert_eq!(count(&st, "GET /v2/ok/app/tags/list"), 2);
}
