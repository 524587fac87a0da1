//! `ferry` as a client of a Ferry server: `submit`, `jobs`, `results`, `uploads`, `kinds` and
//! `tag`, built on
//! the generated [`ferry_client`]. Each command lives in its own module; [`settings`] finds the
//! server and key, [`output`] owns what is printed and the exit codes, [`transfer`] moves bytes.

pub mod jobs;
pub mod kinds;
pub mod output;
pub mod results;
pub mod settings;
pub mod submit;
pub mod transfer;
pub mod uploads;

use std::process::ExitCode;

use clap::Subcommand;
use ferry_client::types::Problem;

use self::{output::Failure, settings::Connection};

/// Exit codes of the client commands, shown in their `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 done; 1 the job failed or was canceled; 2 usage \
                              (bad flags, configuration or input file); 3 a request failed \
                              (server unreachable, an error answer, a digest mismatch).";

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload files, create a job on them, and with --wait follow it and download its results.
    #[command(after_help = EXIT_CODES)]
    Submit {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: submit::SubmitArgs,
    },
    /// List, show, cancel and delete jobs; read their logs and events.
    #[command(after_help = EXIT_CODES, subcommand_required = true)]
    Jobs {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// List and download a job's results.
    #[command(after_help = EXIT_CODES, subcommand_required = true)]
    Results {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: results::ResultsCommand,
    },
    /// List and delete uploads.
    #[command(after_help = EXIT_CODES, subcommand_required = true)]
    Uploads {
        #[command(flatten)]
        conn: Connection,
        #[command(subcommand)]
        command: uploads::UploadsCommand,
    },
    /// List the kinds served: their versions, tags and live workers.
    #[command(after_help = EXIT_CODES)]
    Kinds {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: kinds::KindsArgs,
    },
    /// Point a kind's tag at a version (deploy it), e.g. `ferry tag segment production v4`;
    /// jobs created afterwards follow it. Needs a key with scope kinds:write.
    #[command(after_help = EXIT_CODES)]
    Tag {
        #[command(flatten)]
        conn: Connection,
        #[command(flatten)]
        args: kinds::TagArgs,
    },
}

/// What every client command works with.
pub struct Context {
    pub client: ferry_client::Client,
    /// The server's URL, for messages.
    pub server: String,
    pub json: bool,
}

impl Context {
    /// A failed request as a [`Failure`].
    pub fn failed(&self, err: ferry_client::Error<Problem>) -> Failure {
        Failure::request(&self.server, err)
    }
}

/// Runs a client command on its own runtime; failures are one sentence on stderr.
pub fn run(command: ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("ferry: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ferry: {}", failure.message());
            failure.exit_code()
        }
    }
}

async fn dispatch(command: ClientCommand) -> Result<(), Failure> {
    let conn = match &command {
        ClientCommand::Submit { conn, .. }
        | ClientCommand::Jobs { conn, .. }
        | ClientCommand::Results { conn, .. }
        | ClientCommand::Uploads { conn, .. }
        | ClientCommand::Kinds { conn, .. }
        | ClientCommand::Tag { conn, .. } => conn.clone(),
    };
    let settings = settings::ClientSettings::load(&conn)?;
    let ctx = Context {
        client: settings.client()?,
        server: settings.server.clone(),
        json: conn.json,
    };
    match command {
        ClientCommand::Submit { args, .. } => submit::run(&ctx, args).await,
        ClientCommand::Jobs { command, .. } => jobs::run(&ctx, command).await,
        ClientCommand::Results { command, .. } => results::run(&ctx, command).await,
        ClientCommand::Uploads { command, .. } => uploads::run(&ctx, command).await,
        ClientCommand::Kinds { args, .. } => kinds::kinds(&ctx, args).await,
        ClientCommand::Tag { args, .. } => kinds::tag(&ctx, args).await,
    }
}
