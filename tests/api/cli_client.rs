//! `ferry` as a client: the real binary (`submit`, `jobs`, `results`, `uploads`) against a real
//! server, its output parsed, its exit codes and messages checked.

use std::{io::Read, net::TcpListener, path::Path, process::Output};

use serde_json::Value;

use crate::{
    client::items,
    helpers::{BIN, TestApp, bytes, sha256_hex},
};

/// Runs `ferry ARGS…` in `dir` against `app` (found through `FERRY_SERVER`, the environment
/// layer), with a configuration folder of its own so no user file is read.
async fn ferry(app: &TestApp, dir: &Path, args: &[&str]) -> Output {
    ferry_env(dir, args, &[("FERRY_SERVER", app.base.as_str())]).await
}

async fn ferry_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env_remove("FERRY_SERVER")
        .env_remove("FERRY_API_KEY")
        .env_remove("FERRY_CLIENT_CONFIG");
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().await.expect("ferry runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The command succeeded; its stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn json(out: &Output) -> Value {
    serde_json::from_str(&ok(out)).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

async fn submit_waits_and_downloads_results_whose_digests_match_the_inputs() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (bytes(3 * 1024 * 1024 + 5, 41), bytes(70_000, 42));
    std::fs::write(dir.path().join("a.bin"), &a).unwrap();
    std::fs::write(dir.path().join("b.bin"), &b).unwrap();
    let args = [
        "submit",
        "a.bin",
        "b.bin",
        "--kind",
        "digest",
        "--param",
        "chunk_size=65536",
        "--wait",
        "--out",
        "out",
        "--json",
    ];
    let doc = json(&ferry(&app, dir.path(), &args).await);
    assert_eq!(doc["job"]["status"], "succeeded", "{doc:#}");
    assert_eq!(
        doc["job"]["params"]["chunk_size"], 65536,
        "--param values parse as JSON"
    );
    let uploads: Vec<&Value> = doc["uploads"].as_array().unwrap().iter().collect();
    assert_eq!(uploads[0]["sha256"], sha256_hex(&a));
    assert_eq!(uploads[1]["sha256"], sha256_hex(&b));
    let results = doc["results"].as_array().unwrap();
    assert!(
        results.iter().any(|r| r["name"] == "report.json"),
        "{doc:#}"
    );
    for result in results {
        let on_disk = std::fs::read(dir.path().join(result["path"].as_str().unwrap())).unwrap();
        assert_eq!(sha256_hex(&on_disk), result["sha256"]);
    }
    let report: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/report.json")).unwrap())
            .unwrap();
    let digests: Vec<(&Value, &Value)> = report["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (&i["name"], &i["sha256"]))
        .collect();
    let (a_hex, b_hex) = (Value::from(sha256_hex(&a)), Value::from(sha256_hex(&b)));
    let want = [
        (&Value::from("a.bin"), &a_hex),
        (&Value::from("b.bin"), &b_hex),
    ];
    assert_eq!(digests, want);

    // Without --wait and --json: the job id alone on stdout; --input-name names the input.
    let text = ok(&ferry(
        &app,
        dir.path(),
        &["submit", "a.bin", "--kind", "noop", "--input-name", "scan"],
    )
    .await);
    let id = text.trim();
    assert!(id.starts_with("job_"), "{text}");
    let job = app.job(id).await;
    assert_eq!(job["inputs"][0]["name"], "scan");
}

async fn a_failing_job_exits_1_with_its_error() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scan.bin"), bytes(1000, 43)).unwrap();
    let args = [
        "submit",
        "scan.bin",
        "--kind",
        "digest",
        "--param",
        "chunk_size=1",
        "--wait",
    ];
    let out = ferry(&app, dir.path(), &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("failed: params.chunk_size must be an integer"),
        "{err}"
    );
    assert!(err.contains("(invalid_input)"), "{err}");
    // Not a terminal: no bars, no control characters.
    assert!(!err.contains('\u{1b}'), "{err:?}");

    // A job that cannot be created: exit 3 with the problem, and the upload made for it is
    // deleted rather than left to expire.
    let args = ["submit", "scan.bin", "--kind", "no-such-kind"];
    let out = ferry(&app, dir.path(), &args).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("(unknown_kind, HTTP 422)"),
        "{}",
        stderr(&out)
    );
    assert!(items(&app.list_uploads("attached=false").await).is_empty());
}

