//! RFC 9457 problem responses. Every error Ferry sends — its own, actix's extractor errors,
//! unknown routes and wrong methods — is `application/problem+json` with a stable `code`, or
//! the same body as `application/json` for a client that accepts only that
//! ([`negotiate_problem_type`]).

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::{
        StatusCode,
        header::{self, Header},
    },
    middleware::Next,
};
use serde::Serialize;

use crate::{
    error_code::ErrorCode,
    service::{RateLimitFields, ServiceError},
};

pub const CONTENT_TYPE: &str = "application/problem+json";

#[derive(Debug, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The error type of every API handler.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: handlers return `Result<_, ApiError>` everywhere, and the Ok path stays small.
    pub problem: Box<Problem>,
    /// `Retry-After` in whole seconds, where the default (5 for a 429 or 503) would be wrong.
    pub retry_after_secs: Option<u64>,
    /// `RateLimit-Policy` and `RateLimit` of the quota that refused the request.
    pub rate_limit: Option<RateLimitFields>,
}

/// A status's reason phrase, also for the one status tus adds (460).
fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        460 => "Checksum Mismatch",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).expect("a valid status");
        Self {
            status,
            problem: Box::new(Problem {
                type_: format!("urn:ferry:problem:{code}"),
                title: title(status).to_owned(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.as_str().to_owned(),
                errors: Vec::new(),
            }),
            retry_after_secs: None,
            rate_limit: None,
        }
    }

    pub fn with_field(mut self, field: &str, message: impl Into<String>) -> Self {
        self.problem.errors.push(FieldError {
            field: field.to_owned(),
            message: message.into(),
        });
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status, self.problem.code, self.problem.detail
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        res.insert_header((header::CONTENT_TYPE, CONTENT_TYPE));
        if let Some(secs) = self.retry_after_secs {
            res.insert_header((header::RETRY_AFTER, secs.to_string()));
        } else if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            res.insert_header((header::RETRY_AFTER, "5"));
        }
        if let Some(fields) = &self.rate_limit {
            res.insert_header(("RateLimit-Policy", fields.policy.as_str()));
            res.insert_header(("RateLimit", fields.limit.as_str()));
        }
        res.json(&self.problem)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let mut api = ApiError::new(err.code, err.detail.clone());
        // Whole seconds, rounded up, at least 1.
        if let Some(hint) = &err.retry {
            api.retry_after_secs = Some(hint.wait.as_secs_f64().ceil().max(1.0) as u64);
            api.rate_limit = hint.rate_limit.clone();
        }
        if let Some(field) = &err.field {
            api = api.with_field(field, err.detail);
        }
        api
    }
}

/// For actix's query-string errors.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &HttpRequest,
) -> actix_web::Error {
    ApiError::new(
        ErrorCode::InvalidQuery,
        format!("invalid query string: {err}"),
    )
    .into()
}

/// For actix's path errors.
pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::new(ErrorCode::NotFound, format!("invalid path: {err}")).into()
}

pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::RouteNotFound,
        format!("no route {} {}; see openapi.yaml", req.method(), req.path()),
    )
    .error_response()
}

pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    // The matched resource pattern, in the route table's syntax (`{name:.+}` → `{name}`).
    let pattern = req
        .match_pattern()
        .unwrap_or_default()
        .replace("{name:.+}", "{name}");
    let allowed: Vec<String> = super::ROUTES
        .iter()
        .filter(|(_, path, _)| *path == pattern)
        .map(|(method, _, _)| method.to_ascii_uppercase())
        .collect();
    let mut res = ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}; allowed: {}",
            req.method(),
            req.path(),
            allowed.join(", ")
        ),
    )
    .error_response();
    if let Ok(value) = header::HeaderValue::from_str(&allowed.join(", ")) {
        res.headers_mut().insert(header::ALLOW, value);
    }
    res
}

/// The media type a problem is sent as: `application/problem+json`, unless the client's
/// `Accept` rules it out but accepts `application/json` — as OpenAPI-generated clients do that
/// only decode `application/json` error bodies (progenitor). The body is the same either way.
fn problem_media_type(accept: Option<&header::Accept>) -> &'static str {
    let Some(accept) = accept else {
        return CONTENT_TYPE;
    };
    let quality = |media_type: &str| super::accept::quality(accept, media_type);
    let zero = header::Quality::ZERO;
    if quality(CONTENT_TYPE) == zero && quality(mime::APPLICATION_JSON.as_ref()) > zero {
        mime::APPLICATION_JSON.as_ref()
    } else {
        CONTENT_TYPE
    }
}

/// Middleware: relabels a problem response as `application/json` for a client that does not
/// accept `application/problem+json` but does accept `application/json`.
pub async fn negotiate_problem_type(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let accept = header::Accept::parse(req.request()).ok();
    let mut res = next.call(req).await?;
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == CONTENT_TYPE.as_bytes());
    if is_problem {
        let media_type = problem_media_type(accept.as_ref());
        if media_type != CONTENT_TYPE {
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(media_type),
            );
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media_type_for(accept: &str) -> &'static str {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::ACCEPT, accept))
            .to_http_request();
        problem_media_type(header::Accept::parse(&req).ok().as_ref())
    }

    #[test]
    fn a_problem_is_json_only_for_clients_that_accept_nothing_else() {
        assert_eq!(problem_media_type(None), CONTENT_TYPE);
        for accept in [
            "*/*",
            "application/*",
            "application/problem+json",
            "application/json, application/problem+json",
            "application/json, */*;q=0.1",
            "text/html, application/*;q=0.5",
        ] {
            assert_eq!(media_type_for(accept), CONTENT_TYPE, "{accept}");
        }
        for accept in [
            "application/json",
            "application/json;q=0.9, text/plain",
            "application/*, application/problem+json;q=0",
        ] {
            assert_eq!(media_type_for(accept), "application/json", "{accept}");
        }
        // Neither is acceptable: the truth is sent anyway.
        assert_eq!(media_type_for("text/plain"), CONTENT_TYPE);
    }
}
