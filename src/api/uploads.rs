//! `/v1/uploads`: streamed uploads.

use actix_web::{HttpRequest, HttpResponse, http::header, web};

use serde::Deserialize;

use super::{
    digest_header,
    paging::{Page, invalid_query, next_cursor},
    problem::ApiError,
    wire::{UploadList, UploadOut},
};
use crate::{
    error_code::ErrorCode,
    ids::UploadId,
    service::{
        Services,
        uploads::{UploadFilter, UploadMeta},
    },
    tenancy::Caller,
};

/// What the request's headers say about the body to come.
pub(crate) fn upload_meta(req: &HttpRequest) -> Result<UploadMeta, ApiError> {
    let declared_length = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidContentLength,
                        "Content-Length is not a number",
                    )
                })?,
        ),
    };
    Ok(UploadMeta {
        content_type: req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        declared_length,
        filename: None,
        expected_sha256: digest_header::expected_sha256(req.headers())?,
        // The connection's own peer, never a forwarding header a client could forge.
        client: req.peer_addr().map(|addr| addr.ip()),
    })
}

/// The answer to a request that carries a body, when it is an error: the body may not have been
/// read to its end, so close the connection, or the client could send its next request on a
/// connection the server is about to drop. Every handler that takes a payload ends with this.
pub(crate) fn closing(err: ApiError) -> HttpResponse {
    use actix_web::ResponseError;
    let mut res = err.error_response();
    res.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    res
}

pub(crate) fn parse_upload_id(text: &str) -> Result<UploadId, ApiError> {
    UploadId::parse(text).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UploadNotFound,
            format!("{text:?} is not an upload id (upl_…)"),
        )
    })
}

/// `POST /v1/uploads`'s query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// The file's name (names it in a list input's folder).
    pub filename: Option<String>,
}

pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    query: web::Query<CreateQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let created = async {
        let mut meta = upload_meta(&req)?;
        meta.filename = query.into_inner().filename;
        if let Some(name) = &meta.filename
            && (name.is_empty() || name.len() > 255 || name.chars().any(char::is_control))
        {
            return Err(invalid_query(
                "filename",
                "filename must be 1-255 characters without control characters",
            ));
        }
        let row = services.create_upload(&caller.tenant, body, meta).await?;
        let out = UploadOut::from(&row);
        Ok(HttpResponse::Created()
            .insert_header((header::LOCATION, format!("/v1/uploads/{}", out.id)))
            .insert_header(("Repr-Digest", digest_header::header_value(&row.sha256)))
            .json(out))
    }
    .await;
    Ok(created.unwrap_or_else(closing))
}

pub async fn get(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = services
        .get_upload(&caller.tenant, parse_upload_id(&id)?)
        .await?;
    Ok(HttpResponse::Ok().json(UploadOut::from(&row)))
}

pub async fn delete(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    services
        .delete_upload(&caller.tenant, parse_upload_id(&id)?)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub attached: Option<String>,
    pub limit: Option<u64>,
    pub next: Option<String>,
}

/// `GET /v1/uploads`: the same paging as `GET /v1/jobs` (newest first, `limit`, `next`).
pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let attached = match q.attached.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(invalid_query("attached", "attached must be true or false")),
    };
    let page = Page::parse(q.limit, q.next.as_deref(), |c| {
        UploadId::parse(c).map(|id| id.0)
    })?;
    let filter = UploadFilter {
        attached,
        before_id: page.after,
        limit: page.limit,
    };
    let (rows, more) = services.list_uploads(&caller.tenant, filter).await?;
    let next = next_cursor(&rows, more, |row| UploadId(row.id).to_string());
    Ok(HttpResponse::Ok().json(UploadList {
        items: rows.iter().map(UploadOut::from).collect(),
        next,
    }))
}
