//! The background sender of webhook deliveries. Every process may run one (`webhooks.deliver`);
//! each takes due deliveries from the outbox under a lease, so one process at a time sends a
//! delivery, and one killed mid-send leaves a lease that runs out (then it is sent again, with
//! the same `webhook-id`, so the receiver can tell).
//!
//! Per job and endpoint, deliveries go out in event order: one is eligible only when no earlier
//! one of the same job for the same endpoint is still pending. A failing receiver therefore
//! holds back its own deliveries, never other endpoints' or the queue: sends run in their own
//! tasks, bounded by `webhooks.concurrency`, each bounded by `webhooks.timeout`.

use std::{sync::Arc, time::Duration};

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    sea_query::{Alias, Expr, ExprTrait, Query},
};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{
    address::{AddressPolicy, GuardedResolver},
    payload, schedule, signing,
};
use crate::storage::lookup::AtMostOne;
use crate::{
    config::{Settings, WebhookSettings},
    storage::{
        Db, StorageError,
        entities::{
            job, job_event, webhook_attempt as attempt, webhook_delivery as delivery,
            webhook_endpoint as endpoint,
        },
        outbox::{FAILED, PENDING, SUCCEEDED},
    },
    time::now_ms,
};

/// How much of a receiver's answer is kept in the delivery log.
const EXCERPT_BYTES: usize = 512;
/// A lease outlives the send's timeout by this much (time to record the outcome).
const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// Progress deliveries of one job to one endpoint go out at most this often.
const PROGRESS_GAP_MS: i64 = 1000;
/// Scans of the outbox, when woken by events, are at least this far apart.
const MIN_SCAN_GAP: Duration = Duration::from_millis(10);

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    /// The receiver answered.
    Answered {
        status: u16,
        excerpt: String,
        retry_after: Option<Duration>,
    },
    /// No answer: refused address, connection error, timeout.
    NoAnswer(String),
    /// Not sent now: the endpoint is disabled, or progress is paced; tried again at `at_ms`
    /// (`None`: when the endpoint is enabled again).
    Postponed(Option<i64>),
    /// Cannot be sent at all (its job or endpoint is gone).
    Abandoned(String),
}

/// Sends due deliveries until `shutdown`.
pub struct Deliverer {
    db: Db,
    settings: WebhookSettings,
    client: reqwest::Client,
    policy: AddressPolicy,
    retry_delays: Vec<Duration>,
    /// This process's lease owner name.
    owner: String,
}

impl Deliverer {
    pub fn new(db: Db, settings: &Settings) -> anyhow::Result<Self> {
        let webhooks = settings.webhooks.clone();
        let policy = AddressPolicy::of(&webhooks);
        let client = reqwest::Client::builder()
            .timeout(webhooks.timeout)
            // A redirect would send the signed event somewhere nobody checked.
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(GuardedResolver::shared(policy))
            .user_agent(concat!("Ferry-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            db,
            retry_delays: webhooks.retry_delays(),
            settings: webhooks,
            client,
            policy,
            owner: format!(
                "{}-{}-{}",
                crate::worker::hostname(),
                std::process::id(),
                ulid::Ulid::new()
            ),
        })
    }

