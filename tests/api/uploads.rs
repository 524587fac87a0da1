//! Uploads: streamed storage with digests, verification, limits, disconnects, deletion, expiry.

use std::{io::Write, time::Duration};

use base64::Engine;
use serde_json::Value;

use crate::helpers::*;

async fn an_upload_is_stored_with_its_size_and_sha256() {
    let app = TestApp::spawn().await;
    let data = bytes(3 * 1024 * 1024 + 17, 1);
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .header("content-type", "application/dicom")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["size"], data.len() as u64);
    assert_eq!(body["sha256"], sha256_hex(&data));
    assert_eq!(body["content_type"], "application/dicom");
    assert!(body["id"].as_str().unwrap().starts_with("upl_"));
    assert_eq!(
        location,
        format!("/v1/uploads/{}", body["id"].as_str().unwrap())
    );
    assert!(body["expires_at"].is_string());

    let (status, again) = app.get_json(&location).await;
    assert_eq!(status, 200);
    assert_eq!(again, body);
    // The stored bytes are exactly what was sent.
    assert_eq!(app.single_blob("uploads").await, data);
}

async fn a_matching_repr_digest_is_accepted_and_a_wrong_one_rejected_leaving_nothing() {
    let app = TestApp::spawn().await;
    let data = bytes(100_000, 2);
    let good = base64::engine::general_purpose::STANDARD.encode(sha2_digest(&data));
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .header("repr-digest", format!("sha-512=:AAAA:, sha-256=:{good}:"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.headers()["repr-digest"].to_str().unwrap(),
        format!("sha-256=:{good}:")
    );

    let wrong = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .header("content-digest", format!("sha-256=:{wrong}:"))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_problem(status, &body, 400, "digest_mismatch");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains(&sha256_hex(&data))
    );
    // Only the first upload remains, in the database and on disk.
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );
    assert_eq!(app.blob_files("uploads").await.len(), 1);

    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .header("repr-digest", "sha-256=not-base64")
        .body(data)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(
        status,
        &res.json().await.unwrap(),
        400,
        "invalid_digest_header",
    );
}

fn sha2_digest(data: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).into()
}

async fn an_oversized_upload_is_refused_before_or_while_reading() {
    let app = TestApp::spawn_with(TestConfig {
        max_upload_bytes: 1 << 20,
        ..TestConfig::default()
    })
    .await;
    // Declared too large: refused from the headers alone.
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .body(bytes((1 << 20) + 1, 3))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(status, &res.json().await.unwrap(), 413, "payload_too_large");

    // Chunked (no length): cut off once it crosses the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|i| Ok(bytes(64 * 1024, i))).collect();
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await;
    match res {
        Ok(res) => {
            let status = res.status().as_u16();
            assert_problem(status, &res.json().await.unwrap(), 413, "payload_too_large");
        }
        // The server may close the connection while the client is still sending: also a refusal.
        Err(err) => assert!(err.is_request() || err.is_body(), "unexpected error {err}"),
    }
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0
    );
    app.wait_no_blobs("").await;

    // Exactly at the limit is fine (on a fresh connection: the refused ones were closed).
    let res = reqwest::Client::new()
        .post(app.url("/v1/uploads"))
        .body(bytes(1 << 20, 4))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

async fn a_client_that_disconnects_midway_leaves_no_row_and_no_file() {
    let app = TestApp::spawn().await;
    let stream = app.partial_post(
        "/v1/uploads",
        "Content-Type: application/octet-stream\r\n",
        50_000_000,
        &bytes(5 << 20, 5),
    );
    // Let the server write some parts, then vanish.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);
    app.wait_no_blobs("").await;
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0
    );
    // And the server is fine afterwards.
    app.upload(bytes(1000, 6)).await;
}

