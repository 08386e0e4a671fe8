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
use std::time::Duration;
use tollgate::mock_llm::MockLlm;

const PASSWORD: &str = "Browser-Tests-42";

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
    common::chromium::chromium();

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

    let ran = common::chromium::run(
        "ui.mjs",
        &[
            ("TOLLGATE_UI_URL", format!("http://{}/ui", t.http)),
            (
                "TOLLGATE_UI_PREFIXED_URL",
                format!("http://{}/gateway/ui", ui.listen),
            ),
            ("TOLLGATE_LLM_URL", format!("http://{}", llm.listen)),
            ("TOLLGATE_PASSWORD", PASSWORD.to_owned()),
            ("TOLLGATE_ADMIN", "ada".to_owned()),
            ("TOLLGATE_USER", "uma".to_owned()),
            ("TOLLGATE_VIEWER", "vic".to_owned()),
        ],
        Duration::from_secs(300),
    )
    .await;
    if let Err(failed) = ran {
        panic!(
            "{failed}\n--- tollgate-side Envoy log ---\n{}",
            ui.log_tail(20)
        );
    }
    t.stop().await;
}
