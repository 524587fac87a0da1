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
    let request = json!({
        "kind": "digest",
        "inputs": {"scan": upload["id"]},
        "params": {"chunk_size": 65536},
        "priority": 10,
        "timeout": "10m",
        "max_attempts": 2,
    });
    spec()
        .request_ok("post", "/v1/jobs", &request)
        .expect("the spec accepts the request");
    let reply = app.create_job(&request, &[]).await;
    assert_eq!(reply.status, 202);
    let job = &reply.body;
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    assert_eq!(job["links"]["self"], format!("/v1/jobs/{id}"));
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(reply.header("idempotent-replayed"), None);
    assert_eq!(job["status"], "queued");
    assert_eq!(job["inputs"][0]["name"], "scan");
    assert_eq!(job["inputs"][0]["upload_id"], upload["id"]);
    assert_eq!(job["inputs"][0]["sha256"], sha256_hex(&data));
    assert_eq!(job["timeout_seconds"], 600.0);
    assert_eq!(job["priority"], 10);
    assert_eq!(job["max_attempts"], 2);
    assert_eq!(job["params"], json!({"chunk_size": 65536}));

    let done = app.wait_status(id, "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 1);
    assert_eq!(done["progress"]["percent"], 100.0);
    assert!(done["started_at"].is_string() && done["finished_at"].is_string());
    assert_eq!(done["result_count"], 2);
    assert_eq!(done["error"], Value::Null);
    // A finished job is not polled any more.
    assert_eq!(app.get_job(id).await.header("retry-after"), None);

    let reply = app.download_result(id, "report.json", &[]).await;
    assert_eq!(reply.status, 200);
    let input = &reply.body["inputs"][0];
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
    let report = results.iter().find(|r| r["name"] == "report.json").unwrap();
    assert_eq!(report["final"], true);

    // The event log tells the story in order.
    let kinds = app.event_kinds(id).await;
    assert_eq!(kinds.first().map(String::as_str), Some("queued"));
    assert_eq!(kinds.get(1).map(String::as_str), Some("started"));
    assert_eq!(kinds.last().map(String::as_str), Some("succeeded"));
    assert!(kinds.iter().any(|k| k == "progress") && kinds.iter().any(|k| k == "result"));
    let events = app.job_events(id, "").await;
    let seqs: Vec<i64> = items(&events)
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let later = app.job_events(id, "after=2").await;
    assert_eq!(later.body["items"][0]["seq"], 3);
    let page = app.job_events(id, "after=1&limit=2").await;
    assert_eq!(page.body["items"][0]["seq"], 2);
    assert_eq!(items(&page).len(), 2);
    app.job_events(id, "limit=0")
        .await
        .assert_problem(400, "invalid_query");
    assert!(!spec().param_ok("get", "/v1/jobs/{id}/events", "limit", json!(0)));

    // The built-in handler logs nothing, but the log is there; its tail is bounded.
    assert_eq!(app.job_logs(id, "").await.status, 200);
    app.job_logs(id, "tail=1001")
        .await
        .assert_problem(400, "invalid_query");
    assert!(!spec().param_ok("get", "/v1/jobs/{id}/logs", "tail", json!(1001)));
}

async fn the_one_request_form_streams_the_body_and_queues_the_job() {
    let app = TestApp::spawn().await;
    let data = bytes(300_000, 12);
    let reply = app
        .create_job_from_file(
            "digest",
            "input=ct&params_json=%7B%22chunk_size%22%3A4096%7D\
             &priority=5&timeout=90&max_attempts=1",
            data.clone(),
            &[
                ("content-type", "application/octet-stream"),
                ("repr-digest", &repr_digest(&data)),
                ("idempotency-key", "one-request-1"),
            ],
        )
        .await;
    assert_eq!(reply.status, 202);
    let job = &reply.body;
    assert_eq!(job["inputs"][0]["name"], "ct");
    assert_eq!(job["inputs"][0]["size"], 300_000);
    assert_eq!(job["inputs"][0]["sha256"], sha256_hex(&data));
    assert_eq!(job["params"]["chunk_size"], 4096);
    assert_eq!(job["timeout_seconds"], 90.0);
    assert_eq!(job["priority"], 5);
    assert_eq!(job["max_attempts"], 1);
    app.wait_status(job["id"].as_str().unwrap(), "succeeded", WITHIN)
        .await;

    // An unknown kind is refused before the body is stored.
    let reply = app
        .create_job_from_file("nope", "", data.clone(), &[])
        .await;
    reply.assert_problem(422, "unknown_kind");
    assert_eq!(reply.field_errors(), ["kind"]);
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );
    // Parameters that are no JSON object, a body that does not match its digest, and a
    // declared length over the limit are refused too.
    let reply = app
        .create_job_from_file("digest", "params_json=%5B%5D", data.clone(), &[])
        .await;
    reply.assert_problem(422, "invalid_field");
    assert_eq!(reply.field_errors(), ["params_json"]);
    app.create_job_from_file(
        "digest",
        "",
        data,
        &[("repr-digest", &repr_digest(b"something else"))],
    )
    .await
    .assert_problem(400, "digest_mismatch");
    let reply = app
        .raw_request(
            "POST /v1/kinds/digest/jobs HTTP/1.1\r\nHost: ferry\r\n\
             content-length: 999999999999999\r\n\r\n",
        )
        .await;
    reply.assert_problem(413, "payload_too_large");
}

