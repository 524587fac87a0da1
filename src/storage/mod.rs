//! The metadata database: one sqlx pool shared by sea-orm (reads, single-statement writes) and by
//! [`Tx`] (multi-statement writes, including the apalis enqueue that must commit or roll back with
//! them). A sea-orm transaction does not expose its sqlx connection, hence `Tx` binds sea-query
//! statements itself.
//!
//! PostgreSQL (`postgres://…`) uses the same tables, made by the same migrations, for scale-out:
//! many API replicas and workers share it.
//!
//! Durability: SQLite runs in WAL mode with `synchronous=FULL`, so a commit has reached the disk
//! before Ferry answers 2xx (NORMAL could lose the last commits on power loss, which would break
//! "an acknowledged job is never lost"). Only apalis' own connections, which write nothing but its
//! delivery bookkeeping, commit without a flush of their own (see [`Db::connect`]). Writes take
//! the lock up front (`BEGIN IMMEDIATE`) so concurrent writers queue on the busy timeout instead
//! of failing with SQLITE_BUSY on upgrade.

pub mod changes;
pub mod entities;
pub mod inline_reads;
pub mod lookup;
pub mod outbox;
pub mod planner_stats;
pub mod row_cache;
pub mod tenancy;

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use anyhow::Context;
use ferry_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    DatabaseConnection, EntityTrait,
    sea_query::{Alias, Expr, PostgresQueryBuilder, Query, SqliteQueryBuilder},
};
use sea_query_sqlx::SqlxBinder;
use sqlx::{
    PgPool, Postgres, Sqlite, SqlitePool,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

/// Serializes migrations of processes starting at once against one PostgreSQL database.
const MIGRATION_LOCK: i64 = 0x6665_7272_795f_6d67; // "ferry_mg"
/// How long a request waits for a database connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
use uuid::Uuid;

use crate::{
    metrics::{JobMove, Metrics},
    time::now_ms,
};
use changes::{JobChanges, QueueWakeups};
use entities::job;
use inline_reads::InlineReads;
use lookup::AtMostOne;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Orm(#[from] sea_orm::DbErr),
    #[error("queue error: {0}")]
    Queue(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StorageError {
    /// True when the database could not be reached at all (as opposed to a bad statement):
    /// callers answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Sqlx(e) => sqlx_unavailable(e),
            StorageError::Orm(e) => match e {
                sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_) => true,
                sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
                | sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => sqlx_unavailable(e),
                _ => false,
            },
            StorageError::Queue(_) => false,
        }
    }
}

fn sqlx_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        // A connection that could not be set up: what answered was not PostgreSQL speaking its
        // protocol (a proxy or load balancer in front of a database that is away answers the
        // SSLRequest with garbage or nothing), or TLS failed. Seen when the database goes away
        // while the pool opens connections; a 500 would blame the request.
        sqlx::Error::Protocol(_) | sqlx::Error::Tls(_) => true,
        // PostgreSQL shutting down or terminating our session (class 57: operator intervention;
        // 08: connection exception).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("57") || c.starts_with("08")),
        _ => false,
    }
}

/// Which database family the pool talks to; each has its own dispatch queue implementation.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// SQLite read connections. Measured on 2 cores with 32 polling connections: 1 → 6.7k req/s,
/// 2 → 9.3k, 4 → 13.2k (p99 3.4 ms), 8 → 14.4k (p99 4.2 ms), 16 → 13.2k.
const SQLITE_READERS: u32 = 4;
/// PostgreSQL connections for reads, beside the 16 of the main pool.
const PG_READERS: u32 = 8;

