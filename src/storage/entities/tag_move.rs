//! `ferry_tag_moves`: every move of a tag (made, moved or deleted), who made it and when; a
//! rollback is a move like any other.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ferry_tag_moves")]
pub struct Model {
    /// UUIDv7: moves sort by id in the order they were made.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub kind: String,
    pub tag: String,
    /// `None`: the tag did not exist before.
    pub from_version: Option<String>,
    /// `None`: the tag was deleted.
    pub to_version: Option<String>,
    pub moved_at_ms: i64,
    /// As `ferry_kind_tags.moved_by`.
    pub moved_by: String,
    /// The tenant of the key that moved it, if a key did.
    pub tenant: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
