//! Model versions and tags, the workers that serve them, and re-runs.
//!
//! - `ferry_jobs.version`: the version of its kind a job resolved to when it was created (it
//!   runs that version, whatever the tags do later); `tag`: the tag it was resolved through, if
//!   any (a re-run follows it again). Both `NULL` for a kind without versions.
//! - `ferry_jobs.rerun_of` / `latest_rerun`: a re-run names the job it re-runs, and that job its
//!   latest re-run; `rerun_batch` the bulk re-run that made it (its dispatch then goes behind
//!   other work of the same priority, see `queue::queue_priority`).
//! - `ferry_jobs.error_code`: the stable code of a failed job's error, which bulk re-runs
//!   filter on (the error itself is JSON in `error`).
//! - `ferry_kind_tags`: where each tag points now; `ferry_tag_moves`: every move, who made it and
//!   when (a rollback is a move back).
//! - `ferry_workers`: the worker processes alive (each renews its `last_seen_ms`) and what each
//!   serves, so that a job for a version no live worker serves can say so.
//! - `ferry_rerun_batches`: one bulk re-run: its filter, what it made, and its idempotency key.
//!
//! Queue priorities: a job's dispatch now goes into apalis at `2 × priority + 1`, a bulk
//! re-run's at `2 × priority`, so that re-runs wait behind other work of their priority. The
//! dispatches already waiting are moved to the new scale here, when apalis' table exists (on a
//! new database it is created after Ferry's migrations, empty).

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryJobs {
    Table,
    Id,
    Version,
    Tag,
    RerunOf,
    LatestRerun,
    RerunBatch,
    ErrorCode,
}

#[derive(DeriveIden)]
enum FerryKindTags {
    Table,
    Kind,
    Tag,
    Version,
    MovedAtMs,
    /// Who moved it last (`key:<id>`, `config`, or `anonymous` without keys).
    MovedBy,
}

#[derive(DeriveIden)]
enum FerryTagMoves {
    Table,
    Id,
    Kind,
    Tag,
    /// `NULL`: the tag did not exist before.
    FromVersion,
    /// `NULL`: the tag was deleted.
    ToVersion,
    MovedAtMs,
    MovedBy,
    /// The tenant of the key that moved it, if a key did.
    Tenant,
}

#[derive(DeriveIden)]
enum FerryWorkers {
    Table,
    /// The worker process' owner name (host, pid, a token of its own).
    Id,
    Hostname,
    Pid,
    StartedAtMs,
    LastSeenMs,
    /// JSON array of what it serves: `kind` or `kind@version`.
    Serves,
}

#[derive(DeriveIden)]
enum FerryRerunBatches {
    Table,
    Id,
    Tenant,
    /// The request as given (JSON), which the answer shows.
    Request,
    IdempotencyKey,
    Fingerprint,
    /// Re-runs made.
    Created,
    /// Matching jobs skipped: their inputs are gone.
    Skipped,
    /// Matching jobs left for another call (beyond the request's limit).
    Remaining,
    CreatedAtMs,
}