async fn invalid_job_requests_get_problems_naming_the_field() {
    let app = TestApp::spawn().await;
    let up = app.upload(bytes(10, 13)).await;
    let id = up["id"].as_str().unwrap();
    let noop = json!({"kind": "noop", "inputs": {"scan": id}});
    let with = |key: &str, value: Value| {
        let mut body = noop.clone();
        body[key] = value;
        body
    };
    // (request, problem code, field named, whether the spec's JobIn refuses it too — some
    // refusals depend on what the server knows, not on the request's shape)
    let cases = [
        (
            with("kind", json!("segment-v9")),
            "unknown_kind",
            Some("kind"),
            false,
        ),
        (
            with("inputs", json!({})),
            "invalid_field",
            Some("inputs"),
            true,
        ),
        (
            with("inputs", json!({"scan": "upl_nope"})),
            "invalid_field",
            Some("inputs.scan"),
            true,
        ),
        (
            with("inputs", json!({"../x": id})),
            "invalid_field",
            Some("inputs.../x"),
            false,
        ),
        (
            with(
                "inputs",
                json!({"scan": "upl_0000000000007000800000000000000a"}),
            ),
            "invalid_field",
            Some("inputs.scan"),
            false,
        ),
        (
            with("priority", json!(1000)),
            "invalid_field",
            Some("priority"),
            true,
        ),
        (
            with("max_attempts", json!(0)),
            "invalid_field",
            Some("max_attempts"),
            true,
        ),
        (
            with("timeout", json!("forever")),
            "invalid_field",
            Some("timeout"),
            false,
        ),
        (
            with("timeout", json!("2h")),
            "invalid_field",
            Some("timeout"),
            false,
        ),
        (
            with("timeout", json!(0)),
            "invalid_field",
            Some("timeout"),
            true,
        ),
        (with("timeout", json!(1.5)), "invalid_body", None, true),
        (with("params", json!([1])), "invalid_body", None, true),
        (with("colour", json!("red")), "invalid_body", None, true),
        (json!({"inputs": {"scan": id}}), "invalid_body", None, true),
    ];
    for (body, want_code, field, spec_refuses) in cases {
        let reply = app.create_job(&body, &[]).await;
        reply.assert_problem(422, want_code);
        if let Some(field) = field {
            assert_eq!(
                reply.body["errors"][0]["field"], field,
                "for {body}: {}",
                reply.body
            );
        }
        if spec_refuses {
            assert!(
                spec().request_ok("post", "/v1/jobs", &body).is_err(),
                "the server refuses {body} but the spec's JobIn accepts it"
            );
        }
    }
    // Not JSON at all, not JSON by its media type, a query string on the JSON form, an
    // overlong idempotency key.
    app.request("post", "/v1/jobs", |r| {
        r.header("content-type", "application/json")
            .body("{not json")
    })
    .await
    .assert_problem(400, "invalid_json");
    app.request("post", "/v1/jobs", |r| r.body("kind=noop"))
        .await
        .assert_problem(415, "unsupported_media_type");
    app.request("post", "/v1/jobs", |r| {
        r.header("content-type", "text/plain").body("noop please")
    })
    .await
    .assert_problem(415, "unsupported_media_type");
    let unknown = with("kind", json!("no-such-kind"));
    app.request("post", "/v1/jobs?priority=1", |r| r.json(&unknown))
        .await
        .assert_problem(400, "invalid_query");
    app.create_job(&unknown, &[("idempotency-key", &"k".repeat(256))])
        .await
        .assert_problem(400, "invalid_idempotency_key");
    // Nothing was created, and the upload is still free.
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 0);
    let upload = app.get_upload(id).await;
    assert_eq!(upload.status, 200);
    assert_eq!(upload.body["job_count"], 0);
    let (status, _) = app.post_job(with("timeout", json!(30))).await;
    assert_eq!(status, 202);
}

