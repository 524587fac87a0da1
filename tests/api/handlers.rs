//! The external-command handler under its protocol, with real Python processes: progress,
//! intermediate results while running, final outputs, logs, retries, declared errors, timeout
//! and cancel (the process group is gone afterwards).

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(30);

async fn an_intermediate_result_is_visible_while_the_job_still_runs() {
    let app = TestApp::spawn().await;
    let gate = app.dir.path().join("gate");
    let data = bytes(20_000, 40);
    let job = app
        .submit("model", data.clone(), json!({"gate": gate}))
        .await;
    let id = job["id"].as_str().unwrap();
    let running = app.wait_job(id, WITHIN, |j| j["result_count"] == 1).await;
    assert_eq!(
        running["status"], "running",
        "the job must still be running: {running}"
    );
    let results = app.results(id).await;
    assert_eq!(results[0]["name"], "preview.txt");
    assert_eq!(results[0]["final"], false);
    assert_eq!(results[0]["content_type"], "text/plain");
    let preview = app.get(results[0]["url"].as_str().unwrap()).await;
    assert_eq!(preview.bytes, b"intermediate\n");
    let running = app
        .wait_job(id, WITHIN, |j| j["progress"]["percent"] == 50.0)
        .await;
    assert_eq!(running["progress"]["stage"], "thinking");

    std::fs::write(&gate, "go").unwrap();
    let done = app.wait_status(id, "succeeded", WITHIN).await;
    assert_eq!(done["result_count"], 2);
    let results = app.results(id).await;
    let mask = results
        .iter()
        .find(|r| r["name"] == "masks/mask.json")
        .expect("final result");
    assert_eq!(mask["final"], true);
    let mask = app.get(mask["url"].as_str().unwrap()).await.body;
    assert_eq!(mask["inputs"]["scan"], sha256_hex(&data));

    let logs = app.job_logs(id, "").await;
    let lines: Vec<&str> = items(&logs)
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.starts_with("model starting: job")),
        "{lines:?}"
    );
    // Protocol messages are not logged as lines.
    assert!(
        !lines.iter().any(|l| l.contains("\"progress\"")),
        "{lines:?}"
    );
}

