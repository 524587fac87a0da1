//! Cross-origin requests from browsers, when `[cors] allowed_origins` lists origins: the
//! preflight answers and the `Access-Control-*` headers that let a page of another origin —
//! an Uppy or tus-js-client upload page, a dashboard — call the API with its key. Done by
//! actix-cors (the middleware the actix ecosystem maintains) rather than by hand: the preflight
//! rules are easy to get subtly wrong.

use actix_cors::Cors;
use actix_web::middleware::Condition;

use crate::config::CorsSettings;

/// Response headers a page may read: the ones clients act on, tus' and the draft's included
/// (a tus client reads `Location` and `Upload-Offset`; without exposing them, a browser hides
/// them and the client cannot resume).
const EXPOSED: &[&str] = &[
    "location",
    "retry-after",
    "etag",
    "repr-digest",
    "content-range",
    "content-disposition",
    "idempotent-replayed",
    "ratelimit",
    "ratelimit-policy",
    "www-authenticate",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "upload-offset",
    "upload-length",
    "upload-defer-length",
    "upload-metadata",
    "upload-expires",
    "upload-concat",
    "upload-complete",
    "upload-limit",
    "ferry-job-location",
    "ferry-job-problem",
];

/// The CORS middleware for `settings`, switched off when no origin is allowed (no CORS at all).
pub fn middleware(settings: &CorsSettings) -> Condition<Cors> {
    let enabled = !settings.allowed_origins.is_empty();
    let mut cors = Cors::default()
        .allowed_methods(["GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS"])
        .allow_any_header()
        .expose_headers(EXPOSED.iter().copied())
        .max_age(86_400);
    for origin in &settings.allowed_origins {
        cors = if origin == "*" {
            cors.allow_any_origin()
        } else {
            cors.allowed_origin(origin)
        };
    }
    Condition::new(enabled, cors)
}
