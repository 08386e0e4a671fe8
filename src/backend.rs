//! What a backend could not do: the database, Redis or an OIDC issuer.
//!
//! Whether a failure is transient is decided once, where the error enters the crate (sqlx's
//! error in `store::sql`, the Redis client's in `redis_pool`, an issuer's in `authn`), and
//! never guessed later from a message. Every edge answers it the same way, in one place:
//! [`BackendError::grpc_status`] for Check and the usage services, [`BackendError::http`] for
//! the HTTP API. A transient failure is "try again shortly" (gRPC UNAVAILABLE, HTTP 503
//! `auth_unavailable`); any other is an internal error (gRPC INTERNAL, HTTP 500 `internal`).
//! Neither is ever "allow" nor "no such key", and no answer carries the detail (which may
//! name a host or a query): the detail goes to the log.

use axum::http::StatusCode;
use std::fmt;

/// The backend a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Database,
    Redis,
    Issuer,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Database => "database",
            Backend::Redis => "Redis",
            Backend::Issuer => "identity provider",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend call that failed. `detail` is short and never holds a secret or a URL with
/// credentials (the constructors' callers make sure: see `redis_pool::reason` and
/// `store::sql::map_db_err`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{backend} {}: {detail}", if *.transient { "unavailable" } else { "error" })]
pub struct BackendError {
    backend: Backend,
    transient: bool,
    detail: String,
}

impl BackendError {
    /// The backend could not be reached, timed out, or is overloaded or failing over: the
    /// same call can succeed shortly.
    pub fn unavailable(backend: Backend, detail: impl Into<String>) -> BackendError {
        BackendError {
            backend,
            transient: true,
            detail: detail.into(),
        }
    }

    /// The backend answered with an error that repeating the call will not cure (a script
    /// error, an unreadable column, a failed migration).
    pub fn fault(backend: Backend, detail: impl Into<String>) -> BackendError {
        BackendError {
            backend,
            transient: false,
            detail: detail.into(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// What went wrong, for logs and for matching a server's error code (`NOGROUP …`).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// This failure with `context` put before its detail.
    pub fn context(mut self, context: impl fmt::Display) -> BackendError {
        self.detail = format!("{context}: {}", self.detail);
        self
    }

    /// The one log line for a failure an edge answers: a warning when transient, an error
    /// otherwise.
    fn log(&self, edge: &'static str) {
        if self.transient {
            tracing::warn!(edge, backend = %self.backend, error = %self.detail, "backend unavailable");
        } else {
            tracing::error!(edge, backend = %self.backend, error = %self.detail, "backend error");
        }
    }

    /// The gRPC answer (Check, ext_proc, access log): UNAVAILABLE when transient, else
    /// INTERNAL. Envoy applies its `failure_mode_allow` / `status_on_error` either way.
    pub fn grpc_status(&self) -> tonic::Status {
        self.log("grpc");
        if self.transient {
            tonic::Status::unavailable(format!(
                "tollgate: the {} needed for this answer is unavailable",
                self.backend
            ))
        } else {
            tonic::Status::internal("tollgate: internal error")
        }
    }

    /// The HTTP answer's status, error code and message.
    pub fn http(&self) -> (StatusCode, &'static str, String) {
        self.log("http");
        if self.transient {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "auth_unavailable",
                format!("the {} is unavailable; try again shortly", self.backend),
            )
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error".to_owned(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_ask_to_try_again_and_others_are_internal() {
        let down = BackendError::unavailable(Backend::Redis, "redis: connection refused");
        assert_eq!(down.grpc_status().code(), tonic::Code::Unavailable);
        let (status, code, message) = down.http();
        assert_eq!(
            (status, code),
            (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable")
        );
        assert_eq!(message, "the Redis is unavailable; try again shortly");

        let broken = BackendError::fault(Backend::Database, "column x: bad value");
        assert_eq!(broken.grpc_status().code(), tonic::Code::Internal);
        assert_eq!(
            broken.http().0,
            StatusCode::INTERNAL_SERVER_ERROR,
            "a fault is not worth retrying"
        );
    }

    #[test]
    fn answers_never_carry_the_detail() {
        let e = BackendError::fault(Backend::Database, "near \"SELEC\": syntax error")
            .context("reading keys");
        assert_eq!(
            e.to_string(),
            "database error: reading keys: near \"SELEC\": syntax error"
        );
        assert!(!e.grpc_status().message().contains("SELEC"));
        assert!(!e.http().2.contains("SELEC"));
        let e = BackendError::unavailable(Backend::Issuer, "https://idp: timed out");
        assert!(!e.grpc_status().message().contains("idp"));
        assert!(!e.http().2.contains("idp"));
    }
}
