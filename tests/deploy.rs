//! The deployment files that ship: every Envoy config passes `envoy --mode validate`, the
//! docker-compose Envoy config stays the shipped one but for its addresses, and
//! docker-compose.yml names the services and files it needs.

mod common;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn envoy_configs() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["envoy", "deploy/compose", "k8s/overlays/sidecar"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("envoy") && name.ends_with(".yaml") {
                found.push(path);
            }
        }
    }
    assert!(
        found.len() >= 4,
        "expected the shipped Envoy configs, found {found:?}"
    );
    found
}

#[test]
fn every_shipped_envoy_config_validates() {
    for config in envoy_configs() {
        if let Err(said) = common::envoy::validate(&config) {
            panic!("{} does not validate:\n{said}", config.display());
        }
    }
}

fn without_header(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text[text.find("admin:").expect("an admin section")..].to_owned()
}

/// Asserts that `derived` (a copy of envoy/envoy.yaml for another place) is the shipped
/// file but for its header comment and the address lines that `back` turns into the
/// shipped ones.
fn assert_only_addresses_differ(derived: &str, back: &[(&str, &str)]) {
    let shipped = without_header(&root().join("envoy/envoy.yaml"));
    let mut text = without_header(&root().join(derived));
    for (from, to) in back {
        assert!(text.contains(from), "{derived} has no `{from}`");
        text = text.replace(from, to);
    }
    assert_eq!(
        text, shipped,
        "{derived} drifted from envoy/envoy.yaml; regenerate it from the shipped file"
    );
}

#[test]
fn the_compose_envoy_config_differs_from_the_shipped_one_only_in_addresses() {
    assert_only_addresses_differ(
        "deploy/compose/envoy.yaml",
        &[
            (
                "address: 0.0.0.0, port_value: 10000",
                "address: 127.0.0.1, port_value: 10000",
            ),
            (
                "address: tollgate, port_value: 9191",
                "address: 127.0.0.1, port_value: 9191",
            ),
            (
                "address: mock-llm, port_value: 8000",
                "address: 127.0.0.1, port_value: 8000",
            ),
            ("type: STRICT_DNS", "type: STATIC"),
        ],
    );
}

/// The Envoy of k8s/overlays/sidecar shares the Pod with tollgate: only its listener (the
/// Pod's address) and the provider cluster (a Service name) differ.
#[test]
fn the_kubernetes_sidecar_envoy_config_differs_from_the_shipped_one_only_in_addresses() {
    assert_only_addresses_differ(
        "k8s/overlays/sidecar/envoy.yaml",
        &[
            (
                "address: 0.0.0.0, port_value: 10000",
                "address: 127.0.0.1, port_value: 10000",
            ),
            (
                "address: llm, port_value: 8000",
                "address: 127.0.0.1, port_value: 8000",
            ),
            ("type: STRICT_DNS", "type: STATIC"),
        ],
    );
}

#[test]
fn docker_compose_yml_runs_the_whole_stack_from_files_that_exist() {
    let path = root().join("docker-compose.yml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the contract names docker-compose.yml)",
            path.display()
        )
    });
    let compose: serde_yaml::Value =
        serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    let services = compose["services"].as_mapping().expect("a services map");
    for name in ["tollgate", "envoy", "postgres", "mock-llm", "dex"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no service `{name}`"
        );
    }
    // Every file mounted from the repository is there (a renamed file would otherwise only
    // show when someone runs `docker compose up`).
    for (name, service) in services {
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = volume.as_str().expect("short volume syntax");
            if let Some(source) = volume.strip_prefix("./") {
                let source = source.split(':').next().unwrap();
                assert!(
                    root().join(source).exists(),
                    "service {name:?} mounts ./{source}, which does not exist"
                );
            }
        }
    }
    assert!(root().join("Dockerfile").is_file());
    // A drain takes up to server.drain_timeout (15 s) plus the time in-flight streams and
    // the usage queue take; compose's default of 10 s would kill it.
    assert_eq!(
        services["tollgate"]["stop_grace_period"].as_str(),
        Some("30s")
    );
}
