//! One span per API request, when traces are exported (see [`crate::telemetry`]): named after
//! the route (`POST /v1/kinds/{kind}/jobs`), continuing the W3C `traceparent` the client sent,
//! with the job id (`ferry.job_id`) of a job's routes — and of a job the request created, set
//! where it is created. Without traces this middleware only passes the request on.

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
};
use tracing::{Instrument, field::Empty};

use crate::telemetry;

pub async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if !telemetry::traces_on() {
        return next.call(req).await;
    }
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unknown route".into());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = %method,
        http.route = %route,
        url.path = %req.path(),
        http.response.status_code = Empty,
    );
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    if let Some(parent) = header("traceparent") {
        telemetry::continue_trace(&span, &parent, header("tracestate").as_deref());
    }
    // The router fills `match_info` after this middleware; the id is the path's fourth segment.
    if route.starts_with("/v1/jobs/{id}")
        && let Some(id) = req.path().split('/').nth(3)
    {
        telemetry::mark_job(&span, id);
    }
    let res = next.call(req).instrument(span.clone()).await;
    let status = match &res {
        Ok(res) => res.status(),
        Err(e) => e.as_response_error().status_code(),
    };
    span.record("http.response.status_code", status.as_u16());
    // OpenTelemetry's HTTP conventions: a server span is an error for 5xx only.
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    res
}
