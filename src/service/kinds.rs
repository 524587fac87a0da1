//! Kinds, their versions and tags. A job names a kind as `segment` (the `production` tag, or the
//! kind's default version), `segment@canary` (a tag) or `segment@v3` (a version), and is
//! resolved to one version when it is created: it runs that version whatever the tags do later.
//!
//! Versions are declared in the configuration (every replica and worker is given the same);
//! tags live in the database (`ferry_kind_tags`), so that moving one takes effect on every
//! replica and worker at once, without a restart. Each move is recorded (`ferry_tag_moves`):
//! who, when, from and to; rolling back is moving the tag back. The configuration's `tags` only
//! say where a tag starts: they are written once, when the tag does not exist yet.

use std::collections::BTreeMap;

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QueryTrait, Set,
    sea_query::{Expr, OnConflict},
};
use uuid::Uuid;

use super::{KindDefaults, ServiceError, ServiceResult, Services};
use crate::{
    domain::{split_kind_ref, validate_kind},
    error_code::ErrorCode,
    storage::{
        Tx,
        entities::{kind_tag, tag_move},
        lookup::{AtMostOne, Paged},
    },
    tenancy::Caller,
    time::now_ms,
};

/// The tag a job for the bare kind follows.
pub const PRODUCTION: &str = "production";
/// Compare-and-set rounds a tag move tries before giving up (others kept moving it).
const MOVE_ROUNDS: usize = 8;

/// A kind reference resolved to what the job runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub kind: String,
    /// `None` for a kind without versions.
    pub version: Option<String>,
    /// The tag it was resolved through, if any.
    pub tag: Option<String>,
}

/// Who moves a tag, as the record says.
#[derive(Clone, Debug)]
pub struct Mover {
    pub by: String,
    pub tenant: Option<String>,
}

impl Mover {
    pub fn of(caller: &Caller) -> Mover {
        Mover {
            by: caller
                .key_id
                .map_or_else(|| "anonymous".to_owned(), |id| format!("key:{id}")),
            tenant: caller.key_id.map(|_| caller.tenant.as_str().to_owned()),
        }
    }

    fn config() -> Mover {
        Mover {
            by: "config".to_owned(),
            tenant: None,
        }
    }
}

/// A kind as `GET /v1/kinds` shows it.
#[derive(Clone, Debug)]
pub struct KindView {
    pub kind: String,
    pub defaults: KindDefaults,
    /// Tag → version, as in the database now.
    pub tags: BTreeMap<String, kind_tag::Model>,
}

impl KindView {
    /// What a job naming the bare kind runs now, from the tags already read (as
    /// [`Services::resolve_kind`] resolves it): its `production` tag's version if this server
    /// declares it, else `default_version`, else its only version; `None` for a kind without
    /// versions.
    pub fn resolves_to(&self) -> Option<String> {
        let versions = &self.defaults.versions;
        let production = self
            .tags
            .get(PRODUCTION)
            .map(|t| &t.version)
            .filter(|v| versions.contains_key(*v));
        production
            .cloned()
            .or_else(|| untagged_version(&self.defaults))
    }
}

/// What a bare kind runs without a `production` tag: its `default_version`, else its only
/// version (`None` for a kind without versions, or with several and no default).
fn untagged_version(defaults: &KindDefaults) -> Option<String> {
    defaults.default_version.clone().or_else(|| {
        (defaults.versions.len() == 1)
            .then(|| defaults.versions.keys().next().cloned())
            .flatten()
    })
}

impl Services {
    pub(crate) fn kind_not_found(&self, kind: &str) -> ServiceError {
        let known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
        ServiceError::new(
            ErrorCode::KindNotFound,
            format!(
                "no handler serves kind {kind:?}; known kinds: {}",
                known.join(", ")
            ),
        )
    }

    fn kind(&self, kind: &str) -> ServiceResult<&KindDefaults> {
        self.kinds
            .get(kind)
            .ok_or_else(|| self.kind_not_found(kind))
    }

