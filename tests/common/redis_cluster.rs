//! A Redis Cluster of three masters on loopback, started by the test itself (`redis-server`
//! in cluster mode on free ports, joined with `redis-cli --cluster create`) and killed on
//! drop; plain, or TLS-only with a password. A cluster that cannot start fails the test:
//! nothing is skipped.

use redis::aio::MultiplexedConnection;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long starting the cluster may take.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    /// The masters' ports (TLS ports for a TLS cluster), in the order they were created.
    pub ports: Vec<u16>,
    tls: Option<Tls>,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// A TLS-only cluster: the server's certificate and key (for `127.0.0.1`, used on the
/// cluster bus too), the CA that signed it, and the password of every node.
#[derive(Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    pub password: String,
}

/// A port that is free, and whose cluster bus port (+10000) is free too.
fn free_port() -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port whose cluster bus port is free too");
}

impl RedisCluster {
    /// Three masters sharing the 16384 slots, every node seeing `cluster_state:ok`.
    pub async fn start() -> RedisCluster {
        Self::start_with(None).await
    }

    /// [`RedisCluster::start`] listening on TLS ports only (the cluster bus over TLS too),
    /// every node asking for `tls.password`.
    pub async fn start_tls(tls: Tls) -> RedisCluster {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<Tls>) -> RedisCluster {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = free_port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        let mut cluster = RedisCluster {
            ports: Vec::new(),
            tls: tls.clone(),
            children: Vec::new(),
            _dir: dir,
        };
        for &port in &ports {
            let node_dir = cluster._dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("a node directory");
            let mut command = Command::new("redis-server");
            match &tls {
                None => command.args(["--port", &port.to_string()]),
                Some(tls) => command
                    .args(["--port", "0", "--tls-port", &port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--requirepass", &tls.password])
                    .args(["--masterauth", &tls.password]),
            };
            let child = command
                .args(["--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("run redis-server (is it on PATH?)");
            cluster.children.push(child);
            cluster.ports.push(port);
        }
        let started = Instant::now();
        for i in 0..3 {
            while cluster.node(i).await.is_err() {
                assert!(
                    started.elapsed() < START_DEADLINE,
                    "redis-server on port {} does not answer",
                    cluster.ports[i]
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let tls_args: Vec<String> = match &tls {
            None => Vec::new(),
            Some(tls) => vec![
                "--tls".into(),
                "--cacert".into(),
                tls.ca.display().to_string(),
                "-a".into(),
                tls.password.clone(),
                "--no-auth-warning".into(),
            ],
        };
        let create = tokio::process::Command::new("redis-cli")
            .args(&tls_args)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(START_DEADLINE, create)
            .await
            .unwrap_or_else(|_| {
                panic!("redis-cli --cluster create: no cluster within {START_DEADLINE:?}")
            })
            .expect("run redis-cli (is it on PATH?)");
        assert!(
            output.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        for i in 0..3 {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut cluster.node(i).await.unwrap())
                    .await
                    .unwrap();
                if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                    break;
                }
                assert!(
                    started.elapsed() < START_DEADLINE,
                    "the cluster is not ok within {START_DEADLINE:?}: {info}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        cluster
    }

    /// Node `i`'s URL (`rediss://` with the password for a TLS cluster).
    pub fn url(&self, i: usize) -> String {
        match &self.tls {
            None => format!("redis://127.0.0.1:{}", self.ports[i]),
            Some(tls) => format!("rediss://:{}@127.0.0.1:{}", tls.password, self.ports[i]),
        }
    }

    /// `["redis://127.0.0.1:P1", …]`, for `redis.cluster`.
    pub fn yaml_nodes(&self) -> String {
        let urls: Vec<String> = (0..self.ports.len())
            .map(|i| format!("\"{}\"", self.url(i)))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// A connection of the test's own to node `i` (no redirections followed).
    pub async fn node(&self, i: usize) -> redis::RedisResult<MultiplexedConnection> {
        let client = match &self.tls {
            None => redis::Client::open(self.url(i))?,
            Some(tls) => redis::Client::build_with_tls(
                self.url(i),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(std::fs::read(&tls.ca)?),
                },
            )?,
        };
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(conn)
    }

    async fn conn(&self, i: usize) -> MultiplexedConnection {
        self.node(i).await.expect("a cluster node answers")
    }

    /// The hash slot of `key`.
    pub async fn keyslot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query_async(&mut self.conn(0).await)
            .await
            .unwrap()
    }

    /// Node `i`'s id.
    pub async fn id(&self, i: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query_async(&mut self.conn(i).await)
            .await
            .unwrap()
    }

    /// Which node serves `slot`, as node 0 sees it.
    pub async fn owner_of(&self, slot: u16) -> usize {
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut self.conn(0).await)
            .await
            .unwrap();
        for range in slots {
            let redis::Value::Array(items) = range else {
                continue;
            };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi)), Some(master)) =
                (items.first(), items.get(1), items.get(2))
            else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot)) {
                let redis::Value::Array(master) = master else {
                    panic!("CLUSTER SLOTS: {master:?}");
                };
                let Some(redis::Value::Int(port)) = master.get(1) else {
                    panic!("CLUSTER SLOTS: {master:?}");
                };
                return self
                    .ports
                    .iter()
                    .position(|p| i64::from(*p) == *port)
                    .expect("a node of ours");
            }
        }
        panic!("slot {slot} is not served");
    }

    /// The numbers of an `INFO` section of node `i`: `name:field` → value (`errorstat_MOVED:count`,
    /// `cmdstat_evalsha:failed_calls`).
    pub async fn info_counts(
        &self,
        i: usize,
        section: &str,
    ) -> std::collections::HashMap<String, u64> {
        let info: String = redis::cmd("INFO")
            .arg(section)
            .query_async(&mut self.conn(i).await)
            .await
            .unwrap();
        let mut counts = std::collections::HashMap::new();
        for line in info.lines() {
            let Some((name, fields)) = line.trim().split_once(':') else {
                continue;
            };
            for field in fields.split(',') {
                if let Some((k, v)) = field.split_once('=') {
                    if let Ok(v) = v.parse() {
                        counts.insert(format!("{name}:{k}"), v);
                    }
                }
            }
        }
        counts
    }

    /// The keys node `i` holds that match `pattern`.
    pub async fn keys_on(&self, i: usize, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut self.conn(i).await)
            .await
            .unwrap();
        keys.sort();
        keys
    }

