//! The HTTP API: thin actix handlers (extract → call a service → map to a wire type) and the
//! route table. Every error leaves as an RFC 9457 problem.

pub mod accept;
pub mod conditional;
pub mod digest_header;
pub mod events;
pub mod health;
pub mod jobs;
pub mod paging;
pub mod problem;
pub mod results;
pub mod sse;
pub mod uploads;
pub mod webhooks;
pub mod wire;

use actix_web::{FromRequest, Handler, Resource, Responder, web};
use tokio_util::sync::CancellationToken;

use crate::service::Services;

/// Every (method, path) the API serves, in OpenAPI path syntax. The contract test checks that
/// `openapi.yaml` lists exactly these and that the running server routes each of them; the
/// `Allow` header of a 405 is read from here. Every `get` has its `head` (see [`readable`]).
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("head", "/healthz"),
    ("get", "/readyz"),
    ("head", "/readyz"),
    ("post", "/v1/uploads"),
    ("get", "/v1/uploads"),
    ("head", "/v1/uploads"),
    ("get", "/v1/uploads/{id}"),
    ("head", "/v1/uploads/{id}"),
    ("delete", "/v1/uploads/{id}"),
    ("post", "/v1/jobs"),
    ("post", "/v1/kinds/{kind}/jobs"),
    ("get", "/v1/jobs"),
    ("head", "/v1/jobs"),
    ("get", "/v1/jobs/{id}"),
    ("head", "/v1/jobs/{id}"),
    ("delete", "/v1/jobs/{id}"),
    ("post", "/v1/jobs/{id}/cancel"),
    ("get", "/v1/jobs/{id}/events"),
    ("head", "/v1/jobs/{id}/events"),
    ("get", "/v1/jobs/{id}/logs"),
    ("head", "/v1/jobs/{id}/logs"),
    ("get", "/v1/jobs/{id}/results"),
    ("head", "/v1/jobs/{id}/results"),
    ("get", "/v1/jobs/{id}/results/{name}"),
    ("head", "/v1/jobs/{id}/results/{name}"),
    ("get", "/v1/jobs/{id}/webhook-deliveries"),
    ("head", "/v1/jobs/{id}/webhook-deliveries"),
    ("post", "/v1/webhooks"),
    ("get", "/v1/webhooks"),
    ("head", "/v1/webhooks"),
    ("get", "/v1/webhooks/{id}"),
    ("head", "/v1/webhooks/{id}"),
    ("delete", "/v1/webhooks/{id}"),
    ("post", "/v1/webhooks/{id}/rotate-secret"),
    ("post", "/v1/webhooks/{id}/disable"),
    ("post", "/v1/webhooks/{id}/enable"),
    ("get", "/v1/webhooks/{id}/deliveries"),
    ("head", "/v1/webhooks/{id}/deliveries"),
    ("get", "/v1/webhook-deliveries/{id}"),
    ("head", "/v1/webhook-deliveries/{id}"),
    ("post", "/v1/webhook-deliveries/{id}/redeliver"),
    ("get", "/v1/events"),
    ("head", "/v1/events"),
];

/// Routes `GET` and `HEAD` of a resource to `handler`. A HEAD answer is the GET answer — same
/// status, same headers, `Content-Length` included — whose body the HTTP layer does not send
/// (actix writes the head of a response to a HEAD request and discards its body). Handlers
/// whose body is costly to produce look at the method and skip producing it
/// ([`results::download`]).
fn readable<F, Args>(resource: Resource, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    resource
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
}

/// Registers every route; `openapi.yaml` describes exactly these (see [`ROUTES`]). `stopping`
/// is cancelled when the server stops: open event streams end then.
pub fn configure(
    services: Services,
    stopping: CancellationToken,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(services))
            .app_data(web::Data::new(stopping))
            .app_data(web::QueryConfig::default().error_handler(problem::query_error))
            .app_data(web::PathConfig::default().error_handler(problem::path_error));
        let resource = |path: &str| {
            web::resource(path.to_owned()).default_service(web::to(problem::method_not_allowed))
        };
        cfg.service(readable(resource("/healthz"), health::live))
            .service(readable(resource("/readyz"), health::ready))
            .service(
                readable(resource("/v1/uploads"), uploads::list)
                    .route(web::post().to(uploads::create)),
            )
            .service(
                readable(resource("/v1/uploads/{id}"), uploads::get)
                    .route(web::delete().to(uploads::delete)),
            )
            .service(readable(resource("/v1/jobs"), jobs::list).route(web::post().to(jobs::create)))
            .service(
                readable(resource("/v1/jobs/{id}"), jobs::get)
                    .route(web::delete().to(jobs::delete)),
            )
            .service(
                resource("/v1/kinds/{kind}/jobs").route(web::post().to(jobs::create_with_file)),
            )
            .service(resource("/v1/jobs/{id}/cancel").route(web::post().to(jobs::cancel)))
            .service(readable(
                resource("/v1/jobs/{id}/events"),
                events::job_events,
            ))
            .service(readable(resource("/v1/jobs/{id}/logs"), jobs::logs))
            .service(readable(resource("/v1/jobs/{id}/results"), results::list))
            .service(readable(
                resource("/v1/jobs/{id}/results/{name:.+}"),
                results::download,
            ))
            .service(readable(
                resource("/v1/jobs/{id}/webhook-deliveries"),
                webhooks::job_deliveries,
            ))
            .service(
                readable(resource("/v1/webhooks"), webhooks::list)
                    .route(web::post().to(webhooks::create)),
            )
            .service(
                readable(resource("/v1/webhooks/{id}"), webhooks::get)
                    .route(web::delete().to(webhooks::delete)),
            )
            .service(
                resource("/v1/webhooks/{id}/rotate-secret")
                    .route(web::post().to(webhooks::rotate_secret)),
            )
            .service(resource("/v1/webhooks/{id}/disable").route(web::post().to(webhooks::disable)))
            .service(resource("/v1/webhooks/{id}/enable").route(web::post().to(webhooks::enable)))
            .service(readable(
                resource("/v1/webhooks/{id}/deliveries"),
                webhooks::endpoint_deliveries,
            ))
            .service(readable(
                resource("/v1/webhook-deliveries/{id}"),
                webhooks::delivery,
            ))
            .service(
                resource("/v1/webhook-deliveries/{id}/redeliver")
                    .route(web::post().to(webhooks::redeliver)),
            )
            .service(readable(resource("/v1/events"), events::feed));
    }
}
