//! `tollgate-mock-llm`: the mock OpenAI-shaped upstream as a standalone server, for the
//! load script, the shipped Envoy config and trying tollgate without a provider account.
//! See [`tollgate::mock_llm`] for what it answers.
//!
//! With `--authz-allow-all ADDR` it also answers Envoy's ext_authz `Check` on ADDR with a
//! bare OK: the cheapest possible authorization server, so the load script can tell what
//! Envoy's ext_authz hop costs apart from what tollgate's decision costs.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use tollgate::mock_llm::{MockLlm, MockOptions};

#[derive(Parser)]
#[command(
    name = "tollgate-mock-llm",
    version,
    about = "Mock OpenAI-shaped LLM upstream"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Pause between server-sent events of a streamed answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    stream_delay_ms: u64,
    /// How many recent requests to keep in memory (0 keeps none, best under load).
    #[arg(long, default_value_t = 1_000)]
    max_recorded: usize,
    /// Do not log each request (for load runs).
    #[arg(long)]
    quiet: bool,
    /// Also serve an ext_authz server that allows every request, on this address.
    #[arg(long, value_name = "ADDR")]
    authz_allow_all: Option<SocketAddr>,
}

/// Allows everything, changes nothing: Envoy's ext_authz hop at its cheapest.
struct AllowAll;

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Default::default()),
            ..Default::default()
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let level = if args.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_target(false)
        .compact()
        .init();

    let options = MockOptions {
        stream_delay: Duration::from_millis(args.stream_delay_ms),
        max_recorded: args.max_recorded,
    };
    let mock = MockLlm::start_with(args.listen, options).await?;
    tracing::info!(listen = %mock.addr, "mock LLM listening");
    if let Some(addr) = args.authz_allow_all {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(listen = %addr, "allow-all ext_authz listening");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(AllowAll))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    mock.shutdown().await;
    Ok(())
}
