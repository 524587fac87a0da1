//! Server-sent events (the WHATWG `text/event-stream` format): the frames, and the loop that
//! drives a stream — read what is new, send it, wait for a wake-up, send a heartbeat when
//! nothing was sent for `events.heartbeat`, end when the source says so, when the client goes
//! away (actix drops the stream) or when the server stops.
//!
//! A stream holds no database connection between reads: a [`Source`] reads with short queries
//! and waits on in-process wake-ups (`storage::changes`).

use std::{convert::Infallible, future::Future, time::Duration};

use actix_web::{
    HttpRequest, HttpResponse,
    http::{Method, header},
    web,
};
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::problem::ApiError;

pub const CONTENT_TYPE: &str = "text/event-stream";

/// How long a client should wait before reconnecting, sent once at the start of every stream.
const RETRY_MS: u64 = 2000;

/// Appends one event: `id:`, `event:`, then `data:` — one line per line of `data` (JSON has
/// none, but the format would need it).
pub fn push_event(out: &mut String, id: &str, event: &str, data: &str) {
    use std::fmt::Write;
    let _ = writeln!(out, "id: {id}");
    let _ = writeln!(out, "event: {event}");
    for line in data.split('\n') {
        let _ = writeln!(out, "data: {line}");
    }
    out.push('\n');
}

/// What a read produced: the events to send (already framed, see [`push_event`]) and what to
/// do next.
pub struct Batch {
    pub frames: String,
    pub then: Then,
}

pub enum Then {
    /// The stream is complete.
    End,
    /// More is ready: read again at once.
    ReadAgain,
    /// Wait for a wake-up (or the next heartbeat).
    Wait,
    /// Like `Wait`, but read again after this long even without a wake-up.
    WaitAtMost(Duration),
}

/// What a stream sends.
pub trait Source: 'static {
    /// Reads what is new since the last read. An error ends the stream (the client resumes
    /// with `Last-Event-ID`).
    fn read(&mut self) -> impl Future<Output = Result<Batch, ApiError>>;
    /// Waits until something may be new, or until `until`.
    fn wait(&mut self, until: Instant) -> impl Future<Output = ()>;
}

enum Step {
    Send(Batch),
    Read,
    Wait(Option<Duration>),
    Done,
}

struct Driver<S> {
    source: S,
    heartbeat: Duration,
    stopping: CancellationToken,
    last_sent: Instant,
    step: Step,
}

impl<S: Source> Driver<S> {
    /// The next chunk of the response body, `None` at its end.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.stopping.is_cancelled() {
                self.step = Step::Done;
            }
            match std::mem::replace(&mut self.step, Step::Done) {
                Step::Done => return None,
                Step::Send(batch) => {
                    self.step = match batch.then {
                        Then::End => Step::Done,
                        Then::ReadAgain => Step::Read,
                        Then::Wait => Step::Wait(None),
                        Then::WaitAtMost(d) => Step::Wait(Some(d)),
                    };
                    if !batch.frames.is_empty() {
                        self.last_sent = Instant::now();
                        return Some(Bytes::from(batch.frames));
                    }
                }
                Step::Read => match self.source.read().await {
                    Ok(batch) => self.step = Step::Send(batch),
                    // E.g. the job was deleted: nothing more will come.
                    Err(e) if e.status.is_client_error() => return None,
                    Err(e) => {
                        tracing::warn!(error = %e, "an event stream ended on a failed read");
                        return None;
                    }
                },
                Step::Wait(at_most) => {
                    let beat = self.last_sent + self.heartbeat;
                    let until = at_most.map_or(beat, |d| beat.min(Instant::now() + d));
                    tokio::select! {
                        () = self.stopping.cancelled() => return None,
                        () = self.source.wait(until) => {}
                    }
                    self.step = Step::Read;
                    if Instant::now() >= beat {
                        self.last_sent = Instant::now();
                        return Some(Bytes::from_static(b": keep-alive\n\n"));
                    }
                }
            }
        }
    }
}

/// Answers with the stream of `source`: reads what is there first, so that errors such as
/// `404` are still problems; then a `200` event stream that sends it and follows `source`
/// until it ends, the client leaves or the server stops (`web::Data<CancellationToken>`); for
/// a `HEAD` request, the stream's head alone. A stream that would end without sending anything
/// is a `204`, which tells `EventSource` clients not to reconnect.
pub async fn start<S: Source>(
    mut source: S,
    req: &HttpRequest,
    heartbeat: Duration,
) -> Result<HttpResponse, ApiError> {
    let first = source.read().await?;
    let stopping = req
        .app_data::<web::Data<CancellationToken>>()
        .map(|token| token.get_ref().clone())
        .unwrap_or_default();
    Ok(respond(
        first,
        source,
        heartbeat,
        stopping,
        req.method() == Method::HEAD,
    ))
}

fn respond<S: Source>(
    first: Batch,
    source: S,
    heartbeat: Duration,
    stopping: CancellationToken,
    head_only: bool,
) -> HttpResponse {
    if first.frames.is_empty() && matches!(first.then, Then::End) {
        return HttpResponse::NoContent()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish();
    }
    let mut res = HttpResponse::Ok();
    res.content_type(CONTENT_TYPE)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        // nginx buffers responses unless told not to, which would hold events back.
        .insert_header(("x-accel-buffering", "no"))
        // Nothing follows a stream on its connection: an ended stream's client reconnects
        // afresh, and a stopping server has no idle connection left to wait for.
        .force_close();
    if head_only {
        return res.finish();
    }
    let mut start = format!("retry: {RETRY_MS}\n\n");
    start.push_str(&first.frames);
    let driver = Driver {
        source,
        heartbeat,
        stopping,
        last_sent: Instant::now(),
        step: Step::Send(Batch {
            frames: start,
            then: first.then,
        }),
    };
    let body = futures_util::stream::unfold(driver, |mut driver| async move {
        let chunk = driver.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), driver))
    });
    res.streaming(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_framed_line_by_line() {
        let mut out = String::new();
        push_event(&mut out, "7", "progress", "{\"a\":1}");
        push_event(&mut out, "8", "result", "two\nlines");
        assert_eq!(
            out,
            "id: 7\nevent: progress\ndata: {\"a\":1}\n\n\
             id: 8\nevent: result\ndata: two\ndata: lines\n\n"
        );
    }
}
