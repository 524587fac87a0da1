//! Runs one delivered dispatch: claim the job, prepare a fresh private work folder, run the
//! handler, and supervise it — lease renewal, cancel requests, the timeout, progress and log
//! flushing — then publish leftover outputs, remove the work folder and settle the attempt.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    Registry,
    flush::Flusher,
    handler::{HandlerError, JobContext, Pending, WorkFolder, guess_content_type, output_error},
};
use crate::{
    domain::{JobFailure, JobStatus},
    error_code::ErrorCode,
    ids::JobId,
    metrics::AttemptOutcome,
    queue::Dispatch,
    service::{
        Services,
        attempts::{ClaimedJob, LeaseState, LogBudget, Outcome},
    },
    telemetry,
    workspace::{AttemptDir, Owner},
};

const FLUSH_EVERY: Duration = Duration::from_millis(250);
const CANCEL_CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopReason {
    Canceled,
    TimedOut,
    LeaseLost,
    Shutdown,
}

pub(crate) async fn run_dispatch(
    services: Services,
    registry: Arc<Registry>,
    owner: String,
    folders: Arc<Owner>,
    shutdown: CancellationToken,
    dispatch: Dispatch,
) {
    let claimed = match services.claim(&dispatch, &owner).await {
        Ok(Some(claimed)) => claimed,
        Ok(None) => {
            tracing::debug!(job_id = %JobId(dispatch.job_id), "stale delivery ignored");
            return;
        }
        Err(err) => {
            // The reconciler re-dispatches the job if this delivery is lost.
            let job_id = JobId(dispatch.job_id);
            tracing::error!(%job_id, error = %err, "claiming a job failed");
            return;
        }
    };
    let span = tracing::info_span!(
        "job",
        job_id = %JobId(claimed.job.id),
        attempt = claimed.lease.attempt,
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
    );
    // Filled only for traces: log lines show the job and attempt alone.
    if telemetry::traces_on() {
        span.record("otel.name", format!("attempt {}", claimed.job.kind));
        span.record("otel.kind", "consumer");
        // A span of the trace of the request that created the job, wherever and whenever it
        // runs.
        if let Some(parent) = &claimed.job.traceparent {
            telemetry::continue_trace(&span, parent, None);
        }
        telemetry::mark_job(&span, JobId(claimed.job.id));
        span.set_attribute("ferry.kind", claimed.job.kind.clone());
        span.set_attribute("ferry.attempt", i64::from(claimed.lease.attempt));
    }
    run_claimed(services, registry, folders, shutdown, claimed)
        .instrument(span)
        .await
}

/// Prepares, supervises and settles one claimed attempt.
async fn run_claimed(
    services: Services,
    registry: Arc<Registry>,
    folders: Arc<Owner>,
    shutdown: CancellationToken,
    claimed: ClaimedJob,
) {
    let attempt = claimed.lease.attempt;
    let began = Instant::now();
    let outcome = match prepare(&services, &registry, &folders, &claimed).await {
        Err(failure) => Some(Outcome::Failed(failure)),
        Ok((handler, ctx)) => {
            tracing::info!(kind = %claimed.job.kind, "attempt started");
            let timeout = Duration::from_millis(claimed.job.timeout_ms.max(0) as u64);
            let (stop, joined) = supervise(&services, handler, &ctx, timeout, &shutdown).await;
            let outcome = decide(&ctx, stop, joined, timeout, attempt).await;
            // Before the attempt settles: a settled attempt leaves no copy of the input behind.
            if let Some(folder) = ctx.folder.made() {
                remove_folder(folder).await;
            }
            outcome
        }
    };
    let Some(outcome) = outcome else {
        tracing::warn!("lease lost; attempt abandoned without an outcome");
        return;
    };
    let requeued = if matches!(outcome, Outcome::Requeue) {
        AttemptOutcome::Interrupted
    } else {
        AttemptOutcome::Retried
    };
    match settle(&services, &claimed, outcome, &shutdown).await {
        Ok(Some(status)) => {
            tracing::info!(status = status.as_str(), "attempt settled");
            let ended = match status {
                JobStatus::Succeeded => AttemptOutcome::Succeeded,
                JobStatus::Failed => AttemptOutcome::Failed,
                JobStatus::Canceled => AttemptOutcome::Canceled,
                JobStatus::Queued | JobStatus::Running => requeued,
            };
            services
                .db
                .metrics()
                .attempt_ended(&claimed.job.kind, ended, began.elapsed());
        }
        Ok(None) => tracing::warn!("attempt outcome dropped: the lease was lost"),
        // The lease will expire and the reconciler settles the attempt.
        Err(err) => tracing::error!(error = %err, "recording the attempt's outcome failed"),
    }
}

