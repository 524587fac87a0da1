//! Tracing set-up: log lines on stderr, filtered by `RUST_LOG` (default `info`), as text for
//! people (coloured only when stderr is a terminal) or as one JSON object per line for log
//! shippers (`log_format`). Every log line about a job carries its id through the `job` span
//! opened by the worker and the `job_id` fields of the service layer.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written (`log_format`, `FERRY_LOG_FORMAT`, `--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`, the event's fields,
    /// and the spans it happened in (`span`, `spans`).
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,apalis=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that start several apps in one process) is harmless: keep the first.
    let _ = match format {
        // Escape codes only mean something to a terminal; in a file or a pipe they are noise.
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // The message next to the other fields, not nested in `fields`: what shippers expect.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
