//! `ferry_kind_tags`: where each tag of a kind points now (`segment` / `production` → `v3`).
//! Moved by `PUT /v1/kinds/{kind}/tags/{tag}`; every move is in `ferry_tag_moves`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_kind_tags")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub kind: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub tag: String,
    pub version: String,
    pub moved_at_ms: i64,
    /// Who moved it last: `key:<id>`, `config` (set from the configuration), or `anonymous`.
    pub moved_by: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
