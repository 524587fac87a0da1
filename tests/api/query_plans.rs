//! Every statement Ferry runs against a table that grows with use is served by an index, on both
//! databases, so 100,000 queued or finished jobs do not slow creating, claiming, polling or
//! listing them. The statements are not listed here by hand (a list would drift from the code):
//! a real `ferry serve` logs every statement it runs (`sqlx::query` at debug, as JSON) while the
//! test drives every feature, and the test asks the database to EXPLAIN each one.
//!
//! - SQLite: `EXPLAIN QUERY PLAN` (placeholders may stay unbound). A `SCAN` of a growing table
//!   reads all of it. A scan along an index is an ordered walk, fine only when the statement
//!   stops at a `LIMIT` and nothing is sorted first.
//! - PostgreSQL: the statement is prepared and its generic plan (the one a prepared statement
//!   settles on, independent of parameter values) explained with sequential scans priced out
//!   (`enable_seqscan` off: the tables the test could not fill hold a handful of rows, which a
//!   sequential scan reads cheapest), so an index that can serve the statement is always the
//!   plan's choice, and a `Seq Scan` left in the plan means there is none. An index walked
//!   whole, or only by a class column, counts as reading the class, as on SQLite.
//!
//! Both databases hold a history first (110,000 jobs, 10,000 queued tasks), analyzed on
//! PostgreSQL, so its plans are those of a service in use rather than of an empty database.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};

use crate::{helpers::*, webhook_receiver::Receiver};

const WITHIN: Duration = Duration::from_secs(60);

/// Tables that stay small whatever the traffic: what they hold is configuration or one row per
/// running process, so reading them whole is fine.
const SMALL_TABLES: &[&str] = &[
    // apalis' registry of worker processes: one row per process start, purged when stale.
    "Workers",
    "workers",
    // Server-wide webhook endpoints, created by operators; a job's own endpoint is found by
    // the job's id.
    "ferry_webhook_endpoints",
    // API keys, made by people: a few per tenant (revoked ones stay, to be listed).
    "ferry_api_keys",
    "seaql_migrations",
    // SQLite's planner statistics: a row per index (`storage::planner_stats`).
    "sqlite_stat1",
    // Ferry's registry of worker processes (`service::workers`): a row per live process, and
    // rows of processes gone are deleted within an hour.
    "ferry_workers",
    // Where each tag of each kind points: configuration-sized.
    "ferry_kind_tags",
];

