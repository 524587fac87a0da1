//! `POST /v1/jobs/{id}/rerun` and `POST /v1/jobs/rerun` (bulk): see `service::reruns`.

use actix_web::{HttpRequest, HttpResponse, http::header, web};

use super::{
    jobs::{
        NoQuery, has_json_body, idempotency_key, json_request, parse_job_id, submitted_response,
    },
    problem::ApiError,
    uploads::closing,
    wire::{BulkRerunIn, JobOut, RerunBatchOut, RerunIn},
};
use crate::{
    domain::JobStatus,
    service::{
        ServiceError, Services,
        jobs::JobFilter,
        reruns::{BulkRerun, DEFAULT_BULK, RerunChanges, RerunFilter},
    },
    tenancy::Caller,
    time::parse_rfc3339,
};

/// Jobs of a bulk re-run shown in its answer; the rest are a `next` page of
/// `GET /v1/jobs?rerun_batch=`.
const FIRST_PAGE: u64 = 50;

/// Whether the request has a body at all (a re-run without one changes nothing).
fn has_body(req: &HttpRequest) -> bool {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    req.headers().contains_key(header::TRANSFER_ENCODING) || length.is_some_and(|n| n > 0)
}

pub async fn rerun(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
    _query: web::Query<NoQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let submitted = async {
        let id = parse_job_id(&id)?;
        let key = idempotency_key(&req)?;
        let changes = if has_body(&req) || has_json_body(&req) {
            let rerun_in: RerunIn = json_request(
                &services,
                &req,
                body,
                "the re-run request",
                "send the changes as application/json ({\"version\": \"v4\"}), or no body",
            )
            .await?;
            RerunChanges {
                version: rerun_in.version,
                params: rerun_in.params,
                priority: rerun_in.priority,
            }
        } else {
            RerunChanges::default()
        };
        Ok::<_, ApiError>(services.rerun_job(&caller.tenant, id, changes, key).await?)
    }
    .await;
    Ok(submitted.map_or_else(closing, submitted_response))
}

pub async fn bulk(
    services: web::Data<Services>,
    caller: Caller,
    req: HttpRequest,
    _query: web::Query<NoQuery>,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let answered = async {
        let key = idempotency_key(&req)?;
        let bulk_in: BulkRerunIn = json_request(
            &services,
            &req,
            body,
            "the bulk re-run request",
            "send the filter as application/json: {\"status\": \"failed\", \"kind\": \"segment\"}",
        )
        .await?;
        let request = bulk_request(bulk_in)?;
        let made = services.bulk_rerun(&caller.tenant, request, key).await?;
        let batch = &made.batch;
        let (views, more) = services
            .list_jobs(
                &caller.tenant,
                JobFilter {
                    rerun_batch: Some(batch.id),
                    limit: FIRST_PAGE,
                    ..JobFilter::default()
                },
            )
            .await?;
        let out = RerunBatchOut::of(
            batch,
            views.iter().map(JobOut::from).collect(),
            more.then(|| {
                views
                    .last()
                    .map(|v| crate::ids::JobId(v.job.id).to_string())
            })
            .flatten(),
        );
        let mut res = HttpResponse::Accepted();
        res.insert_header((header::LOCATION, out.links.jobs.clone()));
        if made.replayed {
            res.insert_header(("idempotent-replayed", "true"));
        }
        Ok::<_, ApiError>(res.json(out))
    }
    .await;
    Ok(answered.unwrap_or_else(closing))
}

/// The service's request from the wire's, with its fields checked.
fn bulk_request(bulk_in: BulkRerunIn) -> Result<BulkRerun, ServiceError> {
    let time = |field: &str, text: &Option<String>| -> Result<Option<i64>, ServiceError> {
        text.as_deref()
            .map(|t| {
                parse_rfc3339(t).ok_or_else(|| {
                    ServiceError::invalid(
                        field,
                        format!("{field} must be an RFC 3339 time such as 2026-11-29T10:00:00Z"),
                    )
                })
            })
            .transpose()
    };
    let status = bulk_in
        .status
        .as_deref()
        .map(|s| {
            JobStatus::parse(s).ok_or_else(|| {
                ServiceError::invalid(
                    "status",
                    format!(
                        "status must be one of queued, running, succeeded, failed, canceled; \
                         got {s:?}"
                    ),
                )
            })
        })
        .transpose()?;
    Ok(BulkRerun {
        filter: RerunFilter {
            status,
            kind: bulk_in.kind,
            version: bulk_in.version,
            error_code: bulk_in.error_code,
            created_after_ms: time("created_after", &bulk_in.created_after)?,
            created_before_ms: time("created_before", &bulk_in.created_before)?,
            include_rerun: bulk_in.include_rerun.unwrap_or(false),
        },
        version: bulk_in.rerun_version,
        priority: bulk_in.priority,
        limit: bulk_in.limit.unwrap_or(DEFAULT_BULK),
    })
}
