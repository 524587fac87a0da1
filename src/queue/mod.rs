//! apalis as the dispatch transport, and nothing more. A dispatch says "attempt job J now" and
//! carries the `dispatch_id` the job row expects; the job row, not apalis, decides whether the
//! delivery is current (see `worker::attempt`). Everything apalis-specific lives here:
//!
//! - one queue per handler kind (per version, for a kind with versions), named explicitly
//!   (`ferry.jobs.<kind>` or `ferry.jobs.<kind>@<version>`), never the Rust type name;
//! - task ids are ULIDs (a non-ULID id poisons every worker that fetches it);
//! - `max_attempts = 1` in apalis: retries, backoff and timeouts are Ferry's, because apalis
//!   retries at once without backoff and its timeout/panic layers strand rows in `Running`;
//! - every worker gets a unique name per process start, and is supervised: any backend error ends
//!   `worker.run()`, so it is rebuilt after a pause;
//! - enqueueing happens inside the caller's [`Tx`], so a job row and its dispatch commit together;
//! - a consumer looks for work when woken, and again shortly after, so that a wake-up spent
//!   during a fetch does not leave a dispatch to the backstop tick ([`wake`]);
//! - apalis does not mark a fetched task `Running` (`lock_tasks(false)`): that is one write per
//!   task for a status Ferry does not read (a fetched task is `Queued` until acknowledged, and
//!   apalis re-enqueues a dead worker's `Queued` tasks as it does its `Running` ones).

pub mod wake;

use std::{sync::Arc, time::Duration};

use apalis::prelude::{BoxDynError, Data, TaskBuilder, TaskId, WorkerBuilder, WorkerBuilderExt};
use apalis_core::backend::ext::poll_strategy::PollWith;
use futures_util::{
    StreamExt,
    future::BoxFuture,
    stream::{self, BoxStream},
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use ulid::Ulid;
use uuid::Uuid;
use wake::Wakeups;

use crate::storage::{Db, Pool, StorageError, Tx, TxInner};

/// The payload of an apalis task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dispatch {
    pub job_id: Uuid,
    pub dispatch_id: String,
}

/// What a consumer does with each delivery. Returning `Err` only logs: recovery is the
/// reconciler's job, driven by Ferry's own tables.
///
/// A named struct rather than a bare `Arc<dyn Fn…>`: apalis' handler bounds are higher-ranked,
/// and a trait object behind a type without lifetime parameters keeps them provable.
#[derive(Clone)]
pub struct DispatchFn(pub Arc<dyn Fn(Dispatch) -> BoxFuture<'static, ()> + Send + Sync + 'static>);

/// The queue of what a consumer serves: a kind, or `kind@version` (see `domain::serve_key`).
pub fn queue_name(serves: &str) -> String {
    format!("ferry.jobs.{serves}")
}

/// A job's priority in apalis: `2 × priority + 1`, or `2 × priority` for a bulk re-run's job,
/// so that re-runs wait behind the other work of their priority instead of flooding ahead of
/// it (apalis runs higher priorities first).
pub fn queue_priority(priority: i32, bulk_rerun: bool) -> i32 {
    let priority = priority.max(0) * 2;
    if bulk_rerun { priority } else { priority + 1 }
}

/// A new dispatch id whose ULID time is `order_ms` (the job's creation time): apalis breaks ties
/// between tasks due in the same second by id, so jobs then run in creation order to the
/// millisecond, and a job dispatched again keeps its place.
pub fn new_dispatch_id(order_ms: i64) -> String {
    Ulid::from_parts(order_ms.max(0) as u64, rand::random::<u128>()).to_string()
}

/// What decides a new dispatch's place in its kind's queue (see [`QueueState::fair_place`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueState {
    /// The tenant's queued jobs (of every kind), counted in the dispatching transaction.
    pub tenant_queued: i64,
    /// The place (`run_at`, Unix seconds) of the first dispatch waiting in the queue at the
    /// same priority (apalis', see [`queue_priority`]); `None` when none waits.
    pub head: Option<i64>,
}

