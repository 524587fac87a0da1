//! Indexes for the statements that read a whole table (found by `tests/api/query_plans.rs`,
//! which explains every statement Ferry runs):
//!
//! - the reconciler's purge of idempotency keys older than a day (by `created_at_ms`), and
//!   deleting a job's keys and uploads (by `job_id`), each read every key or upload;
//! - a server-wide webhook endpoint's deliveries, newest first, sorted every delivery the
//!   endpoint ever had;
//! - the retries due now and the earliest retry still waiting (queued jobs without a dispatch)
//!   read every queued job, so a deep queue slowed every reconciler pass.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// (index, table, columns)
const INDEXES: [(&str, &str, &[&str]); 5] = [
    (
        "ferry_idx_idempotency_created",
        "ferry_idempotency_keys",
        &["created_at_ms"],
    ),
    (
        "ferry_idx_idempotency_job",
        "ferry_idempotency_keys",
        &["job_id"],
    ),
    ("ferry_idx_uploads_job", "ferry_uploads", &["job_id"]),
    (
        "ferry_idx_webhook_deliveries_endpoint_id",
        "ferry_webhook_deliveries",
        &["endpoint_id", "id"],
    ),
    (
        "ferry_idx_jobs_undispatched",
        "ferry_jobs",
        &["status", "dispatch_id", "run_after_ms"],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, columns) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(Alias::new(table));
            for column in columns {
                index.col(Alias::new(*column));
            }
            m.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in INDEXES {
            m.drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}
