//! `/v1/jobs`: create (JSON, or raw file + query for curl users), read, list, cancel, delete,
//! and the job's event log and handler logs.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, http::header, web};
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{
    problem::ApiError,
    uploads::upload_meta,
    wire::{EventList, EventOut, JobIn, JobList, JobOut, LogLineOut, LogList, TimeoutIn},
};
use crate::{
    domain::JobStatus,
    ids::{JobId, UploadId},
    service::{
        Services,
        jobs::{JobFilter, JobView, NewJob, Reservation},
    },
    time::parse_rfc3339,
};

/// Clients should poll about this often while a job is unfinished.
const POLL_AFTER_SECS: &str = "2";

pub(crate) fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    JobId::parse(text).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "job_not_found",
            format!("{text:?} is not a job id (job_…)"),
        )
    })
}

fn job_response(status: StatusCode, view: &JobView) -> HttpResponse {
    let out = JobOut::from(view);
    let mut res = HttpResponse::build(status);
    if !JobStatus::parse(&out.status).is_some_and(JobStatus::is_finished) {
        res.insert_header((header::RETRY_AFTER, POLL_AFTER_SECS));
    }
    if status == StatusCode::ACCEPTED {
        res.insert_header((header::LOCATION, out.links.self_.clone()));
    }
    res.json(out)
}

/// Query parameters of the one-request form: `POST /v1/jobs?kind=K[&input=NAME]` + raw body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    pub kind: Option<String>,
    pub input: Option<String>,
    /// A JSON object, URL-encoded.
    pub params: Option<String>,
    pub priority: Option<i32>,
    pub timeout: Option<String>,
    pub max_attempts: Option<u32>,
}

fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|s| Some(s.trim_matches('"').to_owned()))
            .map_err(|_| {
                ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key must be ASCII")
            }),
    }
}

fn fingerprint(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Sorts object keys recursively so equal JSON documents fingerprint equally.
fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: std::collections::BTreeMap<_, _> =
                    m.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

pub async fn create(
    services: web::Data<Services>,
    req: HttpRequest,
    query: web::Query<CreateQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let created = async {
        let key = idempotency_key(&req)?;
        if query.kind.is_some() {
            return create_from_file(services, req, query, body, key).await;
        }
        if query.input.is_some()
            || query.params.is_some()
            || query.priority.is_some()
            || query.timeout.is_some()
            || query.max_attempts.is_some()
        {
            return Err(ApiError::bad_request(
                "invalid_query",
                "query parameters are only for the one-request form, which needs ?kind=…",
            ));
        }
        create_from_json(services, req, body, key).await
    }
    .await;
    // Either form carries a body that an error may leave unread.
    Ok(created.unwrap_or_else(super::uploads::closing))
}

async fn create_from_json(
    services: web::Data<Services>,
    req: HttpRequest,
    mut body: web::Payload,
    key: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !(mime.eq_ignore_ascii_case("application/json")
        || mime.to_ascii_lowercase().ends_with("+json"))
    {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the job as application/json, or the raw file with ?kind=… in the URL",
        ));
    }
    let limit = services.settings.limits.max_json_bytes;
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request("body_incomplete", format!("cannot read the body: {e}"))
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "a JSON job request is limited to {limit} bytes; upload files via /v1/uploads"
                ),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
    })?;
    let fp = fingerprint(&["json", &canonical_json(&value)]);
    let job_in: JobIn = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the job request does not match the expected shape: {e}"),
        )
    })?;
    let timeout = match &job_in.timeout {
        None => None,
        Some(t) => Some(t.to_duration().map_err(|msg| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                msg.clone(),
            )
            .with_field("timeout", msg)
        })?),
    };
    let new = NewJob {
        kind: job_in.kind,
        inputs: job_in.inputs,
        params: job_in.params.unwrap_or_default(),
        priority: job_in.priority,
        timeout,
        max_attempts: job_in.max_attempts,
    };
    with_idempotency(&services, key.as_deref(), &fp, || {
        services.create_job(new, key.as_deref())
    })
    .await
}

