//! `/v1/tus`: resumable uploads in the tus 1.0 protocol (core, creation, creation-with-upload,
//! creation-defer-length, expiration, checksum, termination), for the clients that already
//! speak it (tus-js-client, Uppy, tuspy, TUSKit, tus-java-client…). This module only translates
//! tus headers to and from [`crate::service::resumable`]; errors are problems like everywhere
//! else, with the tus status codes (`409`, `412`, `423`, `460`).
//!
//! A finished tus upload is an ordinary upload with the same id (`/v1/uploads/{id}`). Metadata
//! `ferry-kind` (with `ferry-params`, a JSON object, and `ferry-input`, the input's name) makes
//! the completing request create that job; its URL comes back in `Ferry-Job-Location`.

use actix_web::{
    HttpRequest, HttpResponse, ResponseError,
    http::header::{self, HeaderMap, HeaderName, HeaderValue},
    web,
};
use base64::Engine as _;

use super::{
    problem::ApiError,
    uploads::{closing, parse_upload_id},
};
use crate::{
    error_code::ErrorCode,
    ids::UploadId,
    service::{
        ServiceError, Services,
        jobs::DEFAULT_INPUT_NAME,
        resumable::{
            Append, Checksum, ChecksumAlgorithm, JobOnCompletion, NewResumable, ResumableStatus,
        },
    },
    tenancy::Caller,
};

/// The one protocol version served.
pub const VERSION: &str = "1.0.0";
/// The tus extensions served (`Tus-Extension`).
pub const EXTENSIONS: &str =
    "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination";
/// The media type of a body that carries upload bytes.
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const JOB_LOCATION: HeaderName = HeaderName::from_static("ferry-job-location");
const JOB_PROBLEM: HeaderName = HeaderName::from_static("ferry-job-problem");

/// Every tus answer, errors included, says which protocol version it speaks.
fn tus(mut res: HttpResponse) -> HttpResponse {
    res.headers_mut()
        .insert(TUS_RESUMABLE, HeaderValue::from_static(VERSION));
    res
}

/// An error answer to a request that may carry a body (see [`closing`]).
fn refused(err: ApiError) -> HttpResponse {
    tus(closing(err))
}

fn invalid_header(detail: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidUploadHeader, detail)
}

/// `412` unless the client speaks this server's tus version.
fn check_version(req: &HttpRequest) -> Result<(), ApiError> {
    let said = req.headers().get(&TUS_RESUMABLE).map(HeaderValue::as_bytes);
    if said == Some(VERSION.as_bytes()) {
        return Ok(());
    }
    let detail = match said {
        None => "Tus-Resumable is missing: this is the tus endpoint; send Tus-Resumable: 1.0.0"
            .to_owned(),
        Some(v) => format!(
            "Tus-Resumable {:?} is not served; this server speaks tus {VERSION}",
            String::from_utf8_lossy(v)
        ),
    };
    Err(ApiError::new(ErrorCode::UnsupportedTusVersion, detail))
}

/// The upload a request's path names, once its tus version is checked. A path that names no
/// upload is not found, whatever the version.
fn addressed(req: &HttpRequest, id: &str) -> Result<UploadId, ApiError> {
    let id = parse_upload_id(id)?;
    check_version(req)?;
    Ok(id)
}

/// A header holding a non-negative integer, if present.
fn number(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| invalid_header(format!("{name} must be a non-negative integer")))
        })
        .transpose()
}

/// Metadata pairs of `Upload-Metadata`: `key base64value` separated by commas, the value
/// optional. Values are kept as text (lossily; only Ferry's own keys are interpreted).
fn parse_metadata(text: &str) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let mut pairs: Vec<(String, Option<String>)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let mut parts = item.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        let value = parts.next();
        if parts.next().is_some() || key.is_empty() || !key.is_ascii() {
            return Err(invalid_header(format!(
                "Upload-Metadata item {item:?} is not `key base64value`"
            )));
        }
        if pairs.iter().any(|(k, _)| k == key) {
            return Err(invalid_header(format!(
                "Upload-Metadata names {key:?} twice"
            )));
        }
        let value = value
            .map(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .map_err(|_| {
                        invalid_header(format!("Upload-Metadata value of {key:?} is not base64"))
                    })
            })
            .transpose()?;
        pairs.push((key.to_owned(), value));
    }
    Ok(pairs)
}

