//! Jobs: creation (JSON and one-request forms), validation, idempotency, reads, listing,
//! cancel of a queued job, hard deletion, the event log, and the built-in digest handler.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(30);

async fn a_digest_job_runs_to_success_with_progress_and_a_correct_report() {
    let app = TestApp::spawn().await;
    let data = bytes(1_000_000, 11);
    let upload = app.upload(data.clone()).await;
    let res = app
        .client
        .post(app.url("/v1/jobs"))
        .json(&json!({"kind": "digest", "inputs": {"scan": upload["id"]}, "params": {"chunk_size": 65536}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(res.headers().contains_key("retry-after"));
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    assert_eq!(job["status"], "queued");
    assert_eq!(job["inputs"][0]["name"], "scan");
    assert_eq!(job["inputs"][0]["sha256"], sha256_hex(&data));

    let done = app.wait_status(id, "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["progress"]["percent"], 100.0);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert_eq!(done["result_count"], 2);

    let res = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/results/report.json")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let report: Value = res.json().await.unwrap();
    let input = &report["inputs"][0];
    assert_eq!(input["sha256"], sha256_hex(&data));
    assert_eq!(input["sha256_matches_upload"], true);
    let chunks = input["chunks"].as_array().unwrap();
    assert_eq!(chunks.len(), 1_000_000usize.div_ceil(65536));
    assert_eq!(chunks[0]["sha256"], sha256_hex(&data[..65536]));
    assert_eq!(chunks.last().unwrap()["size"], 1_000_000 % 65536);
    let results = app.results(id).await;
    let partial = results
        .iter()
        .find(|r| r["name"] == "partial-report.json")
        .unwrap();
    assert_eq!(partial["final"], false);

    // The event log tells the story in order.
    let (_, events) = app.get_json(&format!("/v1/jobs/{id}/events")).await;
    let kinds: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert_eq!(kinds.get(1), Some(&"started"));
    assert_eq!(kinds.last(), Some(&"succeeded"));
    assert!(kinds.contains(&"progress") && kinds.contains(&"result"));
    let seqs: Vec<i64> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let (_, later) = app.get_json(&format!("/v1/jobs/{id}/events?after=2")).await;
    assert_eq!(later["items"][0]["seq"], 3);
}

async fn the_one_request_form_streams_the_body_and_queues_the_job() {
    let app = TestApp::spawn().await;
    let data = bytes(300_000, 12);
    let res = app
        .client
        .post(app.url("/v1/jobs?kind=digest&input=ct&params=%7B%22chunk_size%22%3A4096%7D"))
        .header("content-type", "application/octet-stream")
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["inputs"][0]["name"], "ct");
    assert_eq!(job["inputs"][0]["size"], 300_000);
    assert_eq!(job["params"]["chunk_size"], 4096);
    app.wait_status(job["id"].as_str().unwrap(), "succeeded", WITHIN)
        .await;

    // An unknown kind is refused before the body is stored.
    let res = app
        .client
        .post(app.url("/v1/jobs?kind=nope"))
        .body(data)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(status, &res.json().await.unwrap(), 422, "unknown_kind");
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );
}

async fn invalid_job_requests_get_problems_naming_the_field() {
    let app = TestApp::spawn().await;
    let up = app.upload(bytes(10, 13)).await;
    let id = up["id"].as_str().unwrap();
    let cases = [
        (
            json!({"kind": "segment-v9", "inputs": {"scan": id}}),
            422,
            "unknown_kind",
            Some("kind"),
        ),
        (
            json!({"kind": "noop", "inputs": {}}),
            422,
            "invalid_field",
            Some("inputs"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": "upl_nope"}}),
            422,
            "invalid_field",
            Some("inputs.scan"),
        ),
        (
            json!({"kind": "noop", "inputs": {"../x": id}}),
            422,
            "invalid_field",
            Some("inputs.../x"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": "upl_0000000000007000800000000000000a"}}),
            422,
            "invalid_field",
            Some("inputs.scan"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": id}, "priority": 1000}),
            422,
            "invalid_field",
            Some("priority"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": id}, "max_attempts": 0}),
            422,
            "invalid_field",
            Some("max_attempts"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": id}, "timeout": "forever"}),
            422,
            "invalid_field",
            Some("timeout"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": id}, "timeout": "2h"}),
            422,
            "invalid_field",
            Some("timeout"),
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": id}, "params": [1]}),
            422,
            "invalid_body",
            None,
        ),
        (
            json!({"kind": "noop", "inputs": {"scan": id}, "colour": "red"}),
            422,
            "invalid_body",
            None,
        ),
        (json!({"inputs": {"scan": id}}), 422, "invalid_body", None),
    ];
    for (body, want_status, want_code, field) in cases {
        let (status, problem) = app.post_job(body.clone()).await;
        assert_problem(status, &problem, want_status, want_code);
        if let Some(field) = field {
            assert_eq!(
                problem["errors"][0]["field"], field,
                "for {body}: {problem}"
            );
        }
    }
    // Not JSON at all.
    let res = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(status, &res.json().await.unwrap(), 400, "invalid_json");
    let res = app
        .client
        .post(app.url("/v1/jobs"))
        .body("kind=noop")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(
        status,
        &res.json().await.unwrap(),
        415,
        "unsupported_media_type",
    );
    // Nothing was created, and the upload is still free.
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 0);
    let (status, _) = app
        .post_job(json!({"kind": "noop", "inputs": {"scan": id}, "timeout": 30}))
        .await;
    assert_eq!(status, 202);
}

async fn an_idempotency_key_replays_the_same_job_and_rejects_a_different_body() {
    let app = TestApp::spawn().await;
    let up = app.upload(bytes(10, 14)).await;
    let body =
        json!({"kind": "noop", "inputs": {"scan": up["id"]}, "params": {"a": 1, "b": [1, 2]}});
    let send = |body: Value| {
        app.client
            .post(app.url("/v1/jobs"))
            .header("idempotency-key", "order-42")
            .json(&body)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 202);
    assert!(!first.headers().contains_key("idempotent-replayed"));
    let first: Value = first.json().await.unwrap();
    // Same body, keys in another order: the same job.
    let reordered =
        json!({"params": {"b": [1, 2], "a": 1}, "inputs": {"scan": up["id"]}, "kind": "noop"});
    let second = send(reordered).await.unwrap();
    assert_eq!(second.status(), 202);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    // Different body, same key.
    let other = send(json!({"kind": "noop", "inputs": {"scan": up["id"]}, "params": {"a": 2}}))
        .await
        .unwrap();
    let status = other.status().as_u16();
    assert_problem(
        status,
        &other.json().await.unwrap(),
        422,
        "idempotency_key_reused",
    );
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 1);
}

async fn a_key_whose_request_is_still_uploading_is_in_flight() {
    use std::io::Write;
    let app = TestApp::spawn().await;
    let mut slow = app.partial_post(
        "/v1/jobs?kind=noop",
        "Idempotency-Key: scan-7\r\n",
        2_000_000,
        &bytes(1_000_000, 15),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same request again while the first is still sending its body.
    let res = app
        .client
        .post(app.url("/v1/jobs?kind=noop"))
        .header("idempotency-key", "scan-7")
        .body(bytes(2_000_000, 15))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(
        status,
        &res.json().await.unwrap(),
        409,
        "idempotency_key_in_flight",
    );
    // The first request completes normally and owns the key.
    slow.write_all(&bytes(1_000_000, 16)).unwrap();
    let mut reply = String::new();
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let n = slow.read(&mut buf).unwrap();
    reply.push_str(&String::from_utf8_lossy(&buf[..n]));
    assert!(reply.starts_with("HTTP/1.1 202"), "{reply}");
}

async fn jobs_are_listed_newest_first_with_filters_and_a_cursor() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let kind = if i % 2 == 0 { "noop" } else { "digest" };
        let job = app.submit(kind, bytes(100, 20 + i), json!({})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    let (_, page1) = app.get_json("/v1/jobs?limit=2").await;
    let got: Vec<&str> = page1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str()]);
    let next = page1["next"].as_str().unwrap();
    let (_, page2) = app.get_json(&format!("/v1/jobs?limit=2&next={next}")).await;
    let got: Vec<&str> = page2["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    let (_, page3) = app
        .get_json(&format!(
            "/v1/jobs?limit=2&next={}",
            page2["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(page3["items"].as_array().unwrap().len(), 1);
    assert!(page3["next"].is_null());

    let (_, digests) = app.get_json("/v1/jobs?kind=digest&status=succeeded").await;
    assert_eq!(digests["items"].as_array().unwrap().len(), 2);
    let (_, none) = app.get_json("/v1/jobs?status=failed").await;
    assert!(none["items"].as_array().unwrap().is_empty());
    let (_, future) = app
        .get_json("/v1/jobs?created_after=2999-01-01T00:00:00Z")
        .await;
    assert!(future["items"].as_array().unwrap().is_empty());
    let (_, past) = app
        .get_json("/v1/jobs?created_before=2999-01-01T00:00:00Z")
        .await;
    assert_eq!(past["items"].as_array().unwrap().len(), 5);

    for (query, field) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("created_after=yesterday", "created_after"),
        ("next=abc", "next"),
    ] {
        let (status, problem) = app.get_json(&format!("/v1/jobs?{query}")).await;
        assert_problem(status, &problem, 400, "invalid_query");
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let (status, problem) = app.get_json("/v1/jobs?colour=red").await;
    assert_problem(status, &problem, 400, "invalid_query");
}

async fn a_finished_job_cannot_be_canceled_and_a_deleted_job_leaves_nothing() {
    let app = TestApp::spawn().await;
    let job = app
        .submit("digest", bytes(50_000, 30), json!({"chunk_size": 4096}))
        .await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    let res = app
        .client
        .post(app.url(&format!("/v1/jobs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    assert_problem(status, &res.json().await.unwrap(), 409, "job_finished");

    assert!(!app.blob_files("").await.is_empty());
    let res = app
        .client
        .delete(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    let (status, problem) = app.get_json(&format!("/v1/jobs/{id}")).await;
    assert_problem(status, &problem, 404, "job_not_found");
    assert!(
        app.blob_files("").await.is_empty(),
        "bytes left: {:?}",
        app.blob_files("").await
    );
    for table in [
        "ferry_jobs",
        "ferry_uploads",
        "ferry_results",
        "ferry_job_events",
        "ferry_job_inputs",
        "ferry_job_logs",
    ] {
        assert_eq!(
            app.count_rows(&format!("SELECT COUNT(*) FROM {table}"))
                .await,
            0,
            "{table}"
        );
    }
    let res = app
        .client
        .delete(app.url(&format!("/v1/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

crate::matrix!(
    a_digest_job_runs_to_success_with_progress_and_a_correct_report,
    the_one_request_form_streams_the_body_and_queues_the_job,
    invalid_job_requests_get_problems_naming_the_field,
    an_idempotency_key_replays_the_same_job_and_rejects_a_different_body,
    a_key_whose_request_is_still_uploading_is_in_flight,
    jobs_are_listed_newest_first_with_filters_and_a_cursor,
    a_finished_job_cannot_be_canceled_and_a_deleted_job_leaves_nothing,
);
