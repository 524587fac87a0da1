//! The HTTP API: thin actix handlers (extract → call a service → map to a wire type) and the
//! route table. Every error leaves as an RFC 9457 problem.

pub mod digest_header;
pub mod health;
pub mod jobs;
pub mod problem;
pub mod results;
pub mod uploads;
pub mod wire;

use actix_web::web;

use crate::service::Services;

/// Every (method, path) the API serves, in OpenAPI path syntax. The contract test checks that
/// `openapi.yaml` lists exactly these and that the running server routes each of them.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("post", "/v1/uploads"),
    ("get", "/v1/uploads/{id}"),
    ("delete", "/v1/uploads/{id}"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("get", "/v1/jobs/{id}/events"),
    ("get", "/v1/jobs/{id}/logs"),
    ("get", "/v1/jobs/{id}/results"),
    ("get", "/v1/jobs/{id}/results/{name}"),
];

/// Registers every route; `openapi.yaml` describes exactly these (see [`ROUTES`]).
pub fn configure(services: Services) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(services))
            .app_data(web::QueryConfig::default().error_handler(problem::query_error))
            .app_data(web::PathConfig::default().error_handler(problem::path_error));
        let resource = |path: &str| {
            web::resource(path.to_owned()).default_service(web::to(problem::method_not_allowed))
        };
        cfg.service(resource("/healthz").route(web::get().to(health::live)))
            .service(resource("/readyz").route(web::get().to(health::ready)))
            .service(resource("/v1/uploads").route(web::post().to(uploads::create)))
            .service(
                resource("/v1/uploads/{id}")
                    .route(web::get().to(uploads::get))
                    .route(web::delete().to(uploads::delete)),
            )
            .service(
                resource("/v1/jobs")
                    .route(web::post().to(jobs::create))
                    .route(web::get().to(jobs::list)),
            )
            .service(
                resource("/v1/jobs/{id}")
                    .route(web::get().to(jobs::get))
                    .route(web::delete().to(jobs::delete)),
            )
            .service(resource("/v1/jobs/{id}/cancel").route(web::post().to(jobs::cancel)))
            .service(resource("/v1/jobs/{id}/events").route(web::get().to(jobs::events)))
            .service(resource("/v1/jobs/{id}/logs").route(web::get().to(jobs::logs)))
            .service(resource("/v1/jobs/{id}/results").route(web::get().to(results::list)))
            .service(
                resource("/v1/jobs/{id}/results/{name:.+}").route(web::get().to(results::download)),
            );
    }
}
