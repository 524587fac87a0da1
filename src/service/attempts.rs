//! The life of one attempt, as workers and the reconciler record it: claim a dispatched job under
//! a lease, keep the lease alive, report progress and logs, publish results, and settle the
//! attempt (success, cancel, retry with backoff, or failure).
//!
//! Every write is guarded by the lease (`lease_owner` and `attempt` must still match): a worker
//! that lost its lease — presumed dead, or its job deleted — can neither publish nor complete,
//! so a job never completes twice and never duplicates its results.

use std::time::Duration;

use rand::Rng;
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
    sea_query::{Expr, ExprTrait, Func},
};
use serde_json::json;
use uuid::Uuid;

use super::{ServiceError, ServiceResult, Services};
use crate::{
    blobs::keys,
    domain::{JobFailure, JobStatus, validate_result_name},
    queue::{self, Dispatch},
    storage::{
        StorageError,
        entities::{job, job_input, job_log, result},
    },
    time::{now_ms, to_rfc3339},
};

/// Log lines kept per job.
const LOG_TAIL_LINES: u64 = 1000;

/// Proof that this worker runs this attempt.
#[derive(Clone, Debug)]
pub struct Lease {
    pub job_id: Uuid,
    pub owner: String,
    pub attempt: i32,
}

#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub lease: Lease,
    pub job: job::Model,
    pub inputs: Vec<job_input::Model>,
}

/// What the lease holder should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    CancelRequested,
    /// The job was deleted, or the lease expired and the job moved on: stop at once.
    Lost,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    Succeeded,
    Canceled,
    Failed(JobFailure),
    /// The worker is shutting down gracefully: put the job back at once without counting the
    /// attempt (it was not the job's fault), so a deploy does not use up retries.
    Requeue,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{0}")]
    InvalidName(String),
    #[error("the lease on this job was lost")]
    LeaseLost,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

fn lease_guard(lease: &Lease) -> sea_orm::sea_query::Condition {
    sea_orm::sea_query::Condition::all()
        .add(job::Column::Id.eq(lease.job_id))
        .add(job::Column::Status.eq(JobStatus::Running.as_str()))
        .add(job::Column::LeaseOwner.eq(lease.owner.as_str()))
        .add(job::Column::Attempt.eq(lease.attempt))
}

impl Services {
    fn lease_ttl_ms(&self) -> i64 {
        self.settings.queue.lease_ttl.as_millis() as i64
    }

