//! The shipped unit (`systemd/dockside.service`, SPEC §11): `systemd-analyze
//! verify` is clean and `systemd-analyze security` rates it 2.0 or lower.

mod common;

use std::process::Command;

fn unit_for_this_build(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::project_dir().join("systemd/dockside.service"))
        .expect("systemd/dockside.service");
    assert!(
        text.contains("ExecStart=/usr/local/bin/dockside "),
        "{text}"
    );
    // verify checks that ExecStart exists: point it at this build.
    let text = text.replace("/usr/local/bin/dockside", env!("CARGO_BIN_EXE_dockside"));
    let p = dir.join("dockside.service");
    std::fs::write(&p, text).expect("write unit");
    p
}

#[test]
fn the_unit_verifies_and_rates_ok() {
    let dir = tempfile::tempdir().expect("tmp");
    let unit = unit_for_this_build(dir.path());
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.trim().is_empty(),
        "verify: {err}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=20"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for dockside.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {text}"));
    assert!(level <= 2.0, "exposure {level} > 2.0:\n{text}");
    assert!(out.status.success(), "{text}");
}
