//! The event log over HTTP: a job's events (`/v1/jobs/{id}/events`) and the feed across jobs
//! (`/v1/events`), each as JSON pages or, for a request that asks for `text/event-stream`, as
//! a server-sent event stream that follows new events as they commit (see [`super::sse`]).
//!
//! Resuming: `Last-Event-ID`, when sent, takes the place of `after` (an `EventSource`
//! reconnects to the URL it started with, whose `after` is stale), in both forms. A job's
//! stream uses `seq` as event ids, the feed its cursor.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    accept::wants_event_stream,
    jobs::parse_job_id,
    problem::ApiError,
    sse::{self, Batch, Then},
    wire::{EventList, EventOut, FeedEventOut, FeedPageOut},
};
use crate::{
    domain::{EventKind, JobStatus},
    error_code::ErrorCode,
    ids::JobId,
    service::{
        ServiceError, Services,
        events::{FeedCursor, FeedFilter},
    },
    storage::changes::Subscription,
    tenancy::{Caller, Tenant},
};

/// Events read at once by a stream.
const STREAM_PAGE: u64 = 100;
/// How soon a feed stream reads again while committed events wait for older transactions.
const PENDING_RECHECK: Duration = Duration::from_millis(200);

fn invalid_query(field: &str, msg: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, msg.clone()).with_field(field, msg)
}

fn page_limit(limit: Option<u64>) -> Result<u64, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(invalid_query(
            "limit",
            "limit must be between 1 and 1000".into(),
        ));
    }
    Ok(limit)
}

