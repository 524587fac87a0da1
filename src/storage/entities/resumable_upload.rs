//! `ferry_resumable_uploads`: a tus upload in progress (see the `resumable_uploads` migration and
//! `service::resumable`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_resumable_uploads")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub tenant: String,
    pub length: Option<i64>,
    pub upload_offset: i64,
    pub metadata: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub sha256_state: Vec<u8>,
    pub store_state: String,
    pub job_request: Option<String>,
    /// A part for tus' concatenation (`Upload-Concat: partial`).
    pub partial: bool,
    pub lock_token: Option<String>,
    pub lock_expires_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub expires_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
