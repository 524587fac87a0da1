//! The reconciler: the one place that repairs what crashes leave behind. It is safe to run in
//! every process at once — each repair is a conditional update that only one of them wins.
//!
//! - Running jobs whose lease expired (worker killed, machine gone, handler hung past its lease)
//!   get a failed attempt (`lease_expired`, retryable), or end `canceled` if a cancel was asked.
//! - Queued jobs that are due but not in the queue get a dispatch: retries whose backoff ended,
//!   and jobs whose dispatch apalis lost in a crash.
//! - Unattached uploads past `expires_at` are deleted, bytes first.
//! - Jobs parked for a running slot of their tenant are dispatched where slots are free
//!   ([`super::running`]).
//! - Finished jobs, and finished jobs' inputs, past their tenant's retention are deleted, bytes
//!   first ([`super::retention`]).
//! - Idempotency keys older than a day, and apalis' records of deliveries finished an hour ago,
//!   are deleted.
//! - Work folders on this machine ([`Services::sweep_work_folders`], run by workers) of attempts
//!   that no longer run — their worker was killed, or their job was deleted, retried or settled —
//!   are removed, and whatever processes those attempts left are killed.
//! - Every `queue.orphan_sweep_interval`, objects no row points to are deleted
//!   ([`super::orphans`]): results an attempt stored before its worker died (or whose
//!   replacement's cleanup was cut short), and uploads whose process died between storing the
//!   bytes and recording them.

use std::{collections::HashMap, fmt::Display, sync::atomic::Ordering};

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, Func},
};
use uuid::Uuid;

use super::{
    ServiceError, ServiceResult, Services,
    attempts::Outcome,
    lifecycle::{Dispatchable, Holder, Lease, Transition},
};
use crate::storage::lookup::AtMostOne;
use crate::{
    domain::{JobFailure, JobStatus},
    ids::{JobId, UploadId},
    queue,
    storage::entities::{idempotency_key, job, upload},
    time::now_ms,
    workspace,
};

const BATCH: u64 = 100;
const IDEMPOTENCY_KEY_TTL_MS: i64 = 24 * 3600 * 1000;
/// A dispatch is only presumed lost once its job has been due for this long.
const LOST_DISPATCH_GRACE_MS: i64 = 2_000;
/// Lost dispatches are looked for on every this many passes (a minute at the default 5 s
/// `reconcile_interval`), starting with the first: finding one reads every queued job, and one
/// takes a crash at the wrong moment.
const LOST_DISPATCH_CHECK_PASSES: u64 = 12;
/// apalis' records of finished deliveries are kept this long (for debugging), then deleted.
const FINISHED_DELIVERY_TTL_SECS: i64 = 3600;

/// What one pass repaired (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    pub expired_leases: usize,
    /// Jobs handed to the queue: retries whose backoff ended, and lost dispatches.
    pub dispatched: usize,
    pub expired_uploads: usize,
    /// Resumable uploads deleted, bytes and all, because they stopped receiving bytes.
    pub expired_resumable_uploads: usize,
    /// Resumable uploads whose bytes were all in, completed after their completion was cut.
    pub finished_resumable_uploads: usize,
    /// Finished jobs deleted because their retention ended.
    pub expired_jobs: usize,
    /// Finished jobs whose inputs' bytes were deleted because their retention ended.
    pub expired_inputs: usize,
    pub purged_deliveries: u64,
    /// Rows of worker processes gone for an hour, deleted.
    pub forgotten_workers: u64,
    /// Steps and items that failed (each logged); the next pass tries them again.
    pub failed: usize,
}

impl Services {
    pub async fn reconcile_once(&self) -> ServiceResult<Repairs> {
        self.reconcile_at(now_ms()).await
    }

