//! The reconciler: the one place that repairs what crashes leave behind. It is safe to run in
//! every process at once — each repair is a conditional update that only one of them wins.
//!
//! - Running jobs whose lease expired (worker killed, machine gone, handler hung past its lease)
//!   get a failed attempt (`lease_expired`, retryable), or end `canceled` if a cancel was asked.
//! - Queued jobs whose dispatch apalis no longer holds get a fresh dispatch.
//! - Unattached uploads past `expires_at` are deleted, bytes first.
//! - Idempotency keys older than a day, and apalis' records of deliveries finished an hour ago,
//!   are deleted.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait, sea_query::Expr};
use serde_json::json;

use super::{ServiceResult, Services, attempts::Outcome};
use crate::{
    domain::{JobFailure, JobStatus},
    queue::{self, Dispatch},
    storage::entities::{idempotency_key, job, upload},
    time::now_ms,
};

const BATCH: u64 = 100;
const IDEMPOTENCY_KEY_TTL_MS: i64 = 24 * 3600 * 1000;
/// A dispatch is only presumed lost once its job has been due for this long.
const LOST_DISPATCH_GRACE_MS: i64 = 2_000;
/// apalis' records of finished deliveries are kept this long (for debugging), then deleted.
const FINISHED_DELIVERY_TTL_SECS: i64 = 3600;

/// What one pass repaired (for logs and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    pub expired_leases: usize,
    pub redispatched: usize,
    pub expired_uploads: usize,
    pub purged_deliveries: u64,
}

impl Services {
    pub async fn reconcile_once(&self) -> ServiceResult<Repairs> {
        let mut repairs = Repairs::default();
        let now = now_ms();

        let expired = job::Entity::find()
            .filter(job::Column::Status.eq(JobStatus::Running.as_str()))
            .filter(job::Column::LeaseExpiresAtMs.lt(now))
            .filter(job::Column::LeaseOwner.is_not_null())
            .limit(BATCH)
            .all(&self.db.orm)
            .await?;
        for row in expired {
            let guard = sea_orm::sea_query::Condition::all()
                .add(job::Column::Id.eq(row.id))
                .add(job::Column::Status.eq(JobStatus::Running.as_str()))
                .add(job::Column::LeaseOwner.eq(row.lease_owner.clone()))
                .add(job::Column::LeaseExpiresAtMs.eq(row.lease_expires_at_ms));
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
            if self
                .settle(&row, guard, row.attempt, outcome)
                .await?
                .is_some()
            {
                tracing::warn!(job_id = %crate::ids::JobId(row.id), attempt = row.attempt, "lease expired; attempt settled");
                repairs.expired_leases += 1;
            }
        }

        for job_id in
            queue::lost_dispatches(&self.db, now - LOST_DISPATCH_GRACE_MS, BATCH as i64).await?
        {
            let Some(row) = job::Entity::find_by_id(job_id).one(&self.db.orm).await? else {
                continue;
            };
            let dispatch = Dispatch {
                job_id,
                dispatch_id: queue::new_dispatch_id(),
            };
            let mut tx = self.db.begin().await?;
            let n = tx
                .execute(
                    &job::Entity::update_many()
                        .col_expr(
                            job::Column::DispatchId,
                            Expr::value(dispatch.dispatch_id.as_str()),
                        )
                        .filter(job::Column::Id.eq(job_id))
                        .filter(job::Column::Status.eq(JobStatus::Queued.as_str()))
                        .filter(job::Column::DispatchId.eq(row.dispatch_id.clone()))
                        .into_query(),
                )
                .await?;
            if n == 1 {
                tx.append_event(job_id, "redispatched", json!({"status": "queued"}))
                    .await?;
                queue::enqueue(&mut tx, &row.kind, &dispatch, row.priority, now).await?;
                tx.commit().await?;
                tracing::warn!(job_id = %crate::ids::JobId(job_id), "dispatch lost; job dispatched again");
                repairs.redispatched += 1;
            }
        }

        let expired_uploads = upload::Entity::find()
            .filter(upload::Column::JobId.is_null())
            .filter(upload::Column::ExpiresAtMs.lt(now))
            .limit(BATCH)
            .all(&self.db.orm)
            .await?;
        for row in expired_uploads {
            self.purge_upload(row.id, &row.blob_key).await?;
            repairs.expired_uploads += 1;
        }

        repairs.purged_deliveries =
            queue::purge_finished(&self.db, now / 1000 - FINISHED_DELIVERY_TTL_SECS).await?;

        idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::CreatedAtMs.lt(now - IDEMPOTENCY_KEY_TTL_MS))
            .exec(&self.db.orm)
            .await?;

        Ok(repairs)
    }
}
