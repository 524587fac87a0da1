//! `ferry_rerun_batches`: one bulk re-run (`POST /v1/jobs/rerun`): the request, what it made,
//! and the idempotency key that replays it. Its jobs name it in `ferry_jobs.rerun_batch`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_rerun_batches")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant: String,
    /// The request as the client gave it (JSON).
    pub request: String,
    pub idempotency_key: Option<String>,
    /// SHA-256 (hex) of the request, to refuse the key's reuse with another.
    pub fingerprint: Option<String>,
    /// Re-runs made.
    pub created: i64,
    /// Matching jobs skipped because their inputs are gone.
    pub skipped: i64,
    /// Matching jobs left for another call (beyond the request's limit).
    pub remaining: i64,
    pub created_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
