//! Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

use super::{ApiError, AppState};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{extract::State, Json, Router};

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

/// Ready when the store answers: a tollgate that cannot read keys should not get traffic.
async fn readyz(State(app): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let ping = tokio::time::timeout(app.config.database.timeout, app.store.ping()).await;
    match ping {
        Ok(Ok(())) => Ok(Json(serde_json::json!({"status": "ready"}))),
        Ok(Err(e)) => Err(ApiError::Unavailable(format!("database: {e}"))),
        Err(_) => Err(ApiError::Unavailable("database: ping timed out".into())),
    }
}

async fn metrics(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}
