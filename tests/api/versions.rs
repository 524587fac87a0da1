//! Model versions and tags, on both backends, with real processes: two API replicas and a
//! separate worker. A job resolves its version when it is created and runs it whatever the
//! tags do afterwards; a tag moved on one replica is followed at once by the other; a job no
//! live worker serves waits and says so; a failed job is re-run after the fix by moving the tag;
//! every move is recorded, and rolled back the same way.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{helpers::*, matrix};

matrix!(
    tags_move_on_every_replica_and_jobs_keep_the_version_they_were_created_for,
    versions_and_tags_are_checked,
);

const WITHIN: Duration = Duration::from_secs(60);

/// `seg`, a kind with three versions of `tests/handlers/versioned.py`: v1 is broken, v2 and v3
/// work (v3 with a command of its own); `production` starts at v1.
pub fn versioned_kind() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/handlers/versioned.py");
    format!(
        r#"
[handlers.seg]
command = ["python3", "{script}"]
max_attempts = 1
concurrency = 2
timeout = "60s"
[handlers.seg.versions.v1]
env = {{ MODEL_BROKEN = "1" }}
[handlers.seg.versions.v2]
[handlers.seg.versions.v3]
command = ["python3", "{script}", "v3's own command"]
timeout = "30s"
[handlers.seg.tags]
production = "v1"
"#
    )
}

async fn create_at(app: &TestApp, base: &str, kind: &str, upload: &Value) -> Value {
    let reply = app
        .request_at(base, "post", "/v1/jobs", |r| {
            r.json(&json!({"kind": kind, "inputs": {"scan": upload}}))
        })
        .await;
    assert_eq!(reply.status, 202, "{kind}: {}", reply.body);
    reply.body
}

async fn move_tag(app: &TestApp, base: &str, tag: &str, version: &str) -> Reply {
    app.request_at(base, "put", &format!("/v1/kinds/seg/tags/{tag}"), |r| {
        r.json(&json!({"version": version}))
    })
    .await
}

async fn version_json(app: &TestApp, id: &str) -> Value {
    let reply = app.download_result(id, "version.json", &[]).await;
    assert_eq!(reply.status, 200, "{id}: {}", reply.body);
    reply.body
}

fn id(job: &Value) -> String {
    job["id"].as_str().expect("id").to_owned()
}

