//! Runs one delivered dispatch: claim the job, prepare a private work folder, run the handler,
//! and supervise it — lease renewal, cancel requests, the timeout, progress and log flushing —
//! then publish leftover outputs and settle the attempt.

use std::{
    collections::HashSet,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Registry,
    handler::{HandlerError, JobContext, Pending, guess_content_type},
};
use crate::{
    domain::JobFailure,
    ids::JobId,
    queue::Dispatch,
    service::{
        Services,
        attempts::{ClaimedJob, LeaseState, Outcome},
    },
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
        attempt = claimed.lease.attempt
    );
    run_claimed(services, registry, shutdown, claimed)
        .instrument(span)
        .await
}

/// Prepares, supervises and settles one claimed attempt.
async fn run_claimed(
    services: Services,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    claimed: ClaimedJob,
) {
    let attempt = claimed.lease.attempt;
    let outcome = match prepare(&services, &registry, &claimed).await {
        Err(failure) => Some(Outcome::Failed(failure)),
        Ok((handler, ctx)) => {
            tracing::info!(kind = %claimed.job.kind, "attempt started");
            let timeout = Duration::from_millis(claimed.job.timeout_ms.max(0) as u64);
            let (stop, joined) = supervise(&services, handler, &ctx, timeout, &shutdown).await;
            let outcome = decide(&ctx, stop, joined, timeout, attempt).await;
            if let Err(err) = tokio::fs::remove_dir_all(&ctx.work_dir).await {
                let dir = ctx.work_dir.display();
                tracing::warn!(%dir, error = %err, "could not remove the work folder");
            }
            outcome
        }
    };
    let Some(outcome) = outcome else {
        tracing::warn!("lease lost; attempt abandoned without an outcome");
        return;
    };
    match services
        .finish_attempt(&claimed.lease, &claimed.job, outcome)
        .await
    {
        Ok(Some(status)) => tracing::info!(status = status.as_str(), "attempt settled"),
        Ok(None) => tracing::warn!("attempt outcome dropped: the lease was lost"),
        // The lease will expire and the reconciler settles the attempt.
        Err(err) => tracing::error!(error = %err, "recording the attempt's outcome failed"),
    }
}

/// Finds the handler and makes the attempt's private work folder.
async fn prepare(
    services: &Services,
    registry: &Registry,
    claimed: &ClaimedJob,
) -> Result<(Arc<dyn super::Handler>, Arc<JobContext>), JobFailure> {
    let attempt = claimed.lease.attempt;
    let Some(handler) = registry.handlers.get(&claimed.job.kind).cloned() else {
        // Consumers exist only for registered kinds: unreachable unless the config changed
        // under a running queue. Retry elsewhere.
        let detail = "no handler for this kind on this worker";
        return Err(failure("no_handler", detail, true, attempt));
    };
    // Absolute (see `Settings::load`): handlers get these paths by environment variable.
    let work_dir =
        services
            .settings
            .work_dir()
            .join(format!("{}-{}", claimed.job.id.simple(), attempt));
    let output_dir = work_dir.join("outputs");
    if let Err(err) = tokio::fs::create_dir_all(&output_dir).await {
        let detail = format!("cannot create {}: {err}", output_dir.display());
        return Err(failure("workspace", &detail, true, attempt));
    }
    let ctx = Arc::new(JobContext {
        job_id: JobId(claimed.job.id),
        kind: claimed.job.kind.clone(),
        attempt,
        params: serde_json::from_str(&claimed.job.params).unwrap_or(serde_json::json!({})),
        inputs: claimed.inputs.clone(),
        work_dir,
        output_dir,
        cancel: CancellationToken::new(),
        kill_grace: services.settings.queue.kill_grace,
        services: services.clone(),
        lease: claimed.lease.clone(),
        pending: Arc::new(Mutex::new(Pending::default())),
        published: Mutex::new(HashSet::new()),
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
    let mut task = tokio::spawn({
        let ctx = ctx.clone();
        async move { handler.run(&ctx).await }
    });
    let deadline = Instant::now() + timeout;
    let lease_ttl = services.settings.queue.lease_ttl;
    let mut last_renew = Instant::now();
    let mut last_check = Instant::now();
    let mut stop: Option<StopReason> = None;
    let mut hard_deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let joined = loop {
        tokio::select! {
            res = &mut task => break Some(res),
            _ = tick.tick() => {}
        }
        if flush(ctx).await == LeaseState::Lost && stop.is_none() {
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
    flush(ctx).await;
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
        (None, Some(Ok(Ok(())))) => match publish_leftovers(ctx).await {
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

/// Writes buffered progress and log lines.
async fn flush(ctx: &JobContext) -> LeaseState {
    let (progress, logs) = {
        let mut pending = ctx.pending.lock().expect("pending lock");
        (
            pending.progress.take(),
            pending.logs.drain(..).collect::<Vec<_>>(),
        )
    };
    if let Err(err) = ctx.services.append_logs(&ctx.lease, logs).await {
        tracing::warn!(error = %err, "could not store log lines");
    }
    if let Some((percent, stage, message)) = progress {
        match ctx
            .services
            .report_progress(&ctx.lease, percent, stage, message)
            .await
        {
            Ok(state) => return state,
            Err(err) => tracing::warn!(error = %err, "could not store progress"),
        }
    }
    LeaseState::Held
}

/// Every file in the output folder that was not published yet becomes a final result. A file
/// whose name is not a valid result name (`a b.txt`, `ä.txt`) is skipped, with a warning in the
/// job's log: the handler succeeded, and its other results are kept.
async fn publish_leftovers(ctx: &JobContext) -> Result<(), HandlerError> {
    let mut names = Vec::new();
    collect_files(&ctx.output_dir, &ctx.output_dir, &mut names)
        .await
        .map_err(|e| HandlerError::retryable("workspace", format!("cannot list outputs: {e}")))?;
    names.sort();
    let mut skipped = Vec::new();
    for name in names {
        if let Err(msg) = crate::domain::validate_result_name(&name) {
            tracing::warn!(output = %name, "leftover output skipped: invalid result name");
            skipped.push(format!(
                "ferry: warning: output {name:?} was not published: a result name {msg}"
            ));
            continue;
        }
        if !ctx.is_published(&name) {
            ctx.publish(&name, Some(guess_content_type(&name)), true)
                .await?;
        }
    }
    // The supervisor has flushed its last log lines already: record these directly.
    if let Err(err) = ctx.services.append_logs(&ctx.lease, skipped).await {
        tracing::warn!(error = %err, "could not record skipped outputs in the job's log");
    }
    Ok(())
}

async fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        let kind = entry.file_type().await?;
        if kind.is_dir() {
            Box::pin(collect_files(root, &entry.path(), out)).await?;
        } else if kind.is_file() {
            let rel = entry.path();
            let rel = rel.strip_prefix(root).unwrap_or(&rel);
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}
