//! `tollgate-mock-llm`: the mock OpenAI-shaped upstream as a standalone server, for the
//! load script, the shipped Envoy config and trying tollgate without a provider account.
//! See [`tollgate::mock_llm`] for what it answers.
//!
//! With `--authz-allow-all ADDR` it also answers Envoy's ext_authz `Check` on ADDR with a
//! bare OK: the cheapest possible authorization server, so the load script can tell what
//! Envoy's ext_authz hop costs apart from what tollgate's decision costs. On the same address
//! it answers ext_proc too, every message at once and unchanged, switching each request to
//! the fewest messages tollgate ever asks for (no request body, a small JSON answer in one
//! message): the floor of metering through ext_proc, with no work done.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
    processing_request, processing_response, BodyResponse, HeadersResponse, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tollgate::mock_llm::{MockLlm, MockOptions};
use tollgate::usage::ext_proc::{skip_the_request_body, ResponseHead};

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

#[tonic::async_trait]
impl ExternalProcessor for AllowAll {
    type ProcessStream =
        Pin<Box<dyn Stream<Item = Result<ProcessingResponse, tonic::Status>> + Send>>;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, tonic::Status> {
        let answers = request
            .into_inner()
            .take_while(|message| std::future::ready(message.is_ok()))
            .filter_map(|message| std::future::ready(message.ok().and_then(pass).map(Ok)));
        Ok(tonic::Response::new(Box::pin(answers)))
    }
}

/// The empty answer to one ext_proc message, with tollgate's cheapest modes.
fn pass(message: ProcessingRequest) -> Option<ProcessingResponse> {
    use processing_request::Request as In;
    use processing_response::Response as Out;
    let mut mode_override = None;
    let answer = match message.request? {
        In::RequestHeaders(headers) => {
            if !headers.end_of_stream {
                mode_override = Some(skip_the_request_body());
            }
            Out::RequestHeaders(HeadersResponse::default())
        }
        In::ResponseHeaders(headers) => {
            mode_override = ResponseHead::of(&headers).mode(headers.end_of_stream);
            Out::ResponseHeaders(HeadersResponse::default())
        }
        In::RequestBody(_) => Out::RequestBody(BodyResponse::default()),
        In::ResponseBody(_) => Out::ResponseBody(BodyResponse::default()),
        In::RequestTrailers(_) => Out::RequestTrailers(TrailersResponse::default()),
        In::ResponseTrailers(_) => Out::ResponseTrailers(TrailersResponse::default()),
    };
    Some(ProcessingResponse {
        response: Some(answer),
        mode_override,
        ..ProcessingResponse::default()
    })
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
        tracing::info!(listen = %addr, "allow-all ext_authz and pass-through ext_proc listening");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(AllowAll))
                .add_service(ExternalProcessorServer::new(AllowAll))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    mock.shutdown().await;
    Ok(())
}