    /// Resolves `reference` (`kind`, `kind@tag` or `kind@version`) to the version a job created
    /// now runs. A bare kind with versions follows its `production` tag, else its
    /// `default_version`, else its only version.
    pub async fn resolve_kind(&self, reference: &str) -> ServiceResult<Resolved> {
        let (kind, name) = split_kind_ref(reference);
        let defaults = self.kinds.get(kind).ok_or_else(|| {
            let known: Vec<&str> = self.kinds.keys().map(String::as_str).collect();
            ServiceError::new(
                ErrorCode::UnknownKind,
                format!(
                    "no handler serves kind {kind:?}; known kinds: {}",
                    known.join(", ")
                ),
            )
            .with_field("kind")
        })?;
        let resolved = |version: Option<String>, tag: Option<String>| Resolved {
            kind: kind.to_owned(),
            version,
            tag,
        };
        if defaults.versions.is_empty() {
            return match name {
                None => Ok(resolved(None, None)),
                Some(name) => Err(unknown_version(format!(
                    "kind {kind:?} has no versions; name it without @{name}"
                ))),
            };
        }
        if let Some(name) = name {
            if defaults.versions.contains_key(name) {
                return Ok(resolved(Some(name.to_owned()), None));
            }
            return match self.tag_target(kind, name).await? {
                Some(version) => Ok(resolved(Some(version), Some(name.to_owned()))),
                None => Err(unknown_version(format!(
                    "kind {kind:?} has no version or tag {name:?}; versions: {}; tags: {}",
                    names(defaults.versions.keys()),
                    names(self.tags_of(kind).await?.keys()),
                ))),
            };
        }
        if let Some(version) = self.tag_target(kind, PRODUCTION).await? {
            return Ok(resolved(Some(version), Some(PRODUCTION.to_owned())));
        }
        if let Some(version) = untagged_version(defaults) {
            return Ok(resolved(Some(version), None));
        }
        Err(unknown_version(format!(
            "kind {kind:?} has several versions ({}) and no {PRODUCTION} tag or \
                 default_version: name one ({kind}@VERSION)",
            names(defaults.versions.keys())
        )))
    }

    /// The version `tag` of `kind` points at, checked to be one this server declares.
    async fn tag_target(&self, kind: &str, tag: &str) -> ServiceResult<Option<String>> {
        let row = kind_tag::Entity::find_by_id((kind.to_owned(), tag.to_owned()))
            .at_most_one(&self.db.orm)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let declared = self
            .kinds
            .get(kind)
            .is_some_and(|d| d.versions.contains_key(&row.version));
        if !declared {
            // Another replica's configuration declares a version this one does not.
            return Err(ServiceError::new(
                ErrorCode::UnknownVersion,
                format!(
                    "tag {tag:?} of kind {kind:?} points at version {:?}, which this server's \
                     configuration does not declare (every replica must declare the same \
                     versions)",
                    row.version
                ),
            )
            .with_field("kind"));
        }
        Ok(Some(row.version))
    }

    /// Every tag of `kind`, by name.
    pub async fn tags_of(&self, kind: &str) -> ServiceResult<BTreeMap<String, kind_tag::Model>> {
        let rows = kind_tag::Entity::find()
            .filter(kind_tag::Column::Kind.eq(kind))
            .all(&self.db.orm)
            .await?;
        Ok(rows.into_iter().map(|row| (row.tag.clone(), row)).collect())
    }

    /// Every kind this server serves, with its versions and tags.
    pub async fn list_kinds(&self) -> ServiceResult<Vec<KindView>> {
        let mut tags: BTreeMap<String, BTreeMap<String, kind_tag::Model>> = BTreeMap::new();
        for row in kind_tag::Entity::find().all(&self.db.orm).await? {
            tags.entry(row.kind.clone())
                .or_default()
                .insert(row.tag.clone(), row);
        }
        Ok(self
            .kinds
            .iter()
            .map(|(kind, defaults)| KindView {
                kind: kind.clone(),
                defaults: defaults.clone(),
                tags: tags.remove(kind).unwrap_or_default(),
            })
            .collect())
    }

    pub async fn get_kind(&self, kind: &str) -> ServiceResult<KindView> {
        let defaults = self.kind(kind)?.clone();
        Ok(KindView {
            kind: kind.to_owned(),
            defaults,
            tags: self.tags_of(kind).await?,
        })
    }

