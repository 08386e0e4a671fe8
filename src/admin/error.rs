//! The API's one error type, rendered once as `{"error":{"code","message"}}`.

use crate::backend::BackendError;
use crate::store::StoreError;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    TooLarge(String),
    Internal(String),
    /// An error with its own code (the session API's `invalid_credentials`,
    /// `account_blocked`, `rate_limited`, …) and, for 429, an optional `retry-after`.
    Coded {
        status: StatusCode,
        code: &'static str,
        message: String,
        retry_after: Option<u64>,
    },
}

impl ApiError {
    /// The status, code and message this error answers with.
    pub fn parts(&self) -> (StatusCode, &'static str, &str) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", m),
            ApiError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
            ApiError::Coded {
                status,
                code,
                message,
                ..
            } => (*status, code, message),
        }
    }

    pub fn coded(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Coded {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error about one item of a request (`keys[3]`): a message about a field
    /// names the field there (`` `keys[3].team_id`: … ``), any other starts with the
    /// place (`keys[3]: …`). Backend failures are not about the item and stay as they are.
    pub fn at(self, place: &str) -> ApiError {
        let locate = |message: String| match message.strip_prefix('`') {
            Some(rest) => format!("`{place}.{rest}"),
            None => format!("{place}: {message}"),
        };
        match self {
            ApiError::BadRequest(m) => ApiError::BadRequest(locate(m)),
            ApiError::Unauthorized(m) => ApiError::Unauthorized(locate(m)),
            ApiError::Forbidden(m) => ApiError::Forbidden(locate(m)),
            ApiError::NotFound(m) => ApiError::NotFound(locate(m)),
            ApiError::Conflict(m) => ApiError::Conflict(locate(m)),
            ApiError::TooLarge(m) => ApiError::TooLarge(locate(m)),
            other => other,
        }
    }

    /// The seconds of a `retry-after` this error answers with.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Coded { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn not_found(what: &str, id: &str) -> ApiError {
        ApiError::NotFound(format!("no {what} with id `{id}`"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::Invalid(m) => ApiError::BadRequest(m),
            StoreError::Backend(e) => ApiError::from(e),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(e: BackendError) -> Self {
        let (status, code, message) = e.http();
        ApiError::Coded {
            status,
            code,
            message,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = self.parts();
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::Coded {
            retry_after: Some(seconds),
            ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(*seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
        }
        response
    }
}
