//! Tenants and API keys: every route refuses another tenant's ids exactly as ids that do not
//! exist (no existence oracle) and shows nothing of another tenant in lists and the event feed;
//! every route asks for its scope; keys are shown once, revoked everywhere within a second or
//! two, and made with `ferry keys` (a real process, as an operator bootstraps a tenant); a
//! server without keys serves only on loopback unless told otherwise.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use ferry::{api::Access, tenancy::Scope};
use serde_json::{Value, json};

use crate::{helpers::*, matrix, webhook_receiver::Receiver};

matrix!(
    a_tenant_over_its_limits_is_refused_with_429_until_it_is_not,
    every_request_of_a_key_is_in_its_tenants_audit_trail,
    another_tenants_ids_are_not_found_anywhere,
    each_route_asks_for_its_scope,
    keys_are_shown_once_listed_expired_and_revoked,
    a_revoked_key_is_refused_by_every_replica,
);

const ALL_SCOPES: [&str; 4] = ["jobs:read", "jobs:write", "results:read", "admin"];

/// `ferry <args>` against the test's configuration, as an operator would run it.
fn ferry(app: &TestApp, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERRY_")) {
        cmd.env_remove(key);
    }
    cmd.arg("--config").arg(&app.config_path).args(args);
    cmd
}

/// `method path` with `key` (none: no `Authorization`), checked against the spec.
async fn call(
    app: &TestApp,
    key: Option<&str>,
    method: &str,
    path: &str,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Reply {
    app.request(method, path, |r| {
        let r = match key {
            Some(key) => r.bearer_auth(key),
            None => r,
        };
        build(r)
    })
    .await
}

async fn get_as(app: &TestApp, key: &str, path: &str) -> Reply {
    call(app, Some(key), "get", path, |r| r).await
}

/// The id a route's `{id}` takes from `ids`, by the kind of object the route names.
fn object_id<'a>(template: &str, ids: &'a Ids) -> &'a str {
    if template.starts_with("/v1/uploads/") {
        &ids.upload
    } else if template.starts_with("/v1/tus/") {
        &ids.tus
    } else if template.starts_with("/v1/webhooks/") {
        &ids.webhook
    } else if template.starts_with("/v1/webhook-deliveries/") {
        &ids.delivery
    } else if template.starts_with("/v1/keys/") {
        &ids.key
    } else {
        &ids.job
    }
}

/// `template` with the ids in `ids` (`{id}` by the route's kind of object, `{name}`, `{kind}`).
fn fill(template: &str, ids: &Ids) -> String {
    template
        .replace("{id}", object_id(template, ids))
        .replace("{name}", &ids.result)
        .replace("{kind}", "digest")
        .replace("{tag}", "production")
        .replace("{file}", "app.css")
}

/// Ids of one tenant's objects.
struct Ids {
    upload: String,
    /// A resumable upload in progress.
    tus: String,
    job: String,
    result: String,
    webhook: String,
    delivery: String,
    key: String,
}

/// Ids that exist nowhere.
fn no_ids() -> Ids {
    Ids {
        upload: "upl_00000000000000000000000000000000".into(),
        tus: "upl_00000000000000000000000000000001".into(),
        job: "job_00000000000000000000000000000000".into(),
        result: "report.json".into(),
        webhook: "whk_00000000000000000000000000000000".into(),
        delivery: "999999".into(),
        key: "key_00000000000000000000000000000000".into(),
    }
}

/// Tenant A's objects, every kind a route can name, made through the API with A's key: an
/// upload no job uses, a finished `digest` job (with results and events), a webhook endpoint
/// with deliveries, and a key.
async fn tenant_objects(app: &TestApp, key: &str, receiver: &Receiver) -> Ids {
    let endpoint = call(app, Some(key), "post", "/v1/webhooks", |r| {
        r.json(&json!({"url": receiver.url, "events": ["succeeded"]}))
    })
    .await;
    assert_eq!(endpoint.status, 201, "{}", endpoint.body);
    let spare = call(app, Some(key), "post", "/v1/uploads", |r| {
        r.body(bytes(1000, 1))
    })
    .await;
    assert_eq!(spare.status, 201, "{}", spare.body);
    let tus = call(app, Some(key), "post", "/v1/tus", |r| {
        r.header("Tus-Resumable", "1.0.0")
            .header("Upload-Length", "100")
    })
    .await;
    assert_eq!(tus.status, 201, "{}", tus.body);
    let tus = tus.header("Location").expect("Location");
    let tus = tus.trim_start_matches("/v1/tus/").to_owned();
    let job = call(app, Some(key), "post", "/v1/kinds/digest/jobs", |r| {
        r.body(bytes(5000, 2))
    })
    .await;
    assert_eq!(job.status, 202, "{}", job.body);
    let job_id = job.body["id"].as_str().expect("id").to_owned();
    wait_succeeded(app, key, &job_id).await;
    let webhook = endpoint.body["id"].as_str().expect("id").to_owned();
    let deliveries = wait_deliveries(app, key, &webhook, 1).await;
    let keys = get_as(app, key, "/v1/keys").await;
    assert_eq!(keys.status, 200, "{}", keys.body);
    Ids {
        upload: spare.body["id"].as_str().expect("id").to_owned(),
        tus,
        job: job_id,
        result: "report.json".into(),
        webhook,
        delivery: deliveries[0]["id"].to_string(),
        key: items(&keys)[0]["id"].as_str().expect("id").to_owned(),
    }
}

