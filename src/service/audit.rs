//! The audit trail: who (key, tenant, client address) did what (the route and the object it
//! named or made) and with what answer, for every request of a tenant's key; never a payload, a
//! parameter or a result. Read by the tenant's admins (`GET /v1/audit`).
//!
//! Rows are written by one task per process, in batches (one statement for every row waiting),
//! without a flush of their own (see [`Writer`]), so that recording costs a request no commit
//! of its own:
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

use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QueryTrait, Set, TransactionTrait, sea_query::SqliteQueryBuilder,
};
use sea_query_sqlx::SqlxBinder;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::ServiceResult;
use crate::{
    storage::{Db, Pool, StorageError, entities::audit_event, lookup::Paged},
    tenancy::{Caller, Tenant},
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
/// The longest a change's answer waits for its row: with the database failing, the answer (a
/// `503`, most likely) must not wait for the trail's write to time out as well.
const CHANGE_WAIT: Duration = Duration::from_secs(2);

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
    /// Hash of (tenant, key, route, object, status) → when this process last recorded that
    /// read.
    recent_reads: Arc<Mutex<HashMap<u64, i64>>>,
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

    /// Records a request that changed something; returns once the row has committed (or after
    /// [`CHANGE_WAIT`], when the database is failing: the row stays queued).
    pub async fn record_change(&self, entry: Entry) {
        let (done, committed) = oneshot::channel();
        let pending = Pending {
            row: row_of(entry),
            done: Some(done),
        };
        let recorded = async {
            if self.queue.send(pending).await.is_ok() {
                let _ = committed.await;
            }
        };
        if tokio::time::timeout(CHANGE_WAIT, recorded).await.is_err() {
            tracing::warn!("the audit trail could not be written in time; the answer goes out");
        }
    }

    /// Whether this process recorded the same read (caller, route, object, answer) less than
    /// [`READ_COALESCE_MS`] ago; if not, notes it as recorded now (the caller then records it
    /// with [`AuditLog::record_read`]). Copies nothing: most reads are repeats.
    pub fn seen_recently(
        &self,
        caller: &Caller,
        route: &str,
        object: Option<&str>,
        status: u16,
    ) -> bool {
        let now = now_ms();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (caller.tenant.as_str(), caller.key_id, route, object, status).hash(&mut hasher);
        let fingerprint = hasher.finish();
        let mut recent = self.recent_reads.lock().expect("audit reads");
        if recent
            .get(&fingerprint)
            .is_some_and(|at| now - at < READ_COALESCE_MS)
        {
            return true;
        }
        if recent.len() >= MAX_REMEMBERED_READS {
            recent.clear();
        }
        recent.insert(fingerprint, now);
        false
    }

    /// Records a read (not seen recently, see [`AuditLog::seen_recently`]); does not wait for
    /// the row.
    pub fn record_read(&self, entry: Entry) {
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
        Ok(query.page(filter.limit, &self.db.reads).await?)
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

/// Where the trail is written, without a flush of its own per batch: a row must survive the
/// Ferry process (`kill -9`), not a power cut in the same instant as the request it records.
///
/// On SQLite through Ferry's own writer connection, switched to `synchronous=NORMAL` for the
/// one insert (in WAL mode the rows reach the log file at once and the disk with the next
/// flush of Ferry's own commits, which stay FULL). Not through another connection: two writer
/// connections wait for each other in SQLite's busy handler, which sleeps, and measured that
/// way a saturated job creation rate halved and its p99 went from 31 to 128 ms. A connection
/// whose switch back fails is closed, never returned to the pool as NORMAL.
///
/// On PostgreSQL with `synchronous_commit` off for these transactions: written to the server
/// at once, flushed by its WAL writer within a fraction of a second.
enum Writer {
    Sqlite(sqlx::SqlitePool),
    Postgres(DatabaseConnection),
}

impl Writer {
    fn of(db: &Db) -> Writer {
        match db.pool() {
            Pool::Sqlite(pool) => Writer::Sqlite(pool.clone()),
            Pool::Postgres(pool) => Writer::Postgres(DatabaseConnection::from(pool.clone())),
        }
    }

    async fn insert(&self, rows: Vec<audit_event::ActiveModel>) -> Result<(), StorageError> {
        let insert = audit_event::Entity::insert_many(rows);
        match self {
            Writer::Sqlite(pool) => {
                let (sql, values) = insert.into_query().build_sqlx(SqliteQueryBuilder);
                let mut conn = pool.acquire().await?;
                let written = async {
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    let inserted = sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                        .execute(&mut *conn)
                        .await;
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    inserted.map(drop)
                }
                .await;
                if written.is_err() {
                    // Its setting is unknown: closed rather than reused.
                    drop(conn.detach());
                }
                Ok(written?)
            }
            Writer::Postgres(conn) => {
                let txn = conn.begin().await?;
                txn.execute_unprepared("SET LOCAL synchronous_commit TO OFF")
                    .await?;
                insert.exec_without_returning(&txn).await?;
                Ok(txn.commit().await?)
            }
        }
    }
}

/// The writer: waits for a row, gathers what else arrives within [`FLUSH_EVERY`] (up to
/// [`MAX_BATCH`]) — or until a change's row arrives, whose request waits — writes them in one
/// statement, and tells the waiting requests.
async fn write_rows(db: Db, mut rows: mpsc::Receiver<Pending>) {
    let writer = Writer::of(&db);
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
        if let Err(e) = writer.insert(models).await {
            tracing::error!(error = %e, rows = count, "could not write to the audit trail");
        }
        for done in waiting.into_iter().flatten() {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of the trail is written through Ferry's own SQLite connection with
    /// `synchronous=NORMAL`; the connection is FULL again afterwards, so every later commit of
    /// Ferry's is flushed as before.
    #[tokio::test]
    async fn ferrys_connection_flushes_every_commit_again_after_a_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let db = Db::connect(&url).await.expect("open");
        db.migrate().await.expect("migrate");
        let audit = AuditLog::start(db.clone());
        audit
            .record_change(Entry {
                tenant: Tenant::default_tenant(),
                key_id: None,
                action: "POST /v1/jobs".into(),
                object_id: Some("job_x".into()),
                status: 202,
                client_addr: None,
            })
            .await;
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!("a SQLite database")
        };
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .expect("PRAGMA synchronous");
        assert_eq!(synchronous, 2, "FULL");
        let (rows, _) = audit
            .list(
                &Tenant::default_tenant(),
                AuditFilter {
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .expect("list");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].object_id.as_deref(), Some("job_x"));
    }
}