impl QueueState {
    /// Reads it in `tx` in one statement: the count through the (tenant, status) index, the
    /// head through apalis' own fetch index (job type, priority, run_at), so it costs the same
    /// however deep the queue.
    pub async fn read(
        tx: &mut Tx,
        tenant: &str,
        serves: &str,
        queue_priority: i32,
    ) -> Result<Self, StorageError> {
        let queue = queue_name(serves);
        let (tenant_queued, head): (i64, i64) = match &mut tx.inner {
            // `INDEXED BY` apalis' fetch index (partial, on pending tasks): by its rules of
            // thumb SQLite would rather walk (job_type, status, run_at) until a task of the
            // priority turns up, all of the kind's pending tasks when none has it.
            TxInner::Sqlite(inner) => {
                sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM ferry_jobs WHERE tenant = ?1 \
                       AND status = 'queued'), \
                     COALESCE((SELECT run_at FROM Jobs INDEXED BY idx_jobs_pending \
                       WHERE job_type = ?2 AND status = 'Pending' AND lock_by IS NULL \
                       AND priority = ?3 ORDER BY run_at LIMIT 1), -1)",
                )
                .bind(tenant)
                .bind(&queue)
                .bind(queue_priority.max(0))
                .fetch_one(&mut **inner)
                .await?
            }
            TxInner::Postgres(inner) => {
                sqlx::query_as(
                    "SELECT (SELECT COUNT(*) FROM ferry_jobs WHERE tenant = $1 \
                       AND status = 'queued'), \
                     COALESCE((SELECT EXTRACT(EPOCH FROM MIN(run_at))::BIGINT FROM apalis.jobs \
                       WHERE job_type = $2 AND status = 'Pending' AND priority = $3), -1)",
                )
                .bind(tenant)
                .bind(&queue)
                .bind(queue_priority.max(0))
                .fetch_one(&mut **inner)
                .await?
            }
        };
        Ok(Self {
            tenant_queued,
            head: (head >= 0).then_some(head),
        })
    }

    /// Fair share between tenants: a dispatch goes as far behind the queue's head as its
    /// tenant has jobs queued, so one tenant's 10,000 queued jobs do not make another's one job
    /// wait for all of them — each tenant's n-th job in line sorts with the others' n-th (start-
    /// time fair queuing, with the queue's head as virtual time). The place is apalis' `run_at`
    /// (in seconds: apalis runs due tasks by priority, then `run_at`, then id, the ULID made
    /// from the job's creation time), always in the past (due at once): delays are Ferry's
    /// business, not apalis'.
    pub fn fair_place(&self, now_ms: i64) -> i64 {
        let now_secs = now_ms.max(0) / 1000;
        (self.head.unwrap_or(0) + self.tenant_queued.max(0)).min(now_secs)
    }
}

impl QueueState {
    /// Work dispatched again (interrupted, retried, lost, or parked for a running slot) goes
    /// ahead of everything waiting at its priority: it had reached the front once already.
    pub fn front_place(&self) -> i64 {
        self.head.map_or(0, |head| (head - 1).max(0))
    }
}

/// Enqueues a dispatch in `tx` at `place` (see [`QueueState::fair_place`]); it becomes visible
/// to workers when `tx` commits.
pub async fn enqueue(
    tx: &mut Tx,
    serves: &str,
    dispatch: &Dispatch,
    queue_priority: i32,
    place: i64,
) -> Result<(), StorageError> {
    let args = serde_json::to_vec(dispatch).map_err(|e| StorageError::Queue(e.into()))?;
    let task = TaskBuilder::new(args)
        .task_id(TaskId::from_string(dispatch.dispatch_id.clone()))
        .max_attempts(1)
        .priority(queue_priority.max(0) as usize)
        .run_at_timestamp(place.max(0) as u64)
        .build();
    let queue = queue_name(serves);
    match &mut tx.inner {
        TxInner::Sqlite(inner) => {
            apalis_sqlite::queries::push_tasks(&mut **inner, &queue, &[task])
                .await
                .map_err(|e| StorageError::Queue(e.into()))?;
            tx.dispatched_to(&queue);
            Ok(())
        }
        // The insert's NOTIFY fires when `tx` commits, waking listening workers at once.
        TxInner::Postgres(tx) => {
            apalis_postgres::queries::push_tasks(&mut **tx, &queue, vec![task])
                .await
                .map_err(|e| StorageError::Queue(e.into()))
        }
    }
}

/// Queued jobs waiting out a retry backoff (no dispatch yet) that ended by `now_ms`, most urgent
/// first: the reconciler dispatches them. Served by the index on (status, dispatch_id,
/// run_after_ms), so it reads only those jobs, however many others are queued.
pub async fn due_retries(db: &Db, now_ms: i64, limit: i64) -> Result<Vec<Uuid>, StorageError> {
    let [now, max] = match db.pool() {
        Pool::Sqlite(_) => ["?1", "?2"],
        Pool::Postgres(_) => ["$1", "$2"],
    };
    let sql = format!(
        "SELECT id FROM ferry_jobs WHERE status = 'queued' AND dispatch_id IS NULL \
         AND run_after_ms <= {now} ORDER BY priority DESC, created_at_ms ASC LIMIT {max}"
    );
    fetch_ids(db.pool(), sql, &[now_ms, limit]).await
}

