//! `/v1/tus`: resumable uploads, for the clients that already speak a protocol for them:
//! tus 1.0 (tus-js-client, Uppy, tuspy, TUSKit, tus-java-client…: core, creation,
//! creation-with-upload, creation-defer-length, expiration, checksum, termination) and the IETF
//! draft "Resumable Uploads for HTTP" as tus-js-client speaks it ([`headers`]). This module only
//! translates their headers to and from [`crate::service::resumable`]; errors are problems
//! like everywhere else, with the tus status codes (`409`, `412`, `423`, `460`).
//!
//! A finished upload is an ordinary upload with the same id (`/v1/uploads/{id}`). Metadata
//! `ferry-kind` (with `ferry-params`, a JSON object, and `ferry-input`, the input's name) makes
//! the completing request create that job; its URL comes back in `Ferry-Job-Location`.

mod headers;

use actix_web::{
    HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError,
    http::{
        StatusCode,
        header::{self, HeaderName, HeaderValue},
    },
    web,
};

use self::headers::{
    Concat, Protocol, TUS_RESUMABLE, UPLOAD_COMPLETE, UPLOAD_DEFER_LENGTH, UPLOAD_LENGTH,
    UPLOAD_METADATA, UPLOAD_OFFSET, addressed, bytes_media_type, checksum, invalid_header,
    new_upload, number, protocol, required_upload_complete,
};
pub use self::headers::{INTEROP_VERSIONS, VERSION};
use super::{problem::ApiError, uploads::closing};
use crate::{
    error_code::ErrorCode,
    ids::{JobId, UploadId},
    service::{
        Services,
        resumable::{Append, Appended, ChecksumAlgorithm, ResumableStatus},
    },
    tenancy::Caller,
};

/// The tus extensions served (`Tus-Extension`).
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,expiration,\
                              checksum,termination,concatenation";

const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_LIMIT: HeaderName = HeaderName::from_static("upload-limit");
const JOB_LOCATION: HeaderName = HeaderName::from_static("ferry-job-location");
const JOB_PROBLEM: HeaderName = HeaderName::from_static("ferry-job-problem");

/// Every tus answer, errors included, says which protocol version it speaks (the draft's
/// answers carry no such header).
fn answer(mut res: HttpResponse, protocol: Option<Protocol>) -> HttpResponse {
    if protocol != Some(Protocol::Ietf) {
        res.headers_mut()
            .insert(TUS_RESUMABLE, HeaderValue::from_static(VERSION));
    }
    res
}

/// An error answer to a request that may carry a body (see [`closing`]).
fn refused(err: ApiError, protocol: Option<Protocol>) -> HttpResponse {
    answer(closing(err), protocol)
}

/// An HTTP date (`Upload-Expires`).
fn http_date(ms: i64) -> HeaderValue {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    HeaderValue::from_str(&header::HttpDate::from(time).to_string()).expect("an HTTP date")
}

/// The draft's `Upload-Limit`: the largest upload.
fn upload_limit(services: &Services) -> String {
    format!("max-size={}", services.settings.limits.max_upload_bytes)
}

/// Headers saying where an upload stands after a request wrote to it.
fn appended_headers(res: &mut HttpResponseBuilder, done: &Appended, protocol: Protocol) {
    res.insert_header((UPLOAD_OFFSET, done.offset.to_string()));
    if let Some(expires) = done.expires_at_ms {
        res.insert_header((UPLOAD_EXPIRES, http_date(expires)));
    }
    if protocol == Protocol::Ietf {
        let complete = if done.completed.is_some() { "?1" } else { "?0" };
        res.insert_header((UPLOAD_COMPLETE, complete));
    }
    if let Some(completed) = &done.completed {
        if let Some(job) = completed.job {
            res.insert_header((JOB_LOCATION, format!("/v1/jobs/{job}")));
        }
        if let Some(problem) = &completed.job_problem {
            res.insert_header((JOB_PROBLEM, problem.code.as_str()));
        }
    }
}

