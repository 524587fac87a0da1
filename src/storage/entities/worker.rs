//! `ferry_workers`: the worker processes, each renewing `last_seen_ms` while it runs, and what
//! each serves; a worker whose `last_seen_ms` is older than `queue.lease_ttl` is gone.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_workers")]
pub struct Model {
    /// The worker's owner name (host, pid and a token of its own), as on the leases it holds.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub hostname: String,
    pub pid: i64,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    /// JSON array of what it serves: `kind`, or `kind@version` for a kind with versions.
    pub serves: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
