//! `ferry_upload_days`: bytes a tenant uploaded per UTC day (see the `upload_usage` migration and
//! `service::quota`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_upload_days")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub tenant: String,
    /// Days since the Unix epoch (UTC).
    #[sea_orm(primary_key, auto_increment = false)]
    pub day: i64,
    pub bytes: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
