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
        /// Serve without API keys on a non-loopback address while no key exists: anyone who
        /// can reach it can read and delete every job. Without it, such a server refuses to
        /// start (create a key first with `ferry keys create`).
        #[arg(long)]
        insecure_no_auth: bool,
    },
    /// Run workers only, against the same database and blob store as the API.
    Worker {
        #[command(flatten)]
        common: CommonArgs,
        /// Serve `GET /metrics` (and `/healthz`) for Prometheus on this address, e.g.
        /// 0.0.0.0:9464 (`metrics_listen`).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Manage API keys, in the database directly (no server needed): how the first key of a
    /// tenant is made.
    Keys {
        #[command(flatten)]
        common: CommonArgs,
        #[command(subcommand)]
        action: KeysCommand,
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
            | Command::Worker { common, .. }
            | Command::Migrate { common }
            | Command::Keys { common, .. } => Some(common),
            Command::Client(_) => None,
        }
    }
}

/// `ferry keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a key. Prints the key itself (once: only its digest is stored) on stdout, and what
    /// it is on stderr, so that `KEY=$(ferry keys create …)` keeps just the key.
    Create {
        /// The tenant the key acts for: 1-63 of a-z, 0-9, '_' and '-'.
        #[arg(long, default_value = crate::tenancy::DEFAULT_TENANT)]
        tenant: String,
        /// Who or what uses the key (shown in lists).
        #[arg(long)]
        name: String,
        /// A scope: jobs:read, jobs:write, results:read or admin; repeat for several. Default:
        /// jobs:read, jobs:write and results:read.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The key stops working after this long (e.g. 90d, 12h); default: never.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<std::time::Duration>,
    },
    /// List keys (never the keys themselves), newest first.
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revoke a key: every server refuses it within a second.
    Revoke {
        /// The key's id (key_…).
        id: String,
    },
}
