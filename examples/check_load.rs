//! Decisions per second straight over gRPC: many concurrent `Check` calls to a running
//! tollgate, no Envoy in between. Used by `scripts/load.sh`; prints one line of results.
//!
//!     cargo run --release --example check_load -- \
//!         --addr 127.0.0.1:9191 --key sk-tg-… [--concurrency 32] [--seconds 10] [--name NAME]

use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
use std::time::{Duration, Instant};

const BODY: &str = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the load test."}],"max_tokens":16}"#;

struct Args {
    addr: String,
    key: String,
    concurrency: usize,
    seconds: u64,
    name: String,
}

fn args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:9191".into(),
        key: String::new(),
        concurrency: 32,
        seconds: 10,
        name: "grpc".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = value,
            "--key" => a.key = value,
            "--concurrency" => a.concurrency = value.parse().expect("--concurrency N"),
            "--seconds" => a.seconds = value.parse().expect("--seconds N"),
            "--name" => a.name = value,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.key.is_empty(), "--key is required");
    a
}

fn request(key: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/v1/chat/completions".into(),
                    headers: [
                        ("authorization".to_owned(), format!("Bearer {key}")),
                        ("content-type".to_owned(), "application/json".to_owned()),
                    ]
                    .into_iter()
                    .collect(),
                    raw_body: BODY.as_bytes().to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", a.addr))
        .expect("an address")
        .connect()
        .await
        .expect("tollgate reachable over gRPC");
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let mut client = AuthorizationClient::new(channel.clone());
        let request = request(&a.key);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                match client.check(request.clone()).await {
                    Ok(r) if r.get_ref().status.as_ref().is_some_and(|s| s.code == 0) => {
                        latencies.push(t.elapsed())
                    }
                    _ => failed += 1,
                }
            }
            (latencies, failed)
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (l, f) = task.await.expect("a load task");
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:<17} {:>10.0} {:>9.2} {:>9.2} {:>9} {:>7}",
        a.name,
        (latencies.len() as u64 + failed) as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        latencies.len() as u64 + failed,
        failed
    );
}
