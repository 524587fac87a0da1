//! Domain vocabulary shared by every layer: job statuses, event kinds, failures, the
//! validation rules for names that reach the file system or URLs, and the caps on text a handler
//! can make Ferry store. Depends on nothing else in the crate (the sea-orm derives only say how
//! statuses and kinds are stored as text).

use sea_orm::{DeriveActiveEnum, EnumIter, sea_query::StringLen};
use serde::{Deserialize, Serialize};

/// Where a job is in its life. Stored as text in `ferry_jobs.status`; the legal moves between
/// statuses are `service::lifecycle`'s to decide.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, EnumIter, DeriveActiveEnum,
)]
#[serde(rename_all = "snake_case")]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum JobStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "running")]
    Running,
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "canceled")]
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an entry of a job's event log records. Stored as text in `ferry_job_events.kind`; the
/// payload of each kind is `service::lifecycle::JobEvent`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, EnumIter, DeriveActiveEnum,
)]
#[serde(rename_all = "snake_case")]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum EventKind {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "started")]
    Started,
    #[sea_orm(string_value = "progress")]
    Progress,
    #[sea_orm(string_value = "result")]
    Result,
    #[sea_orm(string_value = "cancel_requested")]
    CancelRequested,
    #[sea_orm(string_value = "canceled")]
    Canceled,
    #[sea_orm(string_value = "retry_scheduled")]
    RetryScheduled,
    #[sea_orm(string_value = "requeued")]
    Requeued,
    #[sea_orm(string_value = "redispatched")]
    Redispatched,
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl EventKind {
    pub const ALL: [EventKind; 11] = [
        EventKind::Queued,
        EventKind::Started,
        EventKind::Progress,
        EventKind::Result,
        EventKind::CancelRequested,
        EventKind::Canceled,
        EventKind::RetryScheduled,
        EventKind::Requeued,
        EventKind::Redispatched,
        EventKind::Succeeded,
        EventKind::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Started => "started",
            EventKind::Progress => "progress",
            EventKind::Result => "result",
            EventKind::CancelRequested => "cancel_requested",
            EventKind::Canceled => "canceled",
            EventKind::RetryScheduled => "retry_scheduled",
            EventKind::Requeued => "requeued",
            EventKind::Redispatched => "redispatched",
            EventKind::Succeeded => "succeeded",
            EventKind::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The status the job has after an event of this kind: the `status` of its data, which
    /// every state change carries (always the same one per kind); `None` for progress and
    /// results.
    pub fn status(self) -> Option<JobStatus> {
        match self {
            EventKind::Queued
            | EventKind::RetryScheduled
            | EventKind::Requeued
            | EventKind::Redispatched => Some(JobStatus::Queued),
            EventKind::Started | EventKind::CancelRequested => Some(JobStatus::Running),
            EventKind::Succeeded => Some(JobStatus::Succeeded),
            EventKind::Failed => Some(JobStatus::Failed),
            EventKind::Canceled => Some(JobStatus::Canceled),
            EventKind::Progress | EventKind::Result => None,
        }
    }

    /// Whether this is a job's last event: nothing is appended after it.
    pub fn is_terminal(self) -> bool {
        self.status().is_some_and(JobStatus::is_finished)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an attempt failed, as stored on the job and shown to clients (an RFC 9457 problem with
/// Ferry's extension members).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobFailure {
    /// Stable code: `handler_error`, `handler_exit`, `timeout`, `lease_expired`,
    /// `invalid_input`, `internal`.
    pub code: String,
    pub title: String,
    pub detail: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
    /// The attempt this failure came from.
    pub attempt: i32,
}

impl JobFailure {
    /// The failure with its detail cut to [`MAX_FAILURE_DETAIL_BYTES`].
    pub fn capped(mut self) -> Self {
        cut_text(&mut self.detail, MAX_FAILURE_DETAIL_BYTES);
        self
    }
}

/// Longest progress `stage` or `message` stored, in bytes: a handler reports progress all its
/// life, and each report is shown on the job and may become an event.
pub const MAX_PROGRESS_TEXT_BYTES: usize = 1024;

/// Longest failure `detail` stored, in bytes: it is part of the job, so of every read of it and
/// of every list page that shows it.
pub const MAX_FAILURE_DETAIL_BYTES: usize = 8 << 10;

/// What a cut text ends with.
pub const CUT_MARK: char = '…';

/// Cuts `text` to at most `max` bytes (`max` ≥ 3) on a character boundary, ending it with
/// [`CUT_MARK`] when something was cut; the mark counts against `max`.
pub fn cut_text(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut cut = max.saturating_sub(CUT_MARK.len_utf8());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push(CUT_MARK);
}

/// What a worker serves and a queue carries: the kind, or `kind@version` for a kind with
/// versions.
pub fn serve_key(kind: &str, version: Option<&str>) -> String {
    match version {
        Some(version) => format!("{kind}@{version}"),
        None => kind.to_owned(),
    }
}

/// A kind as a job request names it: `segment`, or `segment@canary` (a tag) or `segment@v3`
/// (a version).
pub fn split_kind_ref(text: &str) -> (&str, Option<&str>) {
    match text.split_once('@') {
        Some((kind, name)) => (kind, Some(name)),
        None => (text, None),
    }
}

/// Kinds name handlers: they appear in URLs, queue names and logs.
pub fn validate_kind(kind: &str) -> Result<(), &'static str> {
    let ok = !kind.is_empty()
        && kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && kind.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(
            "must be 1-64 characters of letters, digits, '-', '_' or '.', starting with a \
             letter or digit",
        )
    }
}

/// Input names become file names in the handler's input folder.
pub fn validate_input_name(name: &str) -> Result<(), &'static str> {
    validate_segment(name, 128)
}

/// Result names are relative paths inside the handler's output folder: `/`-separated segments of
/// safe characters, never `.`/`..`, never absolute. This is what stops path tricks on both the
/// worker side (reading the file) and the API side (the URL).
pub fn validate_result_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("must be 1-255 characters");
    }
    for segment in name.split('/') {
        validate_segment(segment, 255)?;
    }
    Ok(())
}

fn validate_segment(segment: &str, max: usize) -> Result<(), &'static str> {
    if segment.is_empty() || segment.len() > max {
        return Err("must not be empty or too long");
    }
    if segment == "." || segment == ".." {
        return Err("must not be '.' or '..'");
    }
    if !segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_names_reject_path_tricks() {
        for bad in [
            "",
            "../x",
            "a/../b",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a\\b",
            "a b",
            "ä",
        ] {
            assert!(validate_result_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["report.json", "masks/slice-001.png", "a_b-c.d"] {
            assert!(validate_result_name(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn cut_text_keeps_whole_characters_within_the_limit() {
        let mut short = "fits".to_owned();
        cut_text(&mut short, 4);
        assert_eq!(short, "fits");
        let mut long = "ééééé".to_owned(); // 10 bytes
        cut_text(&mut long, 8);
        assert_eq!(long, "éé…");
        assert!(long.len() <= 8);
        let mut ascii = "x".repeat(100);
        cut_text(&mut ascii, 10);
        assert_eq!(ascii, format!("{}…", "x".repeat(7)));
    }

    #[test]
    fn kinds_are_url_safe() {
        assert!(validate_kind("segment").is_ok());
        assert!(validate_kind("ct.lung-v2").is_ok());
        assert!(validate_kind("-x").is_err());
        assert!(validate_kind("a/b").is_err());
        assert!(validate_kind("").is_err());
    }
}
