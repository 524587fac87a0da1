//! The dashboard: a page and its script and style, embedded in the binary (no build step, no
//! CDN), served at `/`, `/dashboard/app.js` and `/dashboard/app.css`. The page is a client of
//! the public API like any other — the browser sends the key the user gave it — so the assets
//! themselves hold no data and need no key.
//!
//! The Content-Security-Policy allows only this origin's script, style and connections (and
//! `blob:`/`data:` images, for result previews): a result or a log line shown on the page can
//! never run as script.

use actix_web::{HttpResponse, http::header};

const INDEX_HTML: &str = include_str!("../dashboard/assets/index.html");
const APP_JS: &str = include_str!("../dashboard/assets/app.js");
const APP_CSS: &str = include_str!("../dashboard/assets/app.css");

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

pub async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", APP_CSS)
}
