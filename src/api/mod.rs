//! The HTTP API: thin actix handlers (extract → call a service → map to a wire type) and the
//! route table. Every error leaves as an RFC 9457 problem.

pub mod accept;
pub mod audit;
pub mod auth;
pub mod conditional;
pub mod cors;
pub mod dashboard;
pub mod digest_header;
pub mod events;
pub mod health;
pub mod jobs;
pub mod keys;
pub mod kinds;
pub mod metrics;
pub mod paging;
pub mod problem;
pub mod reruns;
pub mod results;
pub mod sse;
pub mod trace;
pub mod tus;
pub mod uploads;
pub mod webhooks;
pub mod wire;

use actix_web::{FromRequest, Handler, Resource, Responder, web};
use tokio_util::sync::CancellationToken;

use crate::{service::Services, tenancy::Scope};

pub use auth::Access;

/// Every (method, path) the API serves, in OpenAPI path syntax, with who may call it. The
/// contract test checks that `openapi.yaml` lists exactly these, each with the matching
/// `security`, and that the running server routes each of them; the `Allow` header of a 405
/// and the scope [`auth::authorize`] asks for are read from here. Every `get` has its `head`
/// (see [`readable`]).
pub const ROUTES: &[(&str, &str, Access)] = &[
    // The dashboard's page and assets: they hold no data (the page asks the API with the
    // user's key).
    ("get", "/", Access::Open),
    ("head", "/", Access::Open),
    ("get", "/dashboard/{file}", Access::Open),
    ("head", "/dashboard/{file}", Access::Open),
    ("get", "/healthz", Access::Open),
    ("head", "/healthz", Access::Open),
    ("get", "/readyz", Access::Probe),
    ("head", "/readyz", Access::Probe),
    ("get", "/metrics", Access::Needs(Scope::MetricsRead)),
    ("head", "/metrics", Access::Needs(Scope::MetricsRead)),
    ("post", "/v1/uploads", Access::Needs(Scope::JobsWrite)),
    ("get", "/v1/uploads", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/uploads", Access::Needs(Scope::JobsRead)),
    ("get", "/v1/uploads/{id}", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/uploads/{id}", Access::Needs(Scope::JobsRead)),
    (
        "delete",
        "/v1/uploads/{id}",
        Access::Needs(Scope::JobsWrite),
    ),
    // tus: HEAD is part of writing (a client asks where to resume), so it needs jobs:write;
    // OPTIONS is protocol discovery, open like a CORS preflight.
    ("options", "/v1/tus", Access::Open),
    ("post", "/v1/tus", Access::Needs(Scope::JobsWrite)),
    ("head", "/v1/tus/{id}", Access::Needs(Scope::JobsWrite)),
    ("patch", "/v1/tus/{id}", Access::Needs(Scope::JobsWrite)),
    ("delete", "/v1/tus/{id}", Access::Needs(Scope::JobsWrite)),
    ("post", "/v1/jobs", Access::Needs(Scope::JobsWrite)),
    (
        "post",
        "/v1/kinds/{kind}/jobs",
        Access::Needs(Scope::JobsWrite),
    ),
    ("get", "/v1/kinds", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/kinds", Access::Needs(Scope::JobsRead)),
    ("get", "/v1/kinds/{kind}", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/kinds/{kind}", Access::Needs(Scope::JobsRead)),
    (
        "put",
        "/v1/kinds/{kind}/tags/{tag}",
        Access::Needs(Scope::KindsWrite),
    ),
    (
        "delete",
        "/v1/kinds/{kind}/tags/{tag}",
        Access::Needs(Scope::KindsWrite),
    ),
    (
        "get",
        "/v1/kinds/{kind}/tag-moves",
        Access::Needs(Scope::JobsRead),
    ),
    (
        "head",
        "/v1/kinds/{kind}/tag-moves",
        Access::Needs(Scope::JobsRead),
    ),
    ("get", "/v1/jobs", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/jobs", Access::Needs(Scope::JobsRead)),
    ("post", "/v1/jobs/rerun", Access::Needs(Scope::JobsWrite)),
    (
        "post",
        "/v1/jobs/{id}/rerun",
        Access::Needs(Scope::JobsWrite),
    ),
    ("get", "/v1/jobs/{id}", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/jobs/{id}", Access::Needs(Scope::JobsRead)),
    ("delete", "/v1/jobs/{id}", Access::Needs(Scope::JobsWrite)),
    (
        "post",
        "/v1/jobs/{id}/cancel",
        Access::Needs(Scope::JobsWrite),
    ),
    (
        "get",
        "/v1/jobs/{id}/events",
        Access::Needs(Scope::JobsRead),
    ),
    (
        "head",
        "/v1/jobs/{id}/events",
        Access::Needs(Scope::JobsRead),
    ),
    ("get", "/v1/jobs/{id}/logs", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/jobs/{id}/logs", Access::Needs(Scope::JobsRead)),
    (
        "get",
        "/v1/jobs/{id}/results",
        Access::Needs(Scope::ResultsRead),
    ),
    (
        "head",
        "/v1/jobs/{id}/results",
        Access::Needs(Scope::ResultsRead),
    ),
    (
        "get",
        "/v1/jobs/{id}/results/{name}",
        Access::Needs(Scope::ResultsRead),
    ),
    (
        "head",
        "/v1/jobs/{id}/results/{name}",
        Access::Needs(Scope::ResultsRead),
    ),
    (
        "get",
        "/v1/jobs/{id}/webhook-deliveries",
        Access::Needs(Scope::JobsRead),
    ),
    (
        "head",
        "/v1/jobs/{id}/webhook-deliveries",
        Access::Needs(Scope::JobsRead),
    ),
    ("post", "/v1/webhooks", Access::Needs(Scope::Admin)),
    ("get", "/v1/webhooks", Access::Needs(Scope::Admin)),
    ("head", "/v1/webhooks", Access::Needs(Scope::Admin)),
    ("get", "/v1/webhooks/{id}", Access::Needs(Scope::Admin)),
    ("head", "/v1/webhooks/{id}", Access::Needs(Scope::Admin)),
    ("delete", "/v1/webhooks/{id}", Access::Needs(Scope::Admin)),
    (
        "post",
        "/v1/webhooks/{id}/rotate-secret",
        Access::Needs(Scope::Admin),
    ),
    (
        "post",
        "/v1/webhooks/{id}/disable",
        Access::Needs(Scope::Admin),
    ),
    (
        "post",
        "/v1/webhooks/{id}/enable",
        Access::Needs(Scope::Admin),
    ),
    (
        "get",
        "/v1/webhooks/{id}/deliveries",
        Access::Needs(Scope::Admin),
    ),
    (
        "head",
        "/v1/webhooks/{id}/deliveries",
        Access::Needs(Scope::Admin),
    ),
    (
        "get",
        "/v1/webhook-deliveries/{id}",
        Access::Needs(Scope::Admin),
    ),
    (
        "head",
        "/v1/webhook-deliveries/{id}",
        Access::Needs(Scope::Admin),
    ),
    (
        "post",
        "/v1/webhook-deliveries/{id}/redeliver",
        Access::Needs(Scope::Admin),
    ),
    ("get", "/v1/events", Access::Needs(Scope::JobsRead)),
    ("head", "/v1/events", Access::Needs(Scope::JobsRead)),
    ("post", "/v1/keys", Access::Needs(Scope::Admin)),
    ("get", "/v1/keys", Access::Needs(Scope::Admin)),
    ("head", "/v1/keys", Access::Needs(Scope::Admin)),
    ("get", "/v1/keys/{id}", Access::Needs(Scope::Admin)),
    ("head", "/v1/keys/{id}", Access::Needs(Scope::Admin)),
    ("post", "/v1/keys/{id}/revoke", Access::Needs(Scope::Admin)),
    ("get", "/v1/audit", Access::Needs(Scope::Admin)),
    ("head", "/v1/audit", Access::Needs(Scope::Admin)),
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

/// A route's resource: a method it does not serve is a `405` problem.
fn resource(path: &str) -> Resource {
    web::resource(path.to_owned()).default_service(web::to(problem::method_not_allowed))
}

/// Registers `/metrics` and `/healthz` only: what a `ferry worker` serves on `metrics_listen`.
pub fn configure_metrics(services: Services) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(services));
        cfg.service(readable(resource("/healthz"), health::live))
            .service(readable(resource("/metrics"), metrics::scrape));
    }
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
        cfg.service(readable(resource("/"), dashboard::index))
            .service(readable(resource("/dashboard/{file}"), dashboard::file))
            .service(readable(resource("/healthz"), health::live))
            .service(readable(resource("/readyz"), health::ready))
            .service(readable(resource("/metrics"), metrics::scrape))
            .service(
                readable(resource("/v1/uploads"), uploads::list)
                    .route(web::post().to(uploads::create)),
            )
            .service(
                readable(resource("/v1/uploads/{id}"), uploads::get)
                    .route(web::delete().to(uploads::delete)),
            )
            .service(
                resource("/v1/tus")
                    .route(web::method(actix_web::http::Method::OPTIONS).to(tus::options))
                    .route(web::post().to(tus::create)),
            )
            .service(
                resource("/v1/tus/{id}")
                    .route(web::head().to(tus::head))
                    .route(web::patch().to(tus::patch))
                    .route(web::delete().to(tus::delete)),
            )
            .service(readable(resource("/v1/jobs"), jobs::list).route(web::post().to(jobs::create)))
            // Before `/v1/jobs/{id}`, which would take `rerun` for an id.
            .service(resource("/v1/jobs/rerun").route(web::post().to(reruns::bulk)))
            .service(resource("/v1/jobs/{id}/rerun").route(web::post().to(reruns::rerun)))
            .service(
                readable(resource("/v1/jobs/{id}"), jobs::get)
                    .route(web::delete().to(jobs::delete)),
            )
            .service(
                resource("/v1/kinds/{kind}/jobs").route(web::post().to(jobs::create_with_file)),
            )
            .service(readable(resource("/v1/kinds"), kinds::list))
            .service(readable(resource("/v1/kinds/{kind}"), kinds::get))
            .service(
                resource("/v1/kinds/{kind}/tags/{tag}")
                    .route(web::put().to(kinds::put_tag))
                    .route(web::delete().to(kinds::delete_tag)),
            )
            .service(readable(
                resource("/v1/kinds/{kind}/tag-moves"),
                kinds::tag_moves,
            ))
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
            .service(readable(resource("/v1/events"), events::feed))
            .service(readable(resource("/v1/keys"), keys::list).route(web::post().to(keys::create)))
            .service(readable(resource("/v1/keys/{id}"), keys::get))
            .service(resource("/v1/keys/{id}/revoke").route(web::post().to(keys::revoke)))
            .service(readable(resource("/v1/audit"), audit::list));
    }
}
