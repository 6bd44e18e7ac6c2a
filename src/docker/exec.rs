//! The pre-update check (SPEC §17): a shell command run inside a container
//! with `exec`, bounded in time and output. Docker cannot kill an exec, so
//! the command first prints its shell's pid and, past the bound, a second
//! exec kills it.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::client::{MAX_OBJECT_BODY, REQUEST_TIMEOUT, read_capped, status_error};
use super::{DockerClient, DockerError};

/// The output kept of a check (its tail).
const MAX_OUTPUT: usize = 64 << 10;
const PID_MARK: &str = "dockside-check-pid:";

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// Exit code and the last non-empty output line.
    Exited(i64, String),
    /// Still running at the bound (and killed).
    TimedOut,
}

impl DockerClient {
    /// Runs `command` with `sh -c` in container `id`, at most `bound`.
    pub async fn exec_check(
        &self,
        id: &str,
        command: &str,
        bound: Duration,
    ) -> Result<CheckOutcome, DockerError> {
        // `exec` keeps the shell's pid for the command itself.
        let script = format!("echo {PID_MARK}$$; exec sh -c \"$0\"");
        let body = serde_json::json!({
            "AttachStdout": true, "AttachStderr": true, "Tty": false,
            "Cmd": ["sh", "-c", script, command],
        });
        let exec_id = self.exec_create(id, &body).await?;
        let url = self.url(&["exec", &exec_id, "start"]);
        let start = serde_json::json!({"Detach": false, "Tty": false});
        let mut out = Output::default();
        let run = async {
            let mut resp = self
                .execute_with(Method::POST, url, None, Some(&start), None)
                .await?;
            if !resp.status().is_success() {
                return Err(status_error(resp).await);
            }
            while let Some(chunk) = resp.chunk().await.map_err(DockerError::from_reqwest)? {
                out.push(&chunk);
            }
            Ok(())
        };
        match tokio::time::timeout(bound, run).await {
            Ok(r) => r?,
            Err(_) => {
                if let Some(pid) = out.pid() {
                    let kill = serde_json::json!({"Cmd": ["kill", "-9", pid.to_string()]});
                    if let Ok(k) = self.exec_create(id, &kill).await {
                        let url = self.url(&["exec", &k, "start"]);
                        let _ = self
                            .execute_with(
                                Method::POST,
                                url,
                                Some(REQUEST_TIMEOUT),
                                Some(&serde_json::json!({"Detach": true})),
                                None,
                            )
                            .await;
                    }
                }
                return Ok(CheckOutcome::TimedOut);
            }
        }
        let url = self.url(&["exec", &exec_id, "json"]);
        let resp = self
            .execute(Method::GET, url, Some(REQUEST_TIMEOUT))
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(resp).await);
        }
        let v = json(resp, "exec inspect").await?;
        let code = v["ExitCode"].as_i64().unwrap_or(-1);
        Ok(CheckOutcome::Exited(code, out.last_line()))
    }

    /// `POST /containers/{id}/exec`: an exec instance, not started (the engine
    /// sends `exec_create`); returns its id.
    pub async fn exec_create(
        &self,
        id: &str,
        body: &serde_json::Value,
    ) -> Result<String, DockerError> {
        let url = self.url(&["containers", id, "exec"]);
        let resp = self
            .execute_with(Method::POST, url, Some(REQUEST_TIMEOUT), Some(body), None)
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => return Err(DockerError::NotFound),
            s if !s.is_success() => return Err(status_error(resp).await),
            _ => {}
        }
        let v = json(resp, "exec create").await?;
        v["Id"]
            .as_str()
            .map(String::from)
            .ok_or(DockerError::Decode {
                what: "exec create",
                message: "no Id".into(),
            })
    }
}

async fn json(
    resp: reqwest::Response,
    what: &'static str,
) -> Result<serde_json::Value, DockerError> {
    let body = read_capped(resp, MAX_OBJECT_BODY, what).await?;
    serde_json::from_slice(&body).map_err(|e| DockerError::Decode {
        what,
        message: e.to_string(),
    })
}

/// The multiplexed output of an exec (8-byte frame headers), both streams
/// together, the tail kept.
#[derive(Debug, Default)]
struct Output {
    raw: Vec<u8>,
    text: Vec<u8>,
}

impl Output {
    fn push(&mut self, chunk: &[u8]) {
        self.raw.extend_from_slice(chunk);
        while self.raw.len() >= 8 {
            let len = u32::from_be_bytes([self.raw[4], self.raw[5], self.raw[6], self.raw[7]]);
            let end = 8 + len as usize;
            if self.raw.len() < end {
                // A frame larger than what is kept: take what came, bounded.
                if self.raw.len() > MAX_OUTPUT {
                    self.text.extend_from_slice(&self.raw[8..]);
                    self.raw.clear();
                }
                break;
            }
            self.text.extend_from_slice(&self.raw[8..end]);
            self.raw.drain(..end);
        }
        if self.text.len() > 2 * MAX_OUTPUT {
            // Keep the head (the pid line) and the tail (the last line).
            let tail = self.text.split_off(self.text.len() - MAX_OUTPUT);
            self.text.truncate(256);
            self.text.push(b'\n');
            self.text.extend_from_slice(&tail);
        }
    }

    fn lines(&self) -> impl Iterator<Item = String> + '_ {
        String::from_utf8_lossy(&self.text)
            .lines()
            .map(|l| l.trim().to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn pid(&self) -> Option<u32> {
        self.lines()
            .find_map(|l| l.strip_prefix(PID_MARK).and_then(|p| p.parse().ok()))
    }

    /// The last non-empty line (the pid line left out), at most 255 characters.
    fn last_line(&self) -> String {
        self.lines()
            .filter(|l| !l.is_empty() && !l.starts_with(PID_MARK))
            .last()
            .map(|l| l.chars().take(255).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, text: &str) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(text.len() as u32).to_be_bytes());
        f.extend_from_slice(text.as_bytes());
        f
    }

    #[test]
    fn output_frames_split_anywhere() {
        let mut all = frame(1, "dockside-check-pid:42\n");
        all.extend(frame(1, "checking…\n"));
        all.extend(frame(2, "plex is streaming to 2 clients\n\n"));
        for cut in [1, 5, 9, 30, all.len() - 1] {
            let mut o = Output::default();
            o.push(&all[..cut]);
            o.push(&all[cut..]);
            assert_eq!(o.pid(), Some(42));
            assert_eq!(o.last_line(), "plex is streaming to 2 clients");
        }
        let mut big = Output::default();
        big.push(&frame(1, "dockside-check-pid:7\n"));
        for _ in 0..50 {
            big.push(&frame(1, &"x".repeat(8000)));
        }
        big.push(&frame(1, "\nlast\n"));
        assert!(big.text.len() <= 2 * MAX_OUTPUT + 1024);
        assert_eq!((big.pid(), big.last_line().as_str()), (Some(7), "last"));
    }
}
