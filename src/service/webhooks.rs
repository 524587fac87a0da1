//! Webhook endpoints and their delivery log, as the API manages them: server-wide endpoints
//! (create, list, read, rotate the secret, disable/enable, delete), a job's own endpoint (made
//! with the job, see `service::jobs`), deliveries per job and per endpoint with every attempt,
//! and redelivery. Sending is `webhooks::deliverer`'s business.

use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, sea_query::Expr,
};
use uuid::Uuid;

use super::{ServiceError, ServiceResult, Services};
use crate::storage::lookup::{AtMostOne, Paged};
use crate::{
    error_code::ErrorCode,
    ids::{JobId, WebhookId},
    storage::{
        entities::{webhook_attempt as attempt, webhook_delivery as delivery, webhook_endpoint},
        outbox::PENDING,
        tenancy,
    },
    tenancy::Tenant,
    time::now_ms,
    webhooks::{Subscription, address::AddressPolicy, signing},
};

/// Longest endpoint description.
const MAX_DESCRIPTION: usize = 1000;

/// An endpoint as a client asks for it.
#[derive(Clone, Debug, Default)]
pub struct EndpointRequest {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
    /// `whsec_…`; generated when absent.
    pub secret: Option<String>,
}

/// A job's own webhook, checked (apart from its addresses: see [`Services::check_addresses`]).
#[derive(Clone, Debug, PartialEq)]
pub struct JobWebhook {
    pub subscription: Subscription,
    pub secret: String,
}

impl JobWebhook {
    /// Checks a job's `webhook` member; errors name `webhook.url`, `webhook.events` or
    /// `webhook.secret`.
    pub fn parse(
        url: &str,
        events: Option<&[String]>,
        secret: Option<&str>,
    ) -> ServiceResult<Self> {
        let subscription = Subscription::parse(url, events)
            .map_err(|(field, msg)| ServiceError::invalid(format!("webhook.{field}"), msg))?;
        let secret = match secret {
            Some(secret) => {
                signing::check_secret(secret)
                    .map_err(|msg| ServiceError::invalid("webhook.secret", msg))?;
                secret.to_owned()
            }
            None => signing::generate_secret(),
        };
        Ok(Self {
            subscription,
            secret,
        })
    }

    /// The endpoint row of `tenant`'s job `job_id`.
    pub fn row(&self, tenant: &Tenant, job_id: Uuid, now: i64) -> webhook_endpoint::Model {
        webhook_endpoint::Model {
            id: Uuid::now_v7(),
            tenant: tenant.as_str().to_owned(),
            job_id: Some(job_id),
            url: self.subscription.url.to_string(),
            events: self.subscription.events_column(),
            description: None,
            secret: self.secret.clone(),
            previous_secret: None,
            previous_secret_until_ms: None,
            enabled: true,
            disabled_reason: None,
            created_at_ms: now,
            updated_at_ms: now,
        }
    }
}

/// A delivery with its attempts, oldest first.
#[derive(Clone, Debug)]
pub struct DeliveryView {
    pub delivery: delivery::Model,
    pub attempts: Vec<attempt::Model>,
}

impl Services {
    fn webhook_not_found(id: impl std::fmt::Display) -> ServiceError {
        ServiceError::new(
            ErrorCode::WebhookNotFound,
            format!("no webhook endpoint {id}: it never existed or was deleted"),
        )
    }

    fn delivery_not_found(id: i64) -> ServiceError {
        ServiceError::new(
            ErrorCode::DeliveryNotFound,
            format!(
                "no webhook delivery {id}: it never existed, or its job or endpoint was deleted"
            ),
        )
    }

    /// The SSRF check at creation: `url`'s host must not be (or resolve to) an address the
    /// configuration refuses. `field` names the URL in the error.
    pub async fn check_addresses(
        &self,
        field: &str,
        subscription: &Subscription,
    ) -> ServiceResult<()> {
        AddressPolicy::of(&self.settings.webhooks)
            .check_at_creation(&subscription.url)
            .await
            .map_err(|why| {
                ServiceError::invalid(
                    field,
                    format!(
                        "webhooks may not be sent to this address: {why} (see \
                         webhooks.allow_loopback and webhooks.allow_private_networks)"
                    ),
                )
            })
    }

