//! The API contract: `openapi.yaml` lists exactly the routes the server has, the server routes
//! every one of them, and real responses — bodies, status codes, content types and headers —
//! match what the document declares for them.
//!
//! The OpenAPI 3.0 schemas are turned into JSON Schema 2020-12 (`nullable` becomes a `null`
//! alternative, OpenAPI-only keywords are dropped) and compiled with the converted
//! `components` embedded at the root, so `#/components/schemas/X` references resolve as written.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    time::Duration,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use crate::helpers::*;

const SPEC_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Response headers the API sets on purpose: when one appears in a response, the spec must
/// document it for that response.
const API_HEADERS: [&str; 7] = [
    "Location",
    "Retry-After",
    "Repr-Digest",
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "Idempotent-Replayed",
];

const DUMMY_JOB: &str = "job_00000000000000000000000000000000";
const DUMMY_UPLOAD: &str = "upl_00000000000000000000000000000000";

// ---------------------------------------------------------------------------------------------
// The spec and OpenAPI → JSON Schema.

struct Spec {
    doc: Value,
    /// `components.schemas`, converted to JSON Schema.
    schemas: Value,
}

fn load_spec() -> Spec {
    let text = std::fs::read_to_string(SPEC_FILE).expect("read openapi.yaml");
    let doc: Value = serde_norway::from_str(&text).expect("openapi.yaml is valid YAML");
    let schemas = match doc.pointer("/components/schemas") {
        Some(Value::Object(m)) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), to_json_schema(v)))
                .collect(),
        ),
        _ => panic!("openapi.yaml has no components.schemas"),
    };
    Spec { doc, schemas }
}

/// OpenAPI 3.0 schema object → JSON Schema 2020-12.
fn to_json_schema(schema: &Value) -> Value {
    let Value::Object(m) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in m {
        match key.as_str() {
            "nullable" | "example" | "discriminator" | "xml" | "externalDocs" | "deprecated" => {}
            k if k.starts_with("x-") => {}
            "properties" => {
                let props = value
                    .as_object()
                    .expect("properties is an object")
                    .iter()
                    .map(|(name, s)| (name.clone(), to_json_schema(s)))
                    .collect();
                out.insert(key.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" | "not" => {
                out.insert(key.clone(), to_json_schema(value));
            }
            "allOf" | "anyOf" | "oneOf" => {
                let list = value
                    .as_array()
                    .expect("allOf/anyOf/oneOf is an array")
                    .iter()
                    .map(to_json_schema)
                    .collect();
                out.insert(key.clone(), Value::Array(list));
            }
            _ => {
                out.insert(key.clone(), value.clone());
            }
        }
    }
    if m.get("nullable") == Some(&Value::Bool(true)) {
        let composite = ["$ref", "allOf", "anyOf", "oneOf"]
            .iter()
            .any(|k| out.contains_key(*k));
        if composite {
            return json!({"anyOf": [{"type": "null"}, Value::Object(out)]});
        }
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
            if let Some(Value::Array(values)) = out.get_mut("enum") {
                values.push(Value::Null);
            }
        }
    }
    Value::Object(out)
}

impl Spec {
    /// Follows `$ref`s within the document.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external $ref {r:?} in openapi.yaml"));
            v = self
                .doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("unresolvable $ref {r:?} in openapi.yaml"));
        }
        v
    }

    fn operation(&self, method: &str, template: &str) -> Option<&Value> {
        self.doc.pointer("/paths")?.get(template)?.get(method)
    }

    /// The response the spec declares for (method, path, status). For a path the spec does not
    /// have, only `404 route_not_found` is expected; for a method it does not list on a path,
    /// only `405 method_not_allowed`.
    fn response(&self, method: &str, template: &str, status: u16) -> Result<&Value, String> {
        let what = format!("{} {template}", method.to_uppercase());
        let generic = |name: &str, want: u16, why: &str| {
            if status == want {
                Ok(self.resolve(&self.doc["components"]["responses"][name]))
            } else {
                Err(format!(
                    "{what} answered {status}, but {why}, so it must be a {want}"
                ))
            }
        };
        match self.doc["paths"].get(template) {
            None => generic("RouteNotFound", 404, "the path is not in the spec"),
            Some(item) => match item.get(method) {
                None => generic("MethodNotAllowed", 405, "the spec has no such method there"),
                Some(op) => {
                    let responses = op["responses"].as_object().expect("responses");
                    match responses.get(&status.to_string()) {
                        Some(declared) => Ok(self.resolve(declared)),
                        None => Err(format!(
                            "{what} answered {status}, which the spec does not list (it lists {:?})",
                            responses.keys().collect::<Vec<_>>()
                        )),
                    }
                }
            },
        }
    }

    /// Validates `instance` against an OpenAPI schema of this document.
    fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let mut root = match to_json_schema(schema) {
            Value::Object(m) => m,
            other => panic!("schema is not an object: {other}"),
        };
        root.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        root.insert("components".into(), json!({"schemas": self.schemas}));
        let root = Value::Object(root);
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the spec's schema does not compile: {e}\n{root:#}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("\n"))
        }
    }

    /// The schema of a parameter of an operation (operation-level or path-level).
    fn parameter_schema(&self, method: &str, template: &str, name: &str) -> &Value {
        let item = &self.doc["paths"][template];
        let op = &item[method];
        let params = op["parameters"]
            .as_array()
            .into_iter()
            .chain(item["parameters"].as_array())
            .flatten()
            .map(|p| self.resolve(p));
        for p in params {
            if p["name"] == name {
                return &p["schema"];
            }
        }
        panic!("the spec has no parameter {name:?} on {method} {template}")
    }

    fn request_schema(&self, method: &str, template: &str, media: &str) -> &Value {
        let op = self
            .operation(method, template)
            .unwrap_or_else(|| panic!("no operation {method} {template}"));
        &self.resolve(&op["requestBody"])["content"][media]["schema"]
    }
}

