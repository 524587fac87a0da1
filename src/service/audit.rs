//! The audit trail: who (key, tenant, client address) did what (the route and the object it
//! named or made) and with what answer, for every request of a tenant's key; never a payload, a
//! parameter or a result. Read by the tenant's admins (`GET /v1/audit`).
//!
//! Rows are written by one task per process, in batches (one statement for every row waiting),
//! so that recording costs a request no commit of its own:
//! - a request that changes something (any method but GET and HEAD) waits until its row has
//!   committed before it is answered: an acknowledged change is in the trail;
//! - a read does not wait, and repeated reads are coalesced: the same key reading the same
//!   object by the same route is recorded once per [`READ_COALESCE_MS`] per process (a client
//!   polling a job every second leaves one row a minute, not sixty). A read is recorded
//!   within about [`FLUSH_EVERY`]; a crash in that window loses the record of that read (never
//!   of a change).

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::ServiceResult;
use crate::{
    storage::{Db, entities::audit_event},
    tenancy::Tenant,
    time::now_ms,
};

/// A key's reads of one object by one route are recorded at most this often (per process).
pub const READ_COALESCE_MS: i64 = 60_000;
/// How long rows wait to be batched with others.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Rows written in one statement at most (SQLite allows 32,766 bound values; 8 per row).
const MAX_BATCH: usize = 1000;
/// Rows waiting to be written; a read that finds the queue full is not recorded (and says so
/// in the log), a change waits for room.
const QUEUE: usize = 20_000;
/// Coalescing memory; beyond it, it starts over (reads are then recorded again once).
const MAX_REMEMBERED_READS: usize = 100_000;

/// One request, as the trail records it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub tenant: Tenant,
    pub key_id: Option<Uuid>,
    /// `METHOD /route/{template}` (HEAD as GET).
    pub action: String,
    pub object_id: Option<String>,
    pub status: u16,
    pub client_addr: Option<String>,
}

/// Which rows `GET /v1/audit` returns; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub key_id: Option<Uuid>,
    pub action: Option<String>,
    pub object_id: Option<String>,
    /// Only rows older than this one (the `next` cursor).
    pub before_id: Option<i64>,
    pub limit: u64,
}

struct Pending {
    row: audit_event::ActiveModel,
    /// Told once the row has committed (or failed to), for a change's request.
    done: Option<oneshot::Sender<()>>,
}

/// This process's writer of the trail (see the module notes). Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    db: Db,
    queue: mpsc::Sender<Pending>,
    /// Hash of (tenant, key, action, object) → when this process last recorded that read.
    recent_reads: Arc<Mutex<HashMap<u64, i64>>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl AuditLog {
    /// Starts the writer task (on the current runtime); it ends once every handle is dropped
    /// and the queue is written.
    pub fn start(db: Db) -> AuditLog {
        let (queue, rows) = mpsc::channel(QUEUE);
        tokio::spawn(write_rows(db.clone(), rows));
        AuditLog {
            db,
            queue,
            recent_reads: Arc::default(),
        }
    }

    /// Records a request that changed something; returns once the row has committed.
    pub async fn record_change(&self, entry: Entry) {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            row: row_of(entry),
            done: Some(done),
        };
        if self.queue.send(pending).await.is_ok() {
            let _ = committed.await;
        }
    }

    /// Records a read, unless this process recorded the same read less than
    /// [`READ_COALESCE_MS`] ago; does not wait for the row.
    pub fn record_read(&self, entry: Entry) {
        let now = now_ms();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            entry.tenant.as_str(),
            entry.key_id,
            &entry.action,
            &entry.object_id,
            entry.status,
        )
            .hash(&mut hasher);
        let fingerprint = hasher.finish();
        {
            let mut recent = self.recent_reads.lock().expect("audit reads");
            if recent
                .get(&fingerprint)
                .is_some_and(|at| now - at < READ_COALESCE_MS)
            {
                return;
            }
            if recent.len() >= MAX_REMEMBERED_READS {
                recent.clear();
            }
            recent.insert(fingerprint, now);
        }
        let pending = Pending {
            row: row_of(entry),
            done: None,
        };
        if self.queue.try_send(pending).is_err() {
            tracing::warn!("the audit trail's queue is full: a read was not recorded");
        }
    }

    /// `tenant`'s rows, newest first; and whether more follow.
    pub async fn list(
        &self,
        tenant: &Tenant,
        filter: AuditFilter,
    ) -> ServiceResult<(Vec<audit_event::Model>, bool)> {
        let mut query = audit_event::Entity::find()
            .filter(audit_event::Column::Tenant.eq(tenant.as_str()))
            .order_by_desc(audit_event::Column::Id);
        if let Some(key) = filter.key_id {
            query = query.filter(audit_event::Column::KeyId.eq(key));
        }
        if let Some(action) = filter.action {
            query = query.filter(audit_event::Column::Action.eq(action));
        }
        if let Some(object) = filter.object_id {
            query = query.filter(audit_event::Column::ObjectId.eq(object));
        }
        if let Some(before) = filter.before_id {
            query = query.filter(audit_event::Column::Id.lt(before));
        }
        let mut rows = query.limit(filter.limit + 1).all(&self.db.reads).await?;
        let more = rows.len() as u64 > filter.limit;
        rows.truncate(filter.limit as usize);
        Ok((rows, more))
    }
}

fn row_of(entry: Entry) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        tenant: Set(entry.tenant.as_str().to_owned()),
        key_id: Set(entry.key_id),
        action: Set(entry.action),
        object_id: Set(entry.object_id),
        status: Set(i32::from(entry.status)),
        client_addr: Set(entry.client_addr),
        at_ms: Set(now_ms()),
        ..Default::default()
    }
}

/// The writer: waits for a row, gathers what else arrives within [`FLUSH_EVERY`] (up to
/// [`MAX_BATCH`]) — or until a change's row arrives, whose request waits — writes them in one
/// statement, and tells the waiting requests.
async fn write_rows(db: Db, mut rows: mpsc::Receiver<Pending>) {
    while let Some(first) = rows.recv().await {
        let mut batch = vec![first];
        if batch[0].done.is_none() {
            let deadline = tokio::time::Instant::now() + FLUSH_EVERY;
            while let Ok(Some(more)) = tokio::time::timeout_at(deadline, rows.recv()).await {
                let urgent = more.done.is_some();
                batch.push(more);
                if urgent || batch.len() >= MAX_BATCH {
                    break;
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match rows.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let (models, waiting): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.row, p.done)).unzip();
        let count = models.len();
        if let Err(e) = audit_event::Entity::insert_many(models)
            .exec_without_returning(&db.orm)
            .await
        {
            tracing::error!(error = %e, rows = count, "could not write to the audit trail");
        }
        for done in waiting.into_iter().flatten() {
            let _ = done.send(());
        }
    }
}