/// Two API replicas without workers, then a worker process: the whole life of a tag.
async fn tags_move_on_every_replica_and_jobs_keep_the_version_they_were_created_for() {
    let mut app = TestApp::spawn_api_only(TestConfig {
        extra_toml: versioned_kind(),
        ..TestConfig::default()
    })
    .await;
    let other = app.spawn_replica();
    let data = bytes(5000, 80);
    let upload = app.upload(data.clone()).await["id"].clone();

    // No worker runs yet: the job waits, and says for what.
    let before = create_at(&app, &app.base, "seg", &upload).await;
    assert_eq!(before["version"], "v1", "{before}");
    assert_eq!(before["tag"], "production");
    assert_eq!(before["waiting_for"], "no worker serves seg@v1");

    // Moved on the other replica, followed at once by this one.
    let moved = move_tag(&app, &other, "production", "v2").await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(moved.body["version"], "v2");
    assert_eq!(moved.body["moved_by"], "anonymous");
    let after = create_at(&app, &app.base, "seg", &upload).await;
    assert_eq!(
        (after["version"].as_str(), after["tag"].as_str()),
        (Some("v2"), Some("production"))
    );
    let named = create_at(&app, &other, "seg@v3", &upload).await;
    assert_eq!(
        (named["version"].as_str(), named["tag"].as_str()),
        (Some("v3"), None)
    );
    assert_eq!(named["timeout_seconds"], 30.0, "v3's own timeout");
    assert_eq!(move_tag(&app, &other, "canary", "v3").await.status, 200);
    let canary = create_at(&app, &app.base, "seg@canary", &upload).await;
    assert_eq!(
        (canary["version"].as_str(), canary["tag"].as_str()),
        (Some("v3"), Some("canary"))
    );

    // A worker starts: each job runs the version it was created for, moves or not.
    let worker = app.spawn_worker();
    let failed = app.wait_status(&id(&before), "failed", WITHIN).await;
    assert_eq!(
        failed["error"]["code"], "handler_exit",
        "v1 is broken: {failed}"
    );
    for (job, version) in [(&after, "v2"), (&named, "v3"), (&canary, "v3")] {
        app.wait_status(&id(job), "succeeded", WITHIN).await;
        let written = version_json(&app, &id(job)).await;
        assert_eq!(written["version"], version, "{written}");
        assert_eq!(written["inputs"]["scan"], sha256_hex(&data));
        let args: &[&str] = if version == "v3" {
            &["v3's own command"]
        } else {
            &[]
        };
        assert_eq!(written["args"], json!(args), "{version}'s command");
        let results = app.results(&id(job)).await;
        assert!(
            results.iter().all(|r| r["version"] == version),
            "{results:?}"
        );
    }
    // The event feed names each event's version.
    let feed = app.get("/v1/events?limit=200").await;
    let of_after: Vec<&Value> = items(&feed)
        .iter()
        .filter(|e| e["job_id"] == after["id"])
        .collect();
    assert!(!of_after.is_empty());
    assert!(
        of_after.iter().all(|e| e["job_version"] == "v2"),
        "{of_after:?}"
    );
    // The job's own log records it from its first event.
    let events = app.get(&format!("/v1/jobs/{}/events", id(&after))).await;
    let created = &items(&events)[0];
    assert_eq!(created["kind"], "queued");
    assert_eq!(
        (&created["data"]["version"], &created["data"]["tag"]),
        (&json!("v2"), &json!("production")),
        "{created}"
    );

    // The fix is the tag's move: a re-run of the failed job follows it to v2.
    let rerun = app
        .request("post", &format!("/v1/jobs/{}/rerun", id(&before)), |r| r)
        .await;
    assert_eq!(rerun.status, 202, "{}", rerun.body);
    assert_eq!(rerun.body["version"], "v2");
    assert_eq!(rerun.body["rerun_of"], before["id"]);
    assert_eq!(rerun.body["inputs"], before["inputs"]);
    let rerun = app.wait_status(&id(&rerun.body), "succeeded", WITHIN).await;
    assert_eq!(version_json(&app, &id(&rerun)).await["version"], "v2");
    assert_eq!(app.job(&id(&before)).await["latest_rerun"], rerun["id"]);
    let reruns = app.get(&format!("/v1/jobs?rerun_of={}", id(&before))).await;
    let listed: Vec<&Value> = items(&reruns).iter().map(|j| &j["id"]).collect();
    assert_eq!(listed, [&rerun["id"]]);
    // A job that named a version is re-run on that version, whatever the tags say.
    let again = app
        .request("post", &format!("/v1/jobs/{}/rerun", id(&named)), |r| r)
        .await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(
        (again.body["version"].as_str(), again.body["tag"].as_str()),
        (Some("v3"), None)
    );
    // Another version, and other params, on request.
    let on_v3 = app
        .request("post", &format!("/v1/jobs/{}/rerun", id(&before)), |r| {
            r.json(&json!({"version": "v3", "params": {"note": "again"}}))
        })
        .await;
    assert_eq!(on_v3.status, 202, "{}", on_v3.body);
    assert_eq!(on_v3.body["version"], "v3");
    assert_eq!(on_v3.body["params"], json!({"note": "again"}));

    // Rolled back the same way; every move is on record, newest first.
    assert_eq!(
        move_tag(&app, &app.base, "production", "v1").await.status,
        200
    );
    let back = create_at(&app, &other, "seg", &upload).await;
    assert_eq!(back["version"], "v1");
    let moves = app.get("/v1/kinds/seg/tag-moves?tag=production").await;
    assert_eq!(moves.status, 200, "{}", moves.body);
    let history: Vec<(Value, Value, Value)> = items(&moves)
        .iter()
        .map(|m| {
            (
                m["from_version"].clone(),
                m["to_version"].clone(),
                m["moved_by"].clone(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (json!("v2"), json!("v1"), json!("anonymous")),
            (json!("v1"), json!("v2"), json!("anonymous")),
            (Value::Null, json!("v1"), json!("config")),
        ]
    );

    // What is served, and by whom.
    let kinds = app.get("/v1/kinds").await;
    assert_eq!(kinds.status, 200, "{}", kinds.body);
    let seg = items(&kinds)
        .iter()
        .find(|k| k["kind"] == "seg")
        .expect("seg listed")
        .clone();
    assert_eq!(seg["resolves_to"], "v1");
    // The kind's own settings are its versions' defaults; v3 has a timeout of its own.
    assert_eq!(
        (&seg["timeout_seconds"], &seg["max_attempts"]),
        (&json!(60.0), &json!(1))
    );
    let v3 = &seg["versions"][2];
    assert_eq!(
        (&v3["name"], &v3["timeout_seconds"]),
        (&json!("v3"), &json!(30.0))
    );
    let workers = kinds.body["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1, "{}", kinds.body);
    let worker_id = workers[0]["id"].clone();
    for version in seg["versions"].as_array().unwrap() {
        assert_eq!(version["served_by"], json!([worker_id]), "{seg}");
    }

    // The worker is killed: within a lease its registration lapses, and new jobs say so.
    app.kill9_worker(worker);
    let start = Instant::now();
    loop {
        let waiting = create_at(&app, &app.base, "seg@v2", &upload).await;
        if waiting["waiting_for"] == "no worker serves seg@v2" {
            break;
        }
        assert!(
            start.elapsed() < WITHIN,
            "the killed worker still counts: {waiting}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a job, a re-run or a tag move may name is checked, with stable codes.
async fn versions_and_tags_are_checked() {
    let app = TestApp::spawn_with(TestConfig {
        extra_toml: versioned_kind(),
        ..TestConfig::default()
    })
    .await;
    let upload = app.upload(bytes(100, 81)).await["id"].clone();
    for (kind, code) in [
        ("seg@v9", "unknown_version"),
        ("seg@nightly", "unknown_version"),
        ("model@v1", "unknown_version"),
        ("nope@v1", "unknown_kind"),
    ] {
        let reply = app
            .create_job(&json!({"kind": kind, "inputs": {"scan": upload}}), &[])
            .await;
        reply.assert_problem(422, code);
        assert_eq!(reply.field_errors(), ["kind"], "{kind}");
    }
    move_tag(&app, &app.base, "production", "v9")
        .await
        .assert_problem(422, "invalid_field");
    move_tag(&app, &app.base, "v2", "v3")
        .await
        .assert_problem(422, "invalid_field");
    app.request("put", "/v1/kinds/nope/tags/production", |r| {
        r.json(&json!({"version": "v1"}))
    })
    .await
    .assert_problem(404, "kind_not_found");
    app.get("/v1/kinds/nope")
        .await
        .assert_problem(404, "kind_not_found");

    // Moving a tag where it is records nothing.
    assert_eq!(
        move_tag(&app, &app.base, "production", "v1").await.status,
        200
    );
    let moves = app.get("/v1/kinds/seg/tag-moves").await;
    assert_eq!(items(&moves).len(), 1, "{}", moves.body);
    // A deleted tag is gone from jobs and lists; the bare kind falls back to... nothing (three
    // versions, no default): it must be named.
    assert_eq!(move_tag(&app, &app.base, "canary", "v2").await.status, 200);
    let deleted = app
        .request("delete", "/v1/kinds/seg/tags/canary", |r| r)
        .await;
    assert_eq!(deleted.status, 204);
    app.request("delete", "/v1/kinds/seg/tags/canary", |r| r)
        .await
        .assert_problem(404, "tag_not_found");
    app.create_job(
        &json!({"kind": "seg@canary", "inputs": {"scan": upload}}),
        &[],
    )
    .await
    .assert_problem(422, "unknown_version");
    assert_eq!(
        app.request("delete", "/v1/kinds/seg/tags/production", |r| r)
            .await
            .status,
        204
    );
    app.create_job(&json!({"kind": "seg", "inputs": {"scan": upload}}), &[])
        .await
        .assert_problem(422, "unknown_version");
    let kind = app.get("/v1/kinds/seg").await;
    assert_eq!(kind.body["resolves_to"], Value::Null, "{}", kind.body);

    // A re-run of a job whose inputs are gone is refused.
    let brief = TestApp::spawn_with(TestConfig {
        extra_toml: "[tenant_defaults]\ninput_retention = \"0s\"\n".into(),
        ..TestConfig::default()
    })
    .await;
    let upload = brief.upload(bytes(100, 82)).await["id"].clone();
    let (status, job) = brief
        .post_job(json!({"kind": "noop", "inputs": {"scan": upload}}))
        .await;
    assert_eq!(status, 202);
    let start = Instant::now();
    while !brief.job(&id(&job)).await["inputs_deleted_at"].is_string() {
        assert!(start.elapsed() < WITHIN, "inputs kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    brief
        .request("post", &format!("/v1/jobs/{}/rerun", id(&job)), |r| r)
        .await
        .assert_problem(409, "inputs_deleted");
}
