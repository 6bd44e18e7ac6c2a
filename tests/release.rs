//! The release's artifacts (SPEC §15), as `scripts/release.sh` left them in
//! dist/: every checksum holds, every binary is static and for its target,
//! the host's says its version, commit and target; the OCI layout names the
//! three platforms, each image carries the labels and exactly the release
//! binary of its platform; the packages hold what users expect with the
//! right modes; the host's image archive is loaded in the engine with its
//! labels and HEALTHCHECK (tests/sidecar.rs runs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const V: &str = env!("CARGO_PKG_VERSION");
const TARGETS: [(&str, &str, &str); 3] = [
    ("x86_64-unknown-linux-musl", "amd64", "x86-64"),
    ("aarch64-unknown-linux-musl", "arm64", "ARM aarch64"),
    ("armv7-unknown-linux-gnueabihf", "armhf", "ARM, EABI5"),
];

fn dist() -> PathBuf {
    let d = project_dir().join("dist");
    assert!(
        d.join("SHA256SUMS").is_file(),
        "dist/ has no release: run scripts/release.sh (scripts/test.sh does)"
    );
    d
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn sha256_of(path: &Path) -> String {
    run("sha256sum", &[&path.display().to_string()], Path::new("/"))
        .split_whitespace()
        .next()
        .expect("sum")
        .to_string()
}

fn blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let b = std::fs::read(dir.join("blobs/sha256").join(hex)).expect("blob");
    assert_eq!(
        sha256_of(&dir.join("blobs/sha256").join(hex)),
        hex,
        "blob digest"
    );
    b
}

#[test]
fn checksums_binaries_and_version() {
    let d = dist();
    run("sha256sum", &["--check", "--quiet", "SHA256SUMS"], &d);
    for (t, _, arch) in TARGETS {
        let name = format!("dockside-{V}-{t}");
        run(
            "sha256sum",
            &["--check", "--quiet", &format!("{name}.sha256")],
            &d,
        );
        let file = run("file", &["-b", &name], &d);
        assert!(file.contains(arch), "{name}: {file}");
        assert!(
            file.contains("statically linked") || file.contains("static-pie linked"),
            "{name} must be static: {file}"
        );
    }
    let version = run(
        &d.join(format!("dockside-{V}-x86_64-unknown-linux-musl"))
            .display()
            .to_string(),
        &["--version"],
        &d,
    );
    let commit = run("git", &["rev-parse", "--short=12", "HEAD"], &project_dir());
    assert_eq!(
        version.trim(),
        format!(
            "dockside {V} ({}, x86_64-unknown-linux-musl)",
            commit.trim()
        ),
        "a release of another commit is in dist/: run scripts/release.sh"
    );
    for f in [
        "completions/dockside.bash",
        "completions/_dockside",
        "completions/dockside.fish",
    ] {
        let text = std::fs::read_to_string(d.join(f)).expect(f);
        assert!(text.contains("check-config"), "{f}");
    }
    let man = std::fs::read_to_string(d.join("dockside.1")).expect("man page");
    assert!(man.contains(".TH dockside 1"), "{man:.200}");
}