/// Runs `create` under an idempotency key: replays an earlier result, or reserves the key and
/// releases it again if `create` fails.
async fn with_idempotency<F, Fut>(
    services: &Services,
    key: Option<&str>,
    fp: &str,
    create: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<JobView, crate::service::ServiceError>>,
{
    if let Some(key) = key
        && let Reservation::Replay(view) = services.reserve_idempotency_key(key, fp).await?
    {
        let mut res = job_response(StatusCode::ACCEPTED, &view);
        res.headers_mut().insert(
            header::HeaderName::from_static("idempotent-replayed"),
            header::HeaderValue::from_static("true"),
        );
        return Ok(res);
    }
    match create().await {
        Ok(view) => Ok(job_response(StatusCode::ACCEPTED, &view)),
        Err(err) => {
            if let Some(key) = key {
                services.release_idempotency_key(key).await;
            }
            Err(err.into())
        }
    }
}

async fn create_from_file(
    services: web::Data<Services>,
    req: HttpRequest,
    query: CreateQuery,
    body: web::Payload,
    key: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let kind = query.kind.clone().unwrap_or_default();
    if !services.kinds.contains_key(&kind) {
        let known: Vec<&str> = services.kinds.keys().map(String::as_str).collect();
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_kind",
            format!(
                "no handler serves kind {kind:?}; known kinds: {}",
                known.join(", ")
            ),
        )
        .with_field("kind", "unknown kind"));
    }
    let input = query.input.clone().unwrap_or_else(|| "input".to_owned());
    crate::domain::validate_input_name(&input).map_err(|msg| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("input name {msg}"),
        )
        .with_field("input", msg)
    })?;
    let params = match &query.params {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    "params must be a URL-encoded JSON object",
                )
                .with_field("params", "not a JSON object"));
            }
        },
    };
    let timeout = match &query.timeout {
        None => None,
        Some(t) => {
            let parsed = match t.parse::<u64>() {
                Ok(secs) => TimeoutIn::Seconds(secs),
                Err(_) => TimeoutIn::Text(t.clone()),
            };
            Some(parsed.to_duration().map_err(|msg| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    msg.clone(),
                )
                .with_field("timeout", msg)
            })?)
        }
    };
    let meta = upload_meta(&req)?;
    let fp = fingerprint(&[
        "file",
        &kind,
        &input,
        &canonical_json(&serde_json::Value::Object(params.clone())),
        &format!(
            "{:?}/{:?}/{:?}",
            query.priority, timeout, query.max_attempts
        ),
        &format!("{:?}", meta.declared_length),
        &meta.expected_sha256.map(hex::encode).unwrap_or_default(),
    ]);
    let services_ref: &Services = &services;
    with_idempotency(services_ref, key.as_deref(), &fp, || async {
        let upload = services_ref.create_upload(body, meta).await?;
        let new = NewJob {
            kind,
            inputs: [(input, UploadId(upload.id).to_string())]
                .into_iter()
                .collect(),
            params,
            priority: query.priority,
            timeout,
            max_attempts: query.max_attempts,
        };
        match services_ref.create_job(new, key.as_deref()).await {
            Ok(view) => Ok(view),
            Err(err) => {
                let _ = services_ref.delete_upload(UploadId(upload.id)).await;
                Err(err)
            }
        }
    })
    .await
}

pub async fn get(
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = services.get_job(parse_job_id(&id)?).await?;
    Ok(job_response(StatusCode::OK, &view))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub limit: Option<u64>,
    pub next: Option<String>,
}

pub async fn list(
    services: web::Data<Services>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let invalid = |field: &str, msg: String| {
        ApiError::bad_request("invalid_query", msg.clone()).with_field(field, msg)
    };
    let status = match &q.status {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            invalid(
                "status",
                format!(
                    "status must be one of queued, running, succeeded, failed, canceled; got {s:?}"
                ),
            )
        })?),
    };
    let time = |field: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        match v {
            None => Ok(None),
            Some(t) => parse_rfc3339(t).map(Some).ok_or_else(|| {
                invalid(
                    field,
                    format!("{field} must be an RFC 3339 time such as 2026-11-29T10:00:00Z"),
                )
            }),
        }
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(invalid("limit", "limit must be between 1 and 200".into()));
    }
    let before_id = match &q.next {
        None => None,
        Some(cursor) => Some(
            JobId::parse(cursor)
                .ok_or_else(|| {
                    invalid(
                        "next",
                        "next must be the cursor returned by the previous page".into(),
                    )
                })?
                .0,
        ),
    };
    let filter = JobFilter {
        status,
        kind: q.kind.clone(),
        created_after_ms: time("created_after", &q.created_after)?,
        created_before_ms: time("created_before", &q.created_before)?,
        before_id,
        limit,
    };
    let (views, more) = services.list_jobs(filter).await?;
    let next = more
        .then(|| views.last().map(|v| JobId(v.job.id).to_string()))
        .flatten();
    Ok(HttpResponse::Ok().json(JobList {
        items: views.iter().map(JobOut::from).collect(),
        next,
    }))
}

pub async fn cancel(
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = services.cancel_job(parse_job_id(&id)?).await?;
    let status = if view.job.status == JobStatus::Canceled.as_str() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let mut res = job_response(status, &view);
    if status == StatusCode::ACCEPTED {
        // `job_response` adds Location for 202s, which is right here too: poll the job.
        res.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    Ok(res)
}

pub async fn delete(
    services: web::Data<Services>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    services.delete_job(parse_job_id(&id)?).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    pub after: Option<i64>,
    pub limit: Option<u64>,
}

pub async fn events(
    services: web::Data<Services>,
    id: web::Path<String>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(
            ApiError::bad_request("invalid_query", "limit must be between 1 and 1000")
                .with_field("limit", "out of range"),
        );
    }
    let events = services
        .job_events(parse_job_id(&id)?, query.after.unwrap_or(0), limit)
        .await?;
    Ok(HttpResponse::Ok().json(EventList {
        items: events.iter().map(EventOut::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    pub tail: Option<u64>,
}

pub async fn logs(
    services: web::Data<Services>,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let tail = query.tail.unwrap_or(100);
    if !(1..=1000).contains(&tail) {
        return Err(
            ApiError::bad_request("invalid_query", "tail must be between 1 and 1000")
                .with_field("tail", "out of range"),
        );
    }
    let lines = services.job_logs(parse_job_id(&id)?, tail).await?;
    Ok(HttpResponse::Ok().json(LogList {
        items: lines.iter().map(LogLineOut::from).collect(),
    }))
}
