//! The `Handler` trait every way of running a model implements (external command, built-ins, or
//! your own Rust code), and the [`JobContext`] a handler uses to read inputs, report progress,
//! log, and publish results.

use std::{
    collections::{HashSet, VecDeque},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{StreamExt, stream::BoxStream};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    blobs::BlobError,
    config::Limits,
    domain::cut_text,
    ids::JobId,
    service::{
        Services,
        attempts::{Lease, ProgressReport, PublishError},
    },
    storage::entities::job_input,
    workspace::{AttemptDir, Owner, outputs::OutputError},
};

/// Log lines buffered between flushes; older ones are dropped first if a handler floods.
const MAX_BUFFERED_LOG_LINES: usize = 2000;

/// A handler's failure.
#[derive(Clone, Debug, PartialEq)]
pub struct HandlerError {
    pub code: String,
    pub message: String,
    /// Whether another attempt could succeed (a crash may be transient; bad input is not).
    pub retryable: bool,
}

impl HandlerError {
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }

    pub fn canceled() -> Self {
        Self::permanent("canceled", "the attempt was stopped")
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Runs one attempt of a job. Implementations must return soon after `ctx.cancel` fires.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    async fn run(&self, ctx: &JobContext) -> Result<(), HandlerError>;
}

/// Progress and log lines waiting to be written; the attempt's flusher (`worker::flush`) writes
/// them a few times a second, so a chatty handler costs a bounded number of database writes.
/// Bounded in memory too: the latest progress report only, and log lines already cut, at most
/// [`MAX_BUFFERED_LOG_LINES`] of them and no more than the job may store (the oldest go first).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub progress: Option<ProgressReport>,
    logs: VecDeque<String>,
    /// What `logs` count against the job's log cap ([`Limits::log_line_cost`]).
    logs_cost: u64,
}

impl Pending {
    /// Buffers a log line, cut to `caps.line_bytes`.
    pub fn push_log(&mut self, mut line: String, caps: LogCaps) {
        cut_text(&mut line, caps.line_bytes);
        self.logs_cost += Limits::log_line_cost(line.len());
        self.logs.push_back(line);
        while self.logs.len() > MAX_BUFFERED_LOG_LINES || self.logs_cost > caps.job_bytes {
            let Some(oldest) = self.logs.pop_front() else {
                break;
            };
            self.logs_cost -= Limits::log_line_cost(oldest.len());
        }
    }

    /// The buffered log lines, oldest first, leaving the buffer empty.
    pub fn take_logs(&mut self) -> Vec<String> {
        self.logs_cost = 0;
        self.logs.drain(..).collect()
    }
}

/// The caps a log line meets before it is buffered (`limits.max_log_line_bytes`,
/// `limits.max_log_bytes_per_job`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct LogCaps {
    pub line_bytes: usize,
    pub job_bytes: u64,
}

impl LogCaps {
    pub fn of(limits: &Limits) -> Self {
        Self {
            line_bytes: limits.max_log_line_bytes,
            job_bytes: limits.max_log_bytes_per_job,
        }
    }
}

pub struct JobContext {
    pub job_id: JobId,
    pub kind: String,
    /// The version of the kind the job runs (`None`: a kind without versions).
    pub version: Option<String>,
    pub attempt: i32,
    pub params: serde_json::Value,
    pub inputs: Vec<job_input::Model>,
    /// Fires on cancel, timeout, lost lease or shutdown.
    pub cancel: CancellationToken,
    /// How long a command gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    pub(crate) services: Services,
    pub(crate) lease: Lease,
    pub(crate) pending: Arc<Mutex<Pending>>,
    pub(crate) published: Mutex<HashSet<String>>,
    pub(crate) folder: WorkFolder,
}

/// An attempt's private work folder, made the first time something asks for it, so that a Rust
/// handler that needs none (`noop`) costs none. A folder is three `mkdir`s and a removal per
/// attempt: inodes allocated and freed each time. On this project's machines (ext4 without a
/// journal, which scans recently freed inodes on every allocation) inode allocation, for these
/// folders and for the uploads' files, took a quarter of the server's CPU for no-op jobs
/// (`perf`, see the README's benchmarks). A handler abandoned after its attempt ended may still
/// make its folder late: the workers' sweep removes folders of attempts no longer running.
pub(crate) struct WorkFolder {
    owner: Arc<Owner>,
    job: Uuid,
    attempt: i32,
    made: tokio::sync::OnceCell<Arc<AttemptDir>>,
}