/// Queued jobs whose dispatch apalis no longer holds as pending or in progress although they
/// were due by `lost_before_ms` (lost to a crash between apalis' bookkeeping and ours, or
/// removed behind Ferry's back): the reconciler dispatches them again. Reads apalis' task table
/// (`Jobs` on SQLite, `apalis.jobs` on PostgreSQL: id, status), one of the two places Ferry
/// touches apalis' schema. It looks at every queued job (a lost dispatch leaves no mark of its
/// own), so the reconciler runs it only every few passes, on a read connection.
pub async fn lost_dispatches(
    db: &Db,
    lost_before_ms: i64,
    limit: i64,
) -> Result<Vec<Uuid>, StorageError> {
    let (apalis_jobs, [lost, max]) = match db.pool() {
        Pool::Sqlite(_) => ("Jobs", ["?1", "?2"]),
        Pool::Postgres(_) => ("apalis.jobs", ["$1", "$2"]),
    };
    let sql = format!(
        "SELECT j.id FROM ferry_jobs j LEFT JOIN {apalis_jobs} a ON a.id = j.dispatch_id \
         WHERE j.status = 'queued' AND j.dispatch_id IS NOT NULL AND j.run_after_ms < {lost} \
         AND (a.id IS NULL OR a.status NOT IN ('Pending', 'Queued', 'Running')) LIMIT {max}"
    );
    fetch_ids(db.read_pool(), sql, &[lost_before_ms, limit]).await
}

/// Runs a query for job ids with `params` bound in order, on either database (sqlx's `Any`
/// driver would not take our pools).
async fn fetch_ids(pool: &Pool, sql: String, params: &[i64]) -> Result<Vec<Uuid>, StorageError> {
    macro_rules! fetch {
        ($pool:expr) => {{
            let mut query = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
            for param in params {
                query = query.bind(*param);
            }
            query.fetch_all($pool).await?
        }};
    }
    Ok(match pool {
        Pool::Sqlite(pool) => fetch!(pool),
        Pool::Postgres(pool) => fetch!(pool),
    })
}

/// Deletes apalis' records of deliveries finished before `before_secs` (Unix seconds), which
/// would otherwise accumulate forever. Ferry never needs them: a finished delivery's job was
/// claimed (or the delivery was stale). apalis' own vacuum is not used: on SQLite it ignores the
/// age and deletes tasks finished seconds ago.
pub async fn purge_finished(db: &Db, before_secs: i64) -> Result<u64, StorageError> {
    match db.pool() {
        Pool::Sqlite(pool) => Ok(sqlx::query(
            "DELETE FROM Jobs WHERE job_type LIKE 'ferry.jobs.%' \
             AND status IN ('Done', 'Failed', 'Killed') AND done_at IS NOT NULL AND done_at < ?1",
        )
        .bind(before_secs)
        .execute(pool)
        .await?
        .rows_affected()),
        Pool::Postgres(pool) => Ok(sqlx::query(
            "DELETE FROM apalis.jobs WHERE job_type LIKE 'ferry.jobs.%' \
             AND status IN ('Done', 'Failed', 'Killed') AND done_at IS NOT NULL \
             AND done_at < to_timestamp($1)",
        )
        .bind(before_secs as f64)
        .execute(pool)
        .await?
        .rows_affected()),
    }
}

/// How often an idle PostgreSQL consumer looks for work besides being notified (see
/// [`wake`] for why a notification is not left to this tick).
const PG_BACKSTOP_POLL: Duration = Duration::from_millis(250);

/// A PostgreSQL consumer's notifications: apalis' LISTEN on its insert trigger's channel,
/// filtered to `queue`. A notification that could not be read still means "look".
fn notified(pool: sqlx::PgPool, queue: String) -> BoxStream<'static, ()> {
    wake::as_wakeups(apalis_postgres::Pubsub::new(pool, queue))
}

