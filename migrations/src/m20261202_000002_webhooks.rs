//! Webhooks: endpoints (server-wide, or bound to one job), the delivery outbox, and the log of
//! every delivery attempt.
//!
//! A delivery row is written in the same transaction as the event it carries, so an event that
//! committed always has its deliveries; a deliverer takes a row under a lease
//! (`lease_owner`, `lease_expires_at_ms`), so with many processes one sends it at a time, and a
//! process killed mid-send leaves a lease that simply runs out.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum FerryWebhookEndpoints {
    Table,
    Id,
    JobId,
    Url,
    Events,
    Description,
    Secret,
    PreviousSecret,
    PreviousSecretUntilMs,
    Enabled,
    DisabledReason,
    CreatedAtMs,
    UpdatedAtMs,
}

#[derive(DeriveIden)]
enum FerryWebhookDeliveries {
    Table,
    Id,
    EndpointId,
    JobId,
    EventSeq,
    EventType,
    State,
    Attempts,
    NextAttemptAtMs,
    LeaseOwner,
    LeaseExpiresAtMs,
    LastStatusCode,
    LastError,
    CreatedAtMs,
    UpdatedAtMs,
    DeliveredAtMs,
}

#[derive(DeriveIden)]
enum FerryWebhookAttempts {
    Table,
    Id,
    DeliveryId,
    EndpointId,
    JobId,
    Number,
    WebhookId,
    StartedAtMs,
    DurationMs,
    StatusCode,
    Error,
    ResponseExcerpt,
}

fn ms(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        use FerryWebhookAttempts as A;
        use FerryWebhookDeliveries as D;
        use FerryWebhookEndpoints as E;
        m.create_table(
            Table::create()
                .table(E::Table)
                .col(ColumnDef::new(E::Id).uuid().not_null().primary_key())
                .col(ColumnDef::new(E::JobId).uuid())
                .col(ColumnDef::new(E::Url).text().not_null())
                .col(ColumnDef::new(E::Events).text().not_null())
                .col(ColumnDef::new(E::Description).text())
                .col(ColumnDef::new(E::Secret).string_len(128).not_null())
                .col(ColumnDef::new(E::PreviousSecret).string_len(128))
                .col(ColumnDef::new(E::PreviousSecretUntilMs).big_integer())
                .col(ColumnDef::new(E::Enabled).boolean().not_null())
                .col(ColumnDef::new(E::DisabledReason).text())
                .col(ms(E::CreatedAtMs))
                .col(ms(E::UpdatedAtMs))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_webhook_endpoints_job")
                .table(E::Table)
                .col(E::JobId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(D::Table)
                .col(
                    ColumnDef::new(D::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(D::EndpointId).uuid().not_null())
                .col(ColumnDef::new(D::JobId).uuid().not_null())
                .col(ColumnDef::new(D::EventSeq).big_integer().not_null())
                .col(ColumnDef::new(D::EventType).string_len(32).not_null())
                .col(ColumnDef::new(D::State).string_len(16).not_null())
                .col(ColumnDef::new(D::Attempts).integer().not_null())
                .col(ColumnDef::new(D::NextAttemptAtMs).big_integer())
                .col(ColumnDef::new(D::LeaseOwner).string_len(64))
                .col(ColumnDef::new(D::LeaseExpiresAtMs).big_integer())
                .col(ColumnDef::new(D::LastStatusCode).integer())
                .col(ColumnDef::new(D::LastError).text())
                .col(ms(D::CreatedAtMs))
                .col(ms(D::UpdatedAtMs))
                .col(ColumnDef::new(D::DeliveredAtMs).big_integer())
                .to_owned(),
        )
        .await?;
        // The deliverer's scan: pending rows by due time.
        m.create_index(
            Index::create()
                .name("ferry_idx_webhook_deliveries_due")
                .table(D::Table)
                .col(D::State)
                .col(D::NextAttemptAtMs)
                .to_owned(),
        )
        .await?;
        // Per-job order for one endpoint, coalescing, and an endpoint's delivery log.
        m.create_index(
            Index::create()
                .name("ferry_idx_webhook_deliveries_endpoint_job")
                .table(D::Table)
                .col(D::EndpointId)
                .col(D::JobId)
                .col(D::EventSeq)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_webhook_deliveries_job")
                .table(D::Table)
                .col(D::JobId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(A::Table)
                .col(
                    ColumnDef::new(A::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(ColumnDef::new(A::DeliveryId).big_integer().not_null())
                .col(ColumnDef::new(A::EndpointId).uuid().not_null())
                .col(ColumnDef::new(A::JobId).uuid().not_null())
                .col(ColumnDef::new(A::Number).integer().not_null())
                .col(ColumnDef::new(A::WebhookId).string_len(80).not_null())
                .col(ms(A::StartedAtMs))
                .col(ms(A::DurationMs))
                .col(ColumnDef::new(A::StatusCode).integer())
                .col(ColumnDef::new(A::Error).text())
                .col(ColumnDef::new(A::ResponseExcerpt).text())
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_webhook_attempts_delivery")
                .table(A::Table)
                .col(A::DeliveryId)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ferry_idx_webhook_attempts_job")
                .table(A::Table)
                .col(A::JobId)
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            FerryWebhookAttempts::Table.into_iden(),
            FerryWebhookDeliveries::Table.into_iden(),
            FerryWebhookEndpoints::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}