/// The request's bytes at `offset`, and the answer (`status`, the headers of where it stands).
#[allow(clippy::too_many_arguments)]
async fn append(
    services: &Services,
    caller: &Caller,
    req: &HttpRequest,
    protocol: Protocol,
    id: UploadId,
    offset: u64,
    mut length: Option<u64>,
    body: web::Payload,
    status: StatusCode,
) -> Result<HttpResponse, ApiError> {
    let headers = req.headers();
    let declared = number(headers, &header::CONTENT_LENGTH)?;
    // The draft: `Upload-Complete: ?1` says this request's body ends the upload.
    let completes = protocol == Protocol::Ietf && required_upload_complete(headers)?;
    if completes && length.is_none() {
        length = declared.map(|d| offset + d);
    }
    let append = Append {
        offset,
        length,
        declared,
        checksum: checksum(headers)?,
        client: req.peer_addr().map(|addr| addr.ip()),
        complete_at_end: completes,
    };
    let done = services
        .append_resumable(&caller.tenant, id, append, body)
        .await?;
    let mut res = HttpResponse::build(status);
    appended_headers(&mut res, &done, protocol);
    if protocol == Protocol::Ietf {
        res.insert_header((UPLOAD_LIMIT, upload_limit(services)));
    }
    Ok(res.finish())
}

/// `OPTIONS /v1/tus`: what this server's tus speaks.
pub async fn options(services: web::Data<Services>) -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((TUS_RESUMABLE, VERSION))
        .insert_header(("Tus-Version", VERSION))
        .insert_header(("Tus-Extension", EXTENSIONS))
        .insert_header((
            "Tus-Max-Size",
            services.settings.limits.max_upload_bytes.to_string(),
        ))
        .insert_header(("Tus-Checksum-Algorithm", ChecksumAlgorithm::NAMES))
        .insert_header((UPLOAD_LIMIT, upload_limit(&services)))
        .finish()
}

/// `POST /v1/tus`: creates an upload, with its first bytes if the body carries some.
pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    let protocol = protocol(&req).ok();
    let created = async {
        let protocol = self::protocol(&req)?;
        let new = new_upload(&req, protocol)?;
        if let Concat::Final(parts) = headers::concat(req.headers())? {
            return join(&services, &caller, &req, parts, new).await;
        }
        let length = new.length;
        let declared = number(req.headers(), &header::CONTENT_LENGTH)?;
        let has_body = declared.is_some_and(|d| d > 0)
            || (declared.is_none() && req.headers().contains_key(header::TRANSFER_ENCODING));
        let typed = bytes_media_type(&req, protocol)?;
        if protocol == Protocol::Tus && has_body && !typed {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "upload bytes are sent as Content-Type: {}",
                    headers::OFFSET_OCTET_STREAM
                ),
            ));
        }
        // Draft 03 sends its first bytes without a media type.
        let with_bytes = typed || (protocol == Protocol::Ietf && has_body);
        let row = services.create_resumable(&caller.tenant, new).await?;
        let id = UploadId(row.id);
        let location = format!("/v1/tus/{id}");
        let located = |mut res: HttpResponse| {
            let value = HeaderValue::from_str(&location).expect("an id is a header value");
            res.headers_mut().insert(header::LOCATION, value);
            res
        };
        if !with_bytes {
            let mut res = HttpResponse::Created();
            res.insert_header((UPLOAD_OFFSET, "0"))
                .insert_header((UPLOAD_EXPIRES, http_date(row.expires_at_ms)));
            if protocol == Protocol::Ietf {
                res.insert_header((UPLOAD_COMPLETE, "?0"))
                    .insert_header((UPLOAD_LIMIT, upload_limit(&services)));
            }
            return Ok(located(res.finish()));
        }
        // creation-with-upload: the upload exists now, whatever happens to its first bytes; the
        // client learns where it is and resumes from HEAD's offset.
        let appended = append(
            &services,
            &caller,
            &req,
            protocol,
            id,
            0,
            length,
            body,
            StatusCode::CREATED,
        )
        .await;
        Ok(located(
            appended.unwrap_or_else(|err| refused(err, Some(protocol))),
        ))
    }
    .await;
    created.map_or_else(|err| refused(err, protocol), |res| answer(res, protocol))
}

