//! `ferry_job_events`: the ordered per-job event log (state changes, progress, results).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_job_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub job_id: Uuid,
    /// 1, 2, 3… per job, without gaps.
    pub seq: i64,
    pub kind: crate::domain::EventKind,
    /// JSON object.
    pub data: String,
    pub created_at_ms: i64,
    /// The feed's order, with `id` (see the `event_feed` migration and `service::feed`): on
    /// PostgreSQL at least the id of the transaction that wrote the event, on SQLite 0.
    pub tx: i64,
    /// Its job's tenant, for the feed (`GET /v1/events`), which reads events across jobs.
    pub tenant: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