    pub async fn create_endpoint(
        &self,
        tenant: &Tenant,
        req: EndpointRequest,
    ) -> ServiceResult<webhook_endpoint::Model> {
        let subscription = Subscription::parse(&req.url, req.events.as_deref())
            .map_err(|(field, msg)| ServiceError::invalid(field, msg))?;
        if let Some(text) = &req.description
            && text.chars().count() > MAX_DESCRIPTION
        {
            return Err(ServiceError::invalid(
                "description",
                format!("a description holds at most {MAX_DESCRIPTION} characters"),
            ));
        }
        let secret = match req.secret {
            Some(secret) => {
                signing::check_secret(&secret)
                    .map_err(|msg| ServiceError::invalid("secret", msg))?;
                secret
            }
            None => signing::generate_secret(),
        };
        self.check_addresses("url", &subscription).await?;
        let now = now_ms();
        let row = webhook_endpoint::Model {
            id: WebhookId::new().0,
            tenant: tenant.as_str().to_owned(),
            job_id: None,
            url: subscription.url.to_string(),
            events: subscription.events_column(),
            description: req.description,
            secret,
            previous_secret: None,
            previous_secret_until_ms: None,
            enabled: true,
            disabled_reason: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        webhook_endpoint::Entity::insert(webhook_endpoint::ActiveModel::from(row.clone()))
            .exec_without_returning(&self.db.orm)
            .await?;
        tracing::info!(endpoint = %WebhookId(row.id), url = %row.url, "webhook endpoint created");
        Ok(row)
    }

    /// `tenant`'s endpoints, newest first, older than `before`; and whether more follow.
    pub async fn list_endpoints(
        &self,
        tenant: &Tenant,
        before: Option<Uuid>,
        limit: u64,
    ) -> ServiceResult<(Vec<webhook_endpoint::Model>, bool)> {
        let mut query = tenancy::find::<webhook_endpoint::Entity>(tenant)
            .filter(webhook_endpoint::Column::JobId.is_null())
            .order_by_desc(webhook_endpoint::Column::Id);
        if let Some(before) = before {
            query = query.filter(webhook_endpoint::Column::Id.lt(before));
        }
        Ok(query.page(limit, &self.db.orm).await?)
    }

    /// A tenant-wide endpoint of `tenant` (a job's own endpoint is not reachable here: it
    /// belongs to the job).
    pub async fn get_endpoint(
        &self,
        tenant: &Tenant,
        id: WebhookId,
    ) -> ServiceResult<webhook_endpoint::Model> {
        tenancy::find_by_id::<webhook_endpoint::Entity>(tenant, id.0)
            .filter(webhook_endpoint::Column::JobId.is_null())
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| Self::webhook_not_found(id))
    }

