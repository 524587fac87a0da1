//! The job lifecycle as a state machine, stepped in process on a real SQLite file: no HTTP, no
//! handler processes, no sleeps. Time is stepped by passing it (`reconcile_at`, `transition`).
//! Every legal transition is taken, every illegal one refused without a trace, a stale lease is
//! refused everywhere, a job completes at most once, and interrupted work keeps its place.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use bytes::Bytes;
use ferry::{
    config::Settings,
    domain::{JobFailure, JobStatus},
    queue::{self, ConsumerSettings, Dispatch, DispatchFn},
    service::{
        KindDefaults, Services,
        attempts::{ClaimedJob, LeaseState, Outcome, ProgressReport, PublishError},
        jobs::{JobRequest, JobView},
        lifecycle::{Dispatchable, Holder, Lease, PublishedResult, Transition},
    },
    storage::{
        entities::{job, job_event},
        lookup::AtMostOne,
    },
    time::now_ms,
};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use tokio_util::sync::CancellationToken;

const LEASE_TTL_MS: i64 = 30_000;
/// Past any retry backoff (`retry_max_delay` is 600 s by default).
const BACKOFF_OVER_MS: i64 = 601_000;

struct Machine {
    services: Services,
    dir: tempfile::TempDir,
}

impl Machine {
    async fn new() -> Machine {
        let dir = tempfile::tempdir().expect("temp dir");
        let settings = Settings {
            data_dir: dir.path().to_path_buf(),
            ..Settings::default()
        };
        let kinds = BTreeMap::from([(
            "model".to_owned(),
            KindDefaults {
                timeout: Duration::from_secs(60),
                max_attempts: 3,
                ..KindDefaults::default()
            },
        )]);
        let services = Services::open(settings, kinds)
            .await
            .expect("open services");
        Machine { services, dir }
    }

    async fn create(&self) -> JobView {
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("scan"))]);
        let spec = self
            .services
            .job_spec(JobRequest {
                kind: "model".into(),
                ..JobRequest::default()
            })
            .await
            .expect("valid spec");
        match self
            .services
            .submit_job_with_body(
                &ferry::tenancy::Tenant::default_tenant(),
                spec,
                "scan".into(),
                body,
                Default::default(),
                None,
            )
            .await
            .expect("job created")
        {
            ferry::service::jobs::Submitted::Created(view) => view,
            other => panic!("not created: {other:?}"),
        }
    }

    async fn row(&self, id: uuid::Uuid) -> job::Model {
        job::Entity::find_by_id(id)
            .at_most_one(&self.services.db.orm)
            .await
            .expect("read job")
            .expect("job exists")
    }

    async fn events(&self, id: uuid::Uuid) -> Vec<job_event::Model> {
        job_event::Entity::find()
            .filter(job_event::Column::JobId.eq(id))
            .order_by_asc(job_event::Column::Seq)
            .all(&self.services.db.orm)
            .await
            .expect("read events")
    }

    async fn dispatch_of(&self, id: uuid::Uuid) -> Dispatch {
        Dispatch {
            job_id: id,
            dispatch_id: self.row(id).await.dispatch_id.expect("dispatched"),
        }
    }

    async fn claim(&self, id: uuid::Uuid, owner: &str) -> ClaimedJob {
        let dispatch = self.dispatch_of(id).await;
        self.services
            .claim(&dispatch, owner)
            .await
            .expect("claim")
            .expect("the current dispatch claims the job")
    }

    /// A job in `status`, with the lease of its last attempt if it had one.
    async fn job_in(&self, status: JobStatus) -> (uuid::Uuid, Option<Lease>) {
        let id = self.create().await.job.id;
        if status == JobStatus::Queued {
            return (id, None);
        }
        if status == JobStatus::Canceled {
            self.services
                .cancel_job(
                    &ferry::tenancy::Tenant::default_tenant(),
                    ferry::ids::JobId(id),
                )
                .await
                .expect("cancel");
            return (id, None);
        }
        let claimed = self.claim(id, "worker-a").await;
        let outcome = match status {
            JobStatus::Running => None,
            JobStatus::Succeeded => Some(Outcome::Succeeded),
            _ => Some(Outcome::Failed(failure(false, claimed.lease.attempt))),
        };
        if let Some(outcome) = outcome {
            let settled = self
                .services
                .finish_attempt(&claimed.lease, &claimed.job, outcome)
                .await
                .expect("settle");
            assert_eq!(settled, Some(status));
        }
        (id, Some(claimed.lease))
    }
}