/// The first pause before writing an attempt's outcome again; each later one is twice as long,
/// up to [`SETTLE_RETRY_MAX_PAUSE`].
const SETTLE_RETRY_FIRST_PAUSE: Duration = Duration::from_millis(100);
const SETTLE_RETRY_MAX_PAUSE: Duration = Duration::from_secs(5);

/// Writes the attempt's outcome. While the database cannot be reached (a restart, a failover,
/// connections the server closed) it tries again, for about as long as a lease lasts
/// (`queue.lease_ttl`) and until the worker stops: an outcome written is a finished job that
/// need not run again, and until the lease runs out no one else settles the attempt. Past that
/// the reconciler settles it as lost, as it did before any retry. A retried write that finds its
/// first try committed after all is refused by the lease guard (`Ok(None)`), never applied
/// twice.
async fn settle(
    services: &Services,
    claimed: &ClaimedJob,
    outcome: Outcome,
    shutdown: &CancellationToken,
) -> crate::service::ServiceResult<Option<JobStatus>> {
    let give_up = Instant::now() + services.settings.queue.lease_ttl;
    let mut pause = SETTLE_RETRY_FIRST_PAUSE;
    loop {
        let written = services
            .finish_attempt(&claimed.lease, &claimed.job, outcome.clone())
            .await;
        match written {
            Err(err)
                if err.code == ErrorCode::DatabaseUnavailable
                    && Instant::now() + pause < give_up =>
            {
                tracing::warn!(error = %err, "recording the attempt's outcome failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return Err(err),
                }
                pause = (pause * 2).min(SETTLE_RETRY_MAX_PAUSE);
            }
            written => return written,
        }
    }
}

/// Removes an attempt's work folder (a worker killed before this leaves it to the sweep).
async fn remove_folder(folder: Arc<AttemptDir>) {
    let removed = tokio::task::spawn_blocking(move || folder.remove().map_err(|e| (folder, e)));
    if let Ok(Err((folder, err))) = removed.await {
        let dir = folder.path.display();
        tracing::warn!(%dir, error = %err, "could not remove the work folder");
    }
}

/// Finds the handler and sets up the attempt's context (its work folder is made on first use).
async fn prepare(
    services: &Services,
    registry: &Registry,
    folders: &Arc<Owner>,
    claimed: &ClaimedJob,
) -> Result<(Arc<dyn super::Handler>, Arc<JobContext>), JobFailure> {
    let attempt = claimed.lease.attempt;
    let job = &claimed.job;
    let Some(handler) = registry
        .handler_for(&job.kind, job.version.as_deref())
        .cloned()
    else {
        // Consumers exist only for registered kinds: unreachable unless the config changed
        // under a running queue. Retry elsewhere.
        let detail = "no handler for this kind on this worker";
        return Err(failure("no_handler", detail, true, attempt));
    };
    let ctx = Arc::new(JobContext {
        job_id: JobId(claimed.job.id),
        kind: claimed.job.kind.clone(),
        version: claimed.job.version.clone(),
        attempt,
        params: serde_json::from_str(&claimed.job.params).unwrap_or(serde_json::json!({})),
        inputs: claimed.inputs.clone(),
        cancel: CancellationToken::new(),
        kill_grace: services.settings.queue.kill_grace,
        services: services.clone(),
        lease: claimed.lease.clone(),
        pending: Arc::new(Mutex::new(Pending::default())),
        published: Mutex::new(HashSet::new()),
        // Made when the handler first asks for it. Absolute (see `Settings::load`): handlers
        // get these paths by environment variable.
        folder: WorkFolder::new(folders.clone(), claimed.job.id, attempt),
    });
    Ok((handler.handler, ctx))
}

