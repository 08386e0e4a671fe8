//! The Kubernetes manifests that ship in k8s/, as a cluster would take them:
//!
//! - every kustomization renders with `kubectl kustomize`, and every object it renders
//!   validates: core kinds against Kubernetes' own schemas (PyPI `kubernetes-validate`,
//!   strict, so an unknown field fails), custom resources against the CRD schemas in
//!   tests/fixtures/crds (PyPI `jsonschema`), by tests/k8s_validate.py in ./.venv;
//! - the Envoy configs inside ConfigMaps pass `envoy --mode validate`, the tollgate configs
//!   pass `tollgate config check` with exactly the variables their Pods are given;
//! - every workload keeps its security context, probes, resources and spread, and the
//!   NetworkPolicy keeps tollgate's gRPC port to the gateway;
//! - the Istio mesh config and usage filter say what envoy/envoy.yaml says, and the usage
//!   filter runs in a real Envoy: it meters what Check admitted and nothing else.
//!
//! Tools (kubectl, ./.venv with scripts/requirements-test.txt, Envoy) are installed by
//! scripts/test; a missing one fails the test with what to install, it never skips.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// The oldest Kubernetes the manifests are for: native sidecars (init containers with
/// `restartPolicy: Always`) and the preStop `sleep` action are on by default from 1.30.
const KUBERNETES: &str = "1.30.0";

/// Every kustomization that must exist; any other found under k8s/ (k8s/monitoring, say)
/// is rendered and validated as well.
const REQUIRED: &[&str] = &[
    "k8s/base",
    "k8s/base/migrate",
    "k8s/overlays/central",
    "k8s/overlays/sidecar",
    "k8s/examples/envoy-gateway",
];