async fn an_idempotency_key_replays_the_same_job_and_rejects_a_different_body() {
    let app = TestApp::spawn().await;
    let up = app.upload(bytes(10, 14)).await;
    let body =
        json!({"kind": "noop", "inputs": {"scan": up["id"]}, "params": {"a": 1, "b": [1, 2]}});
    let key = [("idempotency-key", "order-42")];
    let first = app.create_job(&body, &key).await;
    assert_eq!(first.status, 202);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same body, keys in another order: the same job.
    let reordered =
        json!({"params": {"b": [1, 2], "a": 1}, "inputs": {"scan": up["id"]}, "kind": "noop"});
    let second = app.create_job(&reordered, &key).await;
    assert_eq!(second.status, 202);
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.body["id"], second.body["id"]);
    // Different body, same key.
    app.create_job(
        &json!({"kind": "noop", "inputs": {"scan": up["id"]}, "params": {"a": 2}}),
        &key,
    )
    .await
    .assert_problem(422, "idempotency_key_reused");
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 1);
}

async fn a_key_whose_request_is_still_uploading_is_in_flight() {
    use std::io::Write;
    let app = TestApp::spawn().await;
    let path = "/v1/kinds/noop/jobs";
    let mut slow = app.partial_post(
        path,
        "Idempotency-Key: scan-7\r\n",
        2_000_000,
        &bytes(1_000_000, 15),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same request again while the first is still sending its body.
    app.create_job_from_file(
        "noop",
        "",
        bytes(2_000_000, 15),
        &[("idempotency-key", "scan-7")],
    )
    .await
    .assert_problem(409, "idempotency_key_in_flight");
    // The first request completes normally and owns the key.
    slow.write_all(&bytes(1_000_000, 16)).unwrap();
    let reply = read_raw_reply(&mut slow);
    spec().check_reply("post", path, &reply);
    assert_eq!(reply.status, 202, "{}", reply.body);
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
    let listed = |reply: &Reply| -> Vec<String> {
        items(reply)
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let page1 = app.list_jobs("limit=2").await;
    assert_eq!(listed(&page1), [ids[4].as_str(), ids[3].as_str()]);
    let next = page1.body["next"].as_str().unwrap();
    let page2 = app.list_jobs(&format!("limit=2&next={next}")).await;
    assert_eq!(listed(&page2), [ids[2].as_str(), ids[1].as_str()]);
    let page3 = app
        .list_jobs(&format!(
            "limit=2&next={}",
            page2.body["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(items(&page3).len(), 1);
    assert!(page3.body["next"].is_null());

    let digests = app.list_jobs("kind=digest&status=succeeded").await;
    assert_eq!(items(&digests).len(), 2);
    let all_filters = app
        .list_jobs("status=succeeded&kind=digest&created_after=2000-01-01T00:00:00Z&limit=200")
        .await;
    assert_eq!(listed(&all_filters), listed(&digests));
    assert_eq!(all_filters.body["next"], Value::Null);
    assert!(items(&app.list_jobs("status=failed").await).is_empty());
    let future = app.list_jobs("created_after=2999-01-01T00:00:00Z").await;
    assert!(items(&future).is_empty());
    let past = app.list_jobs("created_before=2999-01-01T00:00:00Z").await;
    assert_eq!(items(&past).len(), 5);

    for (query, field) in [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("created_after=yesterday", "created_after"),
        ("next=abc", "next"),
    ] {
        let reply = app.list_jobs(query).await;
        reply.assert_problem(400, "invalid_query");
        assert_eq!(reply.body["errors"][0]["field"], field);
    }
    for query in ["colour=red", "limit=many"] {
        app.list_jobs(query)
            .await
            .assert_problem(400, "invalid_query");
    }
    // The spec says as much about the parameters.
    let param_ok = |name: &str, value: Value| spec().param_ok("get", "/v1/jobs", name, value);
    assert!(param_ok("limit", json!(1)) && param_ok("limit", json!(200)));
    assert!(!param_ok("limit", json!(0)) && !param_ok("limit", json!(201)));
    assert!(!param_ok("status", json!("done")));
}

async fn a_finished_job_cannot_be_canceled_and_a_deleted_job_leaves_nothing() {
    let app = TestApp::spawn().await;
    let job = app
        .submit("digest", bytes(50_000, 30), json!({"chunk_size": 4096}))
        .await;
    let id = job["id"].as_str().unwrap();
    let upload_id = job["inputs"][0]["upload_id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    app.cancel_job(id).await.assert_problem(409, "job_finished");

    assert!(!app.blob_files("").await.is_empty());
    assert_eq!(app.delete_job(id).await.status, 204);
    app.get_job(id).await.assert_problem(404, "job_not_found");
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
    // Gone from every address, and its input with it.
    app.list_results(id)
        .await
        .assert_problem(404, "job_not_found");
    app.download_result(id, "report.json", &[])
        .await
        .assert_problem(404, "job_not_found");
    app.delete_job(id)
        .await
        .assert_problem(404, "job_not_found");
    app.get_upload(upload_id)
        .await
        .assert_problem(404, "upload_not_found");
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