type Joined = Option<Result<Result<(), HandlerError>, tokio::task::JoinError>>;

/// Runs the handler while keeping the lease, flushing progress and logs, and watching for a
/// cancel request, the timeout and shutdown; on any of those, cancels the handler and, if it
/// ignores that, abandons it. Returns why it was stopped (if it was) and how it ended (`None`:
/// abandoned).
async fn supervise(
    services: &Services,
    handler: Arc<dyn super::Handler>,
    ctx: &Arc<JobContext>,
    timeout: Duration,
    shutdown: &CancellationToken,
) -> (Option<StopReason>, Joined) {
    // In the attempt's span: what the handler publishes is part of the attempt (logs, traces).
    let mut task = tokio::spawn(
        {
            let ctx = ctx.clone();
            async move { handler.run(&ctx).await }
        }
        .in_current_span(),
    );
    let deadline = Instant::now() + timeout;
    let lease_ttl = services.settings.queue.lease_ttl;
    let mut last_renew = Instant::now();
    let mut last_check = Instant::now();
    let mut stop: Option<StopReason> = None;
    let mut hard_deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut flusher = Flusher::new(&services.settings.limits);
    let joined = loop {
        tokio::select! {
            res = &mut task => break Some(res),
            _ = tick.tick() => {}
        }
        if flusher.flush(ctx, false).await == LeaseState::Lost && stop.is_none() {
            stop = Some(StopReason::LeaseLost);
        }
        if stop.is_none() && last_check.elapsed() >= CANCEL_CHECK_EVERY {
            let renew = last_renew.elapsed() >= lease_ttl / 3;
            match services.heartbeat(&ctx.lease, renew).await {
                Ok(LeaseState::Held) => {}
                Ok(LeaseState::CancelRequested) => stop = Some(StopReason::Canceled),
                Ok(LeaseState::Lost) => stop = Some(StopReason::LeaseLost),
                // A database hiccup: keep going; the lease has slack until it expires.
                Err(err) => tracing::warn!(error = %err, "heartbeat failed"),
            }
            if renew {
                last_renew = Instant::now();
            }
            last_check = Instant::now();
        }
        if stop.is_none() && Instant::now() >= deadline {
            stop = Some(StopReason::TimedOut);
        }
        if stop.is_none() && shutdown.is_cancelled() {
            stop = Some(StopReason::Shutdown);
        }
        if let Some(reason) = stop {
            match hard_deadline {
                None => {
                    tracing::info!(?reason, "stopping the handler");
                    ctx.cancel.cancel();
                    hard_deadline = Some(Instant::now() + ctx.kill_grace + Duration::from_secs(5));
                }
                Some(limit) if Instant::now() >= limit => {
                    tracing::warn!("handler ignored cancellation; abandoning it");
                    task.abort();
                    break None;
                }
                Some(_) => {}
            }
        }
    };
    flusher.flush(ctx, true).await;
    (stop, joined)
}

/// The attempt's outcome from why it stopped and how the handler ended; `None` when the lease
/// was lost (someone else settles it). A success publishes the leftover outputs first.
async fn decide(
    ctx: &JobContext,
    stop: Option<StopReason>,
    joined: Joined,
    timeout: Duration,
    attempt: i32,
) -> Option<Outcome> {
    let failed = |code: &str, detail: &str, retryable: bool| {
        Some(Outcome::Failed(failure(code, detail, retryable, attempt)))
    };
    match (stop, joined) {
        (Some(StopReason::LeaseLost), _) | (None, None) => None,
        (Some(StopReason::Canceled), _) => Some(Outcome::Canceled),
        (Some(StopReason::TimedOut), _) => {
            let limit = humantime::format_duration(timeout);
            failed(
                "timeout",
                &format!("the attempt exceeded its timeout of {limit}"),
                true,
            )
        }
        (Some(StopReason::Shutdown), _) => Some(Outcome::Requeue),
        (None, Some(Ok(Ok(())))) => match keeping_lease(ctx, publish_leftovers(ctx)).await {
            Ok(()) => Some(Outcome::Succeeded),
            Err(err) => failed(&err.code, &err.message, err.retryable),
        },
        (None, Some(Ok(Err(err)))) => failed(&err.code, &err.message, err.retryable),
        (None, Some(Err(join_err))) => failed(
            "handler_panicked",
            &format!("the handler panicked: {join_err}"),
            true,
        ),
    }
}