fn failure(retryable: bool, attempt: i32) -> JobFailure {
    JobFailure {
        code: "handler_exit".into(),
        title: "Handler exited with an error".into(),
        detail: "exit status 1".into(),
        retryable,
        attempt,
    }
}

/// One of each transition, for a job with `row` (its dispatch, priority and creation time).
fn every_transition(row: &job::Model, now: i64) -> Vec<Transition> {
    vec![
        Transition::Claim {
            owner: "worker-b".into(),
            lease_until_ms: now + LEASE_TTL_MS,
        },
        Transition::Renew {
            lease_until_ms: now + LEASE_TTL_MS,
        },
        Transition::Progress {
            percent: Some(50.0),
            stage: Some("segmenting".into()),
            message: None,
            lease_until_ms: now + LEASE_TTL_MS,
            event: true,
        },
        Transition::Publish(PublishedResult {
            name: "mask.png".into(),
            is_final: false,
            size: 3,
            sha256: "00".repeat(32),
            content_type: "image/png".into(),
        }),
        Transition::Succeed,
        Transition::Fail(failure(false, row.attempt)),
        Transition::Retry {
            failure: failure(true, row.attempt),
            run_after_ms: now + 1000,
        },
        Transition::Requeue(Dispatchable::from(row)),
        Transition::CancelQueued,
        Transition::RequestCancel,
        Transition::FinishCanceled,
        Transition::Revoke,
        Transition::Redispatch(Dispatchable::from(row)),
    ]
}

/// The holder each transition is made by in real life.
fn holder_for<'a>(t: &Transition, row: &'a job::Model, lease: &'a Option<Lease>) -> Holder<'a> {
    match t {
        Transition::Claim { .. } | Transition::Redispatch(_) => {
            Holder::Dispatch(row.dispatch_id.as_deref())
        }
        Transition::CancelQueued | Transition::RequestCancel | Transition::Revoke => Holder::Anyone,
        _ => match lease {
            Some(lease) => Holder::Lease(lease),
            // A queued or canceled job has no lease holder; a lease-holder transition has
            // nobody to come from.
            None => Holder::Anyone,
        },
    }
}

