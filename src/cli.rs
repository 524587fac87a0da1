//! Command-line interface. Flags override `FERRY_*` environment variables, which override the
//! optional `ferry.toml` (see [`crate::config`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Delayed online inference on large inputs: upload, queue, run, poll for results.",
    long_about = "Ferry accepts large uploads, queues jobs durably, runs them on workers \
                  (external commands or built-in handlers) and serves progress, intermediate and \
                  final results over HTTP.\n\nSettings come from an optional TOML file (--config), \
                  then FERRY_* environment variables, then these flags.\n\nThe client commands \
                  (submit, jobs, results, uploads) talk to a running server; see their --help."
)]
pub struct Cli {
    /// TOML configuration file. Without it, ./ferry.toml is read when present.
    #[arg(long, short = 'c', global = true, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log lines on stderr as `text` (the default) or `json` (one object per line, for log
    /// shippers); also the `log_format` setting and FERRY_LOG_FORMAT.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API, with embedded workers unless --no-workers is given.
    Serve {
        #[command(flatten)]
        common: CommonArgs,
        /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port).
        #[arg(long)]
        listen: Option<String>,
        /// Serve the API only; run workers elsewhere with `ferry worker`.
        #[arg(long)]
        no_workers: bool,
    },
    /// Run workers only, against the same database and blob store as the API.
    Worker {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Client commands, talking to a running server over HTTP.
    #[command(flatten)]
    Client(crate::client_cli::ClientCommand),
}

/// Settings shared by every command.
#[derive(Debug, Args, Default, Clone)]
pub struct CommonArgs {
    /// Folder for the SQLite file, the local blob store and handler work folders.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Database URL: sqlite://path/to/ferry.db (default: <data-dir>/ferry.db) or
    /// postgres://user:password@host/db for scale-out.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Blob store: a local folder path or file:// URL (default: <data-dir>/blobs), or an object
    /// storage URL such as s3://bucket/prefix (configured by AWS_* variables).
    #[arg(long)]
    pub blob_store: Option<String>,
}

impl Command {
    /// The server settings given on the command line; none for client commands, which do not
    /// read the server's settings.
    pub fn common(&self) -> Option<&CommonArgs> {
        match self {
            Command::Serve { common, .. }
            | Command::Worker { common }
            | Command::Migrate { common } => Some(common),
            Command::Client(_) => None,
        }
    }
}
