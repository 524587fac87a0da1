//! Result downloads: headers, digests, byte ranges, conditional requests and name validation.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

async fn results_stream_with_etag_digest_and_byte_ranges() {
    let app = TestApp::spawn().await;
    let job = app
        .submit("digest", bytes(40_000, 50), json!({"chunk_size": 4096}))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", Duration::from_secs(30))
        .await;
    let download = |headers: Headers<'static>| app.download_result(id, "report.json", headers);

    let full = download(&[]).await;
    assert_eq!(full.status, 200);
    let body = &full.bytes;
    let sha = sha256_hex(body);
    let etag = format!("\"{sha}\"");
    assert_eq!(full.header("content-type"), Some("application/json"));
    assert_eq!(
        full.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(full.header("etag"), Some(etag.as_str()));
    assert_eq!(full.header("accept-ranges"), Some("bytes"));
    assert_eq!(full.header("repr-digest"), Some(repr_digest(body).as_str()));
    let listed = app.results(id).await;
    let entry = listed.iter().find(|r| r["name"] == "report.json").unwrap();
    assert_eq!(entry["sha256"], sha);
    assert_eq!(entry["size"], body.len());

    let part = download(&[("range", "bytes=10-19")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-19/{}", body.len()).as_str())
    );
    assert_eq!(part.bytes, body[10..20]);
    let tail = download(&[("range", "bytes=-5")]).await;
    assert_eq!(tail.status, 206);
    assert_eq!(tail.bytes, body[body.len() - 5..]);

    let bad = app
        .download_result(
            id,
            "report.json",
            &[("range", &format!("bytes={}-", body.len()))],
        )
        .await;
    bad.assert_problem(416, "range_not_satisfiable");
    assert_eq!(
        bad.header("content-range"),
        Some(format!("bytes */{}", body.len()).as_str())
    );
    assert_eq!(bad.header("content-type"), Some("application/problem+json"));

    let cached = app
        .download_result(id, "report.json", &[("if-none-match", &etag)])
        .await;
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
}

async fn result_names_are_validated_and_missing_results_are_404() {
    let app = TestApp::spawn().await;
    let job = app.submit("noop", bytes(10, 51), json!({})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", Duration::from_secs(30))
        .await;
    for missing in ["nothing.bin", "nothing/here.json"] {
        app.download_result(id, missing, &[])
            .await
            .assert_problem(404, "result_not_found");
    }
    for bad in ["..%2F..%2Fferry.db", "a%20b", "masks/..%2F..%2Fx"] {
        let reply = app.download_result(id, bad, &[]).await;
        assert!(
            reply.status == 422 || reply.status == 404,
            "{bad}: {} {}",
            reply.status,
            reply.body
        );
        assert_eq!(
            reply.body["status"], reply.status,
            "{bad}: not a problem: {}",
            reply.body
        );
    }
    let reply = app.download_result(id, "a%20b", &[]).await;
    reply.assert_problem(422, "invalid_field");
    assert_eq!(reply.field_errors(), ["name"]);
    app.list_results("job_00000000000000000000000000000000")
        .await
        .assert_problem(404, "job_not_found");
}

crate::matrix!(
    results_stream_with_etag_digest_and_byte_ranges,
    result_names_are_validated_and_missing_results_are_404,
);
