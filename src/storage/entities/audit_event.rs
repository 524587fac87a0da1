//! `ferry_audit_events`: the audit trail, one row per request of a tenant's key (see the
//! `audit` migration and `service::audit`). Append-only.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_audit_events")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub tenant: String,
    /// The API key; `None` for a request to an open server (no key exists).
    pub key_id: Option<Uuid>,
    /// The route: `GET /v1/jobs/{id}` (HEAD is recorded as GET: it reads the same).
    pub action: String,
    /// The object the request named or created (`job_…`, `upl_…`, …), if any.
    pub object_id: Option<String>,
    /// The answer's HTTP status.
    pub status: i32,
    /// The connection's peer address.
    pub client_addr: Option<String>,
    pub at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
