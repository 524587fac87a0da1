//! Uploads held by jobs. One upload may be the input of any number of jobs (several models on
//! one CT study, re-runs) without its bytes being copied: each job that names it holds it, and
//! `ferry_uploads.job_count` counts the holds. The count changes only in the transactions that
//! create a job ([`take`]), delete one, or delete a job's inputs ([`release`]), so it is exact.
//!
//! An upload is deleted when the last hold goes: [`release`] marks it due (`expires_at_ms = 0`)
//! in the releasing transaction, and [`Services::purge_released`] deletes its bytes, then its
//! row, after the commit. If the process dies in between, the reconciler's sweep of expired
//! uploads finishes it. A marked upload can never be taken again (see [`take`]), so no job is
//! created on bytes that are going.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QuerySelect, QueryTrait,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use super::{ServiceResult, Services};
use crate::storage::{StorageError, Tx, entities::upload};

/// Uploads taken or released per statement.
const BATCH: usize = 200;

/// In a job's creating transaction: takes a hold on each of `tenant`'s uploads `ids`, which
/// must still be held by another job or unexpired. Returns whether every one was taken (if
/// not, one was deleted or expired meanwhile, and the caller rolls back).
pub(super) async fn take(
    tx: &mut Tx,
    tenant: &str,
    ids: &[Uuid],
    now: i64,
) -> Result<bool, StorageError> {
    for batch in ids.chunks(BATCH) {
        let taken = tx
            .execute(
                &upload::Entity::update_many()
                    .col_expr(
                        upload::Column::JobCount,
                        Expr::col(upload::Column::JobCount).add(1),
                    )
                    .col_expr(
                        upload::Column::ExpiresAtMs,
                        Expr::value(Option::<i64>::None),
                    )
                    .filter(upload::Column::Id.is_in(batch.iter().copied()))
                    .filter(upload::Column::Tenant.eq(tenant))
                    .filter(
                        upload::Column::JobCount
                            .gt(0)
                            .or(upload::Column::ExpiresAtMs.gt(now)),
                    )
                    .into_query(),
            )
            .await?;
        if taken != batch.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// In the transaction that deletes a job, or its inputs: lets go of the job's uploads `ids`,
/// marking those no job holds any more for deletion. The caller makes sure a job releases its
/// uploads once (its `inputs_deleted_at_ms`, set in the same transaction).
pub(super) async fn release(tx: &mut Tx, ids: &[Uuid]) -> Result<(), StorageError> {
    for batch in ids.chunks(BATCH) {
        tx.execute(
            &upload::Entity::update_many()
                .col_expr(
                    upload::Column::JobCount,
                    Expr::col(upload::Column::JobCount).sub(1),
                )
                // Both sides read the row as it was before the update.
                .col_expr(
                    upload::Column::ExpiresAtMs,
                    Expr::cust("CASE WHEN job_count <= 1 THEN 0 ELSE NULL END"),
                )
                .filter(upload::Column::Id.is_in(batch.iter().copied()))
                .filter(upload::Column::JobCount.gt(0))
                .into_query(),
        )
        .await?;
    }
    Ok(())
}

impl Services {
    /// After a [`release`] committed: deletes the bytes, then the rows, of those of `ids` that no
    /// job holds any more. Returns how many went.
    pub(super) async fn purge_released(&self, ids: &[Uuid]) -> ServiceResult<usize> {
        let mut purged = 0;
        for batch in ids.chunks(BATCH) {
            let released: Vec<(Uuid, String)> = upload::Entity::find()
                .select_only()
                .columns([upload::Column::Id, upload::Column::BlobKey])
                .filter(upload::Column::Id.is_in(batch.iter().copied()))
                .filter(upload::Column::JobCount.eq(0))
                .filter(upload::Column::ExpiresAtMs.eq(0))
                .into_tuple()
                .all(&self.db.orm)
                .await?;
            for (id, blob_key) in released {
                self.purge_upload(id, &blob_key).await?;
                purged += 1;
            }
        }
        Ok(purged)
    }
}