/// Whether the spec accepts `value` for a parameter.
fn param_ok(spec: &Spec, method: &str, template: &str, name: &str, value: Value) -> bool {
    spec.validate(spec.parameter_schema(method, template, name), &value)
        .is_ok()
}

/// Whether the spec accepts `body` as the JSON request body of an operation.
fn request_ok(spec: &Spec, method: &str, template: &str, body: &Value) -> Result<(), String> {
    spec.validate(
        spec.request_schema(method, template, "application/json"),
        body,
    )
}

// ---------------------------------------------------------------------------------------------
// Responses.

struct Reply {
    status: u16,
    headers: HeaderMap,
    /// The parsed body for JSON media types, else null.
    body: Value,
    bytes: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    fn content_type(&self) -> Option<String> {
        self.header("content-type").map(essence)
    }

    fn build(status: u16, headers: HeaderMap, bytes: Vec<u8>) -> Reply {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(essence);
        // Null when it is not JSON (e.g. a byte range of a JSON result); a body the spec
        // declares as JSON then fails its schema in `check`.
        let body = match ct.as_deref() {
            Some(ct) if is_json(ct) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            _ => Value::Null,
        };
        Reply {
            status,
            headers,
            body,
            bytes,
        }
    }

    async fn read(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("read body").to_vec();
        Reply::build(status, headers, bytes)
    }
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(media: &str) -> bool {
    media == "application/json" || media.ends_with("+json")
}

/// Checks a JSON body against the spec: `status` must be listed for the operation, and `body`
/// must validate against the schema of the JSON media type declared for it. A problem's `code`
/// must be one the response documents (`x-problem-codes`), and `status`/`type` must agree.
fn check(spec: &Spec, method: &str, path_template: &str, status: u16, body: &Value) {
    if let Err(e) = try_check(spec, method, path_template, status, body) {
        panic!("{e}");
    }
}

fn try_check(
    spec: &Spec,
    method: &str,
    path_template: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let what = format!("{} {path_template} → {status}", method.to_uppercase());
    let response = spec.response(method, path_template, status)?;
    let content = response["content"]
        .as_object()
        .ok_or_else(|| format!("{what}: the spec declares no body, got {body}"))?;
    let json_types: Vec<&String> = content.keys().filter(|k| is_json(k)).collect();
    let [media] = json_types[..] else {
        return Err(format!(
            "{what}: expected one JSON media type in the spec, found {json_types:?}"
        ));
    };
    spec.validate(&content[media]["schema"], body)
        .map_err(|errors| {
            format!("{what}: the body does not match the spec:\n{errors}\nbody: {body:#}")
        })?;
    if media == "application/problem+json" {
        let code = body["code"].as_str().unwrap_or_default();
        let documented: Vec<&str> = response["x-problem-codes"]
            .as_array()
            .ok_or_else(|| format!("{what}: a problem response without x-problem-codes"))?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !documented.contains(&code) {
            return Err(format!(
                "{what}: problem code {code:?} is not documented for it ({documented:?}); \
                 body: {body}"
            ));
        }
        if body["status"] != status {
            return Err(format!("{what}: the problem's status differs: {body}"));
        }
        if body["type"] != format!("urn:ferry:problem:{code}") {
            return Err(format!(
                "{what}: the problem's type does not match its code: {body}"
            ));
        }
    }
    Ok(())
}

/// Checks a whole response: declared status, content type and body ([`check`]), documented
/// headers (required ones present, every present one valid), no undocumented API header, and
/// `Retry-After` on exactly the unfinished jobs.
fn check_reply(spec: &Spec, method: &str, template: &str, reply: &Reply) {
    let what = format!("{} {template} → {}", method.to_uppercase(), reply.status);
    let response = spec
        .response(method, template, reply.status)
        .unwrap_or_else(|e| panic!("{e}"));
    match response["content"].as_object().filter(|c| !c.is_empty()) {
        None => assert!(
            reply.bytes.is_empty(),
            "{what}: the spec declares no body, got {:?}",
            String::from_utf8_lossy(&reply.bytes)
        ),
        Some(content) => {
            let ct = reply
                .content_type()
                .unwrap_or_else(|| panic!("{what}: no Content-Type"));
            assert!(
                content.contains_key(&ct) || content.contains_key("*/*"),
                "{what}: Content-Type {ct} is not declared ({:?})",
                content.keys().collect::<Vec<_>>()
            );
            // A HEAD response has no body; a result that happens to be JSON has no schema.
            if is_json(&ct) && content.contains_key(&ct) && method != "head" {
                check(spec, method, template, reply.status, &reply.body);
            }
        }
    }

    let documented: BTreeMap<String, &Value> = response["headers"]
        .as_object()
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), spec.resolve(v)))
                .collect()
        })
        .unwrap_or_default();
    for (name, header) in &documented {
        match reply.header(name) {
            None => assert!(
                header["required"] != true,
                "{what}: the required header {name} is missing"
            ),
            Some(value) => {
                let schema = &header["schema"];
                let instance = if schema["type"] == "integer" {
                    json!(
                        value
                            .parse::<i64>()
                            .unwrap_or_else(|_| panic!("{what}: {name}: {value:?} is no integer"))
                    )
                } else {
                    json!(value)
                };
                if let Err(e) = spec.validate(schema, &instance) {
                    panic!("{what}: header {name}: {value:?} does not match the spec: {e}");
                }
            }
        }
    }
    for name in API_HEADERS {
        if reply.header(name).is_some() {
            assert!(
                documented.contains_key(&name.to_ascii_lowercase()),
                "{what}: sends {name}, which the spec does not document for this response"
            );
        }
    }

    // A job: Retry-After while it is unfinished, none once it has finished (a 202 to a cancel
    // keeps its own Retry-After, see the spec).
    if let (Some(status), Some(_)) = (reply.body["status"].as_str(), reply.body.get("links")) {
        let unfinished = matches!(status, "queued" | "running");
        if unfinished {
            assert!(
                reply.header("retry-after").is_some(),
                "{what}: an unfinished job without Retry-After"
            );
        } else if !(method == "post" && template.ends_with("/cancel") && reply.status == 202) {
            assert!(
                reply.header("retry-after").is_none(),
                "{what}: a finished job with Retry-After"
            );
        }
    }
}

