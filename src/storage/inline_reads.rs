//! On SQLite, a job row read on the calling thread, through a connection of that thread's own
//! (rusqlite), instead of through sqlx: what a status poll costs.
//!
//! Why: sqlx runs each SQLite connection on a thread of its own, so every read is a hand-off to
//! that thread and a wake-up back. On this project's 2-core virtual machines a wake-up of
//! another thread is expensive (an inter-processor interrupt): a poll cost 227 µs of server CPU
//! (6.2k polls/s) where `/healthz` costs 28 µs, while the lookup itself takes 5 µs.
//!
//! The connections are read-only (`query_only`) and never wait: their busy timeout is zero, so a
//! database that is busy for a reader (recovering its WAL after a crash, a checkpoint resetting
//! the log) answers at once with an error, and the caller reads through the pool instead. A read
//! sees the last commit, like the pool's readers (WAL: readers never wait for the writer).

use std::{
    cell::RefCell,
    collections::HashMap,
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};
use sea_orm::{ActiveEnum, EntityName, IdenStatic, Iterable};
use uuid::Uuid;

use super::entities::job;
use crate::domain::JobStatus;

/// Tells apart the databases of one process (tests run several servers in one process).
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's connection to each database it has read, by [`InlineReads::database`].
    static CONNECTIONS: RefCell<HashMap<u64, Connection>> = RefCell::new(HashMap::new());
}

/// Reads of one SQLite database on the calling thread (see the module notes).
#[derive(Debug)]
pub struct InlineReads {
    path: PathBuf,
    database: u64,
    /// `SELECT <every column of ferry_jobs> FROM ferry_jobs WHERE id = ?1`.
    job_by_id: String,
}

impl InlineReads {
    pub fn new(path: PathBuf) -> Self {
        let columns: Vec<String> = job::Column::iter()
            .map(|c| format!("\"{}\"", c.as_str()))
            .collect();
        Self {
            path,
            database: NEXT_DATABASE.fetch_add(1, Ordering::Relaxed),
            job_by_id: format!(
                "SELECT {} FROM \"{}\" WHERE \"id\" = ?1",
                columns.join(", "),
                job::Entity.table_name()
            ),
        }
    }

    /// The job row `id`, if it exists. An error means "read it through the pool".
    pub fn job(&self, id: Uuid) -> rusqlite::Result<Option<job::Model>> {
        // As sqlx logs its statements (target `sqlx::query`), for tests/api/query_plans.rs.
        tracing::debug!(statement = %self.job_by_id, "reading on the calling thread");
        self.with_connection(|conn| {
            conn.prepare_cached(&self.job_by_id)?
                .query_row([id], job_from_row)
                .optional()
        })
    }

    fn with_connection<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        CONNECTIONS.with(|connections| {
            let mut connections = connections.borrow_mut();
            let conn = match connections.entry(self.database) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(self.open()?),
            };
            let result = read(conn);
            if result.is_err() {
                // A broken connection is not kept; the next read opens a new one.
                connections.remove(&self.database);
            }
            result
        })
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        // Not SQLITE_OPEN_READ_ONLY: in WAL mode a reader maps the shared-memory index, which
        // a read-only connection may not be able to create. `query_only` keeps it from writing.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(std::time::Duration::ZERO)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }
}

