//! The dashboard: a page, its script modules and its style sheet, embedded in the binary (no
//! build step, no CDN), served at `/` and `/dashboard/{file}`. The page is a client of the
//! public API like any other — the browser sends the key the user gave it — so the assets
//! themselves hold no data and need no key.
//!
//! The Content-Security-Policy allows only this origin's script, style and connections (and
//! `blob:`/`data:` images, for result previews): a result or a log line shown on the page can
//! never run as script.

use actix_web::{HttpResponse, http::header, web};

use super::problem::ApiError;
use crate::error_code::ErrorCode;

const INDEX_HTML: &str = include_str!("../dashboard/assets/index.html");

/// Every file under `/dashboard/`, by name: `openapi.yaml` lists exactly these (the contract
/// test checks it). `app.js` is the entry module; it imports the others.
pub const ASSETS: &[(&str, &str)] = &[
    ("app.js", include_str!("../dashboard/assets/app.js")),
    ("dom.js", include_str!("../dashboard/assets/dom.js")),
    ("status.js", include_str!("../dashboard/assets/status.js")),
    ("api.js", include_str!("../dashboard/assets/api.js")),
    ("sse.js", include_str!("../dashboard/assets/sse.js")),
    ("tus.js", include_str!("../dashboard/assets/tus.js")),
    ("charts.js", include_str!("../dashboard/assets/charts.js")),
    ("widgets.js", include_str!("../dashboard/assets/widgets.js")),
    (
        "view-key.js",
        include_str!("../dashboard/assets/view-key.js"),
    ),
    (
        "view-jobs.js",
        include_str!("../dashboard/assets/view-jobs.js"),
    ),
    (
        "view-job.js",
        include_str!("../dashboard/assets/view-job.js"),
    ),
    (
        "view-upload.js",
        include_str!("../dashboard/assets/view-upload.js"),
    ),
    (
        "view-queue.js",
        include_str!("../dashboard/assets/view-queue.js"),
    ),
    ("app.css", include_str!("../dashboard/assets/app.css")),
];

const POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; \
                      script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                      base-uri 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CONTENT_SECURITY_POLICY, POLICY))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        // Revalidated on each load, so a new version of Ferry shows its own dashboard.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

pub async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /dashboard/{file}`: one of [`ASSETS`]; any other name is no route.
pub async fn file(name: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let Some((name, body)) = ASSETS.iter().find(|(n, _)| *n == name.as_str()) else {
        return Err(ApiError::new(
            ErrorCode::RouteNotFound,
            format!("the dashboard has no file {:?}", name.as_str()),
        ));
    };
    let content_type = if name.ends_with(".css") {
        "text/css; charset=utf-8"
    } else {
        "text/javascript; charset=utf-8"
    };
    Ok(asset(content_type, body))
}
