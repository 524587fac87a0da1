//! Wire types of API keys (`/v1/keys`).

use serde::{Deserialize, Serialize};

use crate::{
    ids::KeyId, service::keys::KeyRing, storage::entities::api_key, tenancy::Scopes,
    time::to_rfc3339,
};

/// `POST /v1/keys`: a key for the caller's own tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyIn {
    pub name: String,
    /// Default: `jobs:read`, `jobs:write`, `results:read`.
    pub scopes: Option<Vec<String>>,
    /// RFC 3339; default: never.
    pub expires_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyOut {
    pub id: String,
    pub tenant: String,
    pub name: String,
    /// The key's first characters, to recognise it (`fk_1a2b3c4d`).
    pub prefix: String,
    pub scopes: Vec<String>,
    /// `active`, `revoked` or `expired`.
    pub state: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// To the minute.
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
    /// The key itself: only in the answer that created it, never again.
    pub key: Option<String>,
}

impl KeyOut {
    /// The key without its secret.
    pub fn of(row: &api_key::Model) -> Self {
        Self {
            id: KeyId(row.id).to_string(),
            tenant: row.tenant.clone(),
            name: row.name.clone(),
            prefix: row.prefix.clone(),
            scopes: Scopes::from_column(&row.scopes)
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
            state: KeyRing::state(row).as_str().to_owned(),
            created_at: to_rfc3339(row.created_at_ms),
            expires_at: row.expires_at_ms.map(to_rfc3339),
            last_used_at: row.last_used_at_ms.map(to_rfc3339),
            revoked_at: row.revoked_at_ms.map(to_rfc3339),
            key: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyList {
    pub items: Vec<KeyOut>,
    pub next: Option<String>,
}
