//! A TCP proxy a test can cut and restore, to take a backend away from tollgate for real.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

pub struct ChaosProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cut: broadcast::Sender<()>,
}

impl ChaosProxy {
    /// Forwards 127.0.0.1:<ephemeral> to `target`.
    pub async fn start(target: SocketAddr) -> ChaosProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (cut, _) = broadcast::channel(1);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut stop = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = stop.recv() => {}
                    }
                });
            }
        });
        ChaosProxy { addr, up, cut }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// A fresh Postgres schema, reachable directly and through a [`ChaosProxy`].
pub struct ProxiedPostgres {
    pub proxy: ChaosProxy,
    /// The database URL through the proxy (what tollgate gets).
    pub url: String,
    /// The database URL without the proxy.
    pub direct_url: String,
    /// A store connected without the proxy (which the proxy does not cut).
    pub direct: tollgate::store::sql::SqlStore,
}

pub async fn proxied_postgres() -> ProxiedPostgres {
    let (direct, direct_url) = super::db::fresh_postgres().await;
    let (host, target) = postgres_target(&direct_url).await;
    let proxy = ChaosProxy::start(target).await;
    let url = direct_url.replacen(&host, &proxy.addr.to_string(), 1);
    ProxiedPostgres {
        proxy,
        url,
        direct_url,
        direct,
    }
}

/// A TCP proxy that can hold back what the server answers once a client has sent a given
/// marker (e.g. a query's text): the answers to the client's next message are held (sqlx
/// prepares a statement, then executes it: the query has run, its snapshot is taken, but
/// its rows stay in the proxy) until [`HoldingProxy::release`]. For races between a read
/// and what happens meanwhile.
pub struct HoldingProxy {
    pub addr: SocketAddr,
    shared: Arc<Holding>,
}

struct Holding {
    /// What the client must send for answers to be held from then on.
    armed: std::sync::Mutex<Option<Vec<u8>>>,
    holding: tokio::sync::watch::Sender<bool>,
    held: tokio::sync::Notify,
}

impl HoldingProxy {
    /// Forwards 127.0.0.1:<ephemeral> to `target`.
    pub async fn start(target: SocketAddr) -> HoldingProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Holding {
            armed: std::sync::Mutex::new(None),
            holding: tokio::sync::watch::channel(false).0,
            held: tokio::sync::Notify::new(),
        });
        let accepting = shared.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = accepting.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        // The marker was in this client's last message: hold from its next.
                        let mut primed = false;
                        loop {
                            let n = client_read.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if primed {
                                primed = false;
                                shared.holding.send_replace(true);
                            } else {
                                let mut armed = shared.armed.lock().unwrap();
                                if armed.as_ref().is_some_and(|marker| {
                                    buf[..n].windows(marker.len()).any(|w| w == marker)
                                }) {
                                    *armed = None;
                                    primed = true;
                                }
                            }
                            server_write.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = async {
                        let mut holding = shared.holding.subscribe();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = server_read.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            if *holding.borrow_and_update() {
                                shared.held.notify_one();
                                let _ = holding.wait_for(|h| !*h).await;
                            }
                            client_write.write_all(&buf[..n]).await?;
                        }
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        HoldingProxy { addr, shared }
    }

    /// Holds back every answer from when a client sends its next message after `marker`.
    pub fn hold_after(&self, marker: &str) {
        *self.shared.armed.lock().unwrap() = Some(marker.as_bytes().to_vec());
    }

    /// Waits until an answer is being held (panics after 10 s: the marker never came).
    pub async fn held(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.shared.held.notified())
            .await
            .expect("no answer held within 10 s: was the marker sent?");
    }

    /// Lets the held answers (and all later ones) through.
    pub fn release(&self) {
        self.shared.holding.send_replace(false);
    }
}

/// A fresh Postgres schema, reachable directly and through a [`HoldingProxy`].
pub struct HeldPostgres {
    pub proxy: HoldingProxy,
    /// The database URL through the proxy (what tollgate gets), in clear and without a
    /// statement cache: every query's text is sent as it is written, so
    /// [`HoldingProxy::hold_after`] can name it.
    pub url: String,
    /// The database URL without the proxy.
    pub direct_url: String,
    /// A store connected without the proxy.
    pub direct: tollgate::store::sql::SqlStore,
}

pub async fn held_postgres() -> HeldPostgres {
    let (direct, direct_url) = super::db::fresh_postgres().await;
    let (host, target) = postgres_target(&direct_url).await;
    let proxy = HoldingProxy::start(target).await;
    let url = format!(
        "{}&sslmode=disable&statement-cache-capacity=0",
        direct_url.replacen(&host, &proxy.addr.to_string(), 1)
    );
    HeldPostgres {
        proxy,
        url,
        direct_url,
        direct,
    }
}

/// The `host:port` of a Postgres URL, and its address.
async fn postgres_target(url: &str) -> (String, SocketAddr) {
    let url: reqwest::Url = url.replace("postgres://", "http://").parse().unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let target = tokio::net::lookup_host(&host)
        .await
        .unwrap()
        .next()
        .unwrap();
    (host, target)
}
