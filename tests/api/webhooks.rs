//! Webhooks: a job's own endpoint and server-wide endpoints receive the job's events, signed per
//! Standard Webhooks (checked by the reference library), in order, retried on the schedule,
//! recorded attempt by attempt; 410 disables an endpoint; addresses the configuration refuses
//! are refused; and pending deliveries survive `kill -9`, each accepted once per `webhook-id`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    helpers::*,
    webhook_receiver::{Answer, Receiver},
};

const WITHIN: Duration = Duration::from_secs(60);

/// The event types a finished `digest` job sends (progress and result in either order).
const DIGEST_EVENTS: [&str; 5] = ["queued", "started", "progress", "result", "succeeded"];

async fn job_with_webhook(app: &TestApp, hook: Value) -> Value {
    let upload = app.upload(b"hello webhooks".to_vec()).await;
    let reply = app
        .create_job(
            &json!({"kind": "digest", "inputs": {"scan": upload["id"]}, "webhook": hook}),
            &[],
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body
}

fn types(received: &[crate::webhook_receiver::Received]) -> Vec<String> {
    received
        .iter()
        .filter(|r| r.answered == 200)
        .map(|r| r.json()["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn deliveries_of_job(app: &TestApp, job: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/jobs/{job}/webhook-deliveries")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    items(&reply).to_vec()
}

async fn a_job_webhook_gets_every_event_signed_and_in_order() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let job = job_with_webhook(&app, json!({"url": receiver.url})).await;
    let id = job["id"].as_str().unwrap();
    let secret = job["webhook"]["secret"]
        .as_str()
        .expect("the secret, shown once");
    assert!(secret.starts_with("whsec_"));
    app.wait_status(id, "succeeded", WITHIN).await;
    let received = receiver
        .wait_until(WITHIN, "the succeeded event", |r| {
            types(r).last().map(String::as_str) == Some("succeeded")
        })
        .await;
    // Exactly the job's event log, in its order.
    let log = app.get(&format!("/v1/jobs/{id}/events")).await;
    let kinds: Vec<&str> = items(&log)
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(types(&received), kinds);
    let mut sorted = kinds.clone();
    sorted.sort();
    let mut expected = DIGEST_EVENTS.to_vec();
    expected.sort();
    assert_eq!(sorted, expected);
    let mut seqs = Vec::new();
    for r in &received {
        assert!(r.verifies_with(secret), "signature of {}", r.json());
        let payload = r.json();
        assert_eq!(r.header("webhook-id"), payload["id"]);
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(payload["data"]["job_id"], id);
        assert_eq!(payload["data"]["kind"], "digest");
        seqs.push(payload["data"]["seq"].as_i64().unwrap());
        if payload["type"] == "result" {
            let result = &payload["data"]["result"];
            let stored = app.results(id).await;
            let same = stored
                .iter()
                .find(|r| r["name"] == result["name"])
                .expect("stored");
            assert_eq!(result["size"], same["size"], "{payload}");
            assert_eq!(result["sha256"], same["sha256"]);
            assert_eq!(result["url"], same["url"]);
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    assert!(
        !receiver.received()[0].verifies_with(&ferry::webhooks::signing::generate_secret()),
        "another secret does not verify"
    );
    assert!(
        app.get_job(id).await.body["webhook"].is_null(),
        "the secret is shown only to the creating request"
    );

    let log = deliveries_of_job(&app, id).await;
    assert_eq!(log.len(), DIGEST_EVENTS.len(), "{log:#?}");
    for delivery in &log {
        assert_eq!(delivery["state"], "succeeded", "{delivery}");
        assert_eq!(delivery["attempts"], 1);
        assert_eq!(delivery["last_status_code"], 200);
        let one = app.get(delivery["links"]["self"].as_str().unwrap()).await;
        assert_eq!(one.status, 200);
        let attempts = one.body["attempt_log"].as_array().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0]["status_code"], 200);
        assert_eq!(attempts[0]["response_excerpt"], "answered 200");
        assert_eq!(attempts[0]["webhook_id"], delivery["webhook_id"]);
    }
}

async fn the_event_filter_and_the_one_request_form_choose_what_is_sent() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let query = format!(
        "webhook_url={}&webhook_events=succeeded,failed",
        urlencode(&receiver.url)
    );
    let reply = app
        .create_job_from_file("digest", &query, b"one request".to_vec(), &[])
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(
        reply.body["webhook"]["events"],
        json!(["succeeded", "failed"])
    );
    let secret = reply.body["webhook"]["secret"].as_str().unwrap().to_owned();
    let id = reply.body["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    let received = receiver
        .wait_until(WITHIN, "succeeded", |r| !types(r).is_empty())
        .await;
    assert_eq!(types(&received), ["succeeded"]);
    assert!(received[0].verifies_with(&secret));
    // Only the wanted events had deliveries at all.
    let log = deliveries_of_job(&app, id).await;
    assert_eq!(log.len(), 1, "{log:#?}");
}

async fn server_wide_endpoints_are_managed_and_rotation_signs_with_both_secrets() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let created = app
        .request("post", "/v1/webhooks", |r| {
            r.json(&json!({"url": receiver.url, "events": ["succeeded"], "description": "ops"}))
        })
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let hook = created.body.clone();
    let path = hook["links"]["self"].as_str().unwrap().to_owned();
    assert_eq!(created.header("location"), Some(path.as_str()));
    let first_secret = hook["secret"].as_str().unwrap().to_owned();

    let read = app.get(&path).await;
    assert_eq!(read.status, 200);
    assert!(
        read.body["secret"].is_null(),
        "the secret is not shown again"
    );
    let listed = app.get("/v1/webhooks").await;
    assert_eq!(listed.status, 200);
    assert_eq!(items(&listed).len(), 1);

    let job = app.submit("digest", b"a".to_vec(), json!({})).await;
    receiver
        .wait_until(WITHIN, "one succeeded", |r| types(r).len() == 1)
        .await;
    assert!(receiver.received()[0].verifies_with(&first_secret));
    assert_eq!(receiver.received()[0].json()["data"]["job_id"], job["id"]);

    let rotated = app
        .request("post", &format!("{path}/rotate-secret"), |r| r)
        .await;
    assert_eq!(rotated.status, 200, "{}", rotated.body);
    let second_secret = rotated.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(second_secret, first_secret);
    assert!(rotated.body["previous_secret_expires_at"].is_string());
    app.submit("digest", b"b".to_vec(), json!({})).await;
    let received = receiver
        .wait_until(WITHIN, "a second succeeded", |r| types(r).len() == 2)
        .await;
    assert!(received[1].verifies_with(&second_secret), "the new secret");
    assert!(
        received[1].verifies_with(&first_secret),
        "the old one, during the overlap"
    );
    assert_eq!(
        received[1].header("webhook-signature").split(' ').count(),
        2
    );

    // Disabled: events are not queued for it.
    let disabled = app.request("post", &format!("{path}/disable"), |r| r).await;
    assert_eq!(disabled.status, 200);
    assert_eq!(disabled.body["enabled"], false);
    assert_eq!(disabled.body["disabled_reason"], "disabled");
    let quiet = app.submit("digest", b"c".to_vec(), json!({})).await;
    let quiet_id = quiet["id"].as_str().unwrap();
    app.wait_status(quiet_id, "succeeded", WITHIN).await;
    assert!(deliveries_of_job(&app, quiet_id).await.is_empty());
    let enabled = app.request("post", &format!("{path}/enable"), |r| r).await;
    assert_eq!(enabled.body["enabled"], true);
    let endpoint_log = app.get(&format!("{path}/deliveries")).await;
    assert_eq!(endpoint_log.status, 200);
    assert_eq!(items(&endpoint_log).len(), 2);

    let deleted = app.request("delete", &path, |r| r).await;
    assert_eq!(deleted.status, 204);
    let gone = app.get(&path).await;
    assert_problem(gone.status, &gone.body, 404, "webhook_not_found");
}

