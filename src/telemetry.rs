//! Tracing set-up: human-readable logs on stderr, filtered by `RUST_LOG` (default `info`).
//! Every log line about a job carries its id through the `job` span opened by the worker and the
//! `job_id` fields of the service layer.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn,apalis=warn"));
    // A second init (tests that start several apps in one process) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