/// Drives every feature of the API against `app`, so that the statements behind each of them
/// run at least once: both forms of job creation (with an Idempotency-Key and a job webhook),
/// progress, intermediate and final results, a retried failure, a cancel, every list and filter,
/// events and the feed, logs, downloads, webhooks and their deliveries, and a delete.
async fn exercise_every_feature(app: &TestApp, receiver: &Receiver) {
    let hook = app
        .request("post", "/v1/webhooks", |r| {
            r.json(&json!({"url": receiver.url}))
        })
        .await;
    assert_eq!(hook.status, 201, "{}", hook.body);
    let hook = hook.body["id"].as_str().unwrap().to_owned();

    let ok = app
        .create_job_from_file(
            "model",
            "params_json=%7B%22steps%22%3A2%2C%22step_seconds%22%3A0.05%7D",
            bytes(3000, 1),
            &[("Idempotency-Key", "plans-1")],
        )
        .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
    let ok = ok.body["id"].as_str().unwrap().to_owned();
    let upload = app.upload(bytes(100, 2)).await;
    let hooked = app
        .create_job(
            &json!({"kind": "model", "inputs": {"scan": upload["id"]},
                    "webhook": {"url": receiver.url}}),
            &[("Idempotency-Key", "plans-2")],
        )
        .await;
    assert_eq!(hooked.status, 202, "{}", hooked.body);
    let hooked = hooked.body["id"].as_str().unwrap().to_owned();
    // The feed's end (`after=now`, what the dashboard asks first).
    let now = app.request("get", "/v1/events?after=now", |r| r).await;
    assert_eq!(now.status, 200, "{}", now.body);
    // A scrape reads the queue's gauges from the jobs (grouped by kind, and by worker).
    let metrics = app.request("get", "/metrics", |r| r).await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let failing = app
        .submit("model", bytes(10, 3), json!({"mode": "fail"}))
        .await;
    let failing = failing["id"].as_str().unwrap().to_owned();
    let pid_file = app.dir.path().join("sleeper.pid");
    let sleeper = app
        .submit(
            "model",
            bytes(10, 4),
            json!({"mode": "sleep", "pid_file": pid_file}),
        )
        .await;
    let sleeper = sleeper["id"].as_str().unwrap().to_owned();

    app.wait_status(&ok, "succeeded", WITHIN).await;
    app.wait_status(&hooked, "succeeded", WITHIN).await;
    app.wait_status(&failing, "failed", WITHIN).await;
    app.wait_status(&sleeper, "running", WITHIN).await;
    assert_eq!(app.cancel_job(&sleeper).await.status, 202);
    app.wait_status(&sleeper, "canceled", WITHIN).await;

    let etag = app
        .get_job(&ok)
        .await
        .header("etag")
        .expect("an ETag")
        .to_owned();
    let unchanged = app
        .get_job_at(&app.base, &ok, &[("If-None-Match", &etag)])
        .await;
    assert_eq!(unchanged.status, 304);
    let first_page = app.list_jobs("limit=1").await;
    assert_eq!(first_page.status, 200, "{}", first_page.body);
    let next = first_page.body["next"].as_str().expect("a second page");
    for query in [
        "status=succeeded",
        "status=queued",
        "kind=model",
        "status=failed&kind=model",
        "created_after=2020-01-01T00:00:00Z&created_before=2100-01-01T00:00:00Z",
        &format!("limit=1&next={next}"),
    ] {
        let reply = app.list_jobs(query).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    }
    assert_eq!(app.list_uploads("attached=false").await.status, 200);
    assert_eq!(
        app.get_upload(upload["id"].as_str().unwrap()).await.status,
        200
    );
    for path in [
        format!("/v1/jobs/{ok}/events"),
        format!("/v1/jobs/{ok}/events?after=1"),
        format!("/v1/jobs/{ok}/logs?tail=5"),
        format!("/v1/jobs/{ok}/results"),
        format!("/v1/jobs/{hooked}/webhook-deliveries"),
        "/v1/events".to_owned(),
        format!("/v1/events?job={ok}&type=succeeded"),
        "/v1/events?kind=model&status=failed".to_owned(),
        "/v1/webhooks".to_owned(),
        format!("/v1/webhooks/{hook}"),
        format!("/v1/webhooks/{hook}/deliveries"),
    ] {
        let reply = app.get(&path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let results = app.results(&ok).await;
    let name = results[0]["name"].as_str().unwrap();
    assert_eq!(app.download_result(&ok, name, &[]).await.status, 200);
    receiver
        .wait_until(WITHIN, "the hooked job's deliveries", |r| {
            r.iter().any(|d| {
                d.json()["data"]["job_id"] == hooked.as_str() && d.json()["type"] == "succeeded"
            })
        })
        .await;
    assert_eq!(app.delete_job(&ok).await.status, 204);

    // Versions, tags, shared uploads and re-runs.
    for path in [
        "/v1/kinds",
        "/v1/kinds/seg",
        "/v1/kinds/seg/tag-moves?tag=production",
    ] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    for (method, tag) in [
        ("put", "canary"),
        ("put", "production"),
        ("delete", "canary"),
    ] {
        let reply = app
            .request(method, &format!("/v1/kinds/seg/tags/{tag}"), |r| {
                r.json(&json!({"version": "v2"}))
            })
            .await;
        assert!(reply.status < 300, "{method} {tag}: {}", reply.body);
    }
    let seg = app
        .create_job(
            &json!({"kind": "seg", "inputs": {"scan": upload["id"]}}),
            &[],
        )
        .await;
    assert_eq!(seg.status, 202, "{}", seg.body);
    assert_eq!(app.delete_job(&hooked).await.status, 204);
    let rerun = app
        .request("post", &format!("/v1/jobs/{failing}/rerun"), |r| r)
        .await;
    assert_eq!(rerun.status, 202, "{}", rerun.body);
    let batch = app
        .request("post", "/v1/jobs/rerun", |r| {
            r.header("idempotency-key", "plans-3").json(&json!({
                "kind": "model", "version": "none", "error_code": "handler_exit",
                "include_rerun": true, "created_after": "2020-01-01T00:00:00Z"
            }))
        })
        .await;
    assert_eq!(batch.status, 202, "{}", batch.body);
    let batch = batch.body["id"].as_str().unwrap().to_owned();
    let bulk = app
        .request("post", "/v1/jobs/rerun", |r| {
            r.json(&json!({"kind": "model"}))
        })
        .await;
    assert_eq!(bulk.status, 202, "{}", bulk.body);
    for query in [
        format!("rerun_of={failing}"),
        format!("rerun_batch={batch}"),
        format!("upload={}", upload["id"].as_str().unwrap()),
        "version=v2&kind=seg".to_owned(),
    ] {
        let reply = app.list_jobs(&query).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    }

    // Keys: the first one made (the server was open), then used, listed, read and revoked.
    let admin = app
        .request("post", "/v1/keys", |r| {
            r.json(&json!({"name": "plans", "scopes": ["admin", "jobs:read"]}))
        })
        .await;
    assert_eq!(admin.status, 201, "{}", admin.body);
    let admin = admin.body["key"].as_str().unwrap().to_owned();
    app.wait_keys_required(&app.base).await;
    let other = app
        .request("post", "/v1/keys", |r| {
            r.bearer_auth(&admin).json(&json!({"name": "other"}))
        })
        .await;
    assert_eq!(other.status, 201, "{}", other.body);
    let other = other.body["id"].as_str().unwrap().to_owned();
    for path in [
        "/v1/jobs".to_owned(),
        "/v1/keys".into(),
        format!("/v1/keys/{other}"),
        "/v1/audit".into(),
        format!("/v1/audit?key={other}&limit=5"),
        format!("/v1/audit?object={ok}"),
        "/v1/audit?action=GET%20%2Fv1%2Fjobs&next=1000000".into(),
    ] {
        let reply = app.request("get", &path, |r| r.bearer_auth(&admin)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let revoked = app
        .request("post", &format!("/v1/keys/{other}/revoke"), |r| {
            r.bearer_auth(&admin)
        })
        .await;
    assert_eq!(revoked.status, 200, "{}", revoked.body);
    // A few reconciler rounds (every 300 ms in the tests), with nothing left to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// The log target of Ferry's reads on SQLite that bypass sqlx.
const INLINE_READS: &str = "ferry::storage::inline_reads";
/// Every statement a server runs, logged at debug (sqlx's and Ferry's own).
const STATEMENT_LOGS: &str = "warn,sqlx::query=debug,ferry::storage::inline_reads=debug";

/// The statements a `ferry` process logged (`--log-format json`, [`STATEMENT_LOGS`] at debug):
/// sqlx puts a short statement in `summary` and a long one in `db.statement`; Ferry's reads on
/// SQLite that bypass sqlx (`storage::inline_reads`) put theirs in `statement`.
fn statements_in(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["target"] == "sqlx::query" || event["target"] == INLINE_READS)
        .map(|event| {
            ["statement", "db.statement", "summary"]
                .iter()
                .map(|field| event[field].as_str().unwrap_or_default().trim())
                .find(|text| !text.is_empty())
                .unwrap_or_default()
                .to_owned()
        })
        .filter(|sql| is_data_statement(sql))
        .collect()
}

/// The statements the webhook outbox's trigger runs inside each event's `INSERT` (which no log
/// shows), its `NEW.…` values as placeholders.
fn outbox_trigger_statements(backend: Backend) -> Vec<String> {
    // With their types on PostgreSQL, which cannot deduce one type for a placeholder used both
    // as a `varchar` column's value and in a text concatenation. Its function's constants are
    // parameters too, as plpgsql passes them.
    let values = [
        ("NEW.seq", "bigint"),
        ("NEW.created_at_ms", "bigint"),
        ("NEW.kind", "text"),
        ("NEW.job_id", "uuid"),
        ("NEW.tenant", "text"),
        ("pending_state", "text"),
        ("progress_type", "text"),
    ];
    let postgres = backend == Backend::PostgresS3;
    let statements: Vec<String> = ferry_migrations::outbox_trigger_statements(postgres)
        .split(';')
        .map(str::trim)
        .filter(|sql| !sql.is_empty())
        .map(|sql| {
            // Numbered without gaps: PostgreSQL cannot prepare a statement that skips one.
            let used: Vec<_> = values
                .iter()
                .filter(|(value, _)| sql.contains(value))
                .collect();
            let mut sql = sql.to_owned();
            for (n, (value, pg_type)) in used.into_iter().enumerate() {
                let placeholder = match backend {
                    Backend::Sqlite => "?".to_owned(),
                    Backend::PostgresS3 => format!("${}::{pg_type}", n + 1),
                };
                sql = sql.replace(value, &placeholder);
            }
            sql
        })
        .collect();
    assert_eq!(statements.len(), 2, "the trigger's update and insert");
    assert!(statements.iter().all(|sql| !sql.contains("NEW.")));
    statements
}

/// Reads and writes of rows, which a plan describes; not transaction control, DDL or settings,
/// and not the migrations' own bookkeeping (run once, at start-up).
fn is_data_statement(sql: &str) -> bool {
    let first = sql
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    ["SELECT", "INSERT", "UPDATE", "DELETE", "WITH"].contains(&first.as_str())
        && !sql.contains("seaql_migrations")
        && !sql.contains("_sqlx_migrations")
        && !sql.contains("sqlite_master")
        && !sql.contains("pg_catalog")
        && !sql.contains("information_schema")
}

/// Columns whose value names a whole class of rows, not one row or a few: a search on them
/// alone reads the class (every queued job, every delivery of a server-wide endpoint).
const CLASS_COLUMNS: &[&str] = &[
    "status",
    "state",
    "kind",
    "job_type",
    "endpoint_id",
    "enabled",
    // apalis' tasks by worker: every task the worker locked, the ones it finished in the last
    // hour included (`queue::purge_finished` keeps them that long).
    "lock_by",
];

/// Statements allowed to read a class of rows, each with the reason. Kept short on purpose.
const ACCEPTED: &[(&str, &str)] = &[
    (
        "Re-enqueued due to worker heartbeat timeout",
        "apalis' recovery of a dead worker's tasks reads the tasks in progress (Running or \
         Queued), which the workers' concurrency bounds",
    ),
    (
        "WITH candidates AS",
        "apalis' fetch: each branch walks its index in order and stops at the batch size; only \
         those candidates are sorted",
    ),
    (
        "Workers (id, worker_type, storage_name",
        "apalis registering a worker on SQLite: its upsert makes SQLite check the foreign key \
         `Jobs.lock_by` for the worker's id, which is new on every start (Ferry names each \
         consumer with a fresh ULID), so the check finds no task",
    ),
    (
        "WHERE jobs.lock_by = $2",
        "apalis' acknowledgement on PostgreSQL: with this test's few tasks per worker the \
         planner walks the worker's tasks; with a worker's hour of finished tasks (200,000, \
         analyzed) it looks the tasks up by primary key instead (checked by hand: README, \
         'A deep queue')",
    ),
    (
        "COUNT(\"id\") AS \"n\", MIN(\"created_at_ms\") AS \"oldest\"",
        "a /metrics scrape counts the queued jobs by kind and version: the queue's depth is \
         that class itself. Once per scrape (every 15–60 s in Prometheus), on a read connection",
    ),
    (
        "\"ferry_jobs\".\"lease_owner\", COUNT(\"id\")",
        "a /metrics scrape counts the running jobs by worker, which the workers' concurrency \
         bounds",
    ),
    (
        "a.status NOT IN ('Pending', 'Queued', 'Running')",
        "the search for lost dispatches reads every queued job (a lost dispatch leaves no mark \
         of its own); it runs on every 12th reconciler pass, on a read connection",
    ),
];

fn is_small(table: &str) -> bool {
    let bare = table.rsplit('.').next().unwrap_or(table).trim_matches('"');
    SMALL_TABLES.contains(&bare)
}

fn accepted(sql: &str) -> bool {
    ACCEPTED.iter().any(|(pattern, _)| sql.contains(pattern))
}

/// A walk along an index stops early only at a `LIMIT`, with nothing sorted or aggregated
/// first.
fn stops_early(sql: &str, sorts: bool) -> bool {
    let upper = sql.to_ascii_uppercase();
    let aggregates = ["MIN(", "MAX(", "COUNT(", "SUM("]
        .iter()
        .any(|f| upper.contains(f));
    upper.contains(" LIMIT ") && !sorts && !aggregates
}

/// True when every column a search constrains is a class column (or there is none).
fn only_class_columns<'a>(columns: impl IntoIterator<Item = &'a str>) -> bool {
    columns.into_iter().all(|c| CLASS_COLUMNS.contains(&c))
}

/// The columns of a SQLite search's constraint list, e.g. `(status=? AND id<?)`.
fn sqlite_search_columns(step: &str) -> Vec<&str> {
    let Some(list) = step
        .rsplit_once(" (")
        .map(|(_, list)| list.trim_end_matches(')'))
    else {
        return Vec::new();
    };
    list.split(" AND ")
        .map(|term| term.split(['=', '<', '>']).next().unwrap_or(term).trim())
        .collect()
}

/// What is wrong with one SQLite plan, if anything.
fn sqlite_plan_problem(sql: &str, tables: &[String], plan: &[String]) -> Option<String> {
    let sorts = plan.iter().any(|step| step.starts_with("USE TEMP B-TREE"));
    for step in plan {
        let (rest, searched) = match step.split_once(' ') {
            Some(("SCAN", rest)) => (rest, false),
            Some(("SEARCH", rest)) => (rest, true),
            _ => continue,
        };
        let table = rest.split_whitespace().next().unwrap_or(rest);
        if is_small(table) || !tables.iter().any(|t| t == table) {
            continue;
        }
        if !searched && !rest.contains(" USING ") {
            return Some(format!("reads all of {table}"));
        }
        let whole_class = !searched || only_class_columns(sqlite_search_columns(rest));
        if whole_class && !stops_early(sql, sorts) {
            return Some(format!("reads a whole class of rows of {table}"));
        }
    }
    None
}

async fn sqlite_plans(app: &TestApp, statements: &BTreeSet<String>) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&app.database_url)
        .await
        .expect("open db");
    // Only real tables: a plan also scans subqueries, CTEs, `VALUES` lists and json_each.
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&pool)
            .await
            .expect("tables");
    // Plans as Ferry's own connections make them: with the fixed statistics Ferry writes for
    // apalis' `Jobs` (`storage::planner_stats`) and nothing else, so SQLite plans every other
    // table by its rules of thumb, which assume big tables. Other statistics (a real `ANALYZE`)
    // would change the plans.
    let mut conn = pool.acquire().await.expect("connection");
    let analyzed: Vec<String> = sqlx::query_scalar("SELECT DISTINCT tbl FROM sqlite_stat1")
        .fetch_all(&mut *conn)
        .await
        .expect("statistics");
    assert_eq!(
        analyzed,
        ["Jobs"],
        "statistics other than Ferry's own: these are not the plans Ferry runs"
    );
    let mut problems = Vec::new();
    for sql in statements {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("EXPLAIN QUERY PLAN {sql}: {e}"));
        let plan: Vec<String> = rows.into_iter().map(|row| row.3).collect();
        show_plan(sql, &plan);
        if accepted(sql) {
            continue;
        }
        if let Some(problem) = sqlite_plan_problem(sql, &tables, &plan) {
            problems.push(format!("{problem}:\n  {sql}\n  plan: {plan:?}"));
        }
    }
    drop(conn);
    pool.close().await;
    problems
}

