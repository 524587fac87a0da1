//! RFC 9457 problem responses. Every error Ferry sends — its own, actix's extractor errors,
//! unknown routes and wrong methods — is `application/problem+json` with a stable `code`.

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    http::{StatusCode, header},
};
use serde::Serialize;

use crate::{error_code::ErrorCode, service::ServiceError};

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
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).expect("a valid status");
        Self {
            status,
            problem: Box::new(Problem {
                type_: format!("urn:ferry:problem:{code}"),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                status: status.as_u16(),
                detail: detail.into(),
                code: code.as_str().to_owned(),
                errors: Vec::new(),
            }),
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
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            res.insert_header((header::RETRY_AFTER, "5"));
        }
        res.json(&self.problem)
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let mut api = ApiError::new(err.code, err.detail.clone());
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
        .filter(|(_, path)| *path == pattern)
        .map(|(method, _)| method.to_ascii_uppercase())
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