const JOB_COLUMNS: [FerryJobs; 6] = [
    FerryJobs::Version,
    FerryJobs::Tag,
    FerryJobs::RerunOf,
    FerryJobs::LatestRerun,
    FerryJobs::RerunBatch,
    FerryJobs::ErrorCode,
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in JOB_COLUMNS {
            let def = match column {
                FerryJobs::RerunOf | FerryJobs::LatestRerun | FerryJobs::RerunBatch => {
                    ColumnDef::new(column).uuid().null().to_owned()
                }
                _ => ColumnDef::new(column).text().null().to_owned(),
            };
            m.alter_table(
                Table::alter()
                    .table(FerryJobs::Table)
                    .add_column(def)
                    .to_owned(),
            )
            .await?;
        }
        // A failed job's code, for the jobs that failed before the column.
        let copy_code = match m.get_database_backend() {
            DatabaseBackend::Postgres => {
                "UPDATE ferry_jobs SET error_code = (error::jsonb)->>'code' \
                 WHERE status = 'failed' AND error IS NOT NULL"
            }
            _ => {
                "UPDATE ferry_jobs SET error_code = json_extract(error, '$.code') \
                 WHERE status = 'failed' AND error IS NOT NULL AND json_valid(error)"
            }
        };
        m.get_connection().execute_unprepared(copy_code).await?;
        for (name, columns) in [
            (
                "ferry_idx_jobs_rerun_of",
                [FerryJobs::RerunOf, FerryJobs::Id],
            ),
            (
                "ferry_idx_jobs_rerun_batch",
                [FerryJobs::RerunBatch, FerryJobs::Id],
            ),
        ] {
            let mut index = Index::create();
            index.name(name).table(FerryJobs::Table);
            for column in columns {
                index.col(column);
            }
            m.create_index(index.to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table(FerryKindTags::Table)
                .col(ColumnDef::new(FerryKindTags::Kind).text().not_null())
                .col(ColumnDef::new(FerryKindTags::Tag).text().not_null())
                .col(ColumnDef::new(FerryKindTags::Version).text().not_null())
                .col(
                    ColumnDef::new(FerryKindTags::MovedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryKindTags::MovedBy).text().not_null())
                .primary_key(
                    Index::create()
                        .col(FerryKindTags::Kind)
                        .col(FerryKindTags::Tag),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(FerryTagMoves::Table)
                .col(
                    ColumnDef::new(FerryTagMoves::Id)
                        .uuid()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryTagMoves::Kind).text().not_null())
                .col(ColumnDef::new(FerryTagMoves::Tag).text().not_null())
                .col(ColumnDef::new(FerryTagMoves::FromVersion).text().null())
                .col(ColumnDef::new(FerryTagMoves::ToVersion).text().null())
                .col(
                    ColumnDef::new(FerryTagMoves::MovedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryTagMoves::MovedBy).text().not_null())
                .col(ColumnDef::new(FerryTagMoves::Tenant).text().null())
                .to_owned(),
        )
        .await?;
        // A kind's moves, newest first.
        m.create_index(
            Index::create()
                .name("ferry_idx_tag_moves_kind_id")
                .table(FerryTagMoves::Table)
                .col(FerryTagMoves::Kind)
                .col(FerryTagMoves::Id)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(FerryWorkers::Table)
                .col(
                    ColumnDef::new(FerryWorkers::Id)
                        .text()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryWorkers::Hostname).text().not_null())
                .col(ColumnDef::new(FerryWorkers::Pid).big_integer().not_null())
                .col(
                    ColumnDef::new(FerryWorkers::StartedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryWorkers::LastSeenMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryWorkers::Serves).text().not_null())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_workers_last_seen")
                .table(FerryWorkers::Table)
                .col(FerryWorkers::LastSeenMs)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(FerryRerunBatches::Table)
                .col(
                    ColumnDef::new(FerryRerunBatches::Id)
                        .uuid()
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(FerryRerunBatches::Tenant)
                        .string_len(63)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryRerunBatches::Request).text().not_null())
                .col(
                    ColumnDef::new(FerryRerunBatches::IdempotencyKey)
                        .string_len(255)
                        .null(),
                )
                .col(ColumnDef::new(FerryRerunBatches::Fingerprint).text().null())
                .col(
                    ColumnDef::new(FerryRerunBatches::Created)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryRerunBatches::Skipped)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryRerunBatches::Remaining)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryRerunBatches::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        // One batch per idempotency key and tenant (several rows may have none).
        m.create_index(
            Index::create()
                .name("ferry_idx_rerun_batches_key")
                .table(FerryRerunBatches::Table)
                .col(FerryRerunBatches::Tenant)
                .col(FerryRerunBatches::IdempotencyKey)
                .unique()
                .to_owned(),
        )
        .await?;

        let (exists, remap) = match m.get_database_backend() {
            DatabaseBackend::Postgres => (
                "SELECT to_regclass('apalis.jobs') IS NOT NULL",
                "UPDATE apalis.jobs SET priority = priority * 2 + 1 \
                 WHERE status IN ('Pending', 'Queued') AND job_type LIKE 'ferry.jobs.%'",
            ),
            _ => (
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' \
                 AND name = 'Jobs')",
                "UPDATE Jobs SET priority = priority * 2 + 1 \
                 WHERE status IN ('Pending', 'Queued') AND job_type LIKE 'ferry.jobs.%'",
            ),
        };
        let conn = m.get_connection();
        let row = conn
            .query_one_raw(sea_orm::Statement::from_string(
                m.get_database_backend(),
                exists,
            ))
            .await?;
        let apalis_exists = match row {
            Some(row) => row
                .try_get_by_index::<bool>(0)
                .or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n != 0))?,
            None => false,
        };
        if apalis_exists {
            conn.execute_unprepared(remap).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let remap = match m.get_database_backend() {
            DatabaseBackend::Postgres => {
                "UPDATE apalis.jobs SET priority = priority / 2 \
                 WHERE status IN ('Pending', 'Queued') AND job_type LIKE 'ferry.jobs.%'"
            }
            _ => {
                "UPDATE Jobs SET priority = priority / 2 \
                 WHERE status IN ('Pending', 'Queued') AND job_type LIKE 'ferry.jobs.%'"
            }
        };
        m.get_connection().execute_unprepared(remap).await?;
        for table in [
            FerryRerunBatches::Table.into_iden(),
            FerryWorkers::Table.into_iden(),
            FerryTagMoves::Table.into_iden(),
            FerryKindTags::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        for name in ["ferry_idx_jobs_rerun_of", "ferry_idx_jobs_rerun_batch"] {
            m.drop_index(Index::drop().name(name).table(FerryJobs::Table).to_owned())
                .await?;
        }
        for column in JOB_COLUMNS {
            m.alter_table(
                Table::alter()
                    .table(FerryJobs::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