/// A `ferry_jobs` row as sea-orm would read it (a new column fails to compile here until added).
/// Columns are read by position (`job_by_id` selects them in `job::Column` order): looking them
/// up by name compared every column's name for each of them, 7–8 % of a poll's CPU.
fn job_from_row(row: &Row<'_>) -> rusqlite::Result<job::Model> {
    use job::Column as C;
    let get_status = |row: &Row<'_>| -> rusqlite::Result<JobStatus> {
        let text: String = row.get(C::Status as usize)?;
        JobStatus::try_from_value(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("{e}").into(),
            )
        })
    };
    Ok(job::Model {
        id: row.get(C::Id as usize)?,
        tenant: row.get(C::Tenant as usize)?,
        kind: row.get(C::Kind as usize)?,
        status: get_status(row)?,
        params: row.get(C::Params as usize)?,
        priority: row.get(C::Priority as usize)?,
        timeout_ms: row.get(C::TimeoutMs as usize)?,
        max_attempts: row.get(C::MaxAttempts as usize)?,
        attempt: row.get(C::Attempt as usize)?,
        progress_percent: row.get(C::ProgressPercent as usize)?,
        progress_stage: row.get(C::ProgressStage as usize)?,
        progress_message: row.get(C::ProgressMessage as usize)?,
        progress_updated_at_ms: row.get(C::ProgressUpdatedAtMs as usize)?,
        error: row.get(C::Error as usize)?,
        created_at_ms: row.get(C::CreatedAtMs as usize)?,
        started_at_ms: row.get(C::StartedAtMs as usize)?,
        finished_at_ms: row.get(C::FinishedAtMs as usize)?,
        updated_at_ms: row.get(C::UpdatedAtMs as usize)?,
        run_after_ms: row.get(C::RunAfterMs as usize)?,
        dispatch_id: row.get(C::DispatchId as usize)?,
        lease_owner: row.get(C::LeaseOwner as usize)?,
        lease_expires_at_ms: row.get(C::LeaseExpiresAtMs as usize)?,
        cancel_requested: row.get(C::CancelRequested as usize)?,
        event_seq: row.get(C::EventSeq as usize)?,
        inputs: row.get(C::Inputs as usize)?,
        result_count: row.get(C::ResultCount as usize)?,
        retain_ms: row.get(C::RetainMs as usize)?,
        retain_inputs_ms: row.get(C::RetainInputsMs as usize)?,
        expires_at_ms: row.get(C::ExpiresAtMs as usize)?,
        inputs_expire_at_ms: row.get(C::InputsExpireAtMs as usize)?,
        inputs_deleted_at_ms: row.get(C::InputsDeletedAtMs as usize)?,
        version: row.get(C::Version as usize)?,
        tag: row.get(C::Tag as usize)?,
        rerun_of: row.get(C::RerunOf as usize)?,
        latest_rerun: row.get(C::LatestRerun as usize)?,
        rerun_batch: row.get(C::RerunBatch as usize)?,
        error_code: row.get(C::ErrorCode as usize)?,
        traceparent: row.get(C::Traceparent as usize)?,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use sea_orm::{ActiveModelTrait, EntityTrait, IntoActiveModel};

    use super::*;
    use crate::storage::{Db, lookup::AtMostOne};

    /// A job row with every column set (`filled`) or every optional one empty.
    pub(crate) fn job(id: Uuid, filled: bool) -> job::Model {
        let some = |text: &str| filled.then(|| text.to_owned());
        job::Model {
            id,
            tenant: "radiology".into(),
            kind: "segment".into(),
            status: if filled {
                JobStatus::Running
            } else {
                JobStatus::Queued
            },
            params: r#"{"a":1}"#.into(),
            priority: -3,
            timeout_ms: 1_800_000,
            max_attempts: 5,
            attempt: 2,
            progress_percent: filled.then_some(42.5),
            progress_stage: some("stage"),
            progress_message: some("message é"),
            progress_updated_at_ms: filled.then_some(1_700_000_000_123),
            error: some(r#"{"code":"x"}"#),
            created_at_ms: 1_700_000_000_000,
            started_at_ms: filled.then_some(1_700_000_000_001),
            finished_at_ms: filled.then_some(1_700_000_000_002),
            updated_at_ms: 1_700_000_000_003,
            run_after_ms: 1_700_000_000_004,
            dispatch_id: some("01JDISPATCH0000000000000000"),
            lease_owner: some("worker-1"),
            lease_expires_at_ms: filled.then_some(1_700_000_000_005),
            cancel_requested: filled,
            event_seq: 7,
            inputs: r#"[{"name":"input"}]"#.into(),
            result_count: 3,
            retain_ms: filled.then_some(86_400_000),
            retain_inputs_ms: filled.then_some(0),
            expires_at_ms: filled.then_some(1_700_086_400_002),
            inputs_expire_at_ms: filled.then_some(1_700_000_000_002),
            inputs_deleted_at_ms: filled.then_some(1_700_000_000_006),
            version: some("v3"),
            tag: some("production"),
            rerun_of: filled.then(Uuid::now_v7),
            latest_rerun: filled.then(Uuid::now_v7),
            rerun_batch: filled.then(Uuid::now_v7),
            error_code: some("x"),
            traceparent: some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        }
    }

    async fn migrated_db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let db = Db::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        (dir, db)
    }

    async fn insert_job(db: &Db, filled: bool) -> job::Model {
        let written = job(Uuid::now_v7(), filled);
        written
            .clone()
            .into_active_model()
            .insert(&db.orm)
            .await
            .unwrap();
        written
    }

    #[tokio::test]
    async fn a_job_reads_inline_as_sea_orm_reads_it() {
        let (_dir, db) = migrated_db().await;
        let inline = db.inline_reads.as_deref().expect("SQLite reads inline");
        for filled in [true, false] {
            let written = insert_job(&db, filled).await;
            let by_orm = job::Entity::find_by_id(written.id)
                .at_most_one(&db.orm)
                .await
                .unwrap();
            assert_eq!(by_orm.as_ref(), Some(&written));
            assert_eq!(inline.job(written.id).unwrap(), by_orm);
        }
        assert_eq!(inline.job(Uuid::now_v7()).unwrap(), None);
    }

    #[tokio::test]
    async fn a_job_that_cannot_be_read_inline_is_read_through_the_pool() {
        let (dir, mut db) = migrated_db().await;
        let written = insert_job(&db, true).await;
        // Inline reads of a database that is not there fail...
        let broken = InlineReads::new(dir.path().join("missing").join("ferry.db"));
        assert!(broken.job(written.id).is_err());
        // ...and the job is read all the same.
        db.inline_reads = Some(std::sync::Arc::new(broken));
        assert_eq!(db.find_job(written.id).await.unwrap(), Some(written));
    }
}
