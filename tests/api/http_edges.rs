//! HTTP and process edges: `HEAD` on every readable resource (result downloads with their
//! ranges and conditions included), the `Allow` header of a 405, log formats on stderr, and a
//! relative `--data-dir` on the command line.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(30);

/// One response, as compared between `GET` and `HEAD`.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Every header but `Date`, which may tick between two requests.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = app.client.request(method.clone(), app.url(path));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .filter(|(name, _)| *name != "date")
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().expect("ASCII header").to_owned(),
            )
        })
        .collect();
    let body = res.bytes().await.expect("body").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends `GET` and `HEAD` with the same headers and checks that `HEAD` answers the same status
/// and headers, `Content-Length` included, without a body; returns the `GET` answer.
async fn head_matches_get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> Answer {
    let get = send(app, reqwest::Method::GET, path, headers).await;
    let head = send(app, reqwest::Method::HEAD, path, headers).await;
    let what = format!("HEAD {path} {headers:?}");
    assert_eq!(head.status, get.status, "{what}: status differs from GET");
    assert_eq!(head.headers, get.headers, "{what}: headers differ from GET");
    assert!(head.body.is_empty(), "{what}: a body was sent");
    if get.status != 304 {
        assert_eq!(
            get.headers.get("content-length"),
            Some(&get.body.len().to_string()),
            "GET {path}: Content-Length is not the body's length"
        );
    }
    get
}

async fn head_answers_like_get_on_every_readable_resource() {
    let app = TestApp::spawn().await;
    let job = app
        .submit("digest", bytes(30_000, 70), json!({"chunk_size": 4096}))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    let upload = job["inputs"][0]["upload_id"].as_str().unwrap();
    let missing = "/v1/jobs/job_00000000000000000000000000000000";
    let cases: Vec<(String, u16)> = vec![
        ("/healthz".into(), 200),
        ("/readyz".into(), 200),
        (format!("/v1/uploads/{upload}"), 200),
        (
            "/v1/uploads/upl_00000000000000000000000000000000".into(),
            404,
        ),
        ("/v1/jobs".into(), 200),
        ("/v1/jobs?status=succeeded&limit=1".into(), 200),
        ("/v1/jobs?limit=0".into(), 400),
        (format!("/v1/jobs/{id}"), 200),
        (missing.into(), 404),
        (format!("/v1/jobs/{id}/events?after=1"), 200),
        (format!("{missing}/events"), 404),
        (format!("/v1/jobs/{id}/logs?tail=5"), 200),
        (format!("/v1/jobs/{id}/results"), 200),
        (format!("{missing}/results"), 404),
        (format!("/v1/jobs/{id}/results/report.json"), 200),
        (format!("/v1/jobs/{id}/results/absent.json"), 404),
        (format!("{missing}/results/report.json"), 404),
    ];
    for (path, status) in &cases {
        let (path, status) = (path.as_str(), *status);
        let get = head_matches_get(&app, path, &[]).await;
        assert_eq!(get.status, status, "GET {path}");
        if status >= 400 {
            assert_eq!(
                get.headers["content-type"], "application/problem+json",
                "GET {path}"
            );
        }
    }
}

