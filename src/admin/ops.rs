//! Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use super::AppState;
use crate::lifecycle::{Backend, Lifecycle};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{extract::State, Extension, Json, Router};
use std::sync::Arc;

const OPENAPI: &str = include_str!("../../docs/openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
}

/// Whether this replica can decide: 200 `ready` while it serves, whatever the database
/// and Redis do (warm decisions need neither; each backend's status is in the body), 503
/// `draining` from the moment a stop is asked. Answers from memory: the backends' status
/// comes from the background probe of [`Lifecycle`]. On a router served without one (built
/// by hand), the database is pinged here, bounded by `database.timeout`.
async fn readyz(
    State(app): State<AppState>,
    lifecycle: Option<Extension<Arc<Lifecycle>>>,
) -> Response {
    let (draining, database, redis) = match &lifecycle {
        Some(Extension(lifecycle)) => (
            lifecycle.draining_since().is_some(),
            lifecycle.database(),
            lifecycle.redis(app.admission.counters()),
        ),
        None => {
            let ping = tokio::time::timeout(app.config.database.timeout, app.store.ping()).await;
            let database = match ping {
                Ok(Ok(())) => Backend::Up,
                _ => Backend::Down,
            };
            let counters = app.admission.counters();
            let redis = match (counters.is_shared(), counters.healthy()) {
                (false, _) => Backend::Absent,
                (true, true) => Backend::Up,
                (true, false) => Backend::Down,
            };
            (false, database, redis)
        }
    };
    let (status, word) = if draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (StatusCode::OK, "ready")
    };
    let body = serde_json::json!({
        "status": word,
        "backends": {"database": database.as_str(), "redis": redis.as_str()},
    });
    (status, Json(body)).into_response()
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