impl WorkFolder {
    pub(crate) fn new(owner: Arc<Owner>, job: Uuid, attempt: i32) -> Self {
        Self {
            owner,
            job,
            attempt,
            made: tokio::sync::OnceCell::new(),
        }
    }

    /// The folder, made now if it was not yet.
    async fn get(&self) -> Result<&Arc<AttemptDir>, HandlerError> {
        self.made
            .get_or_try_init(|| async {
                let (owner, job, attempt) = (self.owner.clone(), self.job, self.attempt);
                match tokio::task::spawn_blocking(move || owner.create_attempt(job, attempt)).await
                {
                    Ok(Ok(folder)) => Ok(Arc::new(folder)),
                    Ok(Err(err)) => Err(HandlerError::retryable(
                        "workspace",
                        format!("cannot create the attempt's work folder: {err}"),
                    )),
                    Err(err) => Err(HandlerError::retryable("workspace", err.to_string())),
                }
            })
            .await
    }

    /// The folder, if it was made.
    pub(crate) fn made(&self) -> Option<Arc<AttemptDir>> {
        self.made.get().cloned()
    }
}

impl JobContext {
    /// Reports progress: `percent` is clamped to 0–100, `stage` and `message` are cut to 1 KiB.
    /// Only the latest report between flushes is written; the job shows it, and its event log
    /// gets a coalesced few (see `limits.progress_event_interval`).
    pub fn progress(&self, percent: Option<f64>, stage: Option<String>, message: Option<String>) {
        let report = ProgressReport {
            percent,
            stage,
            message,
        };
        self.pending.lock().expect("pending lock").progress = Some(report.capped());
    }

    /// Logs a line, cut to `limits.max_log_line_bytes`. The job keeps its newest lines within
    /// `limits.max_log_bytes_per_job`.
    pub fn log(&self, line: impl Into<String>) {
        let caps = self.log_caps();
        self.pending
            .lock()
            .expect("pending lock")
            .push_log(line.into(), caps);
    }

    pub(crate) fn log_caps(&self) -> LogCaps {
        LogCaps::of(&self.services.settings.limits)
    }

    /// This attempt's private work folder (fresh, unguessable, mode 0700), made on first use
    /// and removed after the attempt.
    pub async fn work_dir(&self) -> Result<PathBuf, HandlerError> {
        Ok(self.folder.get().await?.path.clone())
    }

    /// Files left here when the handler succeeds become final results. Only regular files with
    /// one link are published; links are never followed. In the work folder (made on first use).
    pub async fn output_dir(&self) -> Result<PathBuf, HandlerError> {
        Ok(self.folder.get().await?.outputs.clone())
    }

    /// Publishes `output_dir/relative` as a result named `relative`, now. It must be a regular
    /// file with one link, reached without following a link (see `workspace::outputs`).
    pub async fn publish(
        &self,
        relative: &str,
        content_type: Option<&str>,
        is_final: bool,
    ) -> Result<(), HandlerError> {
        let file = {
            let workspace = self.folder.get().await?.clone();
            let name = relative.to_owned();
            tokio::task::spawn_blocking(move || workspace.open_output(&name))
                .await
                .map_err(|e| HandlerError::retryable("workspace", e.to_string()))?
                .map_err(output_error)?
        };
        let content_type = content_type
            .map(str::to_owned)
            .unwrap_or_else(|| guess_content_type(relative).to_owned());
        match self
            .services
            .publish_result(&self.lease, relative, file, &content_type, is_final)
            .await
        {
            Ok(row) => {
                self.published
                    .lock()
                    .expect("published lock")
                    .insert(relative.to_owned());
                tracing::info!(result = %relative, size = row.size, is_final, "result published");
                Ok(())
            }
            Err(PublishError::InvalidName(msg)) => {
                Err(HandlerError::permanent("invalid_result", msg))
            }
            Err(PublishError::LeaseLost) => {
                self.cancel.cancel();
                Err(HandlerError::retryable(
                    "lease_lost",
                    "this worker lost the job's lease",
                ))
            }
            Err(PublishError::Service(err)) => Err(HandlerError::retryable(
                "publish_failed",
                format!("could not store result {relative:?}: {}", err.detail),
            )),
        }
    }

    pub fn is_published(&self, name: &str) -> bool {
        self.published
            .lock()
            .expect("published lock")
            .contains(name)
    }

