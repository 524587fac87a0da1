//! Wake-ups for requests waiting on a job to change (long-poll, event streams): who hears that
//! a job's row changed, and how.
//!
//! A [`Tx`](super::Tx) records the jobs it changed (`Tx::job_changed`); its commit announces
//! them. On SQLite, where one process owns the database, that is an in-process broadcast sent
//! after the commit. On PostgreSQL, several processes share the database, so the commit carries a
//! `NOTIFY` (sent in the same transaction, delivered only if it commits: by the trigger on the
//! job's row, or, for a job whose row the transaction did not write, by `Tx::commit`); each
//! process keeps one listening connection that fans the notifications out in-process
//! ([`JobChanges::listen`]).
//!
//! Wake-ups are hints, never the truth: a waiter re-reads the job after every wake-up and at its
//! deadline, so a lost notification (listener reconnecting, broadcast lag) only delays an answer.
//! On PostgreSQL they also keep this process's [`JobRowCache`] honest: a notification drops the
//! job's row before any waiter wakes (so the waiter's re-read reaches the database), a commit of
//! this process drops it at once (a client reads its own writes), and while the listener is
//! down nothing is cached.
//! On SQLite a separate `ferry worker` process on the same file cannot reach this process, so
//! waiters there also re-read their job every [`SQLITE_BACKSTOP`].
//!
//! [`QueueWakeups`] does the same for this process's queue consumers on SQLite: a commit that
//! enqueued a dispatch wakes the consumer of its queue at once instead of at its next poll.
//! (On PostgreSQL apalis' own `NOTIFY` does that, across processes.)

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use sqlx::{PgPool, postgres::PgListener};
use tokio::{sync::broadcast, time::Instant};
use uuid::Uuid;

use super::row_cache::JobRowCache;

/// The PostgreSQL channel job changes are announced on; the payload is the job's UUID.
pub const CHANNEL: &str = "ferry_job_changed";

/// How often a waiter on SQLite re-reads its job without a wake-up (see the module notes).
pub const SQLITE_BACKSTOP: Duration = Duration::from_secs(1);

/// Wake-ups buffered per waiter; a waiter that falls further behind re-reads its job.
const BUFFER: usize = 1024;

/// This process's fan-out of job changes (cheap to clone; clones share it).
#[derive(Clone, Debug)]
pub struct JobChanges {
    sender: broadcast::Sender<Uuid>,
    /// How often a waiter re-reads its job even without a wake-up; `None`: only at its deadline.
    backstop: Option<Duration>,
    /// PostgreSQL: job rows kept for status polls while every change is heard; set by
    /// [`JobChanges::listen`].
    rows: Arc<OnceLock<JobRowCache>>,
}

impl JobChanges {
    /// For a database only this process writes to, or whose writers all announce (PostgreSQL).
    pub fn announced() -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
            backstop: None,
            rows: Arc::default(),
        }
    }

    /// For SQLite: a separate `ferry worker` process may write to the same file and cannot reach
    /// this process's waiters, so they also re-read their job every `every`.
    pub fn with_backstop(every: Duration) -> Self {
        Self {
            backstop: Some(every),
            ..Self::announced()
        }
    }
}

/// One waiter's view of [`JobChanges`], taken before it reads the job so that no change between
/// the read and the wait goes unheard.
pub struct Subscription {
    receiver: broadcast::Receiver<Uuid>,
    backstop: Option<Duration>,
}

impl JobChanges {
    /// Tells this process's waiters that `job_id` changed (after the change committed).
    pub fn announce(&self, job_id: Uuid) {
        // Before the waiters wake: their re-read must not find the old row.
        self.committed_here(job_id);
        // No receiver is not an error: nobody waits.
        let _ = self.sender.send(job_id);
    }

    /// On PostgreSQL, a change to `job_id` this process committed: its row is read afresh from
    /// now on. (Waiters hear of it through the notification, which every process gets.)
    pub fn committed_here(&self, job_id: Uuid) {
        if let Some(rows) = self.rows.get() {
            rows.changed(job_id);
        }
    }

