//! `/healthz` (the process answers) and `/readyz` (the database and blob store answer).

use actix_web::{HttpResponse, web};

use super::wire::{Health, Readiness};
use crate::service::Services;

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

pub async fn ready(services: web::Data<Services>) -> HttpResponse {
    let database = services.db.ping().await.is_ok();
    let blob_store = services.blobs.ping().await.is_ok();
    let word = |ok: bool| if ok { "ok" } else { "unavailable" }.to_owned();
    let body = Readiness {
        status: word(database && blob_store),
        database: word(database),
        blob_store: word(blob_store),
    };
    if database && blob_store {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(body)
    }
}
