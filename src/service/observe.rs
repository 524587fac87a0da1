//! What `GET /metrics` reports about the queue, read from the database at each scrape so that
//! every replica reports the same numbers (see [`crate::metrics`]); and this process's upload
//! slots, which are its own.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use super::{ServiceResult, Services};
use crate::{
    domain::JobStatus,
    metrics::{QueueSnapshot, QueuedIn},
    storage::entities::job,
    time::now_ms,
};

impl Services {
    /// Sets the queue's gauges from the database and renders every metric.
    pub async fn render_metrics(&self) -> ServiceResult<String> {
        let snapshot = self.queue_snapshot().await?;
        self.db.metrics().set_queue(&snapshot);
        let capacity = self.settings.limits.max_concurrent_uploads;
        let free = self.upload_slots.available_permits();
        self.db
            .metrics()
            .upload_slots(capacity.saturating_sub(free), capacity);
        Ok(self.db.metrics().render())
    }

    /// Queued jobs per kind and version, running jobs per worker, live workers. Two grouped
    /// reads on the jobs' status index, and the live workers' rows.
    async fn queue_snapshot(&self) -> ServiceResult<QueueSnapshot> {
        let now = now_ms();
        let queued: Vec<(String, Option<String>, i64, Option<i64>)> = job::Entity::find()
            .select_only()
            .column(job::Column::Kind)
            .column(job::Column::Version)
            .column_as(Expr::col(job::Column::Id).count(), "n")
            .column_as(Expr::col(job::Column::CreatedAtMs).min(), "oldest")
            .filter(job::Column::Status.eq(JobStatus::Queued))
            .group_by(job::Column::Kind)
            .group_by(job::Column::Version)
            .into_tuple()
            .all(&self.db.reads)
            .await?;
        // Every queue of the configuration, at zero unless jobs wait in it.
        let mut queues: BTreeMap<(String, Option<String>), QueuedIn> = BTreeMap::new();
        for (kind, defaults) in self.kinds.iter() {
            let versions: Vec<Option<String>> = if defaults.versions.is_empty() {
                vec![None]
            } else {
                defaults.versions.keys().cloned().map(Some).collect()
            };
            for version in versions {
                queues.insert(
                    (kind.clone(), version.clone()),
                    QueuedIn {
                        kind: kind.clone(),
                        version,
                        count: 0,
                        oldest_created_at_ms: None,
                    },
                );
            }
        }
        for (kind, version, count, oldest) in queued {
            queues.insert(
                (kind.clone(), version.clone()),
                QueuedIn {
                    kind,
                    version,
                    count,
                    oldest_created_at_ms: oldest,
                },
            );
        }
        let running_rows: Vec<(Option<String>, i64)> = job::Entity::find()
            .select_only()
            .column(job::Column::LeaseOwner)
            .column_as(Expr::col(job::Column::Id).count(), "n")
            .filter(job::Column::Status.eq(JobStatus::Running))
            .group_by(job::Column::LeaseOwner)
            .into_tuple()
            .all(&self.db.reads)
            .await?;
        let live = self.live_workers().await?;
        let mut running: BTreeMap<String, i64> = live.iter().map(|w| (w.id.clone(), 0)).collect();
        for (owner, count) in running_rows {
            // A running job always has a lease owner; a row without one would be a bug, shown
            // rather than hidden.
            running.insert(owner.unwrap_or_default(), count);
        }
        Ok(QueueSnapshot {
            queued: queues.into_values().collect(),
            running: running.into_iter().collect(),
            workers_live: live.len() as i64,
            now_ms: now,
        })
    }
}
