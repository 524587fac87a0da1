//! The dashboard in a real browser: a real `ferry serve` process with an API key, Debian's
//! Chromium driven by playwright-core (tests/dashboard/dashboard.mjs): the page loads with no
//! console error, asks for the key, uploads a file (tus) as a `scan` job through its form, shows
//! the job's progress advancing and its intermediate image while it runs, the table's progress
//! advancing, cancels it through the confirmation dialog (checked through the API too), draws
//! the queue's charts, and can be used from the keyboard.
//!
//! Screenshots of the main pages go to `$FERRY_SCREENSHOTS` (the README's are made with
//! `FERRY_SCREENSHOTS=docs/screenshots`), else to the test's own folder.

use std::{path::PathBuf, process::Command};

use crate::{helpers::*, tools};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/dashboard/dashboard.mjs");
const SCAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/handlers/scan.py");
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where playwright-core is: beside the pinned npm tools.
fn node_modules() -> PathBuf {
    std::env::var_os("TEST_TOOLS_NPM_BIN")
        .map(PathBuf::from)
        .and_then(|bin| bin.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/node_modules"))
}

fn browser_tools() -> Result<PathBuf, String> {
    let modules = node_modules();
    if !modules.join("playwright-core/package.json").exists() {
        return Err(format!(
            "no playwright-core in {} (`npm ci` in tools/)",
            modules.display()
        ));
    }
    if !std::path::Path::new(CHROMIUM).exists() {
        return Err(format!("no {CHROMIUM} (apt-get install chromium)"));
    }
    Ok(modules)
}

#[tokio::test]
async fn the_dashboard_runs_and_cancels_a_job_in_a_real_browser() {
    let Some(modules) = tools::or_skip("the browser test", browser_tools()) else {
        return;
    };
    let app = TestApp::spawn_process(TestConfig {
        extra_toml: format!(
            "[handlers.scan]\ncommand = [\"python3\", \"{SCAN}\"]\ntimeout = \"5m\"\n"
        ),
        ..TestConfig::default()
    })
    .await;
    let key = app.create_key("radiology", &["jobs:read", "jobs:write", "results:read"]);
    app.wait_keys_required(&app.base).await;
    let shots = std::env::var_os("FERRY_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| app.dir.path().join("screenshots"));
    let scan = app.dir.path().join("study.bin");
    std::fs::write(&scan, bytes(3 << 20, 42)).expect("scan file");

    let out = Command::new("node")
        .arg(SCRIPT)
        .env("FERRY_URL", &app.base)
        .env("FERRY_KEY", &key)
        .env("SCREENSHOT_DIR", &shots)
        .env("SCAN_FILE", &scan)
        .env("CHROMIUM", CHROMIUM)
        .env("FERRY_TOOLS_NODE_MODULES", &modules)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.logs_of("server")
    );
    // Every step ran and passed (the script exits 0 only then; this guards a script that
    // would stop early without saying so).
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(passed >= 8, "only {passed} steps passed:\n{stdout}");
    for page in ["jobs.png", "job.png", "queue.png"] {
        let png = std::fs::read(shots.join(page)).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG"),
            "{page} was not saved in {shots:?}"
        );
    }
}
