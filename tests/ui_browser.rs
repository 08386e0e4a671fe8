//! The web UI in a real browser: `node tests/browser/ui.mjs` drives Debian's chromium
//! (playwright-core, never a downloaded browser) through the scenario written there,
//! against a tollgate started here, Envoy in front of the mock LLM as shipped
//! (envoy/envoy.yaml), and a second Envoy that mounts the UI under `/gateway` with
//! `X-Forwarded-Prefix`. The test fails when the script does, with what it printed.
//! Screenshots of every page go to `<target dir>/ui-screenshots/`.
//!
//! Needs node (20 or later), `npm ci` in tests/browser, and chromium at /usr/bin/chromium
//! (or `TOLLGATE_CHROMIUM`); scripts/test installs what is missing.

mod common;

use common::envoy::Envoy;
use common::tollgate::Tollgate;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate::mock_llm::MockLlm;

const PASSWORD: &str = "Browser-Tests-42";

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where the screenshots go: `ui-screenshots/` in the target directory.
fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("ui-screenshots")
}

/// An Envoy that serves `/gateway/ui/…` from tollgate's `/ui/…`, telling it the prefix.
fn prefix_proxy(listen: SocketAddr, admin: SocketAddr, tollgate: SocketAddr) -> String {
    format!(
        r#"
admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
static_resources:
  listeners:
    - name: ui
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen_port} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ui
                route_config:
                  virtual_hosts:
                    - name: ui
                      domains: ["*"]
                      routes:
                        - match: {{ prefix: "/gateway/ui" }}
                          route: {{ cluster: tollgate_http, prefix_rewrite: "/ui" }}
                          request_headers_to_add:
                            - header: {{ key: x-forwarded-prefix, value: /gateway }}
                              append_action: OVERWRITE_IF_EXISTS_OR_ADD
                http_filters:
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: tollgate_http
      type: STATIC
      connect_timeout: 1s
      load_assignment:
        cluster_name: tollgate_http
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {http_port} }} }}
"#,
        admin_port = admin.port(),
        listen_port = listen.port(),
        http_port = tollgate.port(),
    )
}

async fn user(t: &Tollgate, name: &str, role: &str) -> String {
    let body = json!({
        "username": name,
        "email": format!("{name}@example.com"),
        "role": role,
        "password": PASSWORD,
    });
    let (status, user) = t.admin(Method::POST, "/admin/users", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    user["id"].as_str().unwrap().to_owned()
}

// The server runs on this runtime while node runs: more than one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_ui_works_in_chromium() {
    let node_modules = crate_root().join("tests/browser/node_modules/playwright-core");
    assert!(
        node_modules.is_dir(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test does)"
    );
    let chromium =
        std::env::var("TOLLGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "no chromium at {chromium}: `apt-get install chromium` (scripts/test does), or set TOLLGATE_CHROMIUM"
    );

    let t = Tollgate::start(
        "auth:\n  session: { secret: \"0123456789abcdef0123456789abcdef-browser\" }\n",
    )
    .await;
    user(&t, "ada", "admin").await;
    let uma = user(&t, "uma", "user").await;
    user(&t, "vic", "viewer").await;
    let bob = user(&t, "bob", "user").await;
    t.create_key(json!({"name": "uma-laptop", "user_id": uma}))
        .await;
    t.create_key(json!({"name": "bob-ci", "user_id": bob}))
        .await;

    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let llm = Envoy::start("envoy/envoy.yaml", t.grpc, mock.addr).await;
    let http = t.http;
    let ui = Envoy::start_with(|listen, admin| prefix_proxy(listen, admin, http)).await;

    let shots = screenshots();
    std::fs::create_dir_all(&shots).unwrap();
    let run = tokio::process::Command::new("node")
        .arg("tests/browser/ui.mjs")
        .current_dir(crate_root())
        .env("TOLLGATE_UI_URL", format!("http://{}/ui", t.http))
        .env(
            "TOLLGATE_UI_PREFIXED_URL",
            format!("http://{}/gateway/ui", ui.listen),
        )
        .env("TOLLGATE_LLM_URL", format!("http://{}", llm.listen))
        .env("TOLLGATE_SCREENSHOTS", &shots)
        .env("TOLLGATE_PASSWORD", PASSWORD)
        .env("TOLLGATE_ADMIN", "ada")
        .env("TOLLGATE_USER", "uma")
        .env("TOLLGATE_VIEWER", "vic")
        .env("TOLLGATE_CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the browser scenario finishes within 5 minutes")
        .expect("node runs (install Node.js 20 or later)");
    let printed = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "tests/browser/ui.mjs failed ({}):\n{printed}\n--- tollgate-side Envoy log ---\n{}",
        out.status,
        ui.log_tail(20)
    );
    println!("{printed}\nscreenshots in {}", shots.display());
    t.stop().await;
}