async fn a_failing_receiver_is_retried_and_a_used_up_schedule_ends_failed() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    receiver.answer(Answer::status(503));
    let job = job_with_webhook(&app, json!({"url": receiver.url, "events": ["succeeded"]})).await;
    let id = job["id"].as_str().unwrap();
    // Two failed attempts, then the receiver is back.
    receiver
        .wait_until(WITHIN, "two attempts", |r| r.len() >= 2)
        .await;
    receiver.answer(Answer::status(200));
    receiver
        .wait_until(WITHIN, "the delivery", |r| !types(r).is_empty())
        .await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] == w[1]),
        "one webhook-id on every attempt: {ids:?}"
    );
    let log = deliveries_of_job(&app, id).await;
    let delivery = app
        .get(log[0]["links"]["self"].as_str().unwrap())
        .await
        .body;
    assert_eq!(delivery["state"], "succeeded");
    let codes: Vec<&Value> = delivery["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status_code"])
        .collect();
    assert_eq!(codes.last(), Some(&&json!(200)));
    assert!(
        codes[..codes.len() - 1].iter().all(|c| **c == json!(503)),
        "{codes:?}"
    );

    // A receiver failing for good: the schedule (4 attempts in the tests) ends `failed`.
    receiver.answer(Answer {
        retry_after: Some("1".into()),
        ..Answer::status(500)
    });
    let job = job_with_webhook(&app, json!({"url": receiver.url, "events": ["succeeded"]})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let failed = wait_delivery(&app, &id, |d| d["state"] == "failed").await;
    assert_eq!(failed["attempts"], 4, "{failed}");
    assert_eq!(failed["last_status_code"], 500);
    assert!(failed["next_attempt_at"].is_null());

    // Redelivery sends it once more.
    receiver.answer(Answer::status(200));
    let again = app
        .request(
            "post",
            failed["links"]["redeliver"].as_str().unwrap(),
            |r| r,
        )
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    let delivered = wait_delivery(&app, &id, |d| d["state"] == "succeeded").await;
    assert_eq!(delivered["attempts"], 5);
}

