//! The event feed across jobs (`GET /v1/events`) needs an order in which no event can appear
//! behind a position a reader has already passed. Event ids do not give one on PostgreSQL: they
//! come from a sequence when a row is inserted, but transactions commit in any order, so an
//! event with id 7 may become visible after a reader has read id 8 and moved its cursor past 7.
//!
//! `ferry_job_events.tx` fixes that. On PostgreSQL each new event gets (at least) the id of the
//! transaction that wrote it, `pg_current_xact_id()`; a reader only returns events whose `tx`
//! is below the oldest transaction still running (`pg_snapshot_xmin` of its snapshot), in
//! `(tx, id)` order. Every transaction below that horizon has ended, so nothing can appear
//! before the reader's cursor later. On SQLite one writer commits at a time, in id order: `tx`
//! stays 0 and `(tx, id)` order is id order.
//!
//! Events written before this migration get 0: the `ALTER TABLE` waits for every transaction
//! writing to the table and blocks new ones, so they have all committed when it does; then
//! the default switches to the transaction id. Adding the column with a constant default first
//! keeps the `ALTER` from rewriting the table.
//!
//! Indexes: `(tx, id)` is the feed's order; `(kind, tx, id)` serves the `type`/`status`
//! filters. (A job filter uses `(job_id, seq)`; a job kind filter probes `ferry_jobs` by id.)

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryJobEvents {
    Table,
    Id,
    Tx,
    Kind,
}

const FEED_INDEX: &str = "ferry_idx_job_events_feed";
const TYPE_INDEX: &str = "ferry_idx_job_events_kind_feed";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(FerryJobEvents::Table)
                .add_column(
                    ColumnDef::new(FerryJobEvents::Tx)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .to_owned(),
        )
        .await?;
        if m.get_database_backend() == DatabaseBackend::Postgres {
            m.get_connection()
                .execute_unprepared(
                    "ALTER TABLE ferry_job_events \
                     ALTER COLUMN tx SET DEFAULT (pg_current_xact_id()::text::bigint)",
                )
                .await?;
        }
        let indexes = [
            (FEED_INDEX, vec![FerryJobEvents::Tx, FerryJobEvents::Id]),
            (
                TYPE_INDEX,
                vec![FerryJobEvents::Kind, FerryJobEvents::Tx, FerryJobEvents::Id],
            ),
        ];
        for (name, columns) in indexes {
            let mut index = Index::create();
            index.name(name).table(FerryJobEvents::Table);
            for column in columns {
                index.col(column);
            }
            m.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for name in [TYPE_INDEX, FEED_INDEX] {
            m.drop_index(
                Index::drop()
                    .name(name)
                    .table(FerryJobEvents::Table)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(FerryJobEvents::Table)
                .drop_column(FerryJobEvents::Tx)
                .to_owned(),
        )
        .await
    }
}
