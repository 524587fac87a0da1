//! The API contract: `openapi.yaml` lists exactly the routes the server has, and the server
//! routes every one of them. That real responses match the document is checked by every test:
//! each request helper validates its answer (see `spec.rs` and `client.rs`); the last test here
//! makes sure those checks can fail.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::helpers::*;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const DUMMY_JOB: &str = "job_00000000000000000000000000000000";
const DUMMY_WEBHOOK: &str = "whk_00000000000000000000000000000000";
const DUMMY_UPLOAD: &str = "upl_00000000000000000000000000000000";
const DUMMY_KEY: &str = "key_00000000000000000000000000000000";

/// A concrete path for a route template, with ids that do not exist.
fn dummy_path(template: &str) -> String {
    let id = if template.starts_with("/v1/uploads/") || template.starts_with("/v1/tus/") {
        DUMMY_UPLOAD
    } else if template.starts_with("/v1/webhooks/") {
        DUMMY_WEBHOOK
    } else if template.starts_with("/v1/webhook-deliveries/") {
        "999999"
    } else if template.starts_with("/v1/keys/") {
        DUMMY_KEY
    } else {
        DUMMY_JOB
    };
    template
        .replace("{id}", id)
        .replace("{name}", "masks/report.json")
        .replace("{kind}", "noop")
        .replace("{tag}", "production")
        .replace("{file}", "app.js")
}

#[tokio::test]
async fn spec_lists_exactly_the_server_routes() {
    let spec = spec();
    assert_eq!(spec.doc["openapi"], "3.0.3");

    let mut in_spec = BTreeSet::new();
    let mut operation_ids = BTreeSet::new();
    for (path, item) in spec.doc["paths"].as_object().expect("paths") {
        for (key, op) in item.as_object().expect("path item") {
            if METHODS.contains(&key.as_str()) {
                in_spec.insert((key.clone(), path.clone()));
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{key} {path} has no operationId"));
                assert!(
                    operation_ids.insert(id.to_owned()),
                    "operationId {id} twice"
                );
                assert!(
                    op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                    "{key} {path} has no tag"
                );
            }
        }
    }
    let routes: BTreeSet<(String, String)> = ferry::api::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        routes.len(),
        ferry::api::ROUTES.len(),
        "ROUTES has duplicates"
    );
    let missing: Vec<_> = routes.difference(&in_spec).collect();
    let extra: Vec<_> = in_spec.difference(&routes).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "openapi.yaml and ferry::api::ROUTES differ: missing from the spec {missing:?}, \
         not served {extra:?}"
    );

    // Each operation's security says what the server asks for: a key with the scope it names
    // in `x-required-scope`, an optional key (`/readyz`), or none.
    assert_eq!(spec.doc["security"], json!([{"bearerAuth": []}]));
    assert_eq!(
        spec.doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    for &(method, path, access) in ferry::api::ROUTES {
        let op = &spec.doc["paths"][path][method];
        let (security, scope) = match access {
            ferry::api::Access::Open => (json!([]), Value::Null),
            ferry::api::Access::Probe => (json!([{}, {"bearerAuth": []}]), Value::Null),
            ferry::api::Access::Needs(scope) => {
                (json!([{"bearerAuth": []}]), json!(scope.as_str()))
            }
        };
        assert_eq!(op["security"], security, "security of {method} {path}");
        assert_eq!(
            op["x-required-scope"], scope,
            "x-required-scope of {method} {path}"
        );
        let refusals = op["responses"].as_object().expect("responses");
        let needs_key = matches!(access, ferry::api::Access::Needs(_));
        for status in ["403", "429"] {
            let has = refusals.contains_key(status);
            assert_eq!(has, needs_key, "{status} of {method} {path}");
        }
        assert_eq!(
            refusals.contains_key("401"),
            access != ferry::api::Access::Open,
            "401 of {method} {path}"
        );
    }

    // Every reference resolves, and every component object schema is closed, so that an
    // undocumented response member fails the response checks.
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    walk(&spec.doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r.strip_prefix('#').expect("local $ref");
        assert!(spec.doc.pointer(pointer).is_some(), "unresolvable $ref {r}");
    }
    for (name, schema) in spec.doc["components"]["schemas"]
        .as_object()
        .expect("schemas")
    {
        if schema.get("properties").is_some() {
            assert_eq!(
                schema["additionalProperties"], false,
                "components.schemas.{name} must set additionalProperties: false"
            );
        }
    }
}