    /// One pass as if the time were `now` (tests step time with it; see `tests/api/lifecycle.rs`).
    ///
    /// A step or an item that fails is logged, counted in [`Repairs::failed`] and left for the
    /// next pass; the others go on, so one bad row or an unreachable blob store cannot keep every
    /// expired lease or due retry waiting.
    pub async fn reconcile_at(&self, now: i64) -> ServiceResult<Repairs> {
        let mut repairs = Repairs::default();
        let steps = [
            (
                "expired leases",
                self.expire_leases(now, &mut repairs).await,
            ),
            ("due dispatches", self.dispatch_due(now, &mut repairs).await),
            (
                "expired uploads",
                self.purge_expired_uploads(now, &mut repairs).await,
            ),
            (
                "expired resumable uploads",
                self.purge_expired_resumable(now, &mut repairs).await,
            ),
            (
                "received resumable uploads",
                self.finish_received(now, &mut repairs).await,
            ),
            (
                "finished deliveries",
                self.purge_deliveries(now, &mut repairs).await,
            ),
            ("idempotency keys", self.purge_idempotency_keys(now).await),
            ("retention", self.expire_retained(now, &mut repairs).await),
            (
                "running slots",
                self.release_parked(now, &mut repairs).await,
            ),
            ("gone workers", self.forget_workers(now, &mut repairs).await),
        ];
        for (step, result) in steps {
            if let Err(err) = result {
                tracing::warn!(step, error = %err, "reconciler step failed; retried next pass");
                repairs.failed += 1;
            }
        }
        self.start_orphan_sweep_if_due();
        self.count_repairs(&repairs);
        Ok(repairs)
    }

    /// Adds a pass's repairs to the metrics, each under a fixed name.
    fn count_repairs(&self, r: &Repairs) {
        let m = self.db.metrics();
        m.leases_expired(r.expired_leases as u64);
        for (repair, count) in [
            ("expired_leases", r.expired_leases as u64),
            ("dispatched", r.dispatched as u64),
            ("expired_uploads", r.expired_uploads as u64),
            (
                "expired_resumable_uploads",
                r.expired_resumable_uploads as u64,
            ),
            (
                "finished_resumable_uploads",
                r.finished_resumable_uploads as u64,
            ),
            ("expired_jobs", r.expired_jobs as u64),
            ("expired_inputs", r.expired_inputs as u64),
            ("purged_deliveries", r.purged_deliveries),
            ("forgotten_workers", r.forgotten_workers),
            ("failed_steps", r.failed as u64),
        ] {
            m.repaired(repair, count);
        }
    }

    /// Deletes the rows of worker processes gone for a while (see [`super::workers`]).
    async fn forget_workers(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        repairs.forgotten_workers += self.forget_gone_workers(now).await?;
        Ok(())
    }

    /// Logs an item of a step that failed (a job or an upload), and counts it.
    fn item_failed(repairs: &mut Repairs, step: &str, item: impl Display, err: ServiceError) {
        tracing::warn!(step, %item, error = %err, "reconciler could not repair this item");
        repairs.failed += 1;
    }

    /// Settles attempts whose worker stopped renewing its lease.
    async fn expire_leases(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        let expired = job::Entity::find()
            .filter(job::Column::Status.eq(JobStatus::Running))
            .filter(job::Column::LeaseExpiresAtMs.lt(now))
            .filter(job::Column::LeaseOwner.is_not_null())
            .limit(BATCH)
            .all(&self.db.orm)
            .await?;
        for row in expired {
            let lease = Lease {
                job_id: row.id,
                owner: row.lease_owner.clone().unwrap_or_default(),
                attempt: row.attempt,
            };
            let holder = Holder::ExpiredLease(&lease, row.lease_expires_at_ms.unwrap_or_default());
            let outcome = if row.cancel_requested {
                Outcome::Canceled
            } else {
                Outcome::Failed(JobFailure {
                    code: "lease_expired".into(),
                    title: "Worker lost".into(),
                    detail: format!(
                        "the worker running attempt {} stopped renewing its lease (it was \
                         killed, crashed or hung)",
                        row.attempt
                    ),
                    retryable: true,
                    attempt: row.attempt,
                })
            };
            match self.settle(&row, holder, row.attempt, outcome, now).await {
                Ok(Some(_)) => {
                    let (job_id, attempt) = (JobId(row.id), row.attempt);
                    tracing::warn!(%job_id, attempt, "lease expired; attempt settled");
                    repairs.expired_leases += 1;
                }
                Ok(None) => {}
                Err(err) => Self::item_failed(repairs, "expired leases", JobId(row.id), err),
            }
        }
        Ok(())
    }

