//! Upgrading a database that holds jobs: what a migration adds is filled in for the jobs that
//! were already there, so they read exactly as before the upgrade.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(30);

/// `m20261203_000001_job_summary` copies each job's inputs and counts its results onto the job
/// row. The test takes a database back to before it (the columns dropped, the migration
/// unrecorded), starts the server again, and compares.
async fn jobs_from_before_the_job_summary_columns_read_the_same_after_the_upgrade() {
    let mut app = TestApp::spawn_process(TestConfig::default()).await;
    let gate = app.dir.path().join("gate");
    std::fs::write(&gate, "go").unwrap();
    let finished = app
        .submit("model", bytes(3000, 90), json!({"gate": gate}))
        .await;
    let finished = finished["id"].as_str().unwrap().to_owned();
    let before = app.wait_status(&finished, "succeeded", WITHIN).await;
    assert_eq!(before["result_count"], 2, "{before}");
    let data = bytes(10, 91);
    let upload = app.upload(data.clone()).await;
    let second = app
        .create_job(&json!({"kind": "noop", "inputs": {"b": upload["id"]}}), &[])
        .await;
    assert_eq!(second.status, 202, "{}", second.body);
    app.kill9_server();

    for (sqlite, postgres) in [
        (
            "ALTER TABLE ferry_jobs DROP COLUMN inputs",
            "ALTER TABLE ferry_jobs DROP COLUMN inputs",
        ),
        (
            "ALTER TABLE ferry_jobs DROP COLUMN result_count",
            "ALTER TABLE ferry_jobs DROP COLUMN result_count",
        ),
        (
            "DELETE FROM seaql_migrations WHERE version = 'm20261203_000001_job_summary'",
            "DELETE FROM seaql_migrations WHERE version = 'm20261203_000001_job_summary'",
        ),
    ] {
        app.execute_sql(sqlite, postgres).await;
    }
    app.start_server(&[]);

    let after = app.job(&finished).await;
    assert_eq!(after["inputs"], before["inputs"]);
    assert_eq!(after["result_count"], 2, "{after}");
    let other = app.job(second.body["id"].as_str().unwrap()).await;
    assert_eq!(other["inputs"], second.body["inputs"]);
    assert_eq!(other["inputs"][0]["sha256"], sha256_hex(&data));
    assert_eq!(other["result_count"], 0);
}

crate::matrix!(jobs_from_before_the_job_summary_columns_read_the_same_after_the_upgrade);