/// What a creation request says about the upload to come.
fn new_upload(req: &HttpRequest) -> Result<NewResumable, ApiError> {
    let headers = req.headers();
    let length = number(headers, &UPLOAD_LENGTH)?;
    let deferred = match headers.get(&UPLOAD_DEFER_LENGTH) {
        None => false,
        Some(v) if v.as_bytes() == b"1" => true,
        Some(_) => return Err(invalid_header("Upload-Defer-Length must be 1")),
    };
    if length.is_some() == deferred {
        return Err(invalid_header(
            "send either Upload-Length (the upload's size in bytes) or Upload-Defer-Length: 1",
        ));
    }
    let raw = headers
        .get(&UPLOAD_METADATA)
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| invalid_header("Upload-Metadata must be ASCII"))
        })
        .transpose()?;
    let pairs = raw
        .as_deref()
        .map(parse_metadata)
        .transpose()?
        .unwrap_or_default();
    let value = |names: &[&str]| {
        names.iter().find_map(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.clone())
        })
    };
    let job = match value(&["ferry-kind"]) {
        None => None,
        Some(kind) => {
            let params = match value(&["ferry-params"]) {
                None => serde_json::Map::new(),
                Some(json) => match serde_json::from_str(&json) {
                    Ok(serde_json::Value::Object(map)) => map,
                    _ => {
                        return Err(ApiError::from(ServiceError::invalid(
                            "ferry-params",
                            "metadata ferry-params must be a JSON object",
                        )));
                    }
                },
            };
            let input = value(&["ferry-input"]).unwrap_or_else(|| DEFAULT_INPUT_NAME.to_owned());
            Some(JobOnCompletion {
                kind,
                params,
                input,
            })
        }
    };
    Ok(NewResumable {
        length,
        filename: value(&["filename", "name"]),
        content_type: value(&["filetype", "type", "contentType", "content-type"]),
        metadata: raw,
        job,
    })
}

/// Whether a request carries upload bytes (and says so with tus' media type).
fn carries_bytes(req: &HttpRequest) -> Result<bool, ApiError> {
    let content_type = req.headers().get(header::CONTENT_TYPE);
    let length = number(req.headers(), &header::CONTENT_LENGTH).unwrap_or(None);
    match content_type {
        Some(v)
            if v.as_bytes()
                .eq_ignore_ascii_case(OFFSET_OCTET_STREAM.as_bytes()) =>
        {
            Ok(true)
        }
        None if length.unwrap_or(0) == 0 => Ok(false),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("upload bytes are sent as Content-Type: {OFFSET_OCTET_STREAM}"),
        )),
    }
}

fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(value) = headers.get(&UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| invalid_header("Upload-Checksum must be ASCII"))?;
    let (name, sum) = text
        .split_once(' ')
        .ok_or_else(|| invalid_header("Upload-Checksum is `algorithm base64digest`"))?;
    let algorithm = ChecksumAlgorithm::parse(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnsupportedChecksum,
            format!(
                "checksum algorithm {name:?} is not served; use one of {}",
                ChecksumAlgorithm::NAMES
            ),
        )
    })?;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(sum.trim())
        .map_err(|_| invalid_header("the digest in Upload-Checksum is not base64"))?;
    Ok(Some(Checksum {
        algorithm,
        expected,
    }))
}

/// An HTTP date (`Upload-Expires`).
fn http_date(ms: i64) -> HeaderValue {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    HeaderValue::from_str(&header::HttpDate::from(time).to_string()).expect("an HTTP date")
}

/// The request's bytes at `offset`, and the answer's headers.
async fn append(
    services: &Services,
    caller: &Caller,
    req: &HttpRequest,
    id: UploadId,
    offset: u64,
    length: Option<u64>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let headers = req.headers();
    let append = Append {
        offset,
        length,
        declared: number(headers, &header::CONTENT_LENGTH)?,
        checksum: checksum(headers)?,
        client: req.peer_addr().map(|addr| addr.ip()),
    };
    let done = services
        .append_resumable(&caller.tenant, id, append, body)
        .await?;
    let mut res = HttpResponse::NoContent();
    res.insert_header((UPLOAD_OFFSET, done.offset.to_string()));
    if let Some(expires) = done.expires_at_ms {
        res.insert_header((UPLOAD_EXPIRES, http_date(expires)));
    }
    if let Some(completed) = done.completed {
        if let Some(job) = completed.job {
            res.insert_header((JOB_LOCATION, format!("/v1/jobs/{job}")));
        }
        if let Some(problem) = completed.job_problem {
            res.insert_header((JOB_PROBLEM, problem.code.as_str()));
        }
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
        .finish()
}

/// `POST /v1/tus`: creates an upload, with its first bytes if the body carries some.
pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    let created = async {
        check_version(&req)?;
        let new = new_upload(&req)?;
        let length = new.length;
        let with_bytes = carries_bytes(&req)?;
        let row = services.create_resumable(&caller.tenant, new).await?;
        let id = UploadId(row.id);
        let location = format!("/v1/tus/{id}");
        if !with_bytes {
            return Ok(HttpResponse::Created()
                .insert_header((header::LOCATION, location))
                .insert_header((UPLOAD_OFFSET, "0"))
                .insert_header((UPLOAD_EXPIRES, http_date(row.expires_at_ms)))
                .finish());
        }
        // creation-with-upload: the upload exists now, whatever happens to its first bytes; the
        // client learns where it is and resumes from HEAD's offset.
        let mut res = match append(&services, &caller, &req, id, 0, length, body).await {
            Ok(res) => res,
            Err(err) => {
                let mut res = refused(err);
                if let Ok(value) = HeaderValue::from_str(&location) {
                    res.headers_mut().insert(header::LOCATION, value);
                }
                return Ok(res);
            }
        };
        *res.status_mut() = actix_web::http::StatusCode::CREATED;
        res.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&location).expect("an id is a header value"),
        );
        Ok(res)
    }
    .await;
    created.map_or_else(refused, tus)
}

