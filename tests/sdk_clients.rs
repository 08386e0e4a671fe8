//! The official OpenAI and Anthropic Python SDKs as clients of the whole stack: SDK → Envoy
//! (the shipped envoy/envoy.yaml) → tollgate (Check, ext_proc) → the mock LLM.
//!
//! DESIGN "Transparent to every client": a client must not be able to tell tollgate is there
//! except by its refusals, and those must read as its own provider's. Each test starts the
//! stack, creates keys through tollgate's API, runs one of `tests/sdk/*.py` with
//! `.venv/bin/python` (scripts/test installs the SDKs there) and asserts on the JSON it
//! prints: the exception class the SDK raised, its status, code and request id, how many
//! HTTP attempts the SDK made, the stream it read, the usage it was told.
//!
//! A test collects every violation it finds before failing, so one run names them all.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use futures::Stream;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_stream::StreamExt;
use tollgate::mock_llm::{prompt_tokens, MockLlm};
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Models with prices, so that usage has a cost and a budget can be spent.
const MODELS: &str = r#"
models:
  - name: gpt-4o
    pricing: { input_per_million: 2.5, output_per_million: 10 }
  - name: gpt-4o-mini
    pricing: { input_per_million: 0.15, output_per_million: 0.6 }
  - name: claude-3-5-sonnet-latest
    pricing: { input_per_million: 3, output_per_million: 15 }
usage: { batch_interval: 50ms }
"#;

const CLAUDE: &str = "claude-3-5-sonnet-latest";

/// How long a usage record may take to reach the store (the writer batches every 50 ms).
const RECORD_DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// The stack

struct Stack {
    tollgate: Tollgate,
    mock: MockLlm,
    envoy: Envoy,
    /// The `x-request-id` of every CheckRequest tollgate received, in order (only with
    /// [`Stack::recording`]).
    checks: Arc<Mutex<Vec<String>>>,
    user_id: String,
}

impl Stack {
    /// tollgate with [`MODELS`] and `extra` config, the mock, and Envoy between them.
    async fn start(extra: &str) -> Stack {
        Self::build(extra, false).await
    }

    /// [`Stack::start`] with a recorder on the gRPC hop from Envoy to tollgate, which notes
    /// the request id of every Check tollgate receives and forwards everything unchanged.
    async fn recording(extra: &str) -> Stack {
        Self::build(extra, true).await
    }

    async fn build(extra: &str, record: bool) -> Stack {
        let tollgate = Tollgate::start(&format!("{MODELS}{extra}")).await;
        let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let checks = Arc::new(Mutex::new(Vec::new()));
        let grpc = if record {
            start_recorder(tollgate.grpc, checks.clone()).await
        } else {
            tollgate.grpc
        };
        let envoy = Envoy::start("envoy/envoy.yaml", grpc, mock.addr).await;
        let user_id = tollgate.create_user("ada", "user").await;
        Stack {
            tollgate,
            mock,
            envoy,
            checks,
            user_id,
        }
    }

    /// A key of the user `ada` with these extra fields; `(id, plaintext)`.
    async fn key(&self, name: &str, fields: Value) -> (String, String) {
        let mut body = json!({"name": name, "user_id": self.user_id});
        body.as_object_mut()
            .unwrap()
            .extend(fields.as_object().cloned().unwrap_or_default());
        self.tollgate.create_key(body).await
    }

    /// The OpenAI base URL through Envoy.
    fn openai_url(&self) -> String {
        self.envoy.url("/v1")
    }

    /// The Anthropic base URL through Envoy (the SDK adds `/v1/messages`).
    fn anthropic_url(&self) -> String {
        self.envoy.url("")
    }

    fn checks(&self) -> Vec<String> {
        self.checks.lock().unwrap().clone()
    }

