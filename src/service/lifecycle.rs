//! The job lifecycle, in one place. Read this module whole to know:
//!
//! - which moves between statuses are legal: [`Transition::edge`];
//! - who may make each move: a [`Holder`] — anyone (API requests), the job's current dispatch
//!   (a worker claiming it), the lease holder (the worker running the attempt), or the
//!   reconciler for a lease it saw expire;
//! - what each move writes, and the [`JobEvent`] it appends to the job's public, ordered log;
//! - [`apply`]: the one guarded conditional `UPDATE` every path goes through — claim, renew,
//!   progress, publish, settle, retry, requeue, cancel, delete, redispatch. Creation is the only
//!   write outside it (an `INSERT`, in `service::jobs`);
//! - [`dispatch`]: the one place a job is handed to the queue.
//!
//! A transition's `WHERE` clause holds the legal source statuses and the holder's guard, so
//! concurrent writers (two workers, a worker and the reconciler, an API request and a worker)
//! cannot both win: zero rows touched means "refused", and nothing else is written. The event is
//! appended in the same transaction as the change, so the log never disagrees with the job.
//!
//! Ordering: apalis runs due deliveries by priority, then `run_at`. Ferry enqueues every
//! dispatch with a `run_at` in the past, never a future time: a new job's shares the queue fairly
//! between tenants ([`QueueState::fair_place`]); a job dispatched again — interrupted, retried,
//! lost, or parked for a running slot — goes to the front ([`QueueState::front_place`]), so it
//! keeps its place ahead of jobs created after it. A job waiting out a retry backoff, or for a
//! running slot of its tenant, is not in the queue at all until it may run (the reconciler or
//! the slot's release dispatches it then).

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryTrait,
    sea_query::{Condition, Expr, ExprTrait, Func, Query},
};
use serde_json::json;
use uuid::Uuid;

use crate::{
    domain::{EventKind, JobFailure, JobStatus, serve_key},
    metrics::JobMove,
    queue::{self, Dispatch, QueueState},
    storage::{StorageError, Tx, entities::job},
    time::to_rfc3339,
};

/// `run_after_ms` of a parked job (see `service::running`): never due by time, only by a free
/// running slot of its tenant.
pub const PARKED: i64 = i64::MAX;

/// Proof that a worker runs an attempt of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub job_id: Uuid,
    pub owner: String,
    pub attempt: i32,
}

/// Who asks for a transition; becomes part of its guard.
#[derive(Clone, Copy, Debug)]
pub enum Holder<'a> {
    /// An API request (cancel, delete): no guard beyond the source statuses.
    Anyone,
    /// The delivery of this dispatch (`None`: a job that has none yet, waiting out a backoff).
    /// Any other delivery is stale.
    Dispatch(Option<&'a str>),
    /// The worker holding this lease.
    Lease(&'a Lease),
    /// The reconciler, for a lease it saw expire at `expires_at_ms`: only if nobody renewed it.
    ExpiredLease(&'a Lease, i64),
}

impl Holder<'_> {
    fn guard(&self, now_ms: i64) -> Condition {
        let held = |lease: &Lease| {
            Condition::all()
                .add(job::Column::LeaseOwner.eq(lease.owner.as_str()))
                .add(job::Column::Attempt.eq(lease.attempt))
        };
        match self {
            Holder::Anyone => Condition::all(),
            Holder::Dispatch(Some(id)) => Condition::all().add(job::Column::DispatchId.eq(*id)),
            Holder::Dispatch(None) => Condition::all().add(job::Column::DispatchId.is_null()),
            Holder::Lease(lease) => held(lease),
            Holder::ExpiredLease(lease, expires_at_ms) => held(lease)
                .add(job::Column::LeaseExpiresAtMs.eq(*expires_at_ms))
                .add(job::Column::LeaseExpiresAtMs.lt(now_ms)),
        }
    }

    fn attempt(&self) -> Option<i32> {
        match self {
            Holder::Lease(lease) | Holder::ExpiredLease(lease, _) => Some(lease.attempt),
            Holder::Anyone | Holder::Dispatch(_) => None,
        }
    }
}

/// What the queue needs to know to dispatch a job.
#[derive(Clone, Debug)]
pub struct Dispatchable {
    pub id: Uuid,
    pub tenant: String,
    /// What its queue serves: the kind, or `kind@version` (see [`serve_key`]).
    pub serves: String,
    /// Its priority in the queue (see [`queue::queue_priority`]).
    pub queue_priority: i32,
    pub created_at_ms: i64,
}

impl From<&job::Model> for Dispatchable {
    fn from(job: &job::Model) -> Self {
        Self {
            id: job.id,
            tenant: job.tenant.clone(),
            serves: serve_key(&job.kind, job.version.as_deref()),
            queue_priority: queue::queue_priority(job.priority, job.rerun_batch.is_some()),
            created_at_ms: job.created_at_ms,
        }
    }
}

/// A result as its `result` event describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedResult {
    pub name: String,
    pub is_final: bool,
    pub size: i64,
    pub sha256: String,
    pub content_type: String,
}

