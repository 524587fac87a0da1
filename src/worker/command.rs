//! The external-command handler: runs any program (Python, R, a shell script…) under the
//! protocol documented in the README.
//!
//! The child runs in its own process group so cancel and timeout reach everything it started:
//! SIGTERM to the group, SIGKILL after the grace period, and SIGKILL to any stragglers once the
//! main process has exited — in the group or not: processes that started their own session are
//! found by the attempt's `FERRY_*` variables (`workspace::procs`). A guard does the same if
//! the attempt ends any other way (an error, or abandoned).
//!
//! Its output is read as lines of bounded length ([`CappedLines`]): stderr lines are cut like
//! log lines, stdout lines to the longest protocol message; whatever a line's length or bytes,
//! reading goes on.

use std::{collections::BTreeMap, collections::VecDeque, process::Stdio, time::Duration};

use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use serde::Deserialize;
use tokio::process::Command;
use tokio_util::codec::{Decoder, FramedRead};

use super::handler::{Handler, HandlerError, JobContext};
use crate::{
    domain::{CUT_MARK, MAX_FAILURE_DETAIL_BYTES},
    telemetry,
    workspace::procs,
};

/// Longest stdout line read whole: a protocol message must fit (longer lines are logged, cut).
const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// How many of stderr's last lines are quoted in the error of a failed attempt (the quote is
/// also cut to fit [`MAX_FAILURE_DETAIL_BYTES`], keeping its end).
const STDERR_TAIL_LINES: usize = 20;

#[derive(Clone, Debug)]
pub struct CommandHandler {
    pub program: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Where the command runs (relative paths in `program` resolve from here).
    pub working_dir: Option<std::path::PathBuf>,
}

/// One protocol message: a JSON object on its own stdout line.
#[derive(Debug, Default, Deserialize)]
struct Message {
    progress: Option<f64>,
    stage: Option<String>,
    message: Option<String>,
    result: Option<String>,
    content_type: Option<String>,
    #[serde(rename = "final")]
    is_final: Option<bool>,
    error: Option<String>,
    retryable: Option<bool>,
}

/// Kills everything the attempt started when dropped, if [`GroupGuard::kill_all`] did not.
struct GroupGuard {
    pgid: Option<Pid>,
    job: uuid::Uuid,
    /// The attempt's work folder name, which its processes' `FERRY_INPUT_DIR` ends with.
    folder: String,
    done: bool,
}

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH (group already gone) is the expected answer after a clean exit.
            let _ = killpg(pgid, sig);
        }
    }

    /// SIGKILL to the group, then to the attempt's processes that left it (a daemon in its own
    /// session); waits for the search, so nothing of the attempt outlives its settling.
    async fn kill_all(&mut self) {
        self.signal(Signal::SIGKILL);
        let (job, folder) = (self.job, self.folder.clone());
        let _ = tokio::task::spawn_blocking(move || kill_strays(job, &folder)).await;
        self.done = true;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        self.signal(Signal::SIGKILL);
        let (job, folder) = (self.job, std::mem::take(&mut self.folder));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || kill_strays(job, &folder));
        } else {
            kill_strays(job, &folder);
        }
    }
}

fn kill_strays(job: uuid::Uuid, folder: &str) {
    procs::kill(procs::Whose::Attempt { job, folder });
}

