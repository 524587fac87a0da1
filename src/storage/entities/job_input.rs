//! `ferry_job_inputs`: the named inputs of a job, copied from their uploads at creation.

use sea_orm::entity::prelude::*;

/// Serialized (without `job_id`) into `ferry_jobs.inputs`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "ferry_job_inputs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    #[serde(skip)]
    pub job_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub upload_id: Uuid,
    pub size: i64,
    pub sha256: String,
    pub blob_key: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
