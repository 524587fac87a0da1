//! The life of one attempt, as workers and the reconciler record it: claim a dispatched job under
//! a lease, keep the lease alive, report progress and logs, publish results, and settle the
//! attempt (success, cancel, retry with backoff, or failure).
//!
//! Every write is guarded by the lease (`lease_owner` and `attempt` must still match): a worker
//! that lost its lease — presumed dead, or its job deleted — can neither publish nor complete,
//! so a job never completes twice and never duplicates its results.
//!
//! What a handler reports is bounded here, whatever the handler: progress text and failure
//! details are cut (`domain`'s caps), and a job's stored log is a ring buffer within
//! `limits.max_log_bytes_per_job` — the oldest lines go as new ones come, while the job runs.

use std::time::Duration;

use rand::Rng;
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set,
    sea_query::Expr,
};
use uuid::Uuid;

use super::{
    ServiceError, ServiceResult, Services,
    lifecycle::{self, Applied, Dispatchable, Holder, PublishedResult, Transition},
};
use crate::storage::lookup::AtMostOne;
use crate::{
    blobs::keys,
    config::Limits,
    domain::{JobFailure, JobStatus, MAX_PROGRESS_TEXT_BYTES, cut_text, validate_result_name},
    queue::Dispatch,
    storage::{
        Pool, StorageError,
        entities::{job, job_input, job_log, result},
    },
    time::now_ms,
};

pub use super::lifecycle::Lease;

/// Rows read at a time when looking for the oldest log lines to drop.
const PRUNE_PAGE: u64 = 500;

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

/// A handler's progress report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressReport {
    /// 0–100.
    pub percent: Option<f64>,
    pub stage: Option<String>,
    pub message: Option<String>,
}

impl ProgressReport {
    /// The report as Ferry stores it: the percentage clamped to 0–100 (dropped if not a
    /// number), stage and message cut to [`MAX_PROGRESS_TEXT_BYTES`].
    pub fn capped(mut self) -> Self {
        self.percent = self
            .percent
            .filter(|p| p.is_finite())
            .map(|p| p.clamp(0.0, 100.0));
        for text in [&mut self.stage, &mut self.message].into_iter().flatten() {
            cut_text(text, MAX_PROGRESS_TEXT_BYTES);
        }
        self
    }
}

/// What a job's stored log holds, as the attempt writing it keeps count, so that keeping the log
/// within `limits.max_log_bytes_per_job` needs no scan of it per write. One per attempt.
#[derive(Debug, Default)]
pub struct LogBudget {
    /// What the job's stored lines count against the cap ([`Limits::log_line_cost`]); `None`
    /// until read from the database (at the first write, and again after a failed one).
    stored: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The result's name, or its content type, is not valid.
    #[error("{0}")]
    InvalidName(String),
    #[error("the lease on this job was lost")]
    LeaseLost,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// A result's content type is sent as a header of its downloads: it must be one media type
/// (`type/subtype` with optional parameters, RFC 9110 §8.3.1) of printable ASCII, never a
/// line break that would end the header.
fn validate_content_type(content_type: &str) -> Result<(), &'static str> {
    if content_type.is_empty() || content_type.len() > 255 {
        return Err("must be 1-255 characters");
    }
    if !content_type
        .bytes()
        .all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err("may only contain printable ASCII (no line breaks or control characters)");
    }
    match content_type.parse::<mime::Mime>() {
        Ok(media) if !media.subtype().as_str().is_empty() => Ok(()),
        _ => Err("is not a media type such as text/plain or application/json"),
    }
}

impl Services {
    /// Takes the job for a new attempt if this delivery is current; `None` for a stale or
    /// duplicate delivery (job gone, already running or finished, canceled, or superseded).
    pub async fn claim(
        &self,
        dispatch: &Dispatch,
        owner: &str,
    ) -> ServiceResult<Option<ClaimedJob>> {
        let now = now_ms();
        let claim = Transition::Claim {
            owner: owner.to_owned(),
            lease_until_ms: now + self.lease_ttl_ms(),
        };
        let holder = Holder::Dispatch(Some(&dispatch.dispatch_id));
        let applied = if self.settings.limits_running_jobs() {
            self.claim_within_limit(dispatch.job_id, holder, claim, now)
                .await?
        } else {
            self.transition(dispatch.job_id, holder, claim, now).await?
        };
        let Some(applied) = applied else {
            return Ok(None);
        };
        // Read after the commit, as a status poll reads: off the writer's connection.
        let Some(job) = self.db.find_job(dispatch.job_id).await? else {
            return Ok(None);
        };
        // The inputs come with the job row (see `JobView::of`): no second query.
        let super::jobs::JobView { job, inputs, .. } = super::jobs::JobView::of(job)?;
        Ok(Some(ClaimedJob {
            lease: Lease {
                job_id: job.id,
                owner: owner.to_owned(),
                attempt: applied.attempt.unwrap_or(job.attempt),
            },
            job,
            inputs,
        }))
    }

