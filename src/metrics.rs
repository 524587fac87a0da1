//! Prometheus metrics (`GET /metrics`): what this process counted, and what the database says
//! about the queue.
//!
//! Two sorts live here, on purpose kept apart:
//! - **Counters and histograms** of what this process did (jobs created and finished, attempts,
//!   uploads, results, retries, lease expiries, reconciler repairs, webhook deliveries, storage
//!   errors). They start at zero with the process, as Prometheus counters do; `rate()` and
//!   `increase()` handle restarts. A job's moves are counted when the transaction that made
//!   them commits ([`crate::storage::Tx`]), so a rolled-back move is never counted.
//! - **Gauges of the queue** (depth, age of the oldest queued job, running jobs per worker, live
//!   workers), set from the database at each scrape ([`QueueSnapshot`]), so every replica
//!   reports the same truth whichever one Prometheus asks.
//!
//! Label values are bounded: kinds and versions come from the configuration, outcomes and
//! repairs from fixed lists, workers from the live worker registry. No job id is ever a label.
//!
//! The `prometheus` crate does the bookkeeping and the text format (0.0.4); one registry per
//! [`Metrics`], so processes in one test binary do not share counts.

use std::sync::{Arc, LazyLock};

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, core::Collector,
};

/// A version label for jobs of an unversioned kind.
const NO_VERSION: &str = "";

/// Seconds: from a few milliseconds (a no-op handler) to a day (a long model run).
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0, 86400.0,
];

/// Errors from the database or the blob store, counted where they become service errors, which
/// know no [`Metrics`]: so process-wide, and registered in every registry.
static STORAGE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "ferry_storage_errors_total",
            "Errors from the database or the blob store that failed a request or a task, by \
             store (database, blobs).",
        ),
        &["store"],
    )
    .expect("valid metric")
});

/// Counts an error of `store` (see [`STORAGE_ERRORS`]).
pub fn storage_error(store: Store) {
    let label = match store {
        Store::Database => "database",
        Store::Blobs => "blobs",
    };
    STORAGE_ERRORS.with_label_values(&[label]).inc();
}

/// This process's metrics. Cheap to clone: every clone counts into the same registry.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: Registry,
    jobs_created: IntCounterVec,
    jobs_finished: IntCounterVec,
    attempts: IntCounterVec,
    attempt_duration: HistogramVec,
    queue_wait: HistogramVec,
    retries: IntCounterVec,
    lease_expiries: IntCounter,
    upload_bytes: IntCounter,
    uploads_completed: IntCounterVec,
    upload_duration: Histogram,
    uploads_active: IntGauge,
    uploads_capacity: IntGauge,
    result_bytes: IntCounterVec,
    results_published: IntCounterVec,
    reconciler_repairs: IntCounterVec,
    webhook_attempts: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_oldest: GaugeVec,
    running: IntGaugeVec,
    workers_live: IntGauge,
}

/// A move of a job that a transaction made, counted when it commits
/// ([`crate::storage::Tx::count`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobMove {
    Created {
        kind: String,
        version: Option<String>,
    },
    /// Its first attempt started, `waited_ms` after the job was created.
    Started {
        kind: String,
        waited_ms: i64,
    },
    RetryScheduled {
        kind: String,
    },
    ResultPublished {
        kind: String,
        bytes: u64,
        is_final: bool,
    },
    /// It reached a final status: `outcome` is `succeeded`, `failed` or `canceled`.
    Finished {
        kind: String,
        version: Option<String>,
        outcome: &'static str,
    },
}

/// How an attempt ended, for `ferry_attempts_total` and the attempt duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    /// Failed, and another attempt is scheduled.
    Retried,
    Canceled,
    /// The worker stopped (shutdown) and handed the job back.
    Interrupted,
}

impl AttemptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Succeeded => "succeeded",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Retried => "retried",
            AttemptOutcome::Canceled => "canceled",
            AttemptOutcome::Interrupted => "interrupted",
        }
    }
}

/// Which store an error came from, for `ferry_storage_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Database,
    Blobs,
}

