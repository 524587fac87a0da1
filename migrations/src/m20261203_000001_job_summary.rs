//! A status poll reads one row: `ferry_jobs` keeps what `GET /v1/jobs/{id}` shows besides the
//! job's own state — its inputs (`inputs`, a JSON array, fixed at creation) and how many results
//! it has (`result_count`, kept in the transaction that publishes a result) — so the answer
//! needs no join, no count and no second query.
//!
//! `ferry_job_inputs` stays the source for everything else (attachment of uploads, deletion);
//! `inputs` is a copy, each item `{name, upload_id, size, sha256, blob_key}` in name order.
//! Jobs created before this migration get both columns filled from those tables here.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryJobs {
    Table,
    Inputs,
    ResultCount,
}

/// The inputs of the job `ferry_jobs.id` as JSON, built by the database itself. SQLite stores
/// uuids as 16-byte blobs: spelled out here as the hyphenated text serde writes.
const SQLITE_INPUTS: &str = "\
    COALESCE((SELECT json_group_array(json(item)) FROM (\
        SELECT json_object(\
            'name', i.name, \
            'upload_id', lower(substr(hex(i.upload_id), 1, 8) || '-' || \
                substr(hex(i.upload_id), 9, 4) || '-' || substr(hex(i.upload_id), 13, 4) || \
                '-' || substr(hex(i.upload_id), 17, 4) || '-' || substr(hex(i.upload_id), 21)), \
            'size', i.size, 'sha256', i.sha256, 'blob_key', i.blob_key) AS item \
        FROM ferry_job_inputs i WHERE i.job_id = ferry_jobs.id ORDER BY i.name)), '[]')";

const POSTGRES_INPUTS: &str = "\
    COALESCE((SELECT json_agg(json_build_object(\
            'name', i.name, 'upload_id', i.upload_id, 'size', i.size, \
            'sha256', i.sha256, 'blob_key', i.blob_key) ORDER BY i.name)::text \
        FROM ferry_job_inputs i WHERE i.job_id = ferry_jobs.id), '[]')";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Two statements: SQLite adds one column per ALTER.
        m.alter_table(
            Table::alter()
                .table(FerryJobs::Table)
                .add_column(
                    ColumnDef::new(FerryJobs::Inputs)
                        .text()
                        .not_null()
                        .default("[]"),
                )
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(FerryJobs::Table)
                .add_column(
                    ColumnDef::new(FerryJobs::ResultCount)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .to_owned(),
        )
        .await?;
        let inputs = match m.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES_INPUTS,
            _ => SQLITE_INPUTS,
        };
        m.get_connection()
            .execute_unprepared(&format!(
                "UPDATE ferry_jobs SET inputs = {inputs}, result_count = \
                 (SELECT COUNT(*) FROM ferry_results r WHERE r.job_id = ferry_jobs.id)"
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [FerryJobs::Inputs, FerryJobs::ResultCount] {
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
