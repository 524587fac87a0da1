//! `ferry_api_keys`: API keys, each acting for one tenant with a set of scopes. Only the SHA-256
//! of a key is stored; the key itself is shown once, when it is created.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant: String,
    /// Given by whoever made the key, to tell keys apart.
    pub name: String,
    /// SHA-256 (hex) of the whole key, `fk_…` included.
    pub secret_sha256: String,
    /// The key's first characters (`fk_` and 8 more), shown in lists to recognise a key.
    pub prefix: String,
    /// Space-separated scopes (`jobs:read jobs:write`…).
    pub scopes: String,
    pub created_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    /// When the key last authenticated a request, to the minute (see `service::keys`).
    pub last_used_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