async fn jobs_results_and_uploads_commands_work_on_a_live_server() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scan.bin"), bytes(50_000, 44)).unwrap();
    let id = ok(&ferry(&app, dir.path(), &["submit", "scan.bin", "--kind", "model"]).await);
    let id = id.trim();
    app.wait_status(id, "succeeded", std::time::Duration::from_secs(60))
        .await;

    let page = json(
        &ferry(
            &app,
            dir.path(),
            &["jobs", "ls", "--kind", "model", "--json"],
        )
        .await,
    );
    assert_eq!(page["items"][0]["id"], id);
    let none = ferry(
        &app,
        dir.path(),
        &["jobs", "ls", "--status", "failed", "--json"],
    )
    .await;
    assert_eq!(json(&none)["items"], Value::Array(vec![]));
    let text = ok(&ferry(&app, dir.path(), &["jobs", "ls"]).await);
    assert!(text.contains(id) && text.contains("succeeded"), "{text}");
    let shown = ok(&ferry(&app, dir.path(), &["jobs", "show", id]).await);
    assert!(shown.contains("status:      succeeded"), "{shown}");
    let logs = ok(&ferry(&app, dir.path(), &["jobs", "logs", id]).await);
    assert!(
        logs.contains(&format!("model starting: job {id}")),
        "{logs}"
    );
    let events = json(&ferry(&app, dir.path(), &["jobs", "events", id, "--json"]).await);
    let kinds: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, app.event_kinds(id).await);

    let listed = json(&ferry(&app, dir.path(), &["results", "ls", id, "--json"]).await);
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"masks/mask.json"), "{names:?}");
    let got = ok(&ferry(
        &app,
        dir.path(),
        &["results", "get", id, "masks/mask.json", "--out", "res"],
    )
    .await);
    assert_eq!(got.trim(), "res/masks/mask.json");
    let served = app.download_result(id, "masks/mask.json", &[]).await;
    let on_disk = std::fs::read(dir.path().join("res/masks/mask.json")).unwrap();
    assert_eq!(on_disk, served.bytes);
    let missing = ferry(&app, dir.path(), &["results", "get", id, "nope.txt"]).await;
    assert_eq!(missing.status.code(), Some(2));

    // Cancel a running job, then delete it: afterwards the server says it is gone.
    let sleeper = ok(&ferry(
        &app,
        dir.path(),
        &[
            "submit",
            "scan.bin",
            "--kind",
            "model",
            "--param",
            "mode=sleep",
        ],
    )
    .await);
    let sleeper = sleeper.trim();
    app.wait_status(sleeper, "running", std::time::Duration::from_secs(30))
        .await;
    ok(&ferry(&app, dir.path(), &["jobs", "cancel", sleeper]).await);
    app.wait_status(sleeper, "canceled", std::time::Duration::from_secs(30))
        .await;
    ok(&ferry(&app, dir.path(), &["jobs", "rm", sleeper]).await);
    let gone = ferry(&app, dir.path(), &["jobs", "show", sleeper]).await;
    assert_eq!(gone.status.code(), Some(3));
    assert!(
        stderr(&gone).contains("(job_not_found, HTTP 404)"),
        "{}",
        stderr(&gone)
    );

    // Uploads: list the unattached one, delete it, and deleting it again is a clear error.
    let upload = app.upload(bytes(100, 45)).await;
    let upload_id = upload["id"].as_str().unwrap();
    let unattached = ferry(
        &app,
        dir.path(),
        &["uploads", "ls", "--attached", "false", "--json"],
    );
    let unattached = json(&unattached.await);
    let ids: Vec<&Value> = items_of(&unattached);
    assert_eq!(ids, [&upload["id"]]);
    ok(&ferry(&app, dir.path(), &["uploads", "rm", upload_id]).await);
    assert!(items(&app.list_uploads("attached=false").await).is_empty());
    let again = ferry(&app, dir.path(), &["uploads", "rm", upload_id]).await;
    assert_eq!(again.status.code(), Some(3));
    assert!(
        stderr(&again).contains("upload_not_found"),
        "{}",
        stderr(&again)
    );
}

