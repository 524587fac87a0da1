//! Conditional GET and long-poll on `GET /v1/jobs/{id}`: the `ETag` follows the representation,
//! `If-None-Match` gets `304`, and `Prefer: wait=N` answers on the next change (in-process and,
//! on PostgreSQL, from another process), or after N seconds with the state unchanged.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(60);

fn etag(reply: &Reply) -> String {
    reply.header("etag").expect("an ETag").to_owned()
}

/// A `model` job that runs, publishes its intermediate result and then waits for `gate` to
/// exist; returned once it is steadily waiting (its last report before the gate is progress
/// `thinking`; nothing changes until the gate opens).
pub async fn gated_job(app: &TestApp, base: &str, gate: &std::path::Path) -> (String, Value) {
    let upload = app.upload(bytes(1000, 7)).await;
    let reply = app
        .request_at(base, "post", "/v1/jobs", |r| {
            r.json(&json!({"kind": "model", "inputs": {"scan": upload["id"]},
                           "params": {"gate": gate}}))
        })
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_owned();
    let job = app
        .wait_job(&id, WITHIN, |j| {
            j["result_count"] == 1 && j["progress"]["stage"] == "thinking"
        })
        .await;
    (id, job)
}

async fn a_finished_job(app: &TestApp) -> String {
    let job = app.submit("digest", b"hello".to_vec(), json!({})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_status(&id, "succeeded", WITHIN).await;
    id
}

async fn if_none_match_with_the_etag_gets_304_without_a_body() {
    let app = TestApp::spawn().await;
    let id = a_finished_job(&app).await;
    let first = app.get_job(&id).await;
    assert_eq!(first.status, 200);
    let tag = etag(&first);
    assert_eq!(
        etag(&app.get_job(&id).await),
        tag,
        "an unchanged job keeps its tag"
    );

    for inm in [
        tag.clone(),
        format!("W/{tag}"),
        format!("\"0000\", {tag}"),
        "*".into(),
    ] {
        let reply = app
            .get_job_at(&app.base, &id, &[("if-none-match", &inm)])
            .await;
        assert_eq!(reply.status, 304, "If-None-Match: {inm}");
        assert!(reply.bytes.is_empty(), "304 has no body");
        assert_eq!(etag(&reply), tag);
        assert!(reply.header("preference-applied").is_none());
    }
    let head = app
        .request("head", &format!("/v1/jobs/{id}"), |r| {
            r.header("if-none-match", &tag)
        })
        .await;
    assert_eq!(head.status, 304);

    let other = app
        .get_job_at(&app.base, &id, &[("if-none-match", "\"0000\"")])
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, first.body);
    let malformed = app
        .get_job_at(&app.base, &id, &[("if-none-match", "no quotes")])
        .await;
    assert_eq!(
        malformed.status, 200,
        "a header that does not parse matches nothing"
    );
}

