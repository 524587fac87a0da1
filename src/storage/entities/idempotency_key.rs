//! `ferry_idempotency_keys`: a tenant's `Idempotency-Key` → the job it created (NULL while in
//! flight, when the request holding the key renews its lease). Keys are per tenant.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_idempotency_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: String,
    /// SHA-256 (hex) of the request that first used the key.
    pub fingerprint: String,
    pub job_id: Option<Uuid>,
    pub created_at_ms: i64,
    /// Which request holds the reservation (a random token); only it may record its job.
    pub holder: Option<String>,
    /// While in flight: the reservation is presumed abandoned after this (its holder renews it).
    pub lease_expires_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
