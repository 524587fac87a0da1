//! `/v1/jobs`: create (JSON; or the raw file to `/v1/kinds/{kind}/jobs`, for curl users),
//! read, list, cancel, delete, and the job's handler logs (its event log: [`super::events`]).

use std::time::Duration;

use actix_web::{
    HttpRequest, HttpResponse,
    http::StatusCode,
    http::header::{self, ETag, IfNoneMatch},
    web,
};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    conditional::{etag_of, not_modified, typed, wait_preference},
    paging::{Page, invalid_query, next_cursor},
    problem::ApiError,
    uploads::{closing, upload_meta},
    wire::{JobIn, JobList, JobOut, LogLineOut, LogList, TimeoutIn},
};
use crate::{
    domain::JobStatus,
    error_code::ErrorCode,
    ids::{JobId, RerunBatchId, UploadId},
    service::{
        ServiceError, Services, body_timeout_detail,
        jobs::{
            DEFAULT_INPUT_NAME, Idempotency, IdempotencyKey, JobFilter, JobRequest, JobView,
            JobWebhookRequest, Submitted,
        },
        pacing::{Pace, Stalled, paced_body},
    },
    tenancy::{Caller, Tenant},
    time::parse_rfc3339,
};

/// Clients should poll about this often while a job is unfinished.
const POLL_AFTER_SECS: &str = "2";

pub(crate) fn parse_job_id(text: &str) -> Result<JobId, ApiError> {
    JobId::parse(text).ok_or_else(|| {
        ApiError::new(
            ErrorCode::JobNotFound,
            format!("{text:?} is not a job id (job_…)"),
        )
    })
}

fn job_response(status: StatusCode, view: &JobView) -> HttpResponse {
    let out = JobOut::from(view);
    let mut res = HttpResponse::build(status);
    if !view.job.status.is_finished() {
        res.insert_header((header::RETRY_AFTER, POLL_AFTER_SECS));
    }
    if status == StatusCode::ACCEPTED {
        res.insert_header((header::LOCATION, out.links.self_.clone()));
    }
    res.json(out)
}

pub(crate) fn submitted_response(submitted: Submitted) -> HttpResponse {
    match submitted {
        Submitted::Created(view) => job_response(StatusCode::ACCEPTED, &view),
        Submitted::Replayed(view) => {
            let mut res = job_response(StatusCode::ACCEPTED, &view);
            res.headers_mut().insert(
                header::HeaderName::from_static("idempotent-replayed"),
                header::HeaderValue::from_static("true"),
            );
            res
        }
    }
}

/// Query parameters of the one-request form: `POST /v1/kinds/{kind}/jobs` + raw body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileJobQuery {
    pub input: Option<String>,
    /// The handler's parameters: a JSON object, URL-encoded. Not called `params`, which
    /// generated clients use for their own variables.
    pub params_json: Option<String>,
    pub priority: Option<i32>,
    pub timeout: Option<String>,
    pub max_attempts: Option<u32>,
    /// The job's own webhook (its secret is generated and shown in the answer).
    pub webhook_url: Option<String>,
    /// Comma-separated event types for `webhook_url`; default: all.
    pub webhook_events: Option<String>,
}

/// Names a field of the one-request form as its query parameter: the handler's parameters
/// arrive as `params_json`, the webhook's as `webhook_url` and `webhook_events`.
fn query_fields(mut e: ServiceError) -> ServiceError {
    e.field = e.field.map(|field| match field.as_str() {
        "params" => "params_json".to_owned(),
        "webhook.url" => "webhook_url".to_owned(),
        "webhook.events" => "webhook_events".to_owned(),
        _ => field,
    });
    e
}

/// The one-request form's webhook: `webhook_url` and `webhook_events` (comma-separated).
fn file_job_webhook(query: &FileJobQuery) -> Result<Option<JobWebhookRequest>, ApiError> {
    match (&query.webhook_url, &query.webhook_events) {
        (None, None) => Ok(None),
        (None, Some(_)) => Err(invalid_field(
            "webhook_events",
            "webhook_events needs webhook_url".into(),
        )),
        (Some(url), events) => Ok(Some(JobWebhookRequest {
            url: url.clone(),
            events: events.as_ref().map(|list| {
                list.split(',')
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect()
            }),
            secret: None,
        })),
    }
}

/// The JSON form takes no query parameters: any is `400 invalid_query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

pub(crate) fn idempotency_key(req: &HttpRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be ASCII",
        )
    })?;
    Ok(Some(IdempotencyKey::parse(text.trim_matches('"'))?))
}

fn invalid_field(field: &str, msg: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidField, msg.clone()).with_field(field, msg)
}

/// `POST /v1/jobs`: a JSON job request naming uploaded inputs.
pub async fn create(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    _query: web::Query<NoQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let submitted = create_from_json(&services, &caller.tenant, &req, body).await;
    // The body may be left unread by an error.
    Ok(submitted.map_or_else(closing, submitted_response))
}