#[tokio::test]
async fn every_transition_is_taken_from_its_source_statuses_and_refused_from_all_others() {
    let m = Machine::new().await;
    let now = now_ms();
    let mut checked = 0;
    for status in JobStatus::ALL {
        let sample = m.job_in(status).await;
        for (index, _) in every_transition(&m.row(sample.0).await, now)
            .iter()
            .enumerate()
        {
            // A fresh job per case: each transition starts from exactly `status`.
            let (id, lease) = m.job_in(status).await;
            let before = m.row(id).await;
            let events_before = m.events(id).await.len();
            let transition = every_transition(&before, now).swap_remove(index);
            let (from, to) = transition.edge();
            let name = format!("{transition:?} from {status}");
            let holder = holder_for(&transition, &before, &lease);
            let applied = m
                .services
                .transition(id, holder, transition.clone(), now)
                .await
                .expect("transition");
            let after = m.row(id).await;
            let events_after = m.events(id).await;
            if from.contains(&status) {
                let applied = applied.unwrap_or_else(|| panic!("{name}: refused"));
                assert_eq!(applied.status, to, "{name}");
                assert_eq!(after.status, to, "{name}");
                let wrote_event = !matches!(transition, Transition::Renew { .. });
                assert_eq!(
                    events_after.len(),
                    events_before + usize::from(wrote_event),
                    "{name}: one event per transition (none for a lease renewal)"
                );
                if wrote_event {
                    let last = events_after.last().expect("event");
                    assert_eq!(last.seq, after.event_seq, "{name}: event numbered in order");
                }
                if to != JobStatus::Running {
                    assert_eq!(after.lease_owner, None, "{name}: lease released");
                }
                assert_eq!(
                    after.finished_at_ms.is_some(),
                    to.is_finished(),
                    "{name}: finished_at set exactly on finished jobs"
                );
            } else {
                assert!(applied.is_none(), "{name}: illegal, yet applied");
                assert_eq!(
                    after, before,
                    "{name}: a refused transition changed the job"
                );
                assert_eq!(
                    events_after.len(),
                    events_before,
                    "{name}: a refused transition wrote an event"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * 13);
}

#[tokio::test]
async fn a_stale_lease_is_refused_everywhere() {
    let m = Machine::new().await;
    let id = m.create().await.job.id;
    let stale = m.claim(id, "worker-a").await;
    let start = now_ms();

    // Worker A goes silent; the reconciler settles its attempt and, after the backoff,
    // dispatches the job again; worker B claims it.
    let repairs = m
        .services
        .reconcile_at(start + LEASE_TTL_MS + 1)
        .await
        .expect("reconcile");
    assert_eq!(repairs.expired_leases, 1);
    let queued = m.row(id).await;
    assert_eq!(queued.status, JobStatus::Queued);
    assert_eq!(
        queued.dispatch_id, None,
        "no dispatch before the backoff ends"
    );
    let repairs = m
        .services
        .reconcile_at(start + BACKOFF_OVER_MS)
        .await
        .expect("reconcile");
    assert_eq!(repairs.dispatched, 1);
    let current = m.claim(id, "worker-b").await;
    assert_eq!(current.lease.attempt, 2);
    let events_before = m.events(id).await.len();

    let s = &m.services;
    assert_eq!(
        s.heartbeat(&stale.lease, true).await.unwrap(),
        LeaseState::Lost
    );
    assert_eq!(
        s.heartbeat(&stale.lease, false).await.unwrap(),
        LeaseState::Lost
    );
    assert_eq!(
        s.report_progress(&stale.lease, ProgressReport::default(), true)
            .await
            .unwrap(),
        LeaseState::Lost
    );
    let file = m.dir.path().join("late.txt");
    std::fs::write(&file, b"late").unwrap();
    assert!(matches!(
        s.publish_result(
            &stale.lease,
            "late.txt",
            std::fs::File::open(&file).unwrap(),
            "text/plain",
            true
        )
        .await,
        Err(PublishError::LeaseLost)
    ));
    for outcome in [
        Outcome::Succeeded,
        Outcome::Canceled,
        Outcome::Requeue,
        Outcome::Failed(failure(true, 1)),
        Outcome::Failed(failure(false, 1)),
    ] {
        assert_eq!(
            s.finish_attempt(&stale.lease, &stale.job, outcome.clone())
                .await
                .unwrap(),
            None,
            "{outcome:?} by a stale lease"
        );
    }
    let row = m.row(id).await;
    assert_eq!(row.status, JobStatus::Running);
    assert_eq!(row.lease_owner.as_deref(), Some("worker-b"));
    assert_eq!(
        m.events(id).await.len(),
        events_before,
        "stale writes left events"
    );
    assert_eq!(
        ferry::storage::entities::result::Entity::find()
            .filter(ferry::storage::entities::result::Column::JobId.eq(id))
            .count(&s.db.orm)
            .await
            .unwrap(),
        0,
        "a stale lease published a result"
    );
    assert_eq!(
        s.heartbeat(&current.lease, true).await.unwrap(),
        LeaseState::Held
    );
}

#[tokio::test]
async fn a_job_completes_at_most_once() {
    let m = Machine::new().await;
    let id = m.create().await.job.id;
    let claimed = m.claim(id, "worker-a").await;
    let s = &m.services;
    assert_eq!(
        s.finish_attempt(&claimed.lease, &claimed.job, Outcome::Succeeded)
            .await
            .unwrap(),
        Some(JobStatus::Succeeded)
    );
    for outcome in [
        Outcome::Succeeded,
        Outcome::Failed(failure(false, 1)),
        Outcome::Canceled,
    ] {
        assert_eq!(
            s.finish_attempt(&claimed.lease, &claimed.job, outcome)
                .await
                .unwrap(),
            None
        );
    }
    // The reconciler has nothing to settle, however late it runs.
    let repairs = s.reconcile_at(now_ms() + BACKOFF_OVER_MS).await.unwrap();
    assert_eq!(repairs.expired_leases, 0);
    assert_eq!(repairs.dispatched, 0);
    // Nor can the same delivery claim it again.
    let dispatch = m.dispatch_of(id).await;
    assert!(s.claim(&dispatch, "worker-b").await.unwrap().is_none());
    let finals = m
        .events(id)
        .await
        .iter()
        .filter(|e| e.kind == ferry::domain::EventKind::Succeeded)
        .count();
    assert_eq!(finals, 1);
}

#[tokio::test]
async fn the_reconciler_and_a_late_worker_cannot_both_settle_an_attempt() {
    let m = Machine::new().await;
    let id = m.create().await.job.id;
    let claimed = m.claim(id, "worker-a").await;
    let at = now_ms() + LEASE_TTL_MS + 1;
    assert_eq!(m.services.reconcile_at(at).await.unwrap().expired_leases, 1);
    assert_eq!(
        m.services
            .finish_attempt(&claimed.lease, &claimed.job, Outcome::Succeeded)
            .await
            .unwrap(),
        None,
        "the worker finished after its attempt was settled as lost"
    );
    // A second reconciler (another process) finds nothing left to settle.
    assert_eq!(m.services.reconcile_at(at).await.unwrap().expired_leases, 0);
    let row = m.row(id).await;
    assert_eq!(row.status, JobStatus::Queued);
    assert_eq!(row.attempt, 1);
}

#[tokio::test]
async fn a_job_the_reconciler_cannot_repair_does_not_hold_up_the_others() {
    let m = Machine::new().await;
    let poisoned = m.create().await.job.id;
    let healthy = m.create().await.job.id;
    m.claim(poisoned, "worker-a").await;
    m.claim(healthy, "worker-a").await;
    // A real database failure for one row: every update of it is refused.
    let orm = &m.services.db.orm;
    orm.execute_unprepared(&format!(
        "CREATE TRIGGER poison BEFORE UPDATE ON ferry_jobs WHEN OLD.id = X'{}' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END",
        poisoned.simple()
    ))
    .await
    .unwrap();
    let at = now_ms() + LEASE_TTL_MS + 1;
    let repairs = m.services.reconcile_at(at).await.unwrap();
    assert_eq!((repairs.expired_leases, repairs.failed), (1, 1));
    assert_eq!(m.row(healthy).await.status, JobStatus::Queued);
    assert_eq!(m.row(poisoned).await.status, JobStatus::Running);
    // Once the row can be written again, the next pass settles it.
    orm.execute_unprepared("DROP TRIGGER poison").await.unwrap();
    let repairs = m.services.reconcile_at(at).await.unwrap();
    assert_eq!((repairs.expired_leases, repairs.failed), (1, 0));
    assert_eq!(m.row(poisoned).await.status, JobStatus::Queued);
}

#[tokio::test]
async fn a_cancel_wins_over_a_retry_and_a_requeue() {
    let m = Machine::new().await;
    for outcome in [Outcome::Failed(failure(true, 1)), Outcome::Requeue] {
        let id = m.create().await.job.id;
        let claimed = m.claim(id, "worker-a").await;
        let view = m
            .services
            .cancel_job(
                &ferry::tenancy::Tenant::default_tenant(),
                ferry::ids::JobId(id),
            )
            .await
            .expect("cancel");
        assert!(view.job.cancel_requested);
        let settled = m
            .services
            .finish_attempt(&claimed.lease, &claimed.job, outcome.clone())
            .await
            .unwrap();
        let want = match outcome {
            Outcome::Requeue => JobStatus::Canceled,
            _ => JobStatus::Failed,
        };
        assert_eq!(settled, Some(want), "{outcome:?} after a cancel request");
        assert_eq!(m.row(id).await.status, want);
    }
}

#[tokio::test]
async fn a_retry_waits_out_its_backoff_outside_the_queue() {
    let m = Machine::new().await;
    let id = m.create().await.job.id;
    let claimed = m.claim(id, "worker-a").await;
    let settled = m
        .services
        .finish_attempt(
            &claimed.lease,
            &claimed.job,
            Outcome::Failed(failure(true, 1)),
        )
        .await
        .unwrap();
    assert_eq!(settled, Some(JobStatus::Queued));
    let row = m.row(id).await;
    assert_eq!(row.dispatch_id, None);
    assert!(row.run_after_ms > now_ms(), "a backoff is in force");
    let due = m.services.next_retry_due_ms().await.unwrap();
    assert_eq!(due, Some(row.run_after_ms));
    // Before the backoff ends nothing is dispatched; after it, exactly once.
    let early = m.services.reconcile_at(row.run_after_ms - 1).await.unwrap();
    assert_eq!(early.dispatched, 0);
    let late = m.services.reconcile_at(row.run_after_ms).await.unwrap();
    assert_eq!(late.dispatched, 1);
    let again = m.services.reconcile_at(row.run_after_ms).await.unwrap();
    assert_eq!(again.dispatched, 0);
    let retried = m.claim(id, "worker-b").await;
    assert_eq!(retried.lease.attempt, 2);
    assert_eq!(m.services.next_retry_due_ms().await.unwrap(), None);
}

#[tokio::test]
async fn interrupted_work_keeps_its_place_in_the_queue() {
    let m = Machine::new().await;
    let first = m.create().await.job.id;
    m.claim(first, "worker-a").await;
    let mut newer = Vec::new();
    for _ in 0..5 {
        newer.push(m.create().await.job.id);
    }
    // Worker A dies; its job is settled as interrupted and dispatched again once due.
    let at = now_ms() + LEASE_TTL_MS + 1;
    assert_eq!(m.services.reconcile_at(at).await.unwrap().expired_leases, 1);
    let due = m.row(first).await.run_after_ms;
    assert_eq!(m.services.reconcile_at(due).await.unwrap().dispatched, 1);

    // A real queue consumer takes one job at a time, claiming it as a worker would (the
    // interrupted job's first, now stale, delivery is refused by the claim): the interrupted
    // job comes first.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let services = m.services.clone();
    let on_dispatch = DispatchFn(Arc::new(move |dispatch: Dispatch| {
        let (tx, services) = (tx.clone(), services.clone());
        Box::pin(async move {
            if let Ok(Some(claimed)) = services.claim(&dispatch, "worker-b").await {
                let _ = tx.send(claimed.job.id);
            }
        })
    }));
    let stop = CancellationToken::new();
    let consumer = tokio::spawn(queue::run_consumer(
        m.services.db.clone(),
        ConsumerSettings {
            serves: "model".into(),
            concurrency: 1,
            poll_interval: Duration::from_millis(20),
        },
        on_dispatch,
        stop.clone(),
    ));
    let mut order = Vec::new();
    while order.len() < 6 {
        let next = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("the consumer delivers every dispatch")
            .expect("channel open");
        order.push(next);
    }
    stop.cancel();
    consumer.await.expect("consumer stops");
    let mut want = vec![first];
    want.extend(newer);
    assert_eq!(order, want, "deliveries not in creation order");
}

/// A job's deletion lets go of its upload and commits, and the process dies before deleting
/// the upload's bytes (the state `service::holds::release` leaves: no job holds it, due at
/// once): the reconciler's next pass deletes the bytes, then the row; nothing leaks.
#[tokio::test]
async fn an_upload_let_go_of_before_a_crash_is_deleted_by_the_reconciler() {
    let m = Machine::new().await;
    let view = m.create().await;
    let input = &view.inputs[0];
    let key = object_store::path::Path::from(input.blob_key.as_str());
    assert!(m.services.blobs.head(&key).await.is_ok(), "stored");
    let orm = &m.services.db.orm;
    orm.execute_unprepared(&format!(
        "UPDATE ferry_uploads SET job_count = 0, expires_at_ms = 0 WHERE id = X'{}'",
        input.upload_id.simple()
    ))
    .await
    .unwrap();
    let repairs = m.services.reconcile_at(now_ms()).await.unwrap();
    assert_eq!(repairs.expired_uploads, 1, "{repairs:?}");
    assert!(
        m.services.blobs.head(&key).await.is_err(),
        "bytes left behind"
    );
    let rows = ferry::storage::entities::upload::Entity::find()
        .count(orm)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}
