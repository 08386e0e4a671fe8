//! A TCP proxy a test can cut and restore, to take a backend away from tollgate for real.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    let url: reqwest::Url = direct_url
        .replace("postgres://", "http://")
        .parse()
        .unwrap();
    let host = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
    let target = tokio::net::lookup_host(&host)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = ChaosProxy::start(target).await;
    let url = direct_url.replacen(&host, &proxy.addr.to_string(), 1);
    ProxiedPostgres {
        proxy,
        url,
        direct_url,
        direct,
    }
}