    /// Points `tag` of `kind` at `version` (making the tag if need be), and records the move
    /// (none when it already points there). Jobs created after it (on any replica) follow it;
    /// jobs created before keep theirs.
    pub async fn move_tag(
        &self,
        kind: &str,
        tag: &str,
        version: &str,
        mover: &Mover,
    ) -> ServiceResult<kind_tag::Model> {
        let defaults = self.kind(kind)?;
        check_tag_name(kind, defaults, tag)?;
        if !defaults.versions.contains_key(version) {
            let known = names(defaults.versions.keys());
            return Err(ServiceError::invalid(
                "version",
                if defaults.versions.is_empty() {
                    format!("kind {kind:?} has no versions to tag")
                } else {
                    format!("kind {kind:?} has no version {version:?}; versions: {known}")
                },
            ));
        }
        for _ in 0..MOVE_ROUNDS {
            let now = now_ms();
            let current = kind_tag::Entity::find_by_id((kind.to_owned(), tag.to_owned()))
                .at_most_one(&self.db.orm)
                .await?;
            if let Some(same) = current.as_ref().filter(|c| c.version == version) {
                // Already there: nothing moves, nothing is recorded.
                return Ok(same.clone());
            }
            let row = kind_tag::Model {
                kind: kind.to_owned(),
                tag: tag.to_owned(),
                version: version.to_owned(),
                moved_at_ms: now,
                moved_by: mover.by.clone(),
            };
            let mut tx = self.db.begin().await?;
            let changed = match &current {
                // Compare-and-set on where it pointed, so that the record's `from` is true.
                Some(before) => {
                    tx.execute(
                        &kind_tag::Entity::update_many()
                            .col_expr(kind_tag::Column::Version, Expr::value(version))
                            .col_expr(kind_tag::Column::MovedAtMs, Expr::value(now))
                            .col_expr(kind_tag::Column::MovedBy, Expr::value(mover.by.clone()))
                            .filter(kind_tag::Column::Kind.eq(kind))
                            .filter(kind_tag::Column::Tag.eq(tag))
                            .filter(kind_tag::Column::Version.eq(before.version.as_str()))
                            .into_query(),
                    )
                    .await?
                }
                None => insert_if_absent(&mut tx, row.clone().into()).await?,
            };
            if changed != 1 {
                // Moved by someone else meanwhile: read it again and retry.
                continue;
            }
            let from = current.map(|before| before.version);
            record_move(&mut tx, kind, tag, from.clone(), Some(version), mover, now).await?;
            tx.commit().await?;
            tracing::info!(kind, tag, ?from, to = version, by = %mover.by, "tag moved");
            return Ok(row);
        }
        Err(ServiceError::new(
            ErrorCode::InternalError,
            format!("tag {tag:?} of {kind:?} kept moving under this request; retry"),
        ))
    }

