//! The frame every page shares (`templates/ui/base.html`): [`Layout`], what it shows
//! (navigation, who is signed in, the CSRF token forms need), and [`render`], which turns a
//! template into a page.

use super::assets;
use super::session::Session;
use super::web::{Site, UiError};
use crate::admin::Caller;
use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// A page of the navigation: where it is, its label, and who sees the link. Adding a page
/// to the navigation is one line here. The link is only a convenience: the page itself
/// refuses whoever the API refuses.
pub struct Nav {
    /// Under the UI: `/keys`.
    pub path: &'static str,
    pub label: &'static str,
    pub shown: fn(&Caller) -> bool,
}

pub const NAV: &[Nav] = &[
    Nav {
        path: "/keys",
        label: "Keys",
        shown: |_| true,
    },
    Nav {
        path: "/teams",
        label: "Teams",
        shown: |_| true,
    },
    Nav {
        path: "/users",
        label: "Users",
        // `GET /admin/users`: admins, viewers and managers.
        shown: |caller| caller.reads_users(),
    },
    Nav {
        path: "/usage",
        label: "Usage",
        shown: |_| true,
    },
    Nav {
        path: "/budgets",
        label: "Budgets",
        shown: |_| true,
    },
    Nav {
        path: "/alerts",
        label: "Alerts",
        // `GET /admin/alerts`: admins and viewers.
        shown: Caller::reads_all,
    },
    Nav {
        path: "/audit",
        label: "Audit",
        // `GET /admin/audit`: admins and viewers.
        shown: Caller::reads_all,
    },
    Nav {
        path: "/profile",
        label: "Profile",
        // The master key has no profile of its own.
        shown: |caller| caller.user().is_some(),
    },
];

/// A link of the navigation as the template shows it.
pub struct NavLink {
    pub href: String,
    pub label: &'static str,
    pub current: bool,
}

/// What `templates/ui/base.html` needs; every page's template struct has one as `layout`.
pub struct Layout {
    /// `{prefix}/ui`: links are `{{ layout.base }}/keys`.
    pub base: String,
    pub title: String,
    /// The session's CSRF token, for the hidden field of every form (see `forms.html`);
    /// empty when nobody is signed in.
    pub csrf: String,
    /// Who is signed in, as the header shows it; empty when nobody is.
    pub who: String,
    /// Their role (`admin` for the master key).
    pub role: String,
    pub nav: Vec<NavLink>,
    pub css: String,
    pub js: String,
    /// A script of this page's own beyond `js` (the passkey script), when it needs one.
    pub script: Option<String>,
}

impl Layout {
    /// The frame of a page for a signed-in person; `current` is the path of its
    /// navigation entry (`/keys`).
    pub fn of(session: &Session, title: impl Into<String>, current: &str) -> Layout {
        let caller = &session.caller;
        let nav = NAV
            .iter()
            .filter(|n| (n.shown)(caller))
            .map(|n| NavLink {
                href: session.site.link(n.path),
                label: n.label,
                current: n.path == current,
            })
            .collect();
        let who = match caller.user() {
            Some(user) => user.username.clone(),
            None => "master key".to_owned(),
        };
        Layout {
            csrf: session.csrf.clone(),
            who,
            role: caller.role().to_string(),
            nav,
            ..Layout::bare(&session.site, title)
        }
    }

    /// The frame of a page shown to nobody in particular (sign-in, errors): no navigation.
    pub fn bare(site: &Site, title: impl Into<String>) -> Layout {
        Layout {
            base: site.base.clone(),
            title: title.into(),
            csrf: String::new(),
            who: String::new(),
            role: String::new(),
            nav: Vec::new(),
            css: assets::url(site, assets::CSS),
            js: assets::url(site, assets::JS),
            script: None,
        }
    }
}

/// A template as a 200 page.
pub fn render(page: &impl Template) -> Response {
    render_with_status(StatusCode::OK, page)
}

/// A template as a page with this status.
pub fn render_with_status(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(html) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            html,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "a page of the web UI failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                "the page failed to render",
            )
                .into_response()
        }
    }
}

/// The error page ([`UiError`] as [`super::web::finish`] renders it).
#[derive(Template)]
#[template(path = "ui/error.html")]
pub struct ErrorView {
    pub layout: Layout,
    pub status: u16,
    pub message: String,
}

/// The page that asks before a destructive post, for browsers without JavaScript (with it,
/// `tollgate.js` asks and posts `confirm=yes` at once): the same post again, with
/// `confirm=yes` and `fields`.
#[derive(Template)]
#[template(path = "ui/confirm.html")]
pub struct ConfirmView {
    pub layout: Layout,
    pub heading: String,
    pub message: String,
    /// The form's action, under the UI (`/teams/{id}/delete`).
    pub action: String,
    /// The button's label.
    pub button: &'static str,
    /// Where Cancel goes, under the UI.
    pub cancel: String,
    /// Hidden fields to post again.
    pub fields: Vec<(&'static str, String)>,
}

/// A page or an error page: what page handlers answer.
pub type PageResult = Result<Response, UiError>;
