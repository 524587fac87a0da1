//! Re-runs: a new job with the same inputs (held, not copied: see [`super::holds`]) and params
//! as an earlier one, after a fix. The new job names the one it re-runs (`rerun_of`), and that
//! job its latest re-run. A re-run follows the tag its job followed (so that moving the tag to
//! the fixed version is the fix), or runs the version its job named; the request may name
//! another version or tag, and other params.
//!
//! A bulk re-run (`POST /v1/jobs/rerun`) re-runs the jobs a filter matches — by default the
//! failed ones not re-run yet, oldest first — at most `limit` per call, in one transaction (all
//! or nothing), recorded as a batch with its idempotency key. Its jobs go into the queue behind
//! the other work of their priority (`queue::queue_priority`), so a re-run of thousands does
//! not hold up what clients submit meanwhile; they count against the tenant's queue limit like
//! any job, and a batch stops where the queue is full (the rest are `remaining`).

use std::collections::{HashMap, HashSet};

use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    ServiceError, ServiceResult, Services,
    inputs::{InputUpload, PlannedInput},
    jobs::{Idempotency, IdempotencyKey, JobRequest, JobSpec, JobView, MAX_PRIORITY, Submitted},
};
use crate::{
    domain::{JobStatus, serve_key, validate_kind},
    error_code::ErrorCode,
    ids::{JobId, RerunBatchId},
    storage::{
        entities::{job, rerun_batch, upload},
        lookup::AtMostOne,
        tenancy,
    },
    tenancy::Tenant,
    time::now_ms,
};

/// Jobs one bulk re-run makes at most.
pub const MAX_BULK: u64 = 1000;
/// ... and by default.
pub const DEFAULT_BULK: u64 = 100;

/// What may change in a re-run; the rest is the job's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RerunChanges {
    /// A version or tag of the job's kind to run instead.
    pub version: Option<String>,
    /// Params to run with instead (the whole object).
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    pub priority: Option<i32>,
}

/// Which jobs a bulk re-run re-runs; every filter given must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RerunFilter {
    /// Default: `failed`.
    pub status: Option<JobStatus>,
    pub kind: Option<String>,
    pub version: Option<String>,
    pub error_code: Option<String>,
    pub created_after_ms: Option<i64>,
    pub created_before_ms: Option<i64>,
    /// Also jobs re-run before (default: only jobs not re-run yet, so that calling again
    /// continues where the last call stopped).
    pub include_rerun: bool,
}

/// A bulk re-run as asked.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkRerun {
    pub filter: RerunFilter,
    /// What changes in every re-run (no `params`: each keeps its own).
    pub version: Option<String>,
    pub priority: Option<i32>,
    pub limit: u64,
}

/// What a bulk re-run made.
#[derive(Clone, Debug)]
pub struct BatchView {
    pub batch: rerun_batch::Model,
    /// Whether this answer replays an earlier request's (same idempotency key).
    pub replayed: bool,
}

impl Services {
    /// Re-runs `tenant`'s job `id` with `changes`.
    pub async fn rerun_job(
        &self,
        tenant: &Tenant,
        id: JobId,
        changes: RerunChanges,
        idempotency_key: Option<IdempotencyKey>,
    ) -> ServiceResult<Submitted> {
        let old = self.get_job(tenant, id).await?;
        let spec = self.rerun_spec(&old, &changes, None).await?;
        let inputs = self.inputs_of(&old).await?;
        // The request as asked, not as resolved: a retry after a tag moved is the same request.
        let asked = serde_json::to_string(&changes).expect("changes serialize");
        let idempotency =
            idempotency_key.map(|key| Idempotency::new(key, &["rerun", &id.to_string(), &asked]));
        self.submit_planned(tenant, spec, inputs, idempotency).await
    }

    /// The spec of a re-run of `old`: its kind followed as it was (its tag, else its version),
    /// or as `changes` say, with its params and priority unless changed.
    async fn rerun_spec(
        &self,
        old: &JobView,
        changes: &RerunChanges,
        batch: Option<Uuid>,
    ) -> ServiceResult<JobSpec> {
        let job = &old.job;
        let params = match &changes.params {
            Some(params) => params.clone(),
            None => serde_json::from_str(&job.params).unwrap_or_default(),
        };
        let mut spec = self
            .job_spec(JobRequest {
                kind: rerun_kind(job, changes),
                params,
                priority: Some(changes.priority.unwrap_or(job.priority)),
                ..JobRequest::default()
            })
            .await?;
        spec.rerun_of = Some(job.id);
        spec.rerun_batch = batch;
        Ok(spec)
    }

    /// `old`'s inputs as a new job takes them: the same uploads, under the same names.
    async fn inputs_of(&self, old: &JobView) -> ServiceResult<Vec<PlannedInput>> {
        let rows = self
            .uploads_by_id(old.inputs.iter().map(|i| i.upload_id))
            .await?;
        planned_inputs(old, &rows)
    }

