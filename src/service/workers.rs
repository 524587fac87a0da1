//! The worker processes alive and what each serves (`ferry_workers`). A worker process registers
//! when it starts, renews its `last_seen_ms` every third of `queue.lease_ttl`, and removes its
//! row when it stops; one not seen for a whole `lease_ttl` is gone (killed), and its row is
//! deleted an hour later.
//!
//! What the live workers serve answers "why is this job still queued?": a job for a version no
//! live worker serves stays queued (it runs as soon as such a worker starts) and says so in its
//! `waiting_for`. Each process reads the live set at most once per [`SERVED_FRESH`], so status
//! polls do not each cost a query.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    sea_query::{Expr, OnConflict},
};

use super::{ServiceResult, Services, jobs::JobView};
use crate::{
    domain::{JobStatus, serve_key},
    service::lifecycle::PARKED,
    storage::entities::worker,
    time::now_ms,
};

/// How long a process trusts its last read of what live workers serve.
const SERVED_FRESH: Duration = Duration::from_secs(1);
/// Rows of workers gone this long are deleted.
const FORGET_AFTER_MS: i64 = 3600 * 1000;

/// What live workers serve (`kind` or `kind@version`).
pub type Served = Arc<HashSet<String>>;

/// This process's last read of what live workers serve, and when (see [`Services::served`]).
#[derive(Clone, Debug, Default)]
pub struct ServedCache(Arc<Mutex<Option<(Instant, Served)>>>);

/// A worker process as it registers.
#[derive(Clone, Debug)]
pub struct WorkerProcess {
    pub id: String,
    pub hostname: String,
    pub pid: i64,
    /// `kind` or `kind@version`, for each handler it runs.
    pub serves: Vec<String>,
}

impl Services {
    fn live_since(&self, now: i64) -> i64 {
        now - self.lease_ttl_ms()
    }

    /// Records `process` as alive now (again, if its row was lost).
    pub async fn register_worker(&self, process: &WorkerProcess) -> ServiceResult<()> {
        let now = now_ms();
        let row = worker::ActiveModel {
            id: Set(process.id.clone()),
            hostname: Set(process.hostname.clone()),
            pid: Set(process.pid),
            started_at_ms: Set(now),
            last_seen_ms: Set(now),
            serves: Set(serde_json::to_string(&process.serves).expect("strings serialize")),
        };
        worker::Entity::insert(row)
            .on_conflict(
                OnConflict::column(worker::Column::Id)
                    .update_columns([worker::Column::LastSeenMs, worker::Column::Serves])
                    .to_owned(),
            )
            .exec_without_returning(&self.db.orm)
            .await?;
        Ok(())
    }

    /// Renews `process`'s `last_seen_ms`; registers it again if its row is gone.
    pub async fn worker_alive(&self, process: &WorkerProcess) -> ServiceResult<()> {
        let renewed = worker::Entity::update_many()
            .col_expr(worker::Column::LastSeenMs, Expr::value(now_ms()))
            .filter(worker::Column::Id.eq(process.id.as_str()))
            .exec(&self.db.orm)
            .await?;
        if renewed.rows_affected == 0 {
            self.register_worker(process).await?;
        }
        Ok(())
    }

    /// Removes `process`'s row: it stops.
    pub async fn unregister_worker(&self, process: &WorkerProcess) -> ServiceResult<()> {
        worker::Entity::delete_many()
            .filter(worker::Column::Id.eq(process.id.as_str()))
            .exec(&self.db.orm)
            .await?;
        Ok(())
    }

    /// The live worker processes, longest running first.
    pub async fn live_workers(&self) -> ServiceResult<Vec<worker::Model>> {
        Ok(worker::Entity::find()
            .filter(worker::Column::LastSeenMs.gte(self.live_since(now_ms())))
            .order_by_asc(worker::Column::LastSeenMs)
            .limit(10_000)
            .all(&self.db.reads)
            .await?)
    }

    /// What the live workers serve (`kind` or `kind@version`), read at most once per
    /// [`SERVED_FRESH`] by this process.
    pub async fn served(&self) -> ServiceResult<Served> {
        if let Some((at, served)) = self.served_cache.0.lock().expect("not poisoned").as_ref()
            && at.elapsed() < SERVED_FRESH
        {
            return Ok(served.clone());
        }
        let mut served = HashSet::new();
        for row in self.live_workers().await? {
            served.extend(serves_of(&row));
        }
        let served = Arc::new(served);
        *self.served_cache.0.lock().expect("not poisoned") = Some((Instant::now(), served.clone()));
        Ok(served)
    }

    /// Marks the queued jobs among `views` that no live worker serves (see the module notes).
    pub(super) async fn mark_unserved(&self, views: &mut [JobView]) -> ServiceResult<()> {
        let waiting =
            |v: &JobView| v.job.status == JobStatus::Queued && v.job.run_after_ms != PARKED;
        if !views.iter().any(waiting) {
            return Ok(());
        }
        let served = self.served().await?;
        for view in views.iter_mut().filter(|v| waiting(v)) {
            let key = serve_key(&view.job.kind, view.job.version.as_deref());
            if !served.contains(&key) {
                view.unserved = Some(key);
            }
        }
        Ok(())
    }

    /// Deletes the rows of workers gone for a while; how many.
    pub(super) async fn forget_gone_workers(&self, now: i64) -> ServiceResult<u64> {
        let deleted = worker::Entity::delete_many()
            .filter(worker::Column::LastSeenMs.lt(now - FORGET_AFTER_MS))
            .exec(&self.db.orm)
            .await?;
        Ok(deleted.rows_affected)
    }
}

/// What a worker row serves.
pub fn serves_of(row: &worker::Model) -> Vec<String> {
    serde_json::from_str(&row.serves).unwrap_or_default()
}
