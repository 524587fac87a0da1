//! Queue order end to end, with real processes: work interrupted by a `kill -9` of its worker
//! keeps its place ahead of jobs created after it.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(60);

crate::matrix!(a_job_whose_worker_died_runs_before_jobs_created_after_it);

/// When the job's attempt `attempt` started, from its event log (RFC 3339, comparable as text).
async fn started_at(app: &TestApp, id: &str, attempt: u64) -> String {
    let (status, events) = app.get_json(&format!("/v1/jobs/{id}/events")).await;
    assert_eq!(status, 200, "{events}");
    events["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "started" && e["data"]["attempt"] == attempt)
        .and_then(|e| e["created_at"].as_str())
        .unwrap_or_else(|| panic!("job {id} has no start of attempt {attempt}: {events}"))
        .to_owned()
}

async fn a_job_whose_worker_died_runs_before_jobs_created_after_it() {
    let mut app = TestApp::spawn_api_only(TestConfig {
        lease_ttl: "2s",
        model_concurrency: 1,
        ..TestConfig::default()
    })
    .await;
    let first_worker = app.spawn_worker();
    let gate = app.dir.path().join("gate");
    let interrupted = app
        .submit("model", bytes(100, 80), json!({"gate": gate}))
        .await;
    let interrupted_id = interrupted["id"].as_str().unwrap().to_owned();
    app.wait_status(&interrupted_id, "running", WITHIN).await;
    app.kill9_worker(first_worker);
    // apalis orders due work by whole seconds (then, on SQLite, by id): let the interrupted
    // job's creation second pass, so "created after it" is visible at that resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Newer jobs; the first one a new worker takes holds it (one job at a time) until `gate`
    // opens, while the interrupted job's lease expires and it is dispatched again.
    let mut newer: Vec<String> = Vec::new();
    for n in 0..8 {
        let job: Value = app
            .submit("model", bytes(100, 81 + n), json!({"gate": gate}))
            .await;
        newer.push(job["id"].as_str().unwrap().to_owned());
    }
    app.spawn_worker();
    let start = std::time::Instant::now();
    while !app
        .event_kinds(&interrupted_id)
        .await
        .iter()
        .any(|k| k == "redispatched")
    {
        assert!(
            start.elapsed() < WITHIN,
            "the interrupted job was not dispatched again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&gate, b"open").unwrap();
    for id in newer.iter().chain([&interrupted_id]) {
        app.wait_status(id, "succeeded", WITHIN).await;
    }

    // At most the one newer job that was already running went first.
    let retried_at = started_at(&app, &interrupted_id, 2).await;
    let mut ahead = Vec::new();
    for id in &newer {
        if started_at(&app, id, 1).await < retried_at {
            ahead.push(id.clone());
        }
    }
    assert!(
        ahead.len() <= 1,
        "{} newer jobs ran before the interrupted one: {ahead:?}",
        ahead.len()
    );
}
