//! The attempt's flusher: at every tick of the supervisor it writes what the handler reported
//! since the last one — its log lines and its latest progress — through the service.
//!
//! The job always shows the latest progress (every flush that has a report writes it). The event
//! log gets a `progress` event only for the attempt's first report, for a change of stage (at
//! most one a second), and otherwise at most one per `limits.progress_event_interval`; when the
//! attempt ends, its last report gets an event if it has none yet. So a day-long job reporting
//! four times a second writes thousands of events, not a million, and the event log still ends
//! with the last progress reported.

use std::time::{Duration, Instant};

use super::handler::JobContext;
use crate::{
    config::Limits,
    service::attempts::{LeaseState, LogBudget, ProgressReport},
};

/// A new stage is recorded at once, but not more often than this (a handler flipping stages
/// is coalesced like any other).
const STAGE_EVENT_MIN_GAP: Duration = Duration::from_secs(1);

pub(crate) struct Flusher {
    logs: LogBudget,
    events: ProgressEvents,
    /// The latest report, written to the job but not yet as an event.
    unrecorded: Option<ProgressReport>,
}

/// When progress events are due.
struct ProgressEvents {
    interval: Duration,
    /// When the last progress event was written, and its stage.
    last: Option<(Instant, Option<String>)>,
}

impl ProgressEvents {
    /// Whether `report`, at `now`, gets an event; `ending`: it is the attempt's last.
    fn due(&self, report: &ProgressReport, now: Instant, ending: bool) -> bool {
        let Some((at, stage)) = &self.last else {
            return true;
        };
        let since = now.saturating_duration_since(*at);
        ending || since >= self.interval || (report.stage != *stage && since >= STAGE_EVENT_MIN_GAP)
    }
}

impl Flusher {
    pub fn new(limits: &Limits) -> Self {
        Self {
            logs: LogBudget::default(),
            events: ProgressEvents {
                interval: limits.progress_event_interval,
                last: None,
            },
            unrecorded: None,
        }
    }

    /// Writes the buffered log lines and progress; `ending`: the handler is done, so a report
    /// still without its event gets one now. Reports whether the lease is still held.
    pub async fn flush(&mut self, ctx: &JobContext, ending: bool) -> LeaseState {
        let (fresh, logs) = {
            let mut pending = ctx.pending.lock().expect("pending lock");
            (pending.progress.take(), pending.take_logs())
        };
        match ctx
            .services
            .append_logs(&ctx.lease, logs, &mut self.logs)
            .await
        {
            Ok(LeaseState::Lost) => return LeaseState::Lost,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not store log lines"),
        }
        let now = Instant::now();
        let (report, is_fresh) = match (fresh, self.unrecorded.take()) {
            (Some(report), _) => (report, true),
            (None, Some(report)) => (report, false),
            (None, None) => return LeaseState::Held,
        };
        let event = self.events.due(&report, now, ending);
        if !is_fresh && !event {
            // Already on the job; its event is not due yet.
            self.unrecorded = Some(report);
            return LeaseState::Held;
        }
        match ctx
            .services
            .report_progress(&ctx.lease, report.clone(), event)
            .await
        {
            Ok(state) => {
                if event {
                    self.events.last = Some((now, report.stage));
                } else {
                    self.unrecorded = Some(report);
                }
                state
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not store progress");
                // Written again when its event is due, unless a newer report comes first.
                self.unrecorded = Some(report);
                LeaseState::Held
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_stage(stage: &str) -> ProgressReport {
        ProgressReport {
            percent: Some(1.0),
            stage: Some(stage.into()),
            message: None,
        }
    }

    #[test]
    fn progress_events_are_the_first_new_stages_one_per_interval_and_the_last() {
        let start = Instant::now();
        let secs = |s: f64| start + Duration::from_secs_f64(s);
        let mut events = ProgressEvents {
            interval: Duration::from_secs(5),
            last: None,
        };
        assert!(events.due(&at_stage("load"), start, false), "the first");
        events.last = Some((start, Some("load".into())));
        assert!(!events.due(&at_stage("load"), secs(4.9), false));
        assert!(
            events.due(&at_stage("load"), secs(5.0), false),
            "one per interval"
        );
        assert!(
            events.due(&at_stage("segment"), secs(1.0), false),
            "a new stage"
        );
        assert!(
            !events.due(&at_stage("segment"), secs(0.5), false),
            "not more than one a second"
        );
        assert!(events.due(&at_stage("load"), secs(0.1), true), "the last");
    }
}
