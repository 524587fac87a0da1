//! Bytes each tenant uploaded per UTC day, for `max_upload_bytes_per_day`. A ledger of its own
//! rather than a sum over `ferry_uploads`: an upload deleted the same day still counts (the
//! limit is on what was sent, not on what is kept), and a sum over a busy tenant's uploads
//! would grow with them. One row per tenant and day, added to in the transaction that records
//! each upload.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryUploadDays {
    Table,
    Tenant,
    /// Days since the Unix epoch (UTC).
    Day,
    Bytes,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(FerryUploadDays::Table)
                .col(
                    ColumnDef::new(FerryUploadDays::Tenant)
                        .string_len(63)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryUploadDays::Day)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(FerryUploadDays::Bytes)
                        .big_integer()
                        .not_null(),
                )
                .primary_key(
                    Index::create()
                        .col(FerryUploadDays::Tenant)
                        .col(FerryUploadDays::Day),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(FerryUploadDays::Table).to_owned())
            .await
    }
}
