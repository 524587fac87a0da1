//! `ferry uploads ls|rm`: uploads on the server, e.g. to clean up ones no job used.

use std::num::NonZeroU64;

use clap::Subcommand;

use super::{
    Context,
    output::{Failure, print_json},
};

#[derive(Debug, Subcommand)]
pub enum UploadsCommand {
    /// List uploads that have not expired, newest first.
    Ls {
        /// Only uploads that are (true) or are not (false) the input of a job.
        #[arg(long, value_name = "BOOL")]
        attached: Option<bool>,
        /// Page size (1–200).
        #[arg(long, default_value = "50")]
        limit: NonZeroU64,
        /// The cursor printed after the previous page.
        #[arg(long, value_name = "CURSOR")]
        next: Option<String>,
    },
    /// Delete uploads that no job uses.
    Rm {
        #[arg(required = true, value_name = "UPLOAD_ID")]
        ids: Vec<String>,
    },
}

pub async fn run(ctx: &Context, command: UploadsCommand) -> Result<(), Failure> {
    match command {
        UploadsCommand::Ls {
            attached,
            limit,
            next,
        } => {
            let mut request = ctx.client.list_uploads().limit(limit);
            if let Some(attached) = attached {
                request = request.attached(attached);
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
            for upload in &page.items {
                println!(
                    "{}  {:>12}  {}  jobs:{}  {}",
                    upload.id.as_str(),
                    upload.size,
                    upload.sha256.as_str(),
                    upload.job_count,
                    upload.created_at
                );
            }
            if let Some(next) = &page.next {
                eprintln!("more: --next {}", next.as_str());
            }
        }
        UploadsCommand::Rm { ids } => {
            for id in &ids {
                ctx.client
                    .delete_upload()
                    .id(id.as_str())
                    .send()
                    .await
                    .map_err(|e| ctx.failed(e))?;
                if !ctx.json {
                    println!("upload {id} deleted");
                }
            }
            if ctx.json {
                print_json(&serde_json::json!({"deleted": ids}));
            }
        }
    }
    Ok(())
}