    /// Renews the lease (when `renew`) and reports whether a cancel was asked for.
    pub async fn heartbeat(&self, lease: &Lease, renew: bool) -> ServiceResult<LeaseState> {
        let now = now_ms();
        if renew {
            let lease_until_ms = now + self.lease_ttl_ms();
            let renewed = Transition::Renew { lease_until_ms };
            if self
                .transition(lease.job_id, Holder::Lease(lease), renewed, now)
                .await?
                .is_none()
            {
                return Ok(LeaseState::Lost);
            }
        }
        let row = job::Entity::find_by_id(lease.job_id)
            .filter(job::Column::Status.eq(JobStatus::Running))
            .filter(job::Column::LeaseOwner.eq(lease.owner.as_str()))
            .filter(job::Column::Attempt.eq(lease.attempt))
            .at_most_one(&self.db.orm)
            .await?;
        Ok(match row {
            None => LeaseState::Lost,
            Some(row) if row.cancel_requested => LeaseState::CancelRequested,
            Some(_) => LeaseState::Held,
        })
    }

    /// Records the latest progress on the job, capped (see [`ProgressReport::capped`]), and
    /// also as a `progress` event when `event` is set (the caller coalesces frequent reports
    /// into few events).
    pub async fn report_progress(
        &self,
        lease: &Lease,
        report: ProgressReport,
        event: bool,
    ) -> ServiceResult<LeaseState> {
        let now = now_ms();
        let ProgressReport {
            percent,
            stage,
            message,
        } = report.capped();
        let progress = Transition::Progress {
            percent,
            stage,
            message,
            lease_until_ms: now + self.lease_ttl_ms(),
            event,
        };
        Ok(
            match self
                .transition(lease.job_id, Holder::Lease(lease), progress, now)
                .await?
            {
                Some(_) => LeaseState::Held,
                None => LeaseState::Lost,
            },
        )
    }

    /// Appends handler log lines, each cut to `limits.max_log_line_bytes`, and drops the job's
    /// oldest lines in the same transaction so that its log stays within
    /// `limits.max_log_bytes_per_job` (of a batch larger than that, only the end is kept).
    /// `budget` is the attempt's count of what the log holds. Guarded by the lease like every
    /// write of an attempt (and renewing it): a deleted job gets no lines after its deletion.
    pub async fn append_logs(
        &self,
        lease: &Lease,
        lines: Vec<String>,
        budget: &mut LogBudget,
    ) -> ServiceResult<LeaseState> {
        let limits = &self.settings.limits;
        let cap = limits.max_log_bytes_per_job;
        let mut batch = Vec::new();
        let mut batch_cost = 0;
        for mut line in lines.into_iter().rev() {
            cut_text(&mut line, limits.max_log_line_bytes);
            let cost = Limits::log_line_cost(line.len());
            if batch_cost + cost > cap {
                break;
            }
            batch_cost += cost;
            batch.push(line);
        }
        if batch.is_empty() {
            return Ok(LeaseState::Held);
        }
        batch.reverse();
        let stored = match budget.stored.take() {
            Some(stored) => stored,
            None => self.stored_log_cost(lease.job_id).await?,
        };
        let excess = (stored + batch_cost).saturating_sub(cap);
        let (drop_through, freed) = match excess {
            0 => (None, 0),
            _ => self.oldest_log_lines(lease.job_id, excess).await?,
        };
        let now = now_ms();
        let rows = batch.into_iter().map(|line| job_log::ActiveModel {
            job_id: Set(lease.job_id),
            attempt: Set(lease.attempt),
            line: Set(line),
            created_at_ms: Set(now),
            ..Default::default()
        });
        let mut tx = self.db.begin().await?;
        // The guard also locks the job's row until this commits, so a revoke (deletion) waits
        // for these lines and then deletes them with the job.
        let renew = Transition::Renew {
            lease_until_ms: now + self.lease_ttl_ms(),
        };
        let holder = Holder::Lease(lease);
        if lifecycle::apply(&mut tx, lease.job_id, holder, renew, now)
            .await?
            .is_none()
        {
            return Ok(LeaseState::Lost);
        }
        if let Some(last) = drop_through {
            tx.execute(
                &job_log::Entity::delete_many()
                    .filter(job_log::Column::JobId.eq(lease.job_id))
                    .filter(job_log::Column::Id.lte(last))
                    .into_query(),
            )
            .await?;
        }
        tx.execute(&job_log::Entity::insert_many(rows).into_query())
            .await?;
        tx.commit().await?;
        budget.stored = Some(stored.saturating_sub(freed) + batch_cost);
        Ok(LeaseState::Held)
    }