#[tokio::test]
async fn every_spec_route_is_routed_by_the_server() {
    let app = TestApp::spawn().await;

    // What each documented route answers for ids that do not exist.
    let expected: BTreeMap<(&str, &str), u16> = [
        (("get", "/"), 200),
        (("get", "/dashboard/{file}"), 200),
        (("get", "/healthz"), 200),
        (("get", "/readyz"), 200),
        (("get", "/metrics"), 200),
        (("post", "/v1/uploads"), 201),
        (("get", "/v1/uploads"), 200),
        (("get", "/v1/uploads/{id}"), 404),
        (("delete", "/v1/uploads/{id}"), 404),
        (("post", "/v1/jobs"), 422),
        (("post", "/v1/kinds/{kind}/jobs"), 202),
        (("get", "/v1/jobs"), 200),
        (("get", "/v1/jobs/{id}"), 404),
        (("delete", "/v1/jobs/{id}"), 404),
        (("post", "/v1/jobs/{id}/cancel"), 404),
        (("get", "/v1/jobs/{id}/events"), 404),
        (("get", "/v1/jobs/{id}/logs"), 404),
        (("get", "/v1/jobs/{id}/results"), 404),
        (("get", "/v1/jobs/{id}/results/{name}"), 404),
        (("get", "/v1/jobs/{id}/webhook-deliveries"), 404),
        (("post", "/v1/webhooks"), 422),
        (("get", "/v1/webhooks"), 200),
        (("get", "/v1/webhooks/{id}"), 404),
        (("delete", "/v1/webhooks/{id}"), 404),
        (("post", "/v1/webhooks/{id}/rotate-secret"), 404),
        (("post", "/v1/webhooks/{id}/disable"), 404),
        (("post", "/v1/webhooks/{id}/enable"), 404),
        (("get", "/v1/webhooks/{id}/deliveries"), 404),
        (("get", "/v1/webhook-deliveries/{id}"), 404),
        (("post", "/v1/webhook-deliveries/{id}/redeliver"), 404),
        (("get", "/v1/events"), 200),
        (("post", "/v1/keys"), 422),
        (("get", "/v1/keys"), 200),
        (("get", "/v1/keys/{id}"), 404),
        (("post", "/v1/keys/{id}/revoke"), 404),
        (("get", "/v1/audit"), 200),
        (("options", "/v1/tus"), 204),
        (("post", "/v1/tus"), 201),
        (("head", "/v1/tus/{id}"), 404),
        (("patch", "/v1/tus/{id}"), 404),
        (("delete", "/v1/tus/{id}"), 404),
        (("post", "/v1/jobs/rerun"), 422),
        (("post", "/v1/jobs/{id}/rerun"), 404),
        (("get", "/v1/kinds"), 200),
        (("get", "/v1/kinds/{kind}"), 200),
        (("put", "/v1/kinds/{kind}/tags/{tag}"), 422),
        (("delete", "/v1/kinds/{kind}/tags/{tag}"), 404),
        (("get", "/v1/kinds/{kind}/tag-moves"), 200),
    ]
    .into_iter()
    .collect();
    // HEAD answers what GET does, without the body (so its problem code cannot be read); a
    // HEAD without a GET (tus) stands for itself.
    let has_get = |template: &str| {
        ferry::api::ROUTES
            .iter()
            .any(|(m, t, _)| *m == "get" && *t == template)
    };
    let as_get = |method: &'static str, template: &str| {
        if method == "head" && has_get(template) {
            "get"
        } else {
            method
        }
    };
    let heads = ferry::api::ROUTES
        .iter()
        .filter(|(m, t, _)| *m == "head" && has_get(t));
    assert_eq!(expected.len(), ferry::api::ROUTES.len() - heads.count());

    let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for &(method, template, _) in ferry::api::ROUTES {
        by_path.entry(template).or_default().insert(method);
        let path = dummy_path(template);
        // The helpers find the operation a path belongs to; here is every route's.
        assert_eq!(spec().template(&path), Some(template), "{path}");
        let reply = app
            .request(method, &path, |r| match (method, template) {
                ("post", "/v1/uploads" | "/v1/kinds/{kind}/jobs") => r.body("hello"),
                ("post", "/v1/jobs" | "/v1/webhooks" | "/v1/keys" | "/v1/jobs/rerun")
                | ("put", "/v1/kinds/{kind}/tags/{tag}") => r.json(&json!({"url": ""})),
                ("post", "/v1/tus") => r
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Length", "5"),
                ("patch", "/v1/tus/{id}") => r
                    .header("Tus-Resumable", "1.0.0")
                    .header("Content-Type", "application/offset+octet-stream")
                    .header("Upload-Offset", "0")
                    .body("hello"),
                (_, "/v1/tus/{id}") => r.header("Tus-Resumable", "1.0.0"),
                _ => r,
            })
            .await;
        let code = reply.body["code"].as_str().unwrap_or("");
        assert!(
            !matches!(code, "route_not_found" | "method_not_allowed"),
            "{method} {path} is not routed: {}",
            reply.body
        );
        let want = expected[&(as_get(method, template), template)];
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.body);
        if want == 404 && method != "head" {
            reply.assert_problem(404, not_found_code(template));
        }
    }

    // Every method the spec does not list for a path is a 405 problem.
    for (template, methods) in &by_path {
        let path = dummy_path(template);
        for method in ["get", "post", "put", "patch", "delete", "options", "head"] {
            if methods.contains(method) {
                continue;
            }
            let reply = app.request(method, &path, |r| r).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(
                reply.content_type().as_deref(),
                Some("application/problem+json"),
                "{method} {path}"
            );
            if method != "head" {
                reply.assert_problem(405, "method_not_allowed");
            }
        }
    }

    // A path the spec does not have is a 404 problem, whatever the method.
    for (method, path) in [
        ("get", "/v1/nope"),
        ("post", "/v1/jobs/x/y/z"),
        (
            "get",
            "/v1/jobs/job_00000000000000000000000000000000/results/",
        ),
    ] {
        assert_eq!(spec().template(path), None, "{path}");
        let reply = app.request(method, path, |r| r).await;
        reply.assert_problem(404, "route_not_found");
    }
}

