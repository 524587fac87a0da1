//! `ferry_jobs.traceparent`: the W3C trace context of the request that created a job, when
//! traces are exported (`[traces]`), so that the job's attempts — on any worker machine, after
//! any restart — are spans of the same trace as the request. `NULL` otherwise.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryJobs {
    Table,
    Traceparent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(FerryJobs::Table)
                .add_column(ColumnDef::new(FerryJobs::Traceparent).text().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(FerryJobs::Table)
                .drop_column(FerryJobs::Traceparent)
                .to_owned(),
        )
        .await
    }
}
