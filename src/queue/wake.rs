//! When a queue consumer looks for work: Ferry's own apalis poll strategy, so that no dispatch
//! waits for the backstop tick because a wake-up was spent at the wrong moment.
//!
//! apalis' worker asks its strategy for a wake-up before each `poll_next` of the backend and
//! throws the answer away (`PollWith::poll_next`); the backend then fetches if it is idle, or
//! goes on waiting for the fetch it has in flight. apalis' `StreamStrategy` takes one item of
//! the stream per poll, which loses wake-ups in two ways (read in apalis-core 1.0's
//! `poll_strategy` and `persistence` modules; no measurement isolated what they cost):
//!
//! - a wake-up that arrives while a fetch is in flight is taken, and that fetch, which began
//!   before the dispatch committed, comes back empty: the worker parks, nothing remembers the
//!   wake-up, and the dispatch waits for the next tick (250 ms on PostgreSQL);
//! - a stream that answers `Ready` has not registered the worker's waker: with two streams
//!   merged (notifications and a tick), the worker could park with neither listening, until a
//!   heartbeat (2 s) woke it.
//!
//! [`Wakeups`] drains its stream until it is `Pending` (so it always listens), and after a
//! wake-up asks again a few times, shortly after ([`RECHECKS`]), until a fetch has delivered a
//! task — a fetch begun after the wake-up, or one followed by another fetch, which sees the
//! dispatch. A stream that ends (PostgreSQL's LISTEN connection closed) cancels `ended`, so the
//! consumer is rebuilt with a new one instead of running on ticks alone.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use futures_util::{StreamExt, stream::BoxStream};
use tokio::time::{Interval, MissedTickBehavior, Sleep};
use tokio_util::sync::CancellationToken;

/// How long after a wake-up the consumer looks again, if no task has been delivered since:
/// apalis' fetch took 1.1 ms on average on PostgreSQL on this project's machines (statement log
/// of a release build, 50 jobs/s), so the first look usually finds the fetch that raced the
/// wake-up done; the later ones cover a slow fetch. Each costs one fetch, only when no task
/// came.
const RECHECKS: [Duration; 3] = [
    Duration::from_millis(2),
    Duration::from_millis(10),
    Duration::from_millis(50),
];

/// Wake-ups for one apalis worker: a stream of "something may have been queued", a backstop
/// tick, and the re-checks after each wake-up (see the module notes).
pub struct Wakeups {
    woken_by: BoxStream<'static, ()>,
    tick: Interval,
    /// The next re-check and its place in [`RECHECKS`], while one is owed.
    recheck: Option<(Pin<Box<Sleep>>, usize)>,
    ended: CancellationToken,
}

impl Wakeups {
    /// Wake-ups from `woken_by`, and every `every` whatever it says; `ended` is cancelled when
    /// `woken_by` ends.
    pub fn new(
        woken_by: BoxStream<'static, ()>,
        every: Duration,
        ended: CancellationToken,
    ) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            woken_by,
            tick,
            recheck: None,
            ended,
        }
    }

    fn recheck_from(&mut self, stage: usize) {
        self.recheck = RECHECKS
            .get(stage)
            .map(|after| (Box::pin(tokio::time::sleep(*after)), stage));
    }
}

impl PollStrategy for Wakeups {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _: &PollSnapshot) -> Poll<Option<()>> {
        let mut woken = false;
        // Until Pending, so that the stream has the worker's waker whatever it answered.
        loop {
            match self.woken_by.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => woken = true,
                Poll::Ready(None) => {
                    self.ended.cancel();
                    break;
                }
                Poll::Pending => break,
            }
        }
        if woken {
            self.recheck_from(0);
        } else if let Some((sleep, stage)) = &mut self.recheck
            && sleep.as_mut().poll(cx).is_ready()
        {
            let next = *stage + 1;
            self.recheck_from(next);
            woken = true;
        }
        // The same for the tick (each `poll_tick` that is Pending registers the waker).
        while self.tick.poll_tick(cx).is_ready() {
            woken = true;
        }
        if let Some((sleep, _)) = &mut self.recheck {
            // Registers the waker for the re-check (already Pending: it was just set, or just
            // polled above).
            let _ = sleep.as_mut().poll(cx);
        }
        if woken {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }

    /// A task delivered means a fetch came back with work, and the backend fetches again once
    /// it has handed out what it fetched: that later fetch sees whatever woke us. No re-check
    /// is owed then.
    fn on_poll(&mut self, snapshot: &PollSnapshot) {
        if snapshot.consecutive_ready > 0 {
            self.recheck = None;
        }
    }
}

/// What each item of a wake stream is to the consumer: "look now".
pub fn as_wakeups<T: Send + 'static>(
    stream: impl futures_util::Stream<Item = T> + Send + 'static,
) -> BoxStream<'static, ()> {
    stream.map(|_| ()).boxed()
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures_util::stream;
    use futures_util::task::{ArcWake, waker};
    use tokio::sync::mpsc;

    use super::*;

    struct CountWakes(AtomicUsize);
    impl ArcWake for CountWakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn snapshot(consecutive_ready: usize) -> PollSnapshot {
        PollSnapshot {
            consecutive_ready,
            ..PollSnapshot::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_taken_during_a_fetch_is_looked_at_again_until_a_task_comes() {
        let (send, receive) = mpsc::unbounded_channel::<()>();
        let ended = CancellationToken::new();
        let mut wakeups = Wakeups::new(
            as_wakeups(stream::unfold(receive, |mut receive| async move {
                receive.recv().await.map(|woken| (woken, receive))
            })),
            Duration::from_secs(3600),
            ended.clone(),
        );
        let counter = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = waker(counter.clone());
        let mut cx = Context::from_waker(&waker);
        // The interval's first tick is immediate.
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_ready());
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_pending());

        // Two wake-ups in a row are taken in one poll, and the stream still listens after.
        send.send(()).unwrap();
        send.send(()).unwrap();
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_ready());
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_pending());
        let before = counter.0.load(Ordering::SeqCst);
        send.send(()).unwrap();
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            before + 1,
            "the stream kept the waker"
        );
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_ready());
        wakeups.on_poll(&snapshot(0)); // the fetch in flight came back empty

        // No task came: the worker is woken again after each re-check's delay (tokio's timers
        // have a resolution of 1 ms).
        for after in RECHECKS {
            let woken = counter.0.load(Ordering::SeqCst);
            tokio::time::advance(after - Duration::from_millis(1)).await;
            assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_pending());
            tokio::time::advance(Duration::from_millis(2)).await;
            assert!(
                counter.0.load(Ordering::SeqCst) > woken,
                "woken for the re-check"
            );
            assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_ready());
            wakeups.on_poll(&snapshot(0));
        }
        // After the last one, only the stream and the tick wake it.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_pending());

        // A task delivered ends the re-checks owed.
        send.send(()).unwrap();
        assert!(wakeups.poll_drive(&mut cx, &snapshot(0)).is_ready());
        wakeups.on_poll(&snapshot(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(wakeups.poll_drive(&mut cx, &snapshot(1)).is_pending());
        assert!(!ended.is_cancelled());

        // The stream's end says so.
        drop(send);
        let _ = wakeups.poll_drive(&mut cx, &snapshot(0));
        assert!(ended.is_cancelled());
    }
}