/// `Last-Event-ID`, parsed by `parse`, or `None` without one.
fn last_event_id<T>(
    req: &HttpRequest,
    what: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    let Some(value) = req.headers().get("last-event-id") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse)
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidLastEventId,
                format!("Last-Event-ID must be {what}, as the stream sent it"),
            )
        })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value)
        .map_err(|e| ApiError::from(ServiceError::internal("serializing an event", e)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobEventsQuery {
    pub after: Option<i64>,
    pub limit: Option<u64>,
}

/// `GET /v1/jobs/{id}/events`: the job's events after `after` (or `Last-Event-ID`).
pub async fn job_events(
    services: web::Data<Services>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<JobEventsQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let limit = page_limit(query.limit)?;
    let resume = last_event_id(&req, "a sequence number (0 or more)", |text| {
        // Digits only: `+1` or ` 1` are not what a stream sends.
        text.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse::<i64>().ok())
            .flatten()
    })?;
    let after = resume.or(query.after).unwrap_or(0);
    let id = parse_job_id(&id)?;
    if !wants_event_stream(&req) {
        let (_, events) = services
            .job_events_since(&caller.tenant, id, after, limit)
            .await?;
        return Ok(HttpResponse::Ok().json(EventList {
            items: events.iter().map(EventOut::from).collect(),
        }));
    }
    let stream = JobStream {
        // Subscribed before the first read, so an event right after it is heard.
        changes: services.db.changes().subscribe(),
        services: services.clone(),
        tenant: caller.tenant,
        id,
        after,
    };
    sse::start(stream, &req, services.settings.events.heartbeat).await
}

/// A job's events as a stream: `id` = `seq`, `event` = the kind, `data` = the event as the
/// JSON list shows it. Ends after the job's last event (it finished, was canceled or deleted).
struct JobStream {
    services: web::Data<Services>,
    tenant: Tenant,
    changes: Subscription,
    id: JobId,
    after: i64,
}

impl sse::Source for JobStream {
    async fn read(&mut self) -> Result<Batch, ApiError> {
        let (status, events) = self
            .services
            .job_events_since(&self.tenant, self.id, self.after, STREAM_PAGE)
            .await?;
        let mut frames = String::new();
        let mut ended = false;
        for event in &events {
            let data = to_json(&EventOut::from(event))?;
            sse::push_event(
                &mut frames,
                &event.seq.to_string(),
                event.kind.as_str(),
                &data,
            );
            self.after = event.seq;
            ended |= event.kind.is_terminal();
        }
        let everything = (events.len() as u64) < STREAM_PAGE;
        // The status was read before the events: if the job had finished, its last event is
        // among them (or was sent before).
        let then = if ended || (status.is_finished() && everything) {
            Then::End
        } else if everything {
            Then::Wait
        } else {
            Then::ReadAgain
        };
        Ok(Batch { frames, then })
    }

    async fn wait(&mut self, until: Instant) {
        self.changes.changed(self.id.0, until).await
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    pub after: Option<String>,
    pub limit: Option<u64>,
    pub kind: Option<String>,
    #[serde(rename = "type")]
    pub types: Option<String>,
    pub status: Option<String>,
    pub job: Option<String>,
}

/// A comma-separated filter value, each item parsed by `parse`; `None` when the parameter is
/// absent.
fn list<T>(
    field: &str,
    value: &Option<String>,
    allowed: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<Vec<T>>, ApiError> {
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .split(',')
        .map(|item| {
            parse(item).ok_or_else(|| {
                invalid_query(
                    field,
                    format!(
                        "{field} takes a comma-separated list of {}; {item:?} is none of them",
                        allowed.join(", ")
                    ),
                )
            })
        })
        .collect::<Result<Vec<T>, ApiError>>()
        .map(Some)
}

fn feed_filter(services: &Services, q: &FeedQuery) -> Result<FeedFilter, ApiError> {
    let kinds: Vec<&str> = services.kinds.keys().map(String::as_str).collect();
    let job_kinds = list("kind", &q.kind, &kinds, |k| {
        services.kinds.contains_key(k).then(|| k.to_owned())
    })?;
    let type_names = EventKind::ALL.map(EventKind::as_str);
    let types = list("type", &q.types, &type_names, EventKind::parse)?;
    let status_names = JobStatus::ALL.map(JobStatus::as_str);
    let statuses = list("status", &q.status, &status_names, JobStatus::parse)?;
    let job = match &q.job {
        None => None,
        Some(text) => Some(JobId::parse(text).ok_or_else(|| {
            invalid_query("job", format!("job must be a job id (job_…); got {text:?}"))
        })?),
    };
    Ok(FeedFilter {
        job_kinds,
        event_kinds: FeedFilter::event_kinds(types, statuses),
        job,
    })
}

/// `GET /v1/events`: events of every job, in commit order, after the cursor `after` (or
/// `Last-Event-ID`).
pub async fn feed(
    services: web::Data<Services>,
    caller: Caller,
    query: web::Query<FeedQuery>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let limit = page_limit(q.limit)?;
    let filter = feed_filter(&services, &q)?;
    // `None`: now. A client that wants what happens from now on (a dashboard opening) need not
    // page through the whole history first.
    let after = match q.after.as_deref() {
        None => Some(FeedCursor::START),
        Some("now") => None,
        Some(text) => Some(FeedCursor::parse(text).ok_or_else(|| {
            invalid_query(
                "after",
                "after must be `now` or a cursor the feed returned (`next`, or an event's id)"
                    .into(),
            )
        })?),
    };
    let resume = last_event_id(&req, "an event id of the feed", FeedCursor::parse)?;
    let after = match resume.or(after) {
        Some(cursor) => cursor,
        None => services.feed_end(&caller.tenant).await?,
    };
    if !wants_event_stream(&req) {
        let page = services
            .event_feed(&caller.tenant, &filter, after, limit)
            .await?;
        return Ok(HttpResponse::Ok().json(FeedPageOut {
            items: page.events.iter().map(FeedEventOut::from).collect(),
            next: page.next.to_string(),
        }));
    }
    let stream = FeedStream {
        changes: services.db.changes().subscribe(),
        services: services.clone(),
        tenant: caller.tenant,
        filter,
        after,
    };
    sse::start(stream, &req, services.settings.events.heartbeat).await
}

/// The feed as a stream: `id` = the cursor after the event, `event` = the event's kind, `data`
/// = the feed item. Never ends by itself.
struct FeedStream {
    services: web::Data<Services>,
    tenant: Tenant,
    changes: Subscription,
    filter: FeedFilter,
    after: FeedCursor,
}

impl sse::Source for FeedStream {
    async fn read(&mut self) -> Result<Batch, ApiError> {
        let page = self
            .services
            .event_feed(&self.tenant, &self.filter, self.after, STREAM_PAGE)
            .await?;
        let mut frames = String::new();
        for event in &page.events {
            let data = to_json(&FeedEventOut::from(event))?;
            let id = event.cursor.to_string();
            sse::push_event(&mut frames, &id, event.event.kind.as_str(), &data);
        }
        self.after = page.next;
        let then = if page.more {
            Then::ReadAgain
        } else if page.pending {
            Then::WaitAtMost(PENDING_RECHECK)
        } else {
            Then::Wait
        };
        Ok(Batch { frames, then })
    }

    async fn wait(&mut self, until: Instant) {
        self.changes.any_changed(until).await
    }
}