    /// Moves `slot` from node `from` to node `to` of a plain cluster as `redis-cli --cluster
    /// reshard` does (IMPORTING, MIGRATING, MIGRATE of its keys, then NODE everywhere), one
    /// key at a time with `pause` between keys, so that calls meet the slot half moved.
    /// Returns how many keys moved.
    pub async fn move_slot(&self, slot: u16, from: usize, to: usize, pause: Duration) -> usize {
        let (from_id, to_id) = (self.id(from).await, self.id(to).await);
        let mut src = self.conn(from).await;
        let mut dst = self.conn(to).await;
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("IMPORTING")
            .arg(&from_id)
            .query_async(&mut dst)
            .await
            .unwrap();
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("MIGRATING")
            .arg(&to_id)
            .query_async(&mut src)
            .await
            .unwrap();
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query_async(&mut src)
                .await
                .unwrap();
            let Some(key) = keys.first() else {
                break;
            };
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(self.ports[to])
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(key)
                .query_async(&mut src)
                .await
                .unwrap();
            moved += 1;
            tokio::time::sleep(pause).await;
        }
        for i in [to, from] {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query_async(&mut self.conn(i).await)
                .await
                .unwrap();
        }
        for i in (0..self.ports.len()).filter(|i| *i != to && *i != from) {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&to_id)
                .query_async(&mut self.conn(i).await)
                .await
                .unwrap();
        }
        moved
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