    /// Hands to the queue the jobs whose retry backoff ended, and (every
    /// [`LOST_DISPATCH_CHECK_PASSES`]th pass) queued jobs whose dispatch was lost.
    async fn dispatch_due(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        let mut due = queue::due_retries(&self.db, now, BATCH as i64).await?;
        let pass = self.reconciler_passes.fetch_add(1, Ordering::Relaxed);
        if pass.is_multiple_of(LOST_DISPATCH_CHECK_PASSES) {
            due.extend(
                queue::lost_dispatches(&self.db, now - LOST_DISPATCH_GRACE_MS, BATCH as i64)
                    .await?,
            );
        }
        for job_id in due {
            match self.redispatch(job_id, now).await {
                Ok(true) => repairs.dispatched += 1,
                Ok(false) => {}
                Err(err) => Self::item_failed(repairs, "due dispatches", JobId(job_id), err),
            }
        }
        Ok(())
    }

    /// Dispatches a queued job again; whether it was (another process may have done it first).
    async fn redispatch(&self, job_id: Uuid, now: i64) -> ServiceResult<bool> {
        let Some(row) = job::Entity::find_by_id(job_id)
            .at_most_one(&self.db.orm)
            .await?
        else {
            return Ok(false);
        };
        let holder = Holder::Dispatch(row.dispatch_id.as_deref());
        let redispatch = Transition::Redispatch(Dispatchable::from(&row));
        if self
            .transition(job_id, holder, redispatch, now)
            .await?
            .is_none()
        {
            return Ok(false);
        }
        if row.dispatch_id.is_some() {
            let job_id = JobId(job_id);
            tracing::warn!(%job_id, "dispatch lost; job dispatched again");
        }
        Ok(true)
    }

    /// Deletes uploads that expired before any job took them, and those the last job holding
    /// them let go of (see [`super::holds`]), bytes first.
    async fn purge_expired_uploads(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        let expired_uploads = upload::Entity::find()
            .filter(upload::Column::JobCount.eq(0))
            .filter(upload::Column::ExpiresAtMs.lt(now))
            .limit(BATCH)
            .all(&self.db.orm)
            .await?;
        for row in expired_uploads {
            match self.purge_upload(row.id, &row.blob_key).await {
                Ok(()) => repairs.expired_uploads += 1,
                Err(err) => Self::item_failed(repairs, "expired uploads", UploadId(row.id), err),
            }
        }
        Ok(())
    }

    /// Completes resumable uploads that have every byte (see [`super::resumable`]).
    async fn finish_received(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        repairs.finished_resumable_uploads += self.finish_received_uploads(now).await?;
        Ok(())
    }

    /// Deletes resumable uploads that stopped receiving bytes (see [`super::resumable`]).
    async fn purge_expired_resumable(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        repairs.expired_resumable_uploads += self.expire_resumable_uploads(now).await?;
        Ok(())
    }

    /// Deletes finished jobs, and jobs' inputs, whose retention ended (see [`super::retention`]).
    async fn expire_retained(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        let expired = self.enforce_retention(now).await?;
        repairs.expired_jobs += expired.jobs;
        repairs.expired_inputs += expired.inputs;
        repairs.failed += expired.failed;
        Ok(())
    }

    /// Hands parked jobs back to the queue where their tenant has free running slots (see
    /// [`super::running`]): attempts that ended with their process, and limits raised.
    async fn release_parked(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        for tenant in self.tenants_with_parked_jobs().await? {
            match self.release_running_slots(&tenant, now).await {
                Ok(n) => repairs.dispatched += n,
                Err(err) => Self::item_failed(repairs, "running slots", &tenant, err),
            }
        }
        Ok(())
    }