/// Sends a request and checks the response against the spec.
async fn call(
    spec: &Spec,
    app: &TestApp,
    method: &str,
    template: &str,
    path: &str,
    build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
) -> Reply {
    let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
    let res = build(app.client.request(m, app.url(path)))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let reply = Reply::read(res).await;
    check_reply(spec, method, template, &reply);
    reply
}

async fn get(spec: &Spec, app: &TestApp, template: &str, path: &str) -> Reply {
    call(spec, app, "get", template, path, |r| r).await
}

fn expect_problem(reply: &Reply, status: u16, code: &str) {
    assert_problem(reply.status, &reply.body, status, code);
    assert_eq!(
        reply.content_type().as_deref(),
        Some("application/problem+json")
    );
}

fn field_errors(reply: &Reply) -> Vec<String> {
    reply.body["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e["field"].as_str().expect("field").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn repr_digest(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(data)))
}

/// A request whose body is never sent, over a plain socket (reqwest always sends the body it
/// declares): for the `413` a declared `Content-Length` over the limit gets at once.
async fn raw_request(app: &TestApp, head: String) -> Reply {
    let addr = app
        .base
        .strip_prefix("http://")
        .expect("http base")
        .to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.write_all(head.as_bytes()).expect("send head");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            // Stop at EOF, or once the headers and a Content-Length worth of body are in.
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                    break;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("reading the raw response: {e}"),
            }
        }
        let end = find(&buf, b"\r\n\r\n").expect("a complete response head");
        let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line.split_once(':').expect("header line");
            headers.append(
                HeaderName::from_bytes(name.trim().as_bytes()).expect("header name"),
                HeaderValue::from_str(value.trim()).expect("header value"),
            );
        }
        Reply::build(status, headers, buf[end + 4..].to_vec())
    })
    .await
    .expect("raw request")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A concrete path for a route template, with ids that do not exist.