#[derive(Clone, Debug)]
pub struct Db {
    /// Every statement of Ferry's own, writes and reads that must see the writer's state.
    pub orm: DatabaseConnection,
    /// Single-statement reads that need no transaction (lists, status polls): on SQLite a pool
    /// of read-only connections beside the one writer (status polls read through it when their
    /// read on the calling thread fails, see [`inline_reads`]); on PostgreSQL a pool of its own.
    pub reads: DatabaseConnection,
    pool: Pool,
    /// The pool behind `reads`, for reads written in SQL.
    read_pool: Pool,
    /// The connections apalis' workers use (the same pool on PostgreSQL).
    queue_pool: Pool,
    /// Announces committed job changes to waiting requests (see [`changes`]).
    changes: JobChanges,
    /// Wakes this process's queue consumers when a dispatch commits (SQLite; see [`changes`]).
    queue_wakeups: QueueWakeups,
    /// SQLite: job rows read on the calling thread (see [`inline_reads`]).
    inline_reads: Option<Arc<InlineReads>>,
    /// This process's metrics: a transaction counts the job moves it made when it commits.
    metrics: Metrics,
}

impl Db {
    pub async fn connect(url: &str) -> anyhow::Result<Db> {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or(url.strip_prefix("sqlite:"))
        {
            let path = path.split('?').next().unwrap_or(path);
            if let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("invalid SQLite URL {url:?}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            // Ferry's own statements share ONE connection. SQLite has a single writer anyway,
            // and sqlx hands the connection out first come, first served, whereas SQLite's busy
            // handler lets waiting writers starve: with one pool of 16 connections, the queue's
            // fetch waited up to 1.5 s behind API writes and dispatch latency reached seconds
            // under load. No Ferry code holds it across anything but its own statements.
            // No pool here pings a connection before handing it out (sqlx's default): an SQLite
            // connection is a file opened by this process, which nothing outside can break, so
            // the ping, a round trip to the connection's thread, checked nothing, and on this
            // one connection every transaction waited for it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .connect_with(options.clone())
                .await
                .with_context(|| format!("cannot open SQLite database {url:?}"))?;
            // apalis gets connections of its own. Their commits are not flushed to disk one by one
            // (`synchronous=NORMAL`: WAL frames reach the disk at the next commit of Ferry's
            // connection, which is FULL, or at a checkpoint). They only write apalis' delivery
            // bookkeeping (fetched, done, worker heartbeats), never anything a client was told: the
            // dispatch itself is inserted by Ferry's own transaction. A power cut can at most undo
            // a few of those marks, and Ferry already lives with that state being wrong: a delivery
            // fetched again is stale (`service::lifecycle`'s guards), one lost is dispatched again
            // by the reconciler. A `kill -9` loses nothing either way. That saves disk flushes per
            // job (2 of apalis' commits per job, beside Ferry's 3). Sharing Ferry's one connection
            // instead was faster, but was not kept after a lease was lost in one run; that loss
            // fits a bug fixed since (a renewal awaited in place of the publishing it renewed
            // for, see `worker::attempt::keeping_lease`) and the sharing was not measured again
            // (README, Benchmarks: "Tried and not kept"). (An earlier reason, that apalis holds a
            // connection while it waits for in-flight tasks on shutdown, does not hold for
            // apalis-sqlite 1.0: its `persist.rs` opens only short transactions.)
            let queue_pool = SqlitePoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .connect_with(options.clone().synchronous(SqliteSynchronous::Normal))
                .await
                .with_context(|| format!("cannot open SQLite database {url:?}"))?;
            // Reads get connections of their own: in WAL mode readers do not wait for the
            // writer, so a status poll never queues behind a commit. `query_only` makes sure
            // nothing writes through them.
            let reads = SqlitePoolOptions::new()
                .max_connections(SQLITE_READERS)
                .acquire_timeout(Duration::from_secs(30))
                .test_before_acquire(false)
                .connect_with(options.clone().pragma("query_only", "true"))
                .await
                .with_context(|| format!("cannot open SQLite database {url:?}"))?;
            let orm = DatabaseConnection::from(pool.clone());
            return Ok(Db {
                orm,
                reads: DatabaseConnection::from(reads.clone()),
                read_pool: Pool::Sqlite(reads),
                pool: Pool::Sqlite(pool),
                queue_pool: Pool::Sqlite(queue_pool),
                changes: JobChanges::with_backstop(changes::SQLITE_BACKSTOP),
                queue_wakeups: QueueWakeups::default(),
                inline_reads: Some(Arc::new(InlineReads::new(
                    options.get_filename().to_owned(),
                ))),
                metrics: Metrics::new(),
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = pg_connect_options(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // Connections killed by the server (restart, pg_terminate_backend) are noticed
                // before use rather than failing a write. (Checking only connections idle for a
                // while, as the read pool does, measured no faster: see the README, Benchmarks,
                // "Fewer round trips".)
                .test_before_acquire(true)
                .connect_with(options.clone())
                .await
                .with_context(|| format!("cannot connect to PostgreSQL at {}", redact(url)))?;
            // Status polls and lists: a pool of their own, so that reads never wait for a
            // connection behind writes.
            let reads = pg_read_pool_options()
                .max_connections(PG_READERS)
                .connect_lazy_with(options);
            let orm = DatabaseConnection::from(pool.clone());
            return Ok(Db {
                reads: DatabaseConnection::from(reads.clone()),
                read_pool: Pool::Postgres(reads),
                orm,
                pool: Pool::Postgres(pool.clone()),
                queue_pool: Pool::Postgres(pool),
                changes: JobChanges::announced(),
                queue_wakeups: QueueWakeups::default(),
                inline_reads: None,
                metrics: Metrics::new(),
            });
        }
        anyhow::bail!(
            "unsupported database_url {:?}: expected sqlite://path or postgres://…",
            redact(url)
        )
    }

    /// Creates or upgrades Ferry's tables and the queue's own tables. Safe to run concurrently
    /// from several processes at start-up and on every start.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                Migrator::up(&self.orm, None)
                    .await
                    .context("running Ferry's migrations")?;
                // Not `SqliteStorage::setup`: it would switch the pool to `synchronous=OFF`.
                apalis_sqlite::SqliteStorage::migrations()
                    .run(pool)
                    .await
                    .context("running the queue's migrations")?;
                planner_stats::seed(pool)
                    .await
                    .context("writing the queue table's planner statistics")?;
            }
            Pool::Postgres(pool) => {
                // sea-orm's migrator takes no lock: hold an advisory lock on one connection while
                // migrations run on others, so replicas starting together take turns.
                let mut lock = pool.acquire().await?;
                sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *lock)
                    .await?;
                let result = async {
                    Migrator::up(&self.orm, None)
                        .await
                        .context("running Ferry's migrations")?;
                    apalis_postgres::PostgresStorage::migrations()
                        .run(pool)
                        .await
                        .context("running the queue's migrations")?;
                    // The one index Ferry adds to apalis' tables: purging finished deliveries
                    // (`queue::purge_finished`) otherwise reads every task, queued ones too.
                    // apalis' SQLite schema has one (`idx_jobs_completed_done_at`).
                    sqlx::query(
                        "CREATE INDEX IF NOT EXISTS ferry_idx_apalis_finished \
                         ON apalis.jobs (done_at) WHERE status IN ('Done', 'Failed', 'Killed')",
                    )
                    .execute(pool)
                    .await
                    .context("indexing the queue's finished tasks")?;
                    anyhow::Ok(())
                }
                .await;
                sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(MIGRATION_LOCK)
                    .execute(&mut *lock)
                    .await?;
                result?;
            }
        }
        Ok(())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn read_pool(&self) -> &Pool {
        &self.read_pool
    }

    /// The job row `id`, read as a status poll reads it: on SQLite on the calling thread (see
    /// [`inline_reads`]), through the read pool when that fails or on PostgreSQL. For work done
    /// for every tenant; a request names a job through [`Db::find_tenant_job`].
    pub async fn find_job(&self, id: Uuid) -> Result<Option<job::Model>, StorageError> {
        if let Some(inline) = &self.inline_reads {
            match inline.job(id) {
                Ok(job) => return Ok(job),
                Err(e) => {
                    tracing::debug!(error = %e, "reading a job inline failed; using the pool")
                }
            }
        }
        Ok(job::Entity::find_by_id(id).at_most_one(&self.reads).await?)
    }

    /// The job row `id` if it is `tenant`'s, read as [`Db::find_job`] reads it. Another
    /// tenant's job is `None`, like a job that does not exist. The row is read by id alone (one
    /// statement per poll, prepared once); the tenant is checked here, before anything of it
    /// leaves the storage layer.
    pub async fn find_tenant_job(
        &self,
        tenant: &crate::tenancy::Tenant,
        id: Uuid,
    ) -> Result<Option<job::Model>, StorageError> {
        Ok(of_tenant(self.find_job(id).await?, tenant))
    }

    /// [`Db::find_tenant_job`] for a status poll: on PostgreSQL answered from this process's
    /// [`row_cache`] when it holds the row (see there for why that is never staler than a change
    /// notification takes to arrive), read and kept otherwise. Only for answers: nothing is
    /// decided on a row read this way.
    pub async fn poll_tenant_job(
        &self,
        tenant: &crate::tenancy::Tenant,
        id: Uuid,
    ) -> Result<Option<job::Model>, StorageError> {
        let Some(rows) = self.changes.rows() else {
            return self.find_tenant_job(tenant, id).await;
        };
        if let Some(row) = rows.get(id) {
            return Ok(of_tenant(Some(row), tenant));
        }
        let since = rows.epoch();
        let row = self.find_job(id).await?;
        if let Some(row) = &row {
            rows.put(row.clone(), since);
        }
        Ok(of_tenant(row, tenant))
    }

    pub fn queue_pool(&self) -> &Pool {
        &self.queue_pool
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        Ok(self.orm.ping().await?)
    }

    /// Job changes committed by this process (SQLite) or by any process sharing the database
    /// (PostgreSQL, once [`Db::listen_for_changes`] ran).
    pub fn changes(&self) -> &JobChanges {
        &self.changes
    }

    /// Dispatches committed by this process, by queue (see [`changes`]).
    pub fn queue_wakeups(&self) -> &QueueWakeups {
        &self.queue_wakeups
    }

    /// On PostgreSQL, starts relaying other processes' job changes to this process's waiters
    /// and its cache of job rows for status polls, which keeps rows up to `cache_max_age` (one
    /// listening connection). On SQLite, nothing to do: changes are in-process.
    pub async fn listen_for_changes(&self, cache_max_age: Duration) -> Result<(), StorageError> {
        if let Pool::Postgres(pool) = &self.pool {
            self.changes.listen(pool, cache_max_age).await?;
        }
        Ok(())
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, StorageError> {
        let inner = match &self.pool {
            Pool::Sqlite(pool) => TxInner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
            Pool::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
        };
        Ok(Tx {
            inner,
            changed_jobs: Vec::new(),
            nudged_jobs: Vec::new(),
            changes: self.changes.clone(),
            dispatched_queues: Vec::new(),
            queue_wakeups: self.queue_wakeups.clone(),
            metrics: self.metrics.clone(),
            moves: Vec::new(),
        })
    }

    /// This process's metrics (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// A write transaction on the shared pool, able to run sea-query statements and to enqueue a
/// dispatch atomically with them. Its commit announces the jobs it changed and, on SQLite, the
/// queues it enqueued to (see [`changes`]).
pub struct Tx {
    pub inner: TxInner,
    /// Jobs whose rows this transaction wrote ([`Tx::job_changed`]).
    changed_jobs: Vec<Uuid>,
    /// Jobs to announce whose rows it did not write ([`Tx::job_nudged`]).
    nudged_jobs: Vec<Uuid>,
    changes: JobChanges,
    dispatched_queues: Vec<String>,
    queue_wakeups: QueueWakeups,
    metrics: Metrics,
    /// Job moves to count once this transaction commits.
    moves: Vec<JobMove>,
}

pub enum TxInner {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    /// Records that this transaction enqueued a dispatch to `queue`, so that this process's
    /// consumer of it fetches as soon as it commits.
    pub fn dispatched_to(&mut self, queue: &str) {
        if !self.dispatched_queues.iter().any(|q| q == queue) {
            self.dispatched_queues.push(queue.to_owned());
        }
    }

    /// Records that this transaction wrote the row of job `job_id` (created, changed or deleted
    /// it), so that requests waiting on the job wake up once it commits. On PostgreSQL the row's
    /// trigger tells the other processes (`NOTIFY`, see the `job_insert_trigger` migration).
    pub fn job_changed(&mut self, job_id: Uuid) {
        if !self.changed_jobs.contains(&job_id) {
            self.changed_jobs.push(job_id);
        }
    }

    /// Records that requests and deliverers waiting on job `job_id` should wake up once this
    /// transaction commits although it did not write the job's row (a webhook delivery made due
    /// again): on PostgreSQL that takes a `NOTIFY` of its own.
    pub fn job_nudged(&mut self, job_id: Uuid) {
        if !self.nudged_jobs.contains(&job_id) {
            self.nudged_jobs.push(job_id);
        }
    }

    /// Records a job move to count in the metrics if, and only if, this transaction commits.
    pub fn count(&mut self, job_move: JobMove) {
        self.moves.push(job_move);
    }

    /// Runs an INSERT/UPDATE/DELETE; returns the number of rows it touched.
    pub async fn execute<S: SqlxBinder>(&mut self, stmt: &S) -> Result<u64, StorageError> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected())
            }
            TxInner::Postgres(tx) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected())
            }
        }
    }

    /// Runs a statement that yields at most one row of `T`, a tuple of columns (an `UPDATE …
    /// RETURNING`, or a SELECT); `None` when no row matches.
    pub async fn fetch_optional_row<S, T>(&mut self, stmt: &S) -> Result<Option<T>, StorageError>
    where
        S: SqlxBinder,
        T: Send
            + Unpin
            + for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
            + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    {
        match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                Ok(sqlx::query_as_with(sqlx::AssertSqlSafe(sql), values)
                    .fetch_optional(&mut **tx)
                    .await?)
            }
            TxInner::Postgres(tx) => {
                let (sql, values) = stmt.build_sqlx(PostgresQueryBuilder);
                Ok(sqlx::query_as_with(sqlx::AssertSqlSafe(sql), values)
                    .fetch_optional(&mut **tx)
                    .await?)
            }
        }
    }

    /// Writes event `seq` of a job's log, with the webhook deliveries it owes (see [`outbox`]).
    /// The caller numbers it, in the same transaction: the job's `event_seq` becomes `seq` in
    /// the statement that changes the job (a transition's guarded `UPDATE … RETURNING`, see
    /// `service::lifecycle::apply`; creation inserts the job with its first event's number), so
    /// numbering an event costs no statement of its own.
    pub async fn insert_event(
        &mut self,
        job_id: Uuid,
        seq: i64,
        kind: crate::domain::EventKind,
        data: serde_json::Value,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        let event_type = sea_orm::ActiveEnum::to_value(&kind);
        let mut columns = vec![
            Alias::new("job_id"),
            Alias::new("seq"),
            Alias::new("kind"),
            Alias::new("data"),
            Alias::new("created_at_ms"),
        ];
        let mut values: Vec<Expr> = vec![
            job_id.into(),
            seq.into(),
            event_type.into(),
            data.to_string().into(),
            now.into(),
        ];
        columns.push(Alias::new("tenant"));
        values.push(job_tenant(job_id));
        if matches!(self.inner, TxInner::Postgres(_)) {
            columns.push(Alias::new("tx"));
            values.push(feed_position(job_id, seq));
        }
        // Its webhook deliveries are written by the table's trigger (see [`outbox`]).
        self.execute(
            Query::insert()
                .into_table(Alias::new("ferry_job_events"))
                .columns(columns)
                .values_panic(values),
        )
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<(), StorageError> {
        match self.inner {
            TxInner::Sqlite(tx) => {
                tx.commit().await?;
                for job_id in self.changed_jobs.into_iter().chain(self.nudged_jobs) {
                    self.changes.announce(job_id);
                }
                for queue in &self.dispatched_queues {
                    self.queue_wakeups.announce(queue);
                }
            }
            TxInner::Postgres(mut tx) => {
                // Delivered to every listening process if, and only if, the commit succeeds.
                // The jobs whose rows were written have their trigger's.
                for job_id in &self.nudged_jobs {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(changes::CHANNEL)
                        .bind(job_id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                for job_id in self.changed_jobs.iter().chain(&self.nudged_jobs) {
                    self.changes.committed_here(*job_id);
                }
            }
        }
        for job_move in &self.moves {
            self.metrics.count(job_move);
        }
        Ok(())
    }
}

/// `row` if it is `tenant`'s: another tenant's job is `None`, like one that does not exist.
fn of_tenant(row: Option<job::Model>, tenant: &crate::tenancy::Tenant) -> Option<job::Model> {
    row.filter(|job| job.tenant == tenant.as_str())
}

/// The tenant of job `job_id`, as a value of a statement (a lookup by primary key): events and
/// webhook deliveries are written for a job by id, by code that need not know its tenant.
pub(crate) fn job_tenant(job_id: Uuid) -> Expr {
    Expr::cust_with_values(
        "(SELECT tenant FROM ferry_jobs WHERE id = $1)",
        [sea_orm::Value::from(job_id)],
    )
}

/// An event's `tx` on PostgreSQL (its place in the feed across jobs, see `service::feed`): the
/// writing transaction's id, or the job's previous event's `tx` if that is larger, so that the
/// feed shows each job's events in `seq` order. The previous one may be larger: a transaction
/// gets its id at its first write, which may come before it waits for the job's row behind a
/// younger transaction that appends first. Raising `tx` only delays an event in the feed (until
/// every transaction below it has ended), never loses it.
fn feed_position(job_id: Uuid, seq: i64) -> Expr {
    Expr::cust_with_values(
        "GREATEST(pg_current_xact_id()::text::bigint, COALESCE((SELECT tx \
         FROM ferry_job_events WHERE job_id = $1 AND seq = $2), 0))",
        [sea_orm::Value::from(job_id), sea_orm::Value::from(seq - 1)],
    )
}

/// How long a PostgreSQL read connection may have been idle and still be handed out unchecked.
/// HikariCP, the JDBC pool, skips its liveness check for 500 ms after a use by default
/// (`aliveBypassWindowMs`) for the same reason.
const UNCHECKED_AFTER_USE: Duration = Duration::from_millis(500);

/// How long PostgreSQL lets a session of Ferry's sit in an open transaction without a
/// statement before it ends the session. Ferry's transactions send their statements back to
/// back; one left open (by a bug: a future no longer driven while its transaction holds a job's
/// row) would otherwise hold its locks for ever, with the reconciler's repairs waiting behind
/// them. Ended, its locks go, its next statement fails, and the work is retried as after any
/// database error.
const IDLE_IN_TRANSACTION: &str = "60s";

/// The connection options of both PostgreSQL pools: the URL's, and [`IDLE_IN_TRANSACTION`]
/// (sent with the connection's start-up, so it costs no statement).
fn pg_connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url)
        .with_context(|| format!("invalid PostgreSQL URL {}", redact(url)))?;
    Ok(options.options([("idle_in_transaction_session_timeout", IDLE_IN_TRANSACTION)]))
}

