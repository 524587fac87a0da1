//! `ferry_webhook_attempts`: every HTTP attempt of a delivery, as the receiver answered it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_webhook_attempts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub delivery_id: i64,
    pub endpoint_id: Uuid,
    pub job_id: Uuid,
    /// 1, 2, 3… per delivery.
    pub number: i32,
    /// The `webhook-id` header sent.
    pub webhook_id: String,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    /// `None` when no answer came (refused, timed out, not allowed).
    pub status_code: Option<i32>,
    pub error: Option<String>,
    /// The start of the receiver's answer, cut to a few hundred bytes.
    pub response_excerpt: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
