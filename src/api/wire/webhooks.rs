//! Wire types of webhook endpoints and deliveries (`/v1/webhooks`, `…/webhook-deliveries`).

use serde::{Deserialize, Serialize};

use crate::{
    ids::{JobId, WebhookId},
    service::webhooks::DeliveryView,
    storage::entities::{webhook_attempt, webhook_delivery, webhook_endpoint},
    time::to_rfc3339,
    webhooks::{events_of_column, payload},
};

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookIn {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    pub secret: Option<String>,
}

/// `POST /v1/webhooks/{id}/rotate-secret`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateSecretIn {
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub deliveries: String,
    pub rotate_secret: String,
    pub disable: String,
    pub enable: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookOut {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub enabled: bool,
    /// `gone` (the receiver answered 410) or `disabled` (over the API); null while enabled.
    pub disabled_reason: Option<String>,
    /// Only in the answers to creation and rotation.
    pub secret: Option<String>,
    /// Until when the secret before the last rotation still signs too.
    pub previous_secret_expires_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub links: WebhookLinks,
}

impl WebhookOut {
    /// The endpoint without its secret.
    pub fn of(e: &webhook_endpoint::Model) -> Self {
        let id = WebhookId(e.id).to_string();
        let base = format!("/v1/webhooks/{id}");
        Self {
            id,
            url: e.url.clone(),
            events: events_of_column(&e.events),
            description: e.description.clone(),
            enabled: e.enabled,
            disabled_reason: e.disabled_reason.clone(),
            secret: None,
            previous_secret_expires_at: e
                .previous_secret_until_ms
                .filter(|_| e.previous_secret.is_some())
                .map(to_rfc3339),
            created_at: to_rfc3339(e.created_at_ms),
            updated_at: to_rfc3339(e.updated_at_ms),
            links: WebhookLinks {
                deliveries: format!("{base}/deliveries"),
                rotate_secret: format!("{base}/rotate-secret"),
                disable: format!("{base}/disable"),
                enable: format!("{base}/enable"),
                self_: base,
            },
        }
    }

    /// The endpoint with its secret (creation, rotation).
    pub fn with_secret(e: &webhook_endpoint::Model) -> Self {
        Self {
            secret: Some(e.secret.clone()),
            ..Self::of(e)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookList {
    pub items: Vec<WebhookOut>,
    pub next: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub redeliver: String,
    pub job: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptOut {
    pub number: i32,
    pub webhook_id: String,
    pub started_at: String,
    pub duration_ms: i64,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

impl From<&webhook_attempt::Model> for AttemptOut {
    fn from(a: &webhook_attempt::Model) -> Self {
        Self {
            number: a.number,
            webhook_id: a.webhook_id.clone(),
            started_at: to_rfc3339(a.started_at_ms),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error.clone(),
            response_excerpt: a.response_excerpt.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOut {
    pub id: i64,
    pub job_id: String,
    pub endpoint_id: String,
    pub event_seq: i64,
    pub event_type: String,
    /// The `webhook-id` header: the same on every attempt of this delivery.
    pub webhook_id: String,
    /// `pending`, `succeeded` or `failed`.
    pub state: String,
    pub attempts: i32,
    /// When a pending delivery is tried next.
    pub next_attempt_at: Option<String>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    /// Every attempt, oldest first: only when one delivery is read.
    pub attempt_log: Option<Vec<AttemptOut>>,
    pub links: DeliveryLinks,
}

impl From<&webhook_delivery::Model> for DeliveryOut {
    fn from(d: &webhook_delivery::Model) -> Self {
        let base = format!("/v1/webhook-deliveries/{}", d.id);
        let pending = d.state == crate::storage::outbox::PENDING;
        Self {
            id: d.id,
            job_id: JobId(d.job_id).to_string(),
            endpoint_id: WebhookId(d.endpoint_id).to_string(),
            event_seq: d.event_seq,
            event_type: d.event_type.clone(),
            webhook_id: payload::event_id(d.job_id, d.event_seq),
            state: d.state.clone(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at_ms.filter(|_| pending).map(to_rfc3339),
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            created_at: to_rfc3339(d.created_at_ms),
            delivered_at: d.delivered_at_ms.map(to_rfc3339),
            attempt_log: None,
            links: DeliveryLinks {
                redeliver: format!("{base}/redeliver"),
                job: format!("/v1/jobs/{}", JobId(d.job_id)),
                self_: base,
            },
        }
    }
}

impl From<&DeliveryView> for DeliveryOut {
    fn from(v: &DeliveryView) -> Self {
        Self {
            attempt_log: Some(v.attempts.iter().map(AttemptOut::from).collect()),
            ..Self::from(&v.delivery)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryList {
    pub items: Vec<DeliveryOut>,
    pub next: Option<String>,
}
