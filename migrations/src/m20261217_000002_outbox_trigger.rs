//! The webhook outbox is filled by a trigger on `ferry_job_events`: each event inserted writes,
//! in the same statement, the delivery it owes each endpoint — every enabled endpoint of the
//! job's tenant, server-wide or the job's own, that asked for the event's type (`events` holds
//! `,type,` entries, so one `LIKE` matches a type exactly).
//!
//! It was a second statement after every event (`storage::outbox`), sent by the server in the
//! event's own transaction. The trigger keeps that promise (an event that committed has its
//! deliveries, a rolled-back one has none) with one round trip less per event: on SQLite every
//! statement is a hand-off to the one writer connection's thread, which every write waits for.
//!
//! Progress is coalesced: a progress event takes over the job's pending progress delivery that
//! no deliverer has tried yet, per endpoint, instead of adding one — the newest wins. Ordering
//! stays right because deliveries of one job to one endpoint are sent in `event_seq` order.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The trigger's statements, with `NEW.…` standing for the event's values: a progress event
/// first takes over what it can, then the endpoints whose delivery it did not take over get a
/// new one. Written once for both databases; see [`statements`].
const BODY: &str = "
    UPDATE ferry_webhook_deliveries
    SET event_seq = NEW.seq, updated_at_ms = NEW.created_at_ms
    WHERE NEW.kind = PROGRESS AND job_id = NEW.job_id AND event_type = PROGRESS
      AND state = PENDING AND attempts = 0 AND lease_owner IS NULL;
    INSERT INTO ferry_webhook_deliveries (endpoint_id, job_id, event_seq, event_type, state,
        attempts, next_attempt_at_ms, created_at_ms, updated_at_ms)
    SELECT e.id, NEW.job_id, NEW.seq, NEW.kind, PENDING, 0, NEW.created_at_ms,
        NEW.created_at_ms, NEW.created_at_ms
    FROM ferry_webhook_endpoints e
    WHERE e.enabled AND e.tenant = NEW.tenant
      AND (e.job_id IS NULL OR e.job_id = NEW.job_id)
      AND e.events LIKE '%,' || NEW.kind || ',%'
      AND NOT EXISTS (
          SELECT 1 FROM ferry_webhook_deliveries d
          WHERE NEW.kind = PROGRESS AND d.endpoint_id = e.id AND d.job_id = NEW.job_id
            AND d.event_type = PROGRESS AND d.state = PENDING AND d.attempts = 0
            AND d.lease_owner IS NULL AND d.event_seq = NEW.seq);
";

/// The trigger's statements as the database runs them. On SQLite `PENDING` and `PROGRESS` are
/// the literals. On PostgreSQL they are the function's constants `pending_state` and
/// `progress_type`, which plpgsql passes as parameters like `NEW.…`: its cached generic plans
/// then estimate a state by the column's number of values rather than by its statistics for
/// `'pending'`, and keep finding a job's deliveries by the job's index. (With the literals,
/// `tests/api/query_plans.rs` found plans, on its analyzed database, that walked every pending
/// delivery.)
pub fn statements(postgres: bool) -> String {
    let (pending, progress) = if postgres {
        ("pending_state", "progress_type")
    } else {
        ("'pending'", "'progress'")
    };
    BODY.replace("PENDING", pending)
        .replace("PROGRESS", progress)
}

fn up_sql(backend: DatabaseBackend) -> String {
    match backend {
        DatabaseBackend::Postgres => format!(
            "CREATE OR REPLACE FUNCTION ferry_event_deliveries() RETURNS trigger
                LANGUAGE plpgsql AS $$
             DECLARE
                 pending_state CONSTANT text := 'pending';
                 progress_type CONSTANT text := 'progress';
             BEGIN {}
                 RETURN NULL;
             END
             $$;
             DROP TRIGGER IF EXISTS ferry_job_events_deliveries ON ferry_job_events;
             CREATE TRIGGER ferry_job_events_deliveries AFTER INSERT ON ferry_job_events
                 FOR EACH ROW EXECUTE FUNCTION ferry_event_deliveries();",
            statements(true)
        ),
        _ => format!(
            "DROP TRIGGER IF EXISTS ferry_job_events_deliveries;
             CREATE TRIGGER ferry_job_events_deliveries AFTER INSERT ON ferry_job_events
             BEGIN {} END;",
            statements(false)
        ),
    }
}

fn down_sql(backend: DatabaseBackend) -> &'static str {
    match backend {
        DatabaseBackend::Postgres => {
            "DROP TRIGGER IF EXISTS ferry_job_events_deliveries ON ferry_job_events;
             DROP FUNCTION IF EXISTS ferry_event_deliveries();"
        }
        _ => "DROP TRIGGER IF EXISTS ferry_job_events_deliveries;",
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let sql = up_sql(m.get_database_backend());
        m.get_connection().execute_unprepared(&sql).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let sql = down_sql(m.get_database_backend());
        m.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