fn items_of(page: &Value) -> Vec<&Value> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["id"])
        .collect()
}

async fn the_server_comes_from_flag_env_or_config_file_and_bad_ones_are_clear() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    // The configuration file alone.
    let config = dir.path().join("config/ferry");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("client.toml"),
        format!("server = \"{}\"\n", app.base),
    )
    .unwrap();
    ok(&ferry_env(dir.path(), &["jobs", "ls"], &[]).await);
    // The environment overrides the file, the flag the environment.
    let unreachable = [("FERRY_SERVER", "http://127.0.0.1:1")];
    let out = ferry_env(dir.path(), &["jobs", "ls"], &unreachable).await;
    assert_eq!(out.status.code(), Some(3));
    let err = stderr(&out);
    assert!(
        err.starts_with("ferry: cannot reach the server at http://127.0.0.1:1"),
        "{err}"
    );
    let flag = ["jobs", "ls", "--server", app.base.as_str()];
    ok(&ferry_env(dir.path(), &flag, &unreachable).await);
    // Not a URL: a usage error.
    let out = ferry_env(dir.path(), &["jobs", "ls", "--server", "nowhere"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not an http:// or https:// URL"));
    // The help documents the exit codes.
    let help = ok(&ferry_env(dir.path(), &["submit", "--help"], &[]).await);
    assert!(
        help.contains("Exit codes: 0 done; 1 the job failed"),
        "{help}"
    );
}

/// The key goes out as `Authorization: Bearer`: a listener that reads one request sees it.
async fn the_api_key_is_sent_as_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let head = tokio::task::spawn_blocking(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        // Dropping the stream unanswered: the client reports a failed request.
        String::from_utf8_lossy(&seen).into_owned()
    });
    let env = [("FERRY_API_KEY", "s3cret")];
    let out = ferry_env(dir.path(), &["jobs", "ls", "--server", &server], &env).await;
    assert_eq!(out.status.code(), Some(3));
    let head = head.await.unwrap().to_ascii_lowercase();
    assert!(head.contains("authorization: bearer s3cret"), "{head}");
}

/// Against a server that requires keys: without one, a clear refusal (exit 3, the problem's
/// detail and code); with one, the whole `submit --wait` flow.
async fn a_server_that_requires_keys_is_used_with_one() {
    let app = TestApp::spawn().await;
    let key = app.create_key("default", &["jobs:read", "jobs:write", "results:read"]);
    app.wait_keys_required(&app.base).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("scan.bin"), bytes(10_000, 43)).unwrap();

    let refused = ferry(&app, dir.path(), &["jobs", "ls"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let said = stderr(&refused);
    assert!(
        said.contains("unauthenticated") && said.contains("401"),
        "{said}"
    );

    let env = [
        ("FERRY_SERVER", app.base.as_str()),
        ("FERRY_API_KEY", key.as_str()),
    ];
    let args = ["submit", "scan.bin", "--kind", "digest", "--wait", "--json"];
    let doc = json(&ferry_env(dir.path(), &args, &env).await);
    assert_eq!(doc["job"]["status"], "succeeded", "{doc:#}");
    let listed = json(&ferry_env(dir.path(), &["jobs", "ls", "--json"], &env).await);
    assert_eq!(items_of(&listed).len(), 1, "{listed:#}");
}

/// `jobs show --wait` follows a job that is waiting on a gate (long-polling) and shows it once
/// it has finished.
async fn jobs_show_wait_follows_the_job_to_its_end() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    let upload = app.upload(bytes(1000, 3)).await;
    let (status, job) = app
        .post_job(
            serde_json::json!({"kind": "model", "inputs": {"scan": upload["id"]},
                                     "params": {"gate": gate}}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "running", std::time::Duration::from_secs(60))
        .await;
    let args = ["jobs", "show", "--wait", "--json", id];
    let show = ferry(&app, dir.path(), &args);
    let open_gate = async {
        // Lets the command start following first (not required for the outcome).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        std::fs::write(&gate, "go").unwrap();
    };
    let (shown, ()) = tokio::join!(show, open_gate);
    let shown = json(&shown);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["result_count"], 2, "{shown}");
}

