//! `ferry submit`: upload the files, create the job, and with `--wait` follow it to the end and
//! download its results.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use clap::Args;
use ferry_client::types::{self, Job, JobStatus};
use serde_json::{Map, Value, json};

use super::{
    Context,
    output::{Bars, Failure, print_json},
    transfer,
};

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// Input files, each uploaded (streamed) and named after its file name.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Job kind (a configured handler, or the built-in `digest` / `noop`).
    #[arg(long)]
    pub kind: String,
    /// A handler parameter, `key=value`; the value is JSON if it parses as JSON, else a string.
    /// Repeatable.
    #[arg(long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, Value)>,
    /// The input's name when there is one file (default: the file's name).
    #[arg(long, value_name = "NAME")]
    pub input_name: Option<String>,
    /// Follow the job until it finishes, then download its results.
    #[arg(long)]
    pub wait: bool,
    /// Where `--wait` puts the results [default: ./JOB_ID].
    #[arg(long, value_name = "DIR", requires = "wait")]
    pub out: Option<PathBuf>,
}

/// `key=value` → (key, JSON value or string).
fn parse_param(text: &str) -> Result<(String, Value), String> {
    let (key, value) = text
        .split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

/// The input names: `--input-name` for a single file, else each file's name (which must be
/// distinct).
fn input_names(args: &SubmitArgs) -> Result<Vec<String>, Failure> {
    if let Some(name) = &args.input_name {
        if args.files.len() != 1 {
            return Err(Failure::Usage(
                "--input-name names the input of a single file; with several files each input \
                 is named after its file"
                    .into(),
            ));
        }
        return Ok(vec![name.clone()]);
    }
    let mut names = Vec::new();
    for file in &args.files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Failure::Usage(format!("{} names no file", file.display())))?;
        if names.contains(&name) {
            return Err(Failure::Usage(format!(
                "two inputs would be named {name:?}; give the files distinct names"
            )));
        }
        names.push(name);
    }
    Ok(names)
}

pub async fn run(ctx: &Context, args: SubmitArgs) -> Result<(), Failure> {
    let names = input_names(&args)?;
    let bars = Bars::new(ctx.json);
    let mut inputs = HashMap::new();
    let mut uploads = Vec::new();
    for (file, name) in args.files.iter().zip(&names) {
        let upload = match transfer::upload_file(&ctx.client, &ctx.server, file, &bars).await {
            Ok(upload) => upload,
            Err(failure) => {
                discard(ctx, &uploads).await;
                return Err(failure);
            }
        };
        if !ctx.json {
            eprintln!("uploaded {} as {}", file.display(), upload.id.as_str());
        }
        let id = types::UploadRef::try_from(upload.id.as_str())
            .map(types::JobInInputsValue::from)
            .map_err(|err| Failure::Request(format!("unexpected upload id: {err}")))?;
        inputs.insert(name.clone(), id);
        uploads.push(upload);
    }
    let params: Map<String, Value> = args.params.into_iter().collect();
    let request = types::JobIn::builder()
        .kind(args.kind.clone())
        .inputs(inputs)
        .params(Some(params));
    let job = match ctx.client.create_job().body(request).send().await {
        Ok(answer) => answer.into_inner(),
        Err(err) => {
            discard(ctx, &uploads).await;
            return Err(ctx.failed(err));
        }
    };
    if !args.wait {
        if ctx.json {
            print_json(&json!({"job": job, "uploads": uploads}));
        } else {
            println!("{}", job.id.as_str());
        }
        return Ok(());
    }
    if !ctx.json {
        eprintln!("created job {}", job.id.as_str());
    }
    let job = follow(ctx, job.id.as_str(), &bars).await?;
    let mut downloaded = Vec::new();
    if job.status == JobStatus::Succeeded {
        let dir = args.out.unwrap_or_else(|| PathBuf::from(job.id.as_str()));
        downloaded = super::results::download_all(ctx, job.id.as_str(), &[], &dir, &bars).await?;
    }
    if ctx.json {
        print_json(&json!({"job": job, "uploads": uploads, "results": downloaded}));
    } else {
        for file in &downloaded {
            println!("{}", file.path.display());
        }
    }
    job_outcome(&job)
}