    /// The uploads `ids` that exist, looked up 500 at a time (each once, however many jobs
    /// name it: a bulk re-run's jobs often share their inputs).
    async fn uploads_by_id(
        &self,
        ids: impl Iterator<Item = Uuid>,
    ) -> ServiceResult<HashMap<Uuid, upload::Model>> {
        let ids: Vec<Uuid> = ids.collect::<HashSet<_>>().into_iter().collect();
        let mut rows = HashMap::with_capacity(ids.len());
        for batch in ids.chunks(500) {
            let found = upload::Entity::find()
                .filter(upload::Column::Id.is_in(batch.iter().copied()))
                .all(&self.db.orm)
                .await?;
            rows.extend(found.into_iter().map(|row| (row.id, row)));
        }
        Ok(rows)
    }

    /// Re-runs the jobs `request` matches (see the module notes).
    pub async fn bulk_rerun(
        &self,
        tenant: &Tenant,
        request: BulkRerun,
        idempotency_key: Option<IdempotencyKey>,
    ) -> ServiceResult<BatchView> {
        if !(1..=MAX_BULK).contains(&request.limit) {
            return Err(ServiceError::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_BULK}"),
            ));
        }
        // Checked here, not only per job: a request matching no job is still a bad request.
        if let Some(priority) = request.priority
            && !(0..=MAX_PRIORITY).contains(&priority)
        {
            return Err(ServiceError::invalid(
                "priority",
                format!("priority must be between 0 and {MAX_PRIORITY} (higher runs first)"),
            ));
        }
        if let Some(version) = &request.version {
            validate_kind(version).map_err(|msg| {
                ServiceError::invalid("rerun_version", format!("a version or tag name {msg}"))
            })?;
        }
        let request_json = serde_json::to_string(&request).expect("a request serializes");
        let (key, fingerprint) = idempotency_key
            .map(|key| Idempotency::new(key, &["bulk-rerun", &request_json]))
            .map_or((None, None), |i| (Some(i.key), Some(i.fingerprint)));
        if let (Some(key), Some(fingerprint)) = (&key, &fingerprint)
            && let Some(replay) = self.batch_by_key(tenant, key, fingerprint).await?
        {
            return Ok(replay);
        }

        let matching = self.rerun_candidates(tenant, &request.filter);
        let skipped = matching
            .clone()
            .filter(job::Column::InputsDeletedAtMs.is_not_null())
            .count(&self.db.reads)
            .await?;
        let candidates = matching
            .filter(job::Column::InputsDeletedAtMs.is_null())
            .order_by_asc(job::Column::Id)
            .limit(request.limit + 1)
            .all(&self.db.reads)
            .await?;
        let batch_id = RerunBatchId::new();
        let changes = RerunChanges {
            version: request.version.clone(),
            params: None,
            priority: request.priority,
        };
        // Each re-run's spec and inputs are read before the transaction (a SQLite writer reads
        // nothing through the pool); tags are read once per reference, so the batch is
        // consistent even if a tag moves meanwhile.
        let views = candidates
            .iter()
            .take(request.limit as usize)
            .map(|row| JobView::of(row.clone()))
            .collect::<ServiceResult<Vec<_>>>()?;
        let uploads = self
            .uploads_by_id(
                views
                    .iter()
                    .flat_map(|v| v.inputs.iter().map(|i| i.upload_id)),
            )
            .await?;
        let mut planned = Vec::new();
        let mut specs: HashMap<String, JobSpec> = HashMap::new();
        for view in &views {
            let row = &view.job;
            let reference = rerun_kind(row, &changes);
            let template = match specs.get(&reference) {
                Some(spec) => spec.clone(),
                None => {
                    let spec = self.rerun_spec(view, &changes, Some(batch_id.0)).await?;
                    specs.insert(reference, spec.clone());
                    spec
                }
            };
            let spec = JobSpec {
                params: serde_json::from_str(&row.params).unwrap_or_default(),
                priority: changes.priority.unwrap_or(row.priority),
                rerun_of: Some(row.id),
                ..template
            };
            planned.push((spec, planned_inputs(view, &uploads)?));
        }

        let mut tx = self.db.begin().await?;
        let mut created = 0i64;
        let mut queue_full = false;
        for (spec, inputs) in planned {
            match self
                .insert_job_in(&mut tx, tenant, spec, inputs, None)
                .await
            {
                Ok(_) => created += 1,
                // Checked before the job's first statement: the transaction goes on.
                Err(err) if err.code == ErrorCode::QueueFull => {
                    queue_full = true;
                    break;
                }
                Err(err) => return Err(err),
            }
        }
        let left_over = candidates.len() as i64 - created;
        let remaining = if left_over > 0 && !queue_full {
            // More matched than the limit: count them all.
            self.rerun_candidates(tenant, &request.filter)
                .filter(job::Column::InputsDeletedAtMs.is_null())
                .count(&self.db.reads)
                .await? as i64
                - created
        } else {
            left_over.max(0)
        };
        let row = rerun_batch::Model {
            id: batch_id.0,
            tenant: tenant.as_str().to_owned(),
            request: request_json,
            idempotency_key: key.clone(),
            fingerprint: fingerprint.clone(),
            created,
            skipped: skipped as i64,
            remaining,
            created_at_ms: now_ms(),
        };
        tx.execute(
            &rerun_batch::Entity::insert(rerun_batch::ActiveModel::from(row.clone())).into_query(),
        )
        .await?;
        if let Err(err) = tx.commit().await {
            // Another request with the same key committed first: answer with its batch.
            if let (Some(key), Some(fingerprint)) = (&key, &fingerprint)
                && let Some(replay) = self.batch_by_key(tenant, key, fingerprint).await?
            {
                return Ok(replay);
            }
            return Err(err.into());
        }
        tracing::info!(batch = %batch_id, created, remaining, skipped, "bulk re-run queued");
        Ok(BatchView {
            batch: row,
            replayed: false,
        })
    }

    /// The jobs of `tenant` that `filter` matches.
    fn rerun_candidates(
        &self,
        tenant: &Tenant,
        filter: &RerunFilter,
    ) -> sea_orm::Select<job::Entity> {
        let mut query = tenancy::find::<job::Entity>(tenant)
            .filter(job::Column::Status.eq(filter.status.unwrap_or(JobStatus::Failed)));
        if let Some(kind) = &filter.kind {
            query = query.filter(job::Column::Kind.eq(kind.as_str()));
        }
        if let Some(version) = &filter.version {
            query = query.filter(job::Column::Version.eq(version.as_str()));
        }
        if let Some(code) = &filter.error_code {
            query = query.filter(job::Column::ErrorCode.eq(code.as_str()));
        }
        if let Some(after) = filter.created_after_ms {
            query = query.filter(job::Column::CreatedAtMs.gt(after));
        }
        if let Some(before) = filter.created_before_ms {
            query = query.filter(job::Column::CreatedAtMs.lt(before));
        }
        if !filter.include_rerun {
            query = query.filter(job::Column::LatestRerun.is_null());
        }
        query
    }

    /// The batch an idempotency key made, if any; the key with another request is refused.
    async fn batch_by_key(
        &self,
        tenant: &Tenant,
        key: &str,
        fingerprint: &str,
    ) -> ServiceResult<Option<BatchView>> {
        let Some(batch) = rerun_batch::Entity::find()
            .filter(rerun_batch::Column::Tenant.eq(tenant.as_str()))
            .filter(rerun_batch::Column::IdempotencyKey.eq(key))
            .at_most_one(&self.db.orm)
            .await?
        else {
            return Ok(None);
        };
        if batch.fingerprint.as_deref() != Some(fingerprint) {
            return Err(ServiceError::new(
                ErrorCode::IdempotencyKeyReused,
                "this Idempotency-Key was already used with a different request; use a new key \
                 for a new request",
            ));
        }
        Ok(Some(BatchView {
            batch,
            replayed: true,
        }))
    }
}

