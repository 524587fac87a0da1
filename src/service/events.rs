//! The event log as clients read it: one job's events after a `seq` (with whether the job has
//! finished, so a stream knows when to end), and the feed across all jobs (`GET /v1/events`)
//! with its cursor and filters.
//!
//! The feed's order is `(tx, id)`, not `id`: see the `event_feed` migration. On PostgreSQL an
//! event is returned only once every transaction that could still write an event before it has
//! ended — those whose id is below the *horizon*, the oldest transaction id running when the
//! read starts (`pg_snapshot_xmin`). The horizon is read in a statement of its own, before the
//! events: every transaction below it had ended before that statement, so its events are
//! visible to the next one, and any event committed later has a `tx` at or above it. A
//! committed event past the horizon is left for a later read ([`FeedPage::pending`]).

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
    sea_query::{Expr, ExprTrait, Query},
};
use uuid::Uuid;

use super::{ServiceResult, Services};
use crate::storage::lookup::AtMostOne;
use crate::{
    domain::{EventKind, JobStatus},
    ids::JobId,
    storage::{
        Pool,
        entities::{job, job_event},
        tenancy,
    },
    tenancy::Tenant,
};

/// A position in the feed: after the event `(tx, id)`. Opaque to clients: 32 lowercase hex
/// digits, `tx` then `id`, each below 2⁶³, so that the spec's pattern admits exactly the
/// cursors there are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedCursor {
    pub tx: i64,
    pub id: i64,
}

impl FeedCursor {
    /// Before every event.
    pub const START: FeedCursor = FeedCursor { tx: 0, id: 0 };

    pub fn of(event: &job_event::Model) -> Self {
        Self {
            tx: event.tx,
            id: event.id,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        let half = |s: &str| {
            let ok = s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            // Hex digits only, so the sign cannot sneak in; over 2⁶³ fails the conversion.
            ok.then(|| u64::from_str_radix(s, 16).ok())
                .flatten()
                .and_then(|v| i64::try_from(v).ok())
        };
        if text.len() != 32 || !text.is_ascii() {
            return None;
        }
        Some(Self {
            tx: half(&text[..16])?,
            id: half(&text[16..])?,
        })
    }
}

impl std::fmt::Display for FeedCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}{:016x}", self.tx, self.id)
    }
}

/// Which events the feed returns; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct FeedFilter {
    /// Events of jobs of these kinds.
    pub job_kinds: Option<Vec<String>>,
    /// Events of these kinds (already narrowed by the statuses asked for, see
    /// [`FeedFilter::event_kinds`]).
    pub event_kinds: Option<Vec<EventKind>>,
    /// Events of this job.
    pub job: Option<JobId>,
}

impl FeedFilter {
    /// The event kinds to return for a `type` filter and a `status` filter (the status an event
    /// led to; only state changes carry one): the kinds that satisfy both.
    pub fn event_kinds(
        types: Option<Vec<EventKind>>,
        statuses: Option<Vec<JobStatus>>,
    ) -> Option<Vec<EventKind>> {
        if types.is_none() && statuses.is_none() {
            return None;
        }
        Some(
            EventKind::ALL
                .into_iter()
                .filter(|k| types.as_ref().is_none_or(|t| t.contains(k)))
                .filter(|k| {
                    statuses
                        .as_ref()
                        .is_none_or(|s| k.status().is_some_and(|st| s.contains(&st)))
                })
                .collect(),
        )
    }
}

/// One event of the feed, with the kind (and version) of its job and the cursor right after it.
#[derive(Clone, Debug)]
pub struct FeedEvent {
    pub event: job_event::Model,
    pub job_kind: String,
    pub job_version: Option<String>,
    pub cursor: FeedCursor,
}

#[derive(Clone, Debug)]
pub struct FeedPage {
    pub events: Vec<FeedEvent>,
    /// Where the next read continues: after the last event read (which may be one whose job
    /// was deleted meanwhile, and so is not in `events`), else where this one started.
    pub next: FeedCursor,
    /// More events follow at once.
    pub more: bool,
    /// Events past `next` have committed but wait for older transactions to end (PostgreSQL):
    /// read again soon even without a wake-up, as those transactions may announce nothing.
    pub pending: bool,
}

