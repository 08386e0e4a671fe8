//! `POST /v1/auth/verify-permission {"permission", "model"?}`: whether the caller's
//! credential may use a permission, and a model with it, as Check decides it for a route
//! that needs that permission ([`decision::authorize`]): the credential (master key, virtual
//! key, login token), the key's standing (revoked, expired, rotated out, blocked, its user
//! or team blocked), the permission (a key's own narrowed to its owner's role), and with a
//! model, the gateway's model catalogue and the key's and its team's model lists.
//!
//! Answers 200 `{"allowed": bool, "reason": "…"}`; `reason` is Check's message when not
//! allowed. A credential Check would refuse as such (missing, unknown, revoked, expired) is
//! 401, as on every route of this API. Rate limits and budgets are not consulted: they say
//! whether there is room now, not whether the credential may.

use super::access::source_of;
use super::{ApiError, AppState, JsonBody};
use crate::config::RouteRule;
use crate::decision::{self, DenyReason, ModelField, Principal};
use crate::domain;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/auth/verify-permission", post(verify))
}

/// The longest permission or model name read.
const MAX_NAME_CHARS: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyPermission {
    permission: String,
    #[serde(default)]
    model: Option<String>,
}

/// The caller's credential resolved as Check resolves it, whatever it may do.
struct Presented(Principal);

impl FromRequestParts<AppState> for Presented {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let source = source_of(parts);
        let presented = crate::authn::credential::extract(|name| {
            parts.headers.get(name).and_then(|v| v.to_str().ok())
        });
        app.auth
            .resolve(presented, source.as_deref(), domain::now())
            .await
            .map(Presented)
            .map_err(super::access::authn_error)
    }
}

async fn verify(
    State(app): State<AppState>,
    Presented(principal): Presented,
    JsonBody(body): JsonBody<VerifyPermission>,
) -> Result<Json<Value>, ApiError> {
    let permission = body.permission.as_str();
    if permission.is_empty() || permission.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::BadRequest(format!(
            "`permission` must be a permission name of 1 to {MAX_NAME_CHARS} characters (chat, embeddings, models:read, …)"
        )));
    }
    let model = match body.model.as_deref() {
        None => ModelField::Absent,
        Some(m) if m.is_empty() || m.chars().count() > MAX_NAME_CHARS => {
            return Err(ApiError::BadRequest(format!(
                "`model` must be a model name of 1 to {MAX_NAME_CHARS} characters, or left out"
            )))
        }
        Some(m) => ModelField::Named(m.to_owned()),
    };
    let rule = RouteRule {
        permission: permission.to_owned(),
        model_required: matches!(model, ModelField::Named(_)),
        api: None,
    };
    let policy = app.admission.policy().load();
    let decided = decision::authorize(&policy, &rule, &principal, &model, domain::now());
    match decided {
        Ok(_) => Ok(Json(json!({ "allowed": true, "reason": "allowed" }))),
        // What Check refuses as a credential is a 401 here too.
        Err(denial) if denial.reason == DenyReason::InvalidApiKey => {
            Err(ApiError::Unauthorized(denial.message))
        }
        Err(denial) => Ok(Json(json!({ "allowed": false, "reason": denial.message }))),
    }
}
