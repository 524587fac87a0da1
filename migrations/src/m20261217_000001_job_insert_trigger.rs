//! PostgreSQL: a new job row announces itself too (`NOTIFY ferry_job_changed, '<id>'`), as
//! updated and deleted ones already do (`m20261216_000001_job_change_trigger`). The server then
//! sends a `NOTIFY` of its own only for a job whose row its transaction did not write: one round
//! trip less for each transaction that creates, claims or settles a job. SQLite needs none.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

// An INSERT trigger sees no OLD row, a DELETE trigger no NEW one.
const UP: &str = "
CREATE OR REPLACE FUNCTION ferry_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('ferry_job_changed', NEW.id::text);
    ELSE
        PERFORM pg_notify('ferry_job_changed', OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS ferry_jobs_changed ON ferry_jobs;
CREATE TRIGGER ferry_jobs_changed AFTER INSERT OR UPDATE OR DELETE ON ferry_jobs
    FOR EACH ROW EXECUTE FUNCTION ferry_job_changed();
";

// Back to `m20261216_000001_job_change_trigger`'s trigger (its function is replaced too).
const DOWN: &str = crate::m20261216_000001_job_change_trigger::UP;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres(m, UP).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        crate::on_postgres(m, DOWN).await
    }
}