    /// Runs until `shutdown`. Sends still in flight then are dropped: their leases run out and
    /// whichever process is running then sends them again.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut sends = JoinSet::new();
        loop {
            // Taken before the scan, so an event committed during it still wakes the next one.
            let mut wake = self.db.changes().subscribe();
            while sends.try_join_next().is_some() {}
            let free = slots.available_permits();
            if free > 0 {
                match self.claim_due(free as u64).await {
                    Ok(claimed) => {
                        for due in claimed {
                            let Ok(slot) = slots.clone().acquire_owned().await else {
                                return;
                            };
                            let me = self.clone();
                            sends.spawn(async move {
                                me.send(due).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "scanning webhook deliveries failed"),
                }
            }
            let deadline = Instant::now() + self.settings.poll_interval;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.any_change(deadline) => {}
                Some(_) = sends.join_next(), if !sends.is_empty() => {}
            }
            tokio::time::sleep(MIN_SCAN_GAP).await;
        }
        sends.abort_all();
    }

    /// Leases up to `limit` due deliveries to this process.
    async fn claim_due(&self, limit: u64) -> Result<Vec<delivery::Model>, StorageError> {
        let now = now_ms();
        let (e, p) = (Alias::new("e"), Alias::new("p"));
        let mut enabled = Query::select();
        enabled
            .expr(Expr::val(1))
            .from_as(endpoint::Entity, e.clone())
            .and_where(
                Expr::col((e.clone(), endpoint::Column::Id))
                    .equals((delivery::Entity, delivery::Column::EndpointId)),
            )
            .and_where(Expr::col((e, endpoint::Column::Enabled)).eq(true));
        let mut earlier = Query::select();
        earlier
            .expr(Expr::val(1))
            .from_as(delivery::Entity, p.clone())
            .and_where(
                Expr::col((p.clone(), delivery::Column::EndpointId))
                    .equals((delivery::Entity, delivery::Column::EndpointId)),
            )
            .and_where(
                Expr::col((p.clone(), delivery::Column::JobId))
                    .equals((delivery::Entity, delivery::Column::JobId)),
            )
            .and_where(Expr::col((p.clone(), delivery::Column::State)).eq(PENDING))
            .and_where(
                Expr::col((p, delivery::Column::EventSeq))
                    .lt(Expr::col((delivery::Entity, delivery::Column::EventSeq))),
            );
        let due = delivery::Entity::find()
            .filter(delivery::Column::State.eq(PENDING))
            .filter(delivery::Column::NextAttemptAtMs.lte(now))
            .filter(unleased(now))
            .filter(Expr::exists(enabled))
            .filter(Expr::exists(earlier).not())
            .order_by_asc(delivery::Column::NextAttemptAtMs)
            .order_by_asc(delivery::Column::Id)
            .limit(limit)
            .all(&self.db.orm)
            .await?;
        if due.is_empty() {
            return Ok(due);
        }
        // One statement for the whole batch (one commit on SQLite's single writer, not one per
        // delivery), then the rows read back as claimed: a progress delivery that took over a
        // newer event between the scan and the claim is sent with that event.
        let lease_until = now + (self.settings.timeout + LEASE_MARGIN).as_millis() as i64;
        let ids: Vec<i64> = due.iter().map(|row| row.id).collect();
        delivery::Entity::update_many()
            .col_expr(
                delivery::Column::LeaseOwner,
                Expr::value(self.owner.as_str()),
            )
            .col_expr(delivery::Column::LeaseExpiresAtMs, Expr::value(lease_until))
            .filter(delivery::Column::Id.is_in(ids.clone()))
            // The rows are found by id. Written so that no index on `state` can serve it:
            // without statistics SQLite otherwise walked every pending delivery for a batch of
            // four or more (found by tests/api/query_plans.rs).
            .filter(
                Expr::expr(sea_orm::sea_query::Func::coalesce([
                    Expr::col(delivery::Column::State),
                    Expr::val(""),
                ]))
                .eq(PENDING),
            )
            .filter(unleased(now))
            .exec(&self.db.orm)
            .await?;
        Ok(delivery::Entity::find()
            .filter(delivery::Column::Id.is_in(ids))
            .filter(delivery::Column::LeaseOwner.eq(self.owner.as_str()))
            .filter(delivery::Column::LeaseExpiresAtMs.eq(lease_until))
            .order_by_asc(delivery::Column::NextAttemptAtMs)
            .order_by_asc(delivery::Column::Id)
            .all(&self.db.orm)
            .await?)
    }

    async fn send(&self, due: delivery::Model) {
        let started_at_ms = now_ms();
        let clock = Instant::now();
        let (outcome, webhook_id) = match self.attempt(&due).await {
            Ok(sent) => sent,
            Err(e) => {
                // Database trouble: leave the lease to run out; the delivery is retried then.
                tracing::warn!(error = %e, delivery = due.id, "webhook delivery not attempted");
                return;
            }
        };
        let took = clock.elapsed();
        if let Err(e) = self
            .record(&due, outcome, &webhook_id, started_at_ms, took)
            .await
        {
            tracing::warn!(error = %e, delivery = due.id, "recording a webhook attempt failed");
        }
    }

    /// Makes one attempt of `due`: the answer, and the `webhook-id` it was sent with.
    async fn attempt(&self, due: &delivery::Model) -> Result<(Outcome, String), StorageError> {
        let webhook_id = payload::event_id(due.job_id, due.event_seq);
        let orm = &self.db.orm;
        let Some(target) = endpoint::Entity::find_by_id(due.endpoint_id)
            .at_most_one(orm)
            .await?
        else {
            return Ok((
                Outcome::Abandoned("the endpoint was deleted".into()),
                webhook_id,
            ));
        };
        if !target.enabled {
            return Ok((Outcome::Postponed(None), webhook_id));
        }
        if due.event_type == "progress"
            && let Some(last) = self.last_progress_sent_ms(due).await?
            && now_ms() - last < PROGRESS_GAP_MS
        {
            return Ok((Outcome::Postponed(Some(last + PROGRESS_GAP_MS)), webhook_id));
        }
        let event = job_event::Entity::find()
            .filter(job_event::Column::JobId.eq(due.job_id))
            .filter(job_event::Column::Seq.eq(due.event_seq))
            .at_most_one(orm)
            .await?;
        let job = job::Entity::find_by_id(due.job_id)
            .select_only()
            .columns([job::Column::Kind, job::Column::Version])
            .into_tuple::<(String, Option<String>)>()
            .at_most_one(orm)
            .await?;
        let (Some(event), Some((kind, version))) = (event, job) else {
            return Ok((Outcome::Abandoned("the job was deleted".into()), webhook_id));
        };
        let public_url = self.settings.public_url.as_deref();
        let body = payload::body(&event, &kind, version.as_deref(), public_url);
        Ok((self.post(&target, &webhook_id, body).await, webhook_id))
    }

    /// When this job's last progress delivery to this endpoint was tried.
    async fn last_progress_sent_ms(
        &self,
        due: &delivery::Model,
    ) -> Result<Option<i64>, StorageError> {
        Ok(delivery::Entity::find()
            .select_only()
            .column_as(delivery::Column::UpdatedAtMs.max(), "last")
            .filter(delivery::Column::EndpointId.eq(due.endpoint_id))
            .filter(delivery::Column::JobId.eq(due.job_id))
            .filter(delivery::Column::EventType.eq("progress"))
            .filter(delivery::Column::Attempts.gt(0))
            .filter(delivery::Column::Id.ne(due.id))
            .into_tuple::<Option<i64>>()
            .at_most_one(&self.db.orm)
            .await?
            .flatten())
    }

    async fn post(&self, target: &endpoint::Model, webhook_id: &str, body: String) -> Outcome {
        let Ok(url) = url::Url::parse(&target.url) else {
            return Outcome::NoAnswer(format!("{:?} is not a URL", target.url));
        };
        if let Err(why) = self.policy.check_url_host(&url) {
            return Outcome::NoAnswer(format!("not sent: {why}"));
        }
        let now = now_ms();
        let mut secrets = vec![target.secret.as_str()];
        if let (Some(old), Some(until)) = (&target.previous_secret, target.previous_secret_until_ms)
            && until > now
        {
            secrets.push(old);
        }
        let timestamp = now / 1000;
        let signature = match signing::signature(&secrets, webhook_id, timestamp, &body) {
            Ok(signature) => signature,
            Err(e) => {
                return Outcome::NoAnswer(format!("cannot sign with the endpoint's secret: {e}"));
            }
        };
        let sent = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", webhook_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Outcome::NoAnswer(describe(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| schedule::parse_retry_after(v, now));
        Outcome::Answered {
            status,
            excerpt: excerpt(response).await,
            retry_after,
        }
    }

    /// Records the attempt and moves the delivery on: delivered, failed for good (410, or the
    /// schedule is used up), or due again later.
    async fn record(
        &self,
        due: &delivery::Model,
        outcome: Outcome,
        webhook_id: &str,
        started_at_ms: i64,
        took: Duration,
    ) -> Result<(), StorageError> {
        let now = now_ms();
        let mut update = delivery::Entity::update_many()
            .col_expr(
                delivery::Column::LeaseOwner,
                Expr::value(Option::<String>::None),
            )
            .col_expr(
                delivery::Column::LeaseExpiresAtMs,
                Expr::value(Option::<i64>::None),
            )
            .col_expr(delivery::Column::UpdatedAtMs, Expr::value(now))
            .filter(delivery::Column::Id.eq(due.id))
            .filter(delivery::Column::LeaseOwner.eq(self.owner.as_str()))
            .filter(delivery::Column::State.eq(PENDING));
        let (status, error, excerpt, retry_after, retryable) = match outcome {
            Outcome::Postponed(at) => {
                let update = update.col_expr(
                    delivery::Column::NextAttemptAtMs,
                    Expr::value(at.unwrap_or(now)),
                );
                // One statement: no transaction needed.
                update.exec(&self.db.orm).await?;
                return Ok(());
            }
            Outcome::Abandoned(why) => (None, Some(why), None, None, false),
            Outcome::NoAnswer(why) => (None, Some(why), None, None, true),
            Outcome::Answered {
                status,
                excerpt,
                retry_after,
            } => (Some(status), None, Some(excerpt), retry_after, true),
        };
        let attempts = due.attempts + 1;
        let gone = status == Some(410);
        let (state, next) = if matches!(status, Some(200..=299)) {
            (SUCCEEDED, None)
        } else if gone || !retryable {
            (FAILED, None)
        } else {
            match schedule::next_delay(&self.retry_delays, attempts as usize, retry_after) {
                Some(delay) => (PENDING, Some(now + delay.as_millis() as i64)),
                None => (FAILED, None),
            }
        };
        update = update
            .col_expr(delivery::Column::State, Expr::value(state))
            .col_expr(delivery::Column::Attempts, Expr::value(attempts))
            .col_expr(delivery::Column::NextAttemptAtMs, Expr::value(next))
            .col_expr(
                delivery::Column::LastStatusCode,
                Expr::value(status.map(i32::from)),
            )
            .col_expr(delivery::Column::LastError, Expr::value(error.clone()));
        if state == SUCCEEDED {
            update = update.col_expr(delivery::Column::DeliveredAtMs, Expr::value(now));
        }
        let mut tx = self.db.begin().await?;
        tx.execute(
            &attempt::Entity::insert(attempt::ActiveModel {
                delivery_id: sea_orm::Set(due.id),
                endpoint_id: sea_orm::Set(due.endpoint_id),
                job_id: sea_orm::Set(due.job_id),
                number: sea_orm::Set(attempts),
                webhook_id: sea_orm::Set(webhook_id.to_owned()),
                started_at_ms: sea_orm::Set(started_at_ms),
                duration_ms: sea_orm::Set(took.as_millis() as i64),
                status_code: sea_orm::Set(status.map(i32::from)),
                error: sea_orm::Set(error),
                response_excerpt: sea_orm::Set(excerpt),
                ..Default::default()
            })
            .into_query(),
        )
        .await?;
        // Zero rows: this lease ran out and another process took the delivery over; its own
        // attempt decides. This one stays in the log, since it did happen.
        tx.execute(&update.into_query()).await?;
        if gone {
            tx.execute(
                &endpoint::Entity::update_many()
                    .col_expr(endpoint::Column::Enabled, Expr::value(false))
                    .col_expr(endpoint::Column::DisabledReason, Expr::value("gone"))
                    .col_expr(endpoint::Column::UpdatedAtMs, Expr::value(now))
                    .filter(endpoint::Column::Id.eq(due.endpoint_id))
                    .into_query(),
            )
            .await?;
            tracing::warn!(
                endpoint = %due.endpoint_id,
                "webhook receiver answered 410 Gone: endpoint disabled"
            );
        }
        tx.commit().await?;
        self.db.metrics().webhook_attempt(match state {
            SUCCEEDED => "delivered",
            PENDING => "failed",
            _ => "gave_up",
        });
        Ok(())
    }
}

/// Not leased, or the lease ran out.
fn unleased(now_ms: i64) -> sea_orm::Condition {
    sea_orm::Condition::any()
        .add(delivery::Column::LeaseExpiresAtMs.is_null())
        .add(delivery::Column::LeaseExpiresAtMs.lt(now_ms))
}

/// A send error for the delivery log: what happened, without the URL (the log shows that).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let mut cause = String::new();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    if cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    }
}

/// The start of the receiver's answer, read no further than [`EXCERPT_BYTES`] (a receiver
/// streaming an endless body costs nothing).
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while kept.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            _ => break,
        }
    }
    kept.truncate(EXCERPT_BYTES);
    String::from_utf8_lossy(&kept).into_owned()
}
