//! The UI's static files: one stylesheet, one small script for every page and the passkey
//! script of the sign-in and profile pages, compiled into the binary and served under
//! `/ui/assets/`. Links carry a hash of the content (`?v=…`), so a
//! browser may keep a file as long as it likes and still gets the new one after an upgrade.

use super::web::Site;
use super::UiState;
use axum::extract::{Path, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::LazyLock;

/// One static file.
pub struct Asset {
    pub name: &'static str,
    pub body: &'static str,
    pub content_type: &'static str,
}

pub const CSS: &Asset = &Asset {
    name: "tollgate.css",
    body: include_str!("assets/tollgate.css"),
    content_type: "text/css; charset=utf-8",
};

pub const JS: &Asset = &Asset {
    name: "tollgate.js",
    body: include_str!("assets/tollgate.js"),
    content_type: "text/javascript; charset=utf-8",
};

/// The browser side of passkeys (`src/authn/passkey.rs`): on the sign-in and profile pages.
pub const PASSKEY_JS: &Asset = &Asset {
    name: "passkey.js",
    body: include_str!("../../assets/ui/passkey.js"),
    content_type: "text/javascript; charset=utf-8",
};

const ALL: [&Asset; 3] = [CSS, JS, PASSKEY_JS];

/// Each asset's version: the first 12 hex characters of the SHA-256 of its content.
static VERSIONS: LazyLock<HashMap<&'static str, String>> = LazyLock::new(|| {
    ALL.iter()
        .map(|a| (a.name, hex::encode(&Sha256::digest(a.body.as_bytes())[..6])))
        .collect()
});

/// The URL of an asset, with its version.
pub fn url(site: &Site, asset: &Asset) -> String {
    format!(
        "{}/assets/{}?v={}",
        site.base, asset.name, VERSIONS[asset.name]
    )
}

pub fn routes() -> axum::Router<UiState> {
    Router::new().route("/ui/assets/{name}", get(serve))
}

async fn serve(Path(name): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(asset) = ALL.iter().find(|a| a.name == name) else {
        return super::web::UiError::not_found("There is no such file.").into_response();
    };
    // The versioned URL never changes content; any other is checked every time.
    let cache = if q.get("v") == Some(&VERSIONS[asset.name]) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        ],
        asset.body,
    )
        .into_response()
}
