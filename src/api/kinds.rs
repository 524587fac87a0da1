//! `/v1/kinds`: the kinds this deployment serves, their versions and tags, the live workers
//! serving them, and moving tags (deploying a version). See `service::kinds`.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;

use super::{
    jobs::json_request,
    paging::{Page, next_cursor},
    problem::ApiError,
    uploads::closing,
    wire::kinds::{KindList, KindOut, TagIn, TagMoveList, TagMoveOut, TagOut, WorkerOut},
};
use crate::{
    service::{
        Services,
        kinds::{KindView, Mover},
    },
    storage::entities::worker,
    tenancy::Caller,
};

fn kind_out(view: &KindView, live: &[worker::Model]) -> KindOut {
    KindOut::of(view, view.resolves_to(), live)
}

pub async fn list(
    services: web::Data<Services>,
    _caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let live = services.live_workers().await?;
    let mut items = Vec::new();
    for view in services.list_kinds().await? {
        items.push(kind_out(&view, &live));
    }
    Ok(HttpResponse::Ok().json(KindList {
        items,
        workers: live.iter().map(WorkerOut::from).collect(),
    }))
}

pub async fn get(
    services: web::Data<Services>,
    _caller: Caller,
    kind: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = services.get_kind(&kind).await?;
    let live = services.live_workers().await?;
    Ok(HttpResponse::Ok().json(kind_out(&view, &live)))
}

/// Points a tag at a version (making the tag if need be). Jobs created after it, on every
/// replica, follow it.
pub async fn put_tag(
    services: web::Data<Services>,
    caller: Caller,
    path: web::Path<(String, String)>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (kind, tag) = path.into_inner();
    let moved = async {
        let tag_in: TagIn = json_request(
            &services,
            &req,
            body,
            "the tag",
            "send the tag as application/json: {\"version\": \"v4\"}",
        )
        .await?;
        let row = services
            .move_tag(&kind, &tag, &tag_in.version, &Mover::of(&caller))
            .await?;
        Ok::<_, ApiError>(HttpResponse::Ok().json(TagOut::from(&row)))
    }
    .await;
    Ok(moved.unwrap_or_else(closing))
}

pub async fn delete_tag(
    services: web::Data<Services>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (kind, tag) = path.into_inner();
    services
        .delete_tag(&kind, &tag, &Mover::of(&caller))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MovesQuery {
    pub tag: Option<String>,
    pub limit: Option<u64>,
    pub next: Option<String>,
}

/// A kind's tag moves, newest first: who moved which tag from where to where, and when.
pub async fn tag_moves(
    services: web::Data<Services>,
    _caller: Caller,
    kind: web::Path<String>,
    query: web::Query<MovesQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = Page::parse(query.limit, query.next.as_deref(), |c| {
        uuid::Uuid::try_parse(c).ok()
    })?;
    let (rows, more) = services
        .tag_moves(&kind, query.tag.as_deref(), page.after, page.limit)
        .await?;
    let next = next_cursor(&rows, more, |row| row.id.simple().to_string());
    Ok(HttpResponse::Ok().json(TagMoveList {
        items: rows.iter().map(TagMoveOut::from).collect(),
        next,
    }))
}
