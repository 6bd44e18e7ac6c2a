//! The image watcher against a real `docker-registry` and the real engine,
//! asserting on the MQTT `update` topic and on the registry's access log.

mod common;

use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const T: Duration = Duration::from_secs(30);
const DOCKER_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Setup {
    broker: Broker,
    ct: Containers,
    base: String,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        Self {
            ct: Containers::new(&unique("dsu")),
            broker: Broker::start(),
            base: unique("t"),
            dir: tempfile::tempdir().expect("tmp"),
        }
    }
    fn config(&self, extra: &str) -> String {
        format!(
            "{}\n[updates]\n{extra}\n",
            base_config(
                &self.broker,
                &self.base,
                &self.dir.path().join("state"),
                &self.ct.prefix
            )
        )
    }
    fn update(&self, ct: &str) -> String {
        format!("{}/local/{ct}/update", self.base)
    }
    /// Waits for `status` on the container's update topic; returns (installed, latest).
    async fn versions(&self, c: &Collector, ct: &str, status: &str) -> (String, String) {
        let u = c
            .wait_latest(&self.update(ct), T, |m| m.json()["status"] == status)
            .await
            .json();
        let v = |k: &str| u[k].as_str().unwrap_or("").to_string();
        (v("installed_version"), v("latest_version"))
    }
    async fn check_all(&self, c: &Collector, rid: &str) {
        // `check_updates` is limited to one per scope every 5 s: wait and ask again.
        for attempt in 0..3 {
            let id = format!("{rid}-{attempt}");
            let payload = format!(r#"{{"action":"check_updates","request_id":"{id}"}}"#);
            c.publish(&format!("{}/set", self.base), payload.as_bytes(), false)
                .await;
            let r = c
                .wait_latest(&format!("{}/result", self.base), T, |m| {
                    m.json()["request_id"] == id.as_str()
                })
                .await
                .json();
            if r["code"] == "rate_limited" {
                tokio::time::sleep(Duration::from_millis(5100)).await;
                continue;
            }
            assert_eq!(r["ok"], true, "{r}");
            return;
        }
        panic!("check_updates stayed rate-limited");
    }
}

fn sha(data: &[u8]) -> String {
    let d = Sha256::digest(data);
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// The registry's HTTP API, for images `docker push` cannot make.
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(host: &str) -> Self {
        Self {
            http: dockside::http::client_builder()
                .build()
                .expect("http client"),
            base: format!("http://{host}"),
        }
    }
    async fn blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha(data);
        let r = self
            .http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.base))
            .send()
            .await
            .expect("upload");
        let loc = r.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let loc = if loc.starts_with("http") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = self
            .http
            .put(format!("{loc}{sep}digest={digest}"))
            .body(data.to_vec())
            .send()
            .await
            .expect("put blob");
        assert!(r.status().is_success(), "blob: {}", r.status());
        digest
    }
    async fn manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("content-type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("put manifest");
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "manifest {reference}: {status} {text}");
        sha(body)
    }
    async fn get(&self, repo: &str, reference: &str, accept: &str) -> Vec<u8> {
        self.http
            .get(format!("{}/v2/{repo}/manifests/{reference}", self.base))
            .header("accept", accept)
            .send()
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
            .to_vec()
    }
    /// A manifest for another architecture (never run, only listed in an index).
    async fn foreign(&self, repo: &str, arch: &str) -> (String, usize) {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{}},"created":"{}"}}"#,
            fastrand::u64(..)
        );
        let cd = self.blob(repo, config.as_bytes()).await;
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_V2}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{cd}"}},"layers":[]}}"#,
            config.len()
        );
        let d = self
            .manifest(
                repo,
                &format!("{arch}-{}", fastrand::u32(..)),
                DOCKER_V2,
                m.as_bytes(),
            )
            .await;
        (d, m.len())
    }
}

/// An image manifest with Docker v2 media types (from an OCI one or itself).
fn as_docker_v2(manifest: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(manifest)
        .replace(OCI_MANIFEST, DOCKER_V2)
        .replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        )
        .replace(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        )
        .into_bytes()
}

