//! The signed-in user's own record: `GET|PUT /v1/user/profile` (any login token),
//! `PUT /v1/user/password` (session tokens: OIDC users change passwords at their issuer).

use super::access::SignedIn;
use super::session::{session_error, SessionUser, SessionsOn};
use super::users::check_email;
use super::{nullable, validate, ApiError, AppState, JsonBody};
use crate::authn::key_cache::Invalidation;
use crate::domain::User;
use crate::store::UserPatch;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/user/profile", get(show).put(update))
        .route("/v1/user/password", put(change_password))
}

/// The caller's live, unblocked user record (a deleted or blocked user's token is refused
/// even before it expires).
async fn current(app: &AppState, caller: &SessionUser) -> Result<User, ApiError> {
    live(app, &caller.claims.sub).await
}

/// The user's record as stored now, when live and unblocked.
pub(crate) async fn live(app: &AppState, id: &str) -> Result<User, ApiError> {
    match app.store.get_user(id).await? {
        Some(user) if !user.blocked => Ok(user),
        Some(_) => Err(ApiError::Forbidden("the account is blocked".into())),
        None => Err(ApiError::Unauthorized(
            "the account no longer exists".into(),
        )),
    }
}

async fn show(State(app): State<AppState>, me: SignedIn) -> Result<Json<User>, ApiError> {
    live(&app, &me.user.id).await.map(Json)
}

/// What a user may change about themselves; role, limits and blocking stay with admins.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateProfile {
    email: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    full_name: Option<Option<String>>,
}

async fn update(
    State(app): State<AppState>,
    me: SignedIn,
    JsonBody(body): JsonBody<UpdateProfile>,
) -> Result<Json<User>, ApiError> {
    live(&app, &me.user.id).await?;
    if let Some(email) = &body.email {
        check_email(email)?;
    }
    if let Some(Some(name)) = &body.full_name {
        validate::name("full_name", name)?;
    }
    let patch = UserPatch {
        email: body.email,
        // The user's own word: no OIDC identity is linked to them by this address.
        email_unverified: true,
        full_name: body.full_name,
        ..UserPatch::default()
    };
    let id = me.user.id.clone();
    let user = app.store.update_user(&me.caller.actor, &id, patch).await?;
    app.invalidator.send(Invalidation::User(id.clone())).await;
    user.map(Json)
        .ok_or_else(|| ApiError::Unauthorized("the account no longer exists".into()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

async fn change_password(
    State(app): State<AppState>,
    SessionsOn(_): SessionsOn,
    caller: SessionUser,
    JsonBody(body): JsonBody<ChangePassword>,
) -> Result<StatusCode, ApiError> {
    current(&app, &caller).await?;
    let keep = Kept {
        login: Some(&caller.claims.sid),
        browser: None,
    };
    change_password_of(
        &app,
        &caller.claims.sub,
        keep,
        &body.current_password,
        &body.new_password,
        caller.actor.source.as_deref(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The session a password change is made from, which it leaves open: a login session
/// (`/v1/login`'s refresh-token family) or a web UI session.
#[derive(Default, Clone, Copy)]
pub(crate) struct Kept<'a> {
    pub login: Option<&'a str>,
    pub browser: Option<&'a str>,
}

/// `PUT /v1/user/password` for the live user `user_id`: the current password must match
/// and the new one meet the policy. Every other session of the user ends: its login
/// sessions and its web UI sessions, all but `keep`.
pub(crate) async fn change_password_of(
    app: &AppState,
    user_id: &str,
    keep: Kept<'_>,
    current_password: &str,
    new_password: &str,
    source: Option<&str>,
) -> Result<(), ApiError> {
    let sessions = super::session::sessions(app)?;
    live(app, user_id).await?;
    sessions
        .change_password_of(user_id, keep.login, current_password, new_password, source)
        .await
        .map_err(session_error)?;
    let actor = crate::store::Actor::new(format!("user:{user_id}"), source.map(str::to_owned));
    app.store
        .delete_user_ui_sessions(&actor, user_id, keep.browser)
        .await?;
    Ok(())
}
