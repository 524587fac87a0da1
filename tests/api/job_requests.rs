//! Job requests: the one-request form is checked whole before one byte of its body is read, and
//! a page of jobs shows each job's own inputs and result count.

use std::{
    io::Read,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, bytes};

const WITHIN: Duration = Duration::from_secs(60);

crate::matrix!(
    a_bad_one_request_job_is_refused_before_its_body_is_read,
    a_page_of_jobs_shows_each_jobs_inputs_and_results,
);

/// Reads the status and JSON body of the answer on a hand-made connection.
fn read_answer(mut stream: std::net::TcpStream) -> (u16, Value) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head_end, status, length) = loop {
        let n = stream
            .read(&mut chunk)
            .expect("an answer before the body is sent");
        assert!(n > 0, "connection closed without an answer");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status = head[9..12].parse::<u16>().expect("status code");
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .expect("content-length");
            break (end + 4, status, length);
        }
    };
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).expect("body");
        assert!(n > 0, "connection closed inside the answer's body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + length]).expect("JSON body");
    (status, body)
}

async fn a_bad_one_request_job_is_refused_before_its_body_is_read() {
    let app = TestApp::spawn().await;
    // Each request declares a 1 GiB body and sends 64 KiB of it: the answer must come without
    // the rest, and nothing may be stored.
    for (path, extra_header, status, code, field) in [
        (
            "/v1/kinds/model/jobs?priority=101",
            "",
            422,
            "invalid_field",
            "priority",
        ),
        (
            "/v1/kinds/model/jobs?max_attempts=0",
            "",
            422,
            "invalid_field",
            "max_attempts",
        ),
        (
            "/v1/kinds/model/jobs?timeout=0",
            "",
            422,
            "invalid_field",
            "timeout",
        ),
        (
            "/v1/kinds/model/jobs?timeout=1000h",
            "",
            422,
            "invalid_field",
            "timeout",
        ),
        (
            "/v1/kinds/model/jobs?timeout=soon",
            "",
            422,
            "invalid_field",
            "timeout",
        ),
        (
            // A private address, which the tests' configuration does not allow for webhooks.
            "/v1/kinds/model/jobs?webhook_url=http%3A%2F%2F10.0.0.1%2F",
            "",
            422,
            "invalid_field",
            "webhook_url",
        ),
        (
            "/v1/kinds/no-such-kind/jobs",
            "",
            422,
            "unknown_kind",
            "kind",
        ),
        (
            "/v1/kinds/model/jobs?input=..",
            "",
            422,
            "invalid_field",
            "input",
        ),
        (
            "/v1/kinds/model/jobs?params_json=%5B1%5D",
            "",
            422,
            "invalid_field",
            "params_json",
        ),
        (
            "/v1/kinds/model/jobs",
            "Idempotency-Key: \r\n",
            400,
            "invalid_idempotency_key",
            "",
        ),
    ] {
        let headers = format!("Content-Type: application/octet-stream\r\n{extra_header}");
        let stream = app.partial_post(path, &headers, 1 << 30, &bytes(64 << 10, 1));
        let started = Instant::now();
        let (got_status, body) = tokio::task::spawn_blocking(move || read_answer(stream))
            .await
            .expect("reader");
        assert_problem(got_status, &body, status, code);
        if !field.is_empty() {
            assert_eq!(body["errors"][0]["field"], field, "{path}: {body}");
        }
        eprintln!(
            "{path}: answered {got_status} after {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0,
        "a refused request stored an upload"
    );
    app.wait_no_blobs("").await;
}

async fn a_page_of_jobs_shows_each_jobs_inputs_and_results() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for n in 0..5u64 {
        let data = bytes(1000 + n as usize, 10 + n);
        let job = app.submit("digest", data, json!({})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    // Two inputs on one more job.
    let (a, b) = (
        app.upload(bytes(10, 20)).await,
        app.upload(bytes(20, 21)).await,
    );
    let (status, two) = app
        .post_job(json!({"kind": "noop", "inputs": {"a": a["id"], "b": b["id"]}}))
        .await;
    assert_eq!(status, 202, "{two}");
    for id in &ids {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    let two_id = two["id"].as_str().unwrap();
    app.wait_status(two_id, "succeeded", WITHIN).await;

    let (status, page) = app.get_json("/v1/jobs?limit=200").await;
    assert_eq!(status, 200, "{page}");
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    for item in items {
        let id = item["id"].as_str().unwrap();
        // The page agrees with the job read on its own, input by input.
        let alone = app.job(id).await;
        assert_eq!(item["inputs"], alone["inputs"], "{id}");
        assert_eq!(item["result_count"], alone["result_count"], "{id}");
        let results = app.results(id).await;
        assert_eq!(item["result_count"], results.len(), "{id}");
    }
    let by_id = |id: &str| items.iter().find(|i| i["id"] == id).unwrap().clone();
    let two_inputs = by_id(two_id)["inputs"].as_array().unwrap().clone();
    let names: Vec<&str> = two_inputs
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(two_inputs[1]["size"], 20);
    for (n, id) in ids.iter().enumerate() {
        let item = by_id(id);
        assert_eq!(item["inputs"][0]["size"], 1000 + n);
        assert!(item["result_count"].as_u64().unwrap() >= 1, "{item}");
    }
}
