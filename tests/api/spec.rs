//! `openapi.yaml` as the tests' oracle: loads the document once, turns its OpenAPI 3.0 schemas
//! into JSON Schema 2020-12, finds the operation a concrete request path belongs to, and checks
//! a whole response against it — declared status, content type, body schema, documented problem
//! `code`, documented headers.
//!
//! The conversion makes `nullable` a `null` alternative and drops OpenAPI-only keywords; each
//! schema is compiled with the converted `components` embedded at the root, so
//! `#/components/schemas/X` references resolve as written. Compiled validators are cached: every
//! helper request of every test is checked.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, OnceLock},
};

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

const SPEC_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");

/// Response headers the API sets on purpose: when one appears in a response, the spec must
/// document it for that response.
const API_HEADERS: [&str; 11] = [
    "Location",
    "Retry-After",
    "Repr-Digest",
    "ETag",
    "Content-Range",
    "Accept-Ranges",
    "Idempotent-Replayed",
    "Allow",
    "Content-Disposition",
    "X-Content-Type-Options",
    "Content-Security-Policy",
];

pub struct Spec {
    pub doc: Value,
    /// `components.schemas`, converted to JSON Schema.
    schemas: Value,
    /// Compiled validators by schema (its JSON text).
    validators: Mutex<HashMap<String, Arc<jsonschema::Validator>>>,
}