    /// SQL for what one stored log line counts against the cap (see [`Limits::log_line_cost`]).
    fn log_line_cost_sql(&self) -> String {
        let bytes = match self.db.pool() {
            Pool::Sqlite(_) => "LENGTH(CAST(line AS BLOB))",
            Pool::Postgres(_) => "OCTET_LENGTH(line)",
        };
        format!(
            "CAST({bytes} + {} AS BIGINT)",
            Limits::LOG_LINE_OVERHEAD_BYTES
        )
    }

    /// What a job's stored log counts against the cap.
    async fn stored_log_cost(&self, job_id: Uuid) -> ServiceResult<u64> {
        let sum = format!(
            "CAST(COALESCE(SUM({}), 0) AS BIGINT)",
            self.log_line_cost_sql()
        );
        let stored: Option<i64> = job_log::Entity::find()
            .select_only()
            .expr_as(Expr::cust(sum), "stored")
            .filter(job_log::Column::JobId.eq(job_id))
            .into_tuple()
            .at_most_one(&self.db.orm)
            .await?;
        Ok(stored.unwrap_or(0).max(0) as u64)
    }

    /// The oldest lines of a job's log that together count at least `excess`: the id of the
    /// last of them (`None` if the log is empty) and what they count.
    async fn oldest_log_lines(
        &self,
        job_id: Uuid,
        excess: u64,
    ) -> ServiceResult<(Option<i64>, u64)> {
        let (mut last, mut freed) = (None, 0u64);
        loop {
            let mut page = job_log::Entity::find()
                .select_only()
                .column(job_log::Column::Id)
                .expr_as(Expr::cust(self.log_line_cost_sql()), "cost")
                .filter(job_log::Column::JobId.eq(job_id))
                .order_by_asc(job_log::Column::Id)
                .limit(PRUNE_PAGE);
            if let Some(after) = last {
                page = page.filter(job_log::Column::Id.gt(after));
            }
            let page: Vec<(i64, i64)> = page.into_tuple().all(&self.db.orm).await?;
            if page.is_empty() {
                return Ok((last, freed));
            }
            for (id, cost) in page {
                last = Some(id);
                freed += cost.max(0) as u64;
                if freed >= excess {
                    return Ok((last, freed));
                }
            }
        }
    }