/// `HEAD /v1/tus/{id}`: the offset to resume from (and the rest of what the client said).
pub async fn head(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let answer = async {
        let id = addressed(&req, &id)?;
        let mut res = HttpResponse::Ok();
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        match services.resumable_status(&caller.tenant, id).await? {
            ResumableStatus::InProgress(row) => {
                res.insert_header((UPLOAD_OFFSET, row.upload_offset.to_string()));
                match row.length {
                    Some(length) => res.insert_header((UPLOAD_LENGTH, length.to_string())),
                    None => res.insert_header((UPLOAD_DEFER_LENGTH, "1")),
                };
                if let Some(metadata) = &row.metadata {
                    res.insert_header((UPLOAD_METADATA, metadata.as_str()));
                }
                res.insert_header((UPLOAD_EXPIRES, http_date(row.expires_at_ms)));
            }
            ResumableStatus::Complete(upload) => {
                res.insert_header((UPLOAD_OFFSET, upload.size.to_string()));
                res.insert_header((UPLOAD_LENGTH, upload.size.to_string()));
                if let Some(job) = upload.job_id {
                    res.insert_header((
                        JOB_LOCATION,
                        format!("/v1/jobs/{}", crate::ids::JobId(job)),
                    ));
                }
            }
        }
        Ok::<_, ApiError>(res.finish())
    }
    .await;
    answer.map_or_else(|err| tus(err.error_response()), tus)
}

/// `PATCH /v1/tus/{id}`: appends the body at `Upload-Offset`.
pub async fn patch(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    let answer = async {
        let id = addressed(&req, &id)?;
        let content_type = req.headers().get(header::CONTENT_TYPE);
        let is_bytes = content_type.is_some_and(|v| {
            v.as_bytes()
                .eq_ignore_ascii_case(OFFSET_OCTET_STREAM.as_bytes())
        });
        if !is_bytes {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("a PATCH carries its bytes as Content-Type: {OFFSET_OCTET_STREAM}"),
            ));
        }
        let offset = number(req.headers(), &UPLOAD_OFFSET)?
            .ok_or_else(|| invalid_header("Upload-Offset is missing: HEAD the upload for it"))?;
        let length = number(req.headers(), &UPLOAD_LENGTH)?;
        append(&services, &caller, &req, id, offset, length, body).await
    }
    .await;
    answer.map_or_else(refused, tus)
}

/// `DELETE /v1/tus/{id}`: ends an upload and deletes its bytes (tus termination).
pub async fn delete(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let answer = async {
        let id = addressed(&req, &id)?;
        services.terminate_resumable(&caller.tenant, id).await?;
        Ok::<_, ApiError>(HttpResponse::NoContent().finish())
    }
    .await;
    answer.map_or_else(|err| tus(err.error_response()), tus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_pairs_are_decoded_and_checked() {
        let pairs = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .expect("valid metadata");
        assert_eq!(
            pairs,
            vec![
                (
                    "filename".to_owned(),
                    Some("world_domination_plan.pdf".to_owned())
                ),
                ("is_confidential".to_owned(), None),
            ]
        );
        assert!(parse_metadata("a !!!").is_err(), "not base64");
        assert!(parse_metadata("a YQ==,a YQ==").is_err(), "a key twice");
        assert!(parse_metadata("a YQ== b").is_err(), "three words");
        assert!(parse_metadata("").expect("empty").is_empty());
    }
}
