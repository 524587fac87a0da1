//! Jobs: creation (atomic with its dispatch and with claiming its uploads), reads, listing,
//! cancellation, hard deletion and idempotency keys.

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use futures_util::Stream;
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Set,
    sea_query::{Expr, OnConflict, Query},
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    ServiceError, ServiceResult, Services, holds,
    inputs::{InputRef, InputUpload, PlannedInput},
    lifecycle::{self, Dispatchable, Holder, JobEvent, Transition},
    uploads::UploadMeta,
    webhooks::JobWebhook,
};
use crate::storage::lookup::{AtMostOne, Paged};
use crate::{
    blobs::keys,
    config::{Limits, TenantLimits},
    domain::{JobStatus, cut_text, validate_input_name},
    error_code::ErrorCode,
    ids::{JobId, UploadId},
    metrics::JobMove,
    queue::{self, QueueState},
    storage::entities::{
        idempotency_key, job, job_event, job_input, job_log, result, upload, webhook_attempt,
        webhook_delivery, webhook_endpoint,
    },
    storage::{Tx, TxInner, tenancy},
    telemetry,
    tenancy::Tenant,
    time::now_ms,
};

/// The number of a job's first event (`queued`), written by its creation.
const FIRST_EVENT: i64 = 1;
/// A reservation recorded without a lease (by a process older than the lease) is presumed
/// abandoned this long after it was made.
const IDEMPOTENCY_UNLEASED_STALE_MS: i64 = 15 * 60 * 1000;

pub const MAX_PRIORITY: i32 = 100;
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// The input name of the one-request form when the client gives none.
pub const DEFAULT_INPUT_NAME: &str = "input";
/// Uploads attached, and input rows inserted, per statement.
const INPUT_BATCH: usize = 200;

/// A job request as the client wrote it, before any check.
#[derive(Clone, Debug, Default)]
pub struct JobRequest {
    /// `segment`, `segment@canary` (a tag) or `segment@v3` (a version).
    pub kind: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub priority: Option<i32>,
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    /// The job's own webhook, checked in [`Services::job_spec`].
    pub webhook: Option<JobWebhookRequest>,
}

/// A job's `webhook` member as the client wrote it.
#[derive(Clone, Debug, Default)]
pub struct JobWebhookRequest {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub secret: Option<String>,
}

/// A checked job request: the kind is served and resolved to the version the job runs, every
/// limit is in range and the version's defaults are filled in. Made by [`Services::job_spec`]
/// before any byte of an input is read, so a bad request costs the client nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct JobSpec {
    /// The kind as the client named it (`segment@canary`), which idempotency fingerprints.
    pub kind_ref: String,
    pub kind: String,
    /// The version it resolved to (see [`super::kinds`]) and the tag it followed, if any.
    pub version: Option<String>,
    pub tag: Option<String>,
    /// For a re-run: the job it re-runs, and the bulk re-run that made it (if one did).
    pub rerun_of: Option<Uuid>,
    pub rerun_batch: Option<Uuid>,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub priority: i32,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub webhook: Option<JobWebhook>,
}

/// An `Idempotency-Key` header with the fingerprint of the request it came with.
#[derive(Clone, Debug)]
pub struct Idempotency {
    pub key: String,
    pub fingerprint: String,
}

/// The answer to a job submission.
#[derive(Clone, Debug)]
pub enum Submitted {
    Created(JobView),
    /// The `Idempotency-Key` already created this job.
    Replayed(JobView),
}

/// A job with what the API shows alongside it.
#[derive(Clone, Debug)]
pub struct JobView {
    pub job: job::Model,
    pub inputs: Vec<job_input::Model>,
    pub result_count: u64,
    /// The job's own webhook endpoint: shown in the answer to the creating request only (it
    /// holds the secret, shown once).
    pub webhook: Option<webhook_endpoint::Model>,
    /// For a queued job that no live worker serves: what it waits for a worker of
    /// (`segment@v4`; see [`super::workers`]).
    pub unserved: Option<String>,
}

impl JobView {
    /// The view of a job row, which holds everything the API shows of a job.
    pub fn of(job: job::Model) -> ServiceResult<JobView> {
        let mut inputs: Vec<job_input::Model> = serde_json::from_str(&job.inputs)
            // Written only by `create_job` and the migration: a bug, not a client's mistake.
            .map_err(|e| ServiceError::internal("reading a job's inputs column", e))?;
        for input in &mut inputs {
            input.job_id = job.id;
        }
        Ok(JobView {
            inputs,
            result_count: job.result_count.max(0) as u64,
            webhook: None,
            unserved: None,
            job,
        })
    }
}

/// `ferry_jobs.inputs`: the inputs as JSON, copied onto the job row at creation so that reading
/// a job (a status poll) is reading one row.
fn inputs_column(inputs: &[job_input::Model]) -> String {
    serde_json::to_string(inputs).expect("inputs serialize")
}

#[derive(Clone, Debug, Default)]
pub struct JobFilter {
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    /// Only jobs that have this upload among their inputs.
    pub upload: Option<Uuid>,
    /// Only jobs of this version of their kind.
    pub version: Option<String>,
    /// Only re-runs of this job.
    pub rerun_of: Option<Uuid>,
    /// Only the jobs of this bulk re-run.
    pub rerun_batch: Option<Uuid>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    /// Only jobs older than this one (the `next` cursor).
    pub before_id: Option<Uuid>,
    pub limit: u64,
}

