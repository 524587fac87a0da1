//! Jobs: creation (atomic with its dispatch and with claiming its uploads), reads, listing,
//! cancellation, hard deletion and idempotency keys.

use std::{collections::BTreeMap, time::Duration};

use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Set,
    sea_query::{Expr, OnConflict},
};
use serde_json::json;
use uuid::Uuid;

use super::{ErrorClass, ServiceError, ServiceResult, Services};
use crate::{
    blobs::keys,
    domain::{JobStatus, validate_input_name},
    ids::{JobId, UploadId},
    queue::{self, Dispatch},
    storage::entities::{idempotency_key, job, job_event, job_input, job_log, result, upload},
    time::now_ms,
};

/// An in-flight idempotency reservation older than this is presumed abandoned (its request
/// died with its process) and may be taken over.
const IDEMPOTENCY_IN_FLIGHT_STALE_MS: i64 = 15 * 60 * 1000;

pub const MAX_PRIORITY: i32 = 100;
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;

#[derive(Clone, Debug)]
pub struct NewJob {
    pub kind: String,
    /// Input name → upload id, as the client wrote it.
    pub inputs: BTreeMap<String, String>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub priority: Option<i32>,
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
}

/// A job with what the API shows alongside it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub job: job::Model,
    pub inputs: Vec<job_input::Model>,
    pub result_count: u64,
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    /// Only jobs older than this one (the `next` cursor).
    pub before_id: Option<Uuid>,
    pub limit: u64,
}

/// Outcome of presenting an `Idempotency-Key`.
pub enum Reservation {
    /// The key is ours: go ahead and create the job.
    Reserved,
    /// The key already created this job: replay it.
    Replay(Box<JobView>),
}

impl Services {
    fn job_not_found(id: JobId) -> ServiceError {
        ServiceError::not_found(
            "job_not_found",
            format!("no job {id}: it never existed or was deleted"),
        )
    }

    /// Claims `key` for a request with `fingerprint`, or says what to replay.
    pub async fn reserve_idempotency_key(
        &self,
        key: &str,
        fingerprint: &str,
    ) -> ServiceResult<Reservation> {
        if key.is_empty() || key.len() > 255 {
            return Err(ServiceError::new(
                ErrorClass::BadRequest,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-255 characters",
            ));
        }
        let now = now_ms();
        let inserted = idempotency_key::Entity::insert(idempotency_key::ActiveModel {
            key: Set(key.to_owned()),
            fingerprint: Set(fingerprint.to_owned()),
            job_id: Set(None),
            created_at_ms: Set(now),
        })
        .on_conflict(
            OnConflict::column(idempotency_key::Column::Key)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db.orm)
        .await?;
        if inserted == 1 {
            return Ok(Reservation::Reserved);
        }
        let existing = idempotency_key::Entity::find_by_id(key.to_owned())
            .one(&self.db.orm)
            .await?
            .ok_or_else(|| {
                ServiceError::conflict(
                    "idempotency_key_in_flight",
                    "a request with this Idempotency-Key just finished failing; retry",
                )
            })?;
        if existing.fingerprint != fingerprint {
            return Err(ServiceError::new(
                ErrorClass::Unprocessable,
                "idempotency_key_reused",
                "this Idempotency-Key was already used with a different request; use a new key \
                 for a new request",
            ));
        }
        match existing.job_id {
            Some(job_id) => Ok(Reservation::Replay(Box::new(
                self.get_job(JobId(job_id)).await?,
            ))),
            None if now - existing.created_at_ms > IDEMPOTENCY_IN_FLIGHT_STALE_MS => {
                let taken = idempotency_key::Entity::update_many()
                    .col_expr(idempotency_key::Column::CreatedAtMs, Expr::value(now))
                    .filter(idempotency_key::Column::Key.eq(key))
                    .filter(idempotency_key::Column::CreatedAtMs.eq(existing.created_at_ms))
                    .filter(idempotency_key::Column::JobId.is_null())
                    .exec(&self.db.orm)
                    .await?;
                if taken.rows_affected == 1 {
                    Ok(Reservation::Reserved)
                } else {
                    Err(in_flight())
                }
            }
            None => Err(in_flight()),
        }
    }

