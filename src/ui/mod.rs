//! The web UI at `/ui`: HTML pages rendered on the server, over the HTTP API's own handler
//! functions.
//!
//! A page is a thin edge, like the API's routes: it turns a form into the body an API
//! handler takes, calls the function behind that handler in [`crate::admin`] with the
//! signed-in person's [`Caller`](crate::admin::Caller), and turns the answer into HTML. The
//! role table is the API's; hiding a button is never what protects a write, the server
//! refuses what the API refuses, and the page shows the API's message with its status.
//!
//! The pieces every page uses, one of each:
//! - [`session::Session`], the extractor that makes a page need a signed-in browser: it
//!   reads the `tollgate_ui` cookie, finds the session in the store
//!   ([`crate::store::UiSessionStore`]), re-reads the user (role, blocked, deleted) and
//!   hands over the same `Caller` the API builds, the session's CSRF token and the [`web::Site`]
//!   (the path prefix the UI is mounted under).
//! - [`form::Posted`], the extractor of every form post: it refuses a cross-site `Origin`,
//!   reads the body strictly (size, UTF-8, no control characters) and checks the CSRF token
//!   in constant time before the handler runs.
//! - [`layout::Layout`], what `templates/ui/base.html` needs (navigation, who is signed in,
//!   the CSRF token); [`layout::render`] turns a template into a page;
//!   `templates/ui/forms.html`'s `post` macro writes a form with its CSRF field.
//! - [`web::UiError`], the one way a page shows an error: an [`ApiError`](crate::admin::ApiError)
//!   becomes a page with the same status and message.
//!
//! Adding a page: a file here with its handlers and a `routes()` merged in [`router`], a
//! template under `templates/ui/` that extends `ui/base.html`, and a line in
//! [`layout::NAV`]. Routes are full paths (`/ui/...`); links in templates are
//! `{{ layout.base }}/...` so that they carry the prefix.
//!
//! Headers on every answer (a strict Content-Security-Policy, `nosniff`, no referrer to
//! other sites, `no-store` on pages) are set by [`web::finish`], which also renders
//! [`web::UiError`]s.

mod alerts;
mod assets;
mod audit;
mod budgets;
pub mod form;
mod keys;
pub mod layout;
mod login;
mod passkeys;
mod profile;
pub mod script;
pub mod session;
mod show;
mod sso;
mod teams;
mod usage;
mod users;
pub mod web;

use crate::admin::AppState;
use crate::authn::login_guard::LoginGuard;
use crate::authn::passkey::Passkeys;
use crate::authn::sso::Sso;
use axum::Router;
use std::sync::Arc;

/// What the UI's handlers share: the HTTP API's state, sign-in with SSO and passkeys, and
/// the attempt limits of the sign-ins that are not password logins.
pub struct Ui {
    pub app: AppState,
    /// `None` when no issuer of `auth.oidc` has `ui`.
    sso: Option<Sso>,
    passkeys: Passkeys,
    /// Per client address, `auth.login.per_address_per_minute`: the master key cannot be
    /// guessed, but a form that takes it should not take a flood either.
    master_attempts: LoginGuard,
    /// The same limit for starting SSO sign-ins and passkey sign-in requests, each of which
    /// stores a row until it is finished or expires.
    ceremony_attempts: LoginGuard,
}

pub type UiState = Arc<Ui>;

/// The web UI's routes, ready to be merged with the HTTP API's router.
pub fn router(app: AppState) -> Router {
    let per_address = app.config.auth.login.per_address_per_minute;
    let ui = Arc::new(Ui {
        sso: Sso::new(&app.config, app.auth.clone(), app.store.clone()),
        passkeys: Passkeys::new(app.store.clone()),
        master_attempts: LoginGuard::new(0, per_address),
        ceremony_attempts: LoginGuard::new(0, per_address),
        app,
    });
    Router::new()
        .merge(login::routes())
        .merge(sso::routes())
        .merge(passkeys::routes())
        .merge(keys::routes())
        .merge(profile::routes())
        .merge(teams::routes())
        .merge(users::routes())
        .merge(usage::routes())
        .merge(budgets::routes())
        .merge(alerts::routes())
        .merge(audit::routes())
        .merge(assets::routes())
        .route("/ui/{*rest}", axum::routing::any(web::not_found))
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            web::finish,
        ))
        .with_state(ui)
}
