//! API keys: made (`fk_` and 40 hex digits, 160 random bits, shown once), listed, revoked, and
//! checked for every request ([`KeyRing::authenticate`]).
//!
//! Only a key's SHA-256 is stored. A request's key is looked up by that digest, and what the
//! database said is kept in this process for [`CACHE_TTL`]: a revoked or expired key is refused
//! by every replica within that time, and a replica under a poll storm asks the database about
//! each key once a second, not once a request. Whether any key exists at all (an open server
//! has none) is cached the same way.
//!
//! `last_used_at` is written at most once a minute per key and process, off the request's path:
//! a status poll must not become a write.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, ExprTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, sea_query::Expr,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{ServiceError, ServiceResult};
use crate::{
    error_code::ErrorCode,
    ids::KeyId,
    storage::{
        Db,
        entities::api_key,
        lookup::{AtMostOne, Paged},
    },
    tenancy::{Caller, Scopes, Tenant},
    time::now_ms,
};

/// How long what the database said about a key is believed (see the module notes).
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// `last_used_at` is this precise.
const LAST_USED_PRECISION_MS: i64 = 60_000;
/// Keys remembered at once; beyond that the cache starts over (a flood of made-up keys must not
/// grow memory).
const CACHE_CAPACITY: usize = 10_000;
/// Every key starts with this, so secret scanners and people recognise one.
pub const KEY_PREFIX: &str = "fk_";
/// Random bytes in a key (160 bits).
const KEY_BYTES: usize = 20;
/// Characters of a key shown in lists (`fk_` and 8 hex digits).
const SHOWN_PREFIX_LEN: usize = KEY_PREFIX.len() + 8;
/// Longest key name.
pub const MAX_KEY_NAME_LEN: usize = 200;

/// Why a request was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header, and the server requires keys.
    Missing,
    /// An `Authorization` header that is not `Bearer fk_…`, or a key that is unknown, revoked
    /// or expired (one answer for all: a client cannot tell which keys ever existed).
    Invalid,
}

impl Refusal {
    pub fn into_error(self) -> ServiceError {
        match self {
            Refusal::Missing => ServiceError::new(
                ErrorCode::Unauthenticated,
                "this server requires an API key: send `Authorization: Bearer fk_…` (keys are \
                 made with `ferry keys create` or POST /v1/keys)",
            ),
            Refusal::Invalid => ServiceError::new(
                ErrorCode::InvalidApiKey,
                "the API key is not valid: it is malformed, unknown, revoked or expired. Send \
                 `Authorization: Bearer fk_…` with a current key",
            ),
        }
    }
}

/// Whether a key works.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    Active,
    Revoked,
    Expired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Revoked => "revoked",
            KeyState::Expired => "expired",
        }
    }
}

/// A key as a request presents it, checked: what it may do, and until when.
#[derive(Clone, Debug)]
struct Known {
    id: Uuid,
    tenant: Tenant,
    scopes: Scopes,
    expires_at_ms: Option<i64>,
}

#[derive(Debug, Default)]
struct Cache {
    /// Digest → what the database said (`None`: no such active key), and when.
    keys: HashMap<String, (Instant, Option<Known>)>,
    /// Whether any active key exists, and when that was read.
    any_key: Option<(Instant, bool)>,
    /// When this process last wrote each key's `last_used_at`.
    last_used_written: HashMap<Uuid, i64>,
}

/// A new key: its row and the key itself, which is not stored and cannot be shown again.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub row: api_key::Model,
    pub secret: String,
}

/// What a new key is for.
#[derive(Clone, Debug)]
pub struct KeyRequest {
    pub tenant: Tenant,
    pub name: String,
    pub scopes: Scopes,
    pub expires_at_ms: Option<i64>,
}

/// The keys of a database, and whether requests without one are let in.
#[derive(Clone, Debug)]
pub struct KeyRing {
    db: Db,
    /// Requests without a key act for the default tenant while no key exists: only for a
    /// server on a loopback address, or one started with `--insecure-no-auth`.
    open_allowed: bool,
    cache: Arc<Mutex<Cache>>,
}

