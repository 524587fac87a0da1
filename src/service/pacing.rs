//! Transfers paced by the client: a request body the client stops sending, or a download it stops
//! reading, must not hold a connection, an upload slot or a blob store stream for ever. Only the
//! time spent waiting for the client counts (not time spent waiting for the blob store), and
//! every stretch of `transfer_idle_timeout` of such waiting must move at least
//! `transfer_min_rate × transfer_idle_timeout` bytes:
//!
//! - a body that sends nothing for `transfer_idle_timeout` is cut off ([`Stalled::Idle`]);
//! - one that trickles below `transfer_min_rate` is cut off at the end of the stretch in which it
//!   fell short ([`Stalled::TooSlow`]).
//!
//! [`paced_body`] wraps an incoming body (its error then ends the upload, which leaves nothing
//! behind); [`paced_download`] moves a stored object to the client through a small channel from
//! a task of its own, so a reader that stops reading releases the store's stream (a file, or a
//! connection to S3) after the timeout even though the connection itself waits for the client.

use std::{future::Future, pin::pin, time::Duration};

use bytes::Bytes;
use futures_util::{Stream, StreamExt, stream};
use tokio::time::Instant;

use super::BoxError;
use crate::config::Limits;

/// Why a transfer was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stalled {
    #[error("the client sent or read nothing for {}", humantime::format_duration(*.0))]
    Idle(Duration),
    #[error(
        "the client moved {bytes} bytes in {}, below the minimum of {min_rate} bytes per second",
        humantime::format_duration(*window)
    )]
    TooSlow {
        bytes: u64,
        window: Duration,
        min_rate: u64,
    },
}

/// The pace a transfer must keep (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pace {
    pub idle_timeout: Duration,
    /// Bytes per second; 0 for no minimum.
    pub min_rate: u64,
}

impl Pace {
    pub fn of(limits: &Limits) -> Self {
        Self {
            idle_timeout: limits.transfer_idle_timeout,
            min_rate: limits.transfer_min_rate,
        }
    }
}

/// Measures the time a transfer waits for its client, in stretches of `idle_timeout`.
#[derive(Debug)]
pub struct Pacer {
    pace: Pace,
    /// Waiting time left in the current stretch.
    window_left: Duration,
    /// Bytes moved in the current stretch.
    window_bytes: u64,
}

impl Pacer {
    pub fn new(pace: Pace) -> Self {
        Self {
            pace,
            window_left: pace.idle_timeout,
            window_bytes: 0,
        }
    }

    /// Waits for `peer` (the client sending or taking the next chunk), charging the wait to the
    /// current stretch; fails once the client has been idle for `idle_timeout` or a stretch ends
    /// below the minimum rate.
    pub async fn wait<F: Future>(&mut self, peer: F) -> Result<F::Output, Stalled> {
        let mut peer = pin!(peer);
        let mut idle = Duration::ZERO;
        loop {
            self.close_window_if_over()?;
            let budget = (self.pace.idle_timeout - idle).min(self.window_left);
            let started = Instant::now();
            match tokio::time::timeout(budget, &mut peer).await {
                Ok(out) => {
                    self.window_left = self
                        .window_left
                        .saturating_sub(started.elapsed().min(budget));
                    return Ok(out);
                }
                Err(_) => {
                    idle += budget;
                    self.window_left -= budget;
                    if idle >= self.pace.idle_timeout {
                        return Err(Stalled::Idle(self.pace.idle_timeout));
                    }
                }
            }
        }
    }

    /// Counts bytes the client moved.
    pub fn moved(&mut self, bytes: usize) {
        self.window_bytes = self.window_bytes.saturating_add(bytes as u64);
    }