    /// Gives a reservation back after the request failed, so the client can retry with it.
    pub async fn release_idempotency_key(&self, key: &str) {
        let res = idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::Key.eq(key))
            .filter(idempotency_key::Column::JobId.is_null())
            .exec(&self.db.orm)
            .await;
        if let Err(err) = res {
            tracing::warn!(error = %err, "could not release an idempotency key");
        }
    }

    /// Validates and creates a job: one transaction inserts the job, its inputs and its first
    /// event, attaches its uploads, records the idempotency key and enqueues the dispatch.
    pub async fn create_job(
        &self,
        new: NewJob,
        idempotency_key: Option<&str>,
    ) -> ServiceResult<JobView> {
        let defaults = self.kinds.get(&new.kind).ok_or_else(|| {
            let known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
            ServiceError::new(
                ErrorClass::Unprocessable,
                "unknown_kind",
                format!(
                    "no handler serves kind {:?}; known kinds: {}",
                    new.kind,
                    known.join(", ")
                ),
            )
            .with_field("kind")
        })?;
        let priority = new.priority.unwrap_or(0);
        if !(0..=MAX_PRIORITY).contains(&priority) {
            return Err(ServiceError::invalid(
                "priority",
                format!("priority must be between 0 and {MAX_PRIORITY} (higher runs first)"),
            ));
        }
        let max_attempts = new.max_attempts.unwrap_or(defaults.max_attempts);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(ServiceError::invalid(
                "max_attempts",
                format!("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let timeout = new.timeout.unwrap_or(defaults.timeout);
        if timeout.is_zero() || timeout > defaults.timeout {
            return Err(ServiceError::invalid(
                "timeout",
                format!(
                    "timeout must be positive and at most {} for kind {:?}",
                    humantime::format_duration(defaults.timeout),
                    new.kind
                ),
            ));
        }
        if new.inputs.is_empty() {
            return Err(ServiceError::invalid(
                "inputs",
                "a job needs at least one input: {\"NAME\": \"upl_…\"}",
            ));
        }
        let mut uploads = Vec::with_capacity(new.inputs.len());
        for (name, upload_text) in &new.inputs {
            let field = format!("inputs.{name}");
            validate_input_name(name)
                .map_err(|msg| ServiceError::invalid(&field, format!("input name {msg}")))?;
            let upload_id = UploadId::parse(upload_text).ok_or_else(|| {
                ServiceError::invalid(
                    &field,
                    format!("{upload_text:?} is not an upload id (upl_…)"),
                )
            })?;
            let row = self.get_upload(upload_id).await.map_err(|e| {
                if e.class == ErrorClass::NotFound {
                    ServiceError::invalid(&field, e.detail)
                } else {
                    e
                }
            })?;
            if row.job_id.is_some() {
                return Err(ServiceError::conflict(
                    "upload_in_use",
                    format!("upload {upload_id} is already the input of another job; upload it again for a new job"),
                )
                .with_field(field));
            }
            uploads.push((name.clone(), row));
        }

        let id = JobId::new();
        let now = now_ms();
        let dispatch = Dispatch {
            job_id: id.0,
            dispatch_id: queue::new_dispatch_id(),
        };
        let row = job::Model {
            id: id.0,
            kind: new.kind.clone(),
            status: JobStatus::Queued.as_str().into(),
            params: serde_json::Value::Object(new.params).to_string(),
            priority,
            timeout_ms: timeout.as_millis() as i64,
            max_attempts: max_attempts as i32,
            attempt: 0,
            progress_percent: None,
            progress_stage: None,
            progress_message: None,
            progress_updated_at_ms: None,
            error: None,
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            updated_at_ms: now,
            run_after_ms: now,
            dispatch_id: Some(dispatch.dispatch_id.clone()),
            lease_owner: None,
            lease_expires_at_ms: None,
            cancel_requested: false,
            event_seq: 0,
        };

        let mut tx = self.db.begin().await?;
        let active: job::ActiveModel = row.clone().into();
        tx.execute(&job::Entity::insert(active).into_query())
            .await?;
        let mut inputs = Vec::with_capacity(uploads.len());
        for (name, upload_row) in &uploads {
            let attached = tx
                .execute(
                    &upload::Entity::update_many()
                        .col_expr(upload::Column::JobId, Expr::value(id.0))
                        .col_expr(
                            upload::Column::ExpiresAtMs,
                            Expr::value(Option::<i64>::None),
                        )
                        .filter(upload::Column::Id.eq(upload_row.id))
                        .filter(upload::Column::JobId.is_null())
                        .filter(upload::Column::ExpiresAtMs.gt(now))
                        .into_query(),
                )
                .await?;
            if attached != 1 {
                // Dropping `tx` rolls everything back.
                return Err(ServiceError::conflict(
                    "upload_in_use",
                    format!(
                        "upload {} was taken by another job or deleted meanwhile",
                        UploadId(upload_row.id)
                    ),
                )
                .with_field(format!("inputs.{name}")));
            }
            let input = job_input::Model {
                job_id: id.0,
                name: name.clone(),
                upload_id: upload_row.id,
                size: upload_row.size,
                sha256: upload_row.sha256.clone(),
                blob_key: upload_row.blob_key.clone(),
            };
            tx.execute(
                &job_input::Entity::insert(job_input::ActiveModel::from(input.clone()))
                    .into_query(),
            )
            .await?;
            inputs.push(input);
        }
        tx.append_event(id.0, "queued", json!({"status": "queued", "attempt": 0}))
            .await?;
        if let Some(key) = idempotency_key {
            tx.execute(
                &idempotency_key::Entity::update_many()
                    .col_expr(idempotency_key::Column::JobId, Expr::value(id.0))
                    .filter(idempotency_key::Column::Key.eq(key))
                    .into_query(),
            )
            .await?;
        }
        queue::enqueue(&mut tx, &new.kind, &dispatch, priority, now).await?;
        tx.commit().await?;
        tracing::info!(job_id = %id, kind = %new.kind, "job queued");
        // The job as created, not re-read: a worker may already have claimed it, and the answer
        // to the request that queued it should say "queued".
        Ok(JobView {
            job: job::Model {
                event_seq: 1,
                ..row
            },
            inputs,
            result_count: 0,
        })
    }

    pub async fn get_job(&self, id: JobId) -> ServiceResult<JobView> {
        let job = job::Entity::find_by_id(id.0)
            .one(&self.db.orm)
            .await?
            .ok_or_else(|| Self::job_not_found(id))?;
        self.view(job).await
    }

    async fn view(&self, job: job::Model) -> ServiceResult<JobView> {
        let inputs = job_input::Entity::find()
            .filter(job_input::Column::JobId.eq(job.id))
            .order_by_asc(job_input::Column::Name)
            .all(&self.db.orm)
            .await?;
        let result_count = result::Entity::find()
            .filter(result::Column::JobId.eq(job.id))
            .count(&self.db.orm)
            .await?;
        Ok(JobView {
            job,
            inputs,
            result_count,
        })
    }

    /// Newest first. Returns the page and whether more jobs follow it.
    pub async fn list_jobs(&self, filter: JobFilter) -> ServiceResult<(Vec<JobView>, bool)> {
        let mut query = job::Entity::find().order_by_desc(job::Column::Id);
        if let Some(status) = filter.status {
            query = query.filter(job::Column::Status.eq(status.as_str()));
        }
        if let Some(kind) = &filter.kind {
            query = query.filter(job::Column::Kind.eq(kind.as_str()));
        }
        if let Some(after) = filter.created_after_ms {
            query = query.filter(job::Column::CreatedAtMs.gt(after));
        }
        if let Some(before) = filter.created_before_ms {
            query = query.filter(job::Column::CreatedAtMs.lt(before));
        }
        if let Some(cursor) = filter.before_id {
            query = query.filter(job::Column::Id.lt(cursor));
        }
        let mut rows = query.limit(filter.limit + 1).all(&self.db.orm).await?;
        let more = rows.len() as u64 > filter.limit;
        rows.truncate(filter.limit as usize);
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            views.push(self.view(row).await?);
        }
        Ok((views, more))
    }

    /// Cancels a queued job at once; asks the worker of a running job to stop it (within about a
    /// second), keeping the results it already published.
    pub async fn cancel_job(&self, id: JobId) -> ServiceResult<JobView> {
        // The conditional updates decide (a job may finish at any moment); the job is read once,
        // afterwards, for the answer.
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let canceled_now = tx
            .execute(
                &job::Entity::update_many()
                    .col_expr(
                        job::Column::Status,
                        Expr::value(JobStatus::Canceled.as_str()),
                    )
                    .col_expr(job::Column::CancelRequested, Expr::value(true))
                    .col_expr(job::Column::FinishedAtMs, Expr::value(now))
                    .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                    .filter(job::Column::Id.eq(id.0))
                    .filter(job::Column::Status.eq(JobStatus::Queued.as_str()))
                    .into_query(),
            )
            .await?;
        let requested = if canceled_now == 1 {
            tx.append_event(id.0, "canceled", json!({"status": "canceled"}))
                .await?;
            0
        } else {
            let requested = tx
                .execute(
                    &job::Entity::update_many()
                        .col_expr(job::Column::CancelRequested, Expr::value(true))
                        .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                        .filter(job::Column::Id.eq(id.0))
                        .filter(job::Column::Status.eq(JobStatus::Running.as_str()))
                        .filter(job::Column::CancelRequested.eq(false))
                        .into_query(),
                )
                .await?;
            if requested == 1 {
                tx.append_event(id.0, "cancel_requested", json!({"status": "running"}))
                    .await?;
            }
            requested
        };
        tx.commit().await?;
        let after = self.get_job(id).await?;
        let status = JobStatus::parse(&after.job.status).unwrap_or(JobStatus::Failed);
        if canceled_now == 0 && requested == 0 && status.is_finished() {
            return Err(ServiceError::conflict(
                "job_finished",
                format!(
                    "job {id} already finished as {}; nothing to cancel",
                    status.as_str()
                ),
            ));
        }
        tracing::info!(job_id = %id, "cancel requested");
        Ok(after)
    }

    /// Hard deletion: the job, its events, logs, results and its inputs' bytes. A running job's
    /// lease is revoked first, so its worker stops it and can publish nothing more; then the
    /// bytes go, then the rows. Interrupted, it can simply be called again.
    pub async fn delete_job(&self, id: JobId) -> ServiceResult<()> {
        let current = self.get_job(id).await?;
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        tx.execute(
            &job::Entity::update_many()
                .col_expr(job::Column::CancelRequested, Expr::value(true))
                .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
                .col_expr(
                    job::Column::Status,
                    Expr::value(JobStatus::Canceled.as_str()),
                )
                .col_expr(job::Column::FinishedAtMs, Expr::value(now))
                .filter(job::Column::Id.eq(id.0))
                .filter(
                    job::Column::Status
                        .is_in([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]),
                )
                .into_query(),
        )
        .await?;
        tx.commit().await?;

        self.blobs.delete_prefix(&keys::job_prefix(id.0)).await?;
        for input in &current.inputs {
            self.blobs
                .delete(&object_store::path::Path::from(input.blob_key.as_str()))
                .await?;
        }

        let mut tx = self.db.begin().await?;
        for rows in [
            result::Entity::delete_many()
                .filter(result::Column::JobId.eq(id.0))
                .into_query(),
            job_event::Entity::delete_many()
                .filter(job_event::Column::JobId.eq(id.0))
                .into_query(),
            job_log::Entity::delete_many()
                .filter(job_log::Column::JobId.eq(id.0))
                .into_query(),
            job_input::Entity::delete_many()
                .filter(job_input::Column::JobId.eq(id.0))
                .into_query(),
            upload::Entity::delete_many()
                .filter(upload::Column::JobId.eq(id.0))
                .into_query(),
            idempotency_key::Entity::delete_many()
                .filter(idempotency_key::Column::JobId.eq(id.0))
                .into_query(),
            job::Entity::delete_many()
                .filter(job::Column::Id.eq(id.0))
                .into_query(),
        ] {
            tx.execute(&rows).await?;
        }
        tx.commit().await?;
        tracing::info!(job_id = %id, "job deleted with its inputs and results");
        Ok(())
    }

    /// Events after `after_seq`, oldest first.
    pub async fn job_events(
        &self,
        id: JobId,
        after_seq: i64,
        limit: u64,
    ) -> ServiceResult<Vec<job_event::Model>> {
        self.get_job(id).await?;
        Ok(job_event::Entity::find()
            .filter(job_event::Column::JobId.eq(id.0))
            .filter(job_event::Column::Seq.gt(after_seq))
            .order_by_asc(job_event::Column::Seq)
            .limit(limit)
            .all(&self.db.orm)
            .await?)
    }

    /// The last `tail` log lines, oldest first.
    pub async fn job_logs(&self, id: JobId, tail: u64) -> ServiceResult<Vec<job_log::Model>> {
        self.get_job(id).await?;
        let mut lines = job_log::Entity::find()
            .filter(job_log::Column::JobId.eq(id.0))
            .order_by_desc(job_log::Column::Id)
            .limit(tail)
            .all(&self.db.orm)
            .await?;
        lines.reverse();
        Ok(lines)
    }
}

fn in_flight() -> ServiceError {
    ServiceError::conflict(
        "idempotency_key_in_flight",
        "a request with this Idempotency-Key is still being processed; retry when it has finished",
    )
}