/// An image manifest with OCI media types (from a Docker v2 one or itself).
fn as_oci(manifest: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(manifest)
        .replace(DOCKER_V2, OCI_MANIFEST)
        .replace(
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
        .replace(
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
        )
        .into_bytes()
}

fn index(media: &str, child_media: &str, children: &[(&str, usize, &str)]) -> String {
    let entries: Vec<String> = children
        .iter()
        .map(|(d, size, arch)| {
            format!(r#"{{"mediaType":"{child_media}","size":{size},"digest":"{d}","platform":{{"architecture":"{arch}","os":"linux"}}}}"#)
        })
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{media}","manifests":[{}]}}"#,
        entries.join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_one_head_per_image_and_restart_without_requery() {
    let s = Setup::new();
    let reg = Registry::start();
    let h = reg.host();
    let app = format!("{h}/app:1");
    let other = format!("{h}/other:1");
    build_image(&app);
    docker(&["push", &app]);
    build_image(&other);
    docker(&["push", &other]);
    let (a1, a2, o1) = (s.ct.name("a1"), s.ct.name("a2"), s.ct.name("o1"));
    for (n, img) in [(&a1, &app), (&a2, &app), (&o1, &other)] {
        docker(&["run", "-d", "--name", n, img]);
    }
    // Pinned, locally built, and an alias of another repository. The local
    // build and the alias are named in the test registry, which has neither.
    let digest = docker(&["inspect", "-f", "{{index .RepoDigests 0}}", &app]);
    let pinned = s.ct.name("pinned");
    docker(&["run", "-d", "--name", &pinned, &digest]);
    let local_tag = format!("{h}/{}-local:dev", s.ct.prefix);
    build_image(&local_tag);
    let local = s.ct.name("local");
    docker(&["run", "-d", "--name", &local, &local_tag]);
    let alias_tag = format!("{h}/{}alias/app:1", s.ct.prefix);
    docker(&["tag", &app, &alias_tag]);
    let alias = s.ct.name("alias");
    docker(&["run", "-d", "--name", &alias, &alias_tag]);

    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let mut d = Dockside::start(s.dir.path(), &s.config(""));
    for n in [&a1, &a2, &o1] {
        let u = c
            .wait_latest(&s.update(n), T, |m| m.json()["status"] == "up_to_date")
            .await
            .json();
        assert_eq!(u["update_available"], false);
        assert_eq!(u["installed_version"], u["latest_version"]);
        assert!(
            u["remote_digest"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:"))
        );
        assert!(u["checked_at"].is_string());
        assert!(
            u.as_object().expect("obj").values().all(|v| !v.is_null()),
            "{u}"
        );
    }
    c.wait_latest(&s.update(&pinned), T, |m| m.json()["status"] == "pinned")
        .await;
    c.wait_latest(&s.update(&local), T, |m| {
        m.json()["status"] == "local_build"
    })
    .await;
    let u = c
        .wait_latest(&s.update(&alias), T, |m| m.json()["status"] == "unknown")
        .await
        .json();
    assert!(
        u["error"]
            .as_str()
            .is_some_and(|e| e.contains("another name") || e.contains("other names")),
        "{u}"
    );
    // One HEAD per distinct image, no GET. On the legacy store nothing is
    // asked for the local build or the alias; on the containerd store their
    // RepoDigests prove nothing, so the registry is asked once for each.
    // (A HEAD that finds nothing is confirmed with one GET.)
    let unproven = if containerd_store() { 2 } else { 0 };
    let reqs = reg.dockside_requests();
    assert_eq!(
        reg.manifest_requests(),
        (2 + unproven, unproven),
        "{reqs:?}"
    );

    // A new push under the same tag.
    build_image(&app);
    docker(&["push", &app]);
    s.check_all(&c, "c1").await;
    for n in [&a1, &a2] {
        let u = c
            .wait_latest(&s.update(n), T, |m| {
                m.json()["status"] == "update_available"
            })
            .await
            .json();
        assert_eq!(u["update_available"], true);
        assert_ne!(u["installed_version"], u["latest_version"]);
        assert_eq!(
            u["pending_recreate"], true,
            "the tag now names a newer local image: {u}"
        );
    }
    assert_eq!(
        c.latest(&s.update(&o1)).expect("o1").json()["status"],
        "up_to_date"
    );
    assert_eq!(reg.manifest_requests(), (4 + 2 * unproven, 2 * unproven));
    assert_eq!(
        c.latest(&s.update(&local)).expect("local").json()["status"],
        "local_build"
    );

    // Restart: last known statuses again at once, no registry query for fresh results.
    let (code, _) = d.stop();
    assert_eq!(code, Some(0));
    c.clear();
    d.spawn();
    c.wait_latest(&s.update(&a1), T, |m| {
        m.json()["status"] == "update_available"
    })
    .await;
    c.wait_latest(&s.update(&o1), T, |m| m.json()["status"] == "up_to_date")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        reg.manifest_requests(),
        (4 + 2 * unproven, 2 * unproven),
        "fresh results are not re-queried"
    );
    c.wait_latest(&s.update(&local), T, |m| {
        m.json()["status"] == "local_build"
    })
    .await;

    // The tag is deleted in the registry.
    let api = Api::new(&h);
    let od = docker(&["inspect", "-f", "{{index .RepoDigests 0}}", &other]);
    let od = od.split('@').nth(1).expect("digest");
    let r = api
        .http
        .delete(format!("{}/v2/other/manifests/{od}", api.base))
        .send()
        .await
        .expect("delete");
    assert!(r.status().is_success(), "{}", r.status());
    s.check_all(&c, "c2").await;
    let u = c
        .wait_latest(&s.update(&o1), T, |m| m.json()["status"] == "unknown")
        .await
        .json();
    assert!(
        u["error"]
            .as_str()
            .is_some_and(|e| e.contains("no longer exists")),
        "{u}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_and_oci_images() {
    let s = Setup::new();
    let reg = Registry::start();
    let h = reg.host();
    let api = Api::new(&h);
    // The amd64 image, pushed by docker (Docker v2 manifest).
    let src = format!("{h}/multi:amd64-src");
    build_image(&src);
    docker(&["push", &src]);
    // As a Docker v2 manifest whatever the engine pushed (the containerd store
    // pushes OCI): the same blobs, so the registry takes it under a tag of its own.
    let amd = as_docker_v2(
        &api.get(
            "multi",
            "amd64-src",
            &format!("{DOCKER_V2}, {OCI_MANIFEST}"),
        )
        .await,
    );
    api.manifest("multi", "amd64-v2", DOCKER_V2, &amd).await;
    let amd_d = sha(&amd);
    let (arm1, arm1_len) = api.foreign("multi", "arm64").await;
    let idx1 = index(
        DOCKER_LIST,
        DOCKER_V2,
        &[(&amd_d, amd.len(), "amd64"), (&arm1, arm1_len, "arm64")],
    );
    api.manifest("multi", "multi", DOCKER_LIST, idx1.as_bytes())
        .await;
    // The same image as an OCI manifest, alone and in an OCI index.
    let oci = String::from_utf8_lossy(&as_oci(&amd)).to_string();
    let oci_d = api
        .manifest("multi", "oci", OCI_MANIFEST, oci.as_bytes())
        .await;
    let oidx = index(OCI_INDEX, OCI_MANIFEST, &[(&oci_d, oci.len(), "amd64")]);
    api.manifest("multi", "ociidx", OCI_INDEX, oidx.as_bytes())
        .await;
    let (m, o, oi) = (s.ct.name("multi"), s.ct.name("oci"), s.ct.name("ociidx"));
    for (n, tag) in [(&m, "multi"), (&o, "oci"), (&oi, "ociidx")] {
        let img = format!("{h}/multi:{tag}");
        docker(&["pull", &img]);
        docker(&["run", "-d", "--name", n, &img]);
    }
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &s.config(""));
    for n in [&m, &o, &oi] {
        c.wait_latest(&s.update(n), T, |j| j.json()["status"] == "up_to_date")
            .await;
    }
    // Only the arm64 child changes: the index digest changes, this platform's does not.
    let (arm2, arm2_len) = api.foreign("multi", "arm64").await;
    let idx2 = index(
        DOCKER_LIST,
        DOCKER_V2,
        &[(&amd_d, amd.len(), "amd64"), (&arm2, arm2_len, "arm64")],
    );
    api.manifest("multi", "multi", DOCKER_LIST, idx2.as_bytes())
        .await;
    s.check_all(&c, "m1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u = c.latest(&s.update(&m)).expect("status").json();
    assert_eq!(
        u["status"], "up_to_date",
        "another platform's change is not an update: {u}"
    );
    assert_eq!(u["installed_version"], u["latest_version"]);
    // Now the amd64 child changes too.
    let src2 = format!("{h}/multi:amd64-src2");
    build_image(&src2);
    docker(&["push", &src2]);
    let amd2 = as_docker_v2(
        &api.get(
            "multi",
            "amd64-src2",
            &format!("{DOCKER_V2}, {OCI_MANIFEST}"),
        )
        .await,
    );
    api.manifest("multi", "amd64-v2b", DOCKER_V2, &amd2).await;
    let idx3 = index(
        DOCKER_LIST,
        DOCKER_V2,
        &[
            (&sha(&amd2), amd2.len(), "amd64"),
            (&arm2, arm2_len, "arm64"),
        ],
    );
    api.manifest("multi", "multi", DOCKER_LIST, idx3.as_bytes())
        .await;
    s.check_all(&c, "m2").await;
    let u = c
        .wait_latest(&s.update(&m), T, |j| {
            j.json()["status"] == "update_available"
        })
        .await
        .json();
    assert_eq!(
        u["latest_version"],
        format!("sha256:{}", &sha(&amd2)[7..19]),
        "{u}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_registry_and_a_registry_that_goes_away() {
    let s = Setup::new();
    let mut reg = Registry::start_with_auth("bob", "s3cret");
    let h = reg.host();
    let img = format!("{h}/priv:1");
    build_image(&img);
    // Push with credentials through a private docker config.
    let cfgdir = tempfile::tempdir().expect("tmp");
    let cfg = cfgdir.path().display().to_string();
    docker_login(&cfg, &h, "bob", "s3cret");
    docker(&["--config", &cfg, "push", &img]);
    let n = s.ct.name("priv");
    docker(&["run", "-d", "--name", &n, &img]);
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;

    // Credentials from a Docker config.json.
    let _d = Dockside::start(
        s.dir.path(),
        &s.config(&format!("docker_config = \"{cfg}/config.json\"")),
    );
    c.wait_latest(&s.update(&n), T, |m| m.json()["status"] == "up_to_date")
        .await;

    // Wrong credentials in [updates.registries]: a clear error, no secret shown.
    let base2 = unique("t");
    let dir2 = tempfile::tempdir().expect("tmp");
    let cfg2 = format!(
        "{}\n[updates.registries.\"{h}\"]\nusername = \"bob\"\npassword = \"wrong-pw\"\n",
        base_config(&s.broker, &base2, &dir2.path().join("state"), &s.ct.prefix)
    );
    let d2 = Dockside::start(dir2.path(), &cfg2);
    let c2 = Collector::start(s.broker.port, &format!("{base2}/#")).await;
    let u = c2
        .wait_latest(&format!("{base2}/local/{n}/update"), T, |m| {
            m.json()["status"] == "error"
        })
        .await
        .json();
    assert!(
        u["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused the credentials")),
        "{u}"
    );
    assert!(!d2.log_text().contains("wrong-pw"));

    // The registry goes away, then comes back.
    reg.stop();
    s.check_all(&c, "down").await;
    let u = c
        .wait_latest(&s.update(&n), T, |m| m.json()["status"] == "error")
        .await
        .json();
    assert!(
        u["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach")),
        "{u}"
    );
    reg.restart();
    s.check_all(&c, "back").await;
    c.wait_latest(&s.update(&n), T, |m| m.json()["status"] == "up_to_date")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_following_by_label() {
    let s = Setup::new();
    let reg = Registry::start();
    let h = reg.host();
    let img = format!("{h}/tf:1.1.0");
    build_image(&img);
    for t in ["1.0.0", "1.1.0", "1.10.0", "2.0.0", "2.0.0-rc1", "latest"] {
        let tag = format!("{h}/tf:{t}");
        docker(&["tag", &img, &tag]);
        docker(&["push", &tag]);
    }
    let (free, pinned, top, plain) = (
        s.ct.name("free"),
        s.ct.name("pinned"),
        s.ct.name("top"),
        s.ct.name("plain"),
    );
    docker(&[
        "run",
        "-d",
        "--name",
        &free,
        "-l",
        "dockside.follow=semver",
        &img,
    ]);
    docker(&[
        "run",
        "-d",
        "--name",
        &pinned,
        "-l",
        "dockside.follow=semver",
        "-l",
        "dockside.follow.pin=minor",
        &img,
    ]);
    docker(&[
        "run",
        "-d",
        "--name",
        &top,
        "-l",
        "dockside.follow=semver",
        &format!("{h}/tf:2.0.0"),
    ]);
    docker(&["run", "-d", "--name", &plain, &img]);
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &s.config(""));
    assert_eq!(
        s.versions(&c, &free, "update_available").await,
        ("1.1.0".to_string(), "2.0.0".to_string())
    );
    assert_eq!(
        s.versions(&c, &pinned, "up_to_date").await,
        ("1.1.0".to_string(), "1.1.0".to_string())
    );
    let u = c
        .wait_latest(&s.update(&top), T, |m| m.json()["status"] == "up_to_date")
        .await
        .json();
    assert_eq!(
        u["latest_version"], "2.0.0",
        "pre-releases are skipped: {u}"
    );
    let u = c
        .wait_latest(&s.update(&plain), T, |m| m.json()["status"] == "up_to_date")
        .await
        .json();
    assert!(
        u["installed_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{u}"
    );
    // Tags are listed once per followed reference; no manifest GET.
    let reqs = reg.dockside_requests();
    let lists = reqs
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/tags/list"))
        .count();
    assert_eq!(lists, 2, "{reqs:?}");
    assert_eq!(reg.manifest_requests(), (2, 0), "{reqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_come_from_the_oci_version_label() {
    let s = Setup::new();
    let reg = Registry::start();
    let h = reg.host();
    let img = format!("{h}/labelled:stable");
    let build = |version: &str| {
        build_image_with(
            &img,
            &format!("LABEL org.opencontainers.image.version={version}"),
        );
        docker(&["push", &img]);
    };
    build("1.27.2");
    let n = s.ct.name("lab");
    docker(&["run", "-d", "--name", &n, &img]);
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &s.config(""));
    assert_eq!(
        s.versions(&c, &n, "up_to_date").await,
        ("1.27.2".to_string(), "1.27.2".to_string())
    );
    build("1.27.3");
    s.check_all(&c, "v").await;
    assert_eq!(
        s.versions(&c, &n, "update_available").await,
        ("1.27.2".to_string(), "1.27.3".to_string())
    );
}

/// A BuildKit-style provenance attestation for `image` (digest) in `repo`:
/// an OCI manifest with an `unknown/unknown` config and an in-toto layer.
/// Returns (digest, size).
async fn attestation(api: &Api, repo: &str, image: &str) -> (String, usize) {
    let statement = format!(
        r#"{{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://slsa.dev/provenance/v0.2","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicate":{{"nonce":{}}}}}"#,
        &image[7..],
        fastrand::u64(..)
    );
    let layer = api.blob(repo, statement.as_bytes()).await;
    let config = format!(
        r#"{{"architecture":"unknown","os":"unknown","config":{{}},"rootfs":{{"type":"layers","diff_ids":["{layer}"]}}}}"#
    );
    let config_d = api.blob(repo, config.as_bytes()).await;
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_d}","size":{}}},"layers":[{{"mediaType":"application/vnd.in-toto+json","digest":"{layer}","size":{},"annotations":{{"in-toto.io/predicate-type":"https://slsa.dev/provenance/v0.2"}}}}]}}"#,
        config.len(),
        statement.len()
    );
    let d = api
        .manifest(
            repo,
            &format!("att-{}", fastrand::u32(..)),
            OCI_MANIFEST,
            m.as_bytes(),
        )
        .await;
    (d, m.len())
}

/// The OCI index BuildKit pushes: the image and its attestation manifest.
fn attested_index(image: (&str, usize), att: (&str, usize)) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"annotations":{{"vnd.docker.reference.digest":"{}","vnd.docker.reference.type":"attestation-manifest"}},"platform":{{"architecture":"unknown","os":"unknown"}}}}]}}"#,
        image.0, image.1, att.0, att.1, image.0
    )
}