async fn uploads_beyond_the_concurrency_limit_are_refused_until_one_finishes() {
    let app = TestApp::spawn_with(TestConfig {
        max_concurrent_uploads: 1,
        ..TestConfig::default()
    })
    .await;
    let mut slow = app.partial_post("/v1/uploads", "", 2_000_000, &bytes(1_000_000, 11));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let res = reqwest::Client::new()
        .post(app.url("/v1/uploads"))
        .body(bytes(1000, 12))
        .send()
        .await
        .unwrap();
    assert!(res.headers().contains_key("retry-after"));
    let status = res.status().as_u16();
    assert_problem(
        status,
        &res.json().await.unwrap(),
        503,
        "uploads_at_capacity",
    );

    slow.write_all(&bytes(1_000_000, 13)).unwrap();
    let mut reply = [0u8; 64];
    use std::io::Read;
    let n = slow.read(&mut reply).unwrap();
    assert!(String::from_utf8_lossy(&reply[..n]).starts_with("HTTP/1.1 201"));
    app.upload(bytes(1000, 14)).await;
}

async fn an_upload_can_be_deleted_unless_a_job_uses_it() {
    let app = TestApp::spawn().await;
    let up = app.upload(bytes(5000, 7)).await;
    let id = up["id"].as_str().unwrap();
    let res = app
        .client
        .delete(app.url(&format!("/v1/uploads/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (status, body) = app.get_json(&format!("/v1/uploads/{id}")).await;
    assert_problem(status, &body, 404, "upload_not_found");
    assert!(app.blob_files("uploads").await.is_empty());

    let up = app.upload(bytes(5000, 8)).await;
    let id = up["id"].as_str().unwrap();
    let (status, _) = app
        .post_job(serde_json::json!({"kind": "noop", "inputs": {"scan": id}}))
        .await;
    assert_eq!(status, 202);
    let res = app
        .client
        .delete(app.url(&format!("/v1/uploads/{id}")))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(status, &res.json().await.unwrap(), 409, "upload_in_use");
    // A consumed upload cannot feed a second job.
    let (status, body) = app
        .post_job(serde_json::json!({"kind": "noop", "inputs": {"scan": id}}))
        .await;
    assert_problem(status, &body, 409, "upload_in_use");
}

async fn unused_uploads_expire() {
    let app = TestApp::spawn_with(TestConfig {
        upload_ttl: "1s",
        ..TestConfig::default()
    })
    .await;
    let up = app.upload(bytes(2000, 9)).await;
    let id = up["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = app.get_json(&format!("/v1/uploads/{id}")).await;
    assert_problem(status, &body, 404, "upload_not_found");
    // The reconciler purges it on one of its next passes.
    let start = std::time::Instant::now();
    while app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await > 0
        || !app.blob_files("uploads").await.is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "expired upload not purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = app
        .post_job(serde_json::json!({"kind": "noop", "inputs": {"scan": id}}))
        .await;
    assert_problem(status, &body, 422, "invalid_field");
}

async fn a_one_gib_upload_keeps_server_memory_bounded() {
    let app = TestApp::spawn().await;
    const TOTAL: usize = 1 << 30;
    const CHUNK: usize = 1 << 20;
    let chunk = bytes(CHUNK, 10);
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    for _ in 0..TOTAL / CHUNK {
        sha2::Digest::update(&mut hasher, &chunk);
    }
    let expected = hex::encode(sha2::Digest::finalize(hasher));
    let stream = futures_util::stream::iter(
        (0..TOTAL / CHUNK).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let res = app
        .client
        .post(app.url("/v1/uploads"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["size"], TOTAL as u64);
    assert_eq!(body["sha256"], expected);
    let status = std::fs::read_to_string(format!("/proc/{}/status", app.server_pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap();
    println!(
        "server peak RSS after a 1 GiB upload: {} MiB",
        peak_kib / 1024
    );
    // Bounded means independent of the payload: far below the 1024 MiB that was sent.
    assert!(
        peak_kib < 200 * 1024,
        "server peak RSS {peak_kib} KiB for a 1 GiB upload"
    );
}

crate::matrix!(
    uploads_beyond_the_concurrency_limit_are_refused_until_one_finishes,
    an_upload_is_stored_with_its_size_and_sha256,
    a_matching_repr_digest_is_accepted_and_a_wrong_one_rejected_leaving_nothing,
    an_oversized_upload_is_refused_before_or_while_reading,
    a_client_that_disconnects_midway_leaves_no_row_and_no_file,
    an_upload_can_be_deleted_unless_a_job_uses_it,
    unused_uploads_expire,
    a_one_gib_upload_keeps_server_memory_bounded,
);
