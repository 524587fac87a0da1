//! Bulk re-runs, on both backends: 200 jobs fail on a broken version; the tag moves to the fix;
//! a bulk re-run of at most 150 re-runs them in one batch, behind the jobs clients submit
//! meanwhile, and the same request again continues with the rest; an idempotency key replays
//! the batch.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{helpers::*, matrix, versions::versioned_kind};

matrix!(a_bulk_rerun_goes_behind_other_work_and_continues_where_it_stopped);

const WITHIN: Duration = Duration::from_secs(120);

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.count_rows(sql).await
}

async fn wait_count(app: &TestApp, sql: &str, expected: i64) {
    let start = Instant::now();
    loop {
        let now = count(app, sql).await;
        if now == expected {
            return;
        }
        assert!(start.elapsed() < WITHIN, "{sql}: {now}, not {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bulk(app: &TestApp, body: &Value, key: Option<&str>) -> Reply {
    app.request("post", "/v1/jobs/rerun", |r| {
        let r = r.json(body);
        match key {
            Some(key) => r.header("idempotency-key", key),
            None => r,
        }
    })
    .await
}

/// Every job of a batch, through `links.jobs` and its pages.
async fn batch_jobs(app: &TestApp, first: &Reply) -> Vec<Value> {
    let mut jobs: Vec<Value> = items(first).to_vec();
    let mut next = first.body["next"].as_str().map(str::to_owned);
    let link = first.body["links"]["jobs"].as_str().unwrap().to_owned();
    while let Some(cursor) = next {
        let page = app.get(&format!("{link}&limit=50&next={cursor}")).await;
        assert_eq!(page.status, 200, "{}", page.body);
        jobs.extend(items(&page).iter().cloned());
        next = page.body["next"].as_str().map(str::to_owned);
    }
    jobs
}

async fn a_bulk_rerun_goes_behind_other_work_and_continues_where_it_stopped() {
    let app = TestApp::spawn_with(TestConfig {
        extra_toml: versioned_kind(),
        ..TestConfig::default()
    })
    .await;
    // One upload for all of them: re-runs hold it, nothing is copied.
    let upload = app.upload(bytes(2000, 90)).await["id"].clone();
    for _ in 0..200 {
        let (status, job) = app
            .post_job(json!({"kind": "seg", "inputs": {"scan": upload}}))
            .await;
        assert_eq!(status, 202, "{job}");
    }
    let failed = "SELECT COUNT(*) FROM ferry_jobs WHERE status = 'failed'";
    wait_count(&app, failed, 200).await;
    let fixed = app
        .request("put", "/v1/kinds/seg/tags/production", |r| {
            r.json(&json!({"version": "v2"}))
        })
        .await;
    assert_eq!(fixed.status, 200, "{}", fixed.body);

    // A filter that matches nothing makes nothing.
    let none = bulk(&app, &json!({"kind": "seg", "error_code": "timeout"}), None).await;
    assert_eq!(none.status, 202, "{}", none.body);
    assert_eq!(none.body["created"], 0);

    let request = json!({"status": "failed", "kind": "seg", "version": "v1",
                         "error_code": "handler_exit", "limit": 150});
    let first = bulk(&app, &request, Some("fix-1")).await;
    let started = Instant::now();
    assert_eq!(first.status, 202, "{}", first.body);
    // Jobs clients submit meanwhile, to the same queue (seg@v2), go ahead of the re-runs.
    let mut others = Vec::new();
    for _ in 0..5 {
        let (status, job) = app
            .post_job(json!({"kind": "seg@v2", "inputs": {"scan": upload}}))
            .await;
        assert_eq!(status, 202, "{job}");
        others.push(job["id"].as_str().unwrap().to_owned());
    }
    eprintln!(
        "bulk re-run of 150 answered; 5 more jobs submitted {:?} later ({:?})",
        started.elapsed(),
        backend()
    );
    assert_eq!(
        (
            &first.body["created"],
            &first.body["remaining"],
            &first.body["skipped"]
        ),
        (&json!(150), &json!(50), &json!(0)),
        "{}",
        first.body
    );
    assert_eq!(
        first.header("location"),
        first.body["links"]["jobs"].as_str()
    );
    let batch = batch_jobs(&app, &first).await;
    assert_eq!(batch.len(), 150);
    assert!(
        batch
            .iter()
            .all(|j| j["version"] == "v2" && j["rerun_of"].is_string())
    );
    assert!(batch.iter().all(|j| j["rerun_batch"] == first.body["id"]));

    // The key replays the batch; with another request it is refused.
    let again = bulk(&app, &request, Some("fix-1")).await;
    assert_eq!(again.status, 202);
    assert_eq!(again.body["id"], first.body["id"]);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    bulk(&app, &json!({"kind": "seg", "limit": 10}), Some("fix-1"))
        .await
        .assert_problem(422, "idempotency_key_reused");

    // The jobs submitted after the batch started before most of it.
    let rerun_ids: Vec<String> = batch
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_owned())
        .collect();
    for id in others.iter().chain(&rerun_ids) {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    let mut rerun_starts = Vec::new();
    for id in &rerun_ids {
        rerun_starts.push(app.job(id).await["started_at"].as_str().unwrap().to_owned());
    }
    rerun_starts.sort();
    let hundredth = &rerun_starts[99];
    for id in &others {
        let started = app.job(id).await["started_at"].as_str().unwrap().to_owned();
        assert!(
            started < *hundredth,
            "a job submitted after the bulk re-run started at {started}, after 100 of its \
             re-runs (the 100th at {hundredth})"
        );
    }

    // The same request again continues with the rest, then finds nothing left.
    let rest = bulk(&app, &request, None).await;
    assert_eq!(
        (&rest.body["created"], &rest.body["remaining"]),
        (&json!(50), &json!(0)),
        "{}",
        rest.body
    );
    let done = bulk(&app, &request, None).await;
    assert_eq!(done.body["created"], 0, "{}", done.body);
    wait_count(
        &app,
        "SELECT COUNT(*) FROM ferry_jobs WHERE rerun_of IS NOT NULL AND status = 'succeeded'",
        200,
    )
    .await;
    // Every failed job now names its re-run.
    assert_eq!(
        count(
            &app,
            "SELECT COUNT(*) FROM ferry_jobs WHERE status = 'failed' AND latest_rerun IS NULL"
        )
        .await,
        0
    );
    // 200 + 200 + 5 jobs hold the one upload.
    assert_eq!(
        app.get_upload(upload.as_str().unwrap()).await.body["job_count"],
        405
    );
}
