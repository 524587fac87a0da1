//! Uploads: streamed storage with digests, verification, limits, disconnects, deletion, expiry.

use std::{io::Write, time::Duration};

use serde_json::{Value, json};

use crate::{client::items, helpers::*};

async fn an_upload_is_stored_with_its_size_and_sha256() {
    let app = TestApp::spawn().await;
    let data = bytes(3 * 1024 * 1024 + 17, 1);
    let reply = app
        .create_upload(data.clone(), &[("content-type", "application/dicom")])
        .await;
    assert_eq!(reply.status, 201);
    let body = &reply.body;
    assert_eq!(body["size"], data.len() as u64);
    assert_eq!(body["sha256"], sha256_hex(&data));
    assert_eq!(body["content_type"], "application/dicom");
    assert!(body["id"].as_str().unwrap().starts_with("upl_"));
    let location = reply.header("location").unwrap();
    assert_eq!(
        location,
        format!("/v1/uploads/{}", body["id"].as_str().unwrap())
    );
    assert!(body["expires_at"].is_string());
    assert_eq!(body["job_count"], 0);

    let again = app.get(location).await;
    assert_eq!(again.status, 200);
    assert_eq!(&again.body, body);
    // The stored bytes are exactly what was sent.
    assert_eq!(app.single_blob("uploads").await, data);
}

async fn a_matching_repr_digest_is_accepted_and_a_wrong_one_rejected_leaving_nothing() {
    let app = TestApp::spawn().await;
    let data = bytes(100_000, 2);
    let good = repr_digest(&data);
    let good_b64 = good
        .strip_prefix("sha-256=:")
        .and_then(|d| d.strip_suffix(':'))
        .unwrap();
    let reply = app
        .create_upload(
            data.clone(),
            &[(
                "repr-digest",
                &format!("sha-512=:AAAA:, sha-256=:{good_b64}:"),
            )],
        )
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("repr-digest"), Some(good.as_str()));

    let wrong = repr_digest(b"other bytes");
    let reply = app
        .create_upload(data.clone(), &[("content-digest", &wrong)])
        .await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.assert_problem(400, "digest_mismatch");
    assert!(
        reply.body["detail"]
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

    for (header, value) in [
        ("repr-digest", "sha-256=not-base64"),
        ("content-digest", "sha-256=nope"),
    ] {
        app.create_upload(data.clone(), &[(header, value)])
            .await
            .assert_problem(400, "invalid_digest_header");
    }
}

async fn an_oversized_upload_is_refused_before_or_while_reading() {
    let mut app = TestApp::spawn_with(TestConfig {
        max_upload_bytes: 1 << 20,
        ..TestConfig::default()
    })
    .await;
    // Declared too large: refused from the headers alone, without reading the body.
    app.create_upload(bytes((1 << 20) + 1, 3), &[])
        .await
        .assert_problem(413, "payload_too_large");
    let reply = app
        .raw_request(
            "POST /v1/uploads HTTP/1.1\r\nHost: ferry\r\n\
             content-type: application/octet-stream\r\ncontent-length: 999999999999999\r\n\r\n",
        )
        .await;
    reply.assert_problem(413, "payload_too_large");
    assert_eq!(reply.header("connection"), Some("close"));

    // Chunked (no length): cut off once it crosses the limit.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|i| Ok(bytes(64 * 1024, i))).collect();
    let res = app
        .try_request("post", "/v1/uploads", |r| {
            r.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        })
        .await;
    match res {
        Ok(reply) => reply.assert_problem(413, "payload_too_large"),
        // The server may close the connection while the client is still sending: also a refusal.
        Err(err) => assert!(err.is_request() || err.is_body(), "unexpected error {err}"),
    }
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0
    );
    app.wait_no_blobs("").await;

    // Exactly at the limit is fine (on a fresh connection: the refused ones were closed).
    app.client = reqwest::Client::new();
    assert_eq!(app.create_upload(bytes(1 << 20, 4), &[]).await.status, 201);
}

/// Found by schemathesis (a POST without a body was taken as a 0-byte file): an empty body is
/// refused, whether declared (`Content-Length: 0`) or chunked, in both upload forms, and nothing
/// is kept.
async fn an_empty_body_is_refused_and_leaves_nothing() {
    let app = TestApp::spawn().await;
    app.create_upload(Vec::new(), &[])
        .await
        .assert_problem(400, "empty_body");
    let chunked = app
        .create_upload(
            reqwest::Body::wrap_stream(futures_util::stream::iter(Vec::<
                Result<Vec<u8>, std::io::Error>,
            >::new())),
            &[],
        )
        .await;
    chunked.assert_problem(400, "empty_body");
    app.create_job_from_file("digest", "", Vec::new(), &[])
        .await
        .assert_problem(400, "empty_body");
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0
    );
    app.wait_no_blobs("").await;
    // One byte is enough.
    assert_eq!(app.create_upload(vec![0u8], &[]).await.status, 201);
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
    let mut app = TestApp::spawn_with(TestConfig {
        max_concurrent_uploads: 1,
        ..TestConfig::default()
    })
    .await;
    let mut slow = app.partial_post("/v1/uploads", "", 2_000_000, &bytes(1_000_000, 11));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // On a connection of its own.
    app.client = reqwest::Client::new();
    let reply = app.create_upload(bytes(1000, 12), &[]).await;
    assert!(reply.header("retry-after").is_some());
    reply.assert_problem(503, "uploads_at_capacity");

    slow.write_all(&bytes(1_000_000, 13)).unwrap();
    let reply = read_raw_reply(&mut slow);
    spec().check_reply("post", "/v1/uploads", &reply);
    assert_eq!(reply.status, 201, "{}", reply.body);
    app.upload(bytes(1000, 14)).await;
}