/// What the database says about the queue at one moment (see the module notes).
#[derive(Clone, Debug, Default)]
pub struct QueueSnapshot {
    /// Every queue a job can wait in (kind, version; version empty for an unversioned kind),
    /// with how many jobs wait in it and when the oldest of them was created (ms since the
    /// epoch; `None` when none waits). Queues of the configuration with no job are included,
    /// at zero, so their series do not vanish.
    pub queued: Vec<QueuedIn>,
    /// Running jobs per worker (its id, the lease owner); live workers running nothing at zero.
    pub running: Vec<(String, i64)>,
    /// Worker processes registered and renewing.
    pub workers_live: i64,
    pub now_ms: i64,
}

#[derive(Clone, Debug)]
pub struct QueuedIn {
    pub kind: String,
    pub version: Option<String>,
    pub count: i64,
    pub oldest_created_at_ms: Option<i64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let inner = Inner {
            jobs_created: counter_vec(
                r,
                "ferry_jobs_created_total",
                "Jobs created, by kind and version.",
                &["kind", "version"],
            ),
            jobs_finished: counter_vec(
                r,
                "ferry_jobs_finished_total",
                "Jobs that reached a final status, by kind, version and outcome \
                 (succeeded, failed, canceled).",
                &["kind", "version", "outcome"],
            ),
            attempts: counter_vec(
                r,
                "ferry_attempts_total",
                "Attempts this process's workers ran to an end, by kind and outcome.",
                &["kind", "outcome"],
            ),
            attempt_duration: histogram_vec(
                r,
                "ferry_attempt_duration_seconds",
                "How long attempts ran, from claim to their end, by kind and outcome.",
                &["kind", "outcome"],
            ),
            queue_wait: histogram_vec(
                r,
                "ferry_queue_wait_seconds",
                "From a job's creation to its first attempt's start (submit to start), by kind.",
                &["kind"],
            ),
            retries: counter_vec(
                r,
                "ferry_retries_total",
                "Failed attempts that were scheduled to run again, by kind.",
                &["kind"],
            ),
            lease_expiries: counter(
                r,
                "ferry_lease_expiries_total",
                "Attempts whose worker stopped renewing its lease (crashed or cut off), found \
                 by this process's reconciler.",
            ),
            upload_bytes: counter(
                r,
                "ferry_upload_bytes_total",
                "Bytes received in uploads (streamed, one-request and resumable), stored.",
            ),
            uploads_completed: counter_vec(
                r,
                "ferry_uploads_completed_total",
                "Uploads that ended, by how: stored (a streamed upload stored, or a resumable \
                 one's last byte in); refused (a streamed upload refused: the client's mistake, \
                 cut off, or a limit); failed (a streamed upload's store error).",
                &["outcome"],
            ),
            upload_duration: histogram(
                r,
                "ferry_upload_duration_seconds",
                "How long stored streamed uploads took, from the request to the durable write.",
            ),
            uploads_active: gauge(
                r,
                "ferry_uploads_active",
                "Uploads this process is receiving now.",
            ),
            uploads_capacity: gauge(
                r,
                "ferry_uploads_capacity",
                "How many uploads this process receives at once (limits.max_concurrent_uploads).",
            ),
            result_bytes: counter_vec(
                r,
                "ferry_result_bytes_total",
                "Bytes of results published, by kind.",
                &["kind"],
            ),
            results_published: counter_vec(
                r,
                "ferry_results_published_total",
                "Results published, by kind and whether intermediate or final.",
                &["kind", "stage"],
            ),
            reconciler_repairs: counter_vec(
                r,
                "ferry_reconciler_repairs_total",
                "What this process's reconciler repaired, by repair.",
                &["repair"],
            ),
            webhook_attempts: counter_vec(
                r,
                "ferry_webhook_attempts_total",
                "Webhook delivery attempts, by outcome (delivered, failed: will be retried, \
                 gave_up: the schedule is used up or the endpoint is gone).",
                &["outcome"],
            ),
            queue_depth: gauge_vec(
                r,
                "ferry_queue_depth",
                "Jobs waiting to run (status queued), by kind and version; from the database.",
                &["kind", "version"],
            ),
            queue_oldest: float_gauge_vec(
                r,
                "ferry_queue_oldest_age_seconds",
                "Age of the oldest job waiting to run, by kind and version (0 when none waits); \
                 from the database.",
                &["kind", "version"],
            ),
            running: gauge_vec(
                r,
                "ferry_jobs_running",
                "Jobs running, by worker (the live workers' ids); from the database.",
                &["worker"],
            ),
            workers_live: gauge(
                r,
                "ferry_workers_live",
                "Worker processes whose registration is current; from the database.",
            ),
            registry,
        };
        registered(&inner.registry, Ok(STORAGE_ERRORS.clone()));
        Metrics(Arc::new(inner))
    }

    /// Counts a committed job move.
    pub fn count(&self, job_move: &JobMove) {
        match job_move {
            JobMove::Created { kind, version } => self.job_created(kind, version.as_deref()),
            JobMove::Started { kind, waited_ms } => self.job_started(kind, *waited_ms),
            JobMove::RetryScheduled { kind } => self.retry_scheduled(kind),
            JobMove::ResultPublished {
                kind,
                bytes,
                is_final,
            } => self.result_published(kind, *bytes, !is_final),
            JobMove::Finished {
                kind,
                version,
                outcome,
            } => self.job_finished(kind, version.as_deref(), outcome),
        }
    }

    fn job_created(&self, kind: &str, version: Option<&str>) {
        self.0
            .jobs_created
            .with_label_values(&[kind, version.unwrap_or(NO_VERSION)])
            .inc();
    }

    /// A job reached `outcome` (`succeeded`, `failed` or `canceled`).
    fn job_finished(&self, kind: &str, version: Option<&str>, outcome: &str) {
        self.0
            .jobs_finished
            .with_label_values(&[kind, version.unwrap_or(NO_VERSION), outcome])
            .inc();
    }

    /// A job's first attempt started `waited_ms` after the job was created.
    fn job_started(&self, kind: &str, waited_ms: i64) {
        self.0
            .queue_wait
            .with_label_values(&[kind])
            .observe(waited_ms.max(0) as f64 / 1000.0);
    }

    pub fn attempt_ended(&self, kind: &str, outcome: AttemptOutcome, ran: std::time::Duration) {
        let labels = [kind, outcome.as_str()];
        self.0.attempts.with_label_values(&labels).inc();
        self.0
            .attempt_duration
            .with_label_values(&labels)
            .observe(ran.as_secs_f64());
    }

    fn retry_scheduled(&self, kind: &str) {
        self.0.retries.with_label_values(&[kind]).inc();
    }

    pub fn leases_expired(&self, count: u64) {
        self.0.lease_expiries.inc_by(count);
    }

    /// An upload ended: `stored` with `bytes` after `took`, or not (`refused`, `failed`).
    pub fn upload_stored(&self, bytes: u64, took: std::time::Duration) {
        self.0.upload_bytes.inc_by(bytes);
        self.0.upload_duration.observe(took.as_secs_f64());
        self.0
            .uploads_completed
            .with_label_values(&["stored"])
            .inc();
    }

    /// Bytes of a resumable upload's write, stored (the upload is not over).
    pub fn upload_bytes(&self, bytes: u64) {
        self.0.upload_bytes.inc_by(bytes);
    }

    pub fn upload_ended(&self, outcome: &str) {
        self.0.uploads_completed.with_label_values(&[outcome]).inc();
    }

    /// How many uploads run now and may run at once, read from the upload slots at a scrape.
    pub fn upload_slots(&self, active: usize, capacity: usize) {
        self.0.uploads_active.set(active as i64);
        self.0.uploads_capacity.set(capacity as i64);
    }

    fn result_published(&self, kind: &str, bytes: u64, intermediate: bool) {
        self.0.result_bytes.with_label_values(&[kind]).inc_by(bytes);
        let stage = if intermediate {
            "intermediate"
        } else {
            "final"
        };
        self.0
            .results_published
            .with_label_values(&[kind, stage])
            .inc();
    }

    pub fn repaired(&self, repair: &str, count: u64) {
        if count > 0 {
            self.0
                .reconciler_repairs
                .with_label_values(&[repair])
                .inc_by(count);
        }
    }

    /// A webhook delivery attempt ended: `delivered`, `failed` (retried later) or `gave_up`.
    pub fn webhook_attempt(&self, outcome: &str) {
        self.0.webhook_attempts.with_label_values(&[outcome]).inc();
    }

    /// Sets the queue's gauges from `snapshot`, replacing what the last scrape set (a worker
    /// gone since is no longer reported).
    pub fn set_queue(&self, snapshot: &QueueSnapshot) {
        self.0.queue_depth.reset();
        self.0.queue_oldest.reset();
        self.0.running.reset();
        for q in &snapshot.queued {
            let labels = [q.kind.as_str(), q.version.as_deref().unwrap_or(NO_VERSION)];
            self.0.queue_depth.with_label_values(&labels).set(q.count);
            let age_ms = q
                .oldest_created_at_ms
                .map_or(0, |created| (snapshot.now_ms - created).max(0));
            self.0
                .queue_oldest
                .with_label_values(&labels)
                .set(age_ms as f64 / 1000.0);
        }
        for (worker, count) in &snapshot.running {
            self.0.running.with_label_values(&[worker]).set(*count);
        }
        self.0.workers_live.set(snapshot.workers_live);
    }

    /// Everything, in the Prometheus text format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into memory fails only on a metric the encoder cannot write (none here).
        if let Err(e) = TextEncoder::new().encode(&self.0.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

// Constructors: a metric whose name or labels are invalid is a bug in this file, found by the
// first test that builds `Metrics` (the unit test below), hence `expect`.

/// `made`, registered in `r`.
fn registered<C: Collector + Clone + 'static>(r: &Registry, made: prometheus::Result<C>) -> C {
    let metric = made.expect("valid metric");
    r.register(Box::new(metric.clone()))
        .expect("registered once");
    metric
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    registered(r, IntCounter::new(name, help))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    registered(r, IntGauge::new(name, help))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    registered(r, GaugeVec::new(Opts::new(name, help), labels))
}

