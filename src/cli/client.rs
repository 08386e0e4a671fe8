//! The HTTP client behind the admin commands: base URL, bearer token, output format, and
//! the one translation of API errors (`{"error":{"code","message"}}`) into [`CliError`].

use super::output::Output;
use super::CliError;
use anyhow::anyhow;
use clap::Args;
use reqwest::{Method, Url};
use serde_json::Value;
use std::time::Duration;

/// How long one API call may take before the CLI gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is, who is calling, and how to print answers.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of tollgate's HTTP API
    #[arg(
        long,
        env = "TOLLGATE_URL",
        default_value = "http://127.0.0.1:9090",
        global = true,
        help_heading = "Connection"
    )]
    pub url: String,
    /// Bearer token: the master key, an admin key or an admin JWT (falls back to
    /// TOLLGATE_MASTER_KEY)
    #[arg(
        long,
        env = "TOLLGATE_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,
    /// Output format
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value_t = Output::Table,
        global = true,
        help_heading = "Connection"
    )]
    pub output: Output,
}

/// A client of one tollgate's HTTP API.
pub struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
    pub output: Output,
}

impl Api {
    pub fn new(args: &ApiArgs) -> Result<Api, CliError> {
        let base = Url::parse(&args.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "--url `{}` is not an http:// or https:// URL",
                    args.url
                ))
            })?;
        let token = args
            .token
            .clone()
            .or_else(|| std::env::var("TOLLGATE_MASTER_KEY").ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("tollgate-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Runtime(anyhow!("cannot build the HTTP client: {e}")))?;
        Ok(Api {
            http,
            base,
            token,
            output: args.output,
        })
    }

    /// The URL of `segments` under the base URL; each segment is percent-encoded, so an id
    /// cannot escape its place in the path.
    fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("http(s) URLs have a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        self.call(Method::GET, segments, query, None).await
    }

    pub async fn post(&self, segments: &[&str], body: Value) -> Result<Value, CliError> {
        self.call(Method::POST, segments, &[], Some(body)).await
    }

    pub async fn patch(&self, segments: &[&str], body: Value) -> Result<Value, CliError> {
        self.call(Method::PATCH, segments, &[], Some(body)).await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Value, CliError> {
        self.call(Method::DELETE, segments, &[], None).await
    }

    /// One request. A success answers its JSON body (`Null` when the body is empty, as
    /// for 204); an error status becomes [`CliError::Api`].
    async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value, CliError> {
        let url = self.url(segments, query);
        let mut request = self.http.request(method.clone(), url.clone());
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_error(&method, &url, e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&method, &url, e))?;
        if status.is_success() {
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                CliError::Runtime(anyhow!(
                    "{method} {url} answered {status} with a body that is not JSON: {e}"
                ))
            });
        }
        Err(self.api_error(status, &bytes))
    }

    fn api_error(&self, status: reqwest::StatusCode, body: &[u8]) -> CliError {
        let parsed: Option<(String, String)> =
            serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                let error = v.get("error")?;
                Some((
                    error.get("code")?.as_str()?.to_owned(),
                    error.get("message")?.as_str()?.to_owned(),
                ))
            });
        let (code, message) = parsed.unwrap_or_else(|| {
            // Not tollgate's error shape (a proxy in between, or the wrong --url).
            let text = String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(200)
                .collect::<String>();
            let reason = status.canonical_reason().unwrap_or("error").to_owned();
            let message = if text.is_empty() {
                reason.clone()
            } else {
                text
            };
            (reason.to_lowercase().replace(' ', "_"), message)
        });
        let hint = if status == reqwest::StatusCode::UNAUTHORIZED && self.token.is_none() {
            "\nhint: no token given; pass --token or set TOLLGATE_TOKEN (or TOLLGATE_MASTER_KEY)"
                .to_owned()
        } else {
            String::new()
        };
        CliError::Api {
            status: status.as_u16(),
            code,
            message,
            hint,
        }
    }

    fn transport_error(&self, method: &Method, url: &Url, e: reqwest::Error) -> CliError {
        let cause = root_cause(&e);
        if e.is_connect() {
            return CliError::Runtime(anyhow!(
                "cannot reach tollgate at {}: {cause}\nhint: is `tollgate serve` running there? \
                 Point the CLI at it with --url or TOLLGATE_URL.",
                self.base
            ));
        }
        if e.is_timeout() {
            return CliError::Runtime(anyhow!(
                "{method} {url} timed out after {}s",
                REQUEST_TIMEOUT.as_secs()
            ));
        }
        CliError::Runtime(anyhow!("{method} {url} failed: {cause}"))
    }
}

/// The innermost error message (for a refused connection: "Connection refused"), which
/// says more than reqwest's "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut current = e;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
