//! The session API: `/v1/register`, `/v1/login`, `/v1/refresh`, `/v1/logout`, and the
//! [`SessionUser`] extractor the user API authenticates with.
//!
//! When `auth.session` is not configured every route here answers 404
//! `sessions_disabled`, so a client can tell "not offered" from "no such route".

use super::users::{check_email, check_username, hash_password};
use super::{ApiError, AppState, JsonBody};
use crate::authn::login::{SessionError, Sessions, TokenPair};
use crate::authn::session::AccessClaims;
use crate::domain::{self, Role, User};
use crate::invalidation::Change;
use crate::store::{Actor, NewUser};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/register", post(register))
        .route("/v1/login", post(login))
        .route("/v1/refresh", post(refresh))
        .route("/v1/logout", post(logout))
}

/// The session service, or 404 `sessions_disabled`.
pub(crate) fn sessions(app: &AppState) -> Result<&Arc<Sessions>, ApiError> {
    app.sessions.as_ref().ok_or_else(|| {
        ApiError::coded(
            StatusCode::NOT_FOUND,
            "sessions_disabled",
            "password login is not enabled on this gateway (auth.session is not configured)",
        )
    })
}

/// The session service as an extractor, so that "sessions disabled" is answered before
/// the body is even parsed.
pub struct SessionsOn(pub Arc<Sessions>);

impl FromRequestParts<AppState> for SessionsOn {
    type Rejection = ApiError;

    async fn from_request_parts(_parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        sessions(app).cloned().map(SessionsOn)
    }
}

/// The client's IP address (the TCP peer), for audit lines and login limits.
pub struct ClientAddr(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Ok(ClientAddr(source_of(parts)))
    }
}

fn source_of(parts: &Parts) -> Option<String> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// A caller authenticated with one of tollgate's own access tokens
/// (`authorization: Bearer <token>`).
pub struct SessionUser {
    pub claims: AccessClaims,
    pub actor: Actor,
}

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let sessions = sessions(app)?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty() && t.len() <= app.config.auth.max_token_bytes)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "this route needs an access token from /v1/login as `authorization: Bearer <token>`"
                        .into(),
                )
            })?;
        let claims = sessions
            .authenticate(token, domain::now())
            .map_err(|e| ApiError::Unauthorized(format!("invalid access token: {e}")))?;
        let actor = Actor::new(format!("user:{}", claims.sub), source_of(parts));
        Ok(SessionUser { claims, actor })
    }
}

/// The one place session errors become HTTP answers.
pub(crate) fn session_error(e: SessionError) -> ApiError {
    match e {
        SessionError::InvalidCredentials => ApiError::coded(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "invalid username, email or password",
        ),
        SessionError::RateLimited { retry_after } => ApiError::Coded {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "rate_limited",
            message: format!("too many login attempts; try again in {retry_after} s"),
            retry_after: Some(retry_after),
        },
        SessionError::Blocked => ApiError::coded(
            StatusCode::FORBIDDEN,
            "account_blocked",
            "the account is blocked",
        ),
        SessionError::InvalidRefresh => ApiError::coded(
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
            "the refresh token is invalid, expired or revoked; log in again",
        ),
        SessionError::Token(e) => ApiError::Unauthorized(format!("invalid access token: {e}")),
        SessionError::Policy(v) => ApiError::BadRequest(v.0),
        SessionError::Store(e) => ApiError::from(e),
        SessionError::Internal(m) => {
            tracing::error!(error = %m, "session error");
            ApiError::Internal("internal error".into())
        }
    }
}

fn token_answer(pair: TokenPair) -> Json<Value> {
    Json(json!({
        "access_token": pair.access_token.expose(),
        "refresh_token": pair.refresh_token.expose(),
        "token_type": "bearer",
        "expires_in": pair.expires_in,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Register {
    username: String,
    email: String,
    password: String,
    full_name: Option<String>,
}

async fn register(
    State(app): State<AppState>,
    _on: SessionsOn,
    ClientAddr(source): ClientAddr,
    JsonBody(body): JsonBody<Register>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    if !app.config.auth.allow_registration {
        return Err(ApiError::coded(
            StatusCode::FORBIDDEN,
            "registration_disabled",
            "registration is closed on this gateway; ask an admin for an account",
        ));
    }
    check_username(&body.username)?;
    check_email(&body.email)?;
    if let Some(name) = &body.full_name {
        super::validate::name("full_name", name)?;
    }
    let password_hash = hash_password(&app.config.auth.password_policy, &body.password).await?;
    let user = app
        .store
        .create_user(
            &Actor::new("registration", source),
            NewUser {
                username: body.username,
                email: body.email,
                full_name: body.full_name,
                role: Some(Role::User),
                password_hash: Some(password_hash),
                // Whoever registers types any address they like.
                email_unverified: true,
                ..NewUser::default()
            },
        )
        .await?;
    app.invalidator.send(Change::UserCreated).await;
    Ok((StatusCode::CREATED, Json(user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: Option<String>,
    email: Option<String>,
    password: String,
}

async fn login(
    SessionsOn(sessions): SessionsOn,
    ClientAddr(source): ClientAddr,
    JsonBody(body): JsonBody<Login>,
) -> Result<Json<Value>, ApiError> {
    let name = body
        .username
        .or(body.email)
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("give `username` or `email`".into()))?;
    let pair = sessions
        .login(&name, &body.password, source.as_deref())
        .await
        .map_err(session_error)?;
    Ok(token_answer(pair))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}

async fn refresh(
    SessionsOn(sessions): SessionsOn,
    ClientAddr(source): ClientAddr,
    JsonBody(body): JsonBody<Refresh>,
) -> Result<Json<Value>, ApiError> {
    let pair = sessions
        .refresh(&body.refresh_token, source.as_deref())
        .await
        .map_err(session_error)?;
    Ok(token_answer(pair))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Logout {
    refresh_token: Option<String>,
}

async fn logout(
    SessionsOn(sessions): SessionsOn,
    caller: SessionUser,
    JsonBody(body): JsonBody<Logout>,
) -> Result<StatusCode, ApiError> {
    sessions
        .logout(
            &caller.claims,
            body.refresh_token.as_deref(),
            caller.actor.source.as_deref(),
        )
        .await
        .map_err(session_error)?;
    Ok(StatusCode::NO_CONTENT)
}
