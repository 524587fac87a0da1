//! The contract, checked by a tool not written here: schemathesis (pinned in
//! tools/requirements.txt) fuzzes a real `ferry serve` on each backend from `openapi.yaml` alone,
//! with every check on and the settings of tests/schemathesis.toml — server errors, status
//! codes, content types, response schemas and headers, negative data rejected and positive data
//! accepted, `Allow` on unsupported methods, stateful chains through `Location` and ids. Zero
//! failures: the few checks an operation cannot pass are listed in the configuration and in the
//! operation's `x-contract-exceptions`, and a test here keeps the two lists the same.
//!
//! schemathesis comes from `TEST_TOOLS_PYTHON`'s folder (default: the venv
//! scripts/install-tools.sh builds). Without it the test prints a notice and passes, unless
//! `CI=true`.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{helpers::*, tools};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis_hooks.py");
const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
const PINNED: &str = "4.32.5";
/// Far above a normal run (about a minute); reached only if schemathesis or the server hangs.
const WALL_CLOCK: Duration = Duration::from_secs(600);

/// The pinned `schemathesis` script, or why it cannot run.
fn schemathesis_script() -> Result<PathBuf, String> {
    let script = tools::python().with_file_name("schemathesis");
    let version = Command::new(&script)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    if !version.contains(PINNED) {
        return Err(format!(
            "{} is {:?}, not schemathesis {PINNED}",
            script.display(),
            version.trim()
        ));
    }
    Ok(script)
}

async fn schemathesis_finds_no_failure_on_a_live_server() {
    let Some(script) = tools::or_skip("the schemathesis run", schemathesis_script()) else {
        return;
    };
    // Small uploads keep fuzzed bodies (and the bytes each case stores) small.
    let app = TestApp::spawn_process(TestConfig {
        max_upload_bytes: 64 << 10,
        ..TestConfig::default()
    })
    .await;
    // Keys exist, so every operation that needs one refuses requests without it (schemathesis
    // checks that); the run itself uses one with every scope.
    let key = app.create_key(
        "default",
        &[
            "jobs:read",
            "jobs:write",
            "results:read",
            "admin",
            "kinds:write",
            "metrics:read",
        ],
    );
    app.wait_keys_required(&app.base).await;
    let report = app.dir.path().join("schemathesis.txt");
    let out = std::fs::File::create(&report).expect("report file");
    let mut run = Command::new(&script)
        .args(["--config-file", CONFIG, "--no-color", "run", SPEC, "--url"])
        .arg(&app.base)
        .arg("--header")
        .arg(format!("Authorization: Bearer {key}"))
        // tus' `application/offset+octet-stream` bodies, serialized as raw bytes.
        .env("SCHEMATHESIS_HOOKS", HOOKS)
        // Its caches and any report files stay in the test's folder.
        .current_dir(app.dir.path())
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("report file"))
        .stderr(out)
        .spawn()
        .expect("start schemathesis");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().expect("wait for schemathesis") {
            break Some(status);
        }
        if started.elapsed() > WALL_CLOCK {
            let _ = run.kill();
            let _ = run.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let took = started.elapsed();
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            let summary = text.lines().last().unwrap_or_default();
            println!("schemathesis on {:?}: {summary} ({took:.0?})", app.backend);
        }
        Some(status) => panic!(
            "schemathesis found failures ({status}) on {:?} after {took:.0?}:\n{text}\n\
             server log:\n{}",
            app.backend,
            app.logs_of("serve")
        ),
        None => panic!(
            "schemathesis did not finish within {WALL_CLOCK:?} on {:?}:\n{text}",
            app.backend
        ),
    }
}

crate::matrix!(schemathesis_finds_no_failure_on_a_live_server);

/// The checks each operation is excused from, as the configuration lists them: operation id →
/// check name → the statuses it adds (empty when the check is off).
fn config_exceptions() -> Vec<(String, String, Vec<String>)> {
    use figment::{Figment, providers::Format};
    let config: Value = Figment::from(figment::providers::Toml::file(CONFIG))
        .extract()
        .expect("tests/schemathesis.toml parses");
    let mut out = Vec::new();
    for op in config["operations"].as_array().expect("[[operations]]") {
        let id = op["include-operation-id"]
            .as_str()
            .expect("each exception names one operation id");
        for (check, settings) in op["checks"].as_object().expect("checks") {
            let statuses = settings["expected-statuses"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .map(|v| v.as_str().expect("status").to_owned())
                        .collect()
                })
                .unwrap_or_default();
            out.push((id.to_owned(), check.clone(), statuses));
        }
    }
    out
}

/// Every exception in the configuration is documented on its operation in `openapi.yaml`
/// (`x-contract-exceptions`, naming each status it adds), and the spec documents no other.
#[test]
fn every_schemathesis_exception_is_documented_in_the_spec() {
    let defaults = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"];
    let configured = config_exceptions();
    let mut documented = Vec::new();
    for item in spec().doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            let (Some(id), Some(Value::Object(notes))) =
                (op["operationId"].as_str(), op.get("x-contract-exceptions"))
            else {
                continue;
            };
            for (check, reason) in notes {
                documented.push((id.to_owned(), check.clone()));
                let reason = reason.as_str().expect("a reason in words");
                let Some((_, _, statuses)) = configured
                    .iter()
                    .find(|(op_id, name, _)| op_id == id && name == check)
                else {
                    panic!("{id}: {check} is excused in the spec but not in {CONFIG}");
                };
                for extra in statuses.iter().filter(|s| !defaults.contains(&s.as_str())) {
                    assert!(
                        reason.contains(extra.as_str()),
                        "{id}: the spec's reason for {check} does not name {extra}: {reason}"
                    );
                }
            }
        }
    }
    for (id, check, _) in &configured {
        assert!(
            documented.contains(&(id.clone(), check.clone())),
            "{id}: {check} is excused in {CONFIG} but not in the spec's x-contract-exceptions"
        );
    }
}