/// Every change a job's row can undergo after creation.
#[derive(Clone, Debug)]
pub enum Transition {
    /// The delivery finds its tenant running its `max_running_jobs`: the job waits without a
    /// dispatch until a slot is free (`service::running`).
    Park,
    /// A worker takes a queued job for its next attempt, under a lease.
    Claim {
        owner: String,
        lease_until_ms: i64,
    },
    /// The lease holder extends its lease.
    Renew {
        lease_until_ms: i64,
    },
    /// The lease holder reports progress (which renews the lease too). The job's progress is
    /// written every time; a `progress` event is appended only when `event` is set, so a
    /// handler reporting all day long does not write a row per report (the worker decides:
    /// `worker::flush`).
    Progress {
        percent: Option<f64>,
        stage: Option<String>,
        message: Option<String>,
        lease_until_ms: i64,
        event: bool,
    },
    /// The lease holder published a result; the caller writes the result row in the same
    /// transaction, after this succeeds.
    Publish(PublishedResult),
    Succeed,
    Fail(JobFailure),
    /// A retryable failure with attempts left: queued again, and dispatched once
    /// `run_after_ms` has passed. Refused if a cancel was asked for.
    Retry {
        failure: JobFailure,
        run_after_ms: i64,
    },
    /// The worker is shutting down: queued again at once without counting the attempt (it was
    /// not the job's fault), so a deploy does not use up retries. Refused if a cancel was asked.
    Requeue(Dispatchable),
    /// Canceling a queued job takes effect at once.
    CancelQueued,
    /// Canceling a running job asks its worker to stop (refused if already asked).
    RequestCancel,
    /// The attempt stopped because a cancel was asked for.
    FinishCanceled,
    /// Deletion: the job ends canceled and its lease is revoked, so its worker stops and can
    /// publish nothing more.
    Revoke,
    /// The job is due but not in the queue (its backoff ended, or its dispatch was lost in a
    /// crash): hand it to the queue under a new dispatch id.
    Redispatch(Dispatchable),
}

impl Transition {
    /// The legal moves: the statuses a transition may start from, and where it leads.
    pub fn edge(&self) -> (&'static [JobStatus], JobStatus) {
        use JobStatus::*;
        match self {
            Transition::Claim { .. } => (&[Queued], Running),
            Transition::Renew { .. }
            | Transition::Progress { .. }
            | Transition::Publish(_)
            | Transition::RequestCancel => (&[Running], Running),
            Transition::Succeed => (&[Running], Succeeded),
            Transition::Fail(_) => (&[Running], Failed),
            Transition::Retry { .. } | Transition::Requeue(_) => (&[Running], Queued),
            Transition::FinishCanceled => (&[Running], Canceled),
            Transition::CancelQueued => (&[Queued], Canceled),
            Transition::Revoke => (&[Queued, Running], Canceled),
            Transition::Redispatch(_) | Transition::Park => (&[Queued], Queued),
        }
    }

