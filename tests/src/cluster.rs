//! A local cluster of real `raftblock serve` processes for the failure
//! tests: each node with its own data directory and loopback ports, all
//! given the same `--peers` list, plus helpers to find shard leaders and to
//! wait until every replica has caught up.

use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{free_addr, sha256_of, Daemon};

/// Nodes of one test cluster, `nodes[i]` being node id `i + 1`.
pub struct TestCluster {
    /// The daemons.
    pub nodes: Vec<Daemon>,
}

impl TestCluster {
    /// Starts `n` nodes that form one cluster.
    pub fn start(n: usize) -> TestCluster {
        TestCluster::start_each(n, |_| Vec::new())
    }

    /// Starts `n` nodes that form one cluster, node `id` with the extra
    /// `serve` arguments `extra(id)`.
    pub fn start_each(n: usize, extra: impl Fn(u64) -> Vec<String>) -> TestCluster {
        TestCluster::start_nodes(n, |_| None, extra)
    }

    /// Like [`TestCluster::start_each`], with node `id`'s data in
    /// `data_dir(id)` (e.g. on a power-cut filesystem) instead of a fresh
    /// temporary directory.
    pub fn start_each_at(
        n: usize,
        data_dir: impl Fn(u64) -> PathBuf,
        extra: impl Fn(u64) -> Vec<String>,
    ) -> TestCluster {
        TestCluster::start_nodes(n, |id| Some(data_dir(id)), extra)
    }

