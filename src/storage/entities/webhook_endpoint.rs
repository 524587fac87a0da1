//! `ferry_webhook_endpoints`: where events are sent. Server-wide (`job_id` null, managed at
//! `/v1/webhooks`) or bound to one job (given when the job was created, deleted with it).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_webhook_endpoints")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The tenant it belongs to (see `storage::tenancy`).
    pub tenant: String,
    pub job_id: Option<Uuid>,
    pub url: String,
    /// The event types sent, as `,started,progress,`: delimited on both sides so that one
    /// `LIKE '%,type,%'` matches a type exactly (the `outbox_trigger` migration).
    pub events: String,
    pub description: Option<String>,
    /// `whsec_…` (Standard Webhooks).
    pub secret: String,
    /// The secret before the last rotation, still signing until `previous_secret_until_ms`.
    pub previous_secret: Option<String>,
    pub previous_secret_until_ms: Option<i64>,
    pub enabled: bool,
    /// Why it was disabled: `"gone"` (the receiver answered 410) or `"disabled"` (over the API).
    pub disabled_reason: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
