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
        attempts::{LeaseState, Outcome},
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
            tracing::error!(job_id = %JobId(dispatch.job_id), error = %err, "claiming a job failed");
            return;
        }
    };
    let span = tracing::info_span!("job", job_id = %JobId(claimed.job.id), attempt = claimed.lease.attempt);
    async move {
        let Some(handler) = registry.handlers.get(&claimed.job.kind).cloned() else {
            // Consumers exist only for registered kinds: unreachable unless the config changed
            // under a running queue. Retry elsewhere.
            let failure = failure("no_handler", "no handler for this kind on this worker", true, claimed.lease.attempt);
            let _ = services.finish_attempt(&claimed.lease, &claimed.job, Outcome::Failed(failure)).await;
            return;
        };
        tracing::info!(kind = %claimed.job.kind, "attempt started");
        // Absolute (see `Settings::load`): handlers get these paths by environment variable.
        let work_dir = services
            .settings
            .work_dir()
            .join(format!("{}-{}", claimed.job.id.simple(), claimed.lease.attempt));
        let output_dir = work_dir.join("outputs");
        if let Err(err) = tokio::fs::create_dir_all(&output_dir).await {
            let failure = failure("workspace", &format!("cannot create {}: {err}", output_dir.display()), true, claimed.lease.attempt);
            let _ = services.finish_attempt(&claimed.lease, &claimed.job, Outcome::Failed(failure)).await;
            return;
        }
        let cancel = CancellationToken::new();
        let ctx = Arc::new(JobContext {
            job_id: JobId(claimed.job.id),
            kind: claimed.job.kind.clone(),
            attempt: claimed.lease.attempt,
            params: serde_json::from_str(&claimed.job.params).unwrap_or(serde_json::json!({})),
            inputs: claimed.inputs.clone(),
            work_dir: work_dir.clone(),
            output_dir: output_dir.clone(),
            cancel: cancel.clone(),
            kill_grace: services.settings.queue.kill_grace,
            services: services.clone(),
            lease: claimed.lease.clone(),
            pending: Arc::new(Mutex::new(Pending::default())),
            published: Mutex::new(HashSet::new()),
        });

        let mut task = tokio::spawn({
            let ctx = ctx.clone();
            async move { handler.handler.run(&ctx).await }
        });
        let timeout = Duration::from_millis(claimed.job.timeout_ms.max(0) as u64);
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
            if flush(&ctx).await == LeaseState::Lost && stop.is_none() {
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
                if hard_deadline.is_none() {
                    tracing::info!(?reason, "stopping the handler");
                    cancel.cancel();
                    hard_deadline = Some(Instant::now() + ctx.kill_grace + Duration::from_secs(5));
                } else if hard_deadline.is_some_and(|d| Instant::now() >= d) {
                    tracing::warn!("handler ignored cancellation; abandoning it");
                    task.abort();
                    break None;
                }
            }
        };
        flush(&ctx).await;

        let attempt = claimed.lease.attempt;
        let outcome = match (stop, joined) {
            (Some(StopReason::LeaseLost), _) => None,
            (Some(StopReason::Canceled), _) => Some(Outcome::Canceled),
            (Some(StopReason::TimedOut), _) => Some(Outcome::Failed(failure(
                "timeout",
                &format!("the attempt exceeded its timeout of {}", humantime::format_duration(timeout)),
                true,
                attempt,
            ))),
            (Some(StopReason::Shutdown), _) => Some(Outcome::Requeue),
            (None, Some(Ok(Ok(())))) => Some(match publish_leftovers(&ctx).await {
                Ok(()) => Outcome::Succeeded,
                Err(err) => Outcome::Failed(failure(&err.code, &err.message, err.retryable, attempt)),
            }),
            (None, Some(Ok(Err(err)))) => Some(Outcome::Failed(failure(&err.code, &err.message, err.retryable, attempt))),
            (None, Some(Err(join_err))) => Some(Outcome::Failed(failure(
                "handler_panicked",
                &format!("the handler panicked: {join_err}"),
                true,
                attempt,
            ))),
            (None, None) => None,
        };
        if let Some(outcome) = outcome {
            match services.finish_attempt(&claimed.lease, &claimed.job, outcome).await {
                Ok(Some(status)) => tracing::info!(status = status.as_str(), "attempt settled"),
                Ok(None) => tracing::warn!("attempt outcome dropped: the lease was lost"),
                // The lease will expire and the reconciler settles the attempt.
                Err(err) => tracing::error!(error = %err, "recording the attempt's outcome failed"),
            }
        } else {
            tracing::warn!("lease lost; attempt abandoned without an outcome");
        }
        if let Err(err) = tokio::fs::remove_dir_all(&work_dir).await {
            tracing::warn!(dir = %work_dir.display(), error = %err, "could not remove the work folder");
        }
    }
    .instrument(span)
    .await
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

/// Every file in the output folder that was not published yet becomes a final result.
async fn publish_leftovers(ctx: &JobContext) -> Result<(), HandlerError> {
    let mut names = Vec::new();
    collect_files(&ctx.output_dir, &ctx.output_dir, &mut names)
        .await
        .map_err(|e| HandlerError::retryable("workspace", format!("cannot list outputs: {e}")))?;
    names.sort();
    for name in names {
        if !ctx.is_published(&name) {
            ctx.publish(&name, Some(guess_content_type(&name)), true)
                .await?;
        }
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