#[test]
fn the_oci_layout_has_three_platforms_each_with_its_own_binary() {
    let d = dist();
    let oci = d.join("oci");
    let layout: Value =
        serde_json::from_slice(&std::fs::read(oci.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(layout["manifests"].as_array().map(Vec::len), Some(1));
    let top = &layout["manifests"][0];
    assert_eq!(top["annotations"]["org.opencontainers.image.ref.name"], V);
    let index: Value = serde_json::from_slice(&blob(&oci, top["digest"].as_str().expect("digest")))
        .expect("image index");
    let mut platforms = Vec::new();
    for m in index["manifests"].as_array().expect("manifests") {
        let p = &m["platform"];
        let plat = format!(
            "{}/{}{}",
            p["os"].as_str().unwrap_or(""),
            p["architecture"].as_str().unwrap_or(""),
            p["variant"]
                .as_str()
                .map(|v| format!("/{v}"))
                .unwrap_or_default()
        );
        let manifest: Value =
            serde_json::from_slice(&blob(&oci, m["digest"].as_str().expect("d"))).expect("json");
        let config: Value = serde_json::from_slice(&blob(
            &oci,
            manifest["config"]["digest"].as_str().expect("config"),
        ))
        .expect("config json");
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], V, "{plat}");
        assert_eq!(labels["org.opencontainers.image.licenses"], "MIT", "{plat}");
        for k in ["revision", "source"] {
            assert!(
                labels[format!("org.opencontainers.image.{k}")].is_string(),
                "{plat}: {k}"
            );
        }
        assert_eq!(config["config"]["User"], "10001:10001");
        assert_eq!(
            config["config"]["Healthcheck"]["Test"],
            serde_json::json!(["CMD", "/usr/local/bin/dockside", "health"])
        );
        // The layer's binary is the release binary of that platform.
        let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
        let hex = layer.strip_prefix("sha256:").expect("hex");
        let tmp = tempfile::tempdir().expect("tmp");
        run(
            "tar",
            &[
                "-xzf",
                &oci.join("blobs/sha256").join(hex).display().to_string(),
                "-C",
                &tmp.path().display().to_string(),
            ],
            &d,
        );
        let target = match plat.as_str() {
            "linux/amd64" => "x86_64-unknown-linux-musl",
            "linux/arm64" => "aarch64-unknown-linux-musl",
            "linux/arm/v7" => "armv7-unknown-linux-gnueabihf",
            other => panic!("unexpected platform {other}"),
        };
        assert_eq!(
            sha256_of(&tmp.path().join("usr/local/bin/dockside")),
            sha256_of(&d.join(format!("dockside-{V}-{target}"))),
            "{plat}: the image's binary is the release's"
        );
        assert!(
            tmp.path()
                .join("etc/ssl/certs/ca-certificates.crt")
                .is_file()
        );
        platforms.push(plat);
    }
    platforms.sort();
    assert_eq!(platforms, ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
}

#[test]
fn the_packages_hold_what_users_expect() {
    let d = dist();
    for (t, arch, _) in TARGETS {
        let deb = format!("dockside_{V}_{arch}.deb");
        let field = |f: &str| run("dpkg-deb", &["-f", &deb, f], &d).trim().to_string();
        assert_eq!(field("Package"), "dockside");
        assert_eq!(field("Version"), V);
        assert_eq!(field("Architecture"), arch);
        let list = run("dpkg-deb", &["-c", &deb], &d);
        let mode_of = |path: &str| {
            list.lines()
                .find(|l| l.ends_with(&format!(".{path}")))
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or_else(|| panic!("{deb} lacks {path}"))
                .to_string()
        };
        assert_eq!(mode_of("/usr/bin/dockside"), "-rwxr-xr-x");
        assert_eq!(
            mode_of("/etc/dockside/dockside.toml"),
            "-rw-r-----",
            "never world-readable"
        );
        for p in [
            "/usr/lib/systemd/system/dockside.service",
            "/usr/lib/systemd/system/dockside.service.d/package.conf",
            "/usr/share/man/man1/dockside.1.gz",
            "/usr/share/bash-completion/completions/dockside",
            "/usr/share/doc/dockside/copyright",
        ] {
            mode_of(p);
        }
        let tmp = tempfile::tempdir().expect("tmp");
        run(
            "dpkg-deb",
            &["-e", &deb, &tmp.path().display().to_string()],
            &d,
        );
        let conffiles = std::fs::read_to_string(tmp.path().join("conffiles")).expect("conffiles");
        assert_eq!(conffiles.trim(), "/etc/dockside/dockside.toml");
        // The packaged binary is the release binary of that target.
        let x = tempfile::tempdir().expect("tmp");
        run(
            "dpkg-deb",
            &["-x", &deb, &x.path().display().to_string()],
            &d,
        );
        assert_eq!(
            sha256_of(&x.path().join("usr/bin/dockside")),
            sha256_of(&d.join(format!("dockside-{V}-{t}")))
        );
    }
}

#[test]
fn the_host_image_archive_is_loaded_with_its_labels_and_healthcheck() {
    let _ = dist();
    let inspect = docker(&["image", "inspect", &format!("dockside:{V}")]);
    let img: Value = serde_json::from_str(&inspect).expect("inspect");
    let cfg = &img[0]["Config"];
    assert_eq!(
        cfg["Labels"]["org.opencontainers.image.version"], V,
        "{cfg}"
    );
    assert_eq!(
        cfg["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/usr/local/bin/dockside", "health"]),
        "{cfg}"
    );
    assert_eq!(cfg["User"], "10001:10001");
    // What the sidecar test runs is that image.
    let local = docker(&["image", "inspect", "-f", "{{.Id}}", "dockside:local"]);
    assert_eq!(local, img[0]["Id"].as_str().unwrap_or(""));
}
