//! `ferry_job_inputs`: the named inputs of a job, copied from their uploads at creation.

use sea_orm::entity::prelude::*;

/// Serialized (without `job_id`) into `ferry_jobs.inputs`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "ferry_job_inputs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    #[serde(skip)]
    pub job_id: Uuid,
    /// The input's name; for an item of a list input, its path under the handler's input
    /// folder (`series/IM-0001.dcm`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub upload_id: Uuid,
    pub size: i64,
    pub sha256: String,
    pub blob_key: String,
    /// The list input this row is an item of (`None`: an input of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Its place in that list, from 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<i32>,
}

impl Model {
    /// The input this row belongs to, as the client named it.
    pub fn input_name(&self) -> &str {
        self.input.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