/// `POST /v1/kinds/{kind}/jobs`: the one-request form, the raw input file as the body.
pub async fn create_with_file(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    kind: web::Path<String>,
    query: web::Query<FileJobQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (kind, query) = (kind.into_inner(), query.into_inner());
    let submitted = create_from_file(&services, &caller.tenant, &req, kind, query, body).await;
    Ok(submitted.map_or_else(closing, submitted_response))
}

/// Whether the request says its body is JSON (`application/json` or any `+json` type).
pub(crate) fn has_json_body(req: &HttpRequest) -> bool {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || mime.ends_with("+json")
}

/// Reads a JSON job request, paced like any body and capped at `limits.max_json_bytes`.
async fn read_json_body(services: &Services, body: web::Payload) -> Result<Vec<u8>, ApiError> {
    let limit = services.settings.limits.max_json_bytes;
    let mut body = std::pin::pin!(paced_body(body, Pace::of(&services.settings.limits)));
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| match e.downcast_ref::<Stalled>() {
            Some(stalled) => ApiError::new(ErrorCode::BodyTimeout, body_timeout_detail(stalled)),
            None => ApiError::new(
                ErrorCode::BodyIncomplete,
                format!("cannot read the body: {e}"),
            ),
        })?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "a JSON request body is limited to {limit} bytes; upload files via /v1/uploads"
                ),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads and parses a JSON request body (`what` names it in errors; `media_hint` is the advice
/// for a body that is not JSON).
pub(crate) async fn json_request<T: serde::de::DeserializeOwned>(
    services: &Services,
    req: &HttpRequest,
    body: web::Payload,
    what: &str,
    media_hint: &str,
) -> Result<T, ApiError> {
    if !has_json_body(req) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, media_hint));
    }
    let bytes = read_json_body(services, body).await?;
    let value = serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidBody,
            format!("{what} does not match the expected shape: {e}"),
        )
    })
}

async fn create_from_json(
    services: &Services,
    tenant: &Tenant,
    req: &HttpRequest,
    body: web::Payload,
) -> Result<Submitted, ApiError> {
    let key = idempotency_key(req)?;
    let job_in: JobIn = json_request(
        services,
        req,
        body,
        "the job request",
        "send the job as application/json, or send the raw file to POST /v1/kinds/{kind}/jobs",
    )
    .await?;
    let timeout = match &job_in.timeout {
        None => None,
        Some(t) => Some(
            t.to_duration()
                .map_err(|msg| invalid_field("timeout", msg))?,
        ),
    };
    let spec = services
        .job_spec(JobRequest {
            kind: job_in.kind,
            params: job_in.params.unwrap_or_default(),
            priority: job_in.priority,
            timeout,
            max_attempts: job_in.max_attempts,
            webhook: job_in.webhook.map(|w| JobWebhookRequest {
                url: w.url,
                events: w.events,
                secret: w.secret,
            }),
        })
        .await?;
    let idempotency = key.map(|key| {
        let inputs = serde_json::to_string(&job_in.inputs).unwrap_or_default();
        Idempotency::new(key, &["json", &spec.canonical(), &inputs])
    });
    Ok(services
        .submit_job(tenant, spec, job_in.inputs, idempotency)
        .await?)
}

/// The one-request form. The whole request — kind, limits, input name, params, idempotency —
/// is checked before one byte of the (possibly multi-GiB) body is read.
async fn create_from_file(
    services: &Services,
    tenant: &Tenant,
    req: &HttpRequest,
    kind: String,
    query: FileJobQuery,
    body: web::Payload,
) -> Result<Submitted, ApiError> {
    let key = idempotency_key(req)?;
    // A JSON body is a job request (`JobIn`), never a file: storing it as the input would hide
    // the client's mistake until the handler chokes on it.
    if has_json_body(req) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a JSON body is a job request: send it to POST /v1/jobs; to make a JSON file the \
             input of a one-request job, send it as application/octet-stream",
        ));
    }
    let webhook = file_job_webhook(&query)?;
    let params = match &query.params_json {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "params_json must be a URL-encoded JSON object",
                )
                .with_field("params_json", "not a JSON object"));
            }
        },
    };
    let timeout = match query.timeout {
        None => None,
        Some(t) => {
            let parsed = match t.parse::<u64>() {
                Ok(secs) => TimeoutIn::Seconds(secs),
                Err(_) => TimeoutIn::Text(t),
            };
            Some(
                parsed
                    .to_duration()
                    .map_err(|msg| invalid_field("timeout", msg))?,
            )
        }
    };
    let spec = services
        .job_spec(JobRequest {
            kind,
            params,
            priority: query.priority,
            timeout,
            max_attempts: query.max_attempts,
            webhook,
        })
        .await
        .map_err(query_fields)?;
    let input = query.input.unwrap_or_else(|| DEFAULT_INPUT_NAME.to_owned());
    crate::domain::validate_input_name(&input)
        .map_err(|msg| invalid_field("input", format!("input name {msg}")))?;
    let meta = upload_meta(req)?;
    let idempotency = key.map(|key| {
        let length = format!("{:?}", meta.declared_length);
        let digest = meta.expected_sha256.map(hex::encode).unwrap_or_default();
        Idempotency::new(key, &["file", &spec.canonical(), &input, &length, &digest])
    });
    Ok(services
        .submit_job_with_body(tenant, spec, input, body, meta, idempotency)
        .await
        .map_err(query_fields)?)
}