/// The spec, loaded on first use.
pub fn spec() -> &'static Spec {
    static SPEC: OnceLock<Spec> = OnceLock::new();
    SPEC.get_or_init(|| {
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
        Spec {
            doc,
            schemas,
            validators: Mutex::default(),
        }
    })
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
    pub fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
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
    pub fn response(&self, method: &str, template: &str, status: u16) -> Result<&Value, String> {
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
    pub fn validate(&self, schema: &Value, instance: &Value) -> Result<(), String> {
        let validator = self.validator(schema);
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

    fn validator(&self, schema: &Value) -> Arc<jsonschema::Validator> {
        let key = schema.to_string();
        if let Some(v) = self.validators.lock().expect("validators").get(&key) {
            return v.clone();
        }
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
        let validator = Arc::new(validator);
        self.validators
            .lock()
            .expect("validators")
            .insert(key, validator.clone());
        validator
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

    /// The spec's path template a concrete path (query string allowed) belongs to, or `None`
    /// when no path of the spec matches it. A parameter stands for one non-empty segment, except
    /// a last one whose schema allows `/` (a result's `name`), which takes the rest of the path.
    pub fn template(&self, path: &str) -> Option<&str> {
        let path = path.split('?').next().unwrap_or_default();
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()
            .expect("paths")
            .iter()
            .filter(|(template, item)| self.path_matches(template, item, &segments))
            // A literal segment beats a parameter (no two templates overlap today).
            .max_by_key(|(template, _)| template.split('/').filter(|p| !p.starts_with('{')).count())
            .map(|(template, _)| template.as_str())
    }

    fn path_matches(&self, template: &str, item: &Value, segments: &[&str]) -> bool {
        let parts: Vec<&str> = template.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let Some(segment) = segments.get(i) else {
                return false;
            };
            match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                None if part != segment => return false,
                None => {}
                Some(_) if segment.is_empty() => return false,
                Some(name) if i + 1 == parts.len() && self.path_param_takes_slashes(item, name) => {
                    return segments[i..].iter().all(|s| !s.is_empty());
                }
                Some(_) => {}
            }
        }
        segments.len() == parts.len()
    }

    fn path_param_takes_slashes(&self, item: &Value, name: &str) -> bool {
        let ops = item
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|op| op["parameters"].as_array());
        item["parameters"]
            .as_array()
            .into_iter()
            .chain(ops)
            .flatten()
            .map(|p| self.resolve(p))
            .filter(|p| p["in"] == "path" && p["name"] == name)
            .any(|p| {
                p["schema"]["pattern"]
                    .as_str()
                    .is_some_and(|r| r.contains('/'))
            })
    }

    /// Checks a JSON body against the spec: `status` must be listed for the operation, and
    /// `body` must validate against the schema of the JSON media type declared for it. A
    /// problem's `code` must be one the response documents (`x-problem-codes`), and
    /// `status`/`type` must agree.
    pub fn try_check(
        &self,
        method: &str,
        path_template: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), String> {
        let what = format!("{} {path_template} → {status}", method.to_uppercase());
        let response = self.response(method, path_template, status)?;
        let content = response["content"]
            .as_object()
            .ok_or_else(|| format!("{what}: the spec declares no body, got {body}"))?;
        // A problem is documented as `application/problem+json` and, for clients that accept
        // only `application/json`, as that too, with the same schema.
        const PROBLEM: &str = "application/problem+json";
        let json_types: Vec<&str> = content
            .keys()
            .map(String::as_str)
            .filter(|k| is_json(k))
            .collect();
        let media = match json_types[..] {
            [one] => one,
            _ if content.contains_key(PROBLEM) => {
                let twin = &content["application/json"]["schema"];
                if json_types.len() != 2 || *twin != content[PROBLEM]["schema"] {
                    return Err(format!(
                        "{what}: a problem's JSON media types differ: {json_types:?}"
                    ));
                }
                PROBLEM
            }
            _ => {
                return Err(format!(
                    "{what}: expected one JSON media type in the spec, found {json_types:?}"
                ));
            }
        };
        self.validate(&content[media]["schema"], body)
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

    /// Checks a whole response: declared status, content type and body ([`Spec::try_check`]), documented
    /// headers (required ones present, every present one valid), no undocumented API header, and
    /// `Retry-After` on exactly the unfinished jobs.
    pub fn check_reply(&self, method: &str, path: &str, reply: &Reply) {
        let template = self
            .template(path)
            .unwrap_or(path.split('?').next().unwrap_or_default());
        let what = format!("{} {template} → {}", method.to_uppercase(), reply.status);
        let response = self
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
                if is_json(&ct)
                    && content.contains_key(&ct)
                    && method != "head"
                    && let Err(e) = self.try_check(method, template, reply.status, &reply.body)
                {
                    panic!("{e}");
                }
            }
        }

        let documented: BTreeMap<String, &Value> = response["headers"]
            .as_object()
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), self.resolve(v)))
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
                    let instance =
                        if schema["type"] == "integer" {
                            json!(value.parse::<i64>().unwrap_or_else(|_| panic!(
                                "{what}: {name}: {value:?} is no integer"
                            )))
                        } else {
                            json!(value)
                        };
                    if let Err(e) = self.validate(schema, &instance) {
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

    /// Whether the spec accepts `value` for a parameter of an operation.
    pub fn param_ok(&self, method: &str, template: &str, name: &str, value: Value) -> bool {
        self.validate(self.parameter_schema(method, template, name), &value)
            .is_ok()
    }

    /// Whether the spec accepts `body` as the JSON request body of an operation.
    pub fn request_ok(&self, method: &str, template: &str, body: &Value) -> Result<(), String> {
        self.validate(
            self.request_schema(method, template, "application/json"),
            body,
        )
    }
}

/// A response as the tests see it: status, headers, raw bytes, and the parsed body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    /// The parsed body for JSON media types, else null.
    pub body: Value,
    pub bytes: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    /// The media type, without parameters.
    pub fn content_type(&self) -> Option<String> {
        self.header("content-type").map(essence)
    }

    pub fn build(status: u16, headers: HeaderMap, bytes: Vec<u8>) -> Reply {
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(essence);
        // Null when it is not JSON (e.g. a byte range of a JSON result); a body the spec
        // declares as JSON then fails its schema in the checks.
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

    pub async fn read(res: reqwest::Response) -> Reply {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("read body").to_vec();
        Reply::build(status, headers, bytes)
    }

    /// Asserts that this is the RFC 9457 problem `code` with `status`.
    pub fn assert_problem(&self, status: u16, code: &str) {
        crate::helpers::assert_problem(self.status, &self.body, status, code);
        assert_eq!(
            self.content_type().as_deref(),
            Some("application/problem+json"),
            "{}",
            self.body
        );
    }

    /// The fields a problem's `errors` name, in order.
    pub fn field_errors(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["field"].as_str().expect("field").to_owned())
                    .collect()
            })
            .unwrap_or_default()
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
