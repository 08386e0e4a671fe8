//! A `redis-server` of a test's own, on a free loopback port, without persistence; killed
//! on drop. For tests that flush its scripts or cut its clients without disturbing others.

use std::time::Duration;

pub struct PrivateRedis {
    pub url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run redis-server (is it on PATH?)");
        let server = PrivateRedis {
            url: format!("redis://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let started = std::time::Instant::now();
        while server.conn().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub async fn conn(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let mut conn = redis::Client::open(self.url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(conn)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