fn durations(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec())
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    registered(r, Histogram::with_opts(durations(name, help)))
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    registered(r, HistogramVec::new(durations(name, help), labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_renders_with_its_help_and_type() {
        let m = Metrics::new();
        m.job_created("seg", Some("v2"));
        m.job_finished("seg", None, "failed");
        m.set_queue(&QueueSnapshot {
            queued: vec![QueuedIn {
                kind: "seg".into(),
                version: None,
                count: 3,
                oldest_created_at_ms: Some(1_000),
            }],
            running: vec![("w1".into(), 2)],
            workers_live: 1,
            now_ms: 4_000,
        });
        let text = m.render();
        assert!(
            text.contains("# TYPE ferry_jobs_created_total counter"),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_jobs_created_total{kind="seg",version="v2"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_jobs_finished_total{kind="seg",outcome="failed",version=""} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_queue_depth{kind="seg",version=""} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_queue_oldest_age_seconds{kind="seg",version=""} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_jobs_running{worker="w1"} 2"#),
            "{text}"
        );
        assert!(text.contains("ferry_workers_live 1"), "{text}");
    }

    #[test]
    fn storage_errors_are_counted_in_every_registry() {
        let blobs = |m: &Metrics| -> u64 {
            m.render()
                .lines()
                .find_map(|l| l.strip_prefix(r#"ferry_storage_errors_total{store="blobs"} "#))
                .map_or(0, |v| v.parse().expect("a count"))
        };
        let (a, b) = (Metrics::new(), Metrics::new());
        let before = blobs(&a);
        storage_error(Store::Blobs);
        // Process-wide (other tests may count too): at least this one, seen by both.
        let after = blobs(&a);
        assert!(after > before);
        assert!(
            blobs(&b) >= after,
            "the other registry sees the same counter"
        );
    }
}
