//! What every answer of the UI shares: where the UI is mounted ([`Site`]), the headers of
//! every answer and the error pages ([`finish`], [`UiError`]).

use super::layout::{render_with_status, ErrorView, Layout};
use super::{Ui, UiState};
use crate::admin::ApiError;
use crate::config::SecureCookies;
use crate::store::StoreError;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::net::SocketAddr;

/// The Content-Security-Policy of every answer: scripts, styles and images from this
/// origin only (no inline script or style anywhere), forms post here only, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// Longest `X-Forwarded-Prefix` honoured.
const MAX_PREFIX_BYTES: usize = 256;

/// Where and how the browser reaches the UI, read from the request: the path prefix a
/// proxy mounts it under, whether it came over TLS, and its origin.
#[derive(Debug, Clone)]
pub struct Site {
    /// The validated `X-Forwarded-Prefix` (`/gateway`), or empty.
    pub prefix: String,
    /// `{prefix}/ui`: every link, form action, redirect and cookie path starts with it.
    pub base: String,
    /// Whether the browser reaches the UI over TLS (`X-Forwarded-Proto: https`, or
    /// `ui.secure_cookies: always`): cookies are then marked `Secure`.
    pub secure: bool,
    /// `scheme://host[:port]` as the browser sees it (https when `secure`), for the
    /// `Origin` check, the SSO redirect URI and the passkeys' relying party; `None` without
    /// a `Host`.
    pub origin: Option<String>,
    /// The client's address (the TCP peer), for the audit log and attempt limits.
    pub source: Option<String>,
}

impl Site {
    pub fn of(headers: &HeaderMap, extensions: &axum::http::Extensions, ui: &Ui) -> Site {
        let prefix = prefix_of(headers).unwrap_or_default();
        // `always` is for a TLS proxy that does not say so: the browser's origin is https.
        let secure = ui.app.config.ui.secure_cookies == SecureCookies::Always
            || forwarded(headers, "x-forwarded-proto")
                .is_some_and(|proto| proto.eq_ignore_ascii_case("https"));
        let host = forwarded(headers, "x-forwarded-host").or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::trim)
        });
        let scheme = if secure { "https" } else { "http" };
        let origin = host
            .filter(|h| !h.is_empty())
            .map(|h| normal_origin(&format!("{scheme}://{h}")));
        Site {
            base: format!("{prefix}/ui"),
            prefix,
            secure,
            origin,
            source: extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        }
    }

    /// `path` (starting with `/`) under the UI: `{prefix}/ui{path}`.
    pub fn link(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// 303 See Other to `path` under the UI (after a form post, and to the sign-in page).
    pub fn redirect(&self, path: &str) -> Response {
        see_other(&self.link(path))
    }

    /// Whether an `Origin` header names this site. `null` (sandboxed frames, some
    /// redirects) does not.
    pub fn is_origin(&self, origin: &str) -> bool {
        self.origin
            .as_deref()
            .is_some_and(|mine| normal_origin(origin) == mine)
    }
}

impl FromRequestParts<UiState> for Site {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, ui: &UiState) -> Result<Site, Infallible> {
        Ok(Site::of(&parts.headers, &parts.extensions, ui))
    }
}

/// 303 See Other to `location`.
pub fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => (StatusCode::SEE_OTHER, [(header::LOCATION, value)]).into_response(),
        // Every location is built from the validated prefix and our own paths.
        Err(_) => UiError::internal("a redirect to an unprintable location").into_response(),
    }
}

/// The first value of a forwarding header (proxies append theirs after a comma).
fn forwarded<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `X-Forwarded-Prefix` when it is a path of safe segments (`/a/b-c/d.e`), without a
/// trailing `/`; anything else (`..`, `//`, `%`, quotes, spaces, too long) is ignored, so
/// that nothing a client sends can put text into a link, a redirect or a cookie path.
pub fn prefix_of(headers: &HeaderMap) -> Option<String> {
    let raw = headers.get("x-forwarded-prefix")?.to_str().ok()?.trim();
    let raw = raw.strip_suffix('/').unwrap_or(raw);
    if raw.is_empty() || raw.len() > MAX_PREFIX_BYTES || !raw.starts_with('/') {
        return None;
    }
    let safe = raw[1..].split('/').all(|segment| {
        !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    });
    safe.then(|| raw.to_owned())
}

