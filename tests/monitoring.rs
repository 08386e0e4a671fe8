//! k8s/monitoring: the alert rules pass `promtool check rules` and their unit tests
//! (`promtool test rules`), the PrometheusRule carries exactly the plain rule file, the
//! kustomization ships the dashboard with Grafana's label, and every panel of the dashboard
//! is a query that a real Prometheus, scraping a real tollgate that has served Checks, parses
//! and answers with data.
//!
//! promtool and prometheus come from Debian's `prometheus` package (scripts/test installs
//! it); `TOLLGATE_PROMTOOL` and `TOLLGATE_PROMETHEUS` name other binaries.

mod common;

use common::check::answer;
use common::private_redis::PrivateRedis;
use common::tollgate::Tollgate;
use serde_json::{json, Value};
use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tollgate::usage::{TokenUsage, UsageRecord, UsageSource};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring() -> PathBuf {
    root().join("k8s/monitoring")
}

/// `name` from `$env` or PATH; fails the test with how to get it.
fn binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "{name} is not on PATH: install Debian's `prometheus` package \
             (apt-get install -y prometheus; scripts/test does) or set {env}"
        )
    })
}

fn promtool() -> PathBuf {
    binary("TOLLGATE_PROMTOOL", "promtool")
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

fn yaml(path: &Path) -> Yaml {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

fn alerts(rules: &Yaml) -> Vec<String> {
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
        .filter_map(|r| r["alert"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_sample_is_found_whatever_the_order_of_its_labels() {
    use common::metrics::sample_in;
    let text = "# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\nx{a=\"1\"} 4\ny 5\n";
    assert_eq!(sample_in(text, "x{b=\"2\",a=\"1\"}"), 3.0);
    assert_eq!(sample_in(text, "x{a=\"1\"}"), 4.0);
    assert_eq!(sample_in(text, "y"), 5.0);
    assert_eq!(sample_in(text, "z"), 0.0);
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = monitoring().join("rules");
    let checked = run(Command::new(promtool())
        .args(["check", "rules", "alerts.yaml"])
        .current_dir(&dir));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(Command::new(promtool())
        .args(["test", "rules", "alerts_test.yaml"])
        .current_dir(&dir));
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() {
    let rules = yaml(&monitoring().join("rules/alerts.yaml"));
    let tests = yaml(&monitoring().join("rules/alerts_test.yaml"));
    let cases: Vec<&Yaml> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().expect("alert_rule_test"))
        .collect();
    for alert in alerts(&rules) {
        let mine = cases
            .iter()
            .filter(|c| c["alertname"].as_str() == Some(alert.as_str()));
        let (fires, quiet): (Vec<&&Yaml>, Vec<&&Yaml>) = mine.partition(|c| {
            c["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty())
        });
        assert!(!fires.is_empty(), "no unit test fires {alert}");
        assert!(!quiet.is_empty(), "no unit test keeps {alert} quiet");
    }
}

#[test]
fn every_alert_has_a_severity_a_summary_a_description_and_a_runbook() {
    let rules = yaml(&monitoring().join("rules/alerts.yaml"));
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap_or("a recording rule");
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("critical" | "warning")),
                "{name}: severity {severity:?}"
            );
            for annotation in ["summary", "description", "runbook"] {
                assert!(
                    rule["annotations"][annotation]
                        .as_str()
                        .is_some_and(|s| !s.trim().is_empty()),
                    "{name}: no {annotation}"
                );
            }
        }
    }
}

#[test]
fn the_prometheus_rule_carries_the_plain_rule_file() {
    let rule = yaml(&monitoring().join("prometheusrule.yaml"));
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    let plain = yaml(&monitoring().join("rules/alerts.yaml"));
    assert!(
        rule["spec"] == plain,
        "k8s/monitoring/prometheusrule.yaml's spec differs from rules/alerts.yaml: \
         indent the rule file under `spec:` again"
    );
}

#[test]
fn the_service_monitor_scrapes_the_http_port_of_the_tollgate_service() {
    let monitor = yaml(&monitoring().join("servicemonitor.yaml"));
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "tollgate"
    );
    let endpoints = monitor["spec"]["endpoints"].as_sequence().unwrap();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["port"], "http");
    assert_eq!(endpoints[0]["path"], "/metrics");
}

#[test]
fn the_kustomization_ships_the_monitors_and_the_dashboard_for_grafana() {
    let k = yaml(&monitoring().join("kustomization.yaml"));
    let resources: Vec<&str> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(resources, ["servicemonitor.yaml", "prometheusrule.yaml"]);
    for resource in resources {
        assert!(monitoring().join(resource).is_file(), "{resource}");
    }
    let generated = &k["configMapGenerator"][0];
    assert_eq!(generated["files"][0], "dashboards/tollgate.json");
    assert_eq!(generated["options"]["labels"]["grafana_dashboard"], "1");
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tollgate");
    assert!(panels(&dashboard).len() >= 12);
}

fn dashboard() -> Value {
    let path = monitoring().join("dashboards/tollgate.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON")
}

