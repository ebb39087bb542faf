//! The clients of a daemon's two HTTP APIs: the admin API the volume
//! commands use (JSON over HTTP/1.1 to the admin listener, turning error
//! bodies into plain messages), and a minimal one for the Docker volume
//! plugin on its unix socket ([`plugin_call`]), which the bench and the
//! tests use to drive the plugin the way dockerd does.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Talks to one daemon's admin API.
pub struct AdminClient {
    base: String,
    server: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// A client for the daemon at `server` (host:port, or a full http:// URL).
    pub fn new(server: &str) -> AdminClient {
        AdminClient::with_timeout(server, Duration::from_secs(60))
    }

    /// Like [`AdminClient::new`] with a shorter or longer request timeout.
    pub fn with_timeout(server: &str, timeout: Duration) -> AdminClient {
        let base = if server.starts_with("http://") {
            server.trim_end_matches('/').to_string()
        } else {
            format!("http://{server}")
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .build();
        AdminClient {
            base,
            server: server.to_string(),
            agent,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let req = self.agent.request(method, &format!("{}{path}", self.base));
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(resp) => {
                if resp.status() == 204 {
                    return Ok(Value::Null);
                }
                resp.into_json()
                    .map_err(|e| anyhow!("unreadable reply from {}: {e}", self.server))
            }
            Err(ureq::Error::Status(code, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Err(anyhow!("{msg} (HTTP {code})"))
            }
            Err(ureq::Error::Transport(t)) => Err(anyhow!(
                "cannot reach the raftblock daemon at {}: {t}\n(is `raftblock serve` running? pass --server or set RAFTBLOCK_SERVER)",
                self.server
            )),
        }
    }

    /// Whether the daemon answers `GET /health`.
    pub fn healthy(&self) -> bool {
        self.text("/health").is_ok()
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> Result<String> {
        self.text("/metrics")
    }

    fn text(&self, path: &str) -> Result<String> {
        self.agent
            .get(&format!("{}{path}", self.base))
            .call()
            .map_err(|e| anyhow!("GET {path} on {}: {e}", self.server))?
            .into_string()
            .map_err(|e| anyhow!("unreadable reply from {}: {e}", self.server))
    }

    /// Creates a volume.
    pub fn create_volume(&self, name: &str, size: u64, chunk_size: Option<u64>) -> Result<Value> {
        self.create_volume_with(name, size, chunk_size, None)
    }

    /// Creates a volume with `replicas` replicas per shard (cluster mode).
    pub fn create_volume_with(
        &self,
        name: &str,
        size: u64,
        chunk_size: Option<u64>,
        replicas: Option<u32>,
    ) -> Result<Value> {
        let mut body = json!({ "name": name, "size": size });
        if let Some(c) = chunk_size {
            body["chunk_size"] = json!(c);
        }
        if let Some(r) = replicas {
            body["replicas"] = json!(r);
        }
        self.call("POST", "/v1/volumes", Some(body))
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.call("POST", path, Some(body.clone()))
    }

    /// `GET /v1/status`: health and alerts, nodes, volumes and their
    /// shards, rebuilds (the document the status page shows).
    pub fn cluster_status(&self) -> Result<Value> {
        self.call("GET", "/v1/status", None)
    }

    /// `GET /v1/stats`: the traffic series over `window` (e.g. `15m`), of
    /// the whole cluster, or with `node_only` of this node alone.
    pub fn stats(&self, window: &str, node_only: bool) -> Result<Value> {
        let scope = if node_only { "&scope=node" } else { "" };
        self.call(
            "GET",
            &format!("/v1/stats?window={}{scope}", encode(window)),
            None,
        )
    }

    /// `GET /v1/cluster/local`: this node's Raft replicas.
    pub fn local_replicas(&self) -> Result<Value> {
        self.call("GET", "/v1/cluster/local", None)
    }

    /// Scrubs every node's copy of `name` (`POST /v1/volumes/{name}/scrub`).
    pub fn scrub_volume(&self, name: &str) -> Result<Value> {
        self.call("POST", &format!("/v1/volumes/{}/scrub", encode(name)), None)
    }

    /// Compares the replicas of `name` (`POST /v1/volumes/{name}/verify`).
    pub fn verify_volume(&self, name: &str) -> Result<Value> {
        self.call(
            "POST",
            &format!("/v1/volumes/{}/verify", encode(name)),
            None,
        )
    }

    /// Scrubs this node's copy of `name` only.
    pub fn scrub_local(&self, name: &str) -> Result<Value> {
        self.call(
            "POST",
            &format!("/v1/cluster/local/scrub/{}", encode(name)),
            None,
        )
    }

    /// Asks a member to add a node (`--join`).
    pub fn join(&self, node: &Value) -> Result<Value> {
        self.call("POST", "/v1/cluster/nodes", Some(node.clone()))
    }

    /// Lists volumes.
    pub fn list_volumes(&self) -> Result<Value> {
        self.call("GET", "/v1/volumes", None)
    }

    /// One volume.
    pub fn volume(&self, name: &str) -> Result<Value> {
        self.call("GET", &format!("/v1/volumes/{}", encode(name)), None)
    }

    /// `DELETE path`.
    pub fn delete(&self, path: &str) -> Result<Value> {
        self.call("DELETE", path, None)
    }

    /// Resizes a volume (`POST /v1/volumes/{name}/resize`).
    pub fn resize_volume(&self, name: &str, size: u64, allow_shrink: bool) -> Result<Value> {
        self.post(
            &format!("/v1/volumes/{}/resize", encode(name)),
            &serde_json::json!({ "size": size, "allow_shrink": allow_shrink }),
        )
    }

    /// Deletes a volume.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        self.call("DELETE", &format!("/v1/volumes/{}", encode(name)), None)
            .map(|_| ())
    }
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How long [`plugin_request`] waits for an answer (Mount may make a
/// filesystem, and the plugin gives the cluster up to 40 s to attach).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// One answer of the Docker volume plugin.
#[derive(Debug, Clone)]
pub struct PluginAnswer {
    /// HTTP status (the plugin answers errors as 500 with `Err` set).
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The JSON body.
    pub body: Value,
}

/// Posts `body` to `endpoint` (`/VolumeDriver.Mount` etc.) of the plugin
/// listening on the unix socket `socket`, as dockerd does, and returns the
/// answer whatever its status; fails only if the socket cannot be reached
/// or the answer is not HTTP with a JSON body.
pub fn plugin_request(socket: &Path, endpoint: &str, body: &Value) -> Result<PluginAnswer> {
    let body = body.to_string();
    let mut s = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the plugin socket {}", socket.display()))?;
    s.set_read_timeout(Some(PLUGIN_TIMEOUT))
        .context("setting the plugin socket timeout")?;
    let request = format!(
        "POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // One write. Handlers that ignore the body (List, Capabilities) may
    // answer and close before all of it is sent: the answer is still there
    // to read, so a closed pipe here is not yet a failure.
    if let Err(e) = s.write_all(request.as_bytes()) {
        if !matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ) {
            return Err(e).with_context(|| format!("sending {endpoint} to {}", socket.display()));
        }
    }
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to {endpoint} from {}", socket.display()))?;
    let resp = String::from_utf8_lossy(&raw);
    let (head, rest) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed plugin answer to {endpoint}: {resp:?}"))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("plugin answer to {endpoint} without a status line: {head:?}"))?;
    let header = |name: &str| {
        lines.clone().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let content_type = header("content-type");
    let chunked = header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
    let json = if chunked {
        dechunk(rest).with_context(|| format!("malformed chunked answer to {endpoint}"))?
    } else {
        rest.to_string()
    };
    let body = serde_json::from_str(&json).with_context(|| {
        format!("plugin answer to {endpoint} (HTTP {status}) is not JSON: {json:?}")
    })?;
    Ok(PluginAnswer {
        status,
        content_type,
        body,
    })
}

/// Like [`plugin_request`], but a failure answer (an HTTP error status or
/// a non-empty `Err`) is an error carrying the plugin's message; returns
/// the JSON body of a successful answer.
pub fn plugin_call(socket: &Path, endpoint: &str, body: &Value) -> Result<Value> {
    let a = plugin_request(socket, endpoint, body)?;
    let err = a.body.get("Err").and_then(Value::as_str).unwrap_or("");
    if !err.is_empty() {
        bail!("{endpoint}: {err} (HTTP {})", a.status);
    }
    if !(200..300).contains(&a.status) {
        bail!("{endpoint}: HTTP {}: {}", a.status, a.body);
    }
    Ok(a.body)
}

/// Joins the chunks of a chunked HTTP/1.1 body.
fn dechunk(mut rest: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size_line, after) = rest.split_once("\r\n").context("chunk size line")?;
        let hex = size_line.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(hex, 16).with_context(|| format!("chunk size {hex:?}"))?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = after.get(..n).context("truncated chunk")?;
        out.push_str(chunk);
        rest = after
            .get(n..)
            .context("truncated chunk")?
            .trim_start_matches("\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// Serves one connection on a fresh socket with the canned `answer`.
    fn serve_once(answer: &'static str) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("plugin.sock");
        let listener = UnixListener::bind(&path)?;
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(answer.as_bytes());
            }
        });
        Ok((dir, path))
    }

    #[test]
    fn plugin_call_returns_body_or_err() -> Result<()> {
        let (_d, ok) = serve_once(
            "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.docker.plugins.v1.1+json\r\ncontent-length: 32\r\n\r\n{\"Mountpoint\":\"/mnt/x\",\"Err\":\"\"}",
        )?;
        let v = plugin_call(&ok, "/VolumeDriver.Mount", &json!({"Name": "x"}))?;
        assert_eq!(v["Mountpoint"], "/mnt/x");

        let (_d, failed) = serve_once(
            "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\nf\r\n{\"Err\":\"no such\r\n8\r\n volume\"\r\n1\r\n}\r\n0\r\n\r\n",
        )?;
        let a = plugin_request(&failed, "/VolumeDriver.Mount", &json!({}))?;
        assert_eq!(a.status, 500);
        assert_eq!(a.body["Err"], "no such volume");
        let (_d, failed) = serve_once(
            "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 15\r\n\r\n{\"Err\":\"nope\"}",
        )?;
        let e = plugin_call(&failed, "/VolumeDriver.Mount", &json!({}))
            .err()
            .context("an Err answer must fail")?;
        assert!(e.to_string().contains("nope"), "{e}");
        Ok(())
    }
}