/// An origin in one spelling: lower case, without the scheme's default port.
fn normal_origin(origin: &str) -> String {
    let origin = origin.trim().to_ascii_lowercase();
    origin
        .strip_suffix(":80")
        .filter(|o| o.starts_with("http://"))
        .or_else(|| {
            origin
                .strip_suffix(":443")
                .filter(|o| o.starts_with("https://"))
        })
        .map(str::to_owned)
        .unwrap_or(origin)
}

/// What a page shows when it cannot do what was asked: the status and message, which for a
/// refusal of the API are the API's own.
#[derive(Debug, Clone)]
pub struct UiError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl UiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn forbidden(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::FORBIDDEN, message)
    }

    pub fn not_found(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::NOT_FOUND, message)
    }

    pub fn internal(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The title an error page shows above the message.
    pub fn title(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "The request cannot be used",
            401 => "Not signed in",
            403 => "Not allowed",
            404 => "Not found",
            409 => "Conflict",
            413 => "Too large",
            429 => "Too many attempts",
            503 => "Unavailable",
            _ => "Something went wrong",
        }
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> UiError {
        let (status, _, message) = e.parts();
        UiError {
            status,
            message: message.to_owned(),
            retry_after: e.retry_after(),
        }
    }
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> UiError {
        UiError::from(ApiError::from(e))
    }
}

/// The error travels to [`finish`] in the response's extensions, which renders it with the
/// request's [`Site`].
impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response.extensions_mut().insert(self);
        response
    }
}

/// `/ui/...` paths that name no page.
pub async fn not_found() -> UiError {
    UiError::not_found("There is no such page.")
}

/// Runs around every UI request: renders a [`UiError`] as a page, and sets the headers
/// every answer carries.
pub async fn finish(State(ui): State<UiState>, request: Request, next: Next) -> Response {
    let site = Site::of(request.headers(), request.extensions(), &ui);
    let mut response = next.run(request).await;
    if let Some(error) = response.extensions_mut().remove::<UiError>() {
        let view = ErrorView {
            layout: Layout::bare(&site, error.title()),
            status: error.status.as_u16(),
            message: error.message.clone(),
        };
        let mut page = render_with_status(error.status, &view);
        if let Some(retry) = response.headers().get(header::RETRY_AFTER).cloned() {
            page.headers_mut().insert(header::RETRY_AFTER, retry);
        }
        for cookie in response.headers().get_all(header::SET_COOKIE) {
            page.headers_mut()
                .append(header::SET_COOKIE, cookie.clone());
        }
        response = page;
    }
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-prefix", HeaderValue::from_str(value).unwrap());
        prefix_of(&headers)
    }

    #[test]
    fn only_a_path_of_safe_segments_is_a_prefix() {
        assert_eq!(prefix("/gateway").as_deref(), Some("/gateway"));
        assert_eq!(prefix("/gateway/").as_deref(), Some("/gateway"));
        assert_eq!(prefix("/a/b-c/d.e_f~g").as_deref(), Some("/a/b-c/d.e_f~g"));
        for bad in [
            "",
            "/",
            "gateway",
            "//evil.example",
            "/a//b",
            "/a/../b",
            "/./a",
            "/a%2fb",
            "/a b",
            "/a\"b",
            "/a'b",
            "/a<b",
            "/a,b",
            "/a?b",
            "/a#b",
            "/a\\b",
            "https://x/y",
        ] {
            assert_eq!(prefix(bad), None, "{bad:?}");
        }
        assert_eq!(prefix(&format!("/{}", "a".repeat(300))), None);
    }

    #[test]
    fn origins_compare_without_case_and_default_ports() {
        assert_eq!(normal_origin("HTTP://Example.com:80"), "http://example.com");
        assert_eq!(
            normal_origin("https://example.com:443"),
            "https://example.com"
        );
        assert_eq!(
            normal_origin("http://example.com:443"),
            "http://example.com:443"
        );
        assert_eq!(
            normal_origin("http://127.0.0.1:9090"),
            "http://127.0.0.1:9090"
        );
    }
}
