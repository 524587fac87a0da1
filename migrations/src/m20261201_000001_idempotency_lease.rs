//! Idempotency reservations held by a lease: the request that reserved a key renews
//! `lease_expires_at_ms` while it is alive, and only the holder named in `holder` may record
//! the job it created. A reservation whose lease ran out (its process died) may be taken over
//! by a retry at once instead of after a fixed quarter of an hour.
//!
//! Reservations made before this migration get a lease ending 15 minutes after their creation,
//! which is when the old rule would have let a retry take them over.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryIdempotencyKeys {
    Table,
    JobId,
    CreatedAtMs,
    Holder,
    LeaseExpiresAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        m.alter_table(
            Table::alter()
                .table(FerryIdempotencyKeys::Table)
                .add_column(ColumnDef::new(FerryIdempotencyKeys::Holder).string_len(64))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(FerryIdempotencyKeys::Table)
                .add_column(ColumnDef::new(FerryIdempotencyKeys::LeaseExpiresAtMs).big_integer())
                .to_owned(),
        )
        .await?;
        m.exec_stmt(
            Query::update()
                .table(FerryIdempotencyKeys::Table)
                .value(
                    FerryIdempotencyKeys::LeaseExpiresAtMs,
                    Expr::col(FerryIdempotencyKeys::CreatedAtMs).add(15 * 60 * 1000),
                )
                .and_where(Expr::col(FerryIdempotencyKeys::JobId).is_null())
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            FerryIdempotencyKeys::LeaseExpiresAtMs,
            FerryIdempotencyKeys::Holder,
        ] {
            m.alter_table(
                Table::alter()
                    .table(FerryIdempotencyKeys::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