/// With `TEST_SHOW_PLANS` set, prints every statement and its plan (for reviewing the rules).
fn show_plan(sql: &str, plan: &[String]) {
    if std::env::var_os("TEST_SHOW_PLANS").is_some() {
        eprintln!("{sql}\n    {}\n", plan.join("\n    "));
    }
}

/// The highest `$n` placeholder in a PostgreSQL statement.
fn placeholders(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// The columns of a PostgreSQL `Index Cond`, e.g. `(((status)::text = $2) AND (id = $1))`.
fn postgres_cond_columns(cond: &str) -> Vec<String> {
    cond.split(" AND ")
        .map(|term| {
            let term = term.replace(['(', ')'], "");
            let first = term.split_whitespace().next().unwrap_or_default();
            let column = first.split("::").next().unwrap_or(first);
            column.rsplit('.').next().unwrap_or(column).to_owned()
        })
        .collect()
}

/// What is wrong with one PostgreSQL plan (`EXPLAIN` text lines), if anything.
fn postgres_plan_problem(sql: &str, plan: &[String]) -> Option<String> {
    let node = |line: &str| {
        line.trim_start()
            .trim_start_matches("->")
            .trim_start()
            .to_owned()
    };
    let sorts = plan.iter().any(|line| node(line).starts_with("Sort"));
    for (i, line) in plan.iter().enumerate() {
        let step = node(line);
        if let Some(rest) = step.strip_prefix("Seq Scan on ") {
            let table = rest.split_whitespace().next().unwrap_or(rest);
            if !is_small(table) {
                return Some(format!("reads all of {table}"));
            }
            continue;
        }
        let Some((_, on)) = step
            .strip_prefix("Index ")
            .and_then(|rest| rest.split_once(" on "))
        else {
            continue;
        };
        let table = on.split_whitespace().next().unwrap_or(on);
        if is_small(table) {
            continue;
        }
        // The node's own detail lines come next, up to the next node (`-> …`).
        let cond = plan[i + 1..]
            .iter()
            .map(|l| l.trim_start())
            .take_while(|l| !l.starts_with("->"))
            .find_map(|l| l.strip_prefix("Index Cond: ").map(str::to_owned));
        let columns = cond
            .as_deref()
            .map(postgres_cond_columns)
            .unwrap_or_default();
        if only_class_columns(columns.iter().map(String::as_str)) && !stops_early(sql, sorts) {
            return Some(format!("reads a whole class of rows of {table}"));
        }
    }
    None
}

async fn postgres_plans(app: &TestApp, statements: &BTreeSet<String>) -> Vec<String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&app.database_url)
        .await
        .expect("open db");
    let mut conn = pool.acquire().await.expect("connection");
    sqlx::raw_sql("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        .execute(&mut *conn)
        .await
        .expect("planner settings");
    let mut problems = Vec::new();
    for (n, sql) in statements.iter().enumerate() {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE plan_{n} AS {sql}")))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("PREPARE {sql}: {e}"));
        let nulls = vec!["NULL"; placeholders(sql)].join(", ");
        let execute = if nulls.is_empty() {
            format!("EXPLAIN EXECUTE plan_{n}")
        } else {
            format!("EXPLAIN EXECUTE plan_{n}({nulls})")
        };
        let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(execute))
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {e}"));
        show_plan(sql, &plan);
        if accepted(sql) {
            continue;
        }
        if let Some(problem) = postgres_plan_problem(sql, &plan) {
            problems.push(format!(
                "{problem}:\n  {sql}\n  plan:\n    {}",
                plan.join("\n    ")
            ));
        }
    }
    drop(conn);
    pool.close().await;
    problems
}