    /// Streams an input's bytes straight from the blob store.
    pub async fn open_input(
        &self,
        input: &job_input::Model,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, HandlerError> {
        self.services
            .blobs
            .get(
                &object_store::path::Path::from(input.blob_key.as_str()),
                None,
            )
            .await
            .map(|s| s.boxed())
            .map_err(|e| {
                HandlerError::retryable("input_unavailable", format!("input {:?}: {e}", input.name))
            })
    }

    /// Copies every input into a new file `dir/<name>` (for handlers that need files); an item
    /// of a list input goes into its list's folder, `dir/<list>/<file>`. A file (or link)
    /// already there is an error, never written through. Returns the manifest of what is where
    /// (see [`input_manifest`]).
    pub async fn materialize_inputs(
        &self,
        dir: &std::path::Path,
    ) -> Result<serde_json::Value, HandlerError> {
        let workspace = |what: String| HandlerError::retryable("workspace", what);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| workspace(format!("cannot create {}: {e}", dir.display())))?;
        let mut folders = std::collections::HashSet::new();
        for input in &self.inputs {
            // Names were checked when the job was created; checked again before they become
            // paths, so that no row can make a handler's input land outside its folder.
            let segments: Vec<&str> = input.name.split('/').collect();
            let valid = segments.len() <= 2
                && segments
                    .iter()
                    .all(|s| crate::domain::validate_input_name(s).is_ok());
            if !valid {
                return Err(HandlerError::permanent(
                    "invalid_input",
                    format!("input path {:?} is not a safe file name", input.name),
                ));
            }
            if let [folder, _] = segments.as_slice()
                && folders.insert(*folder)
            {
                let path = dir.join(folder);
                tokio::fs::create_dir(&path)
                    .await
                    .map_err(|e| workspace(format!("cannot create {}: {e}", path.display())))?;
            }
            self.services
                .blobs
                .copy_to_file(
                    &object_store::path::Path::from(input.blob_key.as_str()),
                    &dir.join(&input.name),
                )
                .await
                .map_err(|e| {
                    HandlerError::retryable(
                        "input_unavailable",
                        format!("input {:?}: {e}", input.name),
                    )
                })?;
        }
        Ok(input_manifest(&self.inputs))
    }
}

/// Where each input is under the input folder, in the job's order: `{"scan": "scan",
/// "series": ["series/IM-0001.dcm", …]}`, a list input's files in the list's order (which their
/// names need not sort in). Command handlers find it in `$FERRY_INPUT_MANIFEST`.
pub fn input_manifest(inputs: &[job_input::Model]) -> serde_json::Value {
    let mut manifest = serde_json::Map::new();
    for input in inputs {
        let file = serde_json::Value::String(input.name.clone());
        match &input.input {
            None => {
                manifest.insert(input.name.clone(), file);
            }
            Some(list) => {
                let entry = manifest
                    .entry(list.clone())
                    .or_insert_with(|| serde_json::Value::Array(Vec::new()));
                if let serde_json::Value::Array(files) = entry {
                    files.push(file);
                }
            }
        }
    }
    serde_json::Value::Object(manifest)
}

/// A refused output is the handler's fault (permanent); failing to read it is not.
pub(crate) fn output_error(err: OutputError) -> HandlerError {
    match err {
        OutputError::Refused(msg) => HandlerError::permanent("invalid_result", msg),
        OutputError::Io(err) => HandlerError::retryable("workspace", err.to_string()),
    }
}

/// A content type from a file name's extension; `application/octet-stream` when unknown.
pub fn guess_content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "json" => "application/json",
        "txt" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gz" => "application/gzip",
        "dcm" => "application/dicom",
        "html" => "text/html; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_log_lines_are_cut_and_bounded_by_count_and_by_the_jobs_cap() {
        let caps = LogCaps {
            line_bytes: 100,
            job_bytes: 10_000,
        };
        let mut pending = Pending::default();
        pending.push_log("x".repeat(1 << 20), caps);
        assert_eq!(pending.logs[0].len(), 100, "cut to the line cap");
        assert!(pending.logs[0].ends_with('…'));
        for i in 0..1000 {
            pending.push_log(format!("{i:04} {}", "y".repeat(90)), caps);
        }
        let lines = pending.take_logs();
        let cost: u64 = lines.iter().map(|l| Limits::log_line_cost(l.len())).sum();
        assert!(cost <= caps.job_bytes, "{cost}");
        assert!(
            lines.last().unwrap().starts_with("0999 "),
            "the newest are kept"
        );
        assert!(pending.take_logs().is_empty());

        let mut pending = Pending::default();
        let roomy = LogCaps {
            line_bytes: 100,
            job_bytes: 1 << 30,
        };
        for _ in 0..(MAX_BUFFERED_LOG_LINES + 10) {
            pending.push_log(String::new(), roomy);
        }
        assert_eq!(pending.take_logs().len(), MAX_BUFFERED_LOG_LINES);
    }
}