    fn close_window_if_over(&mut self) -> Result<(), Stalled> {
        if !self.window_left.is_zero() {
            return Ok(());
        }
        let window = self.pace.idle_timeout;
        let required = (self.pace.min_rate as f64 * window.as_secs_f64()).ceil() as u64;
        if self.window_bytes < required {
            return Err(Stalled::TooSlow {
                bytes: self.window_bytes,
                window,
                min_rate: self.pace.min_rate,
            });
        }
        self.window_left = window;
        self.window_bytes = 0;
        Ok(())
    }
}

/// `body`, cut off with a [`Stalled`] error when the client stops sending or sends too slowly.
pub fn paced_body<S, E>(body: S, pace: Pace) -> impl Stream<Item = Result<Bytes, BoxError>>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: Into<BoxError>,
{
    let body = Box::pin(body);
    stream::unfold(Some((body, Pacer::new(pace))), |state| async move {
        let (mut body, mut pacer) = state?;
        match pacer.wait(body.next()).await {
            Ok(None) => None,
            Ok(Some(Ok(chunk))) => {
                pacer.moved(chunk.len());
                Some((Ok(chunk), Some((body, pacer))))
            }
            Ok(Some(Err(err))) => Some((Err(err.into()), None)),
            Err(stalled) => Some((Err(Box::new(stalled) as BoxError), None)),
        }
    })
}

/// Streams `source` to a client through a two-chunk channel fed by a task of its own, so that
/// when the client stops reading, the task notices (its send waits), gives up after the pace's
/// timeout and drops `source`, releasing whatever it holds; the client then gets a truncated
/// body (the connection is closed) if it ever reads again.
pub fn paced_download<S, E>(source: S, pace: Pace) -> impl Stream<Item = Result<Bytes, BoxError>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, BoxError>>(1);
    tokio::spawn(async move {
        let mut source = pin!(source);
        let mut pacer = Pacer::new(pace);
        while let Some(item) = source.next().await {
            let (len, item) = match item {
                Ok(chunk) => (chunk.len(), Ok(chunk)),
                Err(err) => (0, Err(err.into())),
            };
            let failed = item.is_err();
            match pacer.wait(tx.send(item)).await {
                Ok(Ok(())) => pacer.moved(len),
                // The client went away.
                Ok(Err(_)) => return,
                Err(stalled) => {
                    tracing::info!(error = %stalled, "download cut off; its stream is released");
                    // Dropping `source` (when this task ends) releases it; the client, if it
                    // reads again, finds the body ending in an error and the connection closed.
                    let _ = tx.try_send(Err(Box::new(stalled)));
                    return;
                }
            }
            if failed {
                return;
            }
        }
    });
    stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    })
}

#[cfg(test)]
mod tests {
    //! Paused time (tokio's test clock): deterministic, and no real waiting.
    use super::*;

    fn pace(idle_ms: u64, min_rate: u64) -> Pace {
        Pace {
            idle_timeout: Duration::from_millis(idle_ms),
            min_rate,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_goes_quiet_is_cut_off_after_the_idle_timeout() {
        let mut pacer = Pacer::new(pace(300, 0));
        let quiet = pacer.wait(std::future::pending::<()>()).await;
        assert_eq!(quiet, Err(Stalled::Idle(Duration::from_millis(300))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_below_the_minimum_rate_is_cut_off_at_the_end_of_its_stretch() {
        let mut pacer = Pacer::new(pace(300, 1000));
        let mut outcome = Ok(());
        for _ in 0..100 {
            let tick = tokio::time::sleep(Duration::from_millis(20));
            match pacer.wait(tick).await {
                Ok(()) => pacer.moved(1),
                Err(stalled) => {
                    outcome = Err(stalled);
                    break;
                }
            }
        }
        assert!(
            matches!(outcome, Err(Stalled::TooSlow { min_rate: 1000, .. })),
            "{outcome:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_client_is_never_cut_off() {
        let mut pacer = Pacer::new(pace(300, 10));
        for _ in 0..30 {
            let tick = tokio::time::sleep(Duration::from_millis(20));
            pacer.wait(tick).await.expect("fast enough");
            pacer.moved(100);
        }
    }
}
