//! Headless Chromium through ChromeDriver (W3C WebDriver over HTTP), for
//! the panel's tests: Debian's `chromium` and `chromium-driver`, installed
//! by scripts/test-env.sh. Each browser has its own driver process (on a
//! free port, stopped by the PID we started) and profile directory.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Writes a screenshot to `target/screenshots/` and, with
/// `DOCKSIDE_WRITE_SCREENSHOTS=1`, to `docs/images/` (the README's).
pub fn save_screenshot(name: &str, png: &[u8]) {
    let dir = super::project_dir().join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    std::fs::write(dir.join(name), png).expect("screenshot");
    if std::env::var_os("DOCKSIDE_WRITE_SCREENSHOTS").is_some() {
        let docs = super::project_dir().join("docs/images");
        std::fs::create_dir_all(&docs).expect("docs/images");
        std::fs::write(docs.join(name), png).expect("screenshot");
    }
}

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// A headless browser whose window is `width` × `height` CSS pixels.
    pub async fn start(width: u32, height: u32) -> Self {
        for (bin, pkg) in [
            ("/usr/bin/chromium", "chromium"),
            ("/usr/bin/chromedriver", "chromium-driver"),
        ] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install Debian's {pkg} (scripts/test-env.sh does)"
            );
        }
        let port = super::free_port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let http = dockside::http::client_builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("http client");
        let profile = tempfile::tempdir().expect("profile");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                    format!("--user-data-dir={}", profile.path().display()),
                    format!("--window-size={width},{height}"),
                ]
            }
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session json");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {r}"))
            .to_string();
        let b = Browser {
            driver,
            port,
            session,
            http,
            _profile: profile,
        };
        // The viewport, not the window, is what a phone has.
        b.cdp(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}),
        )
        .await;
        b
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/session/{}{path}",
            self.port, self.session
        )
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r: Value = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("webdriver {path}: {e}"))
            .json()
            .await
            .unwrap_or(Value::Null);
        if let Some(e) = r["value"]["error"].as_str() {
            panic!("webdriver {path}: {e}: {}", r["value"]["message"]);
        }
        r["value"].clone()
    }

    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    pub async fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub async fn eval(&self, script: &str, args: Value) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// Waits until `script` returns something truthy; returns it and how long it took.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let v = self.eval(script, json!([])).await;
            let truthy = !(v.is_null() || v == json!(false) || v == json!("") || v == json!(0));
            if truthy {
                return (v, started.elapsed());
            }
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The browser console's messages at `SEVERE` (JavaScript errors,
    /// refused resources, CSP violations) since the last call.
    pub async fn errors(&self) -> Vec<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or("").to_string())
            .collect()
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .expect("png")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium; then the driver we started, by its PID.
        let _ = std::process::Command::new("curl")
            .args(["-s", "-X", "DELETE", &self.url("")])
            .stdout(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