    async fn purge_deliveries(&self, now: i64, repairs: &mut Repairs) -> ServiceResult<()> {
        repairs.purged_deliveries =
            queue::purge_finished(&self.db, now / 1000 - FINISHED_DELIVERY_TTL_SECS).await?;
        Ok(())
    }

    async fn purge_idempotency_keys(&self, now: i64) -> ServiceResult<()> {
        idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::CreatedAtMs.lt(now - IDEMPOTENCY_KEY_TTL_MS))
            .exec(&self.db.orm)
            .await?;
        Ok(())
    }

    /// Starts a sweep of the blob store for orphans, in the background (a large store takes a
    /// while to list, and the other repairs must not wait for it), once
    /// `queue.orphan_sweep_interval` has passed since this process's last sweep ended. Real
    /// time: the sweep compares with the objects' own timestamps.
    fn start_orphan_sweep_if_due(&self) {
        /// `last_orphan_sweep_ms` while a sweep runs: never due.
        const RUNNING: i64 = i64::MAX;
        let every = self.settings.queue.orphan_sweep_interval.as_millis() as i64;
        let last = self.last_orphan_sweep_ms.load(Ordering::Relaxed);
        if now_ms() - last < every
            || self
                .last_orphan_sweep_ms
                .compare_exchange(last, RUNNING, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let services = self.clone();
        tokio::spawn(async move {
            if let Err(err) = services.sweep_orphans().await {
                tracing::warn!(error = %err, "sweeping orphaned objects failed; retried later");
            }
            services
                .last_orphan_sweep_ms
                .store(now_ms(), Ordering::Relaxed);
        });
    }

    /// When the earliest job waiting out a retry backoff becomes due, if any: the reconciler
    /// wakes up then rather than at its next regular pass.
    pub async fn next_retry_due_ms(&self) -> ServiceResult<Option<i64>> {
        let due: Option<Option<i64>> = job::Entity::find()
            .select_only()
            .column_as(
                Expr::from(Func::min(Expr::col(job::Column::RunAfterMs))),
                "due",
            )
            .filter(job::Column::Status.eq(JobStatus::Queued))
            .filter(job::Column::DispatchId.is_null())
            .filter(job::Column::RunAfterMs.lt(super::lifecycle::PARKED))
            .into_tuple()
            .at_most_one(&self.db.orm)
            .await?;
        Ok(due.flatten())
    }

    /// Removes this machine's work folders of attempts that are not running any more, killing
    /// what processes they left: every attempt of a worker process that is gone (its lock is
    /// free — e.g. after `kill -9`), and any attempt whose job is deleted or no longer running
    /// that attempt. Returns how many folders went.
    pub async fn sweep_work_folders(&self) -> ServiceResult<usize> {
        let root = self.settings.work_dir();
        let survey = tokio::task::spawn_blocking(move || workspace::survey(&root))
            .await
            .map_err(|e| ServiceError::internal("surveying work folders failed", e))?;
        if survey.is_empty() {
            return Ok(0);
        }
        // Listed before this query: a folder exists only once its attempt was claimed, so an
        // attempt just starting is seen running here.
        let ids: Vec<Uuid> = survey.live.iter().map(|f| f.job).collect();
        let running: HashMap<Uuid, i32> = if ids.is_empty() {
            HashMap::new()
        } else {
            job::Entity::find()
                .select_only()
                .columns([job::Column::Id, job::Column::Attempt])
                .filter(job::Column::Id.is_in(ids))
                .filter(job::Column::Status.eq(JobStatus::Running))
                .into_tuple::<(Uuid, i32)>()
                .all(&self.db.orm)
                .await?
                .into_iter()
                .collect()
        };
        let removed = tokio::task::spawn_blocking(move || {
            survey.clear(|f| running.get(&f.job) == Some(&f.attempt))
        })
        .await
        .map_err(|e| ServiceError::internal("removing work folders failed", e))?;
        Ok(removed)
    }
}