#[async_trait::async_trait]
impl Handler for CommandHandler {
    async fn run(&self, ctx: &JobContext) -> Result<(), HandlerError> {
        let (work_dir, output_dir) = (ctx.work_dir().await?, ctx.output_dir().await?);
        let input_dir = work_dir.join("inputs");
        let manifest = ctx.materialize_inputs(&input_dir).await?;
        // Beside the input folder, not in it: a list input's folder holds its files only.
        let manifest_path = work_dir.join("inputs.json");
        tokio::fs::write(&manifest_path, manifest.to_string())
            .await
            .map_err(|e| {
                HandlerError::retryable("workspace", format!("cannot write the manifest: {e}"))
            })?;
        let (program, args) = self
            .program
            .split_first()
            .ok_or_else(|| HandlerError::permanent("misconfigured", "empty command"))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(&self.env)
            .env("FERRY_JOB_ID", ctx.job_id.to_string())
            .env("FERRY_KIND", &ctx.kind)
            .env("FERRY_VERSION", ctx.version.as_deref().unwrap_or(""))
            .env("FERRY_ATTEMPT", ctx.attempt.to_string())
            .env("FERRY_INPUT_DIR", &input_dir)
            .env("FERRY_INPUT_MANIFEST", &manifest_path)
            .env("FERRY_OUTPUT_DIR", &output_dir)
            .env("FERRY_PARAMS", ctx.params.to_string())
            .current_dir(self.working_dir.as_deref().unwrap_or(&work_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // With traces on, the model's own code can continue the attempt's trace: OpenTelemetry's
        // carrier for a process is `TRACEPARENT` in its environment (this runs in the attempt's
        // span, so the model's spans become the attempt's children).
        if let Some(traceparent) = telemetry::current_traceparent() {
            cmd.env("TRACEPARENT", traceparent);
        }
        // If this worker process dies (even by SIGKILL), the kernel kills the command too, so a
        // crashed worker leaves no model running unsupervised. This covers the direct child
        // only; what it started is killed by the next worker to start on this machine, or by a
        // running one's sweep (see `workspace`).
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            HandlerError::permanent("handler_spawn", format!("cannot start {program:?}: {e}"))
        })?;
        let mut guard = GroupGuard {
            pgid: child.id().map(|id| Pid::from_raw(id as i32)),
            job: ctx.job_id.0,
            folder: work_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            done: false,
        };
        ctx.log(format!(
            "started {program} (pid {})",
            child.id().unwrap_or(0)
        ));

        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut out_lines = FramedRead::new(stdout, CappedLines::new(MAX_MESSAGE_BYTES));
        let stderr_task = {
            let pending = ctx.pending.clone();
            let caps = ctx.log_caps();
            tokio::spawn(async move {
                let mut lines = FramedRead::new(stderr, CappedLines::new(caps.line_bytes));
                let mut tail = VecDeque::new();
                // Ends at end of file, or if the pipe cannot be read (an I/O error).
                while let Some(Ok(line)) = lines.next().await {
                    let line = line.into_text();
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.clone());
                    pending
                        .lock()
                        .expect("pending lock")
                        .push_log(format!("[stderr] {line}"), caps);
                }
                Vec::from(tail).join("\n")
            })
        };

        let mut declared: Option<HandlerError> = None;
        let mut stdout_open = true;
        let status = loop {
            tokio::select! {
                line = out_lines.next(), if stdout_open => match line {
                    Some(Ok(line)) => {
                        if let Some(err) = self.on_stdout_line(ctx, line).await? {
                            declared = Some(err);
                        }
                    }
                    Some(Err(err)) => {
                        ctx.log(format!("cannot read the command's stdout: {err}"));
                        stdout_open = false;
                    }
                    None => stdout_open = false,
                },
                status = child.wait() => break status,
                _ = ctx.cancel.cancelled() => {
                    guard.signal(Signal::SIGTERM);
                    let exited = tokio::time::timeout(ctx.kill_grace, child.wait()).await;
                    if exited.is_err() {
                        ctx.log("handler ignored SIGTERM; sending SIGKILL");
                        guard.signal(Signal::SIGKILL);
                        let _ = child.wait().await;
                    }
                    guard.kill_all().await;
                    return Err(HandlerError::canceled());
                }
            }
        };
        // Anything the main process left running goes too, in its group or not.
        guard.kill_all().await;
        // Drain what it printed before exiting.
        while stdout_open {
            match tokio::time::timeout(Duration::from_secs(5), out_lines.next()).await {
                Ok(Some(Ok(line))) => {
                    if let Some(err) = self.on_stdout_line(ctx, line).await? {
                        declared = Some(err);
                    }
                }
                Ok(Some(Err(_)) | None) | Err(_) => stdout_open = false,
            }
        }
        let stderr_tail = tokio::time::timeout(Duration::from_secs(5), stderr_task)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let status = status.map_err(|e| {
            HandlerError::retryable(
                "handler_exit",
                format!("waiting for the command failed: {e}"),
            )
        })?;
        if let Some(err) = declared {
            return Err(err);
        }
        if status.success() {
            return Ok(());
        }
        let how = match (
            status.code(),
            std::os::unix::process::ExitStatusExt::signal(&status),
        ) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => "ended abnormally".to_owned(),
        };
        let detail = if stderr_tail.is_empty() {
            format!("the command {how}")
        } else {
            let quoting = format!("the command {how}; stderr ends with:\n");
            let room = MAX_FAILURE_DETAIL_BYTES.saturating_sub(quoting.len());
            format!("{quoting}{}", keep_end(stderr_tail, room))
        };
        Err(HandlerError::retryable("handler_exit", detail))
    }
}

