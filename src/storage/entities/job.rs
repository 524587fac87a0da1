//! `ferry_jobs`: the truth about a job — state, attempts, lease, progress, cancel flag. apalis only
//! carries `dispatch_id` pointers to these rows.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The tenant it belongs to (see `storage::tenancy`).
    pub tenant: String,
    pub kind: String,
    pub status: crate::domain::JobStatus,
    /// JSON object given at creation.
    pub params: String,
    pub priority: i32,
    pub timeout_ms: i64,
    pub max_attempts: i32,
    /// Attempts started so far.
    pub attempt: i32,
    pub progress_percent: Option<f64>,
    pub progress_stage: Option<String>,
    pub progress_message: Option<String>,
    pub progress_updated_at_ms: Option<i64>,
    /// JSON [`crate::domain::JobFailure`] of the last failed attempt.
    pub error: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub updated_at_ms: i64,
    /// A queued job is not run before this time (retry backoff).
    pub run_after_ms: i64,
    /// ULID of the apalis task that should run the next attempt; deliveries of any other task
    /// for this job are stale and ignored.
    pub dispatch_id: Option<String>,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub cancel_requested: bool,
    /// Sequence number of the job's last event.
    pub event_seq: i64,
    /// JSON array of the job's inputs (`job_input::Model`s without `job_id`), a copy of
    /// `ferry_job_inputs` made at creation, so that reading a job is reading one row.
    pub inputs: String,
    /// How many results the job has, kept by the transaction that publishes one.
    pub result_count: i64,
    /// How long the job, its results and inputs are kept once it finishes, fixed at creation
    /// from its tenant's `job_retention` (None: until deleted).
    pub retain_ms: Option<i64>,
    /// How long its inputs' bytes are kept once it finishes (`input_retention`).
    pub retain_inputs_ms: Option<i64>,
    /// When the reconciler deletes the job (set when it finishes, from `retain_ms`).
    pub expires_at_ms: Option<i64>,
    /// When the reconciler deletes its inputs' bytes (set when it finishes); None once they are
    /// gone (see `inputs_deleted_at_ms`).
    pub inputs_expire_at_ms: Option<i64>,
    pub inputs_deleted_at_ms: Option<i64>,
    /// The version of its kind it resolved to at creation, and runs (`None`: a kind without
    /// versions).
    pub version: Option<String>,
    /// The tag it was resolved through, if any; a re-run follows it again.
    pub tag: Option<String>,
    /// The job this one re-runs.
    pub rerun_of: Option<Uuid>,
    /// This job's latest re-run.
    pub latest_rerun: Option<Uuid>,
    /// The bulk re-run that made it (its dispatch waits behind other work of its priority).
    pub rerun_batch: Option<Uuid>,
    /// The stable code of its error, once failed (bulk re-runs filter on it).
    pub error_code: Option<String>,
    /// The W3C `traceparent` of the request that created it, when traces are exported: its
    /// attempts are spans of that trace.
    pub traceparent: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