    /// `GET /admin/usage?group_by=key` as `{key id: row}`.
    async fn usage_by_key(&self) -> BTreeMap<String, Value> {
        let (status, report) = self
            .tollgate
            .admin(Method::GET, "/admin/usage?group_by=key", None)
            .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        report["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| (row["group"].as_str().unwrap().to_owned(), row.clone()))
            .collect()
    }

    /// Waits until every key in `keys` has `requests` records; answers the report rows.
    async fn wait_usage(&self, keys: &[&str], requests: u64) -> BTreeMap<String, Value> {
        let start = Instant::now();
        loop {
            let rows = self.usage_by_key().await;
            let done = keys
                .iter()
                .all(|k| rows.get(*k).and_then(|r| r["requests"].as_u64()) >= Some(requests));
            if done {
                return rows;
            }
            assert!(
                start.elapsed() < RECORD_DEADLINE,
                "usage of {keys:?} not recorded after {RECORD_DEADLINE:?}: {rows:#?}\n\
                 --- Envoy log ---\n{}",
                self.envoy.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A key whose budget is spent: one request is metered on it, then its `max_budget` is
    /// lowered below what it has spent. `(id, plaintext)`.
    async fn spent_key(&self, name: &str) -> (String, String) {
        let (id, key) = self.key(name, json!({})).await;
        let (status, _, answer) = common::upstream::post_json(
            &self.envoy,
            "/v1/chat/completions",
            &[("authorization", &format!("Bearer {key}"))],
            &json!({"model": "gpt-4o", "max_tokens": 20,
                    "messages": [{"role": "user", "content": "spend it"}]}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        self.wait_usage(&[&id], 1).await;
        let (status, patched) = self
            .tollgate
            .admin(
                Method::PATCH,
                &format!("/admin/keys/{id}"),
                Some(json!({"max_budget": 0.00001})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        let (_, key_now) = self
            .tollgate
            .admin(Method::GET, &format!("/admin/keys/{id}"), None)
            .await;
        assert!(
            key_now["spend"].as_f64().unwrap_or(0.0) > 0.00001,
            "the key has spent its budget: {key_now}"
        );
        (id, key)
    }

    async fn checks_counted(&self, code: &str) -> f64 {
        let decision = if code == "ok" { "allow" } else { "deny" };
        self.tollgate
            .metric(&format!(
                "tollgate_check_total{{code=\"{code}\",decision=\"{decision}\"}}"
            ))
            .await
    }
}

/// A gRPC server in front of tollgate's that records each Check's `x-request-id` and
/// forwards Check and ext_proc streams unchanged: "the request id tollgate saw".
async fn start_recorder(tollgate: SocketAddr, ids: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let channel = Channel::from_shared(format!("http://{tollgate}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to tollgate's gRPC port");
    let recorder = Recorder {
        ids,
        authz: AuthorizationClient::new(channel.clone()),
        ext_proc: ExternalProcessorClient::new(channel),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let recorder = Arc::new(recorder);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::from_arc(recorder.clone()))
            .add_service(ExternalProcessorServer::from_arc(recorder))
            .serve_with_incoming(incoming),
    );
    addr
}

struct Recorder {
    ids: Arc<Mutex<Vec<String>>>,
    authz: AuthorizationClient<Channel>,
    ext_proc: ExternalProcessorClient<Channel>,
}

#[tonic::async_trait]
impl Authorization for Recorder {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let id = check
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get("x-request-id"))
            .cloned()
            .unwrap_or_default();
        self.ids.lock().unwrap().push(id);
        self.authz.clone().check(check).await
    }
}

type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Recorder {
    type ProcessStream = ProcessStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<ProcessStream>, Status> {
        let inbound = request.into_inner().map_while(Result::ok);
        let answers = self.ext_proc.clone().process(inbound).await?;
        Ok(Response::new(Box::pin(answers.into_inner())))
    }
}

// ---------------------------------------------------------------------------------------
// Running an SDK

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$TOLLGATE_PYTHON`, else `.venv/bin/python` of the crate: the interpreter with the SDKs.
fn python() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_root().join(".venv/bin/python"));
    assert!(
        path.is_file(),
        "no Python with the SDKs at {}: run scripts/test once (it installs \
         scripts/requirements-test.txt into .venv), or set TOLLGATE_PYTHON",
        path.display()
    );
    path
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Sdk {
    OpenAi,
    Anthropic,
}

impl Sdk {
    fn script(self) -> &'static str {
        match self {
            Sdk::OpenAi => "openai_client.py",
            Sdk::Anthropic => "anthropic_client.py",
        }
    }
}

/// One call for a script to make (see tests/sdk/observe.py).
#[derive(Clone, Debug)]
struct Case {
    name: String,
    key: String,
    op: &'static str,
    args: Value,
    max_retries: u32,
    base_url: Option<String>,
}

fn case(name: &str, key: &str, op: &'static str, args: Value) -> Case {
    Case {
        name: name.to_owned(),
        key: key.to_owned(),
        op,
        args,
        max_retries: 0,
        base_url: None,
    }
}

impl Case {
    fn retries(mut self, n: u32) -> Case {
        self.max_retries = n;
        self
    }

    fn at(mut self, base_url: String) -> Case {
        self.base_url = Some(base_url);
        self
    }
}

/// What the SDK observed for one case.
#[derive(Clone, Debug)]
struct Seen(Value);

impl Seen {
    fn name(&self) -> &str {
        self.0["name"].as_str().unwrap_or_default()
    }
    fn ok(&self) -> bool {
        self.0["ok"] == json!(true)
    }
    fn value(&self) -> &Value {
        &self.0["value"]
    }
    fn error(&self) -> &Value {
        &self.0["error"]
    }
    fn request_id(&self) -> Option<&str> {
        self.0["request_id"].as_str()
    }
    fn attempts(&self) -> &[Value] {
        self.0["attempts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
    fn statuses(&self) -> Vec<u64> {
        self.attempts()
            .iter()
            .map(|a| a["status"].as_u64().unwrap_or(0))
            .collect()
    }
    /// A header of the first answer the SDK received.
    fn first_header(&self, name: &str) -> Option<&str> {
        self.attempts().first()?["headers"][name].as_str()
    }
    fn stalled(&self) -> bool {
        self.0["stalled"] == json!(true)
    }
    /// One line for failure messages.
    fn summary(&self) -> String {
        format!(
            "ok={} stalled={} error={} attempts={}",
            self.ok(),
            self.stalled(),
            self.error(),
            Value::from(self.attempts().to_vec())
        )
    }
}

/// Runs `cases` with the SDK's script against `base_url`; one [`Seen`] per case, in order.
async fn run_sdk(sdk: Sdk, base_url: &str, cases: &[Case]) -> Vec<Seen> {
    let plan = json!({
        "base_url": base_url,
        "cases": cases.iter().map(|c| {
            let mut case = json!({
                "name": c.name, "key": c.key, "op": c.op, "args": c.args,
                "max_retries": c.max_retries,
            });
            if let Some(url) = &c.base_url {
                case["base_url"] = json!(url);
            }
            case
        }).collect::<Vec<_>>(),
    });
    let home = tempfile::tempdir().unwrap();
    let script = crate_root().join("tests/sdk").join(sdk.script());
    // A clean environment: the SDKs read OPENAI_*/ANTHROPIC_* variables and proxies from it.
    let output = tokio::process::Command::new(python())
        .arg(&script)
        .arg(plan.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{} failed ({}):\n{stderr}\n{stdout}",
        script.display(),
        output.status
    );
    let answer: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{} printed no JSON ({e}):\n{stdout}\n{stderr}",
            sdk.script()
        )
    });
    let seen: Vec<Seen> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(Seen)
        .collect();
    assert_eq!(seen.len(), cases.len());
    seen
}

// ---------------------------------------------------------------------------------------
// Collecting violations

/// The contract violations a test found; it fails once, at the end, listing them all.
#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, actual: T, expected: T) {
        if actual != expected {
            self.0
                .push(format!("{what}: got {actual:?}, expected {expected:?}"));
        }
    }

    fn check(&mut self, what: &str, ok: bool, detail: impl std::fmt::Display) {
        if !ok {
            self.0.push(format!("{what}: {detail}"));
        }
    }

    #[track_caller]
    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "{} contract violation(s):\n  - {}",
            self.0.len(),
            self.0.join("\n  - ")
        );
    }
}

// ---------------------------------------------------------------------------------------
// Refusals

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 4,
           "messages": [{"role": "user", "content": "say something"}]})
}

fn message(model: &str) -> Value {
    json!({"model": model, "max_tokens": 4,
           "messages": [{"role": "user", "content": "say something"}]})
}

/// One refusal a client can meet, and how each SDK must see it.
struct Refusal {
    case: Case,
    status: u64,
    /// tollgate's code (`e.code` for OpenAI, `error.code` in Anthropic's body).
    code: &'static str,
    /// OpenAI's `error.type`.
    openai_type: &'static str,
    /// Anthropic's `error.type`.
    anthropic_type: &'static str,
    /// The SDK's exception class.
    class: &'static str,
}

/// Keys and calls that meet every refusal tollgate makes, for `sdk` (401, 403 permission,
/// 403 model, 404 route (OpenAI only: Anthropic's SDK has no call outside its routes), 400,
/// 429 rate limit, 429 budget), each preceded where needed by the calls that set it up.
async fn refusals(s: &Stack, sdk: Sdk) -> (Vec<Case>, Vec<Refusal>) {
    let (_, good) = s
        .key(
            "good",
            json!({"models": ["gpt-4o", CLAUDE], "permissions": ["chat", "models:read"]}),
        )
        .await;
    let (_, no_chat) = s
        .key("no-chat", json!({"permissions": ["embeddings"]}))
        .await;
    let (_, rpm) = s.key("rpm", json!({"rpm": 1})).await;
    let (_, spent) = s.spent_key("spent").await;
    let (call, other_model, path): (&'static str, fn(&str) -> Value, &str) = match sdk {
        Sdk::OpenAi => ("chat", chat, "/chat/completions"),
        Sdk::Anthropic => ("messages", message, "/v1/messages"),
    };
    let model = match sdk {
        Sdk::OpenAi => "gpt-4o",
        Sdk::Anthropic => CLAUDE,
    };
    let refusal = |case: Case, status, code, openai_type, anthropic_type, class| Refusal {
        case,
        status,
        code,
        openai_type,
        anthropic_type,
        class,
    };
    let mut refused = vec![
        refusal(
            case("unknown key", "sk-tg-unknown", call, other_model(model)),
            401,
            "invalid_api_key",
            "authentication_error",
            "authentication_error",
            "AuthenticationError",
        ),
        refusal(
            case(
                "no permission for the route",
                &no_chat,
                call,
                other_model(model),
            ),
            403,
            "permission_denied",
            "permission_error",
            "permission_error",
            "PermissionDeniedError",
        ),
        refusal(
            case("model not allowed", &good, call, other_model("gpt-4o-mini")),
            403,
            "model_not_allowed",
            "permission_error",
            "permission_error",
            "PermissionDeniedError",
        ),
        refusal(
            case(
                "no model",
                &good,
                "post",
                json!({"path": path, "body": {"max_tokens": 4, "messages": []}}),
            ),
            400,
            "invalid_request",
            "invalid_request_error",
            "invalid_request_error",
            "BadRequestError",
        ),
        refusal(
            case("rate limit", &rpm, call, other_model(model)),
            429,
            "rate_limit_exceeded",
            "rate_limit_error",
            "rate_limit_error",
            "RateLimitError",
        ),
        refusal(
            case("budget spent", &spent, call, other_model(model)),
            429,
            "insufficient_quota",
            "insufficient_quota",
            "rate_limit_error",
            "RateLimitError",
        ),
    ];
    if sdk == Sdk::OpenAi {
        refused.insert(
            3,
            refusal(
                case("unknown route", &good, "get", json!({"path": "/files"})),
                404,
                "unknown_route",
                "invalid_request_error",
                "not_found_error",
                "NotFoundError",
            ),
        );
    }
    // The rate-limited key's one request a minute goes first.
    let mut cases = vec![case(
        "rpm: the first request",
        &rpm,
        call,
        other_model(model),
    )];
    cases.extend(refused.iter().map(|r| r.case.clone()));
    (cases, refused)
}

/// Runs the refusals of `sdk` through a recording stack; answers what was seen (the
/// refusals only) and the request ids of the Checks of the refusals.
async fn run_refusals(sdk: Sdk) -> (Stack, Vec<Refusal>, Vec<Seen>, Vec<String>) {
    let s = Stack::recording("").await;
    let (cases, refused) = refusals(&s, sdk).await;
    let checks_before = s.checks().len();
    let url = match sdk {
        Sdk::OpenAi => s.openai_url(),
        Sdk::Anthropic => s.anthropic_url(),
    };
    let seen = run_sdk(sdk, &url, &cases).await;
    assert!(
        seen[0].ok(),
        "the first request of the rpm key passes: {}",
        seen[0].summary()
    );
    // One Check per case (no retries), the first of which was allowed.
    let checks = s.checks()[checks_before + 1..].to_vec();
    (s, refused, seen[1..].to_vec(), checks)
}

fn assert_refusals_are_sdk_exceptions(sdk: Sdk, refused: &[Refusal], seen: &[Seen]) {
    let mut v = Violations::default();
    let module = match sdk {
        Sdk::OpenAi => "openai",
        Sdk::Anthropic => "anthropic",
    };
    for (r, s) in refused.iter().zip(seen) {
        let name = s.name();
        let e = s.error();
        if s.ok() || e.is_null() {
            v.0.push(format!("{name}: the SDK raised nothing: {}", s.summary()));
            continue;
        }
        v.eq(
            &format!("{name}: exception class"),
            format!(
                "{}.{}",
                e["module"].as_str().unwrap_or(""),
                e["class"].as_str().unwrap_or("")
            ),
            format!("{module}.{}", r.class),
        );
        v.eq(
            &format!("{name}: e.status_code"),
            e["status"].as_u64(),
            Some(r.status),
        );
        match sdk {
            Sdk::OpenAi => {
                v.eq(&format!("{name}: e.code"), e["code"].as_str(), Some(r.code));
                v.eq(
                    &format!("{name}: e.type"),
                    e["type"].as_str(),
                    Some(r.openai_type),
                );
                v.check(
                    &format!("{name}: e.message"),
                    e["body"]["message"].as_str().is_some_and(|m| !m.is_empty()),
                    format!("no message in {}", e["body"]),
                );
            }
            Sdk::Anthropic => {
                let body = &e["body"];
                v.eq(
                    &format!("{name}: body[\"type\"]"),
                    body["type"].as_str(),
                    Some("error"),
                );
                v.eq(
                    &format!("{name}: body[\"error\"][\"type\"]"),
                    body["error"]["type"].as_str(),
                    Some(r.anthropic_type),
                );
                v.eq(
                    &format!("{name}: body[\"error\"][\"code\"]"),
                    body["error"]["code"].as_str(),
                    Some(r.code),
                );
                v.check(
                    &format!("{name}: body[\"error\"][\"message\"]"),
                    body["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    format!("no message in {body}"),
                );
                v.eq(
                    &format!("{name}: e.type"),
                    e["type"].as_str(),
                    Some(r.anthropic_type),
                );
            }
        }
        v.eq(
            &format!("{name}: content-type"),
            s.first_header("content-type"),
            Some("application/json"),
        );
    }
    v.assert_none();
}

fn assert_refusals_carry_request_ids(sdk: Sdk, seen: &[Seen], checks: &[String]) {
    let mut v = Violations::default();
    v.eq(
        "Checks that tollgate received, one per refusal",
        checks.len(),
        seen.len(),
    );
    for (s, tollgate_saw) in seen.iter().zip(checks) {
        let name = s.name();
        v.check(
            &format!("{name}: tollgate saw a request id"),
            !tollgate_saw.is_empty(),
            "the CheckRequest had no x-request-id",
        );
        v.eq(
            &format!("{name}: e.request_id"),
            s.request_id(),
            Some(tollgate_saw.as_str()),
        );
        v.eq(
            &format!("{name}: x-request-id"),
            s.first_header("x-request-id"),
            Some(tollgate_saw.as_str()),
        );
        if sdk == Sdk::Anthropic {
            v.eq(
                &format!("{name}: request-id"),
                s.first_header("request-id"),
                Some(tollgate_saw.as_str()),
            );
        }
    }
    v.assert_none();
}

/// DESIGN: a refusal that waiting cannot fix soon carries `x-should-retry: false` and no
/// `retry-after`: every 401/403/404, a spent budget; a plain rate limit carries
/// `retry-after`.
fn assert_refusals_say_whether_to_retry(refused: &[Refusal], seen: &[Seen]) {
    let mut v = Violations::default();
    for (r, s) in refused.iter().zip(seen) {
        let name = s.name();
        match r.status {
            401 | 403 | 404 => {
                v.eq(
                    &format!("{name}: x-should-retry"),
                    s.first_header("x-should-retry"),
                    Some("false"),
                );
                v.eq(
                    &format!("{name}: retry-after"),
                    s.first_header("retry-after"),
                    None,
                );
            }
            429 if r.code == "insufficient_quota" => {
                v.eq(
                    &format!("{name}: x-should-retry"),
                    s.first_header("x-should-retry"),
                    Some("false"),
                );
                v.eq(
                    &format!("{name}: retry-after"),
                    s.first_header("retry-after"),
                    None,
                );
                let reset = s.first_header("x-tollgate-budget-reset");
                v.check(
                    &format!("{name}: x-tollgate-budget-reset"),
                    reset.is_some_and(|t| {
                        chrono::DateTime::parse_from_rfc3339(t)
                            .is_ok_and(|t| t > chrono::Utc::now())
                    }),
                    format!("{reset:?} is not a future RFC 3339 time"),
                );
            }
            429 => {
                v.check(
                    &format!("{name}: retry-after"),
                    s.first_header("retry-after")
                        .is_some_and(|t| t.parse::<u64>().is_ok_and(|n| n >= 1)),
                    format!("{:?} is not whole seconds", s.first_header("retry-after")),
                );
                v.check(
                    &format!("{name}: x-should-retry"),
                    s.first_header("x-should-retry") != Some("false"),
                    "a plain rate limit must not forbid a retry",
                );
            }
            _ => {}
        }
    }
    v.assert_none();
}

#[tokio::test]
async fn openai_sdk_refusals_are_its_own_exception_classes() {
    let (s, refused, seen, _) = run_refusals(Sdk::OpenAi).await;
    assert_refusals_are_sdk_exceptions(Sdk::OpenAi, &refused, &seen);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn anthropic_sdk_refusals_are_anthropic_errors() {
    let (s, refused, seen, _) = run_refusals(Sdk::Anthropic).await;
    assert_refusals_are_sdk_exceptions(Sdk::Anthropic, &refused, &seen);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn openai_sdk_refusals_carry_the_request_id_tollgate_saw() {
    let (s, _, seen, checks) = run_refusals(Sdk::OpenAi).await;
    assert_refusals_carry_request_ids(Sdk::OpenAi, &seen, &checks);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn anthropic_sdk_refusals_carry_the_request_id_tollgate_saw() {
    let (s, _, seen, checks) = run_refusals(Sdk::Anthropic).await;
    assert_refusals_carry_request_ids(Sdk::Anthropic, &seen, &checks);
    s.tollgate.stop().await;
}

#[tokio::test]
async fn refusals_say_whether_waiting_can_help() {
    let (s, refused, seen, _) = run_refusals(Sdk::OpenAi).await;
    assert_refusals_say_whether_to_retry(&refused, &seen);
    s.tollgate.stop().await;
}

// ---------------------------------------------------------------------------------------
// Retries

/// Both SDKs, each allowed two retries, meet `refusal` once: they must make exactly one
/// attempt (tollgate counts one Check of `code` per SDK), and see `x-should-retry: false`
/// and no `retry-after`.
async fn assert_not_retried(s: &Stack, openai: Case, anthropic: Case, code: &str) {
    let before = s.checks_counted(code).await;
    let mut seen = run_sdk(Sdk::OpenAi, &s.openai_url(), &[openai.retries(2)]).await;
    seen.extend(run_sdk(Sdk::Anthropic, &s.anthropic_url(), &[anthropic.retries(2)]).await);
    let counted = s.checks_counted(code).await - before;

    let mut v = Violations::default();
    for (sdk, s) in [Sdk::OpenAi, Sdk::Anthropic].into_iter().zip(&seen) {
        v.check(
            &format!("{sdk:?}: the SDK gave up"),
            !s.stalled(),
            format!(
                "still waiting to retry after 20 s (first answer's headers {})",
                s.attempts()
                    .first()
                    .map(|a| a["headers"].clone())
                    .unwrap_or_default()
            ),
        );
        v.check(
            &format!("{sdk:?}: refused"),
            !s.ok() && s.error()["status"] == json!(429),
            s.summary(),
        );
        v.eq(&format!("{sdk:?}: HTTP attempts"), s.statuses(), vec![429]);
        v.eq(
            &format!("{sdk:?}: x-should-retry"),
            s.first_header("x-should-retry"),
            Some("false"),
        );
        v.eq(
            &format!("{sdk:?}: retry-after"),
            s.first_header("retry-after"),
            None,
        );
    }
    v.eq(
        &format!("tollgate_check_total{{code=\"{code}\"}} increase"),
        counted,
        2.0,
    );
    v.assert_none();
}

#[tokio::test]
async fn a_spent_budget_is_not_retried() {
    let s = Stack::start("").await;
    let (_, key) = s.spent_key("spent").await;
    assert_not_retried(
        &s,
        case("budget", &key, "chat", chat("gpt-4o")),
        case("budget", &key, "messages", message(CLAUDE)),
        "insufficient_quota",
    )
    .await;
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_request_larger_than_its_tpm_bucket_is_not_retried() {
    let s = Stack::start("").await;
    // 100 tokens a minute; a request estimated at more than 500 can never be admitted.
    let (_, key) = s.key("tpm", json!({"tpm": 100})).await;
    let mut big_chat = chat("gpt-4o");
    big_chat["max_tokens"] = json!(500);
    let mut big_message = message(CLAUDE);
    big_message["max_tokens"] = json!(500);
    assert_not_retried(
        &s,
        case("too large", &key, "chat", big_chat),
        case("too large", &key, "messages", big_message),
        "rate_limit_exceeded",
    )
    .await;
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_plain_rate_limit_is_retried_after_retry_after() {
    // One request in the bucket, refilled at one every 3 s: the second request is refused
    // with a `retry-after` of at most 3 s, and the SDK's retry after that long is admitted.
    let s = Stack::start(
        r#"
limits:
  routes:
    /v1/chat/completions: { rpm: 20, rpm_burst: 1 }
    /v1/messages: { rpm: 20, rpm_burst: 1 }
"#,
    )
    .await;
    let (_, key) = s.key("k", json!({})).await;
    let refused_before = s.checks_counted("rate_limit_exceeded").await;
    let openai = run_sdk(
        Sdk::OpenAi,
        &s.openai_url(),
        &[
            case("first", &key, "chat", chat("gpt-4o")),
            case("second", &key, "chat", chat("gpt-4o")).retries(2),
        ],
    )
    .await;
    let anthropic = run_sdk(
        Sdk::Anthropic,
        &s.anthropic_url(),
        &[
            case("first", &key, "messages", message(CLAUDE)),
            case("second", &key, "messages", message(CLAUDE)).retries(2),
        ],
    )
    .await;
    let refused = s.checks_counted("rate_limit_exceeded").await - refused_before;

    let mut v = Violations::default();
    for (sdk, seen) in [(Sdk::OpenAi, &openai), (Sdk::Anthropic, &anthropic)] {
        v.check(
            &format!("{sdk:?}: first request"),
            seen[0].ok(),
            seen[0].summary(),
        );
        let second = &seen[1];
        v.check(
            &format!("{sdk:?}: second request succeeds after a retry"),
            second.ok(),
            second.summary(),
        );
        v.eq(
            &format!("{sdk:?}: second request's HTTP attempts"),
            second.statuses(),
            vec![429, 200],
        );
        v.check(
            &format!("{sdk:?}: retry-after of the 429"),
            second
                .first_header("retry-after")
                .is_some_and(|t| t.parse::<u64>().is_ok_and(|n| (1..=3).contains(&n))),
            format!("{:?}", second.first_header("retry-after")),
        );
        v.check(
            &format!("{sdk:?}: x-should-retry of the 429"),
            second.first_header("x-should-retry") != Some("false"),
            "a plain rate limit must not forbid a retry",
        );
    }
    v.eq("rate-limited Checks", refused, 2.0);
    v.assert_none();
    s.tollgate.stop().await;
}

// ---------------------------------------------------------------------------------------
// Usage

fn tokens(row: Option<&Value>) -> (u64, u64) {
    let row = row.cloned().unwrap_or_default();
    (
        row["input_tokens"].as_u64().unwrap_or(0),
        row["output_tokens"].as_u64().unwrap_or(0),
    )
}

#[tokio::test]
async fn openai_sdk_usage_is_metered_exactly() {
    let s = Stack::start("").await;
    let (plain, plain_key) = s.key("plain", json!({})).await;
    let (asked, asked_key) = s.key("stream-asked", json!({})).await;
    let (silent, silent_key) = s.key("stream-silent", json!({})).await;
    let body = |max_tokens: u64, stream: Option<Value>| {
        let mut body = json!({"model": "gpt-4o", "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "count to five for me"}]});
        if let Some(options) = stream {
            body["stream"] = json!(true);
            if !options.is_null() {
                body["stream_options"] = options;
            }
        }
        body
    };
    let silent_body = body(3, Some(Value::Null));
    let seen = run_sdk(
        Sdk::OpenAi,
        &s.openai_url(),
        &[
            case("plain", &plain_key, "chat", body(5, None)),
            case(
                "stream asking for usage",
                &asked_key,
                "chat",
                body(4, Some(json!({"include_usage": true}))),
            ),
            case(
                "stream not asking",
                &silent_key,
                "chat",
                silent_body.clone(),
            ),
        ],
    )
    .await;
    for s in &seen {
        assert!(s.ok(), "{}: {}", s.name(), s.summary());
    }
    let told = |usage: &Value| {
        (
            usage["prompt_tokens"].as_u64().unwrap_or(0),
            usage["completion_tokens"].as_u64().unwrap_or(0),
        )
    };
    let rows = s.wait_usage(&[&plain, &asked, &silent], 1).await;

    let mut v = Violations::default();
    v.eq(
        "non-streamed: recorded = the SDK's usage",
        tokens(rows.get(&plain)),
        told(&seen[0].value()["usage"]),
    );
    let streamed = seen[1].value()["usage"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    v.eq("usage chunks the SDK read", streamed.len(), 1);
    v.eq(
        "streamed with include_usage: recorded = the usage chunk",
        tokens(rows.get(&asked)),
        told(streamed.last().unwrap_or(&Value::Null)),
    );
    // The SDK was told nothing; the mock's counts for the same body.
    v.eq(
        "streamed without stream_options: recorded = the upstream's counts",
        tokens(rows.get(&silent)),
        (prompt_tokens(&silent_body), 3),
    );
    for (id, name) in [(&plain, "plain"), (&asked, "asked"), (&silent, "silent")] {
        v.eq(
            &format!("{name}: one record"),
            rows.get(id).and_then(|r| r["requests"].as_u64()),
            Some(1),
        );
    }
    v.assert_none();
    s.tollgate.stop().await;
}

#[tokio::test]
async fn anthropic_sdk_usage_is_metered_exactly() {
    let s = Stack::start("").await;
    let (plain, plain_key) = s.key("plain", json!({})).await;
    let (streamed, streamed_key) = s.key("streamed", json!({})).await;
    let body = json!({"model": CLAUDE, "max_tokens": 6, "system": "be brief",
                      "messages": [{"role": "user", "content": "hello there you"}]});
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let seen = run_sdk(
        Sdk::Anthropic,
        &s.anthropic_url(),
        &[
            case("plain", &plain_key, "messages", body),
            case("streamed", &streamed_key, "messages", stream_body),
        ],
    )
    .await;
    for s in &seen {
        assert!(s.ok(), "{}: {}", s.name(), s.summary());
    }
    let told = |usage: &Value| {
        (
            usage["input_tokens"].as_u64().unwrap_or(0),
            usage["output_tokens"].as_u64().unwrap_or(0),
        )
    };
    let rows = s.wait_usage(&[&plain, &streamed], 1).await;
    let mut v = Violations::default();
    v.eq(
        "non-streamed: recorded = the SDK's usage",
        tokens(rows.get(&plain)),
        told(&seen[0].value()["usage"]),
    );
    v.eq(
        "streamed: recorded = message_start input + message_delta output",
        tokens(rows.get(&streamed)),
        told(&seen[1].value()["usage"]),
    );
    v.eq("the SDK was told", told(&seen[1].value()["usage"]), (5, 6));
    v.assert_none();
    s.tollgate.stop().await;
}

// ---------------------------------------------------------------------------------------
// Streams

/// Ids and timestamps differ between two answers of the mock; everything else must not.
fn normalised(events: &Value) -> Value {
    let mut events = events.clone();
    for event in events.as_array_mut().into_iter().flatten() {
        for field in ["id", "created"] {
            if let Some(v) = event.get_mut(field) {
                *v = json!(field);
            }
        }
        if let Some(v) = event.pointer_mut("/message/id") {
            *v = json!("id");
        }
    }
    events
}

/// The same streaming chat completion through the stack and straight to the mock: the SDK
/// must read the same chunks, and `chunk.choices[0]` must work on each of them.
async fn assert_openai_stream_untouched(stream_options: Option<Value>) -> (Stack, Seen) {
    let s = Stack::start("").await;
    let (_, key) = s.key("k", json!({})).await;
    let mut body = json!({"model": "gpt-4o", "max_tokens": 3, "stream": true,
                          "messages": [{"role": "user", "content": "three words please"}]});
    if let Some(options) = stream_options {
        body["stream_options"] = options;
    }
    let seen = run_sdk(
        Sdk::OpenAi,
        &s.openai_url(),
        &[
            case("through tollgate", &key, "chat", body.clone()),
            case("direct", "sk-direct", "chat", body.clone()).at(format!("{}/v1", s.mock.url())),
        ],
    )
    .await;
    let (through, direct) = (&seen[0], &seen[1]);
    assert!(direct.ok(), "direct to the mock: {}", direct.summary());
    let mut v = Violations::default();
    v.check("through tollgate", through.ok(), through.summary());
    let chunks = normalised(&through.value()["chunks"]);
    let expected = normalised(&direct.value()["chunks"]);
    if chunks != expected {
        v.0.push(format!(
            "the chunks differ from the upstream's for the same request:\n    through \
             tollgate ({} chunks): {chunks}\n    direct ({} chunks): {expected}",
            chunks.as_array().map_or(0, Vec::len),
            expected.as_array().map_or(0, Vec::len),
        ));
    }
    v.eq(
        "`chunk.choices[0]` raised",
        through.value()["choice_errors"].clone(),
        direct.value()["choice_errors"].clone(),
    );
    v.eq(
        "chunks with `usage` set",
        through.value()["usage"].clone(),
        direct.value()["usage"].clone(),
    );
    v.assert_none();
    (s, through.clone())
}

#[tokio::test]
async fn a_stream_without_stream_options_is_the_upstreams_stream() {
    let (s, seen) = assert_openai_stream_untouched(None).await;
    assert_eq!(seen.value()["usage"], json!([]));
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_stream_with_include_usage_false_is_the_upstreams_stream() {
    let (s, seen) = assert_openai_stream_untouched(Some(json!({"include_usage": false}))).await;
    assert_eq!(seen.value()["usage"], json!([]));
    s.tollgate.stop().await;
}

#[tokio::test]
async fn a_stream_with_include_usage_gets_the_usage_chunk() {
    let (s, seen) = assert_openai_stream_untouched(Some(json!({"include_usage": true}))).await;
    let chunks = seen.value()["chunks"].as_array().unwrap();
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{last}");
    assert_eq!(last["usage"]["prompt_tokens"], 3, "{last}");
    assert_eq!(last["usage"]["completion_tokens"], 3, "{last}");
    s.tollgate.stop().await;
}

#[tokio::test]
async fn an_anthropic_stream_is_the_upstreams_stream() {
    let s = Stack::start("").await;
    let (_, key) = s.key("k", json!({})).await;
    let body = json!({"model": CLAUDE, "max_tokens": 3, "stream": true,
                      "messages": [{"role": "user", "content": "three words please"}]});
    let seen = run_sdk(
        Sdk::Anthropic,
        &s.anthropic_url(),
        &[
            case("through tollgate", &key, "messages", body.clone()),
            case("direct", "sk-direct", "messages", body).at(s.mock.url()),
        ],
    )
    .await;
    assert!(seen[0].ok(), "{}", seen[0].summary());
    assert!(seen[1].ok(), "{}", seen[1].summary());
    assert_eq!(
        normalised(&seen[0].value()["events"]),
        normalised(&seen[1].value()["events"])
    );
    s.tollgate.stop().await;
}