/// BuildKit's index with an attestation (`unknown/unknown`) entry: the image
/// is tracked by its platform's manifest; a new attestation alone is no
/// update, a new image is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildkit_attestation_entries_are_not_a_platform() {
    let s = Setup::new();
    let reg = Registry::start();
    let h = reg.host();
    let api = Api::new(&h);
    let accept = format!("{DOCKER_V2}, {OCI_MANIFEST}");
    let push_image = |tag: &'static str| {
        let src = format!("{h}/att:{tag}");
        build_image(&src);
        docker(&["push", &src]);
    };
    push_image("src1");
    let img1 = as_oci(&api.get("att", "src1", &accept).await);
    let img1_d = api.manifest("att", "img1", OCI_MANIFEST, &img1).await;
    let (att1, att1_len) = attestation(&api, "att", &img1_d).await;
    let idx = attested_index((&img1_d, img1.len()), (&att1, att1_len));
    api.manifest("att", "1", OCI_INDEX, idx.as_bytes()).await;
    let n = s.ct.name("att");
    let img = format!("{h}/att:1");
    docker(&["pull", &img]);
    docker(&["run", "-d", "--name", &n, &img]);
    let c = Collector::start(s.broker.port, &format!("{}/#", s.base)).await;
    let _d = Dockside::start(s.dir.path(), &s.config(""));
    c.wait_latest(&s.update(&n), T, |m| m.json()["status"] == "up_to_date")
        .await;

    // A new attestation for the same image: the index digest changes.
    let (att2, att2_len) = attestation(&api, "att", &img1_d).await;
    let idx = attested_index((&img1_d, img1.len()), (&att2, att2_len));
    api.manifest("att", "1", OCI_INDEX, idx.as_bytes()).await;
    s.check_all(&c, "a1").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let u = c.latest(&s.update(&n)).expect("status").json();
    assert_eq!(
        u["status"], "up_to_date",
        "a new attestation is no update: {u}"
    );

    // A new image with its attestation.
    push_image("src2");
    let img2 = as_oci(&api.get("att", "src2", &accept).await);
    let img2_d = api.manifest("att", "img2", OCI_MANIFEST, &img2).await;
    let (att3, att3_len) = attestation(&api, "att", &img2_d).await;
    let idx = attested_index((&img2_d, img2.len()), (&att3, att3_len));
    api.manifest("att", "1", OCI_INDEX, idx.as_bytes()).await;
    s.check_all(&c, "a2").await;
    let u = c
        .wait_latest(&s.update(&n), T, |m| {
            m.json()["status"] == "update_available"
        })
        .await
        .json();
    assert_eq!(
        u["latest_version"],
        format!("sha256:{}", &img2_d[7..19]),
        "the image's manifest, not the attestation's: {u}"
    );
}