impl Services {
    /// The job's status and its events after `after_seq`, oldest first, at most `limit`. The
    /// job is read first: if it had finished then, every one of its events is in the answer.
    pub async fn job_events_since(
        &self,
        tenant: &Tenant,
        id: JobId,
        after_seq: i64,
        limit: u64,
    ) -> ServiceResult<(JobStatus, Vec<job_event::Model>)> {
        let status = tenancy::find_by_id::<job::Entity>(tenant, id.0)
            .select_only()
            .column(job::Column::Status)
            .into_tuple::<JobStatus>()
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| Self::job_not_found(id))?;
        let events = job_event::Entity::find()
            .filter(job_event::Column::JobId.eq(id.0))
            .filter(job_event::Column::Seq.gt(after_seq))
            .order_by_asc(job_event::Column::Seq)
            .limit(limit)
            .all(&self.db.orm)
            .await?;
        Ok((status, events))
    }

    /// Events after `after` matching `filter`, in feed order, at most `limit`.
    pub async fn event_feed(
        &self,
        tenant: &Tenant,
        filter: &FeedFilter,
        after: FeedCursor,
        limit: u64,
    ) -> ServiceResult<FeedPage> {
        let empty = FeedPage {
            events: Vec::new(),
            next: after,
            more: false,
            pending: false,
        };
        if filter.event_kinds.as_ref().is_some_and(Vec::is_empty) {
            return Ok(empty);
        }
        let horizon = self.feed_horizon().await?;
        let past_cursor = match self.db.pool() {
            Pool::Postgres(_) => Expr::tuple([
                Expr::col(job_event::Column::Tx),
                Expr::col(job_event::Column::Id),
            ])
            .gt(Expr::tuple([Expr::val(after.tx), Expr::val(after.id)])),
            // The same set, as every SQLite event has `tx` 0; SQLite (3.40) seeks a row value
            // comparison on its first column only, which would scan the feed from the start.
            Pool::Sqlite(_) => job_event::Column::Tx
                .eq(after.tx)
                .and(job_event::Column::Id.gt(after.id)),
        };
        let mut query = tenancy::find::<job_event::Entity>(tenant)
            .filter(past_cursor)
            .order_by_asc(job_event::Column::Tx)
            .order_by_asc(job_event::Column::Id);
        if let Some(kinds) = &filter.event_kinds {
            query = query.filter(job_event::Column::Kind.is_in(kinds.iter().copied()));
        }
        if let Some(job) = filter.job {
            query = query.filter(job_event::Column::JobId.eq(job.0));
        }
        if let Some(kinds) = &filter.job_kinds {
            // Probed per event, in feed order, so that reading the feed's end costs what it
            // reads, not every event of those kinds ever (which `job_id IN (…)` does on
            // SQLite).
            query = query.filter(Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from(job::Entity)
                    .and_where(
                        Expr::col((job::Entity, job::Column::Id))
                            .equals((job_event::Entity, job_event::Column::JobId)),
                    )
                    .and_where(job::Column::Kind.is_in(kinds.iter().map(String::as_str)))
                    .to_owned(),
            ));
        }
        let mut rows = query.limit(limit + 1).all(&self.db.orm).await?;
        let visible = rows.iter().take_while(|e| e.tx < horizon).count();
        let pending = visible < rows.len();
        rows.truncate(visible);
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let Some(last) = rows.last() else {
            return Ok(FeedPage { pending, ..empty });
        };
        let next = FeedCursor::of(last);
        let kinds = self.job_kinds(&rows).await?;
        let events = rows
            .into_iter()
            .filter_map(|event| {
                // A job deleted since the events were read: its events are gone too.
                let (job_kind, job_version) = kinds.get(&event.job_id)?.clone();
                Some(FeedEvent {
                    cursor: FeedCursor::of(&event),
                    event,
                    job_kind,
                    job_version,
                })
            })
            .collect();
        Ok(FeedPage {
            events,
            next,
            more,
            pending,
        })
    }

    /// The feed's end now (`after=now`): the cursor after the last event every reader can see,
    /// so that reading from it returns only what is committed from now on — and on PostgreSQL
    /// the few events of transactions still pending at the horizon, which a reader from the
    /// start would not have seen yet either. Nothing committed after it is skipped.
    pub async fn feed_end(&self, tenant: &Tenant) -> ServiceResult<FeedCursor> {
        let horizon = self.feed_horizon().await?;
        // The tenant's last event: its index (tenant, tx, id) walked backwards, one entry.
        let last = tenancy::find::<job_event::Entity>(tenant)
            .select_only()
            .columns([job_event::Column::Tx, job_event::Column::Id])
            .filter(job_event::Column::Tx.lt(horizon))
            .order_by_desc(job_event::Column::Tx)
            .order_by_desc(job_event::Column::Id)
            .limit(1)
            .into_tuple::<(i64, i64)>()
            .all(&self.db.orm)
            .await?;
        Ok(last
            .first()
            .map_or(FeedCursor::START, |&(tx, id)| FeedCursor { tx, id }))
    }

    /// The feed's horizon: events with a `tx` below it are final (see the module notes). On
    /// SQLite, whose writers commit one at a time in id order, every committed event is.
    async fn feed_horizon(&self) -> ServiceResult<i64> {
        if let Pool::Sqlite(_) = self.db.pool() {
            return Ok(i64::MAX);
        }
        let row = self
            .db
            .orm
            .query_one_raw(Statement::from_string(
                self.db.orm.get_database_backend(),
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon",
            ))
            .await?
            .ok_or_else(|| super::ServiceError::internal("reading the feed horizon", "no row"))?;
        Ok(row.try_get::<i64>("", "horizon")?)
    }

    async fn job_kinds(
        &self,
        events: &[job_event::Model],
    ) -> ServiceResult<BTreeMap<Uuid, (String, Option<String>)>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
        Ok(job::Entity::find()
            .select_only()
            .columns([job::Column::Id, job::Column::Kind, job::Column::Version])
            .filter(job::Column::Id.is_in(ids))
            .into_tuple::<(Uuid, String, Option<String>)>()
            .all(&self.db.orm)
            .await?
            .into_iter()
            .map(|(id, kind, version)| (id, (kind, version)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written_and_nothing_else_reads() {
        for cursor in [
            FeedCursor::START,
            FeedCursor { tx: 812, id: 7 },
            FeedCursor {
                tx: i64::MAX,
                id: i64::MAX,
            },
        ] {
            let text = cursor.to_string();
            assert_eq!(text.len(), 32);
            assert_eq!(FeedCursor::parse(&text), Some(cursor));
        }
        for bad in [
            "",
            "00",
            "000000000000032c0000000000000007x",
            "000000000000032C0000000000000007",
            "8000000000000000000000000000000",
            "80000000000000000000000000000000",
            "+00000000000032c0000000000000007",
            "00000000000000é00000000000000007",
        ] {
            assert_eq!(FeedCursor::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_status_filter_narrows_the_event_kinds_to_state_changes() {
        assert_eq!(FeedFilter::event_kinds(None, None), None);
        assert_eq!(
            FeedFilter::event_kinds(None, Some(vec![JobStatus::Running])),
            Some(vec![EventKind::Started, EventKind::CancelRequested])
        );
        assert_eq!(
            FeedFilter::event_kinds(
                Some(vec![EventKind::Progress, EventKind::Succeeded]),
                Some(vec![JobStatus::Succeeded, JobStatus::Failed])
            ),
            Some(vec![EventKind::Succeeded])
        );
        assert_eq!(
            FeedFilter::event_kinds(Some(vec![EventKind::Result]), Some(vec![JobStatus::Queued])),
            Some(vec![])
        );
    }
}