/// Outcome of presenting an `Idempotency-Key`.
enum Reservation {
    /// The key is ours: go ahead and create the job.
    Reserved(HeldKey),
    /// The key already created this job: replay it.
    Replay(Box<JobView>),
}

/// An idempotency key reserved by this request: `holder` is a token of its own, so that only it
/// can renew the reservation's lease or record its job — not a retry that took the key over
/// after this request's lease ran out.
#[derive(Clone, Debug)]
pub(crate) struct HeldKey {
    tenant: Tenant,
    key: String,
    holder: String,
}

/// Gives a reservation back if the request holding it is dropped midway (its client went
/// away): a retry need not wait for the lease to run out.
struct ReleaseOnDrop<'a> {
    services: &'a Services,
    held: Option<HeldKey>,
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let services = self.services.clone();
            runtime.spawn(async move { services.release_idempotency_key(&held).await });
        }
    }
}

/// A checked `Idempotency-Key` header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn parse(key: &str) -> ServiceResult<Self> {
        if key.is_empty() || key.len() > 255 {
            return Err(ServiceError::new(
                ErrorCode::InvalidIdempotencyKey,
                "Idempotency-Key must be 1-255 characters",
            ));
        }
        Ok(Self(key.to_owned()))
    }
}

impl Idempotency {
    /// `key` with a fingerprint of everything that makes the request what it is (`parts`, in
    /// order): the same key with a different request is refused.
    pub fn new(key: IdempotencyKey, parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p.as_bytes());
            h.update([0]);
        }
        Self {
            key: key.0,
            fingerprint: hex::encode(h.finalize()),
        }
    }
}

impl JobSpec {
    /// The spec in a canonical text form, for idempotency fingerprints.
    pub fn canonical(&self) -> String {
        let mut text = format!(
            "{}\0{}\0{}\0{}\0{}",
            self.kind_ref,
            canonical_json(&serde_json::Value::Object(self.params.clone())),
            self.priority,
            self.timeout.as_millis(),
            self.max_attempts
        );
        // Only when given, so keys recorded before webhooks existed fingerprint as before. A
        // generated secret is left out: a retry generates another, and is still the same request.
        if let Some(hook) = &self.webhook {
            text.push_str(&format!(
                "\0{}\0{}",
                hook.subscription.url,
                hook.subscription.events_column()
            ));
        }
        text
    }
}

