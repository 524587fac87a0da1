//! Who may call what: [`authorize`] runs before every handler, finds the route's [`Access`] in
//! [`super::ROUTES`], checks the request's API key for it (401 without a valid key, 403 without
//! the scope, each a problem with `WWW-Authenticate` as RFC 6750 describes; 429 past the key's
//! requests per second) and hands the
//! [`Caller`] to the handler, which passes its tenant to the service layer. A handler cannot
//! reach a tenant's data without a `Caller`, and gets none unless this check passed.

use std::future::{Ready, ready};

use actix_web::{
    FromRequest, HttpMessage, HttpRequest, ResponseError,
    body::{EitherBody, MessageBody},
    dev::{Payload, ServiceRequest, ServiceResponse},
    http::header,
    middleware::Next,
    web,
};

use super::problem::ApiError;
use crate::{
    error_code::ErrorCode,
    service::{RateLimitFields, ServiceError, Services, rate::Limited},
    tenancy::{Caller, Scope},
};

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (`/healthz`).
    Open,
    /// Anyone, unless `auth.readyz_requires_key` asks for a key of any scope (`/readyz`).
    Probe,
    /// A key with this scope (or an open server: no key exists, loopback only).
    Needs(Scope),
}

/// The entry of [`super::ROUTES`] a request matched: found once per request by [`authorize`],
/// kept in the request's extensions for the audit trail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Lower case, as in `ROUTES`.
    pub method: &'static str,
    /// In OpenAPI syntax (`/v1/jobs/{id}/results/{name}`).
    pub path: &'static str,
    pub access: Access,
}

/// The route `req` matched, if it matched one.
fn route_of(req: &ServiceRequest) -> Option<Route> {
    let pattern = req.match_pattern()?;
    let method = req.method().as_str();
    super::ROUTES
        .iter()
        .find(|(m, path, _)| {
            // The route table's `{name}` is the router's `{name:.+}`.
            let same_path = *path == pattern
                || matches!(
                    (path.strip_suffix("{name}"), pattern.strip_suffix("{name:.+}")),
                    (Some(a), Some(b)) if a == b
                );
            m.eq_ignore_ascii_case(method) && same_path
        })
        .map(|&(method, path, access)| Route {
            method,
            path,
            access,
        })
}

/// Middleware: lets a request through to its handler only if its key may call the route (see
/// the module notes). Requests for unknown routes and methods pass on to their 404 or 405.
pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(route) = route_of(&req) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    req.extensions_mut().insert(route);
    let Some(services) = req.app_data::<web::Data<Services>>().cloned() else {
        // Registered with the routes (`api::configure`): without them, nobody is let in.
        let error = ServiceError::internal("authorizing", "no services registered");
        let res = Refused::Error(error).error_response();
        return Ok(req.into_response(res).map_into_right_body());
    };
    let refused = match route.access {
        Access::Open => None,
        Access::Probe if !services.settings.auth.readyz_requires_key => None,
        // Any valid key. A probe whose key cannot be checked (the database is down) goes on to
        // say so itself, in its own `503` document.
        Access::Probe => match caller(&req, &services, None).await {
            Err(Refused::Error(e)) if e.code.status() < 500 => Some(Refused::Error(e)),
            _ => None,
        },
        Access::Needs(scope) => match caller(&req, &services, Some(scope)).await {
            Ok(caller) => match take_token(&services, &caller) {
                Ok(()) => {
                    req.extensions_mut().insert(caller);
                    None
                }
                Err(limited) => Some(Refused::Rate(limited)),
            },
            Err(refusal) => Some(refusal),
        },
    };
    match refused {
        None => Ok(next.call(req).await?.map_into_left_body()),
        Some(refusal) => {
            let res = refusal.error_response();
            Ok(req.into_response(res).map_into_right_body())
        }
    }
}