    /// Transitions that a pending cancel request forbids.
    fn needs_no_cancel_request(&self) -> bool {
        matches!(
            self,
            Transition::Claim { .. }
                | Transition::Retry { .. }
                | Transition::Requeue(_)
                | Transition::RequestCancel
        )
    }
}

/// An entry of a job's event log. [`JobEvent::data`] is the payload clients read (documented in
/// `openapi.yaml` under `Event`); state changes carry the status they led to.
#[derive(Clone, Debug, PartialEq)]
pub enum JobEvent {
    Queued,
    Started {
        attempt: i32,
    },
    Progress {
        percent: Option<f64>,
        stage: Option<String>,
        message: Option<String>,
        attempt: i32,
    },
    Result {
        result: PublishedResult,
        attempt: i32,
    },
    CancelRequested,
    /// `attempt` is the attempt that stopped, if one was running.
    Canceled {
        attempt: Option<i32>,
    },
    RetryScheduled {
        attempt: i32,
        error: JobFailure,
        retry_at_ms: i64,
    },
    Requeued {
        attempt: i32,
    },
    Redispatched,
    Succeeded {
        attempt: i32,
    },
    Failed {
        attempt: i32,
        error: JobFailure,
    },
}

impl JobEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            JobEvent::Queued => EventKind::Queued,
            JobEvent::Started { .. } => EventKind::Started,
            JobEvent::Progress { .. } => EventKind::Progress,
            JobEvent::Result { .. } => EventKind::Result,
            JobEvent::CancelRequested => EventKind::CancelRequested,
            JobEvent::Canceled { .. } => EventKind::Canceled,
            JobEvent::RetryScheduled { .. } => EventKind::RetryScheduled,
            JobEvent::Requeued { .. } => EventKind::Requeued,
            JobEvent::Redispatched => EventKind::Redispatched,
            JobEvent::Succeeded { .. } => EventKind::Succeeded,
            JobEvent::Failed { .. } => EventKind::Failed,
        }
    }

    pub fn data(&self) -> serde_json::Value {
        match self {
            JobEvent::Queued => json!({"status": JobStatus::Queued, "attempt": 0}),
            JobEvent::Started { attempt } => {
                json!({"status": JobStatus::Running, "attempt": attempt})
            }
            JobEvent::Progress {
                percent,
                stage,
                message,
                attempt,
            } => {
                json!({"percent": percent, "stage": stage, "message": message, "attempt": attempt})
            }
            JobEvent::Result { result, attempt } => json!({
                "name": result.name, "final": result.is_final, "size": result.size,
                "sha256": result.sha256, "content_type": result.content_type, "attempt": attempt,
            }),
            JobEvent::CancelRequested => json!({"status": JobStatus::Running}),
            JobEvent::Canceled { attempt: None } => json!({"status": JobStatus::Canceled}),
            JobEvent::Canceled {
                attempt: Some(attempt),
            } => json!({"status": JobStatus::Canceled, "attempt": attempt}),
            JobEvent::RetryScheduled {
                attempt,
                error,
                retry_at_ms,
            } => json!({
                "status": JobStatus::Queued, "attempt": attempt, "error": error,
                "retry_at": to_rfc3339(*retry_at_ms),
            }),
            JobEvent::Requeued { attempt } => json!({
                "status": JobStatus::Queued, "attempt": attempt, "reason": "worker_shutdown",
            }),
            JobEvent::Redispatched => json!({"status": JobStatus::Queued}),
            JobEvent::Succeeded { attempt } => {
                json!({"status": JobStatus::Succeeded, "attempt": attempt})
            }
            JobEvent::Failed { attempt, error } => {
                json!({"status": JobStatus::Failed, "attempt": attempt, "error": error})
            }
        }
    }
}

/// A transition that took place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub status: JobStatus,
    /// The attempt concerned: the new one for a claim, the lease holder's otherwise (`None` for
    /// transitions made by anyone else).
    pub attempt: Option<i32>,
}

/// What a transition's `UPDATE … RETURNING` says: the attempt and event numbers, then what the
/// metrics count the move by (kind, version, created and first started, ms).
type Moved = (i64, i64, String, Option<String>, i64, Option<i64>);

