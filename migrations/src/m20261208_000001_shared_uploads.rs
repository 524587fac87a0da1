//! Uploads shared by many jobs (several models on one CT study, re-runs): an upload no longer
//! belongs to the one job that consumed it. `ferry_uploads.job_id` gives way to
//! `ferry_uploads.job_count`, the number of jobs that hold the upload as an input (their inputs
//! not yet deleted). It is changed only in the transactions that create a job, delete one, or
//! delete a job's inputs, so it is exact; an upload whose count falls to 0 is due for deletion
//! at once (its `expires_at_ms` set), bytes first, like any expired upload.
//!
//! Existing rows: an upload with a job is held once.
//!
//! `ferry_job_inputs (upload_id, job_id)` finds the jobs that use an upload
//! (`GET /v1/jobs?upload=`), the first of them first.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryUploads {
    Table,
    JobId,
    JobCount,
}

const JOB_INDEX: &str = "ferry_idx_uploads_job";
const INPUTS_UPLOAD_INDEX: &str = "ferry_idx_job_inputs_upload";

#[derive(DeriveIden)]
enum FerryJobInputs {
    Table,
    UploadId,
    JobId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(FerryUploads::Table)
                .add_column(
                    ColumnDef::new(FerryUploads::JobCount)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .to_owned(),
        )
        .await?;
        m.get_connection()
            .execute_unprepared("UPDATE ferry_uploads SET job_count = 1 WHERE job_id IS NOT NULL")
            .await?;
        m.create_index(
            Index::create()
                .name(INPUTS_UPLOAD_INDEX)
                .table(FerryJobInputs::Table)
                .col(FerryJobInputs::UploadId)
                .col(FerryJobInputs::JobId)
                .to_owned(),
        )
        .await?;
        // SQLite drops no column an index names.
        m.drop_index(
            Index::drop()
                .name(JOB_INDEX)
                .table(FerryUploads::Table)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(FerryUploads::Table)
                .drop_column(FerryUploads::JobId)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name(INPUTS_UPLOAD_INDEX)
                .table(FerryJobInputs::Table)
                .to_owned(),
        )
        .await?;
        // Which job held an upload is not kept: an upload held by any job comes back attached
        // to the first job (by id) that names it.
        m.alter_table(
            Table::alter()
                .table(FerryUploads::Table)
                .add_column(ColumnDef::new(FerryUploads::JobId).uuid().null())
                .to_owned(),
        )
        .await?;
        m.get_connection()
            .execute_unprepared(
                "UPDATE ferry_uploads SET job_id = (SELECT i.job_id FROM ferry_job_inputs i \
                 WHERE i.upload_id = ferry_uploads.id ORDER BY i.job_id LIMIT 1) \
                 WHERE job_count > 0",
            )
            .await?;
        m.create_index(
            Index::create()
                .name(JOB_INDEX)
                .table(FerryUploads::Table)
                .col(FerryUploads::JobId)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(FerryUploads::Table)
                .drop_column(FerryUploads::JobCount)
                .to_owned(),
        )
        .await
    }
}
