//! The audit trail at the HTTP edge: [`record`] notes every answered request of a known caller
//! (see `service::audit`), and `GET /v1/audit` lets a tenant's admins read their tenant's.

use actix_web::{
    HttpMessage, HttpResponse,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header,
    middleware::Next,
    web,
};
use serde::Deserialize;

use super::{
    auth::Route,
    paging::{Page, invalid_query, next_cursor},
    problem::ApiError,
    wire::audit::{AuditEventOut, AuditList},
};
use crate::{
    ids::KeyId,
    service::{
        Services,
        audit::{AuditFilter, Entry},
    },
    tenancy::Caller,
};

/// Middleware, outside [`super::auth::authorize`]: once a request of a known caller (one whose
/// key was checked, allowed or not) is answered, records it — a change before the answer leaves,
/// a read without waiting. Requests without a valid key have no tenant and are not recorded.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let request = res.request();
    let (Some(route), Some(services)) = (
        request.extensions().get::<Route>().copied(),
        request.app_data::<web::Data<Services>>(),
    ) else {
        return Ok(res);
    };
    let Some(caller) = request.extensions().get::<Caller>().cloned() else {
        return Ok(res);
    };
    let read = matches!(route.method, "get" | "head");
    let status = res.status().as_u16();
    if read {
        // Most reads are repeats (polls): checked before anything is copied.
        let object = request.match_info().get("id");
        if services
            .audit
            .seen_recently(&caller, route.path, object, status)
        {
            return Ok(res);
        }
    }
    let verb = if read {
        "GET".to_owned()
    } else {
        route.method.to_ascii_uppercase()
    };
    let entry = Entry {
        action: format!("{verb} {}", route.path),
        object_id: object_of(&res),
        status,
        client_addr: request.peer_addr().map(|a| a.ip().to_string()),
        tenant: caller.tenant,
        key_id: caller.key_id,
    };
    if read {
        services.audit.record_read(entry);
    } else {
        services.audit.record_change(entry).await;
    }
    Ok(res)
}

/// The object a request named (its `{id}`), or made (the last segment of `Location`).
fn object_of<B>(res: &ServiceResponse<B>) -> Option<String> {
    if let Some(id) = res.request().match_info().get("id") {
        return Some(id.to_owned());
    }
    let location = res.headers().get(header::LOCATION)?.to_str().ok()?;
    location.rsplit('/').next().map(str::to_owned)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    pub key: Option<String>,
    pub action: Option<String>,
    pub object: Option<String>,
    pub limit: Option<u64>,
    pub next: Option<String>,
}

/// `GET /v1/audit`: the caller's tenant's trail, newest first.
pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<AuditQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = Page::parse(q.limit, q.next.as_deref(), |c| {
        c.parse::<i64>().ok().filter(|id| *id > 0)
    })?;
    let key_id = match &q.key {
        None => None,
        Some(text) => Some(
            KeyId::parse(text)
                .ok_or_else(|| {
                    invalid_query("key", format!("key must be a key id (key_…); got {text:?}"))
                })?
                .0,
        ),
    };
    let filter = AuditFilter {
        key_id,
        action: q.action,
        object_id: q.object,
        before_id: page.after,
        limit: page.limit,
    };
    let (rows, more) = services.audit.list(&caller.tenant, filter).await?;
    let next = next_cursor(&rows, more, |row| row.id.to_string());
    Ok(HttpResponse::Ok().json(AuditList {
        items: rows.iter().map(AuditEventOut::of).collect(),
        next,
    }))
}