    /// Takes the job for a new attempt if this delivery is current; `None` for a stale or
    /// duplicate delivery (job gone, already running or finished, canceled, or superseded).
    pub async fn claim(
        &self,
        dispatch: &Dispatch,
        owner: &str,
    ) -> ServiceResult<Option<ClaimedJob>> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let claimed = tx
            .execute(
                &job::Entity::update_many()
                    .col_expr(
                        job::Column::Status,
                        Expr::value(JobStatus::Running.as_str()),
                    )
                    .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).add(1))
                    .col_expr(job::Column::LeaseOwner, Expr::value(owner))
                    .col_expr(
                        job::Column::LeaseExpiresAtMs,
                        Expr::value(now + self.lease_ttl_ms()),
                    )
                    .col_expr(
                        job::Column::StartedAtMs,
                        Expr::from(Func::coalesce([
                            Expr::col(job::Column::StartedAtMs),
                            Expr::value(now),
                        ])),
                    )
                    .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                    .filter(job::Column::Id.eq(dispatch.job_id))
                    .filter(job::Column::Status.eq(JobStatus::Queued.as_str()))
                    .filter(job::Column::DispatchId.eq(dispatch.dispatch_id.as_str()))
                    .filter(job::Column::CancelRequested.eq(false))
                    .into_query(),
            )
            .await?;
        if claimed == 0 {
            return Ok(None);
        }
        let attempt = tx
            .fetch_i64(
                &job::Entity::find()
                    .select_only()
                    // BIGINT so one decoder fits both SQLite and PostgreSQL (INT4 there).
                    .column_as(Expr::col(job::Column::Attempt).cast_as("BIGINT"), "attempt")
                    .filter(job::Column::Id.eq(dispatch.job_id))
                    .into_query(),
            )
            .await?
            .unwrap_or(1) as i32;
        tx.append_event(
            dispatch.job_id,
            "started",
            json!({"status": "running", "attempt": attempt}),
        )
        .await?;
        tx.commit().await?;
        let Some(job) = job::Entity::find_by_id(dispatch.job_id)
            .one(&self.db.orm)
            .await?
        else {
            return Ok(None);
        };
        let inputs = job_input::Entity::find()
            .filter(job_input::Column::JobId.eq(job.id))
            .all(&self.db.orm)
            .await?;
        Ok(Some(ClaimedJob {
            lease: Lease {
                job_id: job.id,
                owner: owner.to_owned(),
                attempt,
            },
            job,
            inputs,
        }))
    }

    /// Renews the lease (when `renew`) and reports whether a cancel was asked for.
    pub async fn heartbeat(&self, lease: &Lease, renew: bool) -> ServiceResult<LeaseState> {
        if renew {
            let renewed = job::Entity::update_many()
                .col_expr(
                    job::Column::LeaseExpiresAtMs,
                    Expr::value(now_ms() + self.lease_ttl_ms()),
                )
                .filter(lease_guard(lease))
                .exec(&self.db.orm)
                .await?;
            if renewed.rows_affected == 0 {
                return Ok(LeaseState::Lost);
            }
        }
        let row = job::Entity::find()
            .filter(lease_guard(lease))
            .one(&self.db.orm)
            .await?;
        Ok(match row {
            None => LeaseState::Lost,
            Some(row) if row.cancel_requested => LeaseState::CancelRequested,
            Some(_) => LeaseState::Held,
        })
    }

    /// Records the latest progress (the caller coalesces frequent updates).
    pub async fn report_progress(
        &self,
        lease: &Lease,
        percent: Option<f64>,
        stage: Option<String>,
        message: Option<String>,
    ) -> ServiceResult<LeaseState> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let updated = tx
            .execute(
                &job::Entity::update_many()
                    .col_expr(job::Column::ProgressPercent, Expr::value(percent))
                    .col_expr(job::Column::ProgressStage, Expr::value(stage.clone()))
                    .col_expr(job::Column::ProgressMessage, Expr::value(message.clone()))
                    .col_expr(job::Column::ProgressUpdatedAtMs, Expr::value(now))
                    .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                    .col_expr(
                        job::Column::LeaseExpiresAtMs,
                        Expr::value(now + self.lease_ttl_ms()),
                    )
                    .filter(lease_guard(lease))
                    .into_query(),
            )
            .await?;
        if updated == 0 {
            return Ok(LeaseState::Lost);
        }
        tx.append_event(
            lease.job_id,
            "progress",
            json!({"percent": percent, "stage": stage, "message": message, "attempt": lease.attempt}),
        )
        .await?;
        tx.commit().await?;
        Ok(LeaseState::Held)
    }

    /// Appends handler log lines.
    pub async fn append_logs(&self, lease: &Lease, lines: Vec<String>) -> ServiceResult<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let rows = lines.into_iter().map(|line| job_log::ActiveModel {
            job_id: Set(lease.job_id),
            attempt: Set(lease.attempt),
            line: Set(line),
            created_at_ms: Set(now),
            ..Default::default()
        });
        job_log::Entity::insert_many(rows)
            .exec_without_returning(&self.db.orm)
            .await?;
        Ok(())
    }

    /// Streams a handler's file into the blob store and records it as a result of the job,
    /// replacing an earlier result of the same name (e.g. from a previous attempt).
    pub async fn publish_result(
        &self,
        lease: &Lease,
        name: &str,
        file: &std::path::Path,
        content_type: &str,
        is_final: bool,
    ) -> Result<result::Model, PublishError> {
        validate_result_name(name)
            .map_err(|msg| PublishError::InvalidName(format!("result name {name:?} {msg}")))?;
        let key = keys::result(lease.job_id, lease.attempt, name);
        let stored = self
            .blobs
            .put_file(&key, file)
            .await
            .map_err(ServiceError::from)?;
        let previous = result::Entity::find()
            .filter(result::Column::JobId.eq(lease.job_id))
            .filter(result::Column::Name.eq(name))
            .one(&self.db.orm)
            .await
            .map_err(ServiceError::from)?;
        let now = now_ms();
        let row = result::Model {
            id: Uuid::now_v7(),
            job_id: lease.job_id,
            name: name.to_owned(),
            size: stored.size as i64,
            sha256: stored.sha256_hex(),
            content_type: content_type.to_owned(),
            is_final,
            attempt: lease.attempt,
            blob_key: key.to_string(),
            created_at_ms: now,
        };
        let recorded: Result<bool, StorageError> = async {
            let mut tx = self.db.begin().await?;
            let held = tx
                .execute(
                    &job::Entity::update_many()
                        .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                        .filter(lease_guard(lease))
                        .into_query(),
                )
                .await?;
            if held == 0 {
                return Ok(false);
            }
            tx.execute(
                &result::Entity::delete_many()
                    .filter(result::Column::JobId.eq(lease.job_id))
                    .filter(result::Column::Name.eq(name))
                    .into_query(),
            )
            .await?;
            let active: result::ActiveModel = row.clone().into();
            tx.execute(&result::Entity::insert(active).into_query())
                .await?;
            tx.append_event(
                lease.job_id,
                "result",
                json!({
                    "name": name, "final": is_final, "size": stored.size,
                    "sha256": row.sha256, "content_type": content_type, "attempt": lease.attempt,
                }),
            )
            .await?;
            tx.commit().await?;
            Ok(true)
        }
        .await;
        match recorded {
            Ok(true) => {
                if let Some(prev) = previous.filter(|p| p.blob_key != row.blob_key) {
                    let _ = self
                        .blobs
                        .delete(&object_store::path::Path::from(prev.blob_key.as_str()))
                        .await;
                }
                Ok(row)
            }
            Ok(false) => {
                let _ = self.blobs.delete(&key).await;
                Err(PublishError::LeaseLost)
            }
            Err(err) => {
                let _ = self.blobs.delete(&key).await;
                Err(ServiceError::from(err).into())
            }
        }
    }

    /// Ends the attempt held by `lease`. Returns the job's new status, or `None` when the lease
    /// was already lost (someone else settled it).
    pub async fn finish_attempt(
        &self,
        lease: &Lease,
        job: &job::Model,
        outcome: Outcome,
    ) -> ServiceResult<Option<JobStatus>> {
        let status = self
            .settle(job, lease_guard(lease), lease.attempt, outcome)
            .await?;
        self.trim_logs(lease.job_id).await;
        Ok(status)
    }

    /// Settles a running attempt matched by `guard`: the shared end of a worker's attempt and of
    /// a lease the reconciler found expired.
    pub(crate) async fn settle(
        &self,
        job: &job::Model,
        guard: sea_orm::sea_query::Condition,
        attempt: i32,
        outcome: Outcome,
    ) -> ServiceResult<Option<JobStatus>> {
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let base = |guard: sea_orm::sea_query::Condition| {
            job::Entity::update_many()
                .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
                .col_expr(
                    job::Column::LeaseExpiresAtMs,
                    Expr::value(Option::<i64>::None),
                )
                .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                .filter(guard)
        };
        let (status, touched) = match outcome {
            Outcome::Succeeded | Outcome::Canceled => {
                let status = if matches!(outcome, Outcome::Succeeded) {
                    JobStatus::Succeeded
                } else {
                    JobStatus::Canceled
                };
                let mut update = base(guard)
                    .col_expr(job::Column::Status, Expr::value(status.as_str()))
                    .col_expr(job::Column::FinishedAtMs, Expr::value(now));
                if status == JobStatus::Succeeded {
                    // A finished job is 100 % done, whatever the handler last reported.
                    update = update
                        .col_expr(job::Column::Error, Expr::value(Option::<String>::None))
                        .col_expr(job::Column::ProgressPercent, Expr::value(100.0f64))
                        .col_expr(job::Column::ProgressUpdatedAtMs, Expr::value(now));
                }
                let n = tx.execute(&update.into_query()).await?;
                if n == 1 {
                    tx.append_event(
                        job.id,
                        status.as_str(),
                        json!({"status": status.as_str(), "attempt": attempt}),
                    )
                    .await?;
                }
                (status, n)
            }
            Outcome::Requeue => {
                let dispatch = Dispatch {
                    job_id: job.id,
                    dispatch_id: queue::new_dispatch_id(),
                };
                let n = tx
                    .execute(
                        &base(guard)
                            .col_expr(job::Column::Status, Expr::value(JobStatus::Queued.as_str()))
                            .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).sub(1))
                            .col_expr(job::Column::RunAfterMs, Expr::value(now))
                            .col_expr(
                                job::Column::DispatchId,
                                Expr::value(dispatch.dispatch_id.as_str()),
                            )
                            .filter(job::Column::CancelRequested.eq(false))
                            .into_query(),
                    )
                    .await?;
                if n == 1 {
                    tx.append_event(
                        job.id,
                        "requeued",
                        json!({"status": "queued", "attempt": attempt, "reason": "worker_shutdown"}),
                    )
                    .await?;
                    queue::enqueue(&mut tx, &job.kind, &dispatch, job.priority, now).await?;
                }
                (JobStatus::Queued, n)
            }
            Outcome::Failed(failure) => {
                let error_json = serde_json::to_string(&failure).unwrap_or_default();
                let retry = failure.retryable && attempt < job.max_attempts;
                if retry {
                    let run_after = now + self.backoff(attempt).as_millis() as i64;
                    let dispatch = Dispatch {
                        job_id: job.id,
                        dispatch_id: queue::new_dispatch_id(),
                    };
                    let n = tx
                        .execute(
                            &base(guard.clone())
                                .col_expr(
                                    job::Column::Status,
                                    Expr::value(JobStatus::Queued.as_str()),
                                )
                                .col_expr(job::Column::Error, Expr::value(error_json.clone()))
                                .col_expr(job::Column::RunAfterMs, Expr::value(run_after))
                                .col_expr(
                                    job::Column::DispatchId,
                                    Expr::value(dispatch.dispatch_id.as_str()),
                                )
                                .filter(job::Column::CancelRequested.eq(false))
                                .into_query(),
                        )
                        .await?;
                    if n == 1 {
                        tx.append_event(
                            job.id,
                            "retry_scheduled",
                            json!({"status": "queued", "attempt": attempt, "error": failure, "retry_at": to_rfc3339(run_after)}),
                        )
                        .await?;
                        queue::enqueue(&mut tx, &job.kind, &dispatch, job.priority, run_after)
                            .await?;
                        tx.commit().await?;
                        tracing::warn!(job_id = %crate::ids::JobId(job.id), attempt, code = %failure.code, "attempt failed; retry scheduled");
                        return Ok(Some(JobStatus::Queued));
                    }
                    // A cancel arrived meanwhile: fall through to a final failure below.
                }
                let n = tx
                    .execute(
                        &base(guard)
                            .col_expr(job::Column::Status, Expr::value(JobStatus::Failed.as_str()))
                            .col_expr(job::Column::FinishedAtMs, Expr::value(now))
                            .col_expr(job::Column::Error, Expr::value(error_json))
                            .into_query(),
                    )
                    .await?;
                if n == 1 {
                    tx.append_event(
                        job.id,
                        "failed",
                        json!({"status": "failed", "attempt": attempt, "error": failure}),
                    )
                    .await?;
                }
                (JobStatus::Failed, n)
            }
        };
        tx.commit().await?;
        Ok((touched == 1).then_some(status))
    }

    /// Exponential backoff with jitter: base × 2^(attempt-1), capped, then scaled by 0.75–1.25.
    fn backoff(&self, attempt: i32) -> Duration {
        let q = &self.settings.queue;
        let exp = q
            .retry_base_delay
            .saturating_mul(1u32 << (attempt.clamp(1, 20) - 1) as u32)
            .min(q.retry_max_delay);
        exp.mul_f64(rand::rng().random_range(0.75..1.25))
    }

    async fn trim_logs(&self, job_id: Uuid) {
        let keep_from = job_log::Entity::find()
            .filter(job_log::Column::JobId.eq(job_id))
            .order_by_desc(job_log::Column::Id)
            .offset(LOG_TAIL_LINES)
            .one(&self.db.orm)
            .await;
        if let Ok(Some(oldest_dropped)) = keep_from {
            let _ = job_log::Entity::delete_many()
                .filter(job_log::Column::JobId.eq(job_id))
                .filter(job_log::Column::Id.lte(oldest_dropped.id))
                .exec(&self.db.orm)
                .await;
        }
    }
}