/// The job (`GET`, `HEAD`), with an `ETag`; `304` when `If-None-Match` holds it. With
/// `Prefer: wait=N`, an unchanged job is answered only once it changes or `N` seconds passed.
/// No database connection is held while waiting: the job is read again on every wake-up.
pub async fn get(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = parse_job_id(&id)?;
    let if_none_match = typed::<IfNoneMatch>(&req);
    let wait = wait_preference(&req);
    // Subscribed before the first read, so a change right after it is heard.
    let mut changes = wait.map(|_| services.db.changes().subscribe());
    let deadline = Instant::now() + Duration::from_secs(wait.unwrap_or(0));
    loop {
        let view = services.poll_job(&caller.tenant, id).await?;
        let body = serde_json::to_vec(&JobOut::from(&view))
            .map_err(|e| ApiError::from(ServiceError::internal("serializing a job", e)))?;
        let etag = etag_of(&body);
        let unchanged = not_modified(&if_none_match, &etag);
        if unchanged
            && Instant::now() < deadline
            && let Some(changes) = changes.as_mut()
        {
            changes.changed(id.0, deadline).await;
            continue;
        }
        let mut res = if unchanged {
            HttpResponse::NotModified()
        } else {
            HttpResponse::Ok()
        };
        res.insert_header(ETag(etag));
        if let Some(wait) = wait {
            res.insert_header(("preference-applied", format!("wait={wait}")));
        }
        if !view.job.status.is_finished() {
            res.insert_header((header::RETRY_AFTER, POLL_AFTER_SECS));
        }
        return Ok(if unchanged {
            res.finish()
        } else {
            res.content_type(mime::APPLICATION_JSON).body(body)
        });
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub status: Option<String>,
    pub kind: Option<String>,
    pub version: Option<String>,
    pub upload: Option<String>,
    pub rerun_of: Option<String>,
    pub rerun_batch: Option<String>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    pub limit: Option<u64>,
    pub next: Option<String>,
}

pub async fn list(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let status = match &q.status {
        None => None,
        Some(s) => Some(JobStatus::parse(s).ok_or_else(|| {
            invalid_query(
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
                invalid_query(
                    field,
                    format!("{field} must be an RFC 3339 time such as 2026-11-29T10:00:00Z"),
                )
            }),
        }
    };
    let page = Page::parse(q.limit, q.next.as_deref(), |c| {
        JobId::parse(c).map(|id| id.0)
    })?;
    let filter = JobFilter {
        status,
        kind: q.kind.clone(),
        upload: q
            .upload
            .as_deref()
            .map(|text| {
                UploadId::parse(text).map(|id| id.0).ok_or_else(|| {
                    invalid_query("upload", format!("{text:?} is not an upload id (upl_…)"))
                })
            })
            .transpose()?,
        version: q.version.clone(),
        rerun_of: q
            .rerun_of
            .as_deref()
            .map(|text| {
                JobId::parse(text)
                    .map(|id| id.0)
                    .ok_or_else(|| invalid_query("rerun_of", format!("{text:?} is not a job id")))
            })
            .transpose()?,
        rerun_batch: q
            .rerun_batch
            .as_deref()
            .map(|text| {
                RerunBatchId::parse(text).map(|id| id.0).ok_or_else(|| {
                    invalid_query("rerun_batch", format!("{text:?} is not a bulk re-run id"))
                })
            })
            .transpose()?,
        created_after_ms: time("created_after", &q.created_after)?,
        created_before_ms: time("created_before", &q.created_before)?,
        before_id: page.after,
        limit: page.limit,
    };
    let (views, more) = services.list_jobs(&caller.tenant, filter).await?;
    let next = next_cursor(&views, more, |v| JobId(v.job.id).to_string());
    Ok(HttpResponse::Ok().json(JobList {
        items: views.iter().map(JobOut::from).collect(),
        next,
    }))
}

pub async fn cancel(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = services
        .cancel_job(&caller.tenant, parse_job_id(&id)?)
        .await?;
    let status = if view.job.status == JobStatus::Canceled {
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
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    services
        .delete_job(&caller.tenant, parse_job_id(&id)?)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    pub tail: Option<u64>,
}

pub async fn logs(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let tail = query.tail.unwrap_or(100);
    if !(1..=1000).contains(&tail) {
        return Err(
            ApiError::new(ErrorCode::InvalidQuery, "tail must be between 1 and 1000")
                .with_field("tail", "out of range"),
        );
    }
    let lines = services
        .job_logs(&caller.tenant, parse_job_id(&id)?, tail)
        .await?;
    Ok(HttpResponse::Ok().json(LogList {
        items: lines.iter().map(LogLineOut::from).collect(),
    }))
}
