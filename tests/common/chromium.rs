//! Debian's chromium, driven by playwright-core from a Node script in tests/browser (never a
//! downloaded browser). Needs node (20 or later), `npm ci` in tests/browser, and chromium at
//! /usr/bin/chromium (or `TOLLGATE_CHROMIUM`); scripts/test installs what is missing.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// tests/browser, where the scripts and their npm packages are.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The chromium binary, after checking that it and playwright-core are installed.
pub fn chromium() -> String {
    assert!(
        browser_dir().join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in tests/browser (scripts/test does)"
    );
    let chromium =
        std::env::var("TOLLGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).is_file(),
        "no chromium at {chromium}: `apt-get install chromium` (scripts/test does), or set TOLLGATE_CHROMIUM"
    );
    chromium
}

/// Where the scripts save screenshots: `ui-screenshots/` in the target directory (made
/// here).
pub fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshots directory");
    dir
}

/// Runs `node tests/browser/{script}` with `env` (and `TOLLGATE_CHROMIUM`,
/// `TOLLGATE_SCREENSHOTS`) for at most `limit`: what it printed, as `Err` unless it exited 0.
pub async fn run(script: &str, env: &[(&str, String)], limit: Duration) -> Result<String, String> {
    let chromium = chromium();
    let mut node = tokio::process::Command::new("node");
    node.arg(script)
        .current_dir(browser_dir())
        .env("TOLLGATE_CHROMIUM", &chromium)
        .env("TOLLGATE_SCREENSHOTS", screenshots())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        node.env(name, value);
    }
    let out = tokio::time::timeout(limit, node.output())
        .await
        .unwrap_or_else(|_| panic!("tests/browser/{script} did not finish within {limit:?}"))
        .expect("node runs (install Node.js 20 or later)");
    let printed = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "tests/browser/{script} failed ({}):\n{printed}",
            out.status
        ));
    }
    println!("{printed}\nscreenshots in {}", screenshots().display());
    Ok(printed)
}