fn dummy_path(template: &str) -> String {
    let id = if template.starts_with("/v1/uploads/") {
        DUMMY_UPLOAD
    } else {
        DUMMY_JOB
    };
    template
        .replace("{id}", id)
        .replace("{name}", "masks/report.json")
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn spec_lists_exactly_the_server_routes() {
    let spec = load_spec();
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
        .map(|(m, p)| (m.to_string(), p.to_string()))
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
    let spec = load_spec();
    let app = TestApp::spawn().await;

    // What each documented route answers for ids that do not exist.
    let expected: BTreeMap<(&str, &str), u16> = [
        (("get", "/healthz"), 200),
        (("get", "/readyz"), 200),
        (("post", "/v1/uploads"), 201),
        (("get", "/v1/uploads/{id}"), 404),
        (("delete", "/v1/uploads/{id}"), 404),
        (("post", "/v1/jobs"), 422),
        (("get", "/v1/jobs"), 200),
        (("get", "/v1/jobs/{id}"), 404),
        (("delete", "/v1/jobs/{id}"), 404),
        (("post", "/v1/jobs/{id}/cancel"), 404),
        (("get", "/v1/jobs/{id}/events"), 404),
        (("get", "/v1/jobs/{id}/logs"), 404),
        (("get", "/v1/jobs/{id}/results"), 404),
        (("get", "/v1/jobs/{id}/results/{name}"), 404),
    ]
    .into_iter()
    .collect();
    // HEAD answers what GET does, without the body (so its problem code cannot be read).
    let as_get = |method: &'static str| if method == "head" { "get" } else { method };
    let heads = ferry::api::ROUTES.iter().filter(|(m, _)| *m == "head");
    assert_eq!(expected.len(), ferry::api::ROUTES.len() - heads.count());

    let mut by_path: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for &(method, template) in ferry::api::ROUTES {
        by_path.entry(template).or_default().insert(method);
        let path = dummy_path(template);
        let reply = call(&spec, &app, method, template, &path, |r| {
            match (method, template) {
                ("post", "/v1/uploads") => r.body("hello"),
                ("post", "/v1/jobs") => r.json(&json!({})),
                _ => r,
            }
        })
        .await;
        let code = reply.body["code"].as_str().unwrap_or("");
        assert!(
            !matches!(code, "route_not_found" | "method_not_allowed"),
            "{method} {path} is not routed: {}",
            reply.body
        );
        let want = expected[&(as_get(method), template)];
        assert_eq!(reply.status, want, "{method} {path}: {}", reply.body);
        if want == 404 && method != "head" {
            let code = if template.starts_with("/v1/uploads") {
                "upload_not_found"
            } else {
                "job_not_found"
            };
            expect_problem(&reply, 404, code);
        }
    }

    // Every method the spec does not list for a path is a 405 problem.
    for (template, methods) in &by_path {
        let path = dummy_path(template);
        for method in ["get", "post", "put", "patch", "delete", "options", "head"] {
            if methods.contains(method) {
                continue;
            }
            let reply = call(&spec, &app, method, template, &path, |r| r).await;
            assert_eq!(reply.status, 405, "{method} {path}");
            assert_eq!(
                reply.content_type().as_deref(),
                Some("application/problem+json"),
                "{method} {path}"
            );
            if method != "head" {
                expect_problem(&reply, 405, "method_not_allowed");
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
        let reply = call(&spec, &app, method, path, path, |r| r).await;
        expect_problem(&reply, 404, "route_not_found");
    }
}

#[tokio::test]
async fn real_responses_validate_against_the_spec() {
    let spec = load_spec();
    // No workers at first, so a job stays queued until one is started.
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let s = &spec;

    // Health.
    let reply = get(s, &app, "/healthz", "/healthz").await;
    assert_eq!(reply.status, 200);
    let reply = get(s, &app, "/readyz", "/readyz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["status"], "ok");

    // --- Uploads ---------------------------------------------------------------------------
    let data = bytes(64 * 1024, 7);
    let reply = call(s, &app, "post", "/v1/uploads", "/v1/uploads", |r| {
        r.header("content-type", "application/x-test")
            .header("repr-digest", repr_digest(&data))
            .body(data.clone())
    })
    .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let upload = reply.body.clone();
    let upload_id = upload["id"].as_str().expect("id").to_owned();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/uploads/{upload_id}").as_str())
    );
    assert_eq!(
        reply.header("repr-digest"),
        Some(repr_digest(&data).as_str())
    );
    assert_eq!(upload["sha256"], sha256_hex(&data));
    assert_eq!(upload["size"], data.len());
    assert_eq!(upload["content_type"], "application/x-test");
    assert_eq!(upload["job_id"], Value::Null);
    assert!(upload["expires_at"].is_string());

    let upload_path = format!("/v1/uploads/{upload_id}");
    let reply = get(s, &app, "/v1/uploads/{id}", &upload_path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, upload);
    let reply = call(s, &app, "delete", "/v1/uploads/{id}", &upload_path, |r| r).await;
    assert_eq!(reply.status, 204);
    let reply = get(s, &app, "/v1/uploads/{id}", &upload_path).await;
    expect_problem(&reply, 404, "upload_not_found");
    let reply = call(s, &app, "delete", "/v1/uploads/{id}", &upload_path, |r| r).await;
    expect_problem(&reply, 404, "upload_not_found");
    // A job id is no upload id.
    let reply = get(
        s,
        &app,
        "/v1/uploads/{id}",
        &format!("/v1/uploads/{DUMMY_JOB}"),
    )
    .await;
    expect_problem(&reply, 404, "upload_not_found");

    // A wrong digest discards the upload; a malformed one is refused.
    let zeros = format!("sha-256=:{}:", STANDARD.encode([0u8; 32]));
    let reply = call(s, &app, "post", "/v1/uploads", "/v1/uploads", |r| {
        r.header("repr-digest", zeros.clone()).body(data.clone())
    })
    .await;
    expect_problem(&reply, 400, "digest_mismatch");
    let reply = call(s, &app, "post", "/v1/uploads", "/v1/uploads", |r| {
        r.header("content-digest", "sha-256=nope")
            .body(data.clone())
    })
    .await;
    expect_problem(&reply, 400, "invalid_digest_header");

    // A declared length over the limit is refused before the body is read.
    let reply = raw_request(
        &app,
        "POST /v1/uploads HTTP/1.1\r\nHost: ferry\r\ncontent-type: application/octet-stream\r\n\
         content-length: 999999999999999\r\n\r\n"
            .to_owned(),
    )
    .await;
    check_reply(s, "post", "/v1/uploads", &reply);
    expect_problem(&reply, 413, "payload_too_large");
    assert_eq!(reply.header("connection"), Some("close"));

    // --- A queued job, canceled before any worker runs -------------------------------------
    let u0 = app.upload(bytes(8192, 1)).await;
    let req = json!({"kind": "digest", "inputs": {"scan": u0["id"]}});
    request_ok(s, "post", "/v1/jobs", &req).expect("the spec accepts the request");
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| r.json(&req)).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let queued = reply.body.clone();
    let queued_path = queued["links"]["self"].as_str().expect("self").to_owned();
    assert_eq!(reply.header("location"), Some(queued_path.as_str()));
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(reply.header("idempotent-replayed"), None);
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["inputs"][0]["upload_id"], u0["id"]);
    // The upload is now attached to the job and no longer expires.
    let reply = get(
        s,
        &app,
        "/v1/uploads/{id}",
        &format!("/v1/uploads/{}", u0["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(reply.body["job_id"], queued["id"]);
    assert_eq!(reply.body["expires_at"], Value::Null);
    let reply = call(
        s,
        &app,
        "delete",
        "/v1/uploads/{id}",
        &format!("/v1/uploads/{}", u0["id"].as_str().unwrap()),
        |r| r,
    )
    .await;
    expect_problem(&reply, 409, "upload_in_use");

    let reply = get(s, &app, "/v1/jobs/{id}", &queued_path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("retry-after"), Some("2"));
    let cancel_path = queued["links"]["cancel"]
        .as_str()
        .expect("cancel")
        .to_owned();
    let reply = call(s, &app, "post", "/v1/jobs/{id}/cancel", &cancel_path, |r| r).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["status"], "canceled");
    assert_eq!(reply.header("retry-after"), None);
    let reply = call(s, &app, "post", "/v1/jobs/{id}/cancel", &cancel_path, |r| r).await;
    expect_problem(&reply, 409, "job_finished");

    // --- Workers: a digest job, with an idempotency key -------------------------------------
    app.spawn_worker();
    let input = bytes(64 * 1024, 2);
    let u1 = app.upload(input.clone()).await;
    let req = json!({
        "kind": "digest",
        "inputs": {"scan": u1["id"]},
        "params": {"chunk_size": 4096},
        "priority": 10,
        "timeout": "10m",
        "max_attempts": 2,
    });
    request_ok(s, "post", "/v1/jobs", &req).expect("the spec accepts the request");
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.header("idempotency-key", "contract-1").json(&req)
    })
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let job = reply.body.clone();
    let job_id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(job["timeout_seconds"], 600.0);
    assert_eq!(job["priority"], 10);
    assert_eq!(job["max_attempts"], 2);
    assert_eq!(job["params"], json!({"chunk_size": 4096}));

    // The same request again replays; the same key on another request is refused.
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.header("idempotency-key", "contract-1").json(&req)
    })
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.header("idempotent-replayed"), Some("true"));
    assert_eq!(reply.body["id"], job["id"]);
    let mut other = req.clone();
    other["priority"] = json!(11);
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.header("idempotency-key", "contract-1").json(&other)
    })
    .await;
    expect_problem(&reply, 422, "idempotency_key_reused");
    // An attached upload cannot be the input of a second job.
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| r.json(&other)).await;
    expect_problem(&reply, 409, "upload_in_use");
    assert_eq!(field_errors(&reply), ["inputs.scan"]);

    let done = app
        .wait_status(&job_id, "succeeded", Duration::from_secs(60))
        .await;
    let job_path = format!("/v1/jobs/{job_id}");
    let reply = get(s, &app, "/v1/jobs/{id}", &job_path).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("retry-after"), None);
    let job = reply.body.clone();
    assert_eq!(job["id"], done["id"]);
    assert!(job["progress"].is_object(), "{job}");
    assert!(job["finished_at"].is_string() && job["started_at"].is_string());
    assert_eq!(job["attempt"], 1);
    assert_eq!(job["error"], Value::Null);
    assert_eq!(job["result_count"], 2);

    // --- The one-request form ------------------------------------------------------------------
    let file = bytes(20_000, 3);
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.query(&[
            ("kind", "digest"),
            ("input", "volume.raw"),
            ("params", r#"{"chunk_size":4096}"#),
            ("priority", "5"),
            ("timeout", "90"),
            ("max_attempts", "1"),
        ])
        .header("content-type", "application/octet-stream")
        .header("repr-digest", repr_digest(&file))
        .header("idempotency-key", "contract-2")
        .body(file.clone())
    })
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let one = reply.body.clone();
    assert_eq!(one["inputs"][0]["name"], "volume.raw");
    assert_eq!(one["inputs"][0]["sha256"], sha256_hex(&file));
    assert_eq!(one["timeout_seconds"], 90.0);
    assert_eq!(one["priority"], 5);
    app.wait_status(
        one["id"].as_str().unwrap(),
        "succeeded",
        Duration::from_secs(60),
    )
    .await;
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs?kind=nope", |r| {
        r.body(file.clone())
    })
    .await;
    expect_problem(&reply, 422, "unknown_kind");
    assert_eq!(field_errors(&reply), ["kind"]);
    let reply = call(
        s,
        &app,
        "post",
        "/v1/jobs",
        "/v1/jobs?kind=digest&params=%5B%5D",
        |r| r.body(file.clone()),
    )
    .await;
    expect_problem(&reply, 422, "invalid_field");
    assert_eq!(field_errors(&reply), ["params"]);
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs?kind=digest", |r| {
        r.header("repr-digest", zeros.clone()).body(file.clone())
    })
    .await;
    expect_problem(&reply, 400, "digest_mismatch");
    let reply = raw_request(
        &app,
        "POST /v1/jobs?kind=digest HTTP/1.1\r\nHost: ferry\r\ncontent-length: 999999999999999\r\n\r\n"
            .to_owned(),
    )
    .await;
    check_reply(s, "post", "/v1/jobs", &reply);
    expect_problem(&reply, 413, "payload_too_large");

    // --- Listing -----------------------------------------------------------------------------
    assert!(param_ok(s, "get", "/v1/jobs", "limit", json!(1)));
    let reply = get(s, &app, "/v1/jobs", "/v1/jobs?limit=1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["items"].as_array().map(Vec::len), Some(1));
    let next = reply.body["next"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let reply = get(
        s,
        &app,
        "/v1/jobs",
        &format!("/v1/jobs?limit=1&next={next}"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["items"].as_array().map(Vec::len), Some(1));
    assert_ne!(reply.body["items"][0]["id"], next);
    let reply = get(
        s,
        &app,
        "/v1/jobs",
        "/v1/jobs?status=succeeded&kind=digest&created_after=2000-01-01T00:00:00Z&limit=200",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(reply.body["next"], Value::Null);
    let reply = get(s, &app, "/v1/jobs", "/v1/jobs?status=bogus").await;
    expect_problem(&reply, 400, "invalid_query");
    assert_eq!(field_errors(&reply), ["status"]);
    assert!(!param_ok(s, "get", "/v1/jobs", "status", json!("bogus")));
    let reply = get(s, &app, "/v1/jobs", "/v1/jobs?limit=0").await;
    expect_problem(&reply, 400, "invalid_query");
    assert_eq!(field_errors(&reply), ["limit"]);
    assert!(!param_ok(s, "get", "/v1/jobs", "limit", json!(0)));
    assert!(!param_ok(s, "get", "/v1/jobs", "limit", json!(201)));
    let reply = get(s, &app, "/v1/jobs", "/v1/jobs?limit=many").await;
    expect_problem(&reply, 400, "invalid_query");
    let reply = get(s, &app, "/v1/jobs", "/v1/jobs?colour=blue").await;
    expect_problem(&reply, 400, "invalid_query");

    // --- Results -----------------------------------------------------------------------------
    let results_path = job["links"]["results"]
        .as_str()
        .expect("results")
        .to_owned();
    let reply = get(s, &app, "/v1/jobs/{id}/results", &results_path).await;
    assert_eq!(reply.status, 200);
    let items = reply.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 2, "{}", reply.body);
    let report = items
        .iter()
        .find(|r| r["name"] == "report.json")
        .expect("report.json");
    assert_eq!(report["final"], true);
    assert!(
        items
            .iter()
            .any(|r| r["name"] == "partial-report.json" && r["final"] == false)
    );
    let url = report["url"].as_str().expect("url").to_owned();
    let size = report["size"].as_u64().expect("size");
    let tpl = "/v1/jobs/{id}/results/{name}";

    let reply = get(s, &app, tpl, &url).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type().as_deref(), Some("application/json"));
    assert_eq!(reply.bytes.len() as u64, size);
    assert_eq!(sha256_hex(&reply.bytes), report["sha256"]);
    let etag = format!("\"{}\"", report["sha256"].as_str().unwrap());
    assert_eq!(reply.header("etag"), Some(etag.as_str()));
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        reply.header("repr-digest"),
        Some(repr_digest(&reply.bytes).as_str())
    );
    let full = reply.bytes.clone();

    let reply = call(s, &app, "get", tpl, &url, |r| {
        r.header("range", "bytes=0-9")
    })
    .await;
    assert_eq!(reply.status, 206);
    assert_eq!(reply.bytes, full[..10]);
    assert_eq!(
        reply.header("content-range"),
        Some(format!("bytes 0-9/{size}").as_str())
    );
    let reply = call(s, &app, "get", tpl, &url, |r| {
        r.header("if-none-match", etag.clone())
    })
    .await;
    assert_eq!(reply.status, 304);
    assert_eq!(reply.header("etag"), Some(etag.as_str()));
    let reply = call(s, &app, "get", tpl, &url, |r| {
        r.header("range", format!("bytes={size}-"))
    })
    .await;
    expect_problem(&reply, 416, "range_not_satisfiable");
    assert_eq!(
        reply.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    let reply = get(s, &app, tpl, &format!("{results_path}/nothing/here.json")).await;
    expect_problem(&reply, 404, "result_not_found");
    let reply = get(s, &app, tpl, &format!("{results_path}/a%20b")).await;
    expect_problem(&reply, 422, "invalid_field");
    assert_eq!(field_errors(&reply), ["name"]);

    // --- Events and logs ---------------------------------------------------------------------
    let events_path = job["links"]["events"].as_str().expect("events").to_owned();
    let reply = get(s, &app, "/v1/jobs/{id}/events", &events_path).await;
    assert_eq!(reply.status, 200);
    let events = reply.body["items"].as_array().expect("items").clone();
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>());
    let kinds: BTreeSet<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["queued", "started", "progress", "result", "succeeded"] {
        assert!(kinds.contains(kind), "no {kind} event in {kinds:?}");
    }
    let reply = get(
        s,
        &app,
        "/v1/jobs/{id}/events",
        &format!("{events_path}?after=1&limit=2"),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["items"][0]["seq"], 2);
    assert_eq!(reply.body["items"].as_array().map(Vec::len), Some(2));
    let reply = get(
        s,
        &app,
        "/v1/jobs/{id}/events",
        &format!("{events_path}?limit=0"),
    )
    .await;
    expect_problem(&reply, 400, "invalid_query");
    assert!(!param_ok(
        s,
        "get",
        "/v1/jobs/{id}/events",
        "limit",
        json!(0)
    ));
    let logs_path = job["links"]["logs"].as_str().expect("logs").to_owned();
    let reply = get(s, &app, "/v1/jobs/{id}/logs", &logs_path).await;
    assert_eq!(reply.status, 200);
    let reply = get(
        s,
        &app,
        "/v1/jobs/{id}/logs",
        &format!("{logs_path}?tail=1001"),
    )
    .await;
    expect_problem(&reply, 400, "invalid_query");
    assert!(!param_ok(
        s,
        "get",
        "/v1/jobs/{id}/logs",
        "tail",
        json!(1001)
    ));

    // A finished job cannot be canceled.
    let cancel_path = job["links"]["cancel"].as_str().expect("cancel").to_owned();
    let reply = call(s, &app, "post", "/v1/jobs/{id}/cancel", &cancel_path, |r| r).await;
    expect_problem(&reply, 409, "job_finished");

    // --- A failing command handler: job error, retries, logs ---------------------------------
    let failing = app
        .submit("model", bytes(1000, 4), json!({"mode": "fail"}))
        .await;
    let failing_id = failing["id"].as_str().unwrap().to_owned();
    let failed = app
        .wait_status(&failing_id, "failed", Duration::from_secs(60))
        .await;
    let reply = get(s, &app, "/v1/jobs/{id}", &format!("/v1/jobs/{failing_id}")).await;
    assert_eq!(reply.body["id"], failed["id"]);
    assert!(reply.body["error"].is_object(), "{}", reply.body);
    let reply = get(
        s,
        &app,
        "/v1/jobs/{id}/logs",
        &format!("/v1/jobs/{failing_id}/logs"),
    )
    .await;
    assert!(
        !reply.body["items"].as_array().expect("items").is_empty(),
        "no log lines from a failing command: {}",
        reply.body
    );
    let reply = get(
        s,
        &app,
        "/v1/jobs/{id}/events",
        &format!("/v1/jobs/{failing_id}/events"),
    )
    .await;
    let kinds: BTreeSet<&str> = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains("retry_scheduled") && kinds.contains("failed"),
        "{kinds:?}"
    );

    // --- Canceling a running job --------------------------------------------------------------
    let pid_file = app.dir.path().join("sleeper.pid");
    let sleeper = app
        .submit(
            "model",
            bytes(1000, 5),
            json!({"mode": "sleep", "pid_file": pid_file.display().to_string()}),
        )
        .await;
    let sleeper_id = sleeper["id"].as_str().unwrap().to_owned();
    read_pid(&pid_file, Duration::from_secs(60)).await;
    app.wait_status(&sleeper_id, "running", Duration::from_secs(30))
        .await;
    let path = format!("/v1/jobs/{sleeper_id}/cancel");
    let reply = call(s, &app, "post", "/v1/jobs/{id}/cancel", &path, |r| r).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_eq!(reply.body["cancel_requested"], true);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/jobs/{sleeper_id}").as_str())
    );
    app.wait_status(&sleeper_id, "canceled", Duration::from_secs(30))
        .await;
    let reply = get(s, &app, "/v1/jobs/{id}", &format!("/v1/jobs/{sleeper_id}")).await;
    assert_eq!(reply.body["status"], "canceled");

    // --- Problems from job creation -----------------------------------------------------------
    let u2 = app.upload(bytes(100, 6)).await;
    let unknown = json!({"kind": "no-such-kind", "inputs": {"scan": u2["id"]}});
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.json(&unknown)
    })
    .await;
    expect_problem(&reply, 422, "unknown_kind");
    assert_eq!(field_errors(&reply), ["kind"]);
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.header("content-type", "application/json").body("{")
    })
    .await;
    expect_problem(&reply, 400, "invalid_json");
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.header("content-type", "text/plain").body("digest please")
    })
    .await;
    expect_problem(&reply, 415, "unsupported_media_type");
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs?priority=1", |r| {
        r.json(&unknown)
    })
    .await;
    expect_problem(&reply, 400, "invalid_query");
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.header("idempotency-key", "k".repeat(256)).json(&unknown)
    })
    .await;
    expect_problem(&reply, 400, "invalid_idempotency_key");

    // Requests the server refuses for their shape or range, which the spec refuses too.
    let base = json!({"kind": "digest", "inputs": {"scan": u2["id"]}});
    let with = |key: &str, value: Value| {
        let mut b = base.clone();
        b[key] = value;
        b
    };
    let cases = [
        (with("colour", json!("blue")), "invalid_body", None),
        (json!({"inputs": {"scan": u2["id"]}}), "invalid_body", None),
        (
            with("priority", json!(1000)),
            "invalid_field",
            Some("priority"),
        ),
        (
            with("max_attempts", json!(0)),
            "invalid_field",
            Some("max_attempts"),
        ),
        (with("timeout", json!(0)), "invalid_field", Some("timeout")),
        (with("timeout", json!(1.5)), "invalid_body", None),
        (with("inputs", json!({})), "invalid_field", Some("inputs")),
        (
            with("inputs", json!({"scan": "upl_nope"})),
            "invalid_field",
            Some("inputs.scan"),
        ),
    ];
    for (body, code, field) in cases {
        let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| r.json(&body)).await;
        expect_problem(&reply, 422, code);
        if let Some(field) = field {
            assert_eq!(field_errors(&reply), [field], "{body}");
        }
        assert!(
            request_ok(s, "post", "/v1/jobs", &body).is_err(),
            "the server refuses {body} but the spec's JobIn accepts it"
        );
    }
    // Refused for reasons a schema cannot see, but well-formed.
    let reply = call(s, &app, "post", "/v1/jobs", "/v1/jobs", |r| {
        r.json(&with("timeout", json!("soon")))
    })
    .await;
    expect_problem(&reply, 422, "invalid_field");
    assert_eq!(field_errors(&reply), ["timeout"]);
    // The upload survived all of that and is still usable.
    let reply = get(
        s,
        &app,
        "/v1/uploads/{id}",
        &format!("/v1/uploads/{}", u2["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["job_id"], Value::Null);

    // --- Routing problems ----------------------------------------------------------------------
    let reply = get(s, &app, "/v1/unknown", "/v1/unknown").await;
    expect_problem(&reply, 404, "route_not_found");
    let reply = call(s, &app, "put", "/v1/jobs", "/v1/jobs", |r| r).await;
    expect_problem(&reply, 405, "method_not_allowed");

    // --- Deletion -----------------------------------------------------------------------------
    let reply = call(s, &app, "delete", "/v1/jobs/{id}", &job_path, |r| r).await;
    assert_eq!(reply.status, 204);
    let reply = get(s, &app, "/v1/jobs/{id}", &job_path).await;
    expect_problem(&reply, 404, "job_not_found");
    let reply = get(s, &app, "/v1/jobs/{id}/results", &results_path).await;
    expect_problem(&reply, 404, "job_not_found");
    let reply = get(s, &app, tpl, &url).await;
    expect_problem(&reply, 404, "job_not_found");
    let reply = call(s, &app, "delete", "/v1/jobs/{id}", &job_path, |r| r).await;
    expect_problem(&reply, 404, "job_not_found");
    let reply = get(
        s,
        &app,
        "/v1/uploads/{id}",
        &format!("/v1/uploads/{}", u1["id"].as_str().unwrap()),
    )
    .await;
    expect_problem(&reply, 404, "upload_not_found");
}

/// The checks themselves must be able to fail: an undocumented member, a missing required one,
/// a value of the wrong shape, an undeclared status and an undocumented problem code are all
/// caught.
#[test]
fn the_checks_catch_drift() {
    let spec = load_spec();
    let s = &spec;
    let ok = |method: &str, template: &str, status: u16, body: &Value| {
        try_check(s, method, template, status, body).is_ok()
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
        "job_id": null,
        "created_at": "2026-11-29T10:00:00.000Z",
        "expires_at": null,
    });
    let get_upload = "/v1/uploads/{id}";
    assert!(ok("get", get_upload, 200, &upload));
    let mut missing = upload.clone();
    missing.as_object_mut().unwrap().remove("job_id");
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
