//! Retention: what a tenant's `job_retention` and `input_retention` delete, run by the
//! reconciler on every backend. A job fixes both at creation (`retain_ms`, `retain_inputs_ms`)
//! and turns them into times when it finishes (`service::lifecycle::apply`); here, what is due
//! goes, bytes first, through indexes on those times:
//!
//! - a job past `expires_at_ms` is hard-deleted like `DELETE /v1/jobs/{id}` deletes it: results,
//!   logs, events, inputs' bytes and rows;
//! - a job past `inputs_expire_at_ms` lets go of its inputs: their uploads are deleted, bytes
//!   and rows, unless another job still holds them (see `service::holds`); the job keeps
//!   listing them (name, size, digest) and says when they were deleted.
//!
//! Each deletion can be repeated: interrupted (a crash, an unreachable store), the next pass
//! finds the same row still due and finishes it.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, sea_query::Expr,
};
use uuid::Uuid;

use super::{ServiceResult, Services, holds};
use crate::{
    ids::JobId,
    storage::entities::{job, job_input},
    tenancy::Tenant,
};

/// Jobs (or jobs' inputs) deleted per pass; the rest wait for the next one.
const BATCH: u64 = 100;

/// What one pass deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub jobs: usize,
    pub inputs: usize,
    /// Items that failed (logged); tried again next pass.
    pub failed: usize,
}

/// The first [`BATCH`] jobs whose `time` is due by `now`, earliest first, read through the index
/// on `time`, as (id, `with`).
fn due<T: sea_orm::TryGetableMany>(
    time: job::Column,
    with: job::Column,
    now: i64,
) -> sea_orm::Selector<sea_orm::SelectGetableTuple<T>> {
    job::Entity::find()
        .select_only()
        .columns([job::Column::Id, with])
        .filter(time.lte(now))
        .order_by_asc(time)
        .limit(BATCH)
        .into_tuple()
}

impl Services {
    /// Deletes the jobs, and the jobs' inputs, whose retention ended by `now`.
    pub async fn enforce_retention(&self, now: i64) -> ServiceResult<Expired> {
        let mut expired = Expired::default();
        let due_jobs: Vec<(Uuid, String)> = due(job::Column::ExpiresAtMs, job::Column::Tenant, now)
            .all(&self.db.orm)
            .await?;
        for (id, tenant) in due_jobs {
            // Every stored tenant name parses (it was written from a parsed one).
            let Ok(tenant) = Tenant::parse(&tenant) else {
                expired.failed += 1;
                continue;
            };
            let result = self.delete_job(&tenant, JobId(id)).await;
            match result {
                Ok(()) => expired.jobs += 1,
                Err(err) => {
                    tracing::warn!(job_id = %JobId(id), error = %err, "expired job not deleted");
                    expired.failed += 1;
                }
            }
        }
        let due_inputs: Vec<(Uuid, i64)> = due(
            job::Column::InputsExpireAtMs,
            job::Column::InputsExpireAtMs,
            now,
        )
        .all(&self.db.orm)
        .await?;
        for (id, due_at) in due_inputs {
            match self.delete_inputs(id, due_at, now).await {
                Ok(()) => expired.inputs += 1,
                Err(err) => {
                    tracing::warn!(job_id = %JobId(id), error = %err, "expired inputs not deleted");
                    expired.failed += 1;
                }
            }
        }
        Ok(expired)
    }

    /// Lets go of a finished job's inputs (their uploads are deleted unless another job holds
    /// them, see [`super::holds`]) and records it on the job, unless its inputs' expiry changed
    /// meanwhile (the job was deleted).
    async fn delete_inputs(&self, job_id: Uuid, due_at: i64, now: i64) -> ServiceResult<()> {
        let uploads: Vec<Uuid> = job_input::Entity::find()
            .select_only()
            .column(job_input::Column::UploadId)
            .filter(job_input::Column::JobId.eq(job_id))
            .into_tuple()
            .all(&self.db.orm)
            .await?;
        let mut tx = self.db.begin().await?;
        let releasing = tx
            .execute(
                &job::Entity::update_many()
                    .col_expr(
                        job::Column::InputsExpireAtMs,
                        Expr::value(Option::<i64>::None),
                    )
                    .col_expr(job::Column::InputsDeletedAtMs, Expr::value(now))
                    .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                    .filter(job::Column::Id.eq(job_id))
                    .filter(job::Column::InputsExpireAtMs.eq(due_at))
                    .filter(job::Column::InputsDeletedAtMs.is_null())
                    .into_query(),
            )
            .await?;
        if releasing == 1 {
            holds::release(&mut tx, &uploads).await?;
        }
        tx.job_changed(job_id);
        tx.commit().await?;
        let purged = self.purge_released(&uploads).await?;
        tracing::info!(job_id = %JobId(job_id), inputs = uploads.len(), purged_uploads = purged,
            "expired inputs let go of");
        Ok(())
    }
}
