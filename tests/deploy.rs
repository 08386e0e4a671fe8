//! The deployment files that ship: every Envoy config passes `envoy --mode validate`, and the
//! docker-compose Envoy config stays the shipped one but for its addresses.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn envoy_configs() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for dir in ["envoy", "deploy/compose"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("envoy") && name.ends_with(".yaml") {
                found.push(path);
            }
        }
    }
    assert!(
        found.len() >= 3,
        "expected the shipped Envoy configs, found {found:?}"
    );
    found
}

#[test]
fn every_shipped_envoy_config_validates() {
    let envoy = common::envoy::envoy_binary();
    for config in envoy_configs() {
        let out = Command::new(&envoy)
            .args(["--mode", "validate", "--log-level", "error", "-c"])
            .arg(&config)
            .output()
            .expect("run envoy --mode validate");
        assert!(
            out.status.success(),
            "{} does not validate:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn without_header(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text[text.find("admin:").expect("an admin section")..].to_owned()
}

#[test]
fn the_compose_envoy_config_differs_from_the_shipped_one_only_in_addresses() {
    let shipped = without_header(&root().join("envoy/envoy.yaml"));
    let compose = without_header(&root().join("deploy/compose/envoy.yaml"))
        .replace(
            "address: 0.0.0.0, port_value: 10000",
            "address: 127.0.0.1, port_value: 10000",
        )
        .replace(
            "address: tollgate, port_value: 9191",
            "address: 127.0.0.1, port_value: 9191",
        )
        .replace(
            "address: mock-llm, port_value: 8000",
            "address: 127.0.0.1, port_value: 8000",
        )
        .replace("type: STRICT_DNS", "type: STATIC");
    assert_eq!(
        compose, shipped,
        "deploy/compose/envoy.yaml drifted from envoy/envoy.yaml; regenerate it from the shipped file"
    );
}