/// Jobs already in the database, so the statistics the planners see are those of a service in
/// use: 100,000 finished jobs and 10,000 queued ones waiting out a retry backoff (due far in
/// the future, so no pass dispatches them). Their ids start with a zero byte: older than every
/// job the test creates, so pages and lists show the test's own jobs first.
/// [`QUEUE_HISTORY`] adds 10,000 tasks pending in a queue no worker serves.
const HISTORY: (&str, &str) = (
    "INSERT INTO ferry_jobs (id, kind, status, params, priority, timeout_ms, max_attempts, \
     attempt, created_at_ms, finished_at_ms, updated_at_ms, run_after_ms, cancel_requested, \
     event_seq, inputs, result_count) \
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 110000) \
     SELECT X'00' || randomblob(15), 'model', \
     CASE WHEN i <= 100000 THEN 'succeeded' ELSE 'queued' END, '{}', 0, 60000, 3, 1, i, \
     CASE WHEN i <= 100000 THEN i END, i, \
     CASE WHEN i <= 100000 THEN i ELSE 9000000000000000 END, 0, 3, '[]', 0 FROM n",
    "INSERT INTO ferry_jobs (id, kind, status, params, priority, timeout_ms, max_attempts, \
     attempt, created_at_ms, finished_at_ms, updated_at_ms, run_after_ms, cancel_requested, \
     event_seq, inputs, result_count) \
     SELECT ('00' || substr(md5(i::text), 3))::uuid, 'model', \
     CASE WHEN i <= 100000 THEN 'succeeded' ELSE 'queued' END, '{}', 0, 60000, 3, 1, i, \
     CASE WHEN i <= 100000 THEN i END, i, \
     CASE WHEN i <= 100000 THEN i ELSE 9000000000000000 END, false, 3, '[]', 0 \
     FROM generate_series(1, 110000) AS i",
);