async fn the_etag_changes_whenever_the_job_does() {
    let app = TestApp::spawn().await;
    let gate = app.dir.path().join("gate");
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    // Every representation seen while the job runs to its end: tags equal iff bodies equal.
    // The first is read before the gate opens, so at least the running and the succeeded
    // states are compared (the job may finish before the next read arrives).
    let running = app.get_job(&id).await;
    assert_eq!(running.body["status"], "running", "{}", running.body);
    let mut seen: Vec<(String, Value)> = vec![(etag(&running), running.body.clone())];
    std::fs::write(&gate, "go").unwrap();
    loop {
        let reply = app.get_job(&id).await;
        seen.push((etag(&reply), reply.body.clone()));
        if reply.body["status"] == "succeeded" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (tag_a, body_a) in &seen {
        for (tag_b, body_b) in &seen {
            assert_eq!(tag_a == tag_b, body_a == body_b, "{body_a} vs {body_b}");
        }
    }
    assert!(seen.first().unwrap().0 != seen.last().unwrap().0);
}

async fn a_waiting_request_answers_with_the_change() {
    let app = TestApp::spawn().await;
    let gate = app.dir.path().join("gate");
    let (id, job) = gated_job(&app, &app.base, &gate).await;
    let tag = etag(&app.get_job(&id).await);
    let wait_headers = [("if-none-match", tag.as_str()), ("prefer", "wait=60")];
    let waiting = app.get_job_at(&app.base, &id, &wait_headers);
    let cancel = async {
        // Lets the request start waiting first (not required: a change before it reads the job
        // is answered at once just the same).
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.cancel_job(&id).await
    };
    let (reply, canceled) = tokio::join!(waiting, cancel);
    assert_eq!(canceled.status, 202, "{}", canceled.body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("preference-applied"), Some("wait=60"));
    assert_eq!(reply.body["cancel_requested"], true, "{}", reply.body);
    assert_ne!(etag(&reply), tag);
    assert_eq!(job["cancel_requested"], false);
}

async fn an_unchanged_job_is_answered_after_the_wait_and_the_wait_is_clamped() {
    let app = TestApp::spawn().await;
    let id = a_finished_job(&app).await;
    let tag = etag(&app.get_job(&id).await);

    let unchanged = app
        .get_job_at(
            &app.base,
            &id,
            &[("if-none-match", &tag), ("prefer", "wait=1")],
        )
        .await;
    assert_eq!(unchanged.status, 304);
    assert_eq!(etag(&unchanged), tag);
    assert_eq!(unchanged.header("preference-applied"), Some("wait=1"));

    // Already different from the client's copy (or no copy): answered at once, wait echoed.
    let clamped = app
        .get_job_at(
            &app.base,
            &id,
            &[("if-none-match", "\"0000\""), ("prefer", "wait=600")],
        )
        .await;
    assert_eq!(clamped.status, 200);
    assert_eq!(clamped.header("preference-applied"), Some("wait=60"));
    let no_copy = app
        .get_job_at(&app.base, &id, &[("prefer", "respond-async, wait=5")])
        .await;
    assert_eq!(no_copy.status, 200);
    assert_eq!(no_copy.header("preference-applied"), Some("wait=5"));
    let unreadable = app
        .get_job_at(&app.base, &id, &[("prefer", "wait=soon")])
        .await;
    assert_eq!(unreadable.status, 200);
    assert!(
        unreadable.header("preference-applied").is_none(),
        "an unreadable wait is ignored"
    );
}

async fn a_deleted_job_ends_the_wait_with_404() {
    let app = TestApp::spawn().await;
    let id = a_finished_job(&app).await;
    let tag = etag(&app.get_job(&id).await);
    let wait_headers = [("if-none-match", tag.as_str()), ("prefer", "wait=60")];
    let waiting = app.get_job_at(&app.base, &id, &wait_headers);
    let delete = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.delete_job(&id).await
    };
    let (reply, deleted) = tokio::join!(waiting, delete);
    assert_eq!(deleted.status, 204);
    assert_eq!(reply.status, 404, "{}", reply.body);
    assert_eq!(reply.body["code"], "job_not_found");
}

crate::matrix!(
    if_none_match_with_the_etag_gets_304_without_a_body,
    the_etag_changes_whenever_the_job_does,
    a_waiting_request_answers_with_the_change,
    an_unchanged_job_is_answered_after_the_wait_and_the_wait_is_clamped,
    a_deleted_job_ends_the_wait_with_404,
);

/// Two API replicas and a worker process: a request waiting at one replica hears of a change
/// the worker makes, and of one the other replica makes (PostgreSQL: `NOTIFY`; SQLite: the
/// waiter's one-second re-read, as no wake-up crosses processes there).
async fn a_change_made_by_another_process_wakes_a_waiting_request() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let replica_b = app.spawn_replica();
    app.spawn_worker();
    let gate = app.dir.path().join("gate");
    let (id, before) = gated_job(&app, &app.base, &gate).await;

    // The worker's change (the final result, then success), heard at replica B.
    let tag = etag(&app.get_job_at(&replica_b, &id, &[]).await);
    let wait_headers = [("if-none-match", tag.as_str()), ("prefer", "wait=60")];
    let waiting = app.get_job_at(&replica_b, &id, &wait_headers);
    let open_gate = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::fs::write(&gate, "go").unwrap();
    };
    let (reply, ()) = tokio::join!(waiting, open_gate);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_ne!(reply.body, before);
    assert_ne!(etag(&reply), tag);

    // A change made through replica A (a deletion), heard at replica B.
    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    let tag = etag(&app.get_job_at(&replica_b, &id, &[]).await);
    let wait_headers = [("if-none-match", tag.as_str()), ("prefer", "wait=60")];
    let waiting = app.get_job_at(&replica_b, &id, &wait_headers);
    let delete = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.delete_job(&id).await
    };
    let (reply, deleted) = tokio::join!(waiting, delete);
    assert_eq!(deleted.status, 204);
    assert_eq!(reply.status, 404, "after {done}: {}", reply.body);
}

crate::matrix!(a_change_made_by_another_process_wakes_a_waiting_request);
