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
//!
//! `--authz-like-tollgate ADDR` serves the same on ADDR, except that its OK carries what
//! tollgate's OK carries for the load script's key (identity headers and metadata, the
//! client's credential and absent identities removed, `x-ratelimit-*` headers for rpm and
//! tpm buckets), built by tollgate's own [`tollgate::authz::response::allowed`]: what Envoy
//! spends applying the contract's answer, apart from what tollgate spends deciding it.

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
use tollgate::authz::response::allowed;
use tollgate::decision::Grant;
use tollgate::limits::bucket::View;
use tollgate::limits::plan::Quota;
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
    /// Also serve one that allows every request with tollgate's answer, on this address.
    #[arg(long, value_name = "ADDR")]
    authz_like_tollgate: Option<SocketAddr>,
}

/// Allows everything with the same answer each time: Envoy's ext_authz hop at its cheapest.
#[derive(Clone)]
struct AllowAll {
    answer: CheckResponse,
}

impl AllowAll {
    /// A bare OK: nothing changed.
    fn bare() -> AllowAll {
        AllowAll {
            answer: CheckResponse {
                status: Some(Default::default()),
                ..Default::default()
            },
        }
    }

    /// tollgate's OK for a key of its own (no user, no team) with rpm and tpm buckets.
    fn like_tollgate() -> AllowAll {
        let view = |limit| View {
            limit,
            remaining: limit - 1,
            reset_ms: 60,
            retry_after_ms: 0,
        };
        let grant = Grant {
            key_id: Some("0192f5e4-8a7b-7c3d-9e1f-2a3b4c5d6e7f".into()),
            user_id: None,
            team_id: None,
            model: Some("gpt-4o".into()),
            upstream_credential: None,
            quota: Some(Quota {
                requests: Some(view(1_000_000_000)),
                tokens: Some(view(1_000_000_000_000)),
            }),
            body_cut: false,
            adds_include_usage: false,
        };
        AllowAll {
            answer: allowed(&grant),
        }
    }

    async fn serve(self, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(listen = %addr, "allow-all ext_authz and pass-through ext_proc listening");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthorizationServer::new(self.clone()))
                .add_service(ExternalProcessorServer::new(self))
                // As tollgate's own gRPC listener: without TCP_NODELAY an answer written in
                // two pieces waits ~40 ms for the peer's delayed ACK.
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        Ok(())
    }
}

#[tonic::async_trait]
impl Authorization for AllowAll {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.answer.clone()))
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
        AllowAll::bare().serve(addr).await?;
    }
    if let Some(addr) = args.authz_like_tollgate {
        AllowAll::like_tollgate().serve(addr).await?;
    }
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    mock.shutdown().await;
    Ok(())
}
