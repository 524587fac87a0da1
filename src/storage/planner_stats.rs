//! Fixed planner statistics for apalis' SQLite task table (`Jobs`), written once at start-up,
//! so that its statements look tasks up by id however many tasks pile up.
//!
//! Why: SQLite plans without statistics by rules of thumb that take every index to be
//! selective. Two of apalis' statements (its SQL, not Ferry's) then walk an index that grows
//! with the queue's history instead of looking the few tasks they touch up by id:
//! - locking the tasks a worker fetched (`… WHERE id IN (json_each(?)) AND (status = 'Queued'
//!   OR status = 'Pending' OR …)`) walks every task with those statuses: with 100,000 tasks
//!   queued of another kind, submit → start went from 4 to 45 ms (p50; README, "A deep queue");
//! - acknowledging a finished task (`… WHERE Jobs.id = j.task_id AND Jobs.lock_by = ?`) walks
//!   every task the worker ever locked, finished ones included, which are kept for an hour
//!   (`queue::purge_finished`): at 150 tasks a second, half a million rows.
//!
//! Why fixed numbers rather than `ANALYZE`: what matters is the shape (an id names one task; a
//! status or a worker names thousands), and that holds for every queue that is big enough to
//! matter. Real statistics of an empty or young database would say the opposite, plans would
//! change as they are refreshed, and statistics written by one process reach the connections of
//! another only when those reload their schema. SQLite documents writing `sqlite_stat1` by hand
//! for exactly this ("Manual Control Of Query Plans Using SQLITE_STAT Tables").
//!
//! Only indexes whose estimate decides those statements get a row; every other index of `Jobs`
//! and all of Ferry's own tables keep the rules of thumb, under which `tests/api/query_plans.rs`
//! checks every statement. Statistics already present for `Jobs` (an operator ran `ANALYZE`)
//! are left alone.

use sqlx::SqlitePool;

/// `(index, stat)` rows of `sqlite_stat1` for table `Jobs`: the index's row count, then the
/// average number of rows per distinct value of its leading column(s).
const JOBS_STATS: &[(&str, &str)] = &[
    // The task id: unique.
    ("sqlite_autoindex_Jobs_1", "100000 1"),
    // A status (and then `run_at`) names a tenth of the tasks; two statuses a fifth.
    ("idx_jobs_status_run_at", "100000 10000 2"),
    ("idx_jobs_claimable", "100000 10000 2"),
    // A worker (`lock_by`) names a fifth: less selective than a status, so the search for a
    // dead worker's tasks still starts from the statuses in progress, not from the worker.
    ("LIdx", "100000 20000"),
];

/// Writes [`JOBS_STATS`] unless `Jobs` has statistics already, in one transaction that creates
/// `sqlite_stat1` if it is missing (`ANALYZE sqlite_schema` analyzes nothing else) and changes
/// the schema: a connection reads statistics only when it loads its schema, which every
/// connection open on the database does at its next statement once the schema changed.
/// Creating `sqlite_stat1` is such a change, but the table may be there already (an operator
/// analyzed other tables), so a table of Ferry's own is created and dropped as well.
pub async fn seed(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("ANALYZE sqlite_schema")
        .execute(&mut *tx)
        .await?;
    let present: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_stat1 WHERE tbl = 'Jobs'")
        .fetch_one(&mut *tx)
        .await?;
    if present > 0 {
        return Ok(()); // rolled back: nothing was written
    }
    for (index, stat) in JOBS_STATS {
        sqlx::query("INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('Jobs', ?1, ?2)")
            .bind(index)
            .bind(stat)
            .execute(&mut *tx)
            .await?;
    }
    for ddl in [
        "CREATE TABLE ferry_statistics_changed (x)",
        "DROP TABLE ferry_statistics_changed",
    ] {
        sqlx::query(ddl).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    // This connection reloads the statistics now (the others did with the schema change).
    sqlx::query("ANALYZE sqlite_schema").execute(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row, SqliteConnection};

    use crate::storage::{Db, Pool};

    /// How `conn` plans apalis' statement that locks fetched tasks (see the module notes).
    async fn lock_plan(conn: &mut SqliteConnection) -> String {
        let rows = sqlx::raw_sql(
            "EXPLAIN QUERY PLAN UPDATE Jobs SET status = 'Running' WHERE id IN \
             (SELECT value FROM json_each('[]')) AND (status = 'Queued' OR status = 'Pending')",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("plan");
        rows.iter()
            .map(|row| row.get::<String, _>(3))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn jobs_stats(db: &Db) -> Vec<(String, String)> {
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!("a SQLite database")
        };
        sqlx::query_as("SELECT idx, stat FROM sqlite_stat1 WHERE tbl = 'Jobs' ORDER BY idx")
            .fetch_all(pool)
            .await
            .expect("statistics")
    }

    async fn migrated(url: &str) -> Db {
        let db = Db::connect(url).await.expect("open");
        db.migrate().await.expect("migrate");
        db
    }

    /// Written once for every index named, each an index apalis' schema has; an operator's own
    /// statistics are kept over restarts.
    #[tokio::test]
    async fn statistics_are_written_once_and_never_over_an_operators_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let db = migrated(&url).await;
        let mut expected: Vec<(String, String)> = super::JOBS_STATS
            .iter()
            .map(|(idx, stat)| (idx.to_string(), stat.to_string()))
            .collect();
        expected.sort();
        assert_eq!(jobs_stats(&db).await, expected);
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!()
        };
        let indexes: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'Jobs'",
        )
        .fetch_all(pool)
        .await
        .expect("indexes");
        for (index, _) in super::JOBS_STATS {
            assert!(
                indexes.iter().any(|i| i == index),
                "no index {index} on Jobs"
            );
        }

        sqlx::query("UPDATE sqlite_stat1 SET stat = '7 7' WHERE tbl = 'Jobs' AND idx = 'LIdx'")
            .execute(pool)
            .await
            .expect("an operator's statistics");
        drop(db);
        let again = migrated(&url).await;
        let stats = jobs_stats(&again).await;
        assert_eq!(stats.len(), expected.len());
        assert!(stats.contains(&("LIdx".to_owned(), "7 7".to_owned())));
    }

    /// A connection open before the statistics are written plans with them from its next
    /// statement, also when `sqlite_stat1` was there already (so creating it changed nothing).
    #[tokio::test]
    async fn connections_already_open_plan_with_the_statistics() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("ferry.db").display());
        let db = migrated(&url).await;
        let Pool::Sqlite(pool) = db.pool() else {
            unreachable!()
        };
        // As if an operator's `ANALYZE` had covered another table only.
        sqlx::raw_sql(
            "DELETE FROM sqlite_stat1; \
             INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES ('ferry_jobs', NULL, '10')",
        )
        .execute(pool)
        .await
        .expect("an operator's statistics");
        let mut open = SqliteConnection::connect(&url).await.expect("connect");
        let before = lock_plan(&mut open).await;
        assert!(before.contains("idx_jobs_status_run_at"), "{before}");

        super::seed(pool).await.expect("seed");
        sqlx::raw_sql("SELECT COUNT(*) FROM Jobs")
            .execute(&mut open)
            .await
            .expect("a statement");
        let after = lock_plan(&mut open).await;
        assert!(after.contains("sqlite_autoindex_Jobs_1 (id=?)"), "{after}");
    }
}