async fn head_of_a_result_honours_ranges_and_conditions() {
    let app = TestApp::spawn().await;
    let job = app
        .submit("digest", bytes(50_000, 71), json!({"chunk_size": 4096}))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    let path = format!("/v1/jobs/{id}/results/report.json");
    let whole = head_matches_get(&app, &path, &[]).await;
    assert_eq!(whole.status, 200);
    let size = whole.body.len();
    let etag = whole.headers["etag"].clone();
    let sha = sha256_hex(&whole.body);
    assert_eq!(etag, format!("\"{sha}\""));

    let part = head_matches_get(&app, &path, &[("range", "bytes=10-19")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.headers["content-range"], format!("bytes 10-19/{size}"));
    assert_eq!(part.headers["content-length"], "10");
    assert_eq!(part.body, whole.body[10..20]);

    let tail = head_matches_get(&app, &path, &[("range", "bytes=-7")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, whole.body[size - 7..]);

    // Several ranges: the whole result, as before.
    let multi = head_matches_get(&app, &path, &[("range", "bytes=0-1,5-6")]).await;
    assert_eq!(multi.status, 200);
    assert_eq!(multi.body, whole.body);

    // A Range that does not parse is ignored (RFC 9110 §14.2): the whole result.
    let ignored = head_matches_get(&app, &path, &[("range", "bytes=x-")]).await;
    assert_eq!(ignored.status, 200);
    assert_eq!(ignored.body, whole.body);

    for unsatisfiable in [format!("bytes={size}-"), "bytes=-0".into()] {
        let bad = head_matches_get(&app, &path, &[("range", &unsatisfiable)]).await;
        let body: Value = serde_json::from_slice(&bad.body).expect("a problem");
        assert_problem(bad.status, &body, 416, "range_not_satisfiable");
        assert_eq!(bad.headers["content-range"], format!("bytes */{size}"));
    }

    // If-None-Match: our tag, its weak form, one of a list, or `*` → 304; another tag → 200.
    for tags in [
        etag.clone(),
        format!("W/{etag}"),
        format!("\"0000\", W/{etag}"),
        "*".into(),
    ] {
        let cached = head_matches_get(&app, &path, &[("if-none-match", &tags)]).await;
        assert_eq!(cached.status, 304, "If-None-Match: {tags}");
        assert_eq!(cached.headers["etag"], etag);
        assert!(cached.body.is_empty());
    }
    let other = head_matches_get(&app, &path, &[("if-none-match", "\"0000\"")]).await;
    assert_eq!(other.status, 200);
    // The condition is decided before the range.
    let both = head_matches_get(
        &app,
        &path,
        &[("if-none-match", &etag), ("range", "bytes=0-0")],
    )
    .await;
    assert_eq!(both.status, 304);
}

/// Deletes every stored object under `sub` (simulating storage that lost them).
async fn delete_blobs(app: &TestApp, sub: &str) {
    match app.backend {
        Backend::Sqlite => {
            for file in app.blob_files(sub).await {
                std::fs::remove_file(file).expect("delete blob file");
            }
        }
        Backend::PostgresS3 => {
            let blobs = app.blobs();
            blobs
                .delete_prefix(&object_store::path::Path::from(sub))
                .await
                .expect("delete blobs");
        }
    }
    assert!(app.blob_files(sub).await.is_empty(), "{sub} still stored");
}

async fn head_of_a_result_whose_bytes_are_gone_is_the_same_404() {
    let app = TestApp::spawn().await;
    let job = app.submit("digest", bytes(5_000, 72), json!({})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    let hex = id.trim_start_matches("job_");
    delete_blobs(&app, &format!("jobs/{hex}/results")).await;
    let path = format!("/v1/jobs/{id}/results/report.json");
    for range in [None, Some("bytes=0-9")] {
        let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
        let gone = head_matches_get(&app, &path, &headers).await;
        let body: Value = serde_json::from_slice(&gone.body).expect("a problem");
        assert_problem(gone.status, &body, 404, "blob_missing");
    }
}

async fn allow_lists_head_wherever_get_is_served() {
    let app = TestApp::spawn().await;
    let job = "/v1/jobs/job_00000000000000000000000000000000";
    for (method, path, allow) in [
        ("PUT", job.to_owned(), "GET, HEAD, DELETE"),
        ("POST", "/healthz".to_owned(), "GET, HEAD"),
        ("PATCH", format!("{job}/results/a/b.json"), "GET, HEAD"),
        ("PUT", "/v1/uploads".to_owned(), "POST, GET, HEAD"),
        ("HEAD", format!("{job}/cancel"), "POST"),
        ("DELETE", "/v1/jobs".to_owned(), "POST, GET, HEAD"),
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let answer = send(&app, method.clone(), &path, &[]).await;
        assert_eq!(answer.status, 405, "{method} {path}");
        let mut listed: Vec<&str> = answer.headers["allow"].split(", ").collect();
        let mut want: Vec<&str> = allow.split(", ").collect();
        listed.sort();
        want.sort();
        assert_eq!(listed, want, "{method} {path}: Allow");
        assert_eq!(answer.headers["content-type"], "application/problem+json");
        if method != reqwest::Method::HEAD {
            let body: Value = serde_json::from_slice(&answer.body).expect("a problem");
            assert_problem(answer.status, &body, 405, "method_not_allowed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes started by hand: a server with extra flags, from a chosen folder.

/// Replaces the test's server by `ferry serve` with `args`, run from `cwd` with `env` added;
/// returns the file its stderr goes to.
fn relaunch(app: &mut TestApp, args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> PathBuf {
    app.kill9_server();
    app.start_server_in(args, cwd, env)
}

/// Stops the server with SIGTERM and waits for it to exit, so its log is complete.
async fn stop_server(app: &mut TestApp) {
    let mut child = app.take_server_process().expect("a server process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let start = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ferry serve did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job that runs through the worker, so the log has lines about a job.
async fn run_a_job(app: &TestApp) -> String {
    let job = app.submit("noop", bytes(100, 73), json!({})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_status(&id, "succeeded", WITHIN).await;
    let (status, _) = app.get_json("/healthz").await;
    assert_eq!(status, 200);
    id
}

async fn json_logs_are_one_object_per_line() {
    let mut app = TestApp::spawn_process(TestConfig::default()).await;
    let cwd = app.dir.path().to_owned();
    let log = relaunch(&mut app, &["--log-format", "json"], &cwd, &[]);
    let id = run_a_job(&app).await;
    stop_server(&mut app).await;
    let text = std::fs::read_to_string(&log).expect("read log");
    let lines: Vec<Value> = text
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"));
            for field in ["timestamp", "level", "target"] {
                assert!(value[field].is_string(), "no {field}: {line}");
            }
            value
        })
        .collect();
    let has = |pred: &dyn Fn(&Value) -> bool| lines.iter().any(pred);
    assert!(
        has(&|l| l["message"] == "ferry started" && l["level"] == "INFO"),
        "{text}"
    );
    // Request lines of the HTTP layer (written through `log`) come out as JSON too.
    assert!(has(&|l| l["target"] == "ferry::http"), "{text}");
    assert!(
        has(&|l| l.to_string().contains(&id)),
        "no line about {id}:\n{text}"
    );
    assert!(has(&|l| l["message"] == "shutting down"), "{text}");
}

async fn text_logs_carry_no_escape_codes_when_stderr_is_a_file() {
    let mut app = TestApp::spawn_process(TestConfig::default()).await;
    let cwd = app.dir.path().to_owned();
    let log = relaunch(&mut app, &[], &cwd, &[]);
    run_a_job(&app).await;
    stop_server(&mut app).await;
    let text = std::fs::read_to_string(&log).expect("read log");
    assert!(text.contains("ferry started"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "ANSI escape codes in a log file:\n{text:?}"
    );
}

async fn a_relative_data_dir_gives_handlers_absolute_folders() {
    let mut app = TestApp::spawn_process(TestConfig::default()).await;
    // Run from a folder that is not the configuration file's, where handlers run.
    let cwd = app.dir.path().join("elsewhere");
    std::fs::create_dir(&cwd).unwrap();
    relaunch(&mut app, &["--data-dir", "relative-data"], &cwd, &[]);
    let job = app
        .submit("model", bytes(2_000, 74), json!({"echo_env": true}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_status(id, "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 1, "{done}");
    let reply = app.download_result(id, "env.json", &[]).await;
    assert_eq!(reply.status, 200);
    let seen: Value = serde_json::from_slice(&reply.bytes).expect("env.json");
    let work = cwd.join("relative-data").join("work");
    for var in ["FERRY_INPUT_DIR", "FERRY_OUTPUT_DIR"] {
        let dir = Path::new(seen["env"][var].as_str().unwrap());
        assert!(dir.is_absolute(), "{var} is relative: {seen}");
        assert!(
            dir.starts_with(&work),
            "{var} is not under {}: {seen}",
            work.display()
        );
    }
    assert_eq!(
        Path::new(seen["cwd"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        app.dir.path().canonicalize().unwrap(),
        "handlers run from the configuration file's folder"
    );
}

crate::matrix!(
    head_answers_like_get_on_every_readable_resource,
    head_of_a_result_honours_ranges_and_conditions,
    head_of_a_result_whose_bytes_are_gone_is_the_same_404,
    allow_lists_head_wherever_get_is_served,
    json_logs_are_one_object_per_line,
    text_logs_carry_no_escape_codes_when_stderr_is_a_file,
    a_relative_data_dir_gives_handlers_absolute_folders,
);

// ---------------------------------------------------------------------------------------------
// Without HTTP: where `log_format` comes from.

/// Runs `ferry migrate` in a fresh folder holding `toml` as ferry.toml; returns (success,
/// stderr).
fn migrate(toml: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERRY_")) {
        cmd.env_remove(key);
    }
    let out = cmd
        .args(args)
        .arg("migrate")
        .current_dir(dir.path())
        .env("RUST_LOG", "debug")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn all_json(stderr: &str) -> bool {
    !stderr.is_empty()
        && stderr
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| v.is_object()))
}

#[test]
fn log_format_comes_from_the_file_the_environment_and_the_flag_in_that_order() {
    let (ok, stderr) = migrate("log_format = \"json\"\n", &[], &[]);
    assert!(ok && all_json(&stderr), "{stderr}");
    let (ok, stderr) = migrate("", &[], &[("FERRY_LOG_FORMAT", "json")]);
    assert!(ok && all_json(&stderr), "{stderr}");
    let (ok, stderr) = migrate("log_format = \"text\"\n", &["--log-format", "json"], &[]);
    assert!(ok && all_json(&stderr), "{stderr}");
    // The flag wins over the environment.
    let (ok, stderr) = migrate(
        "",
        &["--log-format", "text"],
        &[("FERRY_LOG_FORMAT", "json")],
    );
    assert!(ok && !stderr.is_empty(), "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_err()),
        "{stderr}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
    // A bad value is a configuration error, printed before logging is set up.
    let (ok, stderr) = migrate("log_format = \"xml\"\n", &[], &[]);
    assert!(!ok);
    assert!(
        stderr.starts_with("ferry: invalid configuration") && stderr.contains("xml"),
        "{stderr}"
    );
}
