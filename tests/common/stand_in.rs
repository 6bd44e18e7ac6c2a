//! The one fake HTTP/1.1 server behind every stand-in (the engines, the
//! registry, Portainer): it accepts on a unix socket or loopback TCP, one task
//! per connection, and gives the stand-in a [`Conn`] to read requests from and
//! answer on: JSON, a chunked stream of lines, raw bytes, or silence.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// One request as the stand-in sees it.
pub struct Request {
    /// The request line and headers, as sent.
    pub head: String,
    pub method: String,
    /// The target without its query.
    pub path: String,
    /// The query, without `?` (empty when none).
    pub query: String,
    /// The body (`Content-Length` bytes).
    pub body: Vec<u8>,
}

impl Request {
    /// Every header, names in lower case.
    pub fn headers(&self) -> Vec<(String, String)> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect()
    }

    /// A header's value (name compared without case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A client's connection to a stand-in.
pub struct Conn<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub fn new(s: S) -> Self {
        Self { s, buf: Vec::new() }
    }

    /// The next request on this connection; `None` when the client closed it.
    pub async fn next_request(&mut self) -> std::io::Result<Option<Request>> {
        let Some(head) = super::read_request_head(&mut self.s, &mut self.buf).await? else {
            return Ok(None);
        };
        let mut line = head.lines().next().unwrap_or("").split_whitespace();
        let method = line.next().unwrap_or("").to_string();
        let target = line.next().unwrap_or("").to_string();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (target, String::new()),
        };
        let mut req = Request {
            head,
            method,
            path,
            query,
            body: Vec::new(),
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut chunk = [0u8; 4096];
        while self.buf.len() < len {
            let n = self.s.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        req.body = self.buf.drain(..len).collect();
        Ok(Some(req))
    }

    /// JSON with its length.
    pub async fn json(&mut self, status: &str, body: &str) -> std::io::Result<()> {
        self.json_with(status, body, None).await
    }

    /// JSON with the engine's `Api-Version` header.
    pub async fn json_api(&mut self, status: &str, body: &str, api: &str) -> std::io::Result<()> {
        self.json_with(status, body, Some(api)).await
    }

    /// JSON, with an `Api-Version` header when `api` is given.
    pub async fn json_with(
        &mut self,
        status: &str,
        body: &str,
        api: Option<&str>,
    ) -> std::io::Result<()> {
        super::respond_json(&mut self.s, status, body, api).await
    }

    /// Any answer with a length: `extra` is whole header lines (`\r\n` each).
    pub async fn reply(&mut self, status: &str, extra: &str, body: &[u8]) -> std::io::Result<()> {
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        );
        self.s.write_all(head.as_bytes()).await?;
        self.s.write_all(body).await
    }

    /// The head of an answer whose body follows in chunks ([`chunk`](Self::chunk)),
    /// with an `Api-Version` header when `api` is given.
    pub async fn start_chunked(
        &mut self,
        content_type: &str,
        api: Option<&str>,
    ) -> std::io::Result<()> {
        let api = api
            .map(|a| format!("Api-Version: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n{api}Transfer-Encoding: chunked\r\n\r\n"
        );
        self.s.write_all(head.as_bytes()).await?;
        self.s.flush().await
    }

    /// One chunk of a chunked answer, sent at once.
    pub async fn chunk(&mut self, data: &str) -> std::io::Result<()> {
        self.s
            .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
            .await?;
        self.s.flush().await
    }

    /// Bytes as they are (a head, frames, a truncated answer).
    pub async fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.s.write_all(bytes).await?;
        self.s.flush().await
    }

    /// Keeps the connection open and says nothing more, like a quiet engine
    /// or a hung one (the test ends first).
    pub async fn hold(self) -> std::io::Result<()> {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(self);
        Ok(())
    }
}

/// Serves every connection to a unix socket at `path` with `serve`.
pub fn serve_unix<F, Fut>(path: &Path, serve: F)
where
    F: Fn(Conn<UnixStream>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = UnixListener::bind(path).expect("bind the stand-in's socket");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(Conn::new(s)));
        }
    });
}

/// Serves every connection to a free loopback port with `serve`; returns the port.
pub async fn serve_tcp<F, Fut>(serve: F) -> u16
where
    F: Fn(Conn<TcpStream>, u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stand-in's port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(Conn::new(s), port));
        }
    });
    port
}