/// Waits for the job's (first) delivery to satisfy `done`.
async fn wait_delivery(app: &TestApp, job: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        if let Some(d) = deliveries_of_job(app, job).await.first()
            && done(d)
        {
            return d.clone();
        }
        assert!(
            start.elapsed() < WITHIN,
            "delivery of {job} never got there"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gone_disables_the_endpoint_and_an_unreachable_one_is_recorded() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    receiver.answer(Answer::status(410));
    let hook = app
        .request("post", "/v1/webhooks", |r| {
            r.json(&json!({"url": receiver.url, "events": ["succeeded"]}))
        })
        .await
        .body;
    let job = app.submit("digest", b"x".to_vec(), json!({})).await;
    let id = job["id"].as_str().unwrap();
    let gone = wait_delivery(&app, id, |d| d["state"] == "failed").await;
    assert_eq!(gone["attempts"], 1, "410 is not retried: {gone}");
    let endpoint = app.get(hook["links"]["self"].as_str().unwrap()).await.body;
    assert_eq!(endpoint["enabled"], false);
    assert_eq!(endpoint["disabled_reason"], "gone");

    // Nothing listens on a port that was just freed: the attempt is recorded, with why.
    let port = {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    };
    let job = job_with_webhook(
        &app,
        json!({"url": format!("http://127.0.0.1:{port}/"), "events": ["succeeded"]}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let tried = wait_delivery(&app, id, |d| d["attempts"].as_i64() >= Some(1)).await;
    assert!(tried["last_status_code"].is_null());
    let error = tried["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("connect"), "{error}");
}

/// A redirect is not followed (the signed event goes only where the endpoint says), and a long
/// answer is kept only in part.
async fn redirects_are_not_followed_and_long_answers_are_cut() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let elsewhere = Receiver::start();
    receiver.answer(Answer {
        location: Some(elsewhere.url.clone()),
        body: Some("x".repeat(100_000)),
        ..Answer::status(307)
    });
    let job = job_with_webhook(&app, json!({"url": receiver.url, "events": ["succeeded"]})).await;
    let id = job["id"].as_str().unwrap();
    let failed = wait_delivery(&app, id, |d| d["state"] == "failed").await;
    assert_eq!(failed["last_status_code"], 307, "{failed}");
    assert!(elsewhere.received().is_empty(), "the redirect was followed");
    let one = app
        .get(failed["links"]["self"].as_str().unwrap())
        .await
        .body;
    for attempt in one["attempt_log"].as_array().unwrap() {
        let excerpt = attempt["response_excerpt"].as_str().unwrap();
        assert_eq!(excerpt.len(), 512, "the answer is cut to 512 bytes");
    }
}

async fn addresses_the_configuration_refuses_are_422() {
    let app = TestApp::spawn_with(TestConfig {
        webhooks: String::new(),
        ..TestConfig::default()
    })
    .await;
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "loopback"),
        ("http://localhost:9/hook", "resolves to loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[::1]/hook", "loopback v6"),
        ("http://100.64.0.1/", "shared (CGNAT)"),
    ] {
        let reply = app
            .request("post", "/v1/webhooks", |r| r.json(&json!({"url": url})))
            .await;
        assert_problem(reply.status, &reply.body, 422, "invalid_field");
        assert_eq!(
            reply.body["errors"][0]["field"], "url",
            "{why}: {}",
            reply.body
        );
    }
    let upload = app.upload(b"x".to_vec()).await;
    let reply = app
        .create_job(
            &json!({"kind": "digest", "inputs": {"scan": upload["id"]},
                    "webhook": {"url": "http://127.0.0.1:9/"}}),
            &[],
        )
        .await;
    assert_problem(reply.status, &reply.body, 422, "invalid_field");
    assert_eq!(reply.body["errors"][0]["field"], "webhook.url");
    let reply = app
        .create_job_from_file(
            "digest",
            "webhook_url=http%3A%2F%2F10.0.0.1%2F",
            b"x".to_vec(),
            &[],
        )
        .await;
    assert_problem(reply.status, &reply.body, 422, "invalid_field");
    assert_eq!(reply.body["errors"][0]["field"], "webhook_url");
    // The refused one-request job keeps no upload row and no bytes (what is left is the upload
    // above, made on its own); `job_requests` checks that it is refused before its body is read.
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );
    assert_eq!(app.blob_files("uploads").await.len(), 1);

    for (body, field) in [
        (json!({"url": "ftp://example.org/"}), "url"),
        (json!({"url": "not a url"}), "url"),
        (
            json!({"url": "https://example.org/", "events": ["finished"]}),
            "events",
        ),
        (
            json!({"url": "https://example.org/", "secret": "whsec_c2hvcnQ="}),
            "secret",
        ),
    ] {
        let reply = app.request("post", "/v1/webhooks", |r| r.json(&body)).await;
        assert_problem(reply.status, &reply.body, 422, "invalid_field");
        assert_eq!(reply.body["errors"][0]["field"], field, "{body}");
    }
    let reply = app
        .request("post", "/v1/webhooks", |r| r.json(&json!({"address": "x"})))
        .await;
    assert_problem(reply.status, &reply.body, 422, "invalid_body");
    let reply = app.get("/v1/webhooks/whk_nope").await;
    assert_problem(reply.status, &reply.body, 404, "webhook_not_found");
    let reply = app.get("/v1/webhook-deliveries/0").await;
    assert_problem(reply.status, &reply.body, 404, "delivery_not_found");
}

