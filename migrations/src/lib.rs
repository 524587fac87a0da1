//! Ferry's own schema, written once with sea-orm-migration's builder so the same migrations run on
//! SQLite and PostgreSQL. apalis keeps its own tables (created by its own migrator); nothing here
//! touches them (the one index Ferry adds to them is made in `storage::Db::migrate`).
//! Migrations are recorded in sea-orm's `seaql_migrations` table, which does not collide with the
//! `_sqlx_migrations` table apalis uses.

pub use sea_orm_migration::prelude::*;

mod m20261129_000001_initial;
mod m20261201_000001_idempotency_lease;
mod m20261202_000001_event_feed;
mod m20261202_000002_webhooks;
mod m20261203_000001_job_summary;
mod m20261203_000002_job_list_indexes;
mod m20261204_000001_scan_free_indexes;
mod m20261205_000001_tenants;
mod m20261205_000002_audit;
mod m20261206_000001_retention;
mod m20261206_000002_upload_usage;
mod m20261207_000001_resumable_uploads;
mod m20261207_000002_input_lists;
mod m20261208_000001_shared_uploads;
mod m20261208_000002_versions_reruns;
mod m20261215_000001_job_traceparent;
mod m20261216_000001_job_change_trigger;
mod m20261217_000001_job_insert_trigger;
mod m20261217_000002_outbox_trigger;

/// The statements the webhook outbox's trigger runs for each event (PostgreSQL's if `true`),
/// with `NEW.…` standing for the event's values: for checking their query plans, which no
/// statement log shows.
pub use m20261217_000002_outbox_trigger::statements as outbox_trigger_statements;

pub struct Migrator;

/// Runs `sql` (statements separated by `;`) on PostgreSQL only: for the triggers that announce
/// changes across processes, which SQLite, written by one process, does not need.
async fn on_postgres(m: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if m.get_database_backend() == sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
        m.get_connection().execute_unprepared(sql).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261129_000001_initial::Migration),
            Box::new(m20261201_000001_idempotency_lease::Migration),
            Box::new(m20261202_000001_event_feed::Migration),
            Box::new(m20261202_000002_webhooks::Migration),
            Box::new(m20261203_000001_job_summary::Migration),
            Box::new(m20261203_000002_job_list_indexes::Migration),
            Box::new(m20261204_000001_scan_free_indexes::Migration),
            Box::new(m20261205_000001_tenants::Migration),
            Box::new(m20261205_000002_audit::Migration),
            Box::new(m20261206_000001_retention::Migration),
            Box::new(m20261206_000002_upload_usage::Migration),
            Box::new(m20261207_000001_resumable_uploads::Migration),
            Box::new(m20261207_000002_input_lists::Migration),
            Box::new(m20261208_000001_shared_uploads::Migration),
            Box::new(m20261208_000002_versions_reruns::Migration),
            Box::new(m20261215_000001_job_traceparent::Migration),
            Box::new(m20261216_000001_job_change_trigger::Migration),
            Box::new(m20261217_000001_job_insert_trigger::Migration),
            Box::new(m20261217_000002_outbox_trigger::Migration),
        ]
    }
}