async fn wait_succeeded(app: &TestApp, key: &str, job: &str) {
    let start = Instant::now();
    loop {
        let reply = get_as(app, key, &format!("/v1/jobs/{job}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        match reply.body["status"].as_str() {
            Some("succeeded") => return,
            Some("queued" | "running") => {}
            other => panic!("job {job} ended {other:?}: {}", reply.body),
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "job {job} did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The endpoint's deliveries once there are at least `n`.
async fn wait_deliveries(app: &TestApp, key: &str, endpoint: &str, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let reply = get_as(app, key, &format!("/v1/webhooks/{endpoint}/deliveries")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        if items(&reply).len() >= n {
            return items(&reply).to_vec();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no deliveries to {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of a list answer's items (`key` names the id member).
fn listed(reply: &Reply, member: &str) -> Vec<String> {
    items(reply)
        .iter()
        .map(|i| i[member].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Every route in `ROUTES` is tried by tenant B, holding every scope, with tenant A's ids: each
/// answers exactly what an id that never existed gets, lists and the feed show nothing of A,
/// and nothing of A changed. Then B's webhook endpoint hears nothing of A's jobs, and the same
/// `Idempotency-Key` in both tenants makes two jobs. A route added later without a case here
/// fails this test.
async fn another_tenants_ids_are_not_found_anywhere() {
    let app = TestApp::spawn().await;
    let receiver = Receiver::start();
    let a = app.create_key("tenant-a", &ALL_SCOPES);
    let b = app.create_key("tenant-b", &ALL_SCOPES);
    app.wait_keys_required(&app.base).await;
    let ids = tenant_objects(&app, &a, &receiver).await;

    for &(method, template, access) in ferry::api::ROUTES {
        if !matches!(access, Access::Needs(_)) {
            continue;
        }
        let path = fill(template, &ids);
        let nowhere = fill(template, &no_ids());
        let body = |r: reqwest::RequestBuilder| match (method, template) {
            ("post", "/v1/uploads" | "/v1/kinds/{kind}/jobs") => r.body("b's bytes"),
            ("post", "/v1/jobs") => {
                r.json(&json!({"kind": "digest", "inputs": {"scan": ids.upload}}))
            }
            ("post", "/v1/webhooks") => r.json(&json!({"url": receiver.url})),
            ("post", "/v1/keys") => r.json(&json!({"name": "b's second key"})),
            ("post", "/v1/jobs/rerun") => r.json(&json!({"include_rerun": true})),
            ("post", "/v1/tus") => r
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", "10"),
            ("patch", "/v1/tus/{id}") => r
                .header("Tus-Resumable", "1.0.0")
                .header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", "0")
                .body("b's bytes"),
            (_, "/v1/tus/{id}") => r.header("Tus-Resumable", "1.0.0"),
            _ => r,
        };
        let reply = call(&app, Some(&b), method, &path, body).await;
        let what = format!("{method} {path} with tenant B's key");
        match (method, template) {
            // Lists and the feed: answered, with nothing of A's.
            ("get" | "head", "/v1/uploads" | "/v1/jobs" | "/v1/webhooks" | "/v1/keys") => {
                assert_eq!(reply.status, 200, "{what}: {}", reply.body);
                if method == "get" {
                    let mine = listed(&reply, "id");
                    for theirs in [&ids.upload, &ids.job, &ids.webhook, &ids.key] {
                        assert!(!mine.contains(theirs), "{what} lists A's {theirs}");
                    }
                }
            }
            ("get" | "head", "/v1/audit") => {
                assert_eq!(reply.status, 200, "{what}: {}", reply.body);
                if method == "get" {
                    assert!(
                        items(&reply).iter().all(|e| e["tenant"] == "tenant-b"),
                        "{what} shows another tenant's trail: {}",
                        reply.body
                    );
                }
            }
            ("get" | "head", "/v1/events") => {
                assert_eq!(reply.status, 200, "{what}: {}", reply.body);
                if method == "get" {
                    assert!(
                        !listed(&reply, "job_id").contains(&ids.job),
                        "{what} shows A's events: {}",
                        reply.body
                    );
                }
            }
            // Kinds are the deployment's, the same for every tenant.
            ("get" | "head", "/v1/kinds" | "/v1/kinds/{kind}" | "/v1/kinds/{kind}/tag-moves") => {
                assert_eq!(reply.status, 200, "{what}: {}", reply.body);
            }
            // Moving tags is an operator's (`kinds:write`), which no tenant's key here holds.
            ("put" | "delete", "/v1/kinds/{kind}/tags/{tag}") => {
                reply.assert_problem(403, "insufficient_scope");
            }
            // So are the metrics (`metrics:read`): they count every tenant's jobs.
            ("get" | "head", "/metrics") => {
                assert_eq!(reply.status, 403, "{what}: {}", reply.body);
            }
            // A bulk re-run of B's failed jobs: none, and none of A's.
            ("post", "/v1/jobs/rerun") => {
                assert_eq!(reply.status, 202, "{what}: {}", reply.body);
                assert_eq!(reply.body["created"], 0, "{what}: {}", reply.body);
            }
            // Creation: B's own object; A's upload cannot be B's job's input.
            ("post", "/v1/uploads" | "/v1/webhooks" | "/v1/keys" | "/v1/tus") => {
                assert_eq!(reply.status, 201, "{what}: {}", reply.body);
                if template == "/v1/keys" {
                    assert_eq!(reply.body["tenant"], "tenant-b");
                }
            }
            ("post", "/v1/kinds/{kind}/jobs") => {
                assert_eq!(reply.status, 202, "{what}: {}", reply.body)
            }
            ("post", "/v1/jobs") => {
                reply.assert_problem(422, "invalid_field");
                assert_eq!(reply.field_errors(), ["inputs.scan"]);
                assert!(
                    reply.body["detail"]
                        .as_str()
                        .unwrap_or("")
                        .contains("no upload"),
                    "{}",
                    reply.body
                );
            }
            // Everything named by id: as if it did not exist.
            _ => {
                let absent = call(&app, Some(&b), method, &nowhere, body).await;
                assert_eq!(reply.status, 404, "{what}: {}", reply.body);
                assert_eq!(absent.status, 404, "{method} {nowhere}: {}", absent.body);
                if method != "head" {
                    reply.assert_problem(404, not_found_code(template));
                    // The same words as for an id that never existed, but for the id itself.
                    let detail = |r: &Reply, id: &str| {
                        r.body["detail"].as_str().unwrap_or("").replace(id, "ID")
                    };
                    assert_eq!(
                        detail(&reply, object_id(template, &ids)),
                        detail(&absent, object_id(template, &no_ids())),
                        "{what} tells A's object from a missing one"
                    );
                }
            }
        }
    }

    // Nothing of A's changed: B's deletes, cancels, rotations and revocations found nothing.
    let tus = call(
        &app,
        Some(&a),
        "head",
        &format!("/v1/tus/{}", ids.tus),
        |r| r.header("Tus-Resumable", "1.0.0"),
    )
    .await;
    assert_eq!(tus.status, 200, "A lost its tus upload");
    assert_eq!(
        tus.header("Upload-Offset"),
        Some("0"),
        "B wrote to A's tus upload"
    );
    for path in [
        format!("/v1/uploads/{}", ids.upload),
        format!("/v1/jobs/{}", ids.job),
        format!("/v1/webhooks/{}", ids.webhook),
        format!("/v1/webhook-deliveries/{}", ids.delivery),
        format!("/v1/keys/{}", ids.key),
    ] {
        let reply = get_as(&app, &a, &path).await;
        assert_eq!(reply.status, 200, "A lost {path}: {}", reply.body);
    }
    let endpoint = get_as(&app, &a, &format!("/v1/webhooks/{}", ids.webhook)).await;
    assert_eq!(endpoint.body["enabled"], true);
    assert_eq!(
        get_as(&app, &a, &format!("/v1/keys/{}", ids.key))
            .await
            .body["state"],
        "active"
    );
    // A's own feed does show A's events (each event carries its job's tenant).
    let a_feed = get_as(&app, &a, "/v1/events").await;
    assert!(
        listed(&a_feed, "job_id").contains(&ids.job),
        "{}",
        a_feed.body
    );
    let upload = get_as(&app, &a, &format!("/v1/uploads/{}", ids.upload)).await;
    assert_eq!(upload.body["job_count"], 0, "A's upload became B's input");
    // A's lists hold none of B's objects either.
    let b_jobs = listed(&get_as(&app, &b, "/v1/jobs").await, "id");
    assert_eq!(b_jobs.len(), 1, "B made one job");
    assert!(!listed(&get_as(&app, &a, "/v1/jobs").await, "id").contains(&b_jobs[0]));

    // B's endpoint (made above) hears of B's jobs only: A's next job reaches A's endpoint only.
    let b_hooks = get_as(&app, &b, "/v1/webhooks").await;
    let b_hook = listed(&b_hooks, "id")[0].clone();
    let job = call(&app, Some(&a), "post", "/v1/kinds/digest/jobs", |r| {
        r.body("again")
    })
    .await;
    assert_eq!(job.status, 202, "{}", job.body);
    wait_succeeded(&app, &a, job.body["id"].as_str().expect("id")).await;
    wait_deliveries(&app, &a, &ids.webhook, 2).await;
    let b_deliveries = get_as(&app, &b, &format!("/v1/webhooks/{b_hook}/deliveries")).await;
    let b_jobs: Vec<String> = items(&b_deliveries)
        .iter()
        .map(|d| d["job_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        !b_jobs
            .iter()
            .any(|j| *j == ids.job || j == job.body["id"].as_str().unwrap()),
        "B's endpoint got deliveries of A's jobs: {}",
        b_deliveries.body
    );

    // One Idempotency-Key, the same request, two tenants: two jobs, neither a replay.
    let submit = |key: String| {
        let app = &app;
        async move {
            call(app, Some(&key), "post", "/v1/kinds/digest/jobs", |r| {
                r.header("idempotency-key", "same-key-everywhere")
                    .body("same bytes")
            })
            .await
        }
    };
    let (first_a, first_b) = (submit(a.clone()).await, submit(b.clone()).await);
    assert_eq!((first_a.status, first_b.status), (202, 202));
    assert_ne!(first_a.body["id"], first_b.body["id"]);
    assert_eq!(first_b.header("idempotent-replayed"), None);
    let again_b = submit(b.clone()).await;
    assert_eq!(again_b.body["id"], first_b.body["id"]);
    assert_eq!(again_b.header("idempotent-replayed"), Some("true"));
}

/// With a key holding one scope, every route needing another answers `403
/// insufficient_scope` naming the scope, and every route needing this one does not; without a
/// key, or with one that is not valid, `401`. The probes need no key.
async fn each_route_asks_for_its_scope() {
    let app = TestApp::spawn().await;
    let keys: Vec<(Scope, String)> = Scope::ALL
        .into_iter()
        .map(|scope| (scope, app.create_key("scoped", &[scope.as_str()])))
        .collect();
    app.wait_keys_required(&app.base).await;
    let unknown = format!("fk_{}", "0".repeat(40));
    let ids = no_ids();
    for &(method, template, access) in ferry::api::ROUTES {
        let path = fill(template, &ids);
        let body = |r: reqwest::RequestBuilder| match (method, template) {
            ("post", "/v1/uploads" | "/v1/kinds/{kind}/jobs") => r.body("bytes"),
            ("post", _) => r.json(&json!({})),
            _ => r,
        };
        let Access::Needs(needed) = access else {
            let reply = call(&app, None, method, &path, body).await;
            // 200, or 204 for tus' OPTIONS.
            assert!(
                matches!(reply.status, 200 | 204),
                "{method} {path} without a key: {}",
                reply.status
            );
            continue;
        };
        for (scope, key) in &keys {
            let reply = call(&app, Some(key), method, &path, body).await;
            let what = format!("{method} {path} with a {scope} key");
            if *scope == needed {
                assert!(
                    !matches!(reply.status, 401 | 403),
                    "{what}: {} {}",
                    reply.status,
                    reply.body
                );
            } else {
                assert_eq!(reply.status, 403, "{what}: {}", reply.body);
                assert_eq!(
                    reply.header("www-authenticate").map(str::to_owned),
                    Some(format!(
                        "Bearer realm=\"ferry\", error=\"insufficient_scope\", scope=\"{needed}\""
                    )),
                    "{what}"
                );
                if method != "head" {
                    reply.assert_problem(403, "insufficient_scope");
                }
            }
        }
        for (key, code, challenge) in [
            (None, "unauthenticated", "Bearer realm=\"ferry\""),
            (
                Some(unknown.as_str()),
                "invalid_api_key",
                "Bearer realm=\"ferry\", error=\"invalid_token\"",
            ),
            (
                Some("not-a-key"),
                "invalid_api_key",
                "Bearer realm=\"ferry\", error=\"invalid_token\"",
            ),
        ] {
            let reply = call(&app, key, method, &path, body).await;
            assert_eq!(reply.status, 401, "{method} {path} with {key:?}");
            assert_eq!(reply.header("www-authenticate"), Some(challenge));
            if method != "head" {
                reply.assert_problem(401, code);
            }
        }
    }
    // Any scheme but Bearer is no key.
    let reply = call(&app, None, "get", "/v1/jobs", |r| {
        r.header("authorization", format!("Basic {}", keys[0].1))
    })
    .await;
    reply.assert_problem(401, "invalid_api_key");
}

/// Keys made over the API: shown once, then listed without the key; usable at once; recorded
/// when used; refused once revoked or expired; and the first key made on an open server closes
/// it, leaving what it made before reachable as the `default` tenant's.
async fn keys_are_shown_once_listed_expired_and_revoked() {
    let app = TestApp::spawn().await;
    // Open (no key exists): acts for `default`, with every scope.
    let before = app.upload(b"made while open".to_vec()).await;
    let first = call(&app, None, "post", "/v1/keys", |r| {
        r.json(&json!({"name": "bootstrap admin", "scopes": ["admin", "jobs:read"]}))
    })
    .await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(first.header("cache-control"), Some("no-store"));
    let admin = first.body["key"]
        .as_str()
        .expect("the key, once")
        .to_owned();
    assert_eq!(first.body["tenant"], "default");
    assert_eq!(first.body["state"], "active");
    assert_eq!(first.body["prefix"].as_str(), Some(&admin[..11]));
    app.wait_keys_required(&app.base).await;
    let upload_path = format!("/v1/uploads/{}", before["id"].as_str().expect("id"));
    assert_eq!(get_as(&app, &admin, &upload_path).await.status, 200);

    // A reader key: it reads, it may not write.
    let made = call(&app, Some(&admin), "post", "/v1/keys", |r| {
        r.json(&json!({"name": "reader", "scopes": ["jobs:read"]}))
    })
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let location = made.header("location").expect("Location").to_owned();
    let reader = made.body["key"].as_str().expect("key").to_owned();
    assert_eq!(get_as(&app, &reader, "/v1/jobs").await.status, 200);
    let refused = call(&app, Some(&reader), "post", "/v1/uploads", |r| r.body("x")).await;
    refused.assert_problem(403, "insufficient_scope");
    // Never shown again; its use is recorded.
    let start = Instant::now();
    let shown = loop {
        let shown = get_as(&app, &admin, &location).await;
        assert_eq!(shown.status, 200, "{}", shown.body);
        if !shown.body["last_used_at"].is_null() {
            break shown;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "use never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shown.body["key"], Value::Null);
    assert_eq!(shown.body["scopes"], json!(["jobs:read"]));
    let listed_keys = get_as(&app, &admin, "/v1/keys?limit=1").await;
    assert_eq!(
        listed(&listed_keys, "id"),
        [made.body["id"].as_str().unwrap()]
    );
    assert!(listed_keys.body["next"].is_string());
    assert!(items(&listed_keys).iter().all(|k| k["key"].is_null()));

    // Bad requests name their field.
    for (body, field) in [
        (json!({"name": ""}), "name"),
        (json!({"name": "x", "scopes": []}), "scopes"),
        (json!({"name": "x", "scopes": ["root"]}), "scopes"),
        (
            json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
            "expires_at",
        ),
        (json!({"name": "x", "expires_at": "tomorrow"}), "expires_at"),
    ] {
        let reply = call(&app, Some(&admin), "post", "/v1/keys", |r| r.json(&body)).await;
        reply.assert_problem(422, "invalid_field");
        assert_eq!(reply.field_errors(), [field], "{body}");
    }

    // Revoked: refused at once here (and within a second elsewhere); still listed.
    let revoke_path = format!("{location}/revoke");
    let revoke = call(&app, Some(&admin), "post", &revoke_path, |r| r).await;
    assert_eq!(revoke.status, 200, "{}", revoke.body);
    assert_eq!(revoke.body["state"], "revoked");
    get_as(&app, &reader, "/v1/jobs")
        .await
        .assert_problem(401, "invalid_api_key");
    assert_eq!(
        get_as(&app, &admin, &location).await.body["state"],
        "revoked"
    );
    let again = call(&app, Some(&admin), "post", &revoke_path, |r| r).await;
    assert_eq!(again.status, 200, "revoking twice is no error");
    let admin_path = format!("/v1/keys/{}", first.body["id"].as_str().expect("id"));
    let itself = call(
        &app,
        Some(&admin),
        "post",
        &format!("{admin_path}/revoke"),
        |r| r,
    )
    .await;
    itself.assert_problem(409, "own_key");
    assert_eq!(
        get_as(&app, &admin, &admin_path).await.body["state"],
        "active"
    );

    // Expired: refused once its time has passed.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let brief = call(&app, Some(&admin), "post", "/v1/keys", |r| {
        r.json(&json!({"name": "brief", "expires_at": soon.to_rfc3339()}))
    })
    .await;
    assert_eq!(brief.status, 201, "{}", brief.body);
    let brief_key = brief.body["key"].as_str().expect("key").to_owned();
    assert_eq!(get_as(&app, &brief_key, "/v1/jobs").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    get_as(&app, &brief_key, "/v1/jobs")
        .await
        .assert_problem(401, "invalid_api_key");

    // The command line sees them all, and revokes.
    let out = ferry(&app, &["keys", "list"]).output().expect("keys list");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, state) in [
        ("bootstrap admin", "active"),
        ("reader", "revoked"),
        ("brief", "expired"),
    ] {
        assert!(
            listing
                .lines()
                .any(|l| l.ends_with(name) && l.contains(state)),
            "{name} ({state}) not in:\n{listing}"
        );
    }
    assert!(!listing.contains(&admin[3..]), "a key itself was listed");
    let admin_id = first.body["id"].as_str().expect("id");
    let out = ferry(&app, &["keys", "revoke", admin_id])
        .output()
        .expect("revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start = Instant::now();
    while get_as(&app, &admin, "/v1/keys").await.status != 401 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "revoked key still works"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = ferry(&app, &["keys", "revoke", "key_nope"])
        .output()
        .expect("revoke");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an API key id"));
}

/// A key revoked through one API replica is refused by another within about a second (each
/// process believes what it read of a key for at most a second).
async fn a_revoked_key_is_refused_by_every_replica() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let replica = app.spawn_replica();
    let admin = app.create_key("clinic", &["admin"]);
    let reader = app.create_key("clinic", &["jobs:read"]);
    app.wait_keys_required(&app.base).await;
    app.wait_keys_required(&replica).await;
    for base in [&app.base, &replica] {
        let reply = app
            .request_at(base, "get", "/v1/jobs", |r| r.bearer_auth(&reader))
            .await;
        assert_eq!(reply.status, 200, "{base}: {}", reply.body);
    }
    let listed_keys = get_as(&app, &admin, "/v1/keys").await;
    let reader_id = items(&listed_keys)
        .iter()
        .find(|k| k["scopes"] == json!(["jobs:read"]))
        .expect("the reader key")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let revoke = format!("/v1/keys/{reader_id}/revoke");
    let revoked = call(&app, Some(&admin), "post", &revoke, |r| r).await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    let start = Instant::now();
    loop {
        let reply = app
            .request_at(&replica, "get", "/v1/jobs", |r| r.bearer_auth(&reader))
            .await;
        if reply.status == 401 {
            reply.assert_problem(401, "invalid_api_key");
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
        // The cache holds a key's state for 1 s; 3 s leaves room for a slow machine.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "the other replica still accepts a key revoked {:?} ago",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "revocation reached the other replica after {:?}",
        start.elapsed()
    );
}

/// A `ferry serve` started with `args`: its stdout lines (until it says where it listens), or
/// its exit status and stderr if it stopped first.
fn serve(app: &TestApp, args: &[&str]) -> Result<(Child, Vec<String>), (i32, String)> {
    let mut child = ferry(app, &[&["serve"], args].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    for line in stdout.by_ref().map_while(Result::ok) {
        let listening = line.starts_with("ferry: listening on ");
        lines.push(line);
        if listening {
            // Read on, or the server's next line would fail on a closed pipe.
            std::thread::spawn(move || stdout.map_while(Result::ok).for_each(drop));
            return Ok((child, lines));
        }
    }
    let status = child.wait().expect("wait");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    Err((status.code().unwrap_or(-1), stderr))
}

fn stop(mut child: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}

/// Without keys, `serve` refuses an address beyond loopback unless told `--insecure-no-auth`
/// (and then warns); once a key exists it serves there, and asks for keys.
#[tokio::test]
async fn a_server_without_keys_serves_beyond_loopback_only_when_told() {
    let app = TestApp::spawn_with(TestConfig::default()).await;
    let Err((code, stderr)) = serve(&app, &["--listen", "0.0.0.0:0"]) else {
        panic!("a server without keys started on 0.0.0.0");
    };
    assert_ne!(code, 0);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );

    let (child, lines) =
        serve(&app, &["--listen", "0.0.0.0:0", "--insecure-no-auth"]).expect("starts when told");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARNING") && l.contains("without authentication")),
        "{lines:?}"
    );
    stop(child);

    let (child, lines) = serve(&app, &["--listen", "127.0.0.1:0"]).expect("loopback is fine");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("serving without authentication, on loopback only")),
        "{lines:?}"
    );
    stop(child);

    let key = app.create_key("default", &["jobs:read"]);
    let (child, lines) = serve(&app, &["--listen", "0.0.0.0:0"]).expect("starts with keys");
    assert!(
        lines.iter().any(|l| l.contains("API keys required")),
        "{lines:?}"
    );
    let base = lines
        .last()
        .and_then(|l| l.strip_prefix("ferry: listening on "))
        .expect("address")
        .replace("0.0.0.0", "127.0.0.1");
    let without = app.request_at(&base, "get", "/v1/jobs", |r| r).await;
    without.assert_problem(401, "unauthenticated");
    let with = app
        .request_at(&base, "get", "/v1/jobs", |r| r.bearer_auth(&key))
        .await;
    assert_eq!(with.status, 200, "{}", with.body);
    stop(child);
}

/// The tenant's audit trail as `key` reads it, filtered by `query` pairs (all pages).
async fn trail(app: &TestApp, key: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut pairs: Vec<(&str, &str)> = query.to_vec();
        if let Some(cursor) = &next {
            pairs.push(("next", cursor));
        }
        let reply = call(app, Some(key), "get", "/v1/audit", |r| r.query(&pairs)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        out.extend(items(&reply).iter().cloned());
        match reply.body["next"].as_str() {
            Some(cursor) => next = Some(cursor.to_owned()),
            None => return out,
        }
    }
}

/// The trail as `key` reads it, once `done` holds for it (reads are written within a moment).
async fn wait_trail(app: &TestApp, key: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let entries = trail(app, key, &[]).await;
        if done(&entries) {
            return entries;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not in the trail: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every request of a tenant's keys — allowed, refused or not found — is in that tenant's
/// trail with its key, route, object, status and address; a change is there before its answer
/// arrives, repeated reads are one entry, no payload or parameter is ever in it, and another
/// tenant's trail holds none of it.
async fn every_request_of_a_key_is_in_its_tenants_audit_trail() {
    let app = TestApp::spawn().await;
    let admin = app.create_key("ward", &ALL_SCOPES);
    let reader = app.create_key("ward", &["jobs:read"]);
    let other = app.create_key("elsewhere", &ALL_SCOPES);
    app.wait_keys_required(&app.base).await;

    let job = call(&app, Some(&admin), "post", "/v1/kinds/digest/jobs", |r| {
        r.query(&[("params_json", r#"{"secret_param":"s3cr3t-value"}"#)])
            .body("patient bytes")
    })
    .await;
    assert_eq!(job.status, 202, "{}", job.body);
    let job_id = job.body["id"].as_str().expect("id").to_owned();
    // A change is in the trail before its answer arrives: no waiting here.
    let made = trail(&app, &admin, &[("object", &job_id)]).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0]["action"], "POST /v1/kinds/{kind}/jobs");
    assert_eq!(made[0]["status"], 202);
    assert_eq!(made[0]["tenant"], "ward");
    assert_eq!(made[0]["client_addr"], "127.0.0.1");

    wait_succeeded(&app, &admin, &job_id).await; // polls: many reads, one entry
    for _ in 0..5 {
        get_as(&app, &admin, &format!("/v1/jobs/{job_id}")).await;
    }
    let download = get_as(
        &app,
        &admin,
        &format!("/v1/jobs/{job_id}/results/report.json"),
    )
    .await;
    assert_eq!(download.status, 200);
    let cancel = call(
        &app,
        Some(&admin),
        "post",
        &format!("/v1/jobs/{job_id}/cancel"),
        |r| r,
    )
    .await;
    cancel.assert_problem(409, "job_finished");
    let refused = call(&app, Some(&reader), "post", "/v1/uploads", |r| r.body("x")).await;
    refused.assert_problem(403, "insufficient_scope");
    let probe = get_as(&app, &other, &format!("/v1/jobs/{job_id}")).await;
    probe.assert_problem(404, "job_not_found");

    // Reads are written within a fraction of a second.
    let entries = wait_trail(&app, &admin, |entries| {
        entries
            .iter()
            .any(|e| e["action"] == "GET /v1/jobs/{id}/results/{name}")
    })
    .await;
    let of = |action: &str| -> Vec<&Value> {
        entries.iter().filter(|e| e["action"] == action).collect()
    };
    let polls = of("GET /v1/jobs/{id}");
    assert_eq!(polls.len(), 1, "repeated reads are one entry: {polls:?}");
    assert_eq!(polls[0]["object_id"], job_id.as_str());
    assert_eq!(of("GET /v1/jobs/{id}/results/{name}")[0]["status"], 200);
    assert_eq!(of("POST /v1/jobs/{id}/cancel")[0]["status"], 409);
    let tried = of("POST /v1/uploads");
    assert_eq!(tried.len(), 1, "{tried:?}");
    assert_eq!(tried[0]["status"], 403);
    let keys = get_as(&app, &admin, "/v1/keys").await;
    let reader_id = items(&keys)
        .iter()
        .find(|k| k["scopes"] == json!(["jobs:read"]))
        .expect("the reader")["id"]
        .clone();
    assert_eq!(tried[0]["key_id"], reader_id);
    // Newest first, with increasing ids.
    let ids: Vec<i64> = entries
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    // Filters.
    let by_reader = trail(&app, &admin, &[("key", reader_id.as_str().unwrap())]).await;
    assert_eq!(by_reader.len(), 1);
    let paged = call(&app, Some(&admin), "get", "/v1/audit?limit=1", |r| r).await;
    assert_eq!(items(&paged).len(), 1);
    assert!(paged.body["next"].is_string());
    // Nothing of the request's contents, and nothing of it in the other tenant's trail, which
    // holds that tenant's own (refused) look at this job.
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("s3cr3t") && !text.contains("patient"),
        "{text}"
    );
    let theirs = wait_trail(&app, &other, |entries| !entries.is_empty()).await;
    assert!(
        theirs.iter().all(|e| e["tenant"] == "elsewhere"),
        "{theirs:?}"
    );
    assert!(
        theirs
            .iter()
            .any(|e| e["action"] == "GET /v1/jobs/{id}" && e["status"] == 404),
        "{theirs:?}"
    );
    assert!(entries.iter().all(|e| e["tenant"] == "ward"));
}

/// A tenant's queue bound and a key's request rate: over them `429` with the code, `Retry-After`
/// and (for the rate) the IETF `RateLimit` fields; under them again once jobs start or time
/// passes; other tenants and keys are not held back.
async fn a_tenant_over_its_limits_is_refused_with_429_until_it_is_not() {
    let app = TestApp::spawn_with(TestConfig {
        model_concurrency: 1,
        extra_toml: "[tenants.small]\nmax_queued_jobs = 2\n\
                     [tenants.chatty]\nrequests_per_second = 2\n"
            .into(),
        ..TestConfig::default()
    })
    .await;
    let small = app.create_key("small", &ALL_SCOPES);
    let chatty = app.create_key("chatty", &ALL_SCOPES);
    let chatty_too = app.create_key("chatty", &["jobs:read"]);
    let roomy = app.create_key("roomy", &ALL_SCOPES);
    app.wait_keys_required(&app.base).await;

    // One job runs (the model's one slot), two wait: the queue is full.
    let sleep = |key: String| {
        let app = &app;
        async move {
            call(app, Some(&key), "post", "/v1/kinds/model/jobs", |r| {
                r.query(&[("params_json", r#"{"mode":"sleep"}"#)]).body("x")
            })
            .await
        }
    };
    let running = sleep(small.clone()).await;
    assert_eq!(running.status, 202, "{}", running.body);
    let running = running.body["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    while get_as(&app, &small, &format!("/v1/jobs/{running}"))
        .await
        .body["status"]
        != "running"
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the first job never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut queued = Vec::new();
    for _ in 0..2 {
        let reply = sleep(small.clone()).await;
        assert_eq!(reply.status, 202, "{}", reply.body);
        queued.push(reply.body["id"].as_str().unwrap().to_owned());
    }
    let full = sleep(small.clone()).await;
    full.assert_problem(429, "queue_full");
    assert_eq!(full.header("retry-after"), Some("5"));
    // The JSON form too, and the other tenant is not held back.
    let upload = call(&app, Some(&small), "post", "/v1/uploads", |r| r.body("y")).await;
    let json_form = call(&app, Some(&small), "post", "/v1/jobs", |r| {
        r.json(&json!({"kind": "model", "inputs": {"scan": upload.body["id"]}}))
    })
    .await;
    json_form.assert_problem(429, "queue_full");
    assert_eq!(sleep(roomy.clone()).await.status, 202);
    // A canceled job leaves room.
    let cancel = format!("/v1/jobs/{}/cancel", queued[0]);
    let canceled = call(&app, Some(&small), "post", &cancel, |r| r).await;
    assert!(canceled.status < 300, "{}", canceled.body);
    assert_eq!(sleep(small.clone()).await.status, 202);

    // Two requests a second per key: the third is refused until a token is back.
    for _ in 0..2 {
        assert_eq!(get_as(&app, &chatty, "/v1/jobs").await.status, 200);
    }
    let limited = get_as(&app, &chatty, "/v1/jobs").await;
    limited.assert_problem(429, "rate_limited");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(
        limited.header("ratelimit-policy"),
        Some("\"per-key\";q=2;w=1")
    );
    assert_eq!(limited.header("ratelimit"), Some("\"per-key\";r=0;t=1"));
    // Another key of the tenant has a bucket of its own; other tenants have no limit.
    assert_eq!(get_as(&app, &chatty_too, "/v1/jobs").await.status, 200);
    for _ in 0..5 {
        assert_eq!(get_as(&app, &roomy, "/v1/jobs").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get_as(&app, &chatty, "/v1/jobs").await.status, 200);
}

/// `/readyz` needs a key (of any scope) once keys exist when told so; `/healthz` never does.
#[tokio::test]
async fn readyz_asks_for_a_key_only_when_configured_to() {
    let app = TestApp::spawn_with(TestConfig {
        extra_toml: "[auth]\nreadyz_requires_key = true\n".into(),
        ..TestConfig::default()
    })
    .await;
    assert_eq!(app.readyz().await.status, 200, "open: no key exists yet");
    let reader = app.create_key("default", &["results:read"]);
    app.wait_keys_required(&app.base).await;
    let refused = app.readyz().await;
    refused.assert_problem(401, "unauthenticated");
    assert_eq!(get_as(&app, &reader, "/readyz").await.status, 200);
    let bogus = format!("fk_{}", "1".repeat(40));
    get_as(&app, &bogus, "/readyz")
        .await
        .assert_problem(401, "invalid_api_key");
    assert_eq!(app.healthz().await.status, 200);
}