async fn a_dead_receiver_does_not_hold_up_jobs() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    // Slower than the 2 s timeout of the tests: every attempt times out.
    receiver.answer(Answer {
        delay: Duration::from_secs(5),
        ..Answer::status(200)
    });
    let mut ids = Vec::new();
    for _ in 0..5 {
        let job = job_with_webhook(&app, json!({"url": receiver.url})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    // Every job finished while its first delivery was still without an answer.
    for id in &ids {
        let log = deliveries_of_job(&app, id).await;
        assert!(
            log.iter().all(|d| d["state"] != "succeeded"),
            "nothing was delivered to a receiver that never answers in time: {log:#?}"
        );
    }
    let timed_out = wait_delivery(&app, &ids[0], |d| d["attempts"].as_i64() >= Some(1)).await;
    assert!(
        timed_out["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{timed_out}"
    );
}

/// While a job's progress delivery waits unsent, newer progress takes it over (the newest wins)
/// instead of queueing one delivery per report. Seen with no deliverer running
/// (`webhooks.deliver = false`), so nothing is sent meanwhile.
async fn unsent_progress_deliveries_are_coalesced() {
    let app = TestApp::spawn_with(TestConfig {
        webhooks: format!("{TEST_WEBHOOKS}deliver = false\n"),
        progress_event_interval: Some("1ms"),
        ..TestConfig::default()
    })
    .await;
    let hook = app
        .request("post", "/v1/webhooks", |r| {
            r.json(&json!({"url": "http://127.0.0.1:9/hook", "events": ["progress", "succeeded"]}))
        })
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    // Every report an event: the model's reports, 0.3 s apart, make several progress events.
    let job = app
        .submit("model", bytes(1000, 3), json!({"steps": 4}))
        .await;
    let id = job["id"].as_str().unwrap();
    let events_path = format!("/v1/jobs/{id}/events");
    app.wait_status(id, "succeeded", WITHIN).await;
    let log = app.get(&events_path).await;
    let progress: Vec<i64> = items(&log)
        .iter()
        .filter(|e| e["kind"] == "progress")
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert!(
        progress.len() >= 2,
        "the model reports progress more than once: {progress:?}"
    );
    let deliveries = deliveries_of_job(&app, id).await;
    let queued: Vec<(&str, i64)> = deliveries
        .iter()
        .map(|d| {
            (
                d["event_type"].as_str().unwrap(),
                d["event_seq"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        deliveries.len(),
        2,
        "one progress and one succeeded delivery: {queued:?}"
    );
    let progress_delivery = deliveries
        .iter()
        .find(|d| d["event_type"] == "progress")
        .unwrap();
    assert_eq!(
        progress_delivery["event_seq"],
        *progress.last().unwrap(),
        "the newest wins"
    );
    assert_eq!(progress_delivery["state"], "pending");
    assert_eq!(progress_delivery["attempts"], 0);
}

crate::matrix!(
    unsent_progress_deliveries_are_coalesced,
    a_job_webhook_gets_every_event_signed_and_in_order,
    the_event_filter_and_the_one_request_form_choose_what_is_sent,
    server_wide_endpoints_are_managed_and_rotation_signs_with_both_secrets,
    a_failing_receiver_is_retried_and_a_used_up_schedule_ends_failed,
    gone_disables_the_endpoint_and_an_unreachable_one_is_recorded,
    redirects_are_not_followed_and_long_answers_are_cut,
    addresses_the_configuration_refuses_are_422,
    a_dead_receiver_does_not_hold_up_jobs,
);

/// Deliveries pending when their process is killed are sent after it restarts — and with two
/// API replicas and a worker process all sending, each `webhook-id` is accepted exactly once.
async fn pending_deliveries_survive_kill_9_and_are_accepted_once() {
    // A schedule that outlasts the restart.
    let webhooks = TEST_WEBHOOKS.replace(
        r#"["0s", "200ms", "400ms", "800ms"]"#,
        r#"["0s", "1s", "3s", "3s", "3s", "3s", "3s", "3s"]"#,
    );
    let mut app = TestApp::spawn_process(TestConfig {
        webhooks,
        ..TestConfig::default()
    })
    .await;
    let receiver = Receiver::start();
    receiver.answer(Answer::status(503));
    let hook = app
        .request("post", "/v1/webhooks", |r| {
            r.json(&json!({"url": receiver.url}))
        })
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let mut ids = Vec::new();
    for i in 0..3u8 {
        let job = app.submit("digest", vec![i; 100], json!({})).await;
        ids.push(job["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    receiver
        .wait_until(WITHIN, "refused attempts", |r| r.len() >= 3)
        .await;
    app.kill9_server();
    receiver.answer(Answer::status(200));
    app.start_server(&[]);
    app.spawn_replica();
    app.spawn_worker();
    // 3 jobs × 5 events each, all accepted.
    let all = 3 * DIGEST_EVENTS.len();
    receiver
        .wait_until(WITHIN, "every event", |_| {
            receiver.accepted_by_id().len() == all
        })
        .await;
    // Give the three processes time to (wrongly) send anything twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let accepted = receiver.accepted_by_id();
    assert_eq!(accepted.len(), all, "{accepted:?}");
    assert!(
        accepted.values().all(|n| *n == 1),
        "each accepted once: {accepted:?}"
    );
    for id in &ids {
        let secret_free = deliveries_of_job(&app, id).await;
        assert!(
            secret_free.iter().all(|d| d["state"] == "succeeded"),
            "{secret_free:#?}"
        );
    }
}

crate::matrix!(pending_deliveries_survive_kill_9_and_are_accepted_once);

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}