/// `(panel title, query)` of every panel target, rows included.
fn panels(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            walk(&panel["panels"], out);
            for target in panel["targets"].as_array().into_iter().flatten() {
                let title = panel["title"].as_str().unwrap_or_default().to_owned();
                let expr = target["expr"].as_str().expect("a PromQL target");
                out.push((title, expr.to_owned()));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// A panel's query with Grafana's variables replaced by what a Prometheus reads.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("$namespace", ".*")
}

/// A `prometheus` server of the test's own, scraping `target` every second; killed on drop.
struct Prometheus {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
                 scrape_configs:\n  - job_name: tollgate\n    metrics_path: /metrics\n    \
                 static_configs: [ {{ targets: [\"{target}\"] }} ]\n"
            ),
        )
        .unwrap();
        let port = common::envoy::free_port();
        let child = Command::new(binary("TOLLGATE_PROMETHEUS", "prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus");
        Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        }
    }

    /// The answer of `/api/v1/query` (status and all), or None while it does not answer.
    async fn query(&self, expr: &str) -> Option<Value> {
        let response = common::upstream::client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// The query's result vector; fails on any error.
    async fn result(&self, expr: &str) -> Vec<Value> {
        let answer = self.query(expr).await.expect("prometheus answers");
        assert_eq!(answer["status"], "success", "{expr}: {answer}");
        answer["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `expr` has a sample whose value `holds`.
    async fn wait_for(&self, expr: &str, holds: impl Fn(f64) -> bool) {
        let started = Instant::now();
        loop {
            if let Some(answer) = self.query(expr).await {
                let values = answer["data"]["result"].as_array().cloned();
                let seen = values.into_iter().flatten().any(|sample| {
                    sample["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(&holds)
                });
                if seen {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "prometheus never saw {expr}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chat(key: &str) -> envoy_types::ext_authz::v3::pb::CheckRequest {
    common::check::request(
        &[("x-api-key", key)],
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    )
}

fn record(id: &str, key_id: &str) -> UsageRecord {
    UsageRecord {
        request_id: id.to_owned(),
        at: chrono::Utc::now().timestamp(),
        key_id: Some(key_id.to_owned()),
        user_id: None,
        team_id: None,
        org_id: None,
        model: Some("gpt-4o".to_owned()),
        tokens: TokenUsage {
            input_tokens: 120,
            output_tokens: 40,
            cached_input_tokens: 0,
            reasoning_tokens: 0,
        },
        cost_usd: 0.0007,
        status: 200,
        latency_ms: 30,
        estimated: false,
        source: UsageSource::ExtProc,
    }
}

/// The dashboard against real data: tollgate (Redis configured) serves allowed, refused and
/// rate-limited Checks and writes usage while Prometheus scrapes it; then its Redis stops,
/// so decisions follow the failure mode. Every panel's query must parse and answer data.
#[tokio::test]
async fn every_dashboard_panel_answers_from_a_real_prometheus_scraping_tollgate() {
    let redis = PrivateRedis::start().await;
    let t = Tollgate::start(&format!(
        "redis: {{ url: \"{}\", failure_mode: local, timeout: 200ms }}\n\
         usage: {{ batch_interval: 20ms }}\n\
         models:\n  - name: gpt-4o\n    pricing: {{ input_per_million: 2.5, output_per_million: 10 }}\n",
        redis.url
    ))
    .await;
    let prometheus = Prometheus::start(&t.http.to_string());
    prometheus
        .wait_for("up{job=\"tollgate\"}", |v| v == 1.0)
        .await;

    let (key_id, key) = t.create_key(json!({"name": "dash", "rpm": 3})).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(answer(t.app.gate.check(&chat(&key)).await.unwrap()).status);
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429], "rpm 3");
    let refused = answer(t.app.gate.check(&chat("sk-tg-not-a-key")).await.unwrap());
    assert_eq!(refused.code(), "invalid_api_key");
    for i in 0..3 {
        t.app
            .usage
            .push(record(&format!("dash-{i}"), &key_id))
            .await
            .unwrap();
    }
    prometheus
        .wait_for("tollgate_usage_records_total{result=\"written\"}", |v| {
            v >= 3.0
        })
        .await;

    // Redis goes away: the next decisions are taken by failure_mode local.
    drop(redis);
    for _ in 0..3 {
        let _ = t.app.gate.check(&chat(&key)).await;
    }
    prometheus
        .wait_for("tollgate_failure_mode_total{mode=\"local\"}", |v| v > 0.0)
        .await;
    prometheus.wait_for("tollgate_redis_up", |v| v == 0.0).await;
    // A few more scrapes, so that every rate has two samples in its window.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let queries = panels(&dashboard());
    assert!(queries.len() >= 15, "{queries:?}");
    let mut empty = Vec::new();
    for (title, expr) in &queries {
        let expr = concrete(expr);
        assert!(!expr.contains('$'), "{title}: a variable is left in {expr}");
        if prometheus.result(&expr).await.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // And what they show is what happened.
    let by_code = prometheus
        .result("sum by (code) (tollgate_check_total)")
        .await;
    let count = |code: &str| -> f64 {
        by_code
            .iter()
            .find(|s| s["metric"]["code"] == code)
            .and_then(|s| s["value"][1].as_str()?.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(count("ok") >= 3.0, "{by_code:?}");
    assert!(count("rate_limit_exceeded") >= 1.0, "{by_code:?}");
    assert_eq!(count("invalid_api_key"), 1.0, "{by_code:?}");
    let tokens = prometheus
        .result("tollgate_usage_tokens_total{model=\"gpt-4o\",kind=\"input\"}")
        .await;
    assert_eq!(tokens[0]["value"][1], "360", "{tokens:?}");
    t.stop().await;
}
