//! A container running a real systemd as PID 1 (the root scripts/systemd-image.sh
//! builds), on the host's network with the engine's socket: for the unit
//! and the Debian package, installed as users do.

use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

pub const SYSTEMD_IMAGE: &str = "dockside-test/systemd:bookworm-2";

/// A container running systemd as PID 1, removed when dropped.
pub struct Machine {
    pub name: String,
}

impl Machine {
    pub fn start() -> Self {
        let ok = Command::new("docker")
            .args(["image", "inspect", SYSTEMD_IMAGE])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{SYSTEMD_IMAGE} is missing: run scripts/test-env.sh (scripts/systemd-image.sh)"
        );
        let name = unique("dssd");
        // --privileged fails on this engine: every capability the engine
        // itself holds, instead.
        let dockerd = Command::new("pidof")
            .arg("dockerd")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        let bnd = std::fs::read_to_string(format!("/proc/{}/status", dockerd.trim()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapBnd:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(u64::MAX);
        const CAPS: [&str; 41] = [
            "CHOWN",
            "DAC_OVERRIDE",
            "DAC_READ_SEARCH",
            "FOWNER",
            "FSETID",
            "KILL",
            "SETGID",
            "SETUID",
            "SETPCAP",
            "LINUX_IMMUTABLE",
            "NET_BIND_SERVICE",
            "NET_BROADCAST",
            "NET_ADMIN",
            "NET_RAW",
            "IPC_LOCK",
            "IPC_OWNER",
            "SYS_MODULE",
            "SYS_RAWIO",
            "SYS_CHROOT",
            "SYS_PTRACE",
            "SYS_PACCT",
            "SYS_ADMIN",
            "SYS_BOOT",
            "SYS_NICE",
            "SYS_RESOURCE",
            "SYS_TIME",
            "SYS_TTY_CONFIG",
            "MKNOD",
            "LEASE",
            "AUDIT_WRITE",
            "AUDIT_CONTROL",
            "SETFCAP",
            "MAC_OVERRIDE",
            "MAC_ADMIN",
            "SYSLOG",
            "WAKE_ALARM",
            "BLOCK_SUSPEND",
            "AUDIT_READ",
            "PERFMON",
            "BPF",
            "CHECKPOINT_RESTORE",
        ];
        let mut args: Vec<String> = [
            "run",
            "-d",
            "--name",
            &name,
            "--cap-add",
            "ALL",
            "--security-opt",
            "seccomp=unconfined",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            "-e",
            "container=docker",
            "--stop-signal",
            "SIGRTMIN+3",
            "--network",
            "host",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (bit, cap) in CAPS.iter().enumerate() {
            if bnd & (1 << bit) == 0 {
                args.extend(["--cap-drop".into(), cap.to_string()]);
            }
        }
        if !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            args.extend([
                "--cgroupns".into(),
                "host".into(),
                "-v".into(),
                "/sys/fs/cgroup:/sys/fs/cgroup:rw".into(),
            ]);
        }
        args.extend([SYSTEMD_IMAGE.into(), "/sbin/init".into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&argv);
        let m = Self { name };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = m.exec_out(&["systemctl", "is-system-running"]);
            if s.starts_with("running") || s.starts_with("degraded") {
                break;
            }
            assert!(Instant::now() < deadline, "systemd did not come up: {s}");
            std::thread::sleep(Duration::from_millis(200));
        }
        m
    }

    /// Installs a dockside binary where the README's unit expects it.
    pub fn install_binary(&self, bin: &str) {
        docker(&["cp", bin, &format!("{}:/usr/local/bin/dockside", self.name)]);
    }

    pub fn exec_out(&self, cmd: &[&str]) -> String {
        let out = Command::new("docker")
            .args(["exec", &self.name])
            .args(cmd)
            .output()
            .expect("docker exec");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn exec(&self, cmd: &[&str]) -> (bool, String) {
        let out = Command::new("docker")
            .args(["exec", &self.name])
            .args(cmd)
            .output()
            .expect("docker exec");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn write(&self, path: &str, content: &str) {
        let local = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(local.path(), content).expect("write");
        let dir = std::path::Path::new(path)
            .parent()
            .expect("dir")
            .display()
            .to_string();
        self.exec(&["mkdir", "-p", &dir]);
        docker(&[
            "cp",
            &local.path().display().to_string(),
            &format!("{}:{path}", self.name),
        ]);
        self.exec(&["chmod", "0644", path]);
    }

    pub fn show(&self, prop: &str) -> String {
        self.exec_out(&["systemctl", "show", "-p", prop, "--value", "dockside"])
    }

    pub fn journal(&self) -> String {
        self.exec_out(&["journalctl", "-u", "dockside", "--no-pager", "-n", "80"])
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- journal ----\n{}", self.journal());
        }
        docker_quiet(&["rm", "-f", &self.name]);
    }
}
