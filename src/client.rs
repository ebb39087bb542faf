//! The admin API client the volume commands use: JSON over HTTP/1.1 to a
//! daemon's admin listener, turning error bodies into plain messages.

use anyhow::{anyhow, Result};
use serde_json::{json, Value};
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

    /// `GET /v1/cluster`: nodes and shards.
    pub fn cluster_status(&self) -> Result<Value> {
        self.call("GET", "/v1/cluster", None)
    }

    /// `GET /v1/cluster/local`: this node's Raft replicas.
    pub fn local_replicas(&self) -> Result<Value> {
        self.call("GET", "/v1/cluster/local", None)
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