fn failure(code: &str, detail: &str, retryable: bool, attempt: i32) -> JobFailure {
    let title = match code {
        "timeout" => "Attempt timed out",
        "handler_exit" => "Handler exited with an error",
        "handler_error" => "Handler reported an error",
        "lease_expired" => "Worker lost",
        "invalid_input" => "Invalid input",
        "invalid_result" => "Output refused",
        _ => "Attempt failed",
    };
    JobFailure {
        code: code.to_owned(),
        title: title.to_owned(),
        detail: detail.to_owned(),
        retryable,
        attempt,
    }
}

/// Runs `work` while renewing the attempt's lease, as the supervisor did while the handler ran:
/// publishing large leftover outputs can take longer than `lease_ttl`, and an attempt whose
/// lease expired meanwhile would be settled as lost although its handler succeeded.
///
/// `work` and the renewals are driven side by side (`join!`), never one while the other waits:
/// a renewal writes the job's row, which `work`'s transaction may hold, so a renewal awaited in
/// place of `work` waited for a commit that nothing was driving — on PostgreSQL for ever, with
/// the row locked against the reconciler too (a job stuck `running`, seen under load).
async fn keeping_lease<T>(ctx: &JobContext, work: impl std::future::Future<Output = T>) -> T {
    let every = ctx.services.settings.queue.lease_ttl / 3;
    let done = CancellationToken::new();
    let working = async {
        let out = work.await;
        done.cancel();
        out
    };
    // Stops between renewals, never in the middle of one (a statement cut off mid-flight costs
    // its connection).
    let renewing = async {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = done.cancelled() => return,
            }
            if let Err(err) = ctx.services.heartbeat(&ctx.lease, true).await {
                // A database hiccup: the lease has slack until it expires.
                tracing::warn!(error = %err, "renewing the lease while publishing failed");
            }
        }
    };
    let (out, ()) = tokio::join!(working, renewing);
    out
}

/// Every file in the output folder that was not published yet becomes a final result. The
/// whole folder is checked first: anything in it that is not a regular file (a link, a pipe…)
/// fails the attempt and nothing of it is published. A file whose name is not a valid result
/// name (`a b.txt`, `ä.txt`) is skipped, with a warning in the job's log: the handler
/// succeeded, and its other results are kept.
async fn publish_leftovers(ctx: &JobContext) -> Result<(), HandlerError> {
    // A handler that never asked for its folder left nothing in it.
    let Some(workspace) = ctx.folder.made() else {
        return Ok(());
    };
    let listing = tokio::task::spawn_blocking(move || workspace.list_outputs())
        .await
        .map_err(|e| HandlerError::retryable("workspace", e.to_string()))?
        .map_err(output_error)?;
    let skipped: Vec<String> = listing
        .skipped
        .iter()
        .map(|(name, why)| {
            tracing::warn!(output = %name, "leftover output skipped: {why}");
            format!("ferry: warning: output {name:?} was not published: {why}")
        })
        .collect();
    for name in listing.names {
        if !ctx.is_published(&name) {
            ctx.publish(&name, Some(guess_content_type(&name)), true)
                .await?;
        }
    }
    // The supervisor has flushed its last log lines already: record these directly.
    let mut budget = LogBudget::default();
    if let Err(err) = ctx
        .services
        .append_logs(&ctx.lease, skipped, &mut budget)
        .await
    {
        tracing::warn!(error = %err, "could not record skipped outputs in the job's log");
    }
    Ok(())
}