/// Deletes the uploads made for a job that could not be created (an unknown kind, a bad
/// parameter, a later file that failed), rather than leave them to wait out the server's upload
/// TTL. Best effort: the failure being reported matters more than a failed clean-up.
async fn discard(ctx: &Context, uploads: &[types::Upload]) {
    for upload in uploads {
        let deleted = ctx
            .client
            .delete_upload()
            .id(upload.id.as_str())
            .send()
            .await;
        if deleted.is_err() && !ctx.json {
            eprintln!("could not delete upload {}", upload.id.as_str());
        }
    }
}

/// Exit status of a finished job: a failed or canceled one is a [`Failure::Job`] with the
/// job's own error.
pub fn job_outcome(job: &Job) -> Result<(), Failure> {
    let id = job.id.as_str();
    match job.status {
        JobStatus::Succeeded => Ok(()),
        JobStatus::Canceled => Err(Failure::Job(format!("job {id} was canceled"))),
        _ => Err(Failure::Job(match &job.error {
            Some(error) => format!(
                "job {id} failed: {} ({})",
                error.detail.as_str(),
                error.code
            ),
            None => format!("job {id} ended as {}", job.status),
        })),
    }
}

/// How long each long-poll asks the server to hold the request while the job is unchanged.
const LONG_POLL: &str = "wait=30";

/// Follows the job with a live bar of its progress and stage until it has finished: each
/// request long-polls (`Prefer: wait=…` with the last `ETag`), so the server answers as soon as
/// the job changes. A server that does not apply the preference is polled at the pace its
/// `Retry-After` says.
pub async fn follow(ctx: &Context, id: &str, bars: &Bars) -> Result<Job, Failure> {
    let bar = bars.job(id);
    let mut etag: Option<String> = None;
    loop {
        let mut request = ctx.client.get_job().id(id).prefer(LONG_POLL);
        if let Some(tag) = &etag {
            request = request.if_none_match(tag.as_str());
        }
        let (answer, headers) = match request.send().await {
            Ok(answer) => {
                let headers = answer.headers().clone();
                (Some(answer), headers)
            }
            // Unchanged for the whole wait (`304`): ask again.
            Err(ferry_client::Error::UnexpectedResponse(res)) if res.status().as_u16() == 304 => {
                (None, res.headers().clone())
            }
            Err(err) => return Err(ctx.failed(err)),
        };
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let long_polled = header("preference-applied").is_some();
        let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok());
        etag = header("etag").map(str::to_owned).or(etag);
        let Some(answer) = answer else {
            if !long_polled {
                pace(retry_after).await;
            }
            continue;
        };
        let job = answer.into_inner();
        if let Some(progress) = &job.progress {
            if let Some(percent) = progress.percent {
                bar.set_position(percent.clamp(0.0, 100.0) as u64);
            }
            let stage = [
                progress.stage.as_ref().map(|s| s.as_str()),
                progress.message.as_ref().map(|m| m.as_str()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(": ");
            bar.set_message(format!("{} {stage}", job.status));
        } else {
            bar.set_message(job.status.to_string());
        }
        if matches!(
            job.status,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        ) {
            bar.finish_and_clear();
            if bars.visible() {
                eprintln!("job {id} {}", job.status);
            }
            return Ok(job);
        }
        if !long_polled {
            pace(retry_after).await;
        }
    }
}

/// Waits before polling again a server that did not hold the request: what its `Retry-After`
/// says; a missing header means an unfinished job with no advice, so a modest pace.
async fn pace(retry_after: Option<u64>) {
    let wait = Duration::from_secs(retry_after.unwrap_or(1));
    tokio::time::sleep(wait.max(Duration::from_millis(200))).await;
}
