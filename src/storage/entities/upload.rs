//! `ferry_uploads`: a completed, durable upload. A row exists only once every byte is stored.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_uploads")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The tenant it belongs to (see `storage::tenancy`).
    pub tenant: String,
    pub size: i64,
    pub sha256: String,
    pub content_type: Option<String>,
    pub blob_key: String,
    /// The file's name as the client gave it (names it in a list input's folder).
    pub filename: Option<String>,
    /// How many jobs hold it as an input (see `service::holds`): while any does, it stays;
    /// when the last one lets go, it is deleted.
    pub job_count: i64,
    pub created_at_ms: i64,
    /// When it is deleted: an upload no job took expires after `limits.upload_ttl`, one the
    /// last job let go of at once; `None` while a job holds it.
    pub expires_at_ms: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
