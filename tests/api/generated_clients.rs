//! The generated clients: `openapi.yaml` turned into a Python client (openapi-python-client,
//! with clients/python/generator-config.yaml) and a TypeScript one (openapi-typescript types for
//! openapi-fetch, type-checked by `tsc --strict`), each running the whole flow
//! (clients/python/flow.py, clients/typescript/flow.ts) against a real `ferry serve` process.
//!
//! The clients are generated afresh from the spec into the test's own folder on every run, as a
//! user would generate them; nothing generated is committed or edited. The tools are the pinned
//! ones of tools/ (`scripts/install-tools.sh`), found through `TEST_TOOLS_PYTHON` and
//! `TEST_TOOLS_NPM_BIN`; a missing tool skips the test with a notice, except under `CI=true`,
//! where it fails.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use crate::{
    helpers::{TestApp, TestConfig},
    tools::{self, path_with},
};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

crate::matrix!(
    python_client_runs_the_whole_flow,
    typescript_client_runs_the_whole_flow
);

/// A key with every scope, once the server has noticed that keys exist: the flows run as a
/// client of a server that requires one.
async fn keyed(app: &TestApp) -> String {
    let key = app.create_key(
        "default",
        &["jobs:read", "jobs:write", "results:read", "admin"],
    );
    app.wait_keys_required(&app.base).await;
    key
}

async fn python_client_runs_the_whole_flow() {
    let Some(python) = tools::or_skip("the Python client flow", python_tools()) else {
        return;
    };
    let app = TestApp::spawn_process(TestConfig::default()).await;
    let key = keyed(&app).await;
    let bin = python.parent().expect("the venv's bin folder");
    let client = app.dir.path().join("python");
    run(
        &app,
        "openapi-python-client generate",
        Command::new(bin.join("openapi-python-client"))
            .arg("generate")
            .args(["--path", &format!("{ROOT}/openapi.yaml")])
            .args([
                "--config",
                &format!("{ROOT}/clients/python/generator-config.yaml"),
            ])
            .arg("--output-path")
            .arg(client.join("ferry_client"))
            .args(["--meta", "none"])
            // It formats what it generates with ruff, which lives in the same venv.
            .env("PATH", path_with(bin)),
    );
    run(
        &app,
        "clients/python/flow.py",
        Command::new(&python)
            .arg(format!("{ROOT}/clients/python/flow.py"))
            .args(["--server", &app.base, "--api-key", &key])
            .arg("--client-path")
            .arg(&client)
            .current_dir(&client),
    );
}

async fn typescript_client_runs_the_whole_flow() {
    let Some(npm_bin) = tools::or_skip("the TypeScript client flow", npm_tools()) else {
        return;
    };
    let app = TestApp::spawn_process(TestConfig::default()).await;
    let key = keyed(&app).await;
    // A copy of clients/typescript with the generated schema.d.ts beside flow.ts, and the
    // pinned node_modules (openapi-fetch, @types/node) linked in, so both tsc and node
    // resolve them from here.
    let project = app.dir.path().join("typescript");
    std::fs::create_dir(&project).expect("create the TypeScript folder");
    for file in ["flow.ts", "tsconfig.json", "package.json"] {
        std::fs::copy(
            format!("{ROOT}/clients/typescript/{file}"),
            project.join(file),
        )
        .expect("copy clients/typescript");
    }
    std::os::unix::fs::symlink(
        npm_bin.parent().expect("node_modules"),
        project.join("node_modules"),
    )
    .expect("link node_modules");
    run(
        &app,
        "openapi-typescript",
        Command::new(npm_bin.join("openapi-typescript"))
            .arg(format!("{ROOT}/openapi.yaml"))
            .arg("-o")
            .arg(project.join("schema.d.ts"))
            // Not the repository's redocly.yaml (see clients/typescript/redocly.yaml).
            .args([
                "--redocly",
                &format!("{ROOT}/clients/typescript/redocly.yaml"),
            ]),
    );
    // tsconfig.json has `strict` and `noEmitOnError`: the flow compiles only if it type-checks.
    run(
        &app,
        "tsc --strict",
        Command::new(npm_bin.join("tsc"))
            .arg("-p")
            .arg(&project)
            .arg("--strict"),
    );
    run(
        &app,
        "clients/typescript/flow.ts",
        Command::new("node")
            .arg(project.join("dist/flow.js"))
            .args(["--server", &app.base, "--api-key", &key])
            .current_dir(&project),
    );
}

/// Runs one step to its end; a failure shows the step's output and the end of the server's log.
fn run(app: &TestApp, what: &str, cmd: &mut Command) {
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n\
         --- the server's log ends with\n{}",
        out.status,
        server_log_tail(app),
    );
    println!("{what}: {:.1} s\n{stdout}", start.elapsed().as_secs_f64());
}

fn server_log_tail(app: &TestApp) -> String {
    let Ok(entries) = std::fs::read_dir(app.dir.path()) else {
        return String::new();
    };
    let mut log = String::new();
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with("serve-") {
            log += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
    }
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The python of the tools venv, with openapi-python-client beside it.
fn python_tools() -> Result<PathBuf, String> {
    let python = tools::python();
    let generator = python.with_file_name("openapi-python-client");
    if !python.exists() || !generator.exists() {
        return Err(format!(
            "no openapi-python-client beside {} (TEST_TOOLS_PYTHON)",
            python.display()
        ));
    }
    Ok(python)
}

/// The node_modules/.bin of the pinned npm tools, with what the TypeScript flow needs beside it,
/// and node itself.
fn npm_tools() -> Result<PathBuf, String> {
    // scripts/install-tools.sh installs into tools/node_modules; a machine's shared install is
    // the fallback.
    let bin = std::env::var_os("TEST_TOOLS_NPM_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            let local = Path::new(ROOT).join("tools/node_modules/.bin");
            local.exists().then_some(local)
        })
        .unwrap_or_else(|| PathBuf::from("/var/tmp/ferry-tools/npm/node_modules/.bin"));
    let modules = bin.parent().unwrap_or(&bin);
    for needed in [
        bin.join("openapi-typescript"),
        bin.join("tsc"),
        modules.join("openapi-fetch/package.json"),
        modules.join("@types/node/package.json"),
    ] {
        if !needed.exists() {
            return Err(format!(
                "{} is missing (TEST_TOOLS_NPM_BIN; `npm ci` in tools/)",
                needed.display()
            ));
        }
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(bin),
        _ => Err("node is not on PATH".into()),
    }
}
