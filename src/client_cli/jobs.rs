//! `ferry jobs ls|show|cancel|rm|logs|events|rerun|rerun-all`: reading and managing jobs.

use std::num::NonZeroU64;

use clap::{Subcommand, ValueEnum};
use ferry_client::types::{BulkRerunIn, Job, JobStatus, RerunIn};

use super::{
    Context,
    output::{Bars, Failure, print_json},
};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StatusFilter {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl From<StatusFilter> for JobStatus {
    fn from(status: StatusFilter) -> Self {
        match status {
            StatusFilter::Queued => JobStatus::Queued,
            StatusFilter::Running => JobStatus::Running,
            StatusFilter::Succeeded => JobStatus::Succeeded,
            StatusFilter::Failed => JobStatus::Failed,
            StatusFilter::Canceled => JobStatus::Canceled,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first.
    Ls {
        /// Only jobs with this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Page size (1–200).
        #[arg(long, default_value = "50")]
        limit: NonZeroU64,
        /// The cursor printed after the previous page.
        #[arg(long, value_name = "CURSOR")]
        next: Option<String>,
    },
    /// Show one job.
    Show {
        #[arg(value_name = "JOB_ID")]
        id: String,
        /// Wait until the job has finished (long-polling the server), then show it.
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a job (a running one stops within about a second).
    Cancel {
        #[arg(value_name = "JOB_ID")]
        id: String,
    },
    /// Delete a finished job with its inputs and results.
    Rm {
        #[arg(value_name = "JOB_ID")]
        id: String,
    },
    /// Print a job's handler log (stdout and stderr lines).
    Logs {
        #[arg(value_name = "JOB_ID")]
        id: String,
        /// The last this many lines (1–1000).
        #[arg(long, default_value = "100")]
        tail: NonZeroU64,
    },
    /// Print a job's events (state changes, progress, results).
    Events {
        #[arg(value_name = "JOB_ID")]
        id: String,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many events (1–1000).
        #[arg(long, default_value = "100")]
        limit: NonZeroU64,
    },
    /// Re-run a job on the same inputs and params, following the tag it followed (or the
    /// version it named), after a fix.
    Rerun {
        #[arg(value_name = "JOB_ID")]
        id: String,
        /// Run this version or tag of the kind instead.
        #[arg(long)]
        version: Option<String>,
        /// Run with these params instead (a JSON object).
        #[arg(long, value_name = "JSON")]
        params: Option<String>,
    },
    /// Re-run every job a filter matches (by default the failed ones not re-run yet), at most
    /// --limit per call; calling again continues with the rest.
    RerunAll {
        /// Jobs with this status (default: failed).
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs that ran this version.
        #[arg(long)]
        version: Option<String>,
        /// Only failed jobs whose error has this code.
        #[arg(long)]
        error_code: Option<String>,
        /// Run the re-runs on this version or tag.
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// At most this many re-runs (1–1000).
        #[arg(long, default_value = "100")]
        limit: NonZeroU64,
    },
}

pub async fn run(ctx: &Context, command: JobsCommand) -> Result<(), Failure> {
    let client = &ctx.client;
    match command {
        JobsCommand::Ls {
            status,
            kind,
            limit,
            next,
        } => {
            let mut request = client.list_jobs().limit(limit);
            if let Some(status) = status {
                request = request.status(JobStatus::from(status));
            }
            if let Some(kind) = kind {
                request = request.kind(kind);
            }
            if let Some(next) = next {
                request = request.next(next);
            }
            let page = request
                .send()
                .await
                .map_err(|e| ctx.failed(e))?
                .into_inner();
            if ctx.json {
                print_json(&page);
                return Ok(());
            }
            for job in &page.items {
                println!("{}", summary(job));
            }
            if let Some(next) = &page.next {
                eprintln!("more: --next {}", next.as_str());
            }
        }
        JobsCommand::Show { id, wait } => {
            let job = if wait {
                super::submit::follow(ctx, &id, &Bars::new(ctx.json)).await?
            } else {
                let job = client.get_job().id(id.as_str()).send().await;
                job.map_err(|e| ctx.failed(e))?.into_inner()
            };
            if ctx.json {
                print_json(&job);
            } else {
                print!("{}", details(&job));
            }
        }
        JobsCommand::Cancel { id } => {
            let job = client.cancel_job().id(id.as_str()).send().await;
            let job = job.map_err(|e| ctx.failed(e))?.into_inner();
            if ctx.json {
                print_json(&job);
            } else if job.status == JobStatus::Canceled {
                println!("job {} canceled", job.id.as_str());
            } else {
                println!("job {} is stopping", job.id.as_str());
            }
        }
        JobsCommand::Rm { id } => {
            client
                .delete_job()
                .id(id.as_str())
                .send()
                .await
                .map_err(|e| ctx.failed(e))?;
            if ctx.json {
                print_json(&serde_json::json!({"deleted": id}));
            } else {
                println!("job {id} deleted");
            }
        }
        JobsCommand::Logs { id, tail } => {
            let logs = client
                .list_job_logs()
                .id(id.as_str())
                .tail(tail)
                .send()
                .await;
            let logs = logs.map_err(|e| ctx.failed(e))?.into_inner();
            if ctx.json {
                print_json(&logs);
            } else {
                for line in &logs.items {
                    println!("{}", line.line);
                }
            }
        }
        JobsCommand::Rerun {
            id,
            version,
            params,
        } => {
            let params = params
                .map(|text| {
                    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
                        .map_err(|e| Failure::Usage(format!("--params is not a JSON object: {e}")))
                })
                .transpose()?;
            let version = version
                .map(|v| v.parse())
                .transpose()
                .map_err(|e| Failure::Usage(format!("--version: {e}")))?;
            let body = RerunIn {
                version,
                params,
                priority: None,
            };
            let job = client.rerun_job().id(id.as_str()).body(body).send().await;
            let job = job.map_err(|e| ctx.failed(e))?.into_inner();
            if ctx.json {
                print_json(&job);
            } else {
                println!("{}", summary(&job));
            }
        }
        JobsCommand::RerunAll {
            status,
            kind,
            version,
            error_code,
            to,
            limit,
        } => {
            let to = to
                .map(|v| v.parse())
                .transpose()
                .map_err(|e| Failure::Usage(format!("--to: {e}")))?;
            let body = BulkRerunIn {
                status: status.map(JobStatus::from),
                kind,
                version,
                error_code,
                rerun_version: to,
                limit: Some(limit),
                ..BulkRerunIn::default()
            };
            let batch = client.rerun_jobs().body(body).send().await;
            let batch = batch.map_err(|e| ctx.failed(e))?.into_inner();
            if ctx.json {
                print_json(&batch);
            } else {
                println!(
                    "{}: {} re-runs queued, {} skipped (inputs deleted), {} left",
                    batch.id.as_str(),
                    batch.created,
                    batch.skipped,
                    batch.remaining
                );
            }
        }
        JobsCommand::Events { id, after, limit } => {
            let request = client.list_job_events().id(id.as_str());
            let events = request.after(after as i64).limit(limit).send().await;
            let events = events.map_err(|e| ctx.failed(e))?.into_inner();
            if ctx.json {
                print_json(&events);
            } else {
                for event in &events.items {
                    let data = serde_json::Value::Object(event.data.clone());
                    println!(
                        "{:>5} {} {:<10} {data}",
                        event.seq, event.created_at, event.kind
                    );
                }
            }
        }
    }
    Ok(())
}

/// One line: id, status, kind, progress, creation time.
fn summary(job: &Job) -> String {
    let percent = job
        .progress
        .as_ref()
        .and_then(|p| p.percent)
        .map(|p| format!("{p:.0}%"))
        .unwrap_or_else(|| "-".into());
    let kind = match &job.version {
        Some(version) => format!("{}@{version}", job.kind.as_str()),
        None => job.kind.to_string(),
    };
    format!(
        "{}  {:<9} {:<16} {:>4}  {}",
        job.id.as_str(),
        job.status.to_string(),
        kind,
        percent,
        job.created_at
    )
}

/// `key: value` lines for a person.
fn details(job: &Job) -> String {
    let mut text = format!(
        "id:          {}\nkind:        {}{}\nstatus:      {}\nattempt:     {}/{}\ncreated:     {}\n",
        job.id.as_str(),
        job.kind.as_str(),
        job.version
            .as_ref()
            .map(|v| format!("@{v}"))
            .unwrap_or_default(),
        job.status,
        job.attempt,
        job.max_attempts,
        job.created_at
    );
    if let Some(progress) = &job.progress {
        let percent = progress
            .percent
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_default();
        let stage = progress.stage.as_ref().map_or("", |s| s.as_str());
        let message = progress.message.as_ref().map_or("", |m| m.as_str());
        text.push_str(&format!("progress:    {percent} {stage} {message}\n"));
    }
    if let Some(of) = &job.rerun_of {
        text.push_str(&format!("re-run of:   {}\n", of.as_str()));
    }
    if let Some(latest) = &job.latest_rerun {
        text.push_str(&format!("re-run as:   {}\n", latest.as_str()));
    }
    if let Some(why) = &job.waiting_for {
        text.push_str(&format!("waiting for: {why}\n"));
    }
    if let Some(finished) = &job.finished_at {
        text.push_str(&format!("finished:    {finished}\n"));
    }
    if let Some(expires) = &job.expires_at {
        text.push_str(&format!("expires:     {expires}\n"));
    }
    match (&job.inputs_deleted_at, &job.inputs_expire_at) {
        (Some(deleted), _) => text.push_str(&format!("inputs:      deleted {deleted}\n")),
        (None, Some(expire)) => text.push_str(&format!("inputs:      deleted at {expire}\n")),
        (None, None) => {}
    }
    if let Some(error) = &job.error {
        text.push_str(&format!(
            "error:       {} ({})\n",
            error.detail.as_str(),
            error.code
        ));
    }
    for input in &job.inputs {
        let input = serde_json::to_value(input).unwrap_or_default();
        text.push_str(&format!("input:       {input}\n"));
    }
    text.push_str(&format!("results:     {}\n", job.result_count));
    text
}
