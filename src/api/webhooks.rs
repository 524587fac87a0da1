//! `/v1/webhooks` (server-wide endpoints: create, list, read, rotate the secret, disable,
//! enable, delete, and their deliveries), `/v1/jobs/{id}/webhook-deliveries`, and
//! `/v1/webhook-deliveries/{id}` (one delivery with its attempts; redeliver).

use actix_web::{HttpRequest, HttpResponse, http::header, web};

use super::{
    jobs::{json_request, parse_job_id},
    paging::{Page, PageQuery, next_cursor},
    problem::ApiError,
    uploads::closing,
    wire::webhooks::{
        DeliveryList, DeliveryOut, RotateSecretIn, WebhookIn, WebhookList, WebhookOut,
    },
};
use crate::{
    error_code::ErrorCode,
    ids::WebhookId,
    service::{Services, webhooks::EndpointRequest},
    tenancy::Caller,
};

fn parse_webhook_id(text: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(text).ok_or_else(|| {
        ApiError::new(
            ErrorCode::WebhookNotFound,
            format!("{text:?} is not a webhook endpoint id (whk_…)"),
        )
    })
}

fn parse_delivery_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::DeliveryNotFound,
                format!("{text:?} is not a delivery id (a positive integer)"),
            )
        })
}

pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let created = async {
        let hook: WebhookIn = json_request(
            &services,
            &req,
            body,
            "the webhook request",
            "send the webhook endpoint as application/json",
        )
        .await?;
        Ok::<_, ApiError>(
            services
                .create_endpoint(
                    &caller.tenant,
                    EndpointRequest {
                        url: hook.url,
                        events: hook.events,
                        description: hook.description,
                        secret: hook.secret,
                    },
                )
                .await?,
        )
    }
    .await;
    Ok(match created {
        Ok(row) => {
            let out = WebhookOut::with_secret(&row);
            HttpResponse::Created()
                .insert_header((header::LOCATION, out.links.self_.clone()))
                .json(out)
        }
        Err(e) => closing(e),
    })
}

pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::parse(query.limit, query.next.as_deref(), |c| {
        WebhookId::parse(c).map(|id| id.0)
    })?;
    let (rows, more) = services
        .list_endpoints(&caller.tenant, page.after, page.limit)
        .await?;
    let next = next_cursor(&rows, more, |row| WebhookId(row.id).to_string());
    Ok(HttpResponse::Ok().json(WebhookList {
        items: rows.iter().map(WebhookOut::of).collect(),
        next,
    }))
}

pub async fn get(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = services
        .get_endpoint(&caller.tenant, parse_webhook_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(WebhookOut::of(&row)))
}

pub async fn delete(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    services
        .delete_endpoint(&caller.tenant, parse_webhook_id(&id)?)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The body is optional: empty, a new random secret; `{"secret": "whsec_…"}`, that one.
pub async fn rotate_secret(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = parse_webhook_id(&id)?;
    let empty = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() == b"0")
        || (req.headers().get(header::CONTENT_LENGTH).is_none()
            && req.headers().get(header::TRANSFER_ENCODING).is_none());
    let wanted = if empty {
        RotateSecretIn::default()
    } else {
        match json_request(
            &services,
            &req,
            body,
            "the rotation request",
            "send {\"secret\": \"whsec_…\"} as application/json, or no body",
        )
        .await
        {
            Ok(wanted) => wanted,
            Err(e) => return Ok(closing(e)),
        }
    };
    let row = services
        .rotate_endpoint_secret(&caller.tenant, id, wanted.secret)
        .await?;
    Ok(HttpResponse::Ok().json(WebhookOut::with_secret(&row)))
}

pub async fn disable(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = services
        .set_endpoint_enabled(&caller.tenant, parse_webhook_id(&id)?, false)
        .await?;
    Ok(HttpResponse::Ok().json(WebhookOut::of(&row)))
}

pub async fn enable(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = services
        .set_endpoint_enabled(&caller.tenant, parse_webhook_id(&id)?, true)
        .await?;
    Ok(HttpResponse::Ok().json(WebhookOut::of(&row)))
}

/// A page of deliveries: their cursor is the last one's id.
fn delivery_page_of(query: &PageQuery) -> Result<Page<i64>, ApiError> {
    Page::parse(query.limit, query.next.as_deref(), |c| {
        c.parse::<i64>().ok()
    })
}

fn delivery_page(
    rows: Vec<crate::storage::entities::webhook_delivery::Model>,
    more: bool,
) -> HttpResponse {
    let next = more
        .then(|| rows.last().map(|d| d.id.to_string()))
        .flatten();
    HttpResponse::Ok().json(DeliveryList {
        items: rows.iter().map(DeliveryOut::from).collect(),
        next,
    })
}

pub async fn endpoint_deliveries(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_webhook_id(&id)?;
    let page = delivery_page_of(&query)?;
    let (rows, more) = services
        .endpoint_deliveries(&caller.tenant, id, page.after, page.limit)
        .await?;
    Ok(delivery_page(rows, more))
}

pub async fn job_deliveries(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let job = parse_job_id(&id)?;
    let page = delivery_page_of(&query)?;
    let (rows, more) = services
        .job_deliveries(&caller.tenant, job, page.after, page.limit)
        .await?;
    Ok(delivery_page(rows, more))
}

pub async fn delivery(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = services
        .get_delivery(&caller.tenant, parse_delivery_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(DeliveryOut::from(&view)))
}

pub async fn redeliver(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = services
        .redeliver(&caller.tenant, parse_delivery_id(&id)?)
        .await?;
    Ok(HttpResponse::Accepted().json(DeliveryOut::from(&view)))
}
