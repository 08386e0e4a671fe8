//! Signing in to the web UI without a password, in chromium: `node
//! tests/browser/ui_sign_in.mjs` against a tollgate started here and a real OpenID Provider
//! (npm's oidc-provider): "Sign in with SSO" through the provider's form, a passkey added
//! on the profile with chromium's virtual authenticator, then signing in with it alone,
//! renaming and deleting it. The UI is reached at `localhost`, since browsers refuse IP
//! addresses as passkeys' relying party. Screenshots go to `<target dir>/ui-screenshots/`.

mod common;

use common::envoy::free_port;
use common::oidc_provider::{OidcProvider, PUBLIC_CLIENT};
use common::ui::{Db, Stack};
use reqwest::Method;
use std::time::Duration;

// The server runs on this runtime while node runs: more than one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sso_and_passkeys_sign_in_in_chromium() {
    common::chromium::chromium();
    let port = free_port();
    let ui = format!("http://localhost:{port}/ui");
    let provider = OidcProvider::start(
        &format!("{ui}/auth/callback"),
        &["client_secret_basic", "client_secret_post"],
    )
    .await;
    let oidc = format!(
        "  oidc:\n    - issuer: {}\n      ui: {{ client_id: {PUBLIC_CLIENT}, scopes: [groups], name: corp }}\n      auto_provision: true\n",
        provider.issuer
    );
    let http = format!("127.0.0.1:{port}").parse().unwrap();
    let s = Stack::start_at(Db::Sqlite, &oidc, "", http).await;

    common::chromium::run(
        "ui_sign_in.mjs",
        &[
            ("TOLLGATE_UI_URL", ui),
            ("TOLLGATE_ISSUER", provider.issuer.clone()),
        ],
        Duration::from_secs(300),
    )
    .await
    .unwrap_or_else(|failed| panic!("{failed}"));

    // What the browser did, as tollgate recorded it.
    let methods: Vec<String> = s
        .audit("ui.login")
        .await
        .iter()
        .map(|e| {
            e["details"]["method"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(methods, ["passkey", "sso"], "newest first");
    for action in ["passkey.create", "passkey.rename", "passkey.delete"] {
        assert_eq!(s.audit(action).await.len(), 1, "{action}");
    }
    let (_, users) = s.t.admin(Method::GET, "/admin/users", None).await;
    assert_eq!(users["data"][0]["email"], "alice@example.com", "{users}");
}