async fn an_upload_can_be_deleted_unless_a_job_uses_it() {
    let app = TestApp::spawn().await;
    let up = app.upload(bytes(5000, 7)).await;
    let id = up["id"].as_str().unwrap();
    assert_eq!(app.delete_upload(id).await.status, 204);
    app.get_upload(id)
        .await
        .assert_problem(404, "upload_not_found");
    app.delete_upload(id)
        .await
        .assert_problem(404, "upload_not_found");
    assert!(app.blob_files("uploads").await.is_empty());

    let up = app.upload(bytes(5000, 8)).await;
    let id = up["id"].as_str().unwrap();
    let (status, job) = app
        .post_job(json!({"kind": "noop", "inputs": {"scan": id}}))
        .await;
    assert_eq!(status, 202);
    // The job holds the upload now: it no longer expires, and cannot be deleted by itself.
    let attached = app.get_upload(id).await;
    assert_eq!(attached.body["job_count"], 1);
    assert_eq!(attached.body["expires_at"], Value::Null);
    app.delete_upload(id)
        .await
        .assert_problem(409, "upload_in_use");
    // It goes with the job.
    assert_eq!(app.blob_files("uploads").await.len(), 1);
    let job = job["id"].as_str().unwrap();
    assert_eq!(app.delete_job(job).await.status, 204);
    app.get_upload(id)
        .await
        .assert_problem(404, "upload_not_found");
    assert!(app.blob_files("uploads").await.is_empty());
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0
    );
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
    app.get_upload(&id)
        .await
        .assert_problem(404, "upload_not_found");
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
        .post_job(json!({"kind": "noop", "inputs": {"scan": id}}))
        .await;
    assert_problem(status, &body, 422, "invalid_field");
}

async fn uploads_are_listed_newest_first_in_pages_and_by_attachment() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for seed in 0..3 {
        ids.push(app.upload(bytes(100, 20 + seed)).await["id"].clone());
    }
    let (status, job) = app
        .post_job(json!({"kind": "noop", "inputs": {"scan": ids[0]}}))
        .await;
    assert_eq!(status, 202);
    let deleted = app.upload(bytes(100, 30)).await;
    assert_eq!(
        app.delete_upload(deleted["id"].as_str().unwrap())
            .await
            .status,
        204
    );

    let page = app.list_uploads("limit=2").await;
    assert_eq!(page.status, 200);
    let listed: Vec<&Value> = items(&page).iter().map(|u| &u["id"]).collect();
    assert_eq!(
        listed,
        [&ids[2], &ids[1]],
        "newest first, deleted ones gone"
    );
    let next = page.body["next"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let last = app.list_uploads(&format!("limit=2&next={next}")).await;
    let rest: Vec<&Value> = items(&last).iter().map(|u| &u["id"]).collect();
    assert_eq!(rest, [&ids[0]]);
    assert_eq!(last.body["next"], Value::Null);
    assert_eq!(items(&last)[0]["job_count"], 1);
    // The jobs that use an upload.
    let using = app
        .get(&format!("/v1/jobs?upload={}", ids[0].as_str().unwrap()))
        .await;
    assert_eq!(using.status, 200, "{}", using.body);
    let using: Vec<&Value> = items(&using).iter().map(|j| &j["id"]).collect();
    assert_eq!(using, [&job["id"]]);
    let none = app
        .get(&format!("/v1/jobs?upload={}", ids[1].as_str().unwrap()))
        .await;
    assert!(items(&none).is_empty(), "{}", none.body);
    app.get("/v1/jobs?upload=job_1")
        .await
        .assert_problem(400, "invalid_query");

    let attached = app.list_uploads("attached=true").await;
    let attached: Vec<&Value> = items(&attached).iter().map(|u| &u["id"]).collect();
    assert_eq!(attached, [&ids[0]]);
    let unattached = app.list_uploads("attached=false").await;
    let unattached: Vec<&Value> = items(&unattached).iter().map(|u| &u["id"]).collect();
    assert_eq!(unattached, [&ids[2], &ids[1]]);

    for (query, field) in [
        ("attached=maybe", "attached"),
        ("limit=0", "limit"),
        ("next=job_0192f1d4a8e97c3b9e5d2a7f6c1b0e34", "next"),
    ] {
        let reply = app.list_uploads(query).await;
        reply.assert_problem(400, "invalid_query");
        assert_eq!(reply.field_errors(), [field], "{query}");
    }
    app.list_uploads("colour=blue")
        .await
        .assert_problem(400, "invalid_query");
}

/// A server process of its own: the figure is that process's peak memory.
async fn a_one_gib_upload_keeps_server_memory_bounded() {
    let app = TestApp::spawn_process(TestConfig::default()).await;
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
    let reply = app
        .create_upload(reqwest::Body::wrap_stream(stream), &[])
        .await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.body["size"], TOTAL as u64);
    assert_eq!(reply.body["sha256"], expected);
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
    an_empty_body_is_refused_and_leaves_nothing,
    an_upload_can_be_deleted_unless_a_job_uses_it,
    uploads_are_listed_newest_first_in_pages_and_by_attachment,
    unused_uploads_expire,
    a_one_gib_upload_keeps_server_memory_bounded,
);
