//! What a hostile handler or client can make Ferry store is bounded: log lines are cut (stderr as
//! well as stdout), a job's stored log is a ring buffer within `limits.max_log_bytes_per_job`
//! while it runs, `/logs` answers within the same budget, progress text is capped and progress
//! events are coalesced while the job row stays current, a failed command's quoted stderr is
//! capped, and params too large to hand to a command are refused when the job is created.
//!
//! The hostile handler is `tests/handlers/flood.py`. Everything is measured by what is stored
//! (bytes, rows), never by time, with small configured caps so each test takes seconds.

use std::{path::Path, time::Duration};

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(60);

/// A test app whose configuration adds `limits` (TOML lines for its `[limits]` table) and the
/// hostile handler as kind `flood` (one attempt per job).
async fn app_with(limits: &str) -> TestApp {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    // The helpers write the configuration; this test adds to it and restarts the server (with
    // its workers) on it.
    app.kill9_server();
    let flood = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/handlers/flood.py");
    let toml = std::fs::read_to_string(&app.config_path).expect("read config");
    assert!(
        toml.contains("[limits]\n"),
        "the helpers' config has a [limits] table"
    );
    let toml = toml.replacen("[limits]\n", &format!("[limits]\n{limits}\n"), 1)
        + &format!(
            "\n[handlers.flood]\ncommand = [\"python3\", \"{}\"]\ntimeout = \"60s\"\n\
             max_attempts = 1\n",
            flood.display()
        );
    std::fs::write(&app.config_path, toml).expect("write config");
    app.start_server(&[]);
    app
}

/// SQL for the size in bytes of a text column, as a BIGINT on both databases.
fn octets(app: &TestApp, column: &str) -> String {
    match app.backend {
        Backend::Sqlite => format!("CAST(LENGTH(CAST({column} AS BLOB)) AS BIGINT)"),
        Backend::PostgresS3 => format!("CAST(OCTET_LENGTH({column}) AS BIGINT)"),
    }
}

/// Bytes of log lines stored (all jobs: each test runs one).
async fn stored_log_bytes(app: &TestApp) -> i64 {
    let sql = format!(
        "SELECT CAST(COALESCE(SUM({}), 0) AS BIGINT) FROM ferry_job_logs",
        octets(app, "line")
    );
    app.count_rows(&sql).await
}

async fn log_rows(app: &TestApp) -> i64 {
    app.count_rows("SELECT COUNT(*) FROM ferry_job_logs").await
}

async fn logs_of(app: &TestApp, id: &str, tail: u32) -> (String, Vec<String>) {
    let reply = app.job_logs(id, &format!("tail={tail}")).await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8(reply.bytes).expect("logs body");
    let lines = reply.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|l| l["line"].as_str().expect("line").to_owned())
        .collect();
    (text, lines)
}

async fn submit_flood(app: &TestApp, params: Value) -> String {
    let job = app.submit("flood", b"input".to_vec(), params).await;
    job["id"].as_str().expect("job id").to_owned()
}

async fn get_text(app: &TestApp, path: &str) -> String {
    let res = app.client.get(app.url(path)).send().await.expect("GET");
    assert_eq!(res.status(), 200, "GET {path}");
    res.text().await.expect("body")
}

async fn stderr_lines_are_cut_like_stdout_lines() {
    let app = app_with("max_log_line_bytes = 256").await;
    let id = submit_flood(&app, json!({"mode": "lines"})).await;
    app.wait_status(&id, "succeeded", WITHIN).await;
    let longest = format!("SELECT MAX({}) FROM ferry_job_logs", octets(&app, "line"));
    let longest = app.count_rows(&longest).await;
    assert!(
        longest <= 256,
        "every stored line is cut to limits.max_log_line_bytes; the longest has {longest} bytes"
    );
    let (_, lines) = logs_of(&app, &id, 100).await;
    for (start, stream) in [("[stderr] eee", "stderr"), ("ooo", "stdout")] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(start) && l.ends_with('…') && l.len() <= 256),
            "a cut {stream} line starting {start:?}: {lines:?}"
        );
    }
}