async fn canceling_a_running_command_kills_it_and_keeps_published_results() {
    let app = TestApp::spawn().await;
    let gate = app.dir.path().join("never");
    let pid_file = app.dir.path().join("model.pid");
    let job = app
        .submit(
            "model",
            bytes(1000, 41),
            json!({"gate": gate, "pid_file": pid_file}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_job(id, WITHIN, |j| j["result_count"] == 1).await;
    let pid = read_pid(&pid_file, WITHIN).await;
    assert!(process_alive(pid));

    let reply = app.cancel_job(id).await;
    assert_eq!(reply.status, 202);
    assert_eq!(reply.body["cancel_requested"], true);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    let done = app
        .wait_status(id, "canceled", Duration::from_secs(10))
        .await;
    assert!(done["finished_at"].is_string());
    assert!(
        !process_alive(pid),
        "the handler process {pid} survived the cancel"
    );
    let results = app.results(id).await;
    assert_eq!(results.len(), 1, "published results are kept: {results:?}");
}

async fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let app = TestApp::spawn().await;
    let pid_file = app.dir.path().join("stubborn.pid");
    let job = app
        .submit(
            "model",
            bytes(10, 42),
            json!({"mode": "stubborn", "pid_file": pid_file}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    let pid = read_pid(&pid_file, WITHIN).await;
    app.wait_status(id, "running", WITHIN).await;
    assert_eq!(app.cancel_job(id).await.status, 202);
    app.wait_status(id, "canceled", Duration::from_secs(15))
        .await;
    assert!(!process_alive(pid), "stubborn handler {pid} survived");
}

async fn a_failing_command_is_retried_with_backoff_then_fails() {
    let app = TestApp::spawn_with(TestConfig {
        model_max_attempts: 3,
        ..TestConfig::default()
    })
    .await;
    let job = app
        .submit("model", bytes(10, 43), json!({"mode": "fail"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_status(id, "failed", WITHIN).await;
    assert_eq!(done["attempt"], 3);
    assert_eq!(done["error"]["code"], "handler_exit");
    assert_eq!(done["error"]["retryable"], true);
    assert_eq!(done["error"]["attempt"], 3);
    let detail = done["error"]["detail"].as_str().unwrap();
    assert!(
        detail.contains("status 3") && detail.contains("something went wrong in the model"),
        "{detail}"
    );
    let kinds = app.event_kinds(id).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "retry_scheduled").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| *k == "started").count(),
        3,
        "{kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("failed"));
    // What the command wrote to stderr is in the job's log.
    let logs = app.job_logs(id, "").await;
    assert!(
        !items(&logs).is_empty(),
        "no log lines from a failing command: {}",
        logs.body
    );
}

async fn a_declared_permanent_error_fails_at_once() {
    let app = TestApp::spawn().await;
    let job = app
        .submit("model", bytes(10, 44), json!({"mode": "declare"}))
        .await;
    let id = job["id"].as_str().unwrap();
    let done = app.wait_status(id, "failed", WITHIN).await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["error"]["code"], "handler_error");
    assert_eq!(done["error"]["retryable"], false);
    assert_eq!(done["error"]["detail"], "the scan is not a CT study");
}

async fn a_command_past_its_timeout_is_killed_and_the_job_fails() {
    let app = TestApp::spawn().await;
    let pid_file = app.dir.path().join("slow.pid");
    let upload = app.upload(bytes(10, 45)).await;
    let (status, job) = app
        .post_job(json!({
            "kind": "model",
            "inputs": {"scan": upload["id"]},
            "params": {"mode": "sleep", "pid_file": pid_file},
            "timeout": "1s",
            "max_attempts": 1,
        }))
        .await;
    assert_eq!(status, 202);
    let id = job["id"].as_str().unwrap();
    let pid = read_pid(&pid_file, WITHIN).await;
    let done = app.wait_status(id, "failed", WITHIN).await;
    assert_eq!(done["error"]["code"], "timeout");
    assert!(!process_alive(pid), "timed-out handler {pid} survived");
}

async fn deleting_a_running_job_stops_its_process_and_erases_everything() {
    let app = TestApp::spawn().await;
    let pid_file = app.dir.path().join("doomed.pid");
    let gate = app.dir.path().join("never");
    let job = app
        .submit(
            "model",
            bytes(4000, 46),
            json!({"gate": gate, "pid_file": pid_file}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_job(id, WITHIN, |j| j["result_count"] == 1).await;
    let pid = read_pid(&pid_file, WITHIN).await;
    assert_eq!(app.delete_job(id).await.status, 204);
    assert_eq!(app.get_job(id).await.status, 404);
    wait_process_gone(
        pid,
        Duration::from_secs(10),
        "the deleted job's process is still running",
    )
    .await;
    // Give the stopped attempt time to try (and fail) to write anything more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.wait_no_blobs("").await;
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_results").await,
        0
    );
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 0);
}

async fn a_command_with_a_relative_path_runs_from_the_configuration_folder() {
    let app = TestApp::spawn_with(TestConfig {
        relative_model: true,
        ..TestConfig::default()
    })
    .await;
    let job = app.submit("model", bytes(100, 47), json!({})).await;
    let done = app
        .wait_status(job["id"].as_str().unwrap(), "succeeded", WITHIN)
        .await;
    assert_eq!(done["result_count"], 2);
}

crate::matrix!(
    a_command_with_a_relative_path_runs_from_the_configuration_folder,
    an_intermediate_result_is_visible_while_the_job_still_runs,
    canceling_a_running_command_kills_it_and_keeps_published_results,
    a_command_that_ignores_sigterm_is_killed_after_the_grace_period,
    a_failing_command_is_retried_with_backoff_then_fails,
    a_declared_permanent_error_fails_at_once,
    a_command_past_its_timeout_is_killed_and_the_job_fails,
    deleting_a_running_job_stops_its_process_and_erases_everything,
);
