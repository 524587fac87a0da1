//! Wire types: exactly what `openapi.yaml` describes. Built from rows, never stored; they
//! deserialize too, so tests and clients written in Rust can read the API's answers with them.

pub mod audit;
pub mod keys;
pub mod kinds;
pub mod webhooks;

use serde::{Deserialize, Serialize};

use crate::{
    domain::{EventKind, JobFailure, JobStatus},
    ids::{JobId, RerunBatchId, UploadId, WebhookId},
    service::{events::FeedEvent, jobs::JobView, lifecycle::PARKED},
    storage::entities::{job_event, job_log, result, upload},
    time::{now_ms, to_rfc3339},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadOut {
    pub id: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub job_count: i64,
    pub created_at: String,
    pub expires_at: Option<String>,
}

impl From<&upload::Model> for UploadOut {
    fn from(u: &upload::Model) -> Self {
        Self {
            id: UploadId(u.id).to_string(),
            size: u.size,
            sha256: u.sha256.clone(),
            content_type: u.content_type.clone(),
            filename: u.filename.clone(),
            job_count: u.job_count,
            created_at: to_rfc3339(u.created_at_ms),
            expires_at: u.expires_at_ms.map(to_rfc3339),
        }
    }
}

/// One page of uploads, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadList {
    pub items: Vec<UploadOut>,
    /// Pass as `next` to get the following page; null on the last page.
    pub next: Option<String>,
}

/// A job creation request (JSON form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobIn {
    pub kind: String,
    #[serde(default)]
    pub inputs: std::collections::BTreeMap<String, crate::service::inputs::InputRef>,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    pub priority: Option<i32>,
    /// Seconds, or a duration such as "90s" or "30m".
    pub timeout: Option<TimeoutIn>,
    pub max_attempts: Option<u32>,
    pub webhook: Option<JobWebhookIn>,
}

/// A job's own webhook, in its creation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobWebhookIn {
    pub url: String,
    /// Event types to send; absent or empty: all of them.
    pub events: Option<Vec<String>>,
    /// `whsec_…`; generated (and shown in the answer) when absent.
    pub secret: Option<String>,
}

/// A job's own webhook, in the answer to the request that created the job (only there: it
/// shows the secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobWebhookOut {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TimeoutIn {
    Seconds(u64),
    Text(String),
}

