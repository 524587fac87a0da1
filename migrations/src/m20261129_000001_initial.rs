//! The initial schema: uploads, jobs, their inputs, results, the per-job event log, handler log
//! lines and idempotency keys. Times are Unix milliseconds (`BIGINT`) so that lease and expiry
//! comparisons are plain integer comparisons on every backend. Every table is prefixed `ferry_`:
//! SQLite table names are case-insensitive, and apalis already owns `Jobs` and `Workers`.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryUploads {
    Table,
    Id,
    Size,
    Sha256,
    ContentType,
    BlobKey,
    JobId,
    CreatedAtMs,
    ExpiresAtMs,
}

#[derive(DeriveIden)]
enum FerryJobs {
    Table,
    Id,
    Kind,
    Status,
    Params,
    Priority,
    TimeoutMs,
    MaxAttempts,
    Attempt,
    ProgressPercent,
    ProgressStage,
    ProgressMessage,
    ProgressUpdatedAtMs,
    Error,
    CreatedAtMs,
    StartedAtMs,
    FinishedAtMs,
    UpdatedAtMs,
    RunAfterMs,
    DispatchId,
    LeaseOwner,
    LeaseExpiresAtMs,
    CancelRequested,
    EventSeq,
}

#[derive(DeriveIden)]
enum FerryJobInputs {
    Table,
    JobId,
    Name,
    UploadId,
    Size,
    Sha256,
    BlobKey,
}

#[derive(DeriveIden)]
enum FerryResults {
    Table,
    Id,
    JobId,
    Name,
    Size,
    Sha256,
    ContentType,
    IsFinal,
    Attempt,
    BlobKey,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum FerryJobEvents {
    Table,
    Id,
    JobId,
    Seq,
    Kind,
    Data,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum FerryJobLogs {
    Table,
    Id,
    JobId,
    Attempt,
    Line,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum FerryIdempotencyKeys {
    Table,
    Key,
    Fingerprint,
    JobId,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(FerryUploads::Table)
                .col(
                    ColumnDef::new(FerryUploads::Id)
                        .uuid()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryUploads::Size).big_integer().not_null())
                .col(
                    ColumnDef::new(FerryUploads::Sha256)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryUploads::ContentType).text())
                .col(ColumnDef::new(FerryUploads::BlobKey).text().not_null())
                .col(ColumnDef::new(FerryUploads::JobId).uuid())
                .col(
                    ColumnDef::new(FerryUploads::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryUploads::ExpiresAtMs).big_integer())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_uploads_expires")
                .table(FerryUploads::Table)
                .col(FerryUploads::ExpiresAtMs)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(FerryJobs::Table)
                .col(
                    ColumnDef::new(FerryJobs::Id)
                        .uuid()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryJobs::Kind).string_len(64).not_null())
                .col(ColumnDef::new(FerryJobs::Status).string_len(16).not_null())
                .col(ColumnDef::new(FerryJobs::Params).text().not_null())
                .col(ColumnDef::new(FerryJobs::Priority).integer().not_null())
                .col(
                    ColumnDef::new(FerryJobs::TimeoutMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryJobs::MaxAttempts).integer().not_null())
                .col(ColumnDef::new(FerryJobs::Attempt).integer().not_null())
                .col(ColumnDef::new(FerryJobs::ProgressPercent).double())
                .col(ColumnDef::new(FerryJobs::ProgressStage).text())
                .col(ColumnDef::new(FerryJobs::ProgressMessage).text())
                .col(ColumnDef::new(FerryJobs::ProgressUpdatedAtMs).big_integer())
                .col(ColumnDef::new(FerryJobs::Error).text())
                .col(
                    ColumnDef::new(FerryJobs::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryJobs::StartedAtMs).big_integer())
                .col(ColumnDef::new(FerryJobs::FinishedAtMs).big_integer())
                .col(
                    ColumnDef::new(FerryJobs::UpdatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryJobs::RunAfterMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryJobs::DispatchId).string_len(26))
                .col(ColumnDef::new(FerryJobs::LeaseOwner).text())
                .col(ColumnDef::new(FerryJobs::LeaseExpiresAtMs).big_integer())
                .col(
                    ColumnDef::new(FerryJobs::CancelRequested)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .col(ColumnDef::new(FerryJobs::EventSeq).big_integer().not_null())
                .to_owned(),
        )
        .await?;
        for (name, cols) in [
            (
                "ferry_idx_jobs_status_created",
                vec![FerryJobs::Status, FerryJobs::CreatedAtMs],
            ),
            ("ferry_idx_jobs_created", vec![FerryJobs::CreatedAtMs]),
            (
                "ferry_idx_jobs_lease",
                vec![FerryJobs::Status, FerryJobs::LeaseExpiresAtMs],
            ),
        ] {
            let mut idx = Index::create();
            idx.name(name).table(FerryJobs::Table);
            for c in cols {
                idx.col(c);
            }
            m.create_index(idx.to_owned()).await?;
        }

