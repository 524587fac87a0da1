//! Running slots per tenant (`max_running_jobs`): how many of a tenant's jobs run at once,
//! across every worker. Only counted when some tenant has a limit
//! ([`crate::config::Settings::limits_running_jobs`]); otherwise a claim costs what it always
//! did.
//!
//! A delivery of a job whose tenant already runs its limit does not wait in the worker (it
//! would hold a slot of the worker's concurrency that another tenant's job could use): the job
//! is *parked* — still queued, with no dispatch and `run_after_ms` = [`PARKED`] — and says so
//! (`waiting_for`). When one of the tenant's attempts ends, its worker hands parked jobs back to
//! the queue, as many as there are free slots, most urgent first; the reconciler does the same
//! on every pass, for attempts that ended with their process (a lease that expired) and for a
//! limit raised or removed by a new configuration.
//!
//! The count and the claim happen in one transaction: one writer at a time on SQLite, and on
//! PostgreSQL a lock per tenant held to the commit, so two workers cannot both take the last
//! slot.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, Query},
};
use uuid::Uuid;

use super::{
    ServiceResult, Services,
    lifecycle::{self, Applied, Dispatchable, Holder, PARKED, Transition},
};
use crate::{
    domain::JobStatus,
    storage::{Tx, TxInner, entities::job, lookup::AtMostOne},
};

/// Parked jobs dispatched by one release at most (per tenant and pass).
const RELEASE_BATCH: u64 = 100;

impl Services {
    /// Claims `job_id` for `holder` if its tenant has a free running slot; parks it otherwise
    /// (then `None`, like a stale delivery: the worker moves on).
    pub(super) async fn claim_within_limit(
        &self,
        job_id: Uuid,
        holder: Holder<'_>,
        claim: Transition,
        now: i64,
    ) -> ServiceResult<Option<Applied>> {
        let tenant: Option<String> = job::Entity::find_by_id(job_id)
            .select_only()
            .column(job::Column::Tenant)
            .into_tuple()
            .at_most_one(&self.db.reads)
            .await?;
        let Some(tenant) = tenant else {
            return Ok(None);
        };
        let limit = self.settings.tenant_limits(&tenant).max_running_jobs;
        if limit == 0 {
            return self.transition(job_id, holder, claim, now).await;
        }
        let mut tx = self.db.begin().await?;
        let running = running_jobs(&mut tx, &tenant).await?;
        let transition = if running >= limit {
            Transition::Park
        } else {
            claim
        };
        let parks = matches!(transition, Transition::Park);
        let applied = lifecycle::apply(&mut tx, job_id, holder, transition, now).await?;
        if applied.is_none() {
            return Ok(None);
        }
        tx.commit().await?;
        if parks {
            tracing::debug!(%tenant, running, limit, "tenant at max_running_jobs; job parked");
            return Ok(None);
        }
        Ok(applied)
    }

    /// Hands `tenant`'s parked jobs back to the queue, as many as it has free running slots
    /// (all of them if it has no limit any more); how many. Best effort after an attempt ends:
    /// what it misses, the reconciler's next pass releases.
    pub async fn release_running_slots(&self, tenant: &str, now: i64) -> ServiceResult<usize> {
        let limit = self.settings.tenant_limits(tenant).max_running_jobs;
        // Read before the transaction (on SQLite the writer is one connection): the guard of
        // each redispatch checks that the job is still parked.
        let parked = parked()
            .filter(job::Column::Tenant.eq(tenant))
            .order_by_desc(job::Column::Priority)
            .order_by_asc(job::Column::CreatedAtMs)
            .limit(RELEASE_BATCH)
            .all(&self.db.reads)
            .await?;
        if parked.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin().await?;
        let free = if limit == 0 {
            RELEASE_BATCH
        } else {
            let running = running_jobs(&mut tx, tenant).await?;
            let dispatched = dispatched_jobs(&mut tx, tenant).await?;
            limit.saturating_sub(running + dispatched)
        };
        let mut released = 0;
        for row in &parked {
            if released >= free {
                break;
            }
            let redispatch = Transition::Redispatch(Dispatchable::from(row));
            if lifecycle::apply(&mut tx, row.id, Holder::Dispatch(None), redispatch, now)
                .await?
                .is_some()
            {
                released += 1;
            }
        }
        if released == 0 {
            return Ok(0);
        }
        tx.commit().await?;
        tracing::debug!(%tenant, released, "parked jobs handed back to the queue");
        Ok(released as usize)
    }

    /// Tenants with parked jobs (for the reconciler), through the index on (status,
    /// dispatch_id, run_after_ms).
    pub async fn tenants_with_parked_jobs(&self) -> ServiceResult<Vec<String>> {
        Ok(parked()
            .select_only()
            .column(job::Column::Tenant)
            .distinct()
            .into_tuple()
            .all(&self.db.orm)
            .await?)
    }
}

/// Parked jobs (queued, no dispatch, never due by time), found through the index on (status,
/// dispatch_id, run_after_ms).
fn parked() -> sea_orm::Select<job::Entity> {
    job::Entity::find()
        .filter(job::Column::Status.eq(JobStatus::Queued))
        .filter(job::Column::DispatchId.is_null())
        .filter(job::Column::RunAfterMs.eq(PARKED))
}

/// The tenant's running jobs, counted in `tx` after taking the tenant's slot lock (PostgreSQL;
/// SQLite's one writer is lock enough).
async fn running_jobs(tx: &mut Tx, tenant: &str) -> ServiceResult<u64> {
    if matches!(tx.inner, TxInner::Postgres(_)) {
        tx.execute(Query::select().expr(Expr::cust_with_values(
            "pg_advisory_xact_lock(hashtext($1))",
            [format!("ferry-running:{tenant}")],
        )))
        .await?;
    }
    count(tx, tenant, JobStatus::Running, false).await
}

/// The tenant's queued jobs that have a dispatch (handed back from parking, or never parked):
/// each is about to be claimed or parked, so they count as taking the free slots — releasing
/// more would only park them again.
async fn dispatched_jobs(tx: &mut Tx, tenant: &str) -> ServiceResult<u64> {
    count(tx, tenant, JobStatus::Queued, true).await
}

async fn count(
    tx: &mut Tx,
    tenant: &str,
    status: JobStatus,
    only_dispatched: bool,
) -> ServiceResult<u64> {
    let mut query = Query::select();
    query
        .expr(Expr::cust("COUNT(*)"))
        .expr(Expr::val(0i64))
        .from(job::Entity)
        .and_where(job::Column::Tenant.eq(tenant))
        .and_where(job::Column::Status.eq(status));
    if only_dispatched {
        query.and_where(job::Column::DispatchId.is_not_null());
    }
    let (n, _): (i64, i64) = tx.fetch_optional_row(&query).await?.unwrap_or_default();
    Ok(n.max(0) as u64)
}