/// SHA-256 of a key, in hex: what is stored and looked up.
fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Whether `key` looks like a key at all (checked before any lookup).
fn well_formed(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX).is_some_and(|rest| {
        rest.len() == KEY_BYTES * 2 && rest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// An active key: not revoked, not expired.
fn active(now: i64) -> sea_orm::Condition {
    sea_orm::Condition::all()
        .add(api_key::Column::RevokedAtMs.is_null())
        .add(
            api_key::Column::ExpiresAtMs
                .is_null()
                .or(api_key::Column::ExpiresAtMs.gt(now)),
        )
}

impl KeyRing {
    pub fn new(db: Db, open_allowed: bool) -> Self {
        Self {
            db,
            open_allowed,
            cache: Arc::default(),
        }
    }

    /// Who a request with this `Authorization` header value (if any) is.
    pub async fn authenticate(&self, authorization: Option<&str>) -> ServiceResult<Caller> {
        let Some(value) = authorization else {
            return if self.open_allowed && !self.any_key_exists().await? {
                Ok(Caller::open())
            } else {
                Err(Refusal::Missing.into_error())
            };
        };
        let key = bearer_token(value).ok_or_else(|| Refusal::Invalid.into_error())?;
        if !well_formed(key) {
            return Err(Refusal::Invalid.into_error());
        }
        let known = self.lookup(&digest(key)).await?;
        match known {
            Some(k) if k.expires_at_ms.is_none_or(|at| at > now_ms()) => Ok(Caller {
                key_id: Some(k.id),
                tenant: k.tenant,
                scopes: k.scopes,
            }),
            _ => Err(Refusal::Invalid.into_error()),
        }
    }

    /// Whether any active key exists (cached for [`CACHE_TTL`]).
    pub async fn any_key_exists(&self) -> ServiceResult<bool> {
        if let Some((at, exists)) = self.cache.lock().expect("key cache").any_key
            && at.elapsed() < CACHE_TTL
        {
            return Ok(exists);
        }
        let none = api_key::Entity::find()
            .select_only()
            .column(api_key::Column::Id)
            .filter(active(now_ms()))
            .limit(1)
            .into_tuple::<Uuid>()
            .all(&self.db.reads)
            .await?
            .is_empty();
        let exists = !none;
        self.cache.lock().expect("key cache").any_key = Some((Instant::now(), exists));
        Ok(exists)
    }

    async fn lookup(&self, digest: &str) -> ServiceResult<Option<Known>> {
        if let Some((at, known)) = self.cache.lock().expect("key cache").keys.get(digest)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(known.clone());
        }
        let now = now_ms();
        let row = api_key::Entity::find()
            .filter(api_key::Column::SecretSha256.eq(digest))
            .filter(active(now))
            .at_most_one(&self.db.reads)
            .await?;
        let known = row.as_ref().and_then(|row| {
            // Written by `create` after the same check: a name that does not parse was put there
            // by hand. The key is refused, never taken for another tenant's.
            let tenant = Tenant::parse(&row.tenant)
                .inspect_err(|msg| tracing::error!(key = %KeyId(row.id), "{msg}; key refused"))
                .ok()?;
            Some(Known {
                id: row.id,
                tenant,
                scopes: Scopes::from_column(&row.scopes),
                expires_at_ms: row.expires_at_ms,
            })
        });
        let write_last_used = {
            let mut cache = self.cache.lock().expect("key cache");
            if cache.keys.len() >= CACHE_CAPACITY {
                cache.keys.clear();
            }
            cache
                .keys
                .insert(digest.to_owned(), (Instant::now(), known.clone()));
            row.filter(|row| {
                let written = cache.last_used_written.get(&row.id).copied();
                let last = Ord::max(row.last_used_at_ms, written).unwrap_or(i64::MIN);
                let due = now.saturating_sub(last) >= LAST_USED_PRECISION_MS;
                if due {
                    cache.last_used_written.insert(row.id, now);
                }
                due
            })
        };
        if let Some(row) = write_last_used {
            let orm = self.db.orm.clone();
            tokio::spawn(async move {
                let written = api_key::Entity::update_many()
                    .col_expr(api_key::Column::LastUsedAtMs, Expr::value(now))
                    .filter(api_key::Column::Id.eq(row.id))
                    .exec(&orm)
                    .await;
                if let Err(e) = written {
                    let key = KeyId(row.id);
                    tracing::warn!(error = %e, %key, "could not record a key's use");
                }
            });
        }
        Ok(known)
    }

    /// Makes a key. The answer holds the key itself, which nothing can show again.
    pub async fn create(&self, request: KeyRequest) -> ServiceResult<NewKey> {
        let name = request.name.trim();
        if name.is_empty() || name.len() > MAX_KEY_NAME_LEN || name.chars().any(char::is_control) {
            return Err(ServiceError::invalid(
                "name",
                format!(
                    "a key's name is 1-{MAX_KEY_NAME_LEN} characters without control \
                     characters, saying who or what uses it"
                ),
            ));
        }
        if request.scopes.is_empty() {
            return Err(ServiceError::invalid(
                "scopes",
                "a key needs at least one scope (jobs:read, jobs:write, results:read, admin)",
            ));
        }
        let now = now_ms();
        if request.expires_at_ms.is_some_and(|at| at <= now) {
            return Err(ServiceError::invalid(
                "expires_at",
                "expires_at must be in the future",
            ));
        }
        let mut random = [0u8; KEY_BYTES];
        rand::fill(&mut random);
        let secret = format!("{KEY_PREFIX}{}", hex::encode(random));
        let row = api_key::Model {
            id: KeyId::new().0,
            tenant: request.tenant.as_str().to_owned(),
            name: name.to_owned(),
            secret_sha256: digest(&secret),
            prefix: secret[..SHOWN_PREFIX_LEN].to_owned(),
            scopes: request.scopes.column(),
            created_at_ms: now,
            expires_at_ms: request.expires_at_ms,
            last_used_at_ms: None,
            revoked_at_ms: None,
        };
        let row = api_key::ActiveModel::from(row).insert(&self.db.orm).await?;
        let key = KeyId(row.id);
        tracing::info!(%key, tenant = %row.tenant, scopes = %row.scopes, "API key created");
        Ok(NewKey { row, secret })
    }

    /// `tenant`'s keys (all tenants' for `None`: the command line), newest first, revoked ones
    /// included; a page of `limit` after `before_id`, and whether more follow.
    pub async fn list(
        &self,
        tenant: Option<&Tenant>,
        before_id: Option<Uuid>,
        limit: u64,
    ) -> ServiceResult<(Vec<api_key::Model>, bool)> {
        let mut query = api_key::Entity::find().order_by_desc(api_key::Column::Id);
        if let Some(tenant) = tenant {
            query = query.filter(api_key::Column::Tenant.eq(tenant.as_str()));
        }
        if let Some(before) = before_id {
            query = query.filter(api_key::Column::Id.lt(before));
        }
        Ok(query.page(limit, &self.db.orm).await?)
    }

    /// The key `id`, if it is `tenant`'s (any tenant's for `None`).
    pub async fn get(&self, tenant: Option<&Tenant>, id: KeyId) -> ServiceResult<api_key::Model> {
        let mut query = api_key::Entity::find_by_id(id.0);
        if let Some(tenant) = tenant {
            query = query.filter(api_key::Column::Tenant.eq(tenant.as_str()));
        }
        query
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| key_not_found(id))
    }

    /// Revokes the key `id` (of `tenant`, or any for `None`) for the key `by` (none: the
    /// command line): every replica refuses it within [`CACHE_TTL`]. Revoking a revoked key
    /// changes nothing and is no error; a key revoking itself is refused, so that an admin
    /// cannot lock itself out of its tenant's keys by mistake.
    pub async fn revoke(
        &self,
        tenant: Option<&Tenant>,
        id: KeyId,
        by: Option<Uuid>,
    ) -> ServiceResult<api_key::Model> {
        let mut current = self.get(tenant, id).await?;
        if by == Some(id.0) {
            return Err(ServiceError::new(
                ErrorCode::OwnKey,
                format!(
                    "key {id} is the key of this request, and a key cannot revoke itself: \
                     revoke it with another admin key, or with `ferry keys revoke {id}`"
                ),
            ));
        }
        if current.revoked_at_ms.is_none() {
            let now = now_ms();
            api_key::Entity::update_many()
                .col_expr(api_key::Column::RevokedAtMs, Expr::value(now))
                .filter(api_key::Column::Id.eq(id.0))
                .filter(api_key::Column::RevokedAtMs.is_null())
                .exec(&self.db.orm)
                .await?;
            // Revoked now, or a moment ago by another request: the same to the caller.
            current.revoked_at_ms = Some(now);
            tracing::info!(key = %id, tenant = %current.tenant, "API key revoked");
        }
        // This process stops believing it at once; others within `CACHE_TTL`.
        let mut cache = self.cache.lock().expect("key cache");
        cache.keys.remove(&current.secret_sha256);
        cache.any_key = None;
        Ok(current)
    }

    /// Whether `row` works now.
    pub fn state(row: &api_key::Model) -> KeyState {
        if row.revoked_at_ms.is_some() {
            KeyState::Revoked
        } else if row.expires_at_ms.is_some_and(|at| at <= now_ms()) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Whether this server lets requests without a key in while no key exists.
    pub fn open_allowed(&self) -> bool {
        self.open_allowed
    }

    /// Counts active keys (for start-up messages), not through the cache.
    pub async fn count_active(&self) -> ServiceResult<u64> {
        Ok(api_key::Entity::find()
            .filter(active(now_ms()))
            .count(&self.db.orm)
            .await?)
    }
}

/// The token of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 § 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

pub fn key_not_found(id: KeyId) -> ServiceError {
    ServiceError::new(
        ErrorCode::KeyNotFound,
        format!("no API key {id}: it never existed, or belongs to another tenant"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_keys_of_the_right_shape_are_looked_up() {
        let key = format!("fk_{}", "a1".repeat(20));
        assert_eq!(bearer_token(&format!("Bearer {key}")), Some(key.as_str()));
        assert_eq!(bearer_token(&format!("bearer  {key} ")), Some(key.as_str()));
        assert_eq!(bearer_token(&format!("Basic {key}")), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert!(well_formed(&key));
        assert!(!well_formed(&key[..key.len() - 1]));
        assert!(!well_formed(&format!("fk_{}", "zz".repeat(20))));
        assert!(!well_formed(&format!("sk_{}", "a1".repeat(20))));
    }

    #[test]
    fn a_key_is_stored_as_its_digest_only() {
        let key = format!("fk_{}", "00".repeat(20));
        let stored = digest(&key);
        assert_eq!(stored.len(), 64);
        assert!(!stored.contains(&key[3..]));
        assert_ne!(stored, digest(&format!("fk_{}", "01".repeat(20))));
    }
}