/// The read pool's options. A connection idle for a while is pinged before it is handed out, so
/// one that the server closed meanwhile (a restart, `pg_terminate_backend`, an idle timeout on
/// the way) is dropped instead of failing a read. One used within the last
/// [`UNCHECKED_AFTER_USE`] is not: sqlx's default pings before every acquire, a round trip more
/// for every status poll, and under load every connection is that fresh. One such connection
/// that died all the same fails one read, which answers 503 `database_unavailable` (clients
/// retry it), and sqlx drops the connection.
fn pg_read_pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= UNCHECKED_AFTER_USE {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// A database URL with its password masked, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn synchronous(pool: &Pool) -> i64 {
        let Pool::Sqlite(pool) = pool else {
            unreachable!("a SQLite database")
        };
        sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .expect("PRAGMA synchronous")
    }

    /// What Ferry commits (anything a client is told about) is flushed before the commit
    /// returns; apalis' bookkeeping rides on Ferry's next flush.
    #[tokio::test]
    async fn sqlite_flushes_every_commit_of_ferry_but_not_of_apalis_bookkeeping() {
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let db = Db::connect(&url).await.expect("open");
        assert_eq!(synchronous(db.pool()).await, FULL);
        assert_eq!(synchronous(db.queue_pool()).await, NORMAL);
    }
}