/// `ferry tag`, `ferry kinds`, `ferry jobs rerun` and `rerun-all`: a job fails on a broken
/// version, the tag moves to the fix from the command line, and the failed jobs are re-run on it.
async fn tags_and_reruns_work_from_the_command_line() {
    let app = TestApp::spawn_with(crate::helpers::TestConfig {
        extra_toml: crate::versions::versioned_kind(),
        ..crate::helpers::TestConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let upload = app.upload(bytes(500, 60)).await["id"].clone();
    let mut failed = Vec::new();
    for kind in ["seg", "seg@v1"] {
        let reply = app
            .create_job(
                &serde_json::json!({"kind": kind, "inputs": {"scan": upload}}),
                &[],
            )
            .await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        let id = reply.body["id"].as_str().unwrap().to_owned();
        app.wait_status(&id, "failed", std::time::Duration::from_secs(60))
            .await;
        failed.push(id);
    }

    let moved = json(
        &ferry(
            &app,
            dir.path(),
            &["tag", "seg", "production", "v2", "--json"],
        )
        .await,
    );
    assert_eq!(moved["version"], "v2", "{moved}");
    let text = ok(&ferry(&app, dir.path(), &["kinds"]).await);
    assert!(text.contains("seg -> v2"), "{text}");
    let shown = json(&ferry(&app, dir.path(), &["kinds", "seg", "--json"]).await);
    assert_eq!(shown["kind"]["resolves_to"], "v2", "{shown}");
    assert_eq!(shown["tag_moves"][0]["to_version"], "v2", "{shown}");
    let refused = ferry(&app, dir.path(), &["tag", "seg", "production", "v9"]).await;
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("invalid_field"),
        "{}",
        stderr(&refused)
    );

    // The job that followed the tag is re-run on the fix; the one that named v1 is re-run by
    // the bulk command (the first, re-run already, is left out).
    let rerun = json(&ferry(&app, dir.path(), &["jobs", "rerun", &failed[0], "--json"]).await);
    assert_eq!(
        (rerun["version"].as_str(), rerun["rerun_of"].as_str()),
        (Some("v2"), Some(failed[0].as_str())),
        "{rerun}"
    );
    let args = ["jobs", "rerun-all", "--kind", "seg", "--to", "v3", "--json"];
    let batch = json(&ferry(&app, dir.path(), &args).await);
    assert_eq!(batch["created"], 1, "{batch}");
    assert_eq!(batch["items"][0]["rerun_of"], failed[1].as_str(), "{batch}");
    assert_eq!(batch["items"][0]["version"], "v3", "{batch}");

    ok(&ferry(&app, dir.path(), &["tag", "seg", "canary", "v3"]).await);
    ok(&ferry(&app, dir.path(), &["tag", "seg", "canary", "--delete"]).await);
    let gone = ferry(&app, dir.path(), &["tag", "seg", "canary", "--delete"]).await;
    assert!(stderr(&gone).contains("tag_not_found"), "{}", stderr(&gone));
}

crate::matrix!(
    tags_and_reruns_work_from_the_command_line,
    jobs_show_wait_follows_the_job_to_its_end,
    submit_waits_and_downloads_results_whose_digests_match_the_inputs,
    a_failing_job_exits_1_with_its_error,
    jobs_results_and_uploads_commands_work_on_a_live_server,
    the_server_comes_from_flag_env_or_config_file_and_bad_ones_are_clear,
    the_api_key_is_sent_as_a_bearer_token,
    a_server_that_requires_keys_is_used_with_one,
);
