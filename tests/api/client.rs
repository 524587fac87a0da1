//! The API as tests call it: one typed helper per operation (`app.create_job(..)`,
//! `app.get_job(id)`, …) returning a [`Reply`] — status, headers and parsed body — that has
//! already been checked against `openapi.yaml` (status, content type, body schema, problem
//! code, headers; see [`crate::spec`]). A test that needs an unusual request builds it with
//! [`TestApp::request`], which checks the answer just the same; one that must stay below HTTP
//! (a body never sent, a request left in flight) reads the answer with [`read_raw_reply`] and
//! checks it with `spec().check_reply`.

use std::{
    io::Read,
    net::TcpStream,
    time::{Duration, Instant},
};

use reqwest::{
    RequestBuilder,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, spec};

/// Extra request headers, e.g. `&[("idempotency-key", "k1")]`.
pub type Headers<'a> = &'a [(&'a str, &'a str)];

fn with_headers(mut req: RequestBuilder, headers: Headers<'_>) -> RequestBuilder {
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req
}

/// `path`, with `?query` unless the query is empty.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{query}")
    }
}

impl TestApp {
    /// Any request to this app, its answer checked against the spec for `method` and `path`.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Reply {
        self.request_at(&self.base, method, path, build).await
    }

    /// [`TestApp::request`] to another replica (`base` as returned by `spawn_replica`).
    pub async fn request_at(
        &self,
        base: &str,
        method: &str,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Reply {
        self.try_request_at(base, method, path, build)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// [`TestApp::request`] for a request the server may legitimately cut off (e.g. an
    /// oversized body): a transport error is returned; an answer is checked.
    pub async fn try_request(
        &self,
        method: &str,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Reply, reqwest::Error> {
        self.try_request_at(&self.base, method, path, build).await
    }

    async fn try_request_at(
        &self,
        base: &str,
        method: &str,
        path: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> Result<Reply, reqwest::Error> {
        let m = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .expect("an HTTP method");
        let res = build(self.client.request(m, format!("{base}{path}")))
            .send()
            .await?;
        let reply = Reply::read(res).await;
        spec().check_reply(&method.to_ascii_lowercase(), path, &reply);
        Ok(reply)
    }

    /// `GET path`, checked.
    pub async fn get(&self, path: &str) -> Reply {
        self.request("get", path, |r| r).await
    }

    /// `GET path`, checked; the status and the parsed body.
    #[allow(dead_code)] // the form many tests in flight are written with
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let reply = self.get(path).await;
        (reply.status, reply.body)
    }

    pub async fn healthz(&self) -> Reply {
        self.get("/healthz").await
    }

    pub async fn readyz(&self) -> Reply {
        self.get("/readyz").await
    }

    // --- Uploads --------------------------------------------------------------------------------

    /// `POST /v1/uploads` with `body` (bytes, or a stream).
    pub async fn create_upload(
        &self,
        body: impl Into<reqwest::Body>,
        headers: Headers<'_>,
    ) -> Reply {
        self.request("post", "/v1/uploads", |r| {
            with_headers(r, headers).body(body)
        })
        .await
    }

    /// Uploads `body` as `application/octet-stream`; returns the upload (asserts `201`).
    pub async fn upload(&self, body: impl Into<reqwest::Body>) -> Value {
        let reply = self
            .create_upload(body, &[("content-type", "application/octet-stream")])
            .await;
        assert_eq!(reply.status, 201, "upload failed: {}", reply.body);
        reply.body
    }

    /// `GET /v1/uploads?query` (`query` may be empty).
    pub async fn list_uploads(&self, query: &str) -> Reply {
        self.get(&with_query("/v1/uploads", query)).await
    }

    pub async fn get_upload(&self, id: &str) -> Reply {
        self.get(&format!("/v1/uploads/{id}")).await
    }

    pub async fn delete_upload(&self, id: &str) -> Reply {
        self.request("delete", &format!("/v1/uploads/{id}"), |r| r)
            .await
    }

    // --- Jobs -------------------------------------------------------------------------------

    /// `POST /v1/jobs` with a JSON body.
    pub async fn create_job(&self, body: &Value, headers: Headers<'_>) -> Reply {
        self.request("post", "/v1/jobs", |r| with_headers(r, headers).json(body))
            .await
    }

    /// `POST /v1/kinds/{kind}/jobs?query` with the input file as the body (the one-request
    /// form).
    pub async fn create_job_from_file(
        &self,
        kind: &str,
        query: &str,
        body: impl Into<reqwest::Body>,
        headers: Headers<'_>,
    ) -> Reply {
        let path = with_query(&format!("/v1/kinds/{kind}/jobs"), query);
        self.request("post", &path, |r| with_headers(r, headers).body(body))
            .await
    }

    /// [`TestApp::create_job`] without headers; the status and the parsed body.
    pub async fn post_job(&self, body: Value) -> (u16, Value) {
        let reply = self.create_job(&body, &[]).await;
        (reply.status, reply.body)
    }

    /// Uploads `data` and creates a job of `kind` on it (input `scan`); returns the job.
    pub async fn submit(&self, kind: &str, data: Vec<u8>, params: Value) -> Value {
        let upload = self.upload(data).await;
        let reply = self
            .create_job(
                &json!({"kind": kind, "inputs": {"scan": upload["id"]}, "params": params}),
                &[],
            )
            .await;
        assert_eq!(reply.status, 202, "job creation failed: {}", reply.body);
        reply.body
    }

    pub async fn get_job(&self, id: &str) -> Reply {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// `GET /v1/jobs/{id}` with extra headers (`If-None-Match`, `Prefer`, …), at replica `base`.
    pub async fn get_job_at(&self, base: &str, id: &str, headers: Headers<'_>) -> Reply {
        self.request_at(base, "get", &format!("/v1/jobs/{id}"), |r| {
            with_headers(r, headers)
        })
        .await
    }

    /// The job (asserts `200`).
    pub async fn job(&self, id: &str) -> Value {
        let reply = self.get_job(id).await;
        assert_eq!(reply.status, 200, "GET job {id}: {}", reply.body);
        reply.body
    }

    /// `GET /v1/jobs?query` (`query` may be empty).
    pub async fn list_jobs(&self, query: &str) -> Reply {
        self.get(&with_query("/v1/jobs", query)).await
    }

    pub async fn cancel_job(&self, id: &str) -> Reply {
        self.request("post", &format!("/v1/jobs/{id}/cancel"), |r| r)
            .await
    }

    pub async fn delete_job(&self, id: &str) -> Reply {
        self.request("delete", &format!("/v1/jobs/{id}"), |r| r)
            .await
    }

    /// `GET /v1/jobs/{id}/events?query` (`query` may be empty, e.g. `after=2&limit=10`).
    pub async fn job_events(&self, id: &str, query: &str) -> Reply {
        self.get(&with_query(&format!("/v1/jobs/{id}/events"), query))
            .await
    }

    /// The kinds of a job's events, in order (asserts `200`).
    pub async fn event_kinds(&self, id: &str) -> Vec<String> {
        let reply = self.job_events(id, "").await;
        assert_eq!(reply.status, 200, "events of {id}: {}", reply.body);
        items(&reply)
            .iter()
            .map(|e| e["kind"].as_str().expect("kind").to_owned())
            .collect()
    }

    /// `GET /v1/jobs/{id}/logs?query` (`query` may be empty, e.g. `tail=10`).
    pub async fn job_logs(&self, id: &str, query: &str) -> Reply {
        self.get(&with_query(&format!("/v1/jobs/{id}/logs"), query))
            .await
    }

    /// Polls until `pred` holds for the job, or panics after `within`.
    pub async fn wait_job(
        &self,
        id: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let start = Instant::now();
        loop {
            let job = self.job(id).await;
            if pred(&job) {
                return job;
            }
            if start.elapsed() > within {
                panic!(
                    "job {id} did not reach the expected state within {within:?}; last: {job:#}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_status(&self, id: &str, status: &str, within: Duration) -> Value {
        self.wait_job(id, within, |j| j["status"] == status).await
    }

    // --- Results ----------------------------------------------------------------------------

    pub async fn list_results(&self, id: &str) -> Reply {
        self.get(&format!("/v1/jobs/{id}/results")).await
    }

    /// A job's results (asserts `200`).
    pub async fn results(&self, id: &str) -> Vec<Value> {
        let reply = self.list_results(id).await;
        assert_eq!(reply.status, 200, "results of {id}: {}", reply.body);
        items(&reply).to_vec()
    }

    /// `GET /v1/jobs/{id}/results/{name}` (`name` as it goes in the path).
    pub async fn download_result(&self, id: &str, name: &str, headers: Headers<'_>) -> Reply {
        self.request("get", &format!("/v1/jobs/{id}/results/{name}"), |r| {
            with_headers(r, headers)
        })
        .await
    }

    // --- Below HTTP clients -----------------------------------------------------------------

    /// Sends `head` (a request line and headers, up to the blank line) on a plain socket and
    /// never a body — reqwest always sends the body it declares — then reads and checks the
    /// answer. For the `413` a declared `Content-Length` over the limit gets at once.
    pub async fn raw_request(&self, head: &str) -> Reply {
        let mut request_line = head.split(' ');
        let (Some(method), Some(path)) = (request_line.next(), request_line.next()) else {
            panic!("no request line in {head:?}");
        };
        let (method, path) = (method.to_ascii_lowercase(), path.to_owned());
        let addr = self
            .base
            .strip_prefix("http://")
            .expect("http base")
            .to_owned();
        let head = head.to_owned();
        let reply = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut stream = TcpStream::connect(&addr).expect("connect");
            stream.write_all(head.as_bytes()).expect("send head");
            read_raw_reply(&mut stream)
        })
        .await
        .expect("raw request");
        spec().check_reply(&method, &path, &reply);
        reply
    }
}

/// A list body's `items`.
pub fn items(reply: &Reply) -> &[Value] {
    reply.body["items"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("no items in {}", reply.body))
}

/// Reads one HTTP/1.1 response from a socket (blocking, up to 90 s): until the end of the
/// stream, or the headers and a `Content-Length` worth of body.
pub fn read_raw_reply(stream: &mut TcpStream) -> Reply {
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .expect("read timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
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
            Err(e) => panic!("reading a raw response: {e}"),
        }
    }
    let end = find(&buf, b"\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "no complete response head, got {:?}",
            String::from_utf8_lossy(&buf)
        )
    });
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
    let body_end = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .map_or(buf.len(), |len| (end + 4 + len).min(buf.len()));
    Reply::build(status, headers, buf[end + 4..body_end].to_vec())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