impl TimeoutIn {
    pub fn to_duration(&self) -> Result<std::time::Duration, String> {
        match self {
            TimeoutIn::Seconds(s) => Ok(std::time::Duration::from_secs(*s)),
            TimeoutIn::Text(t) => humantime::parse_duration(t)
                .map_err(|e| format!("{t:?} is not a duration such as \"90s\" or \"30m\": {e}")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressOut {
    pub percent: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobErrorOut {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub detail: String,
    pub code: String,
    pub retryable: bool,
    pub attempt: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputOut {
    pub name: String,
    /// Where the handler finds it, under its input folder: the name, or for an item of a list
    /// input `NAME/FILE`.
    pub file: String,
    /// Its place in its list input, from 0 (absent for an input of one upload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<i32>,
    pub upload_id: String,
    pub size: i64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub results: String,
    pub events: String,
    pub logs: String,
    pub cancel: String,
    pub rerun: String,
    pub webhook_deliveries: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOut {
    pub id: String,
    pub kind: String,
    /// The version of its kind it runs, resolved when it was created (null: a kind without
    /// versions).
    pub version: Option<String>,
    /// The tag it was resolved through, if any (a re-run follows it again).
    pub tag: Option<String>,
    /// The job this one re-runs.
    pub rerun_of: Option<String>,
    /// This job's latest re-run (`GET /v1/jobs?rerun_of=ID` lists them all).
    pub latest_rerun: Option<String>,
    /// The bulk re-run that made it.
    pub rerun_batch: Option<String>,
    pub status: JobStatus,
    pub cancel_requested: bool,
    pub progress: Option<ProgressOut>,
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i32,
    pub timeout_seconds: f64,
    pub params: serde_json::Value,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub updated_at: String,
    /// When a queued job waiting for a retry becomes eligible to run again.
    pub retry_at: Option<String>,
    /// Why a queued job is not in line to run, when something other than the queue holds it
    /// back (its tenant's running-job limit).
    pub waiting_for: Option<String>,
    /// When the finished job, its results, logs and inputs are deleted (its tenant's
    /// `job_retention`); null: kept until deleted.
    pub expires_at: Option<String>,
    /// When a finished job's inputs' bytes are deleted (`input_retention`), if they will be.
    pub inputs_expire_at: Option<String>,
    /// When they were deleted; the job still lists them.
    pub inputs_deleted_at: Option<String>,
    pub error: Option<JobErrorOut>,
    pub inputs: Vec<InputOut>,
    pub result_count: u64,
    pub webhook: Option<JobWebhookOut>,
    pub links: JobLinks,
}

impl From<&JobView> for JobOut {
    fn from(v: &JobView) -> Self {
        let j = &v.job;
        let id = JobId(j.id).to_string();
        let base = format!("/v1/jobs/{id}");
        let error = j
            .error
            .as_deref()
            .and_then(|e| serde_json::from_str::<JobFailure>(e).ok())
            .map(|f| JobErrorOut {
                type_: format!("urn:ferry:problem:{}", f.code),
                title: f.title,
                detail: f.detail,
                code: f.code,
                retryable: f.retryable,
                attempt: f.attempt,
            });
        Self {
            id: id.clone(),
            kind: j.kind.clone(),
            version: j.version.clone(),
            tag: j.tag.clone(),
            rerun_of: j.rerun_of.map(|r| JobId(r).to_string()),
            latest_rerun: j.latest_rerun.map(|r| JobId(r).to_string()),
            rerun_batch: j.rerun_batch.map(|b| RerunBatchId(b).to_string()),
            status: j.status,
            cancel_requested: j.cancel_requested,
            progress: j.progress_updated_at_ms.map(|at| ProgressOut {
                percent: j.progress_percent,
                stage: j.progress_stage.clone(),
                message: j.progress_message.clone(),
                updated_at: to_rfc3339(at),
            }),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            priority: j.priority,
            timeout_seconds: j.timeout_ms as f64 / 1000.0,
            params: serde_json::from_str(&j.params).unwrap_or_default(),
            created_at: to_rfc3339(j.created_at_ms),
            started_at: j.started_at_ms.map(to_rfc3339),
            finished_at: j.finished_at_ms.map(to_rfc3339),
            updated_at: to_rfc3339(j.updated_at_ms),
            retry_at: (j.status == JobStatus::Queued
                && j.attempt > 0
                && j.run_after_ms > now_ms()
                && j.run_after_ms != PARKED)
                .then(|| to_rfc3339(j.run_after_ms)),
            waiting_for: if j.status == JobStatus::Queued && j.run_after_ms == PARKED {
                Some(
                    "a running slot: its tenant runs as many jobs as max_running_jobs allows"
                        .into(),
                )
            } else {
                v.unserved
                    .as_ref()
                    .map(|serves| format!("no worker serves {serves}"))
            },
            expires_at: j.expires_at_ms.map(to_rfc3339),
            inputs_expire_at: j.inputs_expire_at_ms.map(to_rfc3339),
            inputs_deleted_at: j.inputs_deleted_at_ms.map(to_rfc3339),
            error,
            inputs: v
                .inputs
                .iter()
                .map(|i| InputOut {
                    name: i.input_name().to_owned(),
                    file: i.name.clone(),
                    position: i.position,
                    upload_id: UploadId(i.upload_id).to_string(),
                    size: i.size,
                    sha256: i.sha256.clone(),
                })
                .collect(),
            result_count: v.result_count,
            webhook: v.webhook.as_ref().map(|w| JobWebhookOut {
                id: WebhookId(w.id).to_string(),
                url: w.url.clone(),
                events: crate::webhooks::events_of_column(&w.events),
                secret: w.secret.clone(),
            }),
            links: JobLinks {
                results: format!("{base}/results"),
                events: format!("{base}/events"),
                logs: format!("{base}/logs"),
                cancel: format!("{base}/cancel"),
                rerun: format!("{base}/rerun"),
                webhook_deliveries: format!("{base}/webhook-deliveries"),
                self_: base,
            },
        }
    }
}

/// `POST /v1/jobs/{id}/rerun`: what changes (nothing, without a body).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerunIn {
    /// A version or tag of the job's kind (default: the tag the job followed, else its
    /// version).
    pub version: Option<String>,
    /// The params, all of them (default: the job's).
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    pub priority: Option<i32>,
}

/// `POST /v1/jobs/rerun`: which jobs to re-run, and how.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRerunIn {
    /// Default `failed`.
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Only jobs that ran this version.
    pub version: Option<String>,
    pub error_code: Option<String>,
    pub created_after: Option<String>,
    pub created_before: Option<String>,
    /// Also jobs already re-run (default false).
    pub include_rerun: Option<bool>,
    /// A version or tag to run the re-runs on (default: each job's tag, else its version).
    pub rerun_version: Option<String>,
    pub priority: Option<i32>,
    /// At most this many re-runs (default 100, at most 1000).
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerunBatchLinks {
    /// Every job of the batch: `GET /v1/jobs?rerun_batch=ID`.
    pub jobs: String,
}

/// What a bulk re-run made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerunBatchOut {
    pub id: String,
    /// Re-runs made.
    pub created: i64,
    /// Matching jobs skipped because their inputs were deleted.
    pub skipped: i64,
    /// Matching jobs not re-run by this call (over its limit, or the queue was full): the same
    /// request again re-runs them.
    pub remaining: i64,
    pub created_at: String,
    /// The first page of the re-runs, newest first (as `GET /v1/jobs` lists them).
    pub items: Vec<JobOut>,
    /// Pass as `next` to `links.jobs` for the following page; null when `items` is all.
    pub next: Option<String>,
    pub links: RerunBatchLinks,
}

impl RerunBatchOut {
    pub fn of(
        batch: &crate::storage::entities::rerun_batch::Model,
        items: Vec<JobOut>,
        next: Option<String>,
    ) -> Self {
        let id = RerunBatchId(batch.id).to_string();
        Self {
            links: RerunBatchLinks {
                jobs: format!("/v1/jobs?rerun_batch={id}"),
            },
            id,
            created: batch.created,
            skipped: batch.skipped,
            remaining: batch.remaining,
            created_at: to_rfc3339(batch.created_at_ms),
            items,
            next,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub items: Vec<JobOut>,
    /// Pass as `next` to get the following page; null on the last page.
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultOut {
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub attempt: i32,
    /// The version of its kind the job that made it runs (null: a kind without versions).
    pub version: Option<String>,
    pub created_at: String,
    /// When it is deleted with its job (`expires_at` of the job); null: kept until deleted.
    pub expires_at: Option<String>,
    pub url: String,
}

impl ResultOut {
    /// `r`, a result of `job`.
    pub fn of(r: &result::Model, job: &crate::storage::entities::job::Model) -> Self {
        let expires_at_ms = job.expires_at_ms;
        Self {
            version: job.version.clone(),
            name: r.name.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
            content_type: r.content_type.clone(),
            is_final: r.is_final,
            attempt: r.attempt,
            created_at: to_rfc3339(r.created_at_ms),
            expires_at: expires_at_ms.map(to_rfc3339),
            url: format!("/v1/jobs/{}/results/{}", JobId(r.job_id), r.name),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultList {
    pub items: Vec<ResultOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventOut {
    pub seq: i64,
    pub kind: EventKind,
    pub data: serde_json::Value,
    pub created_at: String,
}

impl From<&job_event::Model> for EventOut {
    fn from(e: &job_event::Model) -> Self {
        Self {
            seq: e.seq,
            kind: e.kind,
            data: serde_json::from_str(&e.data).unwrap_or_default(),
            created_at: to_rfc3339(e.created_at_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventList {
    pub items: Vec<EventOut>,
}

/// An event of the feed across jobs: the event as a job's log shows it, and its job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEventOut {
    #[serde(flatten)]
    pub event: EventOut,
    pub job_id: String,
    pub job_kind: String,
    /// The version of its kind the job runs (null: a kind without versions).
    pub job_version: Option<String>,
}

impl From<&FeedEvent> for FeedEventOut {
    fn from(e: &FeedEvent) -> Self {
        Self {
            event: EventOut::from(&e.event),
            job_id: JobId(e.event.job_id).to_string(),
            job_kind: e.job_kind.clone(),
            job_version: e.job_version.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedPageOut {
    pub items: Vec<FeedEventOut>,
    /// Pass as `after` to continue after this page; never null: the feed has no last page.
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLineOut {
    pub attempt: i32,
    pub line: String,
    pub created_at: String,
}

impl From<&job_log::Model> for LogLineOut {
    fn from(l: &job_log::Model) -> Self {
        Self {
            attempt: l.attempt,
            line: l.line.clone(),
            created_at: to_rfc3339(l.created_at_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogList {
    pub items: Vec<LogLineOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub status: String,
    pub database: String,
    pub blob_store: String,
}