/// What a re-run of `job` names as its kind: `changes`' version or tag, else the tag the job
/// followed, else the version it named (`seg@production`, `seg@v3`; the bare kind without
/// versions).
fn rerun_kind(job: &job::Model, changes: &RerunChanges) -> String {
    let followed = changes
        .version
        .as_deref()
        .or(job.tag.as_deref())
        .or(job.version.as_deref());
    serve_key(&job.kind, followed)
}

/// `old`'s inputs as a new job takes them: the same uploads (from `uploads`), under the same
/// names.
fn planned_inputs(
    old: &JobView,
    uploads: &HashMap<Uuid, upload::Model>,
) -> ServiceResult<Vec<PlannedInput>> {
    let id = JobId(old.job.id);
    if old.job.inputs_deleted_at_ms.is_some() {
        return Err(inputs_deleted(id));
    }
    old.inputs
        .iter()
        .map(|input| {
            let row = uploads
                .get(&input.upload_id)
                .cloned()
                .ok_or_else(|| inputs_deleted(id))?;
            Ok(PlannedInput {
                path: input.name.clone(),
                list: input.input.clone().zip(input.position),
                upload: InputUpload::Recorded(row),
            })
        })
        .collect()
}

fn inputs_deleted(id: JobId) -> ServiceError {
    ServiceError::new(
        ErrorCode::InputsDeleted,
        format!(
            "job {id}'s inputs were deleted (its tenant's input_retention); upload them again \
             and create a new job"
        ),
    )
}
