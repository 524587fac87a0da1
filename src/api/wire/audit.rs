//! Wire types of the audit trail (`/v1/audit`).

use serde::{Deserialize, Serialize};

use crate::{ids::KeyId, storage::entities::audit_event, time::to_rfc3339};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEventOut {
    /// Increasing; the `next` cursor.
    pub id: String,
    pub tenant: String,
    /// The key that made the request; null on an open server.
    pub key_id: Option<String>,
    /// `GET /v1/jobs/{id}`: the route (HEAD recorded as GET).
    pub action: String,
    pub object_id: Option<String>,
    pub status: u16,
    pub client_addr: Option<String>,
    pub at: String,
}

impl AuditEventOut {
    pub fn of(row: &audit_event::Model) -> Self {
        Self {
            id: row.id.to_string(),
            tenant: row.tenant.clone(),
            key_id: row.key_id.map(|k| KeyId(k).to_string()),
            action: row.action.clone(),
            object_id: row.object_id.clone(),
            status: u16::try_from(row.status).unwrap_or_default(),
            client_addr: row.client_addr.clone(),
            at: to_rfc3339(row.at_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditList {
    pub items: Vec<AuditEventOut>,
    pub next: Option<String>,
}
