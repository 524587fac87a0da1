//! `ferry results ls|get`: a job's published results, listed or downloaded with their SHA-256
//! checked.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Serialize;

use super::{
    Context,
    output::{Bars, Failure, print_json},
    transfer,
};

#[derive(Debug, Subcommand)]
pub enum ResultsCommand {
    /// List a job's results.
    Ls {
        #[arg(value_name = "JOB_ID")]
        job: String,
    },
    /// Download a job's results (all of them, or those named) into a folder.
    Get {
        #[arg(value_name = "JOB_ID")]
        job: String,
        /// Result names to download (default: every result).
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Folder to write them into [default: ./JOB_ID].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

/// A result written to disk, as `--json` reports it.
#[derive(Debug, Serialize)]
pub struct Downloaded {
    pub name: String,
    pub path: PathBuf,
    pub size: i64,
    pub sha256: String,
}

pub async fn run(ctx: &Context, command: ResultsCommand) -> Result<(), Failure> {
    match command {
        ResultsCommand::Ls { job } => {
            let list = ctx
                .client
                .list_job_results()
                .id(job.as_str())
                .send()
                .await
                .map_err(|err| ctx.failed(err))?
                .into_inner();
            if ctx.json {
                print_json(&list);
                return Ok(());
            }
            for result in &list.items {
                println!(
                    "{:<40} {:>12} {:<5} {}",
                    result.name.as_str(),
                    result.size,
                    if result.final_ { "final" } else { "-" },
                    result.sha256.as_str()
                );
            }
            Ok(())
        }
        ResultsCommand::Get { job, names, out } => {
            let dir = out.unwrap_or_else(|| PathBuf::from(&job));
            let files = download_all(ctx, &job, &names, &dir, &Bars::new(ctx.json)).await?;
            if ctx.json {
                print_json(&files);
            } else {
                for file in &files {
                    println!("{}", file.path.display());
                }
            }
            Ok(())
        }
    }
}

/// Downloads the job's results named in `names` (all when empty) into `dir`.
pub async fn download_all(
    ctx: &Context,
    job: &str,
    names: &[String],
    dir: &Path,
    bars: &Bars,
) -> Result<Vec<Downloaded>, Failure> {
    let list = ctx
        .client
        .list_job_results()
        .id(job)
        .send()
        .await
        .map_err(|err| ctx.failed(err))?
        .into_inner();
    if let Some(missing) = names
        .iter()
        .find(|name| !list.items.iter().any(|r| r.name.as_str() == name.as_str()))
    {
        return Err(Failure::Usage(format!(
            "job {job} has no result {missing:?}"
        )));
    }
    let mut files = Vec::new();
    for result in list
        .items
        .iter()
        .filter(|r| names.is_empty() || names.iter().any(|n| n == r.name.as_str()))
    {
        let path =
            transfer::download_result(&ctx.client, &ctx.server, job, result, dir, bars).await?;
        files.push(Downloaded {
            name: result.name.to_string(),
            path,
            size: result.size,
            sha256: result.sha256.to_string(),
        });
    }
    Ok(files)
}