const QUEUE_HISTORY: (&str, &str) = (
    "INSERT INTO Jobs (job, id, job_type, status, run_at) \
     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
     SELECT X'7b7d', printf('%026d', i), 'ferry.jobs.parked', 'Pending', 0 FROM n",
    "INSERT INTO apalis.jobs (job, id, job_type, status) \
     SELECT '\\x7b7d'::bytea, lpad(i::text, 26, '0'), 'ferry.jobs.parked', 'Pending' \
     FROM generate_series(1, 10000) AS i",
);

async fn every_statement_on_a_growing_table_is_served_by_an_index() {
    // The history holds more queued jobs than a tenant's default bound: a bound above them, so
    // that its count still runs (and is explained) but refuses nothing.
    let mut app = TestApp::spawn_process(TestConfig {
        extra_toml: format!(
            "{}\n[tenant_defaults]\nmax_queued_jobs = 1000000\n",
            crate::versions::versioned_kind()
        ),
        ..TestConfig::default()
    })
    .await;
    app.kill9_server();
    assert_eq!(app.execute_sql(HISTORY.0, HISTORY.1).await, 110_000);
    assert_eq!(
        app.execute_sql(QUEUE_HISTORY.0, QUEUE_HISTORY.1).await,
        10_000
    );
    let dir = app.dir.path().to_owned();
    let log = app.start_server_in(
        &["--log-format", "json"],
        &dir,
        &[("RUST_LOG", STATEMENT_LOGS)],
    );
    let receiver = Receiver::start();
    exercise_every_feature(&app, &receiver).await;

    let mut statements = statements_in(&std::fs::read_to_string(&log).expect("server log"));
    // A floor well below what the features above run, so a log format sqlx changed (nothing
    // parsed) fails here instead of passing with nothing checked.
    assert!(
        statements.len() >= 40,
        "{} statements: {statements:#?}",
        statements.len()
    );
    for table in [
        "ferry_jobs",
        "ferry_job_events",
        "ferry_results",
        "ferry_uploads",
    ] {
        assert!(
            statements.iter().any(|sql| sql.contains(table)),
            "no statement on {table} in the log"
        );
    }
    statements.extend(outbox_trigger_statements(app.backend));
    // PostgreSQL's statistics are autovacuum's, which would have analyzed the history by now in
    // a service in use; SQLite has none (see `sqlite_plans`).
    if app.backend == Backend::PostgresS3 {
        app.execute_sql("", "ANALYZE").await;
    }
    let problems = match app.backend {
        Backend::Sqlite => sqlite_plans(&app, &statements).await,
        Backend::PostgresS3 => postgres_plans(&app, &statements).await,
    };
    assert!(
        problems.is_empty(),
        "{} of {} statements are not served by an index:\n\n{}",
        problems.len(),
        statements.len(),
        problems.join("\n\n")
    );
}

crate::matrix!(every_statement_on_a_growing_table_is_served_by_an_index);