/// `POST /v1/tus` with `Upload-Concat: final;…`: the upload that joins the parts, complete at
/// once (its parts are).
async fn join(
    services: &Services,
    caller: &Caller,
    req: &HttpRequest,
    parts: Vec<UploadId>,
    new: crate::service::resumable::NewResumable,
) -> Result<HttpResponse, ApiError> {
    if number(req.headers(), &header::CONTENT_LENGTH)?.is_some_and(|n| n > 0) {
        return Err(invalid_header(
            "a final upload carries no bytes: they are its parts'",
        ));
    }
    let joined = services.concatenate(&caller.tenant, parts, new).await?;
    let id = UploadId(joined.upload.id);
    let mut res = HttpResponse::Created();
    res.insert_header((header::LOCATION, format!("/v1/tus/{id}")))
        .insert_header((UPLOAD_OFFSET, joined.upload.size.to_string()))
        .insert_header((UPLOAD_LENGTH, joined.upload.size.to_string()));
    if let Some(job) = joined.job {
        res.insert_header((JOB_LOCATION, format!("/v1/jobs/{job}")));
    }
    if let Some(problem) = &joined.job_problem {
        res.insert_header((JOB_PROBLEM, problem.code.as_str()));
    }
    Ok(res.finish())
}

/// `HEAD /v1/tus/{id}`: the offset to resume from (and the rest of what the client said).
pub async fn head(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let protocol = protocol(&req).ok();
    let answered = async {
        let (id, protocol) = addressed(&req, &id)?;
        let mut res = HttpResponse::Ok();
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        let complete = match services.resumable_status(&caller.tenant, id).await? {
            ResumableStatus::InProgress(row) => {
                res.insert_header((UPLOAD_OFFSET, row.upload_offset.to_string()));
                match row.length {
                    Some(length) => res.insert_header((UPLOAD_LENGTH, length.to_string())),
                    None => res.insert_header((UPLOAD_DEFER_LENGTH, "1")),
                };
                if let Some(metadata) = &row.metadata {
                    res.insert_header((UPLOAD_METADATA, metadata.as_str()));
                }
                if row.partial {
                    res.insert_header((headers::UPLOAD_CONCAT, "partial"));
                }
                res.insert_header((UPLOAD_EXPIRES, http_date(row.expires_at_ms)));
                false
            }
            ResumableStatus::Complete(upload, first_job) => {
                res.insert_header((UPLOAD_OFFSET, upload.size.to_string()));
                res.insert_header((UPLOAD_LENGTH, upload.size.to_string()));
                if let Some(job) = first_job {
                    res.insert_header((JOB_LOCATION, format!("/v1/jobs/{}", JobId(job))));
                }
                true
            }
        };
        if protocol == Protocol::Ietf {
            res.insert_header((UPLOAD_COMPLETE, if complete { "?1" } else { "?0" }))
                .insert_header((UPLOAD_LIMIT, upload_limit(&services)));
        }
        Ok::<_, ApiError>(res.finish())
    }
    .await;
    answered.map_or_else(
        |err| answer(err.error_response(), protocol),
        |res| answer(res, protocol),
    )
}

/// `PATCH /v1/tus/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    let protocol = protocol(&req).ok();
    let answered = async {
        let (id, protocol) = addressed(&req, &id)?;
        // tus requires its media type on every PATCH; draft 03 sends none.
        let typed = bytes_media_type(&req, protocol)?;
        if protocol == Protocol::Tus && !typed {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "a PATCH carries its bytes as Content-Type: {}",
                    headers::OFFSET_OCTET_STREAM
                ),
            ));
        }
        let offset = number(req.headers(), &UPLOAD_OFFSET)?
            .ok_or_else(|| invalid_header("Upload-Offset is missing: HEAD the upload for it"))?;
        let length = number(req.headers(), &UPLOAD_LENGTH)?;
        append(
            &services,
            &caller,
            &req,
            protocol,
            id,
            offset,
            length,
            body,
            StatusCode::NO_CONTENT,
        )
        .await
    }
    .await;
    answered.map_or_else(|err| refused(err, protocol), |res| answer(res, protocol))
}

/// `DELETE /v1/tus/{id}`: ends an upload and deletes its bytes (tus termination).
pub async fn delete(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let protocol = protocol(&req).ok();
    let answered = async {
        let (id, _) = addressed(&req, &id)?;
        services.terminate_resumable(&caller.tenant, id).await?;
        Ok::<_, ApiError>(HttpResponse::NoContent().finish())
    }
    .await;
    answered.map_or_else(
        |err| answer(err.error_response(), protocol),
        |res| answer(res, protocol),
    )
}