/// Takes one of the caller's requests per second (its tenant's `requests_per_second`; none
/// without a limit).
fn take_token(services: &Services, caller: &Caller) -> Result<(), Limited> {
    let limits = services.settings.tenant_limits(caller.tenant.as_str());
    if limits.requests_per_second == 0 {
        return Ok(());
    }
    let burst = limits.request_burst.unwrap_or(limits.requests_per_second);
    let key = caller.key_id.unwrap_or(uuid::Uuid::nil());
    services.rates.take(key, limits.requests_per_second, burst)
}

/// `429 rate_limited`, with when to retry: `Retry-After` (whole seconds, at least 1) and the
/// IETF `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers).
fn rate_limited(limited: Limited) -> actix_web::HttpResponse {
    let wait = limited.retry_after.as_secs_f64();
    // As `Retry-After` says it (see `ApiError`): whole seconds, at least 1.
    let whole_seconds = (wait.ceil() as u64).max(1);
    let fields = RateLimitFields {
        policy: format!("\"per-key\";q={};w=1", limited.rate),
        limit: format!("\"per-key\";r=0;t={whole_seconds}"),
    };
    let refusal = ServiceError::new(
        ErrorCode::RateLimited,
        format!(
            "this API key may make {} requests a second (bursts of {}); retry in {wait:.2} s",
            limited.rate, limited.burst
        ),
    )
    .retry_after(limited.retry_after, Some(fields));
    ApiError::from(refusal).error_response()
}

/// The caller of `req`, if its key (or an open server) allows `scope` (`None`: any key).
async fn caller(
    req: &ServiceRequest,
    services: &Services,
    scope: Option<Scope>,
) -> Result<Caller, Refused> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let caller = services
        .keys
        .authenticate(authorization)
        .await
        .map_err(Refused::Error)?;
    match scope {
        Some(scope) if !caller.scopes.contains(scope) => {
            // Known, though refused: the audit trail records who tried.
            req.extensions_mut().insert(caller);
            Err(Refused::Scope(scope))
        }
        _ => Ok(caller),
    }
}

/// Why [`authorize`] turned a request away.
#[derive(Debug)]
enum Refused {
    /// 401 (no key, or not a valid one), or 503 when the keys cannot be read.
    Error(ServiceError),
    /// 403: the key lacks this scope.
    Scope(Scope),
    /// 429: the key's requests per second are used up.
    Rate(Limited),
}

impl Refused {
    fn error_response(&self) -> actix_web::HttpResponse {
        let (problem, challenge) = match self {
            Refused::Rate(limited) => return rate_limited(*limited),
            Refused::Error(err) => {
                let challenge = match err.code {
                    ErrorCode::Unauthenticated => Some("Bearer realm=\"ferry\"".to_owned()),
                    ErrorCode::InvalidApiKey => {
                        Some("Bearer realm=\"ferry\", error=\"invalid_token\"".to_owned())
                    }
                    _ => None,
                };
                (ApiError::new(err.code, err.detail.clone()), challenge)
            }
            Refused::Scope(scope) => (
                ApiError::new(
                    ErrorCode::InsufficientScope,
                    format!(
                        "this API key lacks the scope {scope} that this route needs; use a key \
                         that has it (scopes are given when a key is created)"
                    ),
                ),
                Some(format!(
                    "Bearer realm=\"ferry\", error=\"insufficient_scope\", scope=\"{scope}\""
                )),
            ),
        };
        let mut res = problem.error_response();
        if let Some(value) = challenge.and_then(|c| header::HeaderValue::from_str(&c).ok()) {
            res.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        res
    }
}

/// A handler's caller, as [`authorize`] let it in.
impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Caller, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(req.extensions().get::<Caller>().cloned().ok_or_else(|| {
            // A route whose handler wants a caller but whose access is `Open`: a bug.
            ApiError::from(ServiceError::internal(
                "a handler asked for its caller on a route without access control",
                "no caller",
            ))
        }))
    }
}