/// Performs `transition` on job `job_id` for `holder`, in `tx`, at time `now_ms`: one
/// conditional update, then the event and (for a requeue or redispatch) the queue entry.
/// `None` when it is refused — the job is not in a source status, the holder's guard does not
/// hold, or a cancel request forbids it; then nothing was written.
pub async fn apply(
    tx: &mut Tx,
    job_id: Uuid,
    holder: Holder<'_>,
    transition: Transition,
    now_ms: i64,
) -> Result<Option<Applied>, StorageError> {
    let (from, to) = transition.edge();
    let mut update = job::Entity::update_many()
        .filter(job::Column::Id.eq(job_id))
        .filter(job::Column::Status.is_in(from.iter().copied()))
        .filter(holder.guard(now_ms));
    if transition.needs_no_cancel_request() {
        update = update.filter(job::Column::CancelRequested.eq(false));
    }
    if from != [to] {
        update = update.col_expr(job::Column::Status, Expr::value(to));
    }
    if !matches!(transition, Transition::Renew { .. }) {
        update = update.col_expr(job::Column::UpdatedAtMs, Expr::value(now_ms));
    }
    if to != JobStatus::Running {
        update = update
            .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
            .col_expr(
                job::Column::LeaseExpiresAtMs,
                Expr::value(Option::<i64>::None),
            );
    }
    if to.is_finished() {
        // Retention starts now: NULL (kept until deleted) stays NULL.
        update = update
            .col_expr(job::Column::FinishedAtMs, Expr::value(now_ms))
            .col_expr(
                job::Column::ExpiresAtMs,
                Expr::col(job::Column::RetainMs).add(now_ms),
            )
            .col_expr(
                job::Column::InputsExpireAtMs,
                Expr::col(job::Column::RetainInputsMs).add(now_ms),
            );
    }
    let mut new_dispatch = None;
    let attempt = holder.attempt();
    let event = match &transition {
        Transition::Claim {
            owner,
            lease_until_ms,
        } => {
            update = update
                .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).add(1))
                .col_expr(job::Column::LeaseOwner, Expr::value(owner.as_str()))
                .col_expr(job::Column::LeaseExpiresAtMs, Expr::value(*lease_until_ms))
                .col_expr(
                    job::Column::StartedAtMs,
                    Expr::from(Func::coalesce([
                        Expr::col(job::Column::StartedAtMs),
                        Expr::value(now_ms),
                    ])),
                );
            None // Started: its attempt number is known only after the update.
        }
        Transition::Renew { lease_until_ms } => {
            update = update.col_expr(job::Column::LeaseExpiresAtMs, Expr::value(*lease_until_ms));
            None
        }
        Transition::Progress {
            percent,
            stage,
            message,
            lease_until_ms,
            event,
        } => {
            update = update
                .col_expr(job::Column::ProgressPercent, Expr::value(*percent))
                .col_expr(job::Column::ProgressStage, Expr::value(stage.clone()))
                .col_expr(job::Column::ProgressMessage, Expr::value(message.clone()))
                .col_expr(job::Column::ProgressUpdatedAtMs, Expr::value(now_ms))
                .col_expr(job::Column::LeaseExpiresAtMs, Expr::value(*lease_until_ms));
            event.then(|| JobEvent::Progress {
                percent: *percent,
                stage: stage.clone(),
                message: message.clone(),
                attempt: attempt.unwrap_or_default(),
            })
        }
        Transition::Publish(result) => Some(JobEvent::Result {
            result: result.clone(),
            attempt: attempt.unwrap_or_default(),
        }),
        Transition::Succeed => {
            // A finished job is 100 % done, whatever the handler last reported.
            update = update
                .col_expr(job::Column::Error, Expr::value(Option::<String>::None))
                .col_expr(job::Column::ProgressPercent, Expr::value(100.0f64))
                .col_expr(job::Column::ProgressUpdatedAtMs, Expr::value(now_ms));
            Some(JobEvent::Succeeded {
                attempt: attempt.unwrap_or_default(),
            })
        }
        Transition::Fail(failure) => {
            update = update
                .col_expr(job::Column::Error, Expr::value(failure_json(failure)))
                .col_expr(job::Column::ErrorCode, Expr::value(failure.code.clone()));
            Some(JobEvent::Failed {
                attempt: attempt.unwrap_or_default(),
                error: failure.clone(),
            })
        }
        Transition::Retry {
            failure,
            run_after_ms,
        } => {
            update = update
                .col_expr(job::Column::Error, Expr::value(failure_json(failure)))
                .col_expr(job::Column::RunAfterMs, Expr::value(*run_after_ms))
                .col_expr(job::Column::DispatchId, Expr::value(Option::<String>::None));
            Some(JobEvent::RetryScheduled {
                attempt: attempt.unwrap_or_default(),
                error: failure.clone(),
                retry_at_ms: *run_after_ms,
            })
        }
        Transition::Requeue(job) => {
            let id = queue::new_dispatch_id(job.created_at_ms);
            update = update
                .col_expr(job::Column::Attempt, Expr::col(job::Column::Attempt).sub(1))
                .col_expr(job::Column::RunAfterMs, Expr::value(now_ms))
                .col_expr(job::Column::DispatchId, Expr::value(id.as_str()));
            new_dispatch = Some((job, id));
            Some(JobEvent::Requeued {
                attempt: attempt.unwrap_or_default(),
            })
        }
        Transition::CancelQueued => {
            update = update.col_expr(job::Column::CancelRequested, Expr::value(true));
            Some(JobEvent::Canceled { attempt: None })
        }
        Transition::RequestCancel => {
            update = update.col_expr(job::Column::CancelRequested, Expr::value(true));
            Some(JobEvent::CancelRequested)
        }
        Transition::FinishCanceled => Some(JobEvent::Canceled { attempt }),
        Transition::Revoke => {
            update = update.col_expr(job::Column::CancelRequested, Expr::value(true));
            Some(JobEvent::Canceled { attempt: None })
        }
        Transition::Park => {
            update = update
                .col_expr(job::Column::DispatchId, Expr::value(Option::<String>::None))
                .col_expr(job::Column::RunAfterMs, Expr::value(PARKED));
            None
        }
        Transition::Redispatch(job) => {
            let id = queue::new_dispatch_id(job.created_at_ms);
            // Due now (a parked job was never due by time).
            update = update
                .col_expr(job::Column::DispatchId, Expr::value(id.as_str()))
                .col_expr(job::Column::RunAfterMs, Expr::value(now_ms));
            new_dispatch = Some((job, id));
            Some(JobEvent::Redispatched)
        }
    };
    // A claim's `started` event takes the attempt number the update gives it.
    let appends_event = event.is_some() || matches!(transition, Transition::Claim { .. });
    if appends_event {
        update = update.col_expr(
            job::Column::EventSeq,
            Expr::col(job::Column::EventSeq).add(1),
        );
    }
    // One statement changes the job, numbers its event and says the attempt and the number:
    // every round trip inside a write transaction holds SQLite's one writer.
    let mut update = update.into_query();
    // And what the metrics count the move by.
    update.returning(Query::returning().exprs([
        // BIGINT so one decoder fits both SQLite and PostgreSQL (INT4 there).
        Expr::col(job::Column::Attempt).cast_as("BIGINT"),
        Expr::col(job::Column::EventSeq),
        Expr::col(job::Column::Kind),
        Expr::col(job::Column::Version),
        Expr::col(job::Column::CreatedAtMs),
        Expr::col(job::Column::StartedAtMs),
    ]));
    let row: Option<Moved> = tx.fetch_optional_row(&update).await?;
    let Some((new_attempt, seq, kind, version, created_at_ms, started_at_ms)) = row else {
        return Ok(None);
    };
    match &transition {
        // The job's first start: a claim sets `started_at_ms` only if it was unset. (Not
        // "attempt 1": an attempt a stopping worker handed back is attempt 1 again.)
        Transition::Claim { .. } if started_at_ms == Some(now_ms) => tx.count(JobMove::Started {
            kind,
            waited_ms: now_ms - created_at_ms,
        }),
        Transition::Retry { .. } => tx.count(JobMove::RetryScheduled { kind }),
        Transition::Publish(result) => tx.count(JobMove::ResultPublished {
            kind,
            bytes: u64::try_from(result.size).unwrap_or(0),
            is_final: result.is_final,
        }),
        _ if to.is_finished() && from != [to] => tx.count(JobMove::Finished {
            kind,
            version,
            outcome: to.as_str(),
        }),
        _ => {}
    }
    // Renewing a lease changes nothing a client sees; every other move does.
    if !matches!(transition, Transition::Renew { .. }) {
        tx.job_changed(job_id);
    }
    let (attempt, event) = match transition {
        Transition::Claim { .. } => {
            let attempt = new_attempt as i32;
            (Some(attempt), Some(JobEvent::Started { attempt }))
        }
        _ => (attempt, event),
    };
    if let Some(event) = event {
        tx.insert_event(job_id, seq, event.kind(), event.data())
            .await?;
    }
    if let Some((job, dispatch_id)) = new_dispatch {
        dispatch(tx, job, dispatch_id, None, now_ms).await?;
    }
    Ok(Some(Applied {
        status: to,
        attempt,
    }))
}