impl CommandHandler {
    /// Handles one stdout line; returns a declared error if the line was one.
    async fn on_stdout_line(
        &self,
        ctx: &JobContext,
        line: Line,
    ) -> Result<Option<HandlerError>, HandlerError> {
        // A cut line is no message (its JSON is incomplete): it is logged.
        if line.cut {
            ctx.log(line.into_text());
            return Ok(None);
        }
        let line = line.text;
        let trimmed = line.trim();
        let msg = if trimmed.starts_with('{') {
            serde_json::from_str::<Message>(trimmed).ok()
        } else {
            None
        };
        let Some(msg) = msg else {
            ctx.log(line);
            return Ok(None);
        };
        if let Some(err) = msg.error {
            let retryable = msg.retryable.unwrap_or(false);
            ctx.log(format!("[error] {err}"));
            return Ok(Some(HandlerError {
                code: "handler_error".into(),
                message: err,
                retryable,
            }));
        }
        if let Some(path) = msg.result {
            // A bad result path is the handler's bug: fail the attempt permanently.
            ctx.publish(
                &path,
                msg.content_type.as_deref(),
                msg.is_final.unwrap_or(false),
            )
            .await?;
            return Ok(None);
        }
        if msg.progress.is_some() || msg.stage.is_some() || msg.message.is_some() {
            ctx.progress(msg.progress, msg.stage, msg.message);
            return Ok(None);
        }
        ctx.log(line);
        Ok(None)
    }
}

/// The end of `text` within `max` bytes (on a character boundary), starting with `…` when
/// something was dropped; the mark counts against `max`.
fn keep_end(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max.saturating_sub(CUT_MARK.len_utf8());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{CUT_MARK}{}", &text[start..])
}

/// One line of a command's output: at most the decoder's `max` bytes of it.
#[derive(Debug, PartialEq)]
struct Line {
    text: String,
    /// The line was longer; the rest was dropped.
    cut: bool,
}

impl Line {
    /// The text, ending with `…` if the line was cut.
    fn into_text(self) -> String {
        let mut text = self.text;
        if self.cut {
            text.push(CUT_MARK);
        }
        text
    }
}

/// Splits a pipe's bytes into lines, keeping at most `max` bytes of each: the rest of a longer
/// line is read and dropped, so memory stays bounded however long a line is, and reading goes
/// on (a reader that stopped would leave the command blocked on a full pipe). Bytes that are not
/// UTF-8 are replaced, never an error.
struct CappedLines {
    max: usize,
    line: Vec<u8>,
    cut: bool,
}

impl CappedLines {
    fn new(max: usize) -> Self {
        Self {
            max,
            line: Vec::new(),
            cut: false,
        }
    }

    fn finish(&mut self) -> Line {
        if !self.cut && self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        Line {
            text,
            cut: std::mem::take(&mut self.cut),
        }
    }
}

impl Decoder for CappedLines {
    type Item = Line;
    type Error = std::io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        let newline = buf.iter().position(|&b| b == b'\n');
        let end = newline.unwrap_or(buf.len());
        let take = (self.max - self.line.len()).min(end);
        self.line.extend_from_slice(&buf[..take]);
        self.cut |= end > take;
        match newline {
            Some(at) => {
                buf.advance(at + 1);
                Ok(Some(self.finish()))
            }
            None => {
                // Kept what fits; the rest of this line is dropped as it comes.
                buf.clear();
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Line>, std::io::Error> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        // A last line without a newline.
        Ok((!self.line.is_empty() || self.cut).then(|| self.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(max: usize, input: &[u8], chunk: usize) -> Vec<Line> {
        let mut codec = CappedLines::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(line) = codec.decode(&mut buf).unwrap() {
                out.push(line);
            }
        }
        while let Some(line) = codec.decode_eof(&mut buf).unwrap() {
            out.push(line);
        }
        out
    }

    #[test]
    fn lines_are_cut_to_the_limit_and_reading_goes_on() {
        let mut input = b"short\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend(b"\n\xff\xfeok\nlast");
        for chunk in [1, 7, 4096, input.len()] {
            let lines = decode_all(10, &input, chunk);
            let texts: Vec<(&str, bool)> = lines.iter().map(|l| (l.text.as_str(), l.cut)).collect();
            assert_eq!(
                texts,
                [
                    ("short", false),
                    ("xxxxxxxxxx", true),
                    ("\u{fffd}\u{fffd}ok", false),
                    ("last", false)
                ],
                "chunks of {chunk}"
            );
        }
    }

    #[test]
    fn the_end_of_a_long_text_is_kept() {
        assert_eq!(keep_end("short".into(), 10), "short");
        assert_eq!(keep_end("0123456789abc".into(), 6), "…abc");
        assert_eq!(keep_end("éééé".into(), 6), "…é");
    }
}