/// The checks themselves must be able to fail: an undocumented member, a missing required one,
/// a value of the wrong shape, an undeclared status and an undocumented problem code are all
/// caught.
#[test]
fn the_checks_catch_drift() {
    let s = spec();
    let ok = |method: &str, template: &str, status: u16, body: &Value| {
        s.try_check(method, template, status, body).is_ok()
    };

    assert!(ok("get", "/healthz", 200, &json!({"status": "ok"})));
    assert!(!ok(
        "get",
        "/healthz",
        200,
        &json!({"status": "ok", "extra": 1})
    ));
    assert!(!ok("get", "/healthz", 200, &json!({"status": "fine"})));
    assert!(!ok(
        "get",
        "/readyz",
        200,
        &json!({"status": "ok", "database": "ok"})
    ));
    assert!(!ok("get", "/healthz", 418, &json!({"status": "ok"})));
    assert!(!ok("put", "/healthz", 404, &json!({"status": "ok"})));

    let problem = |code: &str, status: u16| {
        json!({
            "type": format!("urn:ferry:problem:{code}"),
            "title": "Conflict",
            "status": status,
            "detail": "d",
            "code": code,
        })
    };
    let cancel = "/v1/jobs/{id}/cancel";
    assert!(ok("post", cancel, 409, &problem("job_finished", 409)));
    assert!(!ok("post", cancel, 409, &problem("upload_in_use", 409)));
    assert!(!ok("post", cancel, 409, &problem("job_finished", 404)));
    let mut with_errors = problem("job_finished", 409);
    with_errors["errors"] = json!([]);
    assert!(!ok("post", cancel, 409, &with_errors));
    with_errors["errors"] = json!([{"field": "id", "message": "m"}]);
    assert!(ok("post", cancel, 409, &with_errors));

    // Nullable members take null, but must be present and of their type otherwise.
    let upload = json!({
        "id": DUMMY_UPLOAD,
        "size": 1,
        "sha256": "0".repeat(64),
        "content_type": null,
        "filename": null,
        "job_count": 0,
        "created_at": "2026-11-29T10:00:00.000Z",
        "expires_at": null,
    });
    let get_upload = "/v1/uploads/{id}";
    assert!(ok("get", get_upload, 200, &upload));
    let mut missing = upload.clone();
    missing.as_object_mut().unwrap().remove("filename");
    assert!(!ok("get", get_upload, 200, &missing));
    let mut wrong = upload.clone();
    wrong["expires_at"] = json!("tomorrow");
    assert!(!ok("get", get_upload, 200, &wrong));

    // A nullable `$ref` (through allOf) takes null or the referenced shape only.
    let error = &s.doc["components"]["schemas"]["Job"]["properties"]["error"];
    let job_error = json!({
        "type": "urn:ferry:problem:timeout",
        "title": "Timeout",
        "detail": "d",
        "code": "timeout",
        "retryable": true,
        "attempt": 1,
    });
    assert!(s.validate(error, &Value::Null).is_ok());
    assert!(s.validate(error, &job_error).is_ok());
    assert!(s.validate(error, &json!({"code": "timeout"})).is_err());
    assert!(s.validate(error, &json!("timeout")).is_err());
}

