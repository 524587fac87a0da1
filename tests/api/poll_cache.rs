//! Status polls answered from memory (on PostgreSQL, `storage::row_cache`): every change to a
//! job reaches every replica's polls, whoever makes it — another replica, a worker process, an
//! operator's SQL behind Ferry's back (the trigger announces it) — a replica's own change is
//! seen by its next poll, and changes made while a replica's listening connection is down are
//! not hidden by rows it kept. Rows are kept for ten minutes here, so only the notifications
//! keep the answers right; a stale answer would last past every deadline below. On SQLite,
//! where nothing is cached, the same answers are checked.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{helpers::*, long_poll::gated_job};

const WITHIN: Duration = Duration::from_secs(60);

/// Polls job `id` at replica `base` until `pred` holds; panics with the last answer after
/// `WITHIN`.
async fn poll_until(app: &TestApp, base: &str, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let reply = app.get_job_at(base, id, &[]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if pred(&reply.body) {
            return reply.body;
        }
        assert!(
            start.elapsed() < WITHIN,
            "replica {base} still answers {:#}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message(job: &Value) -> &str {
    job["progress"]["message"].as_str().unwrap_or_default()
}

async fn every_change_reaches_every_replicas_polls() {
    let cfg = TestConfig {
        poll_cache_max_age: Some("10m"),
        ..TestConfig::default()
    };
    let mut app = TestApp::spawn_api_only(cfg).await;
    let replica_b = app.spawn_replica();
    app.spawn_worker();
    let gate = app.dir.path().join("gate");
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    // Replica B reads the job (and keeps it, on PostgreSQL).
    let kept = poll_until(&app, &replica_b, &id, |j| {
        j["progress"]["stage"] == "thinking"
    })
    .await;
    assert_ne!(message(&kept), "edited by hand");

    // A change no Ferry process made: the database announces it.
    let edit = "UPDATE ferry_jobs SET progress_message = 'edited by hand'";
    assert_eq!(app.execute_sql(edit, edit).await, 1);
    poll_until(&app, &replica_b, &id, |j| message(j) == "edited by hand").await;

    // Replica B's own change: its very next poll shows it, with no waiting.
    let canceled = app
        .request_at(&replica_b, "post", &format!("/v1/jobs/{id}/cancel"), |r| r)
        .await;
    assert_eq!(canceled.status, 202, "{}", canceled.body);
    let next = app.get_job_at(&replica_b, &id, &[]).await;
    assert!(
        next.body["cancel_requested"] == true || next.body["status"] == "canceled",
        "{:#}",
        next.body
    );
    // The worker's change (the attempt stopped and settled), heard at both replicas.
    for base in [&app.base, &replica_b] {
        poll_until(&app, base, &id, |j| j["status"] == "canceled").await;
    }

    if app.backend == Backend::PostgresS3 {
        // Every process's listening connection cut; a change made before they are back (they
        // reconnect after a second) is not announced to anyone, and replica B must not go on
        // answering with the row it kept.
        let db = app.database_url.rsplit('/').next().unwrap().to_owned();
        let cut = app
            .count_rows(&format!(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = '{db}' AND query = 'LISTEN \"ferry_job_changed\"' \
                 AND pid <> pg_backend_pid()"
            ))
            .await;
        assert!(cut >= 2, "the replicas' listeners were not found ({cut})");
        let edit = "UPDATE ferry_jobs SET progress_message = 'edited while nobody listened'";
        assert_eq!(app.execute_sql(edit, edit).await, 1);
        poll_until(&app, &replica_b, &id, |j| {
            message(j) == "edited while nobody listened"
        })
        .await;
        // Listening again: later changes are heard as before.
        let edit = "UPDATE ferry_jobs SET progress_message = 'edited after the cut'";
        assert_eq!(app.execute_sql(edit, edit).await, 1);
        poll_until(&app, &replica_b, &id, |j| {
            message(j) == "edited after the cut"
        })
        .await;
    }
}

crate::matrix!(every_change_reaches_every_replicas_polls);
