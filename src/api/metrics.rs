//! `GET /metrics`: the Prometheus text format (see [`crate::metrics`]). Needs `metrics:read`
//! (an operator's scope: the counts cover every tenant), or an open server.

use actix_web::{HttpResponse, http::header, web};

use super::problem::ApiError;
use crate::service::Services;

/// The content type of the Prometheus text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn scrape(services: web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let text = services.render_metrics().await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, TEXT_FORMAT))
        // Every scrape is of now.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(text))
}