    /// Deletes `tag` of `kind`, and records it.
    pub async fn delete_tag(&self, kind: &str, tag: &str, mover: &Mover) -> ServiceResult<()> {
        self.kind(kind)?;
        let current = kind_tag::Entity::find_by_id((kind.to_owned(), tag.to_owned()))
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| tag_not_found(kind, tag))?;
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        let deleted = tx
            .execute(
                &kind_tag::Entity::delete_many()
                    .filter(kind_tag::Column::Kind.eq(kind))
                    .filter(kind_tag::Column::Tag.eq(tag))
                    .filter(kind_tag::Column::Version.eq(current.version.as_str()))
                    .into_query(),
            )
            .await?;
        if deleted != 1 {
            return Err(tag_not_found(kind, tag));
        }
        record_move(&mut tx, kind, tag, Some(current.version), None, mover, now).await?;
        tx.commit().await?;
        tracing::info!(kind, tag, by = %mover.by, "tag deleted");
        Ok(())
    }

    /// `kind`'s tag moves, newest first (only `tag`'s, if given); the page and whether more
    /// follow.
    pub async fn tag_moves(
        &self,
        kind: &str,
        tag: Option<&str>,
        before_id: Option<Uuid>,
        limit: u64,
    ) -> ServiceResult<(Vec<tag_move::Model>, bool)> {
        self.kind(kind)?;
        let mut query = tag_move::Entity::find()
            .filter(tag_move::Column::Kind.eq(kind))
            .order_by_desc(tag_move::Column::Id);
        if let Some(tag) = tag {
            query = query.filter(tag_move::Column::Tag.eq(tag));
        }
        if let Some(before) = before_id {
            query = query.filter(tag_move::Column::Id.lt(before));
        }
        Ok(query.page(limit, &self.db.orm).await?)
    }

    /// Writes the configuration's tags that do not exist yet (recorded as moved by `config`);
    /// says so where an existing tag points elsewhere than the configuration.
    pub async fn seed_tags(&self) -> ServiceResult<()> {
        for (kind, defaults) in self.kinds.iter() {
            for (tag, version) in &defaults.tags {
                let now = now_ms();
                let row = kind_tag::ActiveModel {
                    kind: Set(kind.clone()),
                    tag: Set(tag.clone()),
                    version: Set(version.clone()),
                    moved_at_ms: Set(now),
                    moved_by: Set("config".to_owned()),
                };
                let mut tx = self.db.begin().await?;
                let inserted = insert_if_absent(&mut tx, row).await?;
                if inserted == 1 {
                    record_move(
                        &mut tx,
                        kind,
                        tag,
                        None,
                        Some(version),
                        &Mover::config(),
                        now,
                    )
                    .await?;
                }
                tx.commit().await?;
                if inserted == 0 {
                    let current = self.tag_target(kind, tag).await.ok().flatten();
                    if current.as_deref() != Some(version.as_str()) {
                        tracing::warn!(kind, tag, configured = %version, now = ?current,
                            "the tag was moved since the configuration set it; the database \
                             wins (move it with PUT /v1/kinds/{{kind}}/tags/{{tag}})");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Makes a tag unless it exists (another request made it first); whether it did (1) or not (0).
async fn insert_if_absent(tx: &mut Tx, row: kind_tag::ActiveModel) -> ServiceResult<u64> {
    let insert = kind_tag::Entity::insert(row).on_conflict(
        OnConflict::columns([kind_tag::Column::Kind, kind_tag::Column::Tag])
            .do_nothing()
            .to_owned(),
    );
    Ok(tx.execute(&insert.into_query()).await?)
}

async fn record_move(
    tx: &mut Tx,
    kind: &str,
    tag: &str,
    from: Option<String>,
    to: Option<&str>,
    mover: &Mover,
    now: i64,
) -> ServiceResult<()> {
    let row = tag_move::ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set(kind.to_owned()),
        tag: Set(tag.to_owned()),
        from_version: Set(from),
        to_version: Set(to.map(str::to_owned)),
        moved_at_ms: Set(now),
        moved_by: Set(mover.by.clone()),
        tenant: Set(mover.tenant.clone()),
    };
    tx.execute(&tag_move::Entity::insert(row).into_query())
        .await?;
    Ok(())
}

fn check_tag_name(kind: &str, defaults: &KindDefaults, tag: &str) -> ServiceResult<()> {
    validate_kind(tag).map_err(|msg| ServiceError::invalid("tag", format!("a tag name {msg}")))?;
    if defaults.versions.contains_key(tag) {
        return Err(ServiceError::invalid(
            "tag",
            format!("{tag:?} is a version of kind {kind:?}; a tag needs a name of its own"),
        ));
    }
    Ok(())
}

fn names<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let all: Vec<&str> = items.map(String::as_str).collect();
    if all.is_empty() {
        "none".to_owned()
    } else {
        all.join(", ")
    }
}

fn unknown_version(detail: String) -> ServiceError {
    ServiceError::new(ErrorCode::UnknownVersion, detail).with_field("kind")
}

fn tag_not_found(kind: &str, tag: &str) -> ServiceError {
    ServiceError::new(
        ErrorCode::TagNotFound,
        format!("kind {kind:?} has no tag {tag:?}"),
    )
}