/// A SQLite consumer's wake-ups: this process committed a dispatch to `queue` (see
/// `storage::changes::QueueWakeups`). Other processes' dispatches (a `ferry worker` beside
/// `ferry serve --no-workers`) are found by the consumer's tick.
fn pushed(db: &Db, queue: String) -> BoxStream<'static, ()> {
    stream::unfold(
        (db.queue_wakeups().subscribe(), queue),
        |(mut wakeups, queue)| async move {
            loop {
                match wakeups.recv().await {
                    Ok(woken) if woken == queue => return Some(((), (wakeups, queue))),
                    Ok(_) => {}
                    // Missed some: one of them may have been ours.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some(((), (wakeups, queue)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    )
    .boxed()
}

/// How long a stopped queue consumer waits before it is rebuilt, the first time.
const FIRST_RESTART_PAUSE: Duration = Duration::from_millis(200);
/// A consumer that ran this long before it stopped is rebuilt after [`FIRST_RESTART_PAUSE`]
/// again, not after the longer pause its earlier failures had built up.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Settings of one consumer (one handler kind in one process).
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// What it serves: a kind, or `kind@version`.
    pub serves: String,
    pub concurrency: usize,
    pub poll_interval: Duration,
}

/// Builds one apalis worker over `$backend` and runs it until `$shutdown` fires. A macro rather
/// than a generic function: apalis' worker bounds are long and differ per backend, and this is
/// the only place they would be spelled out.
macro_rules! run_worker {
    ($backend:expr, $name:expr, $settings:expr, $on_dispatch:expr, $stop:expr) => {{
        let stop = $stop.clone();
        WorkerBuilder::new($name.clone())
            .backend($backend)
            .concurrency($settings.concurrency)
            .data($on_dispatch.clone())
            .build(deliver)
            .run_until(async move {
                stop.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await
    }};
}

/// Runs a supervised apalis worker for one kind until `shutdown` fires; in-flight deliveries are
/// awaited before it returns.
pub async fn run_consumer(
    db: Db,
    settings: ConsumerSettings,
    on_dispatch: DispatchFn,
    shutdown: CancellationToken,
) {
    let queue = queue_name(&settings.serves);
    let mut pause = FIRST_RESTART_PAUSE;
    loop {
        let name = format!("ferry-{}-{}", settings.serves, Ulid::new());
        let began = tokio::time::Instant::now();
        // Ends this worker on shutdown, or when its wake-ups end (a lost LISTEN connection),
        // so that it is rebuilt with new ones.
        let stop = shutdown.child_token();
        let result = match db.queue_pool() {
            Pool::Sqlite(pool) => {
                let config = apalis_sqlite::Config::default()
                    .queue(&queue)
                    // Fetch no more than can run: prefetched tasks would wait here while another
                    // worker idles.
                    .batch_size(settings.concurrency)
                    .heartbeat_interval(Duration::from_secs(5))
                    .missed_heartbeats(3)
                    .lock_tasks(false);
                // Woken at once by this process's dispatches, and polling for other processes'.
                let wake_ups = Wakeups::new(
                    pushed(&db, queue.clone()),
                    settings.poll_interval,
                    stop.clone(),
                );
                let storage =
                    apalis_sqlite::SqliteStorage::<Dispatch>::new(pool).with_config(config);
                let backend = PollWith::new(storage, wake_ups);
                run_worker!(backend, name, settings, on_dispatch, stop)
            }
            Pool::Postgres(pool) => {
                let config = apalis_postgres::Config::default()
                    .queue(&queue)
                    .batch_size(settings.concurrency)
                    // Scheduled retries and orphan re-enqueues do not NOTIFY: they are picked up
                    // at heartbeat granularity, so beat often. Dead workers' tasks are requeued
                    // after 5 missed beats, not apalis' default of 10 × 30 s.
                    .heartbeat_interval(Duration::from_secs(2))
                    .missed_heartbeats(5)
                    .lock_tasks(false);
                // LISTEN/NOTIFY, plus a tick of our own: apalis' interval polling stalls on
                // PostgreSQL (measured without any tick: p90 dispatch 0.7 s, p99 1.3 s).
                let storage =
                    apalis_postgres::PostgresStorage::<Dispatch>::new(pool).with_config(config);
                let wake_ups = Wakeups::new(
                    notified(pool.clone(), queue.clone()),
                    PG_BACKSTOP_POLL,
                    stop.clone(),
                );
                let backend = PollWith::new(storage, wake_ups);
                run_worker!(backend, name, settings, on_dispatch, stop)
            }
        };
        if shutdown.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(worker = %name, "queue consumer stopped; restarting"),
            Err(err) => {
                tracing::error!(worker = %name, error = %err, "queue consumer failed; restarting")
            }
        }
        // A worker that ran a good while before it stopped (a LISTEN connection lost after
        // hours) starts again soon; one that keeps failing waits longer each time.
        if began.elapsed() >= HEALTHY_RUN {
            pause = FIRST_RESTART_PAUSE;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

async fn deliver(dispatch: Dispatch, on_dispatch: Data<DispatchFn>) -> Result<(), BoxDynError> {
    // The attempt runs in a task of its own (see `worker::start`), so apalis dropping this
    // future does not drop the attempt.
    (on_dispatch.0.0)(dispatch).await;
    Ok(())
}