/// Sorts object keys recursively so equal JSON documents fingerprint equally.
fn canonical_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<_, _> = m.iter().map(|(k, v)| (k.clone(), sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(v).to_string()
}

impl Services {
    pub(crate) fn job_not_found(id: JobId) -> ServiceError {
        ServiceError::new(
            ErrorCode::JobNotFound,
            format!("no job {id}: it never existed or was deleted"),
        )
    }

    /// Checks a job request against the kind it names, resolves the version it runs (a tag is
    /// read now: a job follows the tag as it is when its request arrives) and fills in that
    /// version's defaults.
    pub async fn job_spec(&self, request: JobRequest) -> ServiceResult<JobSpec> {
        let resolved = self.resolve_kind(&request.kind).await?;
        let (default_timeout, default_attempts) =
            self.kinds[&resolved.kind].of_version(resolved.version.as_deref());
        let priority = request.priority.unwrap_or(0);
        if !(0..=MAX_PRIORITY).contains(&priority) {
            return Err(ServiceError::invalid(
                "priority",
                format!("priority must be between 0 and {MAX_PRIORITY} (higher runs first)"),
            ));
        }
        let max_attempts = request.max_attempts.unwrap_or(default_attempts);
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(ServiceError::invalid(
                "max_attempts",
                format!("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let timeout = request.timeout.unwrap_or(default_timeout);
        if timeout.is_zero() || timeout > default_timeout {
            return Err(ServiceError::invalid(
                "timeout",
                format!(
                    "timeout must be positive and at most {} for kind {:?}",
                    humantime::format_duration(default_timeout),
                    request.kind
                ),
            ));
        }
        // Checked here, not when a command cannot start with them: Linux limits one environment
        // variable (FERRY_PARAMS) to 128 KiB, and the job shows its params in every read.
        let params_bytes = serde_json::to_vec(&request.params).map_or(0, |json| json.len());
        let max_params = self.settings.limits.max_params_bytes;
        if params_bytes > max_params {
            return Err(ServiceError::invalid(
                "params",
                format!(
                    "params take {params_bytes} bytes as JSON; the limit is {max_params} \
                     (limits.max_params_bytes). Send large data as an input instead"
                ),
            ));
        }
        let webhook = request
            .webhook
            .map(|w| JobWebhook::parse(&w.url, w.events.as_deref(), w.secret.as_deref()))
            .transpose()?;
        Ok(JobSpec {
            kind_ref: request.kind,
            kind: resolved.kind,
            version: resolved.version,
            tag: resolved.tag,
            rerun_of: None,
            rerun_batch: None,
            params: request.params,
            priority,
            timeout,
            max_attempts,
            webhook,
        })
    }

    /// Creates a job on uploads made earlier (`inputs`: input name → upload id as the client
    /// wrote it), or replays the job an idempotency key created.
    pub async fn submit_job(
        &self,
        tenant: &Tenant,
        spec: JobSpec,
        inputs: BTreeMap<String, InputRef>,
        idempotency: Option<Idempotency>,
    ) -> ServiceResult<Submitted> {
        self.idempotently(tenant, idempotency, |key| {
            self.create_job(tenant, spec, inputs, key)
        })
        .await
    }

    /// Creates a job on inputs already found (a re-run's), or replays the job an idempotency
    /// key created.
    pub(super) async fn submit_planned(
        &self,
        tenant: &Tenant,
        spec: JobSpec,
        inputs: Vec<PlannedInput>,
        idempotency: Option<Idempotency>,
    ) -> ServiceResult<Submitted> {
        self.idempotently(tenant, idempotency, |key| async move {
            self.precheck_queue_room(tenant).await?;
            self.insert_job(tenant, spec, inputs, key).await
        })
        .await
    }

    /// The one-request form: streams `body` into an upload, then creates a job with it as input
    /// `input` (checked here, before the body is read). A job that cannot be created takes its
    /// upload with it.
    pub async fn submit_job_with_body<S, E>(
        &self,
        tenant: &Tenant,
        spec: JobSpec,
        input: String,
        body: S,
        meta: UploadMeta,
        idempotency: Option<Idempotency>,
    ) -> ServiceResult<Submitted>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        validate_input_name(&input)
            .map_err(|msg| ServiceError::invalid("input", format!("input name {msg}")))?;
        // Before the body is read: a refused address or a full queue should not cost an upload.
        self.check_job_webhook(&spec).await?;
        self.precheck_queue_room(tenant).await?;
        self.idempotently(tenant, idempotency, |key| async move {
            // Recorded by the job's own transaction: one commit for the upload and the job.
            let upload = self.store_upload(tenant, body, meta).await?;
            let id = UploadId(upload.id);
            let created = self
                .insert_job(
                    tenant,
                    spec,
                    vec![PlannedInput::single(input, InputUpload::Stored(upload))],
                    key,
                )
                .await;
            // Bytes whose row did not commit are not kept. (If the commit's outcome is unknown
            // and the row is there after all, they stay: the job needs them.)
            if created.is_err() {
                let missing = |e: &ServiceError| e.code == ErrorCode::UploadNotFound;
                if self
                    .get_upload(tenant, id)
                    .await
                    .as_ref()
                    .is_err_and(missing)
                {
                    self.discard_stored_upload(id).await;
                }
            }
            created
        })
        .await
    }

    /// Runs `create` under an idempotency key: replays what the key created before, or reserves
    /// the key (handing it to `create`, which records it with the job) and releases it again if
    /// `create` fails or is dropped, so the client can retry with it. While `create` runs, the
    /// reservation's lease is renewed; if this process dies, the lease runs out within
    /// `queue.lease_ttl` and a retry takes the key over.
    async fn idempotently<F, Fut>(
        &self,
        tenant: &Tenant,
        idempotency: Option<Idempotency>,
        create: F,
    ) -> ServiceResult<Submitted>
    where
        F: FnOnce(Option<HeldKey>) -> Fut,
        Fut: std::future::Future<Output = ServiceResult<JobView>>,
    {
        let Some(idempotency) = idempotency else {
            return create(None).await.map(Submitted::Created);
        };
        let held = match self.reserve_idempotency_key(tenant, &idempotency).await? {
            Reservation::Replay(view) => return Ok(Submitted::Replayed(*view)),
            Reservation::Reserved(held) => held,
        };
        let mut release = ReleaseOnDrop {
            services: self,
            held: Some(held.clone()),
        };
        let outcome = tokio::select! {
            outcome = create(Some(held.clone())) => outcome,
            never = self.renew_idempotency_lease(&held) => match never {},
        };
        release.held = None;
        match outcome {
            Ok(view) => Ok(Submitted::Created(view)),
            Err(err) => {
                self.release_idempotency_key(&held).await;
                Err(err)
            }
        }
    }

    /// Claims the key for this request, or says what to replay.
    async fn reserve_idempotency_key(
        &self,
        tenant: &Tenant,
        idem: &Idempotency,
    ) -> ServiceResult<Reservation> {
        let (key, fingerprint) = (idem.key.as_str(), idem.fingerprint.as_str());
        let now = now_ms();
        let held = HeldKey {
            tenant: tenant.clone(),
            key: key.to_owned(),
            holder: Uuid::now_v7().simple().to_string(),
        };
        let inserted = idempotency_key::Entity::insert(idempotency_key::ActiveModel {
            tenant: Set(tenant.as_str().to_owned()),
            key: Set(key.to_owned()),
            fingerprint: Set(fingerprint.to_owned()),
            job_id: Set(None),
            created_at_ms: Set(now),
            holder: Set(Some(held.holder.clone())),
            lease_expires_at_ms: Set(Some(now + self.lease_ttl_ms())),
        })
        .on_conflict(
            OnConflict::columns([
                idempotency_key::Column::Tenant,
                idempotency_key::Column::Key,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&self.db.orm)
        .await?;
        if inserted == 1 {
            return Ok(Reservation::Reserved(held));
        }
        let existing =
            idempotency_key::Entity::find_by_id((tenant.as_str().to_owned(), key.to_owned()))
                .at_most_one(&self.db.orm)
                .await?
                .ok_or_else(|| {
                    ServiceError::new(
                        ErrorCode::IdempotencyKeyInFlight,
                        "a request with this Idempotency-Key just finished failing; retry",
                    )
                })?;
        if existing.fingerprint != fingerprint {
            return Err(ServiceError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used with a different request; use a new key \
                 for a new request",
            ));
        }
        if let Some(job_id) = existing.job_id {
            let mut view = self.get_job(tenant, JobId(job_id)).await?;
            // The replayed answer is the first one: with the job's webhook and its secret.
            view.webhook = tenancy::find::<webhook_endpoint::Entity>(tenant)
                .filter(webhook_endpoint::Column::JobId.eq(job_id))
                .at_most_one(&self.db.orm)
                .await?;
            return Ok(Reservation::Replay(Box::new(view)));
        }
        let expires = existing
            .lease_expires_at_ms
            .unwrap_or(existing.created_at_ms + IDEMPOTENCY_UNLEASED_STALE_MS);
        if expires >= now {
            return Err(in_flight());
        }
        // The holder stopped renewing (its process died): take the key over, unless another
        // retry just did (the holder token is the compare-and-set).
        let mut take_over = idempotency_key::Entity::update_many()
            .col_expr(
                idempotency_key::Column::Holder,
                Expr::value(held.holder.clone()),
            )
            .col_expr(
                idempotency_key::Column::LeaseExpiresAtMs,
                Expr::value(now + self.lease_ttl_ms()),
            )
            .filter(idempotency_key::Column::Tenant.eq(tenant.as_str()))
            .filter(idempotency_key::Column::Key.eq(key))
            .filter(idempotency_key::Column::JobId.is_null());
        take_over = match &existing.holder {
            Some(holder) => take_over.filter(idempotency_key::Column::Holder.eq(holder.as_str())),
            None => take_over.filter(idempotency_key::Column::Holder.is_null()),
        };
        if take_over.exec(&self.db.orm).await?.rows_affected == 1 {
            tracing::info!(
                idempotency_key = key,
                "took over an idempotency key whose request stopped renewing it"
            );
            Ok(Reservation::Reserved(held))
        } else {
            Err(in_flight())
        }
    }

    /// Keeps a reservation's lease alive while its request runs; never returns (the request
    /// finishing drops it).
    async fn renew_idempotency_lease(&self, held: &HeldKey) -> std::convert::Infallible {
        let every = self.settings.queue.lease_ttl / 3;
        loop {
            tokio::time::sleep(every).await;
            let renewed = idempotency_key::Entity::update_many()
                .col_expr(
                    idempotency_key::Column::LeaseExpiresAtMs,
                    Expr::value(now_ms() + self.lease_ttl_ms()),
                )
                .filter(idempotency_key::Column::Tenant.eq(held.tenant.as_str()))
                .filter(idempotency_key::Column::Key.eq(held.key.as_str()))
                .filter(idempotency_key::Column::Holder.eq(held.holder.as_str()))
                .filter(idempotency_key::Column::JobId.is_null())
                .exec(&self.db.orm)
                .await;
            match renewed {
                Ok(r) if r.rows_affected == 0 => {
                    // Taken over after a long stall: the job this request may still create is
                    // refused when it tries to record the key (see `create_job`).
                    tracing::warn!(idempotency_key = %held.key, "idempotency reservation lost");
                    return std::future::pending().await;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "renewing an idempotency key failed"),
            }
        }
    }

    /// Gives a reservation back after the request failed.
    async fn release_idempotency_key(&self, held: &HeldKey) {
        let res = idempotency_key::Entity::delete_many()
            .filter(idempotency_key::Column::Tenant.eq(held.tenant.as_str()))
            .filter(idempotency_key::Column::Key.eq(held.key.as_str()))
            .filter(idempotency_key::Column::Holder.eq(held.holder.as_str()))
            .filter(idempotency_key::Column::JobId.is_null())
            .exec(&self.db.orm)
            .await;
        if let Err(err) = res {
            tracing::warn!(error = %err, "could not release an idempotency key");
        }
    }

    /// Creates a job from uploads recorded earlier (`POST /v1/uploads`), given by id.
    async fn create_job(
        &self,
        tenant: &Tenant,
        spec: JobSpec,
        input_ids: BTreeMap<String, InputRef>,
        idempotency_key: Option<HeldKey>,
    ) -> ServiceResult<JobView> {
        let uploads = self.recorded_inputs(tenant, input_ids).await?;
        self.check_job_webhook(&spec).await?;
        self.insert_job(tenant, spec, uploads, idempotency_key)
            .await
    }

    /// Refuses a job webhook whose addresses the configuration does not allow.
    async fn check_job_webhook(&self, spec: &JobSpec) -> ServiceResult<()> {
        match &spec.webhook {
            Some(hook) => {
                self.check_addresses("webhook.url", &hook.subscription)
                    .await
            }
            None => Ok(()),
        }
    }

    /// In the creating transaction: takes a hold on the uploads recorded earlier (see
    /// [`holds`]), records one this request stored, and inserts the job's input
    /// rows (in batches: a series of 2,000 slices is a few statements, not 4,000).
    async fn attach_inputs(
        &self,
        tx: &mut Tx,
        tenant: &Tenant,
        uploads: &[PlannedInput],
        inputs: &[job_input::Model],
        now: i64,
    ) -> ServiceResult<()> {
        let recorded: Vec<Uuid> = uploads
            .iter()
            .filter_map(|planned| match &planned.upload {
                InputUpload::Recorded(row) => Some(row.id),
                InputUpload::Stored(_) => None,
            })
            .collect();
        if !holds::take(tx, tenant.as_str(), &recorded, now).await? {
            // Dropping `tx` rolls everything back.
            let field = match uploads {
                [one] => format!("inputs.{}", one.path),
                _ => "inputs".to_owned(),
            };
            return Err(ServiceError::invalid(
                field,
                "an upload among the inputs expired or was deleted meanwhile; upload it again",
            ));
        }
        for planned in uploads {
            if let InputUpload::Stored(row) = &planned.upload {
                let recorded = upload::Model {
                    job_count: 1,
                    expires_at_ms: None,
                    ..row.clone()
                };
                tx.execute(
                    &upload::Entity::insert(upload::ActiveModel::from(recorded)).into_query(),
                )
                .await?;
            }
        }
        for batch in inputs.chunks(INPUT_BATCH) {
            let rows = batch.iter().cloned().map(job_input::ActiveModel::from);
            tx.execute(&job_input::Entity::insert_many(rows).into_query())
                .await?;
        }
        Ok(())
    }

    /// In the creating transaction: adds the uploads this request stored (and
    /// [`Services::attach_inputs`] recorded) to the tenant's day.
    async fn count_stored_uploads(
        tx: &mut Tx,
        tenant: &Tenant,
        uploads: &[PlannedInput],
    ) -> ServiceResult<()> {
        for planned in uploads {
            if let InputUpload::Stored(row) = &planned.upload {
                Self::count_uploaded(tx, tenant.as_str(), row.size, row.created_at_ms).await?;
            }
        }
        Ok(())
    }

    /// Creates a job: one transaction inserts the job, its inputs and its first event, records
    /// or attaches its uploads, records the idempotency key and enqueues the dispatch.
    pub(super) async fn insert_job(
        &self,
        tenant: &Tenant,
        spec: JobSpec,
        uploads: Vec<PlannedInput>,
        idempotency_key: Option<HeldKey>,
    ) -> ServiceResult<JobView> {
        let mut tx = self.db.begin().await?;
        let view = self
            .insert_job_in(&mut tx, tenant, spec, uploads, idempotency_key)
            .await?;
        tx.commit().await?;
        let (id, job) = (JobId(view.job.id), &view.job);
        tracing::info!(job_id = %id, kind = %job.kind, version = ?job.version, "job queued");
        // The job as created, not re-read: a worker may already have claimed it, and the answer
        // to the request that queued it should say "queued".
        let mut view = view;
        self.mark_unserved(std::slice::from_mut(&mut view)).await?;
        Ok(view)
    }

    /// [`Services::insert_job`] in `tx`, which the caller commits (a bulk re-run creates all
    /// its jobs in one transaction).
    pub(super) async fn insert_job_in(
        &self,
        tx: &mut Tx,
        tenant: &Tenant,
        spec: JobSpec,
        mut uploads: Vec<PlannedInput>,
        idempotency_key: Option<HeldKey>,
    ) -> ServiceResult<JobView> {
        let id = JobId::new();
        let now = now_ms();
        let dispatch_id = queue::new_dispatch_id(now);
        let retention = Retained::of(&self.settings.tenant_limits(tenant.as_str()));
        let webhook = spec
            .webhook
            .as_ref()
            .map(|hook| hook.row(tenant, id.0, now));
        // In name order, a list's items in their order, as the job shows them.
        uploads.sort_by(|a, b| a.order_key().cmp(&b.order_key()));
        let inputs: Vec<job_input::Model> = uploads
            .iter()
            .map(|planned| {
                let row = planned.upload.row();
                job_input::Model {
                    job_id: id.0,
                    name: planned.path.clone(),
                    upload_id: row.id,
                    size: row.size,
                    sha256: row.sha256.clone(),
                    blob_key: row.blob_key.clone(),
                    input: planned.list.as_ref().map(|(name, _)| name.clone()),
                    position: planned.list.as_ref().map(|(_, position)| *position),
                }
            })
            .collect();
        telemetry::mark_job(&tracing::Span::current(), id);
        let row = job::Model {
            id: id.0,
            tenant: tenant.as_str().to_owned(),
            kind: spec.kind.clone(),
            version: spec.version.clone(),
            tag: spec.tag.clone(),
            rerun_of: spec.rerun_of,
            latest_rerun: None,
            rerun_batch: spec.rerun_batch,
            error_code: None,
            // Its attempts continue the trace of the request that created it.
            traceparent: telemetry::current_traceparent(),
            status: JobStatus::Queued,
            params: serde_json::Value::Object(spec.params).to_string(),
            priority: spec.priority,
            timeout_ms: spec.timeout.as_millis() as i64,
            max_attempts: spec.max_attempts as i32,
            attempt: 0,
            progress_percent: None,
            progress_stage: None,
            progress_message: None,
            progress_updated_at_ms: None,
            error: None,
            created_at_ms: now,
            started_at_ms: None,
            finished_at_ms: None,
            updated_at_ms: now,
            run_after_ms: now,
            dispatch_id: Some(dispatch_id.clone()),
            lease_owner: None,
            lease_expires_at_ms: None,
            cancel_requested: false,
            // Its first event's number, written with it (see `Tx::insert_event`).
            event_seq: FIRST_EVENT,
            inputs: inputs_column(&inputs),
            result_count: 0,
            retain_ms: retention.job,
            retain_inputs_ms: retention.inputs,
            expires_at_ms: None,
            inputs_expire_at_ms: None,
            inputs_deleted_at_ms: None,
        };

        let active: job::ActiveModel = row.clone().into();
        tx.execute(&job::Entity::insert(active).into_query())
            .await?;
        tx.job_changed(id.0);
        self.attach_inputs(tx, tenant, &uploads, &inputs, now)
            .await?;
        if let Some(rerun_of) = row.rerun_of {
            tx.execute(
                &job::Entity::update_many()
                    .col_expr(job::Column::LatestRerun, Expr::value(id.0))
                    .col_expr(job::Column::UpdatedAtMs, Expr::value(now))
                    .filter(job::Column::Id.eq(rerun_of))
                    .into_query(),
            )
            .await?;
            tx.job_changed(rerun_of);
        }
        // Before the first event, so that the endpoint gets it if it asked for `queued`.
        if let Some(hook) = &webhook {
            tx.execute(
                &webhook_endpoint::Entity::insert(webhook_endpoint::ActiveModel::from(
                    hook.clone(),
                ))
                .into_query(),
            )
            .await?;
        }
        let created = JobEvent::Queued;
        let mut data = created.data();
        // The job's log records the model it was created for (its kind's version, and the tag
        // it followed), as the job row does.
        if let Some(version) = &row.version {
            data["version"] = serde_json::json!(version);
            data["tag"] = serde_json::json!(row.tag);
        }
        tx.insert_event(id.0, FIRST_EVENT, created.kind(), data)
            .await?;
        tx.count(JobMove::Created {
            kind: row.kind.clone(),
            version: row.version.clone(),
        });
        if let Some(held) = idempotency_key {
            let recorded = tx
                .execute(
                    &idempotency_key::Entity::update_many()
                        .col_expr(idempotency_key::Column::JobId, Expr::value(id.0))
                        .col_expr(
                            idempotency_key::Column::LeaseExpiresAtMs,
                            Expr::value(Option::<i64>::None),
                        )
                        .filter(idempotency_key::Column::Tenant.eq(held.tenant.as_str()))
                        .filter(idempotency_key::Column::Key.eq(held.key.as_str()))
                        .filter(idempotency_key::Column::Holder.eq(held.holder.as_str()))
                        .filter(idempotency_key::Column::JobId.is_null())
                        .into_query(),
                )
                .await?;
            if recorded != 1 {
                // A retry took the key over while this request stalled: it creates the job.
                // Dropping `tx` rolls this one back.
                return Err(in_flight());
            }
        }
        // Last, what makes creations of one tenant take turns on PostgreSQL (the day's upload
        // ledger row, the tenant's queue lock; see `check_queue_room`), so that they wait for
        // each other for as few statements as possible.
        Self::count_stored_uploads(tx, tenant, &uploads).await?;
        let queue_state = self.check_queue_room(tx, tenant, &row).await?;
        let dispatchable = Dispatchable::from(&row);
        lifecycle::dispatch(tx, &dispatchable, dispatch_id, Some(queue_state), now).await?;
        Ok(JobView {
            job: row,
            inputs,
            result_count: 0,
            webhook,
            unserved: None,
        })
    }

    /// `tenant`'s job `id`; another tenant's is not found, like one that never existed.
    pub async fn get_job(&self, tenant: &Tenant, id: JobId) -> ServiceResult<JobView> {
        let job = self.db.find_tenant_job(tenant, id.0).await?;
        self.job_view(id, job).await
    }

    /// [`Services::get_job`] for a status poll, which may be answered from memory (see
    /// [`Db::poll_tenant_job`](crate::storage::Db::poll_tenant_job)).
    pub async fn poll_job(&self, tenant: &Tenant, id: JobId) -> ServiceResult<JobView> {
        let job = self.db.poll_tenant_job(tenant, id.0).await?;
        self.job_view(id, job).await
    }

    /// Job `id` as the API shows it, from its row (`None`: not found).
    async fn job_view(&self, id: JobId, job: Option<job::Model>) -> ServiceResult<JobView> {
        let mut view = JobView::of(job.ok_or_else(|| Self::job_not_found(id))?)?;
        self.mark_unserved(std::slice::from_mut(&mut view)).await?;
        Ok(view)
    }

    /// Jobs as the API shows them: everything is on the job row (see [`inputs_column`]).
    fn views(jobs: Vec<job::Model>) -> ServiceResult<Vec<JobView>> {
        jobs.into_iter().map(JobView::of).collect()
    }

    /// Newest first. Returns the page and whether more jobs follow it.
    pub async fn list_jobs(
        &self,
        tenant: &Tenant,
        filter: JobFilter,
    ) -> ServiceResult<(Vec<JobView>, bool)> {
        let mut query = tenancy::find::<job::Entity>(tenant).order_by_desc(job::Column::Id);
        if let Some(status) = filter.status {
            query = query.filter(job::Column::Status.eq(status));
        }
        if let Some(kind) = &filter.kind {
            query = query.filter(job::Column::Kind.eq(kind.as_str()));
        }
        if let Some(upload) = filter.upload {
            query = query.filter(
                job::Column::Id.in_subquery(
                    Query::select()
                        .column(job_input::Column::JobId)
                        .from(job_input::Entity)
                        .and_where(job_input::Column::UploadId.eq(upload))
                        .to_owned(),
                ),
            );
        }
        if let Some(version) = &filter.version {
            query = query.filter(job::Column::Version.eq(version.as_str()));
        }
        if let Some(rerun_of) = filter.rerun_of {
            query = query.filter(job::Column::RerunOf.eq(rerun_of));
        }
        if let Some(batch) = filter.rerun_batch {
            query = query.filter(job::Column::RerunBatch.eq(batch));
        }
        if let Some(after) = filter.created_after_ms {
            query = query.filter(job::Column::CreatedAtMs.gt(after));
        }
        if let Some(before) = filter.created_before_ms {
            query = query.filter(job::Column::CreatedAtMs.lt(before));
        }
        if let Some(cursor) = filter.before_id {
            query = query.filter(job::Column::Id.lt(cursor));
        }
        let (rows, more) = query.page(filter.limit, &self.db.reads).await?;
        let mut views = Self::views(rows)?;
        self.mark_unserved(&mut views).await?;
        Ok((views, more))
    }

    /// Cancels a queued job at once; asks the worker of a running job to stop it (within about a
    /// second), keeping the results it already published.
    pub async fn cancel_job(&self, tenant: &Tenant, id: JobId) -> ServiceResult<JobView> {
        // Whose it is, first: the transitions below act on the job by id.
        self.get_job(tenant, id).await?;
        // The transitions decide (a job may finish at any moment); the job is read again,
        // afterwards, for the answer.
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let mut changed = false;
        for cancel in [Transition::CancelQueued, Transition::RequestCancel] {
            if lifecycle::apply(&mut tx, id.0, Holder::Anyone, cancel, now)
                .await?
                .is_some()
            {
                changed = true;
                break;
            }
        }
        tx.commit().await?;
        let after = self.get_job(tenant, id).await?;
        if !changed && after.job.status.is_finished() {
            return Err(ServiceError::new(
                ErrorCode::JobFinished,
                format!(
                    "job {id} already finished as {}; nothing to cancel",
                    after.job.status
                ),
            ));
        }
        tracing::info!(job_id = %id, "cancel requested");
        Ok(after)
    }

    /// Hard deletion: the job, its events, logs and results, and the uploads among its inputs
    /// that no other job holds (see [`holds`]). A running job's lease is revoked first, so its
    /// worker stops it and can publish nothing more; then the results' bytes go, then the rows.
    /// Interrupted, it can simply be called again.
    ///
    /// Work folders (copies of the inputs) on this machine go at once, with any processes of the
    /// job; on other machines, their workers' sweep removes them (`sweep_work_folders`).
    pub async fn delete_job(&self, tenant: &Tenant, id: JobId) -> ServiceResult<()> {
        let current = self.get_job(tenant, id).await?;
        // Revoked first (refused, harmlessly, for a finished job): its worker stops and can
        // publish nothing more while the bytes go.
        self.transition(id.0, Holder::Anyone, Transition::Revoke, now_ms())
            .await?;

        let root = self.settings.work_dir();
        let local = tokio::task::spawn_blocking(move || crate::workspace::remove_job(&root, id.0))
            .await
            .map_err(|e| ServiceError::internal("removing work folders failed", e))?;
        if local > 0 {
            tracing::info!(job_id = %id, folders = local, "removed the job's work folders");
        }

        self.blobs.delete_prefix(&keys::job_prefix(id.0)).await?;

        let uploads: Vec<Uuid> = current.inputs.iter().map(|input| input.upload_id).collect();
        let mut tx = self.db.begin().await?;
        // Its uploads are let go of once: not again if retention already deleted its inputs.
        let releasing = tx
            .execute(
                &job::Entity::update_many()
                    .col_expr(job::Column::InputsDeletedAtMs, Expr::value(now_ms()))
                    .filter(job::Column::Id.eq(id.0))
                    .filter(job::Column::InputsDeletedAtMs.is_null())
                    .into_query(),
            )
            .await?;
        if releasing == 1 {
            holds::release(&mut tx, &uploads).await?;
        }
        for rows in [
            result::Entity::delete_many()
                .filter(result::Column::JobId.eq(id.0))
                .into_query(),
            job_event::Entity::delete_many()
                .filter(job_event::Column::JobId.eq(id.0))
                .into_query(),
            job_log::Entity::delete_many()
                .filter(job_log::Column::JobId.eq(id.0))
                .into_query(),
            job_input::Entity::delete_many()
                .filter(job_input::Column::JobId.eq(id.0))
                .into_query(),
            idempotency_key::Entity::delete_many()
                .filter(idempotency_key::Column::JobId.eq(id.0))
                .into_query(),
            webhook_attempt::Entity::delete_many()
                .filter(webhook_attempt::Column::JobId.eq(id.0))
                .into_query(),
            webhook_delivery::Entity::delete_many()
                .filter(webhook_delivery::Column::JobId.eq(id.0))
                .into_query(),
            webhook_endpoint::Entity::delete_many()
                .filter(webhook_endpoint::Column::JobId.eq(id.0))
                .into_query(),
            job::Entity::delete_many()
                .filter(job::Column::Id.eq(id.0))
                .into_query(),
        ] {
            tx.execute(&rows).await?;
        }
        // Waiting requests answer 404 at once.
        tx.job_changed(id.0);
        tx.commit().await?;
        // Inputs no other job holds go with it (or, if this process dies first, with the
        // reconciler's sweep of expired uploads).
        let purged = self.purge_released(&uploads).await?;
        tracing::info!(job_id = %id, purged_uploads = purged, "job deleted with its results");
        Ok(())
    }

    /// The last `tail` log lines, oldest first, each cut to `limits.max_log_line_bytes`, and
    /// together within `limits.max_log_bytes_per_job` (counted as the stored log is).
    pub async fn job_logs(
        &self,
        tenant: &Tenant,
        id: JobId,
        tail: u64,
    ) -> ServiceResult<Vec<job_log::Model>> {
        self.get_job(tenant, id).await?;
        let limits = &self.settings.limits;
        // Cut in the query (to characters, one more than fits, so a cut line gets its mark):
        // rows stored before lines were cut, e.g. by an older worker during an upgrade, cost no
        // more to read than a line.
        let line = format!("SUBSTR(line, 1, {})", limits.max_log_line_bytes + 1);
        let newest = job_log::Entity::find()
            .select_only()
            .columns([
                job_log::Column::Id,
                job_log::Column::JobId,
                job_log::Column::Attempt,
                job_log::Column::CreatedAtMs,
            ])
            .expr_as(Expr::cust(line), "line")
            .filter(job_log::Column::JobId.eq(id.0))
            .order_by_desc(job_log::Column::Id)
            .limit(tail)
            .into_model::<job_log::Model>()
            .all(&self.db.orm)
            .await?;
        let mut budget = limits.max_log_bytes_per_job;
        let mut lines = Vec::with_capacity(newest.len());
        for mut row in newest {
            cut_text(&mut row.line, limits.max_log_line_bytes);
            let cost = Limits::log_line_cost(row.line.len());
            if cost > budget {
                break;
            }
            budget -= cost;
            lines.push(row);
        }
        lines.reverse();
        Ok(lines)
    }
}

impl Services {
    /// [`Services::check_queue_room`] before a body is read, outside any transaction (so not
    /// exact: the creating transaction checks again).
    pub(super) async fn precheck_queue_room(&self, tenant: &Tenant) -> ServiceResult<()> {
        let limit = self.settings.tenant_limits(tenant.as_str()).max_queued_jobs;
        if limit == 0 {
            return Ok(());
        }
        let queued = tenancy::find::<job::Entity>(tenant)
            .filter(job::Column::Status.eq(JobStatus::Queued))
            .count(&self.db.reads)
            .await?;
        if queued >= limit {
            return Err(queue_full(tenant, queued));
        }
        Ok(())
    }

    /// Refuses a new job while `tenant` has its most jobs queued (`max_queued_jobs`), and
    /// reads where the job goes in its queue (the same count serves both). Run in the creating
    /// transaction, after the job's row is inserted, it is exact: on SQLite the writer is one at
    /// a time, on PostgreSQL a lock per tenant, held to the commit, makes creations of one
    /// tenant take turns (so the later it is taken, the less they wait).
    async fn check_queue_room(
        &self,
        tx: &mut Tx,
        tenant: &Tenant,
        job: &job::Model,
    ) -> ServiceResult<QueueState> {
        let limit = self.settings.tenant_limits(tenant.as_str()).max_queued_jobs;
        if limit > 0 && matches!(tx.inner, TxInner::Postgres(_)) {
            tx.execute(Query::select().expr(Expr::cust_with_values(
                "pg_advisory_xact_lock(hashtext($1))",
                [format!("ferry-queue:{tenant}")],
            )))
            .await?;
        }
        let dispatch = Dispatchable::from(job);
        let mut state = QueueState::read(
            tx,
            tenant.as_str(),
            &dispatch.serves,
            dispatch.queue_priority,
        )
        .await?;
        // The job itself, inserted in this transaction, is among them.
        state.tenant_queued = (state.tenant_queued - 1).max(0);
        let queued = state.tenant_queued as u64;
        if limit > 0 && queued >= limit {
            return Err(queue_full(tenant, queued));
        }
        Ok(state)
    }
}

/// How long a job keeps itself and its inputs once finished, fixed when it is created (a later
/// change of its tenant's retention applies to jobs created after it).
struct Retained {
    job: Option<i64>,
    inputs: Option<i64>,
}

impl Retained {
    fn of(limits: &TenantLimits) -> Self {
        let job = limits.job_retention.as_millis();
        // Inputs kept longer than their job would go with it anyway.
        let inputs = match (limits.input_retention.as_millis(), job) {
            (Some(inputs), Some(job)) => Some(inputs.min(job)),
            (inputs, _) => inputs,
        };
        Self { job, inputs }
    }
}

fn queue_full(tenant: &Tenant, queued: u64) -> ServiceError {
    ServiceError::new(
        ErrorCode::QueueFull,
        format!(
            "tenant {tenant} already has {queued} jobs queued, its limit (max_queued_jobs); \
             retry once some of them have started"
        ),
    )
}

fn in_flight() -> ServiceError {
    ServiceError::new(
        ErrorCode::IdempotencyKeyInFlight,
        "a request with this Idempotency-Key is still being processed; retry when it has finished",
    )
}
