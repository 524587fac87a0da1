//! What the client shows: failures as plain sentences with their exit code, JSON documents for
//! scripts, and progress bars only for a person watching a terminal.

use std::{io::IsTerminal, process::ExitCode};

use ferry_client::types::Problem;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Why a client command stopped; each kind has its documented exit code.
#[derive(Debug)]
pub enum Failure {
    /// The job failed or was canceled (exit 1).
    Job(String),
    /// Bad flags, configuration or input files (exit 2, like clap's own usage errors).
    Usage(String),
    /// A request failed: server unreachable, an error answer, a digest mismatch (exit 3).
    Request(String),
}

impl Failure {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Failure::Job(_) => 1,
            Failure::Usage(_) => 2,
            Failure::Request(_) => 3,
        })
    }

    pub fn message(&self) -> &str {
        match self {
            Failure::Job(m) | Failure::Usage(m) | Failure::Request(m) => m,
        }
    }

    /// A failed request, as one sentence: the problem's detail and code when the server
    /// answered one, the transport error's causes when it could not be reached.
    pub fn request(server: &str, err: ferry_client::Error<Problem>) -> Self {
        use ferry_client::Error;
        Failure::Request(match err {
            Error::ErrorResponse(answer) => problem_sentence(&answer),
            Error::CommunicationError(err) => {
                format!("cannot reach the server at {server}: {}", causes(&err))
            }
            other => format!("request to {server} failed: {}", causes(&other)),
        })
    }
}

/// `detail (code, HTTP status)`.
pub fn problem_sentence(problem: &Problem) -> String {
    format!(
        "{} ({}, HTTP {})",
        problem.detail.as_str(),
        problem.code.as_str(),
        problem.status
    )
}

/// An error and its sources, `: `-separated (reqwest's own message alone says little).
pub fn causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        // The generated types always serialise; say so rather than print nothing.
        Err(err) => eprintln!("ferry: cannot print the answer as JSON: {err}"),
    }
}

/// Progress bars go to stderr, and only when stdout is a terminal and no JSON was asked for,
/// so pipes and scripts see clean output.
pub struct Bars {
    visible: bool,
}

impl Bars {
    pub fn new(json: bool) -> Self {
        Self {
            visible: !json && std::io::stdout().is_terminal(),
        }
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        }
    }

    /// A byte transfer: bytes, rate and ETA.
    pub fn transfer(&self, len: u64, label: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(len), self.target());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:20!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(label.to_owned());
        bar
    }

    /// A job's progress in percent, with its stage as the message.
    pub fn job(&self, id: &str) -> ProgressBar {
        let bar = ProgressBar::with_draw_target(Some(100), self.target());
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos:>3}% {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(id.to_owned());
        bar
    }

    /// Whether a person is watching (then short status lines go to stderr too).
    pub fn visible(&self) -> bool {
        self.visible
    }
}