async fn lines_longer_than_any_buffer_are_cut_and_reading_goes_on() {
    let app = app_with("max_log_line_bytes = 256").await;
    let id = submit_flood(&app, json!({"mode": "huge_lines"})).await;
    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    assert_eq!(done["error"], Value::Null, "{done}");
    let (_, lines) = logs_of(&app, &id, 100).await;
    for start in ["[stderr] EEE", "OOO"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(start) && l.ends_with('…') && l.len() <= 256),
            "the 2 MiB line starting {start:?} is kept, cut: {lines:?}"
        );
    }
    for marker in [
        "[stderr] stderr after the huge lines",
        "stdout after the huge lines",
    ] {
        assert!(lines.iter().any(|l| l == marker), "{marker:?} in {lines:?}");
    }
}

async fn a_running_jobs_log_is_a_ring_buffer_within_its_byte_cap() {
    let cap = 20_000;
    let app = app_with(&format!(
        "max_log_line_bytes = 512\nmax_log_bytes_per_job = {cap}"
    ))
    .await;
    let gate = app.dir.path().join("gate");
    let id = submit_flood(
        &app,
        json!({"mode": "logs", "count": 5000, "size": 200, "gate": gate}),
    )
    .await;
    // While the handler floods, and once everything it printed is stored (its last line is),
    // the job's stored log stays within limits.max_log_bytes_per_job, each line counting 64
    // bytes more than its length, for its row.
    let start = std::time::Instant::now();
    loop {
        let bytes = stored_log_bytes(&app).await;
        let rows = log_rows(&app).await;
        assert!(
            bytes + 64 * rows <= cap,
            "the running job's log holds {bytes} bytes in {rows} lines; the cap is {cap}"
        );
        let (_, last) = logs_of(&app, &id, 1).await;
        if last.iter().any(|l| l == "[stderr] flood done") {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the flood's last line never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.job(&id).await["status"], "running");
    // The newest lines are the ones kept.
    let (_, lines) = logs_of(&app, &id, 1000).await;
    assert!(lines.len() > 10, "{lines:?}");
    assert!(
        lines[lines.len() - 2].starts_with("[stderr] 004999 "),
        "{:?}",
        &lines[lines.len() - 2..]
    );

    std::fs::write(&gate, "go").unwrap();
    app.wait_status(&id, "succeeded", WITHIN).await;
    let bytes = stored_log_bytes(&app).await;
    let rows = log_rows(&app).await;
    assert!(bytes + 64 * rows <= cap, "{bytes} bytes in {rows} lines");
}

async fn the_logs_endpoint_answers_within_the_jobs_log_cap() {
    let cap: usize = 20_000;
    let app = app_with(&format!(
        "max_log_line_bytes = 512\nmax_log_bytes_per_job = {cap}"
    ))
    .await;
    let gate = app.dir.path().join("gate");
    std::fs::write(&gate, "open").unwrap();
    let id = submit_flood(
        &app,
        json!({"mode": "logs", "count": 300, "size": 400, "gate": gate}),
    )
    .await;
    app.wait_status(&id, "succeeded", WITHIN).await;
    // Rows an older Ferry wrote, before lines were cut and logs capped (e.g. during a rolling
    // upgrade): 40 lines of 200 kB.
    for _ in 0..40 {
        app.execute_sql(
            "INSERT INTO ferry_job_logs (job_id, attempt, line, created_at_ms) \
             SELECT id, 1, replace(hex(zeroblob(100000)), '00', 'zz'), 0 FROM ferry_jobs",
            "INSERT INTO ferry_job_logs (job_id, attempt, line, created_at_ms) \
             SELECT id, 1, repeat('z', 200000), 0 FROM ferry_jobs",
        )
        .await;
    }
    let (text, lines) = logs_of(&app, &id, 1000).await;
    let line_bytes: usize = lines.iter().map(|l| l.len() + 64).sum();
    assert!(
        line_bytes <= cap,
        "the answer carries at most limits.max_log_bytes_per_job: {line_bytes} bytes"
    );
    assert!(
        text.len() <= cap + 100 * lines.len(),
        "{} bytes for {} lines",
        text.len(),
        lines.len()
    );
    assert!(lines.iter().all(|l| l.len() <= 512), "lines are cut");
    assert!(
        lines.last().is_some_and(|l| l.starts_with("zzz")),
        "the newest lines are the ones shown"
    );
}

async fn progress_text_is_capped() {
    let app = app_with("").await;
    let id = submit_flood(&app, json!({"mode": "progress_text"})).await;
    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    let stage = done["progress"]["stage"].as_str().expect("stage");
    let message = done["progress"]["message"].as_str().expect("message");
    assert!(stage.len() <= 1024 && stage.starts_with("sss"), "{stage}");
    assert!(
        message.len() <= 1024 && message.starts_with("mmm"),
        "{message}"
    );
    let stored = format!(
        "SELECT MAX({} + {}) FROM ferry_jobs",
        octets(&app, "progress_stage"),
        octets(&app, "progress_message")
    );
    assert!(app.count_rows(&stored).await <= 2048);
    let events = format!("SELECT MAX({}) FROM ferry_job_events", octets(&app, "data"));
    assert!(
        app.count_rows(&events).await <= 3000,
        "a progress event carries the capped text"
    );
    let (_, events) = app.get_json(&format!("/v1/jobs/{id}/events")).await;
    let progress = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "progress")
        .cloned()
        .expect("a progress event");
    assert_eq!(progress["data"]["message"], message);
}

async fn progress_is_current_on_the_job_and_coalesced_in_the_event_log() {
    let app = app_with("progress_event_interval = \"1h\"").await;
    let gate = app.dir.path().join("gate");
    let id = submit_flood(&app, json!({"mode": "progress", "gate": gate})).await;
    // The job row follows every flush: wait until it has shown a dozen different reports.
    let mut seen = std::collections::BTreeSet::new();
    let start = std::time::Instant::now();
    while seen.len() < 12 {
        assert!(start.elapsed() < WITHIN, "progress seen: {seen:?}");
        let job = app.job(&id).await;
        if let Some(message) = job["progress"]["message"].as_str() {
            seen.insert(message.to_owned());
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    std::fs::write(&gate, "go").unwrap();
    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    assert_eq!(done["progress"]["stage"], "done", "{done}");

    let (_, events) = app.get_json(&format!("/v1/jobs/{id}/events")).await;
    let events = events["items"].as_array().unwrap().clone();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as i64).collect::<Vec<_>>(),
        "ordered and gap-free"
    );
    let progress: Vec<&Value> = events.iter().filter(|e| e["kind"] == "progress").collect();
    // The first report, the change to stage "done" (and at most one left over at the end):
    // not one per flush.
    assert!(
        (2..=3).contains(&progress.len()),
        "{} progress events for {} reports the job row showed: {progress:#?}",
        progress.len(),
        seen.len()
    );
    assert_eq!(progress[0]["data"]["stage"], "steady");
    assert_eq!(progress.last().unwrap()["data"]["stage"], "done");
    let stored = app
        .count_rows("SELECT COUNT(*) FROM ferry_job_events WHERE kind = 'progress'")
        .await;
    assert_eq!(stored, progress.len() as i64);
}

async fn a_failed_commands_quoted_stderr_and_any_failure_detail_are_capped() {
    let app = app_with("").await;
    let id = submit_flood(&app, json!({"mode": "crash"})).await;
    let failed = app.wait_status(&id, "failed", WITHIN).await;
    let detail = failed["error"]["detail"].as_str().expect("detail");
    assert!(detail.len() <= 8192, "{} bytes quoted", detail.len());
    assert!(
        detail.starts_with("the command exited with status 3")
            && detail.contains("\nline 29 ccc")
            && detail.ends_with("cccc…\nthe last words"),
        "the end of stderr is quoted: …{}",
        &detail[detail.len().saturating_sub(200)..]
    );
    let one = get_text(&app, &format!("/v1/jobs/{id}")).await;
    let page = get_text(&app, "/v1/jobs").await;
    assert!(
        one.len() < 12_000 && page.len() < 12_000,
        "{} {}",
        one.len(),
        page.len()
    );
    // Any failure's detail is capped, e.g. an error the handler declares.
    let id = submit_flood(&app, json!({"mode": "declare"})).await;
    let failed = app.wait_status(&id, "failed", WITHIN).await;
    let detail = failed["error"]["detail"].as_str().expect("detail");
    assert!(
        detail.len() <= 8192 && detail.starts_with("ddd"),
        "{}",
        detail.len()
    );
    let stored = format!("SELECT MAX({}) FROM ferry_jobs", octets(&app, "error"));
    assert!(app.count_rows(&stored).await < 9000);
}

async fn params_too_large_for_a_command_are_refused_at_creation() {
    let app = app_with("max_params_bytes = 2000").await;
    let upload = app.upload(b"scan".to_vec()).await;
    // Beyond Linux's 128 KiB limit for one environment variable (FERRY_PARAMS).
    for size in [200_000, 2_000] {
        let (status, body) = app
            .post_job(json!({"kind": "flood", "inputs": {"scan": upload["id"]},
                             "params": {"mode": "lines", "blob": "b".repeat(size)}}))
            .await;
        assert_problem(status, &body, 422, "invalid_field");
        assert_eq!(body["errors"][0]["field"], "params", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("2000"),
            "the detail names the limit: {body}"
        );
    }
    // The one-request form: refused before the body is read.
    let params = json!({"mode": "lines", "blob": "b".repeat(2_000)}).to_string();
    let params: String = url::form_urlencoded::byte_serialize(params.as_bytes()).collect();
    let query = format!("params_json={params}");
    let reply = app.create_job_from_file("model", &query, "scan", &[]).await;
    let body = reply.body;
    assert_problem(reply.status, &body, 422, "invalid_field");
    assert_eq!(body["errors"][0]["field"], "params_json", "{body}");
    // Up to the limit is fine, and the handler gets them.
    let (status, job) = app
        .post_job(json!({"kind": "model", "inputs": {"scan": upload["id"]},
                         "params": {"pad": "p".repeat(1_900)}}))
        .await;
    assert_eq!(status, 202, "{job}");
    app.wait_status(job["id"].as_str().unwrap(), "succeeded", WITHIN)
        .await;
}

async fn a_deleted_job_gets_no_log_lines_after_its_deletion() {
    let app = app_with("").await;
    let pid_file = app.dir.path().join("chatter.pid");
    let id = submit_flood(&app, json!({"mode": "chatter", "pid_file": pid_file})).await;
    let pid = read_pid(&pid_file, WITHIN).await;
    let start = std::time::Instant::now();
    while log_rows(&app).await < 10 {
        assert!(
            start.elapsed() < WITHIN,
            "the handler's lines never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.delete_job(&id).await.status, 204);
    // The handler ignores SIGTERM and logs on until SIGKILL; then its worker gives the attempt
    // up, after its last flush.
    wait_process_gone(pid, WITHIN, "the handler is killed").await;
    let start = std::time::Instant::now();
    // Given up either way: the worker noticed the lost lease first, or the handler's end (DELETE
    // kills the job's processes) and then found its outcome refused.
    let given_up = |logs: String| {
        logs.contains("lease lost; attempt abandoned")
            || logs.contains("attempt outcome dropped: the lease was lost")
    };
    while !given_up(server_logs(&app)) {
        assert!(start.elapsed() < WITHIN, "the attempt was never given up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        log_rows(&app).await,
        0,
        "log lines written after the deletion"
    );
}

/// Everything the test's `ferry serve` processes logged.
fn server_logs(app: &TestApp) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(app.dir.path())
        .expect("test dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("serve-") && name.ends_with(".log") {
            all += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
    }
    all
}

crate::matrix!(
    stderr_lines_are_cut_like_stdout_lines,
    lines_longer_than_any_buffer_are_cut_and_reading_goes_on,
    a_running_jobs_log_is_a_ring_buffer_within_its_byte_cap,
    the_logs_endpoint_answers_within_the_jobs_log_cap,
    progress_text_is_capped,
    progress_is_current_on_the_job_and_coalesced_in_the_event_log,
    a_failed_commands_quoted_stderr_and_any_failure_detail_are_capped,
    params_too_large_for_a_command_are_refused_at_creation,
    a_deleted_job_gets_no_log_lines_after_its_deletion,
);
