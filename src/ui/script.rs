//! Requests from the UI's scripts (`passkey.js`): same-origin JSON posts, answered in JSON.
//!
//! They are checked as forms are ([`super::form`]), before the handler runs: a cross-site
//! `Origin` (or `Sec-Fetch-Site: cross-site`) is refused, the body must be
//! `application/json` (which another site cannot send without a preflight) of at most
//! [`MAX_JSON_BYTES`], and the CSRF token travels in the [`CSRF_HEADER`] header instead of
//! a field: the session's for [`JsonPosted`], the sign-in cookie's for
//! [`SignInJsonPosted`]. Every refusal is [`ScriptError`], `{"error": {"message", "type"}}`
//! with its status, which `passkey.js` shows.

use super::form::check_origin;
use super::session::{self, NoSession, Session, SIGN_IN_COOKIE};
use super::web::{Site, UiError};
use super::UiState;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The header a script sends the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Largest JSON body taken: a passkey's answer with an attestation certificate chain is a
/// few KiB ([`crate::authn::passkey::MAX_REQUEST_BYTES`]).
pub const MAX_JSON_BYTES: usize = crate::authn::passkey::MAX_REQUEST_BYTES;

/// A refusal, as a script reads it.
#[derive(Debug)]
pub struct ScriptError {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ScriptError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ScriptError {
        ScriptError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The error's `type`, from its status (as the HTTP API names them).
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "invalid_request",
            401 => "authentication_error",
            403 => "permission_denied",
            404 => "not_found",
            409 => "conflict",
            413 => "request_too_large",
            415 => "unsupported_media_type",
            429 => "rate_limit_exceeded",
            503 => "service_unavailable",
            _ => "internal_error",
        }
    }
}

impl From<UiError> for ScriptError {
    fn from(e: UiError) -> ScriptError {
        ScriptError {
            status: e.status,
            message: e.message,
            retry_after: e.retry_after,
        }
    }
}

impl IntoResponse for ScriptError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "message": self.message, "type": self.kind() } });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// A JSON post of a signed-in browser's script, checked (see the module docs).
pub struct JsonPosted {
    pub session: Session,
    pub body: Bytes,
}

/// A JSON post of the sign-in page's script, checked against the `tollgate_ui_signin`
/// cookie (double submit).
pub struct SignInJsonPosted {
    pub site: Site,
    /// The sign-in cookie's token: it binds a passkey sign-in to this browser.
    pub sign_in_token: String,
    pub body: Bytes,
}

impl FromRequest<UiState> for JsonPosted {
    type Rejection = ScriptError;

    async fn from_request(request: Request, ui: &UiState) -> Result<Self, ScriptError> {
        let (parts, body) = request.into_parts();
        let site = Site::of(&parts.headers, &parts.extensions, ui);
        check_origin(&parts.headers, &site)?;
        let session = match session::find(ui, &parts.headers, site).await {
            Ok(session) => session,
            Err(NoSession::Failed(e)) => return Err(e.into()),
            Err(_) => {
                return Err(ScriptError::new(
                    StatusCode::UNAUTHORIZED,
                    "Your session has ended. Sign in again.",
                ))
            }
        };
        if !session.csrf_matches(presented_csrf(&parts.headers)) {
            return Err(ScriptError::new(
                StatusCode::FORBIDDEN,
                "This page's security token is not this session's (it may come from a page opened before you signed in again). Nothing was changed. Reload the page and try again.",
            ));
        }
        let body = read(&parts.headers, body).await?;
        Ok(JsonPosted { session, body })
    }
}

impl FromRequest<UiState> for SignInJsonPosted {
    type Rejection = ScriptError;

    async fn from_request(request: Request, ui: &UiState) -> Result<Self, ScriptError> {
        let (parts, body) = request.into_parts();
        let site = Site::of(&parts.headers, &parts.extensions, ui);
        check_origin(&parts.headers, &site)?;
        let presented = presented_csrf(&parts.headers);
        let token = session::cookie_token(&parts.headers, SIGN_IN_COOKIE)
            .filter(|token| session::csrf_matches(token, presented))
            .ok_or_else(|| {
                ScriptError::new(
                    StatusCode::FORBIDDEN,
                    "The sign-in page has expired or did not come from this site. Reload it and try again.",
                )
            })?
            .to_owned();
        let body = read(&parts.headers, body).await?;
        Ok(SignInJsonPosted {
            site,
            sign_in_token: token,
            body,
        })
    }
}

fn presented_csrf(headers: &HeaderMap) -> &str {
    headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The body, when it is JSON of at most [`MAX_JSON_BYTES`].
async fn read(headers: &HeaderMap, body: axum::body::Body) -> Result<Bytes, ScriptError> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(ScriptError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "This address takes application/json.",
        ));
    }
    axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| {
            ScriptError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "The request is larger than {} KiB; nothing was changed.",
                    MAX_JSON_BYTES / 1024
                ),
            )
        })
}
