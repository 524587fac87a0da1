//! `ferry_webhook_deliveries`: the outbox. One row per (event, endpoint), written in the event's
//! transaction; a deliverer sends it under a lease and records the outcome.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_webhook_deliveries")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub endpoint_id: Uuid,
    pub job_id: Uuid,
    /// The event carried (a pending progress delivery moves on to newer progress events).
    pub event_seq: i64,
    pub event_type: String,
    /// `pending`, `succeeded` or `failed` (see `webhooks::DeliveryState`).
    pub state: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When a pending delivery is next tried.
    pub next_attempt_at_ms: Option<i64>,
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
