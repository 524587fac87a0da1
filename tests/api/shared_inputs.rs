//! One upload as the input of many jobs, on both backends: fifty jobs run on one upload, each
//! reading its bytes; the upload counts the jobs that hold it and lists them; its bytes stay
//! while any job holds it and go, in the store, with the last one — whether the jobs are
//! deleted or their inputs expire.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{helpers::*, matrix};

matrix!(
    fifty_jobs_share_one_upload_whose_bytes_go_with_the_last_job,
    retention_lets_go_of_an_input_another_job_still_holds,
);

const WITHIN: Duration = Duration::from_secs(60);

/// The uuid (simple form, as blob keys spell it) of a `job_…` or `upl_…` id.
fn uuid_of(id: &str) -> String {
    id.split_once('_').expect("prefixed id").1.to_owned()
}

/// Creates `count` `digest` jobs on `upload`, one request each; their ids, and how long it took.
async fn digest_jobs(app: &TestApp, upload: &str, count: usize) -> (Vec<String>, Duration) {
    let start = Instant::now();
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let (status, job) = app
            .post_job(json!({"kind": "digest", "inputs": {"scan": upload}}))
            .await;
        assert_eq!(status, 202, "{job}");
        ids.push(job["id"].as_str().expect("id").to_owned());
    }
    (ids, start.elapsed())
}

async fn job_count(app: &TestApp, upload: &str) -> Value {
    let reply = app.get_upload(upload).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body["job_count"].clone()
}

/// Fifty jobs on one upload run, each on the upload's own bytes (the digest report checks them
/// against the upload's SHA-256); none copies them. Deleting 49 of the jobs leaves the upload
/// and its bytes; deleting the last deletes both.
async fn fifty_jobs_share_one_upload_whose_bytes_go_with_the_last_job() {
    let app = TestApp::spawn().await;
    let data = bytes(3 << 20, 70);
    let big = app.upload(data.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let small = app.upload(bytes(1024, 71)).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (jobs, on_big) = digest_jobs(&app, &big, 50).await;
    let (_, on_small) = digest_jobs(&app, &small, 50).await;
    eprintln!(
        "50 jobs created on one 3 MiB upload in {on_big:?}, on one 1 KiB upload in {on_small:?} \
         ({:?})",
        backend()
    );
    assert_eq!(job_count(&app, &big).await, 50);
    // One object per upload, however many jobs.
    assert_eq!(app.blob_files("uploads").await.len(), 2);

    for id in &jobs {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    for id in [&jobs[0], &jobs[49]] {
        let report = app.download_result(id, "report.json", &[]).await;
        assert_eq!(report.status, 200);
        let input = &report.body["inputs"][0];
        assert_eq!(input["sha256"], sha256_hex(&data), "{}", report.body);
        assert_eq!(input["sha256_matches_upload"], true);
    }

    // The jobs that use it, in pages.
    let mut listed = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut path = format!("/v1/jobs?upload={big}&limit=20");
        if let Some(cursor) = &next {
            path.push_str(&format!("&next={cursor}"));
        }
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        listed.extend(
            items(&page)
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_owned()),
        );
        match page.body["next"].as_str() {
            Some(cursor) => next = Some(cursor.to_owned()),
            None => break,
        }
    }
    listed.sort();
    let mut expected = jobs.clone();
    expected.sort();
    assert_eq!(listed, expected);

    app.delete_upload(&big)
        .await
        .assert_problem(409, "upload_in_use");
    let key = format!("uploads/{}", uuid_of(&big));
    for (deleted, id) in jobs[..49].iter().enumerate() {
        assert_eq!(app.delete_job(id).await.status, 204);
        assert_eq!(job_count(&app, &big).await, 50 - 1 - deleted as u64);
    }
    assert_eq!(
        app.blob_files(&key).await.len(),
        1,
        "the last job still needs the bytes"
    );
    let last = &jobs[49];
    let report = app.download_result(last, "report.json", &[]).await;
    assert_eq!(report.status, 200);

    assert_eq!(app.delete_job(last).await.status, 204);
    app.get_upload(&big)
        .await
        .assert_problem(404, "upload_not_found");
    assert!(app.blob_files(&key).await.is_empty());
    // The other upload and its jobs are untouched.
    assert_eq!(job_count(&app, &small).await, 50);
    assert_eq!(
        app.blob_files(&format!("uploads/{}", uuid_of(&small)))
            .await
            .len(),
        1
    );
}

/// `input_retention = "0s"`: a finished job lets go of its inputs at once. The upload stays
/// while a second job, queued behind a job that holds the model's one slot, holds it; that job
/// then starts — its inputs fetched after the first job let go — and reads the right bytes;
/// the upload goes when the second job lets go too.
async fn retention_lets_go_of_an_input_another_job_still_holds() {
    let app = TestApp::spawn_with(TestConfig {
        model_concurrency: 1,
        extra_toml: "[tenant_defaults]\ninput_retention = \"0s\"\n".into(),
        ..TestConfig::default()
    })
    .await;
    let data = bytes(200_000, 72);
    let upload = app.upload(data.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let gate = app.dir.path().join("gate");
    let other = app.upload(bytes(10, 73)).await["id"].clone();
    let blocker = create(
        &app,
        json!({"kind": "model", "inputs": {"x": other},
        "params": {"gate": gate}}),
    )
    .await;
    let first = create(&app, json!({"kind": "digest", "inputs": {"scan": upload}})).await;
    let second = create(&app, json!({"kind": "model", "inputs": {"scan": upload}})).await;
    app.wait_status(&first, "succeeded", WITHIN).await;
    let start = Instant::now();
    while !app.job(&first).await["inputs_deleted_at"].is_string() {
        assert!(start.elapsed() < WITHIN, "the first job kept its inputs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.job(&second).await["status"], "queued");
    assert_eq!(job_count(&app, &upload).await, 1);
    let key = format!("uploads/{}", uuid_of(&upload));
    assert_eq!(app.blob_files(&key).await.len(), 1);

    std::fs::write(&gate, "go").unwrap();
    app.wait_status(&blocker, "succeeded", WITHIN).await;
    app.wait_status(&second, "succeeded", WITHIN).await;
    let mask = app.download_result(&second, "masks/mask.json", &[]).await;
    assert_eq!(mask.status, 200, "{}", mask.body);
    assert_eq!(
        mask.body["inputs"]["scan"],
        sha256_hex(&data),
        "{}",
        mask.body
    );
    let start = Instant::now();
    while app.get_upload(&upload).await.status != 404 {
        assert!(start.elapsed() < WITHIN, "the upload outlived its last job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_no_blobs(&key).await;
    // Both jobs still list it, and say their inputs are gone.
    for id in [&first, &second] {
        let job = app.job(id).await;
        assert_eq!(job["inputs"][0]["upload_id"], upload.as_str());
        assert!(job["inputs_deleted_at"].is_string(), "{job}");
    }
}

/// Creates a job; its id.
async fn create(app: &TestApp, request: Value) -> String {
    let (status, job) = app.post_job(request).await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().expect("id").to_owned()
}