/// tollgate's default LLM routes (docs/configuration.md), which every gateway must send
/// through Check.
const LLM_PATHS: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/models",
    "/v1/models/gpt-4o",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubectl` from `$TOLLGATE_KUBECTL` or the PATH.
fn kubectl() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_KUBECTL")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|dir| dir.join("kubectl"))
                .find(|candidate| candidate.is_file())
        });
    match path {
        Some(path) if path.is_file() => path,
        _ => panic!(
            "kubectl is not installed (needed for `kubectl kustomize`): run scripts/test, \
             which installs it with apt-get, or install kubectl 1.30 or later, or point \
             TOLLGATE_KUBECTL at one"
        ),
    }
}

/// ./.venv's Python, with the packages of scripts/requirements-test.txt.
fn python() -> PathBuf {
    let python = root().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test, which creates ./.venv from \
         scripts/requirements-test.txt (kubernetes-validate, jsonschema)",
        python.display()
    );
    python
}

/// The directories under k8s/ that hold a kustomization.yaml.
fn kustomizations() -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root().join("k8s")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                let dir = path.parent().unwrap().strip_prefix(root()).unwrap();
                found.push(dir.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    for required in REQUIRED {
        assert!(
            found.iter().any(|f| f == required),
            "{required}/kustomization.yaml is missing (found {found:?})"
        );
    }
    found
}

/// `kubectl kustomize DIR`, as YAML text.
fn kustomize(dir: &str) -> String {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(root().join(dir))
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8(out.stdout).expect("UTF-8 from kubectl")
}

/// Every kustomization rendered once, by directory: (YAML text, objects).
fn rendered() -> &'static BTreeMap<String, (String, Vec<Value>)> {
    static RENDERED: OnceLock<BTreeMap<String, (String, Vec<Value>)>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        kustomizations()
            .into_iter()
            .map(|dir| {
                let text = kustomize(&dir);
                let objects = serde_yaml::Deserializer::from_str(&text)
                    .map(|doc| Value::deserialize(doc).expect("kustomize output is YAML"))
                    .filter(|v| !v.is_null())
                    .collect();
                (dir, (text, objects))
            })
            .collect()
    })
}

fn objects(dir: &str) -> &'static [Value] {
    &rendered()
        .get(dir)
        .unwrap_or_else(|| panic!("{dir} was not rendered"))
        .1
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn of_kind<'a>(objects: &'a [Value], wanted: &'a str) -> impl Iterator<Item = &'a Value> {
    objects.iter().filter(move |o| kind(o) == wanted)
}

fn the<'a>(objects: &'a [Value], wanted: &str, named: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted && name(o) == named)
        .unwrap_or_else(|| panic!("no {wanted} {named}"))
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// The pod template of a workload, if it is one.
fn pod_spec(object: &Value) -> Option<&Value> {
    match kind(object) {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => {
            Some(&object["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&object["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        "Pod" => Some(&object["spec"]),
        _ => None,
    }
}

/// Every container of a pod, init containers (native sidecars) included.
fn containers(spec: &Value) -> Vec<&Value> {
    seq(&spec["initContainers"])
        .iter()
        .chain(seq(&spec["containers"]))
        .collect()
}

fn temp_file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

// ---------------------------------------------------------------------------------------
// Rendering and schemas

#[test]
fn every_kustomization_renders_and_every_object_validates_against_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    for (kustomization, (text, objects)) in rendered() {
        assert!(!objects.is_empty(), "{kustomization} renders nothing");
        let file = temp_file(&dir, "rendered.yaml", text);
        let out = Command::new(python())
            .arg(root().join("tests/k8s_validate.py"))
            .args(["--kubernetes", KUBERNETES])
            .arg(&file)
            .output()
            .expect("run tests/k8s_validate.py");
        assert!(
            out.status.success(),
            "{kustomization}: an object does not validate (Kubernetes {KUBERNETES}):\n{}",
            output_text(&out)
        );
        let validated = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("ok "))
            .count();
        assert_eq!(
            validated,
            objects.len(),
            "{kustomization}: {}",
            output_text(&out)
        );
    }
}

// ---------------------------------------------------------------------------------------
// Configs inside ConfigMaps

/// Every (kustomization, ConfigMap, key, text) whose key ends in `.yaml`.
fn config_map_files() -> Vec<(String, &'static Value, String, String)> {
    let mut found = Vec::new();
    for (dir, (_, objects)) in rendered() {
        for config_map in of_kind(objects, "ConfigMap") {
            if let Some(data) = config_map["data"].as_mapping() {
                for (key, text) in data {
                    let (key, text) = (key.as_str().unwrap(), text.as_str().unwrap_or_default());
                    if key.ends_with(".yaml") {
                        found.push((dir.clone(), config_map, key.to_owned(), text.to_owned()));
                    }
                }
            }
        }
    }
    found
}

#[test]
fn every_envoy_config_in_a_config_map_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (kustomization, config_map, key, text) in config_map_files() {
        if !text.contains("static_resources:") {
            continue;
        }
        let file = temp_file(&dir, "envoy.yaml", &text);
        if let Err(said) = common::envoy::validate(&file) {
            panic!(
                "{kustomization}: ConfigMap {} key {key} does not validate:\n{said}",
                name(config_map)
            );
        }
        checked += 1;
    }
    assert!(checked >= 1, "no Envoy config found in any ConfigMap");
}

/// A plausible value for each variable a Pod takes from the Secret `tollgate`.
fn secret_value(var: &str) -> &'static str {
    match var {
        "TOLLGATE_MASTER_KEY" => "tg-master-k8s-tests-0123456789",
        "TOLLGATE_DATABASE_URL" => "postgres://tollgate:secret@postgres.db:5432/tollgate",
        "TOLLGATE_REDIS_URL" => "redis://:secret@redis.db:6379",
        "TOLLGATE_SESSION_SECRET" => "a-session-secret-of-more-than-32-characters",
        "OPENAI_API_KEY" => "sk-example",
        other => panic!("the test knows no value for the Secret variable {other}; add one"),
    }
}

/// The environment a container gets from its manifest: literal values as they are,
/// Secret references as plausible values.
fn container_env(container: &Value) -> Vec<(String, String)> {
    seq(&container["env"])
        .iter()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_owned();
            let value = match var["value"].as_str() {
                Some(value) => value.to_owned(),
                None => {
                    assert!(
                        !var["valueFrom"]["secretKeyRef"].is_null(),
                        "env {name} comes from neither a value nor a Secret"
                    );
                    secret_value(&name).to_owned()
                }
            };
            (name, value)
        })
        .collect()
}

#[test]
fn every_tollgate_config_in_a_config_map_passes_config_check_with_its_pods_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for (kustomization, config_map, key, text) in config_map_files() {
        if key != "tollgate.yaml" {
            continue;
        }
        // The containers that mount this ConfigMap, with their environment.
        for workload in objects(&kustomization) {
            let Some(spec) = pod_spec(workload) else {
                continue;
            };
            let volumes: Vec<&str> = seq(&spec["volumes"])
                .iter()
                .filter(|v| v["configMap"]["name"].as_str() == Some(name(config_map)))
                .filter_map(|v| v["name"].as_str())
                .collect();
            for container in containers(spec) {
                let mounts = seq(&container["volumeMounts"])
                    .iter()
                    .any(|m| volumes.contains(&m["name"].as_str().unwrap_or_default()));
                if !mounts {
                    continue;
                }
                let file = temp_file(&dir, "tollgate.yaml", &text);
                let mut command = Command::new(BIN);
                command.args(["config", "check"]).arg(&file);
                for (name, _) in std::env::vars() {
                    if name.starts_with("TOLLGATE_") || name == "OPENAI_API_KEY" {
                        command.env_remove(name);
                    }
                }
                command.envs(container_env(container));
                let out = command.output().expect("run tollgate config check");
                let what = format!(
                    "{kustomization}: ConfigMap {} in {} {} container {}",
                    name(config_map),
                    kind(workload),
                    name(workload),
                    container["name"].as_str().unwrap_or_default()
                );
                assert!(out.status.success(), "{what}:\n{}", output_text(&out));
                // Every ${VAR} without a default is given by the manifest.
                let stderr = String::from_utf8_lossy(&out.stderr);
                assert!(!stderr.contains("is not set"), "{what}:\n{stderr}");
                checked += 1;
            }
        }
    }
    // The base's config in base and each overlay, and the migration's.
    assert!(checked >= 5, "only {checked} tollgate configs checked");
}

// ---------------------------------------------------------------------------------------
// Security context, probes, resources

#[test]
fn every_workload_runs_unprivileged_on_a_read_only_root_with_resources() {
    let mut workloads = 0;
    for (dir, (_, objects)) in rendered() {
        for workload in objects {
            let Some(spec) = pod_spec(workload) else {
                continue;
            };
            workloads += 1;
            let what = format!("{dir}: {} {}", kind(workload), name(workload));
            let pod = &spec["securityContext"];
            assert_eq!(
                pod["runAsNonRoot"].as_bool(),
                Some(true),
                "{what}: pod runAsNonRoot"
            );
            assert_eq!(
                pod["seccompProfile"]["type"].as_str(),
                Some("RuntimeDefault"),
                "{what}: pod seccompProfile"
            );
            assert_eq!(
                spec["automountServiceAccountToken"].as_bool(),
                Some(false),
                "{what}: automountServiceAccountToken"
            );
            assert!(
                spec["hostNetwork"].is_null() && spec["hostPID"].is_null(),
                "{what}"
            );
            for volume in seq(&spec["volumes"]) {
                let kinds: Vec<&str> = volume
                    .as_mapping()
                    .unwrap()
                    .keys()
                    .filter_map(|k| k.as_str())
                    .filter(|k| *k != "name")
                    .collect();
                assert!(
                    matches!(kinds.as_slice(), ["configMap"] | ["secret"] | ["emptyDir"]),
                    "{what}: volume {volume:?}"
                );
            }
            for container in containers(spec) {
                let what = format!("{what} container {}", container["name"].as_str().unwrap());
                let sc = &container["securityContext"];
                assert_eq!(
                    sc["runAsNonRoot"].as_bool(),
                    Some(true),
                    "{what}: runAsNonRoot"
                );
                assert_eq!(sc["runAsUser"].as_u64(), Some(65532), "{what}: runAsUser");
                assert_eq!(
                    sc["allowPrivilegeEscalation"].as_bool(),
                    Some(false),
                    "{what}: allowPrivilegeEscalation"
                );
                assert_eq!(
                    sc["readOnlyRootFilesystem"].as_bool(),
                    Some(true),
                    "{what}: readOnlyRootFilesystem"
                );
                assert_eq!(
                    seq(&sc["capabilities"]["drop"]),
                    [Value::from("ALL")],
                    "{what}: capabilities.drop"
                );
                assert!(
                    sc["capabilities"]["add"].is_null(),
                    "{what}: capabilities.add"
                );
                assert!(
                    sc["privileged"].as_bool() != Some(true),
                    "{what}: privileged"
                );
                assert_eq!(
                    sc["seccompProfile"]["type"].as_str(),
                    Some("RuntimeDefault"),
                    "{what}: seccompProfile"
                );
                for bound in ["requests", "limits"] {
                    for resource in ["cpu", "memory"] {
                        assert!(
                            !container["resources"][bound][resource].is_null(),
                            "{what}: resources.{bound}.{resource}"
                        );
                    }
                }
            }
        }
    }
    assert!(workloads >= 5, "only {workloads} workloads found");
}

/// `15s` → 15.
fn seconds(duration: &str) -> u64 {
    duration
        .strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a duration in whole seconds: {duration}"))
}

/// Each rendering with tollgate's Deployment: (kustomization, its objects, the Deployment).
fn tollgate_deployments() -> impl Iterator<Item = (&'static str, &'static [Value], &'static Value)>
{
    rendered().iter().filter_map(|(dir, (_, objects))| {
        let deployment = objects
            .iter()
            .find(|o| kind(o) == "Deployment" && name(o) == "tollgate")?;
        Some((dir.as_str(), objects.as_slice(), deployment))
    })
}

/// The tollgate container of a Deployment's pod (a main or a native sidecar container).
fn tollgate_container(spec: &Value) -> &Value {
    containers(spec)
        .into_iter()
        .find(|c| c["name"].as_str() == Some("tollgate"))
        .expect("a container named tollgate")
}

#[test]
fn the_tollgate_deployment_probes_drains_scales_and_spreads_as_a_service_must() {
    for (dir, objects, deployment) in tollgate_deployments() {
        let spec = &deployment["spec"]["template"]["spec"];
        let tollgate = tollgate_container(spec);
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
        ] {
            assert_eq!(
                tollgate[probe]["httpGet"]["path"].as_str(),
                Some(path),
                "{dir}: {probe}"
            );
            assert_eq!(
                tollgate[probe]["httpGet"]["port"].as_str(),
                Some("http"),
                "{dir}: {probe}"
            );
        }
        let http_port = seq(&tollgate["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some("http"))
            .expect("an http port");
        assert_eq!(http_port["containerPort"].as_u64(), Some(9090), "{dir}");

        // The grace period covers a whole drain: drain_timeout + 12 s, and the flush.
        let config_map = of_kind(objects, "ConfigMap")
            .find(|c| name(c).starts_with("tollgate-config"))
            .expect("the tollgate ConfigMap");
        let config: Value =
            serde_yaml::from_str(config_map["data"]["tollgate.yaml"].as_str().unwrap()).unwrap();
        let drain = seconds(config["server"]["drain_timeout"].as_str().unwrap_or("15s"));
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        assert!(
            grace >= drain + 12 + 30,
            "{dir}: terminationGracePeriodSeconds {grace} with drain_timeout {drain}s"
        );

        // At least two replicas, owned by the autoscaler.
        let replicas = deployment["spec"]["replicas"].as_u64();
        assert!(
            replicas.is_none_or(|r| r >= 2),
            "{dir}: replicas {replicas:?}"
        );
        let hpa = of_kind(objects, "HorizontalPodAutoscaler")
            .find(|h| h["spec"]["scaleTargetRef"]["name"].as_str() == Some("tollgate"))
            .unwrap_or_else(|| panic!("{dir}: no HorizontalPodAutoscaler for tollgate"));
        assert!(
            hpa["spec"]["minReplicas"].as_u64() >= Some(2),
            "{dir}: minReplicas"
        );
        let labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let selects_pods = |selector: &Value| {
            selector["matchLabels"]
                .as_mapping()
                .is_some_and(|m| m.iter().all(|(k, v)| &labels[k] == v))
        };
        assert!(
            of_kind(objects, "PodDisruptionBudget").any(|p| selects_pods(&p["spec"]["selector"])),
            "{dir}: no PodDisruptionBudget for tollgate's pods"
        );
        assert!(
            seq(&spec["topologySpreadConstraints"]).iter().any(|c| {
                c["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                    && c["whenUnsatisfiable"].as_str() == Some("DoNotSchedule")
                    && selects_pods(&c["labelSelector"])
            }),
            "{dir}: replicas are not spread across nodes"
        );
        assert!(
            of_kind(objects, "ServiceAccount")
                .all(|a| a["automountServiceAccountToken"].as_bool() == Some(false)),
            "{dir}: a ServiceAccount mounts its token"
        );
    }
}

// ---------------------------------------------------------------------------------------
// NetworkPolicy

/// Whether `peer` names particular pods: a podSelector with labels (and, when it spans
/// namespaces, a namespaceSelector with labels), never everything.
fn names_particular_pods(peer: &Value) -> bool {
    let labelled = |selector: &Value| {
        selector["matchLabels"]
            .as_mapping()
            .is_some_and(|m| !m.is_empty())
    };
    labelled(&peer["podSelector"])
        && (peer["namespaceSelector"].is_null() || labelled(&peer["namespaceSelector"]))
        && peer["ipBlock"].is_null()
}

#[test]
fn tollgate_grpc_port_is_reachable_by_the_gateway_pods_only() {
    for (dir, objects, deployment) in tollgate_deployments() {
        let spec = &deployment["spec"]["template"]["spec"];
        let env = container_env(tollgate_container(spec));
        let loopback = env
            .iter()
            .any(|(k, v)| k == "TOLLGATE_LISTEN_GRPC" && v.starts_with("127.0.0.1:"));
        let policy = of_kind(objects, "NetworkPolicy")
            .find(|p| {
                p["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str()
                    == Some("tollgate")
            })
            .unwrap_or_else(|| panic!("{dir}: no NetworkPolicy selects tollgate's pods"));
        assert!(
            seq(&policy["spec"]["policyTypes"]).contains(&Value::from("Ingress")),
            "{dir}: the NetworkPolicy does not govern ingress"
        );
        let rules = seq(&policy["spec"]["ingress"]);
        for rule in rules {
            assert!(
                !seq(&rule["ports"]).is_empty(),
                "{dir}: a rule opens every port"
            );
        }
        let grpc_rules: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                seq(&r["ports"])
                    .iter()
                    .any(|p| p["port"].as_u64() == Some(9191))
            })
            .collect();
        let http_rules: Vec<&Value> = rules
            .iter()
            .filter(|r| {
                seq(&r["ports"])
                    .iter()
                    .any(|p| p["port"].as_u64() == Some(9090))
            })
            .collect();
        for rule in grpc_rules.iter().chain(&http_rules) {
            let peers = seq(&rule["from"]);
            assert!(!peers.is_empty(), "{dir}: 9191 or 9090 open to everyone");
            assert!(
                peers.iter().all(names_particular_pods),
                "{dir}: 9191 or 9090 open to more than labelled pods: {peers:?}"
            );
        }
        assert!(!http_rules.is_empty(), "{dir}: no rule for the HTTP port");
        if loopback {
            // The native sidecar: gRPC on 127.0.0.1, on no Service, in no rule.
            assert!(grpc_rules.is_empty(), "{dir}: a rule for a loopback port");
            for service in of_kind(objects, "Service") {
                for port in seq(&service["spec"]["ports"]) {
                    assert!(
                        port["port"].as_u64() != Some(9191)
                            && port["targetPort"].as_str() != Some("grpc"),
                        "{dir}: Service {} exposes gRPC",
                        name(service)
                    );
                }
            }
        } else {
            assert_eq!(grpc_rules.len(), 1, "{dir}: one rule for 9191");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Istio: the mesh config, the CUSTOM policy and the usage filter against envoy/envoy.yaml

fn shipped_envoy() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(root().join("envoy/envoy.yaml")).unwrap())
        .unwrap()
}

fn shipped_hcm(envoy: &Value) -> &Value {
    &envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
}

fn shipped_filter<'a>(envoy: &'a Value, filter: &str) -> &'a Value {
    seq(&shipped_hcm(envoy)["http_filters"])
        .iter()
        .find(|f| f["name"].as_str() == Some(filter))
        .unwrap_or_else(|| panic!("envoy/envoy.yaml has no {filter}"))
}

/// The Service address Istio knows tollgate by, from the rendered central overlay.
fn tollgate_service_host() -> String {
    let service = the(objects("k8s/overlays/central"), "Service", "tollgate");
    format!(
        "{}.{}.svc.cluster.local",
        name(service),
        service["metadata"]["namespace"].as_str().unwrap()
    )
}

#[test]
fn the_istio_mesh_config_asks_tollgate_as_envoy_yaml_does() {
    let text =
        std::fs::read_to_string(root().join("k8s/overlays/central/mesh-config.yaml")).unwrap();
    let operator: Value = serde_yaml::from_str(&text).expect("mesh-config.yaml is YAML");
    assert_eq!(operator["kind"].as_str(), Some("IstioOperator"));
    let providers = seq(&operator["spec"]["meshConfig"]["extensionProviders"]);
    let provider = providers
        .iter()
        .find(|p| p["name"].as_str() == Some("tollgate"))
        .expect("an extension provider named tollgate");
    let grpc = &provider["envoyExtAuthzGrpc"];
    let fields: Vec<&str> = grpc
        .as_mapping()
        .expect("envoyExtAuthzGrpc")
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    // The fields of Istio's EnvoyExternalAuthorizationGrpcProvider (mesh/v1alpha1); a
    // misspelt one would be dropped silently by istioctl.
    for field in &fields {
        assert!(
            [
                "service",
                "port",
                "timeout",
                "failOpen",
                "clearRouteCache",
                "statusOnError",
                "includeRequestBodyInCheck"
            ]
            .contains(field),
            "envoyExtAuthzGrpc has no field {field}"
        );
    }

    assert_eq!(
        grpc["service"].as_str(),
        Some(tollgate_service_host().as_str())
    );
    let service = the(objects("k8s/overlays/central"), "Service", "tollgate");
    let grpc_port = seq(&service["spec"]["ports"])
        .iter()
        .find(|p| p["name"].as_str() == Some("grpc"))
        .expect("a grpc port");
    assert_eq!(grpc["port"], grpc_port["port"]);
    assert_eq!(grpc_port["appProtocol"].as_str(), Some("grpc"));

    let envoy = shipped_envoy();
    let ext_authz = &shipped_filter(&envoy, "envoy.filters.http.ext_authz")["typed_config"];
    assert_eq!(grpc["timeout"], ext_authz["grpc_service"]["timeout"]);
    assert_eq!(grpc["failOpen"], ext_authz["failure_mode_allow"]);
    assert_eq!(ext_authz["failure_mode_allow"].as_bool(), Some(false));
    assert_eq!(
        ext_authz["status_on_error"]["code"].as_str(),
        Some("ServiceUnavailable")
    );
    assert_eq!(grpc["statusOnError"].as_str(), Some("503"));
    let body = &grpc["includeRequestBodyInCheck"];
    let shipped_body = &ext_authz["with_request_body"];
    assert_eq!(body["maxRequestBytes"], shipped_body["max_request_bytes"]);
    assert_eq!(
        body["allowPartialMessage"],
        shipped_body["allow_partial_message"]
    );
    assert_eq!(body["packAsBytes"], shipped_body["pack_as_bytes"]);
}

/// Whether an Istio `paths` entry (exact, `prefix*` or `*suffix`) matches `path`.
fn istio_path_matches(pattern: &str, path: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        path.starts_with(prefix)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        path.ends_with(suffix)
    } else {
        pattern == path
    }
}

#[test]
fn the_istio_gateway_sends_every_llm_route_through_tollgate() {
    let central = objects("k8s/overlays/central");
    let policy = the(central, "AuthorizationPolicy", "tollgate-llm");
    assert_eq!(policy["spec"]["action"].as_str(), Some("CUSTOM"));
    assert_eq!(
        policy["spec"]["provider"]["name"].as_str(),
        Some("tollgate")
    );
    let paths: Vec<&str> = seq(&policy["spec"]["rules"])
        .iter()
        .flat_map(|r| seq(&r["to"]))
        .flat_map(|t| seq(&t["operation"]["paths"]))
        .filter_map(|p| p.as_str())
        .collect();
    for path in LLM_PATHS {
        assert!(
            paths.iter().any(|p| istio_path_matches(p, path)),
            "{path} is not checked by the CUSTOM policy ({paths:?})"
        );
    }
    // The policy, the usage filter and the NetworkPolicy all name the same gateway pods.
    let gateway = &policy["spec"]["selector"]["matchLabels"];
    let filter = the(central, "EnvoyFilter", "tollgate-usage");
    assert_eq!(&filter["spec"]["workloadSelector"]["labels"], gateway);
    assert_eq!(
        filter["metadata"]["namespace"],
        policy["metadata"]["namespace"]
    );
    let network = the(central, "NetworkPolicy", "tollgate");
    let grpc_peers = seq(&network["spec"]["ingress"][0]["from"]);
    assert!(
        grpc_peers
            .iter()
            .any(|p| &p["podSelector"]["matchLabels"] == gateway
                && p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                    == policy["metadata"]["namespace"]),
        "the NetworkPolicy does not let the gateway's pods reach 9191: {grpc_peers:?}"
    );

    // The Envoy Gateway example routes (and so checks) the same paths.
    let example = objects("k8s/examples/envoy-gateway");
    let route = the(example, "HTTPRoute", "llm");
    for path in LLM_PATHS {
        assert!(
            seq(&route["spec"]["rules"])
                .iter()
                .flat_map(|r| seq(&r["matches"]))
                .any(|m| {
                    let value = m["path"]["value"].as_str().unwrap();
                    match m["path"]["type"].as_str() {
                        Some("Exact") => value == *path,
                        Some("PathPrefix") => path.starts_with(value),
                        other => panic!("path match type {other:?}"),
                    }
                }),
            "the Envoy Gateway example does not route {path}"
        );
    }
}

/// The Istio usage filter's patches: (the connection manager fields, the HTTP filter).
fn istio_patches() -> (&'static Value, &'static Value) {
    let filter = the(
        objects("k8s/overlays/central"),
        "EnvoyFilter",
        "tollgate-usage",
    );
    let patches = seq(&filter["spec"]["configPatches"]);
    let hcm = patches
        .iter()
        .find(|p| p["applyTo"].as_str() == Some("NETWORK_FILTER"))
        .expect("a connection manager patch");
    assert_eq!(hcm["patch"]["operation"].as_str(), Some("MERGE"));
    let http = patches
        .iter()
        .find(|p| p["applyTo"].as_str() == Some("HTTP_FILTER"))
        .expect("an HTTP filter patch");
    assert_eq!(http["patch"]["operation"].as_str(), Some("INSERT_BEFORE"));
    assert_eq!(
        http["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"].as_str(),
        Some("envoy.filters.http.router"),
        "the usage filter must run after ext_authz: just before the router"
    );
    for patch in [hcm, http] {
        assert_eq!(patch["match"]["context"].as_str(), Some("GATEWAY"));
    }
    (
        &hcm["patch"]["value"]["typed_config"],
        &http["patch"]["value"],
    )
}

/// The wrapped ext_proc filter with its cluster renamed to envoy/envoy.yaml's `tollgate`.
fn istio_usage_filter_for_local_envoy() -> Value {
    let (_, filter) = istio_patches();
    let mut filter = filter.clone();
    let cluster = &mut filter["typed_config"]["extension_config"]["typed_config"]["grpc_service"]
        ["envoy_grpc"]["cluster_name"];
    assert_eq!(
        cluster.as_str(),
        Some(format!("outbound|9191||{}", tollgate_service_host()).as_str()),
        "the usage filter's cluster is Istio's for tollgate's Service"
    );
    *cluster = Value::from("tollgate");
    filter
}

#[test]
fn the_istio_usage_filter_is_envoy_yaml_s_ext_proc_and_connection_manager() {
    let envoy = shipped_envoy();
    let (hcm, _) = istio_patches();
    let shipped = shipped_hcm(&envoy);
    for (key, value) in hcm.as_mapping().unwrap() {
        if key.as_str() == Some("@type") {
            assert_eq!(value, &shipped["@type"]);
            continue;
        }
        assert_eq!(
            value, &shipped[key],
            "connection manager field {key:?} differs from envoy/envoy.yaml"
        );
    }
    for key in [
        "use_remote_address",
        "generate_request_id",
        "preserve_external_request_id",
        "normalize_path",
        "merge_slashes",
        "path_with_escaped_slashes_action",
        "early_header_mutation_extensions",
    ] {
        assert!(
            !hcm[key].is_null(),
            "the gateway patch leaves out {key} of envoy/envoy.yaml"
        );
    }

    let filter = istio_usage_filter_for_local_envoy();
    assert_eq!(
        filter["typed_config"]["extension_config"],
        *shipped_filter(&envoy, "envoy.filters.http.ext_proc"),
        "the wrapped ext_proc filter differs from envoy/envoy.yaml's (but for its cluster)"
    );
}

/// envoy/envoy.yaml with its ext_proc filter replaced by the Istio gateway's, and a route
/// `/open` that ext_authz leaves alone (like a path outside the CUSTOM policy).
fn envoy_with_istio_usage_filter() -> String {
    let mut envoy = shipped_envoy();
    let (hcm_patch, _) = istio_patches();
    let filter = istio_usage_filter_for_local_envoy();
    let hcm = &mut envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        ["typed_config"];
    for (key, value) in hcm_patch.as_mapping().unwrap() {
        hcm[key] = value.clone();
    }
    let filters = hcm["http_filters"].as_sequence_mut().unwrap();
    let at = filters
        .iter()
        .position(|f| f["name"].as_str() == Some("envoy.filters.http.ext_proc"))
        .unwrap();
    filters[at] = filter;
    let routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
        .as_sequence_mut()
        .unwrap();
    let mut open = routes[0].clone();
    open["match"] = serde_yaml::from_str("{ prefix: /open }").unwrap();
    open["typed_per_filter_config"] = serde_yaml::from_str(
        "envoy.filters.http.ext_authz:\n  \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute\n  disabled: true\n",
    )
    .unwrap();
    routes.insert(0, open);
    serde_yaml::to_string(&envoy).unwrap()
}

#[tokio::test]
async fn the_istio_usage_filter_meters_what_check_admitted_and_nothing_else() {
    use common::envoy::Envoy;
    use common::tollgate::Tollgate;
    use common::upstream::{get_json, post_json};
    use reqwest::StatusCode;
    use serde_json::json;
    use std::time::{Duration, Instant};
    use tollgate::mock_llm::MockLlm;
    use tollgate::store::{GroupBy, UsageQuery};

    let t = Tollgate::start("usage: { batch_interval: 20ms }\n").await;
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = temp_file(&dir, "envoy.yaml", &envoy_with_istio_usage_filter());
    let envoy = Envoy::start(config.to_str().unwrap(), t.grpc, mock.addr).await;
    let streams = |stats: &BTreeMap<String, u64>| {
        stats
            .iter()
            .filter(|(k, _)| k.ends_with("ext_proc.streams_started"))
            .map(|(_, v)| *v)
            .sum::<u64>()
    };

    // A request Check never saw, even one that claims an identity, does not reach the
    // usage filter.
    for headers in [vec![], vec![("x-tollgate-key-id", "someone-else")]] {
        let (status, _, _) = get_json(&envoy, "/open/v1/models", &headers).await;
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(streams(&envoy.stats().await), 0, "{}", envoy.log_tail(40));

    // An admitted one is metered.
    let (_, key) = t.create_key(json!({"name": "k"})).await;
    let body = json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let (status, _, answer) = post_json(
        &envoy,
        "/v1/chat/completions",
        &[("authorization", &format!("Bearer {key}"))],
        &body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(streams(&envoy.stats().await), 1, "{}", envoy.log_tail(40));
    let started = Instant::now();
    loop {
        let recorded = t
            .app
            .store
            .usage_report(UsageQuery::new(GroupBy::Model))
            .await
            .map(|r| r.total.requests)
            .unwrap_or(0);
        if recorded == 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no usage record after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
