//! Build facts for `dockside --version` (SPEC §15): the git commit the binary
//! was built from and the target it was built for.

use std::process::Command;

fn main() {
    // A release build from a source tarball has no .git: the packager may say.
    let commit = std::env::var("DOCKSIDE_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=DOCKSIDE_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DOCKSIDE_TARGET={target}");
    println!("cargo:rerun-if-env-changed=DOCKSIDE_GIT_COMMIT");
    for f in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}
