//! OpenTelemetry traces, captured by an OTLP/HTTP receiver in the test (decoding what Ferry
//! exports with the OpenTelemetry project's own protobuf types): an API replica and a separate
//! worker process both export; the request that creates a job continues the client's
//! `traceparent`, and the job's attempt — on the other process — is a child of that request,
//! its result publications children of the attempt; every span names the job.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::{HttpResponse, web};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse},
    common::v1::any_value::Value as AnyValue,
    trace::v1::span::SpanKind,
};
use prost::Message;
use serde_json::json;

use crate::{helpers::*, webhook_receiver::serve_on_own_thread};

const WITHIN: Duration = Duration::from_secs(60);
/// The client's trace and span, as a W3C `traceparent` carries them.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Span {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    kind: i32,
    attributes: BTreeMap<String, String>,
    service: String,
}

/// An OTLP/HTTP trace receiver on a port of its own.
struct Receiver {
    url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    stop: Option<(actix_web::dev::ServerHandle, std::thread::JoinHandle<()>)>,
}

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

async fn receive(spans: web::Data<Arc<Mutex<Vec<Span>>>>, body: web::Bytes) -> HttpResponse {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return HttpResponse::BadRequest().finish();
    };
    let mut got = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(Span {
                name: span.name,
                trace_id: hex::encode(span.trace_id),
                span_id: hex::encode(span.span_id),
                parent_span_id: hex::encode(span.parent_span_id),
                kind: span.kind,
                attributes: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect(),
                service: service.clone(),
            });
        }
    }
    HttpResponse::Ok()
        .content_type("application/x-protobuf")
        .body(ExportTraceServiceResponse::default().encode_to_vec())
}

impl Receiver {
    fn start() -> Receiver {
        let spans = Arc::new(Mutex::new(Vec::new()));
        let data = web::Data::new(spans.clone());
        let (port, handle, thread) = serve_on_own_thread(move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/traces", web::post().to(receive));
        });
        Receiver {
            url: format!("http://127.0.0.1:{port}"),
            spans,
            stop: Some((handle, thread)),
        }
    }

    /// Waits until a span `name` matching `pred` arrived; panics with what did after `WITHIN`.
    async fn span(&self, name: &str, pred: impl Fn(&Span) -> bool) -> Span {
        let start = Instant::now();
        loop {
            if let Some(span) = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.name == name && pred(s))
            {
                return span.clone();
            }
            if start.elapsed() > WITHIN {
                let seen: Vec<String> = self
                    .spans
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| format!("{} {}<-{}", s.name, s.span_id, s.parent_span_id))
                    .collect();
                panic!("no span {name} as expected within {WITHIN:?}; got {seen:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some((handle, thread)) = self.stop.take() {
            // The server's future resolves, its runtime ends, the thread returns.
            drop(handle.stop(false));
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn a_trace_follows_a_job_from_the_request_to_the_attempt_on_another_process() {
    let receiver = Receiver::start();
    let mut app = TestApp::spawn_api_only(TestConfig {
        extra_toml: format!(
            "[traces]\notlp_endpoint = \"{}\"\nservice_name = \"ferry-test\"\n\
             export_interval = \"100ms\"\n",
            receiver.url
        ),
        ..TestConfig::default()
    })
    .await;
    app.spawn_worker();

    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let created = app
        .create_job_from_file(
            "model",
            "params_json=%7B%22steps%22%3A1%2C%22echo_env%22%3Atrue%7D",
            bytes(2000, 1),
            &[("traceparent", traceparent.as_str())],
        )
        .await;
    assert_eq!(created.status, 202, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    app.wait_status(&id, "succeeded", WITHIN).await;
    assert_eq!(app.job(&id).await["status"], "succeeded");

    // The request: a server span continuing the client's trace, naming the job it created.
    let request = receiver
        .span("POST /v1/kinds/{kind}/jobs", |s| s.trace_id == TRACE)
        .await;
    assert_eq!(request.parent_span_id, CLIENT_SPAN);
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(request.attributes["ferry.job_id"], id);
    assert_eq!(request.attributes["http.response.status_code"], "202");
    assert_eq!(request.attributes["http.route"], "/v1/kinds/{kind}/jobs");
    assert_eq!(request.service, "ferry-test");

    // The attempt, run by the worker process: a child of that request.
    let attempt = receiver
        .span("attempt model", |s| {
            s.attributes.get("ferry.job_id") == Some(&id)
        })
        .await;
    assert_eq!(attempt.trace_id, TRACE, "{attempt:?}");
    assert_eq!(attempt.parent_span_id, request.span_id, "{attempt:?}");
    assert_eq!(attempt.kind, SpanKind::Consumer as i32);
    assert_eq!(attempt.attributes["ferry.attempt"], "1");
    assert_eq!(attempt.attributes["ferry.kind"], "model");

    // The model itself got the attempt's context, to continue the trace in its own code.
    let env = app.download_result(&id, "env.json", &[]).await;
    assert_eq!(env.status, 200);
    let env: serde_json::Value = serde_json::from_slice(&env.bytes).expect("env.json");
    assert_eq!(
        env["env"]["TRACEPARENT"],
        format!("00-{TRACE}-{}-01", attempt.span_id).as_str(),
        "{env}"
    );

    // Its results, published inside it.
    for result in [
        "publish preview.txt",
        "publish env.json",
        "publish masks/mask.json",
    ] {
        let publish = receiver.span(result, |s| s.trace_id == TRACE).await;
        assert_eq!(publish.parent_span_id, attempt.span_id, "{publish:?}");
    }

    // A poll without a traceparent: a trace of its own, still naming the job.
    let polled = app.get_job(&id).await;
    assert_eq!(polled.status, 200);
    let poll = receiver
        .span("GET /v1/jobs/{id}", |s| {
            s.attributes.get("ferry.job_id") == Some(&id)
        })
        .await;
    assert_ne!(poll.trace_id, TRACE);
    assert_eq!(poll.parent_span_id, "", "a root span");

    // A job created without a traceparent: its attempt joins the creating request's new trace.
    let upload = app.upload(bytes(100, 2)).await;
    let (status, job) = app
        .post_job(json!({"kind": "digest", "inputs": {"scan": upload["id"]}}))
        .await;
    assert_eq!(status, 202, "{job}");
    let second = job["id"].as_str().unwrap().to_owned();
    let create = receiver
        .span("POST /v1/jobs", |s| {
            s.attributes.get("ferry.job_id") == Some(&second)
        })
        .await;
    let attempt = receiver
        .span("attempt digest", |s| {
            s.attributes.get("ferry.job_id") == Some(&second)
        })
        .await;
    assert_eq!(attempt.trace_id, create.trace_id);
    assert_eq!(attempt.parent_span_id, create.span_id);
}
