//! The metadata database: one sqlx pool shared by sea-orm (reads, single-statement writes) and by
//! [`Tx`] (multi-statement writes, including the apalis enqueue that must commit or roll back with
//! them). A sea-orm transaction does not expose its sqlx connection, hence `Tx` binds sea-query
//! statements itself.
//!
//! Durability: SQLite runs in WAL mode with `synchronous=FULL`, so a commit has reached the disk
//! before Ferry answers 2xx (NORMAL could lose the last commits on power loss, which would break
//! "an acknowledged job is never lost"). Writes take the lock up front (`BEGIN IMMEDIATE`) so
//! concurrent writers queue on the busy timeout instead of failing with SQLITE_BUSY on upgrade.

pub mod entities;

use std::{path::Path, str::FromStr, time::Duration};

use anyhow::Context;
use ferry_migrations::{Migrator, MigratorTrait};
use sea_orm::{
    DatabaseConnection,
    sea_query::{Alias, Expr, ExprTrait, Query, SqliteQueryBuilder},
};
use sea_query_sqlx::SqlxBinder;
use sqlx::{
    Sqlite, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use uuid::Uuid;

use crate::time::now_ms;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Orm(#[from] sea_orm::DbErr),
    #[error("queue error: {0}")]
    Queue(String),
}

impl StorageError {
    /// True when the database could not be reached at all (as opposed to a bad statement):
    /// callers answer 503 and retry later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StorageError::Sqlx(e) => matches!(
                e,
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed
            ),
            StorageError::Orm(e) => matches!(
                e,
                sea_orm::DbErr::ConnectionAcquire(_) | sea_orm::DbErr::Conn(_)
            ),
            StorageError::Queue(_) => false,
        }
    }
}

/// Which database family the pool talks to; each has its own dispatch queue implementation.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
}

#[derive(Clone, Debug)]
pub struct Db {
    pub orm: DatabaseConnection,
    pool: Pool,
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
            let pool = SqlitePoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open SQLite database {url:?}"))?;
            let orm = DatabaseConnection::from(pool.clone());
            return Ok(Db {
                orm,
                pool: Pool::Sqlite(pool),
            });
        }
        anyhow::bail!(
            "unsupported database_url {url:?}: expected sqlite://path (PostgreSQL support comes \
             with the scale-out configuration)"
        )
    }

    /// Creates or upgrades Ferry's tables and the queue's own tables. Safe to run concurrently
    /// from several processes at start-up and on every start.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        Migrator::up(&self.orm, None)
            .await
            .context("running Ferry's migrations")?;
        match &self.pool {
            // Not `SqliteStorage::setup`: it would switch the pool to `synchronous=OFF`.
            Pool::Sqlite(pool) => apalis_sqlite::SqliteStorage::migrations()
                .run(pool)
                .await
                .context("running the queue's migrations")?,
        }
        Ok(())
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<(), StorageError> {
        match &self.pool {
            Pool::Sqlite(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Starts a write transaction.
    pub async fn begin(&self) -> Result<Tx, StorageError> {
        match &self.pool {
            Pool::Sqlite(pool) => Ok(Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?)),
        }
    }
}

/// A write transaction on the shared pool, able to run sea-query statements and to enqueue a
/// dispatch atomically with them.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Tx {
    /// Runs an INSERT/UPDATE/DELETE; returns the number of rows it touched.
    pub async fn execute<S: SqlxBinder>(&mut self, stmt: &S) -> Result<u64, StorageError> {
        match self {
            Tx::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected())
            }
        }
    }

    /// Runs a SELECT of one integer column; `None` when no row matches.
    pub async fn fetch_i64<S: SqlxBinder>(
        &mut self,
        stmt: &S,
    ) -> Result<Option<i64>, StorageError> {
        match self {
            Tx::Sqlite(tx) => {
                let (sql, values) = stmt.build_sqlx(SqliteQueryBuilder);
                Ok(sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), values)
                    .fetch_optional(&mut **tx)
                    .await?)
            }
        }
    }

    /// Appends an event to a job's log, numbering it after the job's last event.
    pub async fn append_event(
        &mut self,
        job_id: Uuid,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<i64, StorageError> {
        let jobs = Alias::new("ferry_jobs");
        self.execute(
            Query::update()
                .table(jobs.clone())
                .value(
                    Alias::new("event_seq"),
                    Expr::col(Alias::new("event_seq")).add(1),
                )
                .and_where(Expr::col(Alias::new("id")).eq(job_id)),
        )
        .await?;
        let seq = self
            .fetch_i64(
                Query::select()
                    .column(Alias::new("event_seq"))
                    .from(jobs)
                    .and_where(Expr::col(Alias::new("id")).eq(job_id)),
            )
            .await?
            .unwrap_or(1);
        self.execute(
            Query::insert()
                .into_table(Alias::new("ferry_job_events"))
                .columns([
                    Alias::new("job_id"),
                    Alias::new("seq"),
                    Alias::new("kind"),
                    Alias::new("data"),
                    Alias::new("created_at_ms"),
                ])
                .values_panic([
                    job_id.into(),
                    seq.into(),
                    kind.into(),
                    data.to_string().into(),
                    now_ms().into(),
                ]),
        )
        .await?;
        Ok(seq)
    }

    pub async fn commit(self) -> Result<(), StorageError> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}