/// Enqueues a dispatch of `job` in `tx`; it becomes visible to workers when `tx` commits. The
/// dispatch sorts by the job's priority, then: a new job (`created`, the queue's state read in
/// `tx` by its creation) fairly between tenants, a job dispatched again at the front (see the
/// module notes).
pub async fn dispatch(
    tx: &mut Tx,
    job: &Dispatchable,
    dispatch_id: String,
    created: Option<QueueState>,
    now_ms: i64,
) -> Result<(), StorageError> {
    let place = match created {
        Some(state) => state.fair_place(now_ms),
        None => QueueState::read(tx, &job.tenant, &job.serves, job.queue_priority)
            .await?
            .front_place(),
    };
    let dispatch = Dispatch {
        job_id: job.id,
        dispatch_id,
    };
    queue::enqueue(tx, &job.serves, &dispatch, job.queue_priority, place).await
}

fn failure_json(failure: &JobFailure) -> String {
    serde_json::to_string(failure).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The feed's `status` filter goes by kind ([`EventKind::status`]): each kind's events
    /// must carry exactly that status.
    #[test]
    fn every_event_carries_the_status_its_kind_stands_for() {
        let error = JobFailure {
            code: "handler_error".into(),
            title: "t".into(),
            detail: "d".into(),
            retryable: true,
            attempt: 1,
        };
        let events = [
            JobEvent::Queued,
            JobEvent::Started { attempt: 1 },
            JobEvent::Progress {
                percent: None,
                stage: None,
                message: None,
                attempt: 1,
            },
            JobEvent::Result {
                result: PublishedResult {
                    name: "r".into(),
                    is_final: true,
                    size: 1,
                    sha256: "00".into(),
                    content_type: "text/plain".into(),
                },
                attempt: 1,
            },
            JobEvent::CancelRequested,
            JobEvent::Canceled { attempt: None },
            JobEvent::Canceled { attempt: Some(1) },
            JobEvent::RetryScheduled {
                attempt: 1,
                error: error.clone(),
                retry_at_ms: 0,
            },
            JobEvent::Requeued { attempt: 1 },
            JobEvent::Redispatched,
            JobEvent::Succeeded { attempt: 1 },
            JobEvent::Failed { attempt: 1, error },
        ];
        for event in &events {
            let kind = event.kind();
            let status = event.data()["status"].as_str().map(JobStatus::parse);
            assert_eq!(status, kind.status().map(Some), "{kind}");
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        let kinds: std::collections::BTreeSet<_> =
            events.iter().map(|e| e.kind().as_str()).collect();
        assert_eq!(kinds.len(), EventKind::ALL.len(), "every kind is covered");
    }
}