        m.create_table(
            Table::create()
                .table(FerryJobInputs::Table)
                .col(ColumnDef::new(FerryJobInputs::JobId).uuid().not_null())
                .col(
                    ColumnDef::new(FerryJobInputs::Name)
                        .string_len(128)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryJobInputs::UploadId).uuid().not_null())
                .col(
                    ColumnDef::new(FerryJobInputs::Size)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryJobInputs::Sha256)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryJobInputs::BlobKey).text().not_null())
                .primary_key(
                    Index::create()
                        .col(FerryJobInputs::JobId)
                        .col(FerryJobInputs::Name),
                )
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(FerryResults::Table)
                .col(
                    ColumnDef::new(FerryResults::Id)
                        .uuid()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryResults::JobId).uuid().not_null())
                .col(
                    ColumnDef::new(FerryResults::Name)
                        .string_len(255)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryResults::Size).big_integer().not_null())
                .col(
                    ColumnDef::new(FerryResults::Sha256)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryResults::ContentType).text().not_null())
                .col(ColumnDef::new(FerryResults::IsFinal).boolean().not_null())
                .col(ColumnDef::new(FerryResults::Attempt).integer().not_null())
                .col(ColumnDef::new(FerryResults::BlobKey).text().not_null())
                .col(
                    ColumnDef::new(FerryResults::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_results_job_name")
                .table(FerryResults::Table)
                .col(FerryResults::JobId)
                .col(FerryResults::Name)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(FerryJobEvents::Table)
                .col(
                    ColumnDef::new(FerryJobEvents::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryJobEvents::JobId).uuid().not_null())
                .col(ColumnDef::new(FerryJobEvents::Seq).big_integer().not_null())
                .col(
                    ColumnDef::new(FerryJobEvents::Kind)
                        .string_len(32)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryJobEvents::Data).text().not_null())
                .col(
                    ColumnDef::new(FerryJobEvents::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_job_events_job_seq")
                .table(FerryJobEvents::Table)
                .col(FerryJobEvents::JobId)
                .col(FerryJobEvents::Seq)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(FerryJobLogs::Table)
                .col(
                    ColumnDef::new(FerryJobLogs::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(FerryJobLogs::JobId).uuid().not_null())
                .col(ColumnDef::new(FerryJobLogs::Attempt).integer().not_null())
                .col(ColumnDef::new(FerryJobLogs::Line).text().not_null())
                .col(
                    ColumnDef::new(FerryJobLogs::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_job_logs_job")
                .table(FerryJobLogs::Table)
                .col(FerryJobLogs::JobId)
                .col(FerryJobLogs::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(FerryIdempotencyKeys::Table)
                .col(
                    ColumnDef::new(FerryIdempotencyKeys::Key)
                        .string_len(255)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(FerryIdempotencyKeys::Fingerprint)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryIdempotencyKeys::JobId).uuid())
                .col(
                    ColumnDef::new(FerryIdempotencyKeys::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            FerryIdempotencyKeys::Table.into_iden(),
            FerryJobLogs::Table.into_iden(),
            FerryJobEvents::Table.into_iden(),
            FerryResults::Table.into_iden(),
            FerryJobInputs::Table.into_iden(),
            FerryJobs::Table.into_iden(),
            FerryUploads::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        Ok(())
    }
}