    /// Deletes an endpoint with its deliveries and their log: nothing more is sent to it.
    pub async fn delete_endpoint(&self, tenant: &Tenant, id: WebhookId) -> ServiceResult<()> {
        self.get_endpoint(tenant, id).await?;
        let mut tx = self.db.begin().await?;
        tx.execute(
            &attempt::Entity::delete_many()
                .filter(attempt::Column::EndpointId.eq(id.0))
                .into_query(),
        )
        .await?;
        tx.execute(
            &delivery::Entity::delete_many()
                .filter(delivery::Column::EndpointId.eq(id.0))
                .into_query(),
        )
        .await?;
        tx.execute(
            &webhook_endpoint::Entity::delete_many()
                .filter(webhook_endpoint::Column::Id.eq(id.0))
                .into_query(),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(endpoint = %id, "webhook endpoint deleted");
        Ok(())
    }

    /// Replaces the secret (with `secret`, or a new random one); the old one keeps signing
    /// next to it for `webhooks.secret_rotation_overlap`, so receivers can switch over.
    pub async fn rotate_endpoint_secret(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        secret: Option<String>,
    ) -> ServiceResult<webhook_endpoint::Model> {
        let current = self.get_endpoint(tenant, id).await?;
        let secret = match secret {
            Some(secret) => {
                signing::check_secret(&secret)
                    .map_err(|msg| ServiceError::invalid("secret", msg))?;
                if secret == current.secret {
                    return Err(ServiceError::invalid(
                        "secret",
                        "the new secret is the current one",
                    ));
                }
                secret
            }
            None => signing::generate_secret(),
        };
        let now = now_ms();
        let until = now + self.settings.webhooks.secret_rotation_overlap.as_millis() as i64;
        webhook_endpoint::Entity::update_many()
            .col_expr(
                webhook_endpoint::Column::Secret,
                Expr::value(secret.as_str()),
            )
            .col_expr(
                webhook_endpoint::Column::PreviousSecret,
                Expr::value(current.secret.as_str()),
            )
            .col_expr(
                webhook_endpoint::Column::PreviousSecretUntilMs,
                Expr::value(until),
            )
            .col_expr(webhook_endpoint::Column::UpdatedAtMs, Expr::value(now))
            .filter(webhook_endpoint::Column::Id.eq(id.0))
            .exec(&self.db.orm)
            .await?;
        tracing::info!(endpoint = %id, "webhook secret rotated");
        self.get_endpoint(tenant, id).await
    }

    /// Disables or enables an endpoint. While disabled, nothing is sent to it and events are
    /// not queued for it; deliveries already pending wait and go out once it is enabled again.
    pub async fn set_endpoint_enabled(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        enabled: bool,
    ) -> ServiceResult<webhook_endpoint::Model> {
        self.get_endpoint(tenant, id).await?;
        let reason = (!enabled).then_some("disabled");
        webhook_endpoint::Entity::update_many()
            .col_expr(webhook_endpoint::Column::Enabled, Expr::value(enabled))
            .col_expr(
                webhook_endpoint::Column::DisabledReason,
                Expr::value(reason),
            )
            .col_expr(webhook_endpoint::Column::UpdatedAtMs, Expr::value(now_ms()))
            .filter(webhook_endpoint::Column::Id.eq(id.0))
            .exec(&self.db.orm)
            .await?;
        self.get_endpoint(tenant, id).await
    }

    /// Deliveries of a tenant-wide endpoint, newest first.
    pub async fn endpoint_deliveries(
        &self,
        tenant: &Tenant,
        id: WebhookId,
        before: Option<i64>,
        limit: u64,
    ) -> ServiceResult<(Vec<delivery::Model>, bool)> {
        self.get_endpoint(tenant, id).await?;
        self.deliveries(delivery::Column::EndpointId.eq(id.0), before, limit)
            .await
    }

    /// Deliveries of a job's events, to every endpoint, newest first.
    pub async fn job_deliveries(
        &self,
        tenant: &Tenant,
        job: JobId,
        before: Option<i64>,
        limit: u64,
    ) -> ServiceResult<(Vec<delivery::Model>, bool)> {
        self.get_job(tenant, job).await?;
        self.deliveries(delivery::Column::JobId.eq(job.0), before, limit)
            .await
    }

    async fn deliveries(
        &self,
        of: sea_orm::sea_query::SimpleExpr,
        before: Option<i64>,
        limit: u64,
    ) -> ServiceResult<(Vec<delivery::Model>, bool)> {
        let mut query = delivery::Entity::find()
            .filter(of)
            .order_by_desc(delivery::Column::Id);
        if let Some(before) = before {
            query = query.filter(delivery::Column::Id.lt(before));
        }
        Ok(query.page(limit, &self.db.orm).await?)
    }

    /// `tenant`'s delivery `id`: one to an endpoint of `tenant` (tenant-wide or a job's own).
    pub async fn get_delivery(&self, tenant: &Tenant, id: i64) -> ServiceResult<DeliveryView> {
        let delivery = delivery::Entity::find_by_id(id)
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| Self::delivery_not_found(id))?;
        // Its endpoint is the tenant's, or the delivery is not found.
        tenancy::find_by_id::<webhook_endpoint::Entity>(tenant, delivery.endpoint_id)
            .select_only()
            .column(webhook_endpoint::Column::Id)
            .into_tuple::<Uuid>()
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| Self::delivery_not_found(id))?;
        let attempts = attempt::Entity::find()
            .filter(attempt::Column::DeliveryId.eq(id))
            .order_by_asc(attempt::Column::Id)
            .all(&self.db.orm)
            .await?;
        Ok(DeliveryView { delivery, attempts })
    }

    /// Sends a delivery once more, now, whatever its state (a delivered one too: its receiver
    /// may have lost it). A delivery whose schedule was used up gets this one attempt.
    pub async fn redeliver(&self, tenant: &Tenant, id: i64) -> ServiceResult<DeliveryView> {
        let job_id = self.get_delivery(tenant, id).await?.delivery.job_id;
        let now = now_ms();
        let mut tx = self.db.begin().await?;
        tx.execute(
            &delivery::Entity::update_many()
                .col_expr(delivery::Column::State, Expr::value(PENDING))
                .col_expr(delivery::Column::NextAttemptAtMs, Expr::value(now))
                .col_expr(delivery::Column::UpdatedAtMs, Expr::value(now))
                .filter(delivery::Column::Id.eq(id))
                .into_query(),
        )
        .await?;
        // Wakes the deliverers (in-process, and other processes' on PostgreSQL).
        tx.job_nudged(job_id);
        tx.commit().await?;
        self.get_delivery(tenant, id).await
    }
}