/// The dashboard's files: the spec's list is the server's, every file of the assets folder is
/// served, and every module a served module imports is served too (a module left out would
/// only show as a broken page).
#[tokio::test]
async fn the_dashboard_serves_exactly_its_files() {
    let served: BTreeSet<&str> = ferry::api::dashboard::ASSETS
        .iter()
        .map(|(name, _)| *name)
        .collect();
    let param = &spec().doc["paths"]["/dashboard/{file}"]["parameters"][0];
    let in_spec: BTreeSet<&str> = param["schema"]["enum"]
        .as_array()
        .expect("an enum of files")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(in_spec, served, "openapi.yaml's /dashboard/{{file}} enum");
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dashboard/assets");
    let on_disk: BTreeSet<String> = std::fs::read_dir(&folder)
        .expect("assets folder")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "index.html")
        .collect();
    assert_eq!(
        on_disk.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        served,
        "every file in {folder:?} is served"
    );
    let imports = regex::Regex::new(r#"from\s+'\./([^']+)'"#).unwrap();
    for (name, text) in ferry::api::dashboard::ASSETS {
        for import in imports.captures_iter(text) {
            assert!(
                served.contains(&import[1]),
                "{name} imports {}, which is not served",
                &import[1]
            );
        }
    }

    let app = TestApp::spawn().await;
    for (name, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
    ] {
        let reply = app.get(&format!("/dashboard/{name}")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some(content_type));
    }
    let page = app.get("/").await;
    assert_eq!(page.status, 200);
    assert!(
        String::from_utf8_lossy(&page.bytes).contains("/dashboard/app.js"),
        "the page loads the entry module"
    );
    let missing = app.get("/dashboard/nope.js").await;
    missing.assert_problem(404, "route_not_found");
    assert_eq!(
        missing.body["detail"], r#"the dashboard has no file "nope.js""#,
        "the detail names the file as asked for"
    );
}
