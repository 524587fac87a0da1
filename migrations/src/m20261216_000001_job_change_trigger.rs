//! PostgreSQL: every change to a job row announces itself (`NOTIFY ferry_job_changed, '<id>'`),
//! by a trigger rather than by each piece of code that writes the row remembering to. Processes
//! keep job rows in memory for status polls and drop them on these notifications (see
//! `storage::row_cache` in the server), so one forgotten announcement would be a stale answer.
//! A transaction's explicit notifications of the same job are folded into this one by
//! PostgreSQL (same channel, same payload). SQLite needs none: one process writes it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Also what `m20261217_000001_job_insert_trigger` goes back to.
pub(crate) const UP: &str = "
CREATE OR REPLACE FUNCTION ferry_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ferry_job_changed', OLD.id::text);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS ferry_jobs_changed ON ferry_jobs;
CREATE TRIGGER ferry_jobs_changed AFTER UPDATE OR DELETE ON ferry_jobs
    FOR EACH ROW EXECUTE FUNCTION ferry_job_changed();
";

const DOWN: &str = "
DROP TRIGGER IF EXISTS ferry_jobs_changed ON ferry_jobs;
DROP FUNCTION IF EXISTS ferry_job_changed();
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres(m, UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres(m, DOWN).await
    }
}