    /// Streams a handler's file (opened and checked by the caller) into the blob store and
    /// records it as a result of the job, replacing an earlier result of the same name (e.g.
    /// from a previous attempt). A span of its own (inside the attempt's) in traces.
    #[tracing::instrument(
        name = "publish result",
        level = "info",
        skip_all,
        fields(otel.name = %format!("publish {name}"), result = %name, is_final)
    )]
    pub async fn publish_result(
        &self,
        lease: &Lease,
        name: &str,
        file: std::fs::File,
        content_type: &str,
        is_final: bool,
    ) -> Result<result::Model, PublishError> {
        validate_result_name(name)
            .map_err(|msg| PublishError::InvalidName(format!("result name {name:?} {msg}")))?;
        validate_content_type(content_type).map_err(|msg| {
            PublishError::InvalidName(format!("result content type {content_type:?} {msg}"))
        })?;
        let key = keys::result(lease.job_id, lease.attempt, name);
        let stored = self
            .blobs
            .put_file(&key, file)
            .await
            .map_err(ServiceError::from)?;
        let previous = result::Entity::find()
            .filter(result::Column::JobId.eq(lease.job_id))
            .filter(result::Column::Name.eq(name))
            .at_most_one(&self.db.orm)
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
        let published = PublishedResult {
            name: name.to_owned(),
            is_final,
            size: row.size,
            sha256: row.sha256.clone(),
            content_type: content_type.to_owned(),
        };
        let recorded: Result<bool, StorageError> = async {
            let mut tx = self.db.begin().await?;
            let holder = Holder::Lease(lease);
            let publish = Transition::Publish(published);
            if lifecycle::apply(&mut tx, lease.job_id, holder, publish, now)
                .await?
                .is_none()
            {
                return Ok(false);
            }
            let replaced = tx
                .execute(
                    &result::Entity::delete_many()
                        .filter(result::Column::JobId.eq(lease.job_id))
                        .filter(result::Column::Name.eq(name))
                        .into_query(),
                )
                .await?;
            if replaced == 0 {
                tx.execute(
                    &job::Entity::update_many()
                        .col_expr(
                            job::Column::ResultCount,
                            sea_orm::sea_query::ExprTrait::add(
                                Expr::col(job::Column::ResultCount),
                                1,
                            ),
                        )
                        .filter(job::Column::Id.eq(lease.job_id))
                        .into_query(),
                )
                .await?;
            }
            let active: result::ActiveModel = row.clone().into();
            tx.execute(&result::Entity::insert(active).into_query())
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
        self.settle(job, Holder::Lease(lease), lease.attempt, outcome, now_ms())
            .await
    }

    /// Settles a running attempt for `holder`: the shared end of a worker's attempt and of a
    /// lease the reconciler found expired. An outcome that a pending cancel forbids (a retry, a
    /// requeue) falls back to its final form. A failure's detail is capped
    /// ([`JobFailure::capped`]): the job shows it in every read.
    pub(crate) async fn settle(
        &self,
        job: &job::Model,
        holder: Holder<'_>,
        attempt: i32,
        outcome: Outcome,
        now: i64,
    ) -> ServiceResult<Option<JobStatus>> {
        let outcome = match outcome {
            Outcome::Failed(failure) => Outcome::Failed(failure.capped()),
            other => other,
        };
        let choices = match outcome {
            Outcome::Succeeded => vec![Transition::Succeed],
            Outcome::Canceled => vec![Transition::FinishCanceled],
            Outcome::Requeue => vec![
                Transition::Requeue(Dispatchable::from(job)),
                Transition::FinishCanceled,
            ],
            Outcome::Failed(failure) if failure.retryable && attempt < job.max_attempts => vec![
                Transition::Retry {
                    failure: failure.clone(),
                    run_after_ms: now + self.backoff(attempt).as_millis() as i64,
                },
                Transition::Fail(failure),
            ],
            Outcome::Failed(failure) => vec![Transition::Fail(failure)],
        };
        let mut tx = self.db.begin().await?;
        for choice in choices {
            if let Some(Applied { status, .. }) =
                lifecycle::apply(&mut tx, job.id, holder, choice, now).await?
            {
                tx.commit().await?;
                if status == JobStatus::Queued {
                    let job_id = crate::ids::JobId(job.id);
                    tracing::info!(%job_id, attempt, "attempt ended; job queued again");
                }
                if self.settings.limits_running_jobs() {
                    // A slot of its tenant is free: a parked job may take it (the reconciler
                    // does it later if this fails).
                    if let Err(err) = self.release_running_slots(&job.tenant, now).await {
                        tracing::warn!(error = %err, "parked jobs not released; next pass will");
                    }
                }
                return Ok(Some(status));
            }
        }
        Ok(None)
    }

    /// Runs one transition in its own transaction (see [`lifecycle::apply`]).
    pub async fn transition(
        &self,
        job_id: Uuid,
        holder: Holder<'_>,
        transition: Transition,
        now: i64,
    ) -> ServiceResult<Option<Applied>> {
        let mut tx = self.db.begin().await?;
        let applied = lifecycle::apply(&mut tx, job_id, holder, transition, now).await?;
        if applied.is_some() {
            tx.commit().await?;
        }
        Ok(applied)
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
}

#[cfg(test)]
mod tests {
    use super::validate_content_type;

    #[test]
    fn content_types_are_single_printable_media_types() {
        for good in [
            "application/json",
            "text/plain; charset=utf-8",
            "image/svg+xml",
            "multipart/mixed; boundary=\"a b\"",
        ] {
            assert!(validate_content_type(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "text/plain\r\nX-Injected: 1",
            "text/plain\n",
            "text/plain; charset=\"\u{e4}\"",
            "json",
            "text/",
            "a/b c",
        ] {
            assert!(validate_content_type(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_content_type(&format!("text/{}", "x".repeat(300))).is_err());
    }
}
