//! `tollgate-mock-llm`: the mock OpenAI-shaped upstream as a standalone server, for the
//! load script, the shipped Envoy config and trying tollgate without a provider account.
//! See [`tollgate::mock_llm`] for what it answers.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
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
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    mock.shutdown().await;
    Ok(())
}
