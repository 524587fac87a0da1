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
    let url = app.url(&format!("/v1/jobs/{id}/results/report.json"));

    let full = app.client.get(&url).send().await.unwrap();
    assert_eq!(full.status(), 200);
    let headers = full.headers().clone();
    let body = full.bytes().await.unwrap();
    let sha = sha256_hex(&body);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert_eq!(headers["etag"].to_str().unwrap(), format!("\"{sha}\""));
    assert_eq!(headers["accept-ranges"], "bytes");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(hex::decode(&sha).unwrap());
    assert_eq!(
        headers["repr-digest"].to_str().unwrap(),
        format!("sha-256=:{b64}:")
    );
    let listed = app.results(id).await;
    let entry = listed.iter().find(|r| r["name"] == "report.json").unwrap();
    assert_eq!(entry["sha256"], sha);
    assert_eq!(entry["size"], body.len());

    let part = app
        .client
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-19/{}", body.len())
    );
    assert_eq!(part.bytes().await.unwrap(), body.slice(10..20));
    let tail = app
        .client
        .get(&url)
        .header("range", "bytes=-5")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap(), body.slice(body.len() - 5..));

    let bad = app
        .client
        .get(&url)
        .header("range", format!("bytes={}-", body.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 416);
    assert_eq!(
        bad.headers()["content-range"].to_str().unwrap(),
        format!("bytes */{}", body.len())
    );
    assert_eq!(bad.headers()["content-type"], "application/problem+json");

    let cached = app
        .client
        .get(&url)
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
}

async fn result_names_are_validated_and_missing_results_are_404() {
    let app = TestApp::spawn().await;
    let job = app.submit("noop", bytes(10, 51), json!({})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", Duration::from_secs(30))
        .await;
    let (status, body) = app
        .get_json(&format!("/v1/jobs/{id}/results/nothing.bin"))
        .await;
    assert_problem(status, &body, 404, "result_not_found");
    for bad in ["..%2F..%2Fferry.db", "a%20b", "masks/..%2F..%2Fx"] {
        let (status, body) = app.get_json(&format!("/v1/jobs/{id}/results/{bad}")).await;
        assert!(status == 422 || status == 404, "{bad}: {status} {body}");
        assert_eq!(body["status"], status, "{bad}: not a problem: {body}");
    }
    let (status, body) = app
        .get_json("/v1/jobs/job_00000000000000000000000000000000/results")
        .await;
    assert_problem(status, &body, 404, "job_not_found");
}

crate::matrix!(
    results_stream_with_etag_digest_and_byte_ranges,
    result_names_are_validated_and_missing_results_are_404,
);