    /// Job rows kept for status polls, on PostgreSQL once [`JobChanges::listen`] ran.
    pub fn rows(&self) -> Option<&JobRowCache> {
        self.rows.get()
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
            backstop: self.backstop,
        }
    }

    /// Relays PostgreSQL notifications of job changes (from every process sharing the database)
    /// to this process's waiters and row cache (rows kept up to `cache_max_age`; zero keeps
    /// none), on one connection of `pool`, until the pool closes. Returns once the listener is
    /// subscribed, so changes committed afterwards are heard.
    pub async fn listen(&self, pool: &PgPool, cache_max_age: Duration) -> Result<(), sqlx::Error> {
        let mut listener = subscribe(pool).await?;
        let rows = self.rows.get_or_init(|| JobRowCache::new(cache_max_age));
        rows.listening();
        let changes = self.clone();
        let pool = pool.clone();
        tokio::spawn(async move {
            loop {
                // `try_recv`, not `recv`: `recv` reconnects silently, and the row cache must
                // know when notifications may have been missed.
                let lost = match listener.try_recv().await {
                    Ok(Some(note)) => {
                        if let Ok(id) = note.payload().parse::<Uuid>() {
                            changes.announce(id);
                        }
                        continue;
                    }
                    Ok(None) => "the connection closed".to_owned(),
                    Err(e) => e.to_string(),
                };
                let Some(rows) = changes.rows.get() else {
                    return;
                };
                rows.deaf();
                if pool.is_closed() {
                    return;
                }
                // What was sent meanwhile is lost: waiters answer at their deadline, and the
                // row cache stays empty until the listener is subscribed again.
                tracing::warn!(error = %lost, "job change listener lost its connection");
                listener = loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if pool.is_closed() {
                        return;
                    }
                    match subscribe(&pool).await {
                        Ok(listener) => break listener,
                        Err(e) => tracing::warn!(error = %e, "job change listener reconnecting"),
                    }
                };
                rows.listening();
                tracing::info!("job change listener reconnected");
            }
        });
        Ok(())
    }
}

/// A connection of `pool` listening on [`CHANNEL`].
async fn subscribe(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

impl Subscription {
    /// Waits until `job_id` may have changed, or until `deadline`. Returns early also when
    /// wake-ups were missed (lag), since the job may be among them, and after the backstop.
    pub async fn changed(&mut self, job_id: Uuid, deadline: Instant) {
        self.wait_for(|id| id == job_id, deadline).await
    }

    /// Like [`Subscription::changed`], for a change to any job (the event feed).
    pub async fn any_changed(&mut self, deadline: Instant) {
        self.wait_for(|_| true, deadline).await
    }

    async fn wait_for(&mut self, wanted: impl Fn(Uuid) -> bool, deadline: Instant) {
        let until = match self.backstop {
            Some(every) => deadline.min(Instant::now() + every),
            None => deadline,
        };
        let wait = async {
            loop {
                match self.receiver.recv().await {
                    Ok(id) if wanted(id) => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    // The process is shutting down: the deadline answers.
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        let _ = tokio::time::timeout_at(until, wait).await;
    }

    /// Waits until any job may have changed, or until `deadline` (for watchers of every job:
    /// the webhook deliverer).
    pub async fn any_change(&mut self, deadline: Instant) {
        let wait = async {
            match self.receiver.recv().await {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        };
        let _ = tokio::time::timeout_at(deadline, wait).await;
    }
}

/// In-process wake-ups of queue consumers, by queue name (see the module notes).
#[derive(Clone, Debug)]
pub struct QueueWakeups {
    sender: broadcast::Sender<String>,
}

impl Default for QueueWakeups {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(BUFFER).0,
        }
    }
}

impl QueueWakeups {
    /// Tells this process's consumer of `queue` that a dispatch was committed to it.
    pub fn announce(&self, queue: &str) {
        // No receiver is not an error: no consumer of that queue runs here.
        let _ = self.sender.send(queue.to_owned());
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.sender.subscribe()
    }
}
