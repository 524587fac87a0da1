//! Retention of finished jobs (medical data must not outlive its purpose). A job keeps, from
//! its creation, the retention its tenant had then (`retain_ms` for the job with its results and
//! inputs, `retain_inputs_ms` for its inputs' bytes alone; NULL: kept until deleted); when it
//! finishes, the one update that finishes it turns them into times (`expires_at_ms`,
//! `inputs_expire_at_ms`; NULL stays NULL). The reconciler deletes what has expired, found
//! through an index on each time, so a pass reads only what is due however many jobs are kept.
//! `inputs_deleted_at_ms` records that the inputs' bytes are gone (the job still lists them,
//! with their size and digest, as a record of what it ran on).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum FerryJobs {
    Table,
    RetainMs,
    RetainInputsMs,
    ExpiresAtMs,
    InputsExpireAtMs,
    InputsDeletedAtMs,
}

const COLUMNS: [FerryJobs; 5] = [
    FerryJobs::RetainMs,
    FerryJobs::RetainInputsMs,
    FerryJobs::ExpiresAtMs,
    FerryJobs::InputsExpireAtMs,
    FerryJobs::InputsDeletedAtMs,
];

const INDEXES: [(&str, FerryJobs); 2] = [
    ("ferry_idx_jobs_expires_at", FerryJobs::ExpiresAtMs),
    (
        "ferry_idx_jobs_inputs_expire_at",
        FerryJobs::InputsExpireAtMs,
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One statement per column: SQLite adds one column per ALTER.
        for column in COLUMNS {
            m.alter_table(
                Table::alter()
                    .table(FerryJobs::Table)
                    .add_column(ColumnDef::new(column).big_integer().null())
                    .to_owned(),
            )
            .await?;
        }
        for (name, column) in INDEXES {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(FerryJobs::Table)
                    .col(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, _) in INDEXES {
            m.drop_index(Index::drop().name(name).table(FerryJobs::Table).to_owned())
                .await?;
        }
        for column in COLUMNS {
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