    fn start_nodes(
        n: usize,
        data_dir: impl Fn(u64) -> Option<PathBuf>,
        extra: impl Fn(u64) -> Vec<String>,
    ) -> TestCluster {
        let raft: Vec<_> = (0..n).map(|_| free_addr()).collect();
        let peers = raft
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = raft
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let id = (i + 1).to_string();
                let listen = a.to_string();
                let more = extra(i as u64 + 1);
                let mut args = vec!["--node-id", &id, "--listen", &listen, "--peers", &peers];
                args.extend(more.iter().map(String::as_str));
                let dir = data_dir(i as u64 + 1);
                Daemon::start_custom_at(&[], free_addr(), free_addr(), &args, dir)
            })
            .collect();
        TestCluster { nodes }
    }

    /// Starts three nodes where node 3 lives in network namespace `net`,
    /// reachable from the others only through its veth pair, so the test can
    /// cut it off. `extra3` goes to node 3's `serve`.
    pub fn start_with_node3_in(net: &Netns, extra3: &[&str]) -> TestCluster {
        TestCluster::start_in(&[None, None, Some(net)], |id| {
            if id == 3 {
                extra3.iter().map(|s| s.to_string()).collect()
            } else {
                Vec::new()
            }
        })
    }

    /// The flags of node `id` in `cluster status` as the first running node sees them:
    /// `(up, out, maintenance)`.
    pub fn node_flags(&mut self, id: u64) -> (bool, bool, bool) {
        let st = self.status();
        let n = st["nodes"]
            .as_array()
            .and_then(|n| n.iter().find(|n| n["id"] == id))
            .cloned()
            .unwrap_or(Value::Null);
        let flag = |k: &str| n[k].as_bool().unwrap_or(false);
        (flag("up"), flag("out"), flag("maintenance"))
    }

    /// Waits until node `id`'s `out` flag is `out`.
    pub fn wait_out(&mut self, id: u64, out: bool, within: Duration) {
        let deadline = Instant::now() + within;
        while self.node_flags(id).1 != out {
            assert!(
                Instant::now() < deadline,
                "node {id} never became {}: {:#}",
                if out { "out" } else { "in" },
                self.status()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Asserts node `id` stays in for `for_`.
    pub fn stays_in(&mut self, id: u64, for_: Duration, why: &str) {
        let until = Instant::now() + for_;
        while Instant::now() < until {
            assert!(!self.node_flags(id).1, "node {id} was marked out {why}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Starts one node per entry of `nets`, node `i + 1` inside `nets[i]`
    /// when it names a namespace (reachable only through its veth pair, so
    /// the test can cut it off) and on the host otherwise, node `id` with the
    /// `serve` arguments `extra(id)`. Host nodes listen on the first
    /// namespace's host address, which every namespace reaches.
    pub fn start_in(nets: &[Option<&Netns>], extra: impl Fn(u64) -> Vec<String>) -> TestCluster {
        let host_ip = nets
            .iter()
            .flatten()
            .next()
            .map_or(IpAddr::from([127, 0, 0, 1]), |n| n.host_ip);
        let port = || free_addr().port();
        let raft: Vec<SocketAddr> = nets
            .iter()
            .map(|n| SocketAddr::new(n.map_or(host_ip, |n| n.ns_ip), port()))
            .collect();
        let peers = raft
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (a, net)) in raft.iter().zip(nets).enumerate() {
            let id = (i + 1).to_string();
            let listen = a.to_string();
            let more = extra(i as u64 + 1);
            let mut args = vec!["--node-id", &id, "--listen", &listen, "--peers", &peers];
            args.extend(more.iter().map(String::as_str));
            nodes.push(match net {
                Some(net) => {
                    let prefix = ["ip", "netns", "exec", net.name.as_str()];
                    let (nbd, admin) = (
                        SocketAddr::new(net.ns_ip, port()),
                        SocketAddr::new(net.ns_ip, port()),
                    );
                    Daemon::start_custom(&prefix, nbd, admin, &args)
                }
                None => Daemon::start_with(&args),
            });
        }
        TestCluster { nodes }
    }

    /// Starts node `id` (the next one), joining the cluster through node
    /// 1's admin API, which is all it is told of the others.
    pub fn join(&mut self, id: u64) {
        let join = self.nodes[0].admin.to_string();
        let listen = free_addr().to_string();
        let id = id.to_string();
        self.nodes.push(Daemon::start_with(&[
            "--node-id",
            &id,
            "--listen",
            &listen,
            "--join",
            &join,
        ]));
    }

    /// Node `id` (1-based).
    pub fn node(&mut self, id: u64) -> &mut Daemon {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Creates a volume through node 1's admin API, retrying while the
    /// cluster is still electing its metadata leader.
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        replicas: u32,
        shards: Option<u32>,
    ) -> Value {
        let mut body = json!({ "name": name, "size": size, "replicas": replicas });
        if let Some(s) = shards {
            body["shards"] = json!(s);
        }
        self.create_volume_json(&body)
    }

    /// Creates a volume from a `POST /v1/volumes` body (`name`, `size`,
    /// `replicas`, `shards`, `chunk_size`) through node 1's admin API,
    /// retrying while the cluster is still electing its metadata leader.
    pub fn create_volume_json(&self, body: &Value) -> Value {
        let name = body["name"].as_str().unwrap_or("?");
        let client = self.nodes[0].admin_client();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.post("/v1/volumes", body) {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline && e.to_string().contains("HTTP 503") => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => panic!("creating volume {name}: {e}"),
            }
        }
    }

    /// Waits until `n` nodes have registered in the metadata (each does so
    /// as it starts; a volume created before places nothing on the late).
    pub fn wait_registered(&mut self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status()["nodes"].as_array().map_or(0, Vec::len) < n {
            assert!(
                Instant::now() < deadline,
                "not every node registered: {:#}",
                self.status()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET /v1/cluster` from the first running node.
    pub fn status(&mut self) -> Value {
        for d in self.nodes.iter_mut() {
            if !d.is_running() {
                continue;
            }
            if let Ok(v) = d.admin_client().cluster_status() {
                return v;
            }
        }
        panic!("no node answered GET /v1/cluster");
    }

    /// The leader node of shard `index` of `volume` (None while there is none).
    pub fn leader(&mut self, volume: &str, index: usize) -> Option<u64> {
        let st = self.status();
        st["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == volume)?["shards"][index]["leader"]
            .as_u64()
            .filter(|l| *l != 0)
    }

    /// Waits until `node` leads every shard of `volume` (the node serving a
    /// volume's clients draws its leaders; panics after `within`).
    pub fn wait_leaders_on(&mut self, volume: &str, node: u64, within: Duration) {
        let what = format!("node {node} did not take the leaders of {volume}");
        self.wait_shards(volume, within, &what, |s| {
            s["leader"].as_u64() == Some(node)
        });
    }

    /// Waits until every shard of `volume` has a leader and every replica
    /// has applied everything the leader has (panics after `within`).
    pub fn wait_converged(&mut self, volume: &str, within: Duration) {
        let what = format!("volume {volume} did not converge");
        self.wait_shards(volume, within, &what, |s| {
            s["leader"].as_u64().unwrap_or(0) != 0
                && s["replicas"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["lag"].as_u64() == Some(0)))
        });
    }

    /// Polls the cluster status until every shard of `volume` passes `ok`;
    /// panics with `what` and the last status after `within`.
    fn wait_shards(
        &mut self,
        volume: &str,
        within: Duration,
        what: &str,
        ok: impl Fn(&Value) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            let st = self.status();
            let done = st["volumes"].as_array().is_some_and(|vols| {
                vols.iter()
                    .filter(|v| v["name"] == volume)
                    .all(|v| v["shards"].as_array().is_some_and(|s| s.iter().all(&ok)))
            });
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what} within {within:?}: {st:#}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl TestCluster {
    /// Where node `x`'s chunk files and checksum tables differ from node
    /// `y`'s, one line each (empty when they are identical). Only
    /// meaningful once every replica has applied everything
    /// ([`TestCluster::wait_converged`]); waits for both nodes' large
    /// writes to settle from their logs into the chunk files first.
    pub fn chunk_differences(&self, x: u64, y: u64) -> Vec<String> {
        for n in [x, y] {
            if let Err(e) = self.settled_within(n, Duration::from_secs(120)) {
                return vec![e];
            }
        }
        let a = self.nodes[(x - 1) as usize].data_dir();
        let b = self.nodes[(y - 1) as usize].data_dir();
        let (fa, fb) = (chunk_files(a), chunk_files(b));
        if fa != fb {
            return vec![format!(
                "different chunk files on nodes {x} and {y}: {fa:?} vs {fb:?}"
            )];
        }
        if fa.is_empty() {
            return vec![format!("no chunk files on node {x}")];
        }
        fa.iter()
            .filter(|f| {
                sha256_of(&a.join("volumes").join(f)) != sha256_of(&b.join("volumes").join(f))
            })
            .map(|f| {
                let (pa, pb) = (a.join("volumes").join(f), b.join("volumes").join(f));
                let what = describe_table_difference(&pa, &pb, x, y);
                // Whether something was still writing: a difference that
                // goes away on its own is a race in this check, one that
                // stays is a divergence. Either fails the run.
                std::thread::sleep(Duration::from_secs(3));
                let later = if sha256_of(&pa) == sha256_of(&pb) {
                    "; equal 3 s later"
                } else {
                    "; still differs 3 s later"
                };
                format!(
                    "{} differs between node {x} and node {y}{what}{later}",
                    f.display()
                )
            })
            .collect()
    }

    /// Waits until no block on node `x` is only in its Raft log (large
    /// writes settle into the chunk files after 5 s of quiet).
    pub fn wait_settled(&self, x: u64, within: Duration) {
        if let Err(e) = self.settled_within(x, within) {
            panic!("{e}");
        }
    }

    fn settled_within(&self, x: u64, within: Duration) -> Result<(), String> {
        let d = &self.nodes[(x - 1) as usize];
        let deadline = Instant::now() + within;
        loop {
            let metrics = d.metrics();
            let logged: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("raftblock_logged_bytes{") && !l.ends_with(" 0"))
                .collect();
            if logged.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {x} still holds data only in its log after {within:?}: {logged:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Node `x`'s and node `y`'s chunk files and checksum tables are
    /// identical, once what they hold only in their logs has settled.
    pub fn assert_same_chunks(&self, x: u64, y: u64) {
        let diff = self.chunk_differences(x, y);
        assert!(diff.is_empty(), "{}", diff.join("\n"));
    }
}

/// For two checksum tables (`.crc`) that differ: their lengths, and the
/// first slots that differ with each node's value and whether it matches
/// that node's own data block (a slot that does not is a latent checksum
/// error). Empty for other files.
fn describe_table_difference(a: &Path, b: &Path, x: u64, y: u64) -> String {
    use raftblock_storage::checksum::verify;
    if a.extension().is_none_or(|e| e != "crc") {
        return String::new();
    }
    let (Ok(ta), Ok(tb)) = (std::fs::read(a), std::fs::read(b)) else {
        return String::new();
    };
    let (da, db) = (
        std::fs::read(a.with_extension("data")).unwrap_or_default(),
        std::fs::read(b.with_extension("data")).unwrap_or_default(),
    );
    let slot = |t: &[u8], i: usize| -> u32 {
        t.get(i * 4..i * 4 + 4)
            .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let block = |d: &[u8], i: usize| -> Vec<u8> {
        let mut out = d.get(i * 4096..).unwrap_or_default().to_vec();
        out.resize(4096, 0);
        out.truncate(4096);
        out
    };
    let slots = ta.len().max(tb.len()) / 4;
    let differing: Vec<String> = (0..slots)
        .filter(|i| slot(&ta, *i) != slot(&tb, *i))
        .take(8)
        .map(|i| {
            let (sa, sb) = (slot(&ta, i), slot(&tb, i));
            let (ba, bb) = (block(&da, i), block(&db, i));
            format!(
                "block {i}: node {x} {sa:#010x} ({}), node {y} {sb:#010x} ({}), data {}",
                if verify(sa, &ba) {
                    "matches its data"
                } else {
                    "DOES NOT match its data"
                },
                if verify(sb, &bb) {
                    "matches its data"
                } else {
                    "DOES NOT match its data"
                },
                if ba == bb { "equal" } else { "differs" },
            )
        })
        .collect();
    format!(
        " (tables of {} and {} bytes; {})",
        ta.len(),
        tb.len(),
        differing.join("; ")
    )
}

/// Every chunk data and checksum file of the node's volumes, relative to
/// its `volumes` directory (`VOLUME/NNNNNNNN.data`, `.crc`), sorted.
pub fn chunk_files(data_dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for vol in std::fs::read_dir(data_dir.join("volumes"))
        .expect("volumes dir")
        .flatten()
    {
        for f in std::fs::read_dir(vol.path()).expect("volume dir").flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name.ends_with(".crc") || name.ends_with(".data") {
                files.push(PathBuf::from(vol.file_name()).join(name));
            }
        }
    }
    files.sort();
    files
}

/// The nodes of a shard's voters (sorted), from a shard of `cluster status`.
pub fn voters(shard: &Value) -> Vec<u64> {
    let mut nodes: Vec<u64> = shard["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["role"] != "learner")
        .filter_map(|r| r["node"].as_u64())
        .collect();
    nodes.sort_unstable();
    nodes
}

/// A network namespace joined to the host by a veth pair; taking the host
/// side down cuts everything in the namespace off (both directions).
pub struct Netns {
    /// Namespace name.
    pub name: String,
    host_if: String,
    /// Address of the host end.
    pub host_ip: IpAddr,
    /// Address inside the namespace.
    pub ns_ip: IpAddr,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// Creates it (needs root); None, with the reason printed, when this
    /// machine cannot.
    pub fn create() -> Option<Netns> {
        Netns::create_nth(0)
    }

    /// Creates the `k`th namespace of this test process (each has its own
    /// name and subnet, and a default route to the host, so nodes in two
    /// namespaces reach each other through it).
    pub fn create_nth(k: u8) -> Option<Netns> {
        let id = std::process::id() % 10000;
        let name = format!("rbt{id}n{k}");
        let host_if = format!("rbh{id}n{k}");
        let ns_if = format!("rbn{id}n{k}");
        let net = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_ip: IpAddr::from([10, 203 + k, (id % 250) as u8, 1]),
            ns_ip: IpAddr::from([10, 203 + k, (id % 250) as u8, 2]),
        };
        let host = net.host_ip.to_string();
        let (h, n) = (format!("{}/24", net.host_ip), format!("{}/24", net.ns_ip));
        let ok = ip(&["netns", "add", &name])
            && ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && ip(&["link", "set", &ns_if, "netns", &name])
            && ip(&["addr", "add", &h, "dev", &host_if])
            && ip(&["link", "set", &host_if, "up"])
            && ip(&[
                "netns", "exec", &name, "ip", "addr", "add", &n, "dev", &ns_if,
            ])
            && ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])
            && ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            && ip(&[
                "netns", "exec", &name, "ip", "route", "add", "default", "via", &host,
            ])
            && std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").is_ok();
        if !ok {
            if std::env::var("RAFTBLOCK_REQUIRE_TOOLS").as_deref() == Ok("1") {
                panic!("cannot create a network namespace (root and `ip netns` are required)");
            }
            eprintln!("SKIPPED: cannot create a network namespace (needs root and `ip netns`)");
            return None;
        }
        Some(net)
    }

    /// Cuts the namespace off.
    pub fn cut(&self) {
        assert!(ip(&["link", "set", &self.host_if, "down"]), "link down");
    }

    /// Joins it again.
    pub fn heal(&self) {
        assert!(ip(&["link", "set", &self.host_if, "up"]), "link up");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["link", "del", &self.host_if]);
        ip(&["netns", "del", &self.name]);
    }
}
