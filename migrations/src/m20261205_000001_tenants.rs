//! Tenants and API keys. Every object a client can name belongs to a tenant: jobs, uploads,
//! webhook endpoints and events carry a `tenant` column, and every read the API makes filters on
//! it (see `storage::tenancy`). Rows written before this migration belong to the tenant
//! `default`, the one an open (keyless) server acts for, so an existing deployment keeps seeing
//! its data. Results, logs, inputs and webhook deliveries are reached only through their job or
//! endpoint, whose tenant is checked first; they need no column of their own.
//!
//! Idempotency keys are per tenant (two tenants may use the same key without one replaying the
//! other's job): the table is rebuilt with the primary key `(tenant, key)`, since neither
//! backend changes a primary key in place the same way.
//!
//! The list and feed indexes gain `tenant` as their first column, replacing the old ones: every
//! list and feed read filters on it, and with one tenant the new indexes serve exactly as the
//! old ones did.
//!
//! `ferry_api_keys` holds keys as SHA-256 digests only: a key is 160 random bits, so a fast hash
//! is enough (nothing to brute-force), and a lookup by digest is one index probe.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The tenant of rows made before tenants existed, and of an open server's requests.
const DEFAULT_TENANT: &str = "default";
/// Tenant names are at most this long (`[a-z0-9][a-z0-9_-]*`).
const TENANT_LEN: u32 = 63;

const TENANT_TABLES: [&str; 4] = [
    "ferry_jobs",
    "ferry_uploads",
    "ferry_webhook_endpoints",
    "ferry_job_events",
];

/// Indexes replaced by tenant-first ones: (old name, new name, table, new columns).
const REPLACED_INDEXES: [(&str, &str, &str, &[&str]); 4] = [
    (
        "ferry_idx_jobs_status_id",
        "ferry_idx_jobs_tenant_status_id",
        "ferry_jobs",
        &["tenant", "status", "id"],
    ),
    (
        "ferry_idx_jobs_kind_id",
        "ferry_idx_jobs_tenant_kind_id",
        "ferry_jobs",
        &["tenant", "kind", "id"],
    ),
    (
        "ferry_idx_job_events_feed",
        "ferry_idx_job_events_tenant_feed",
        "ferry_job_events",
        &["tenant", "tx", "id"],
    ),
    (
        "ferry_idx_job_events_kind_feed",
        "ferry_idx_job_events_tenant_kind_feed",
        "ferry_job_events",
        &["tenant", "kind", "tx", "id"],
    ),
];

/// New indexes: (name, table, columns).
const NEW_INDEXES: [(&str, &str, &[&str]); 3] = [
    ("ferry_idx_jobs_tenant_id", "ferry_jobs", &["tenant", "id"]),
    (
        "ferry_idx_uploads_tenant_id",
        "ferry_uploads",
        &["tenant", "id"],
    ),
    (
        "ferry_idx_api_keys_tenant_id",
        "ferry_api_keys",
        &["tenant", "id"],
    ),
];

#[derive(DeriveIden)]
enum FerryApiKeys {
    Table,
    Id,
    Tenant,
    Name,
    SecretSha256,
    Prefix,
    Scopes,
    CreatedAtMs,
    ExpiresAtMs,
    LastUsedAtMs,
    RevokedAtMs,
}

#[derive(DeriveIden)]
enum FerryIdempotencyKeys {
    Table,
    Tenant,
    Key,
    Fingerprint,
    JobId,
    CreatedAtMs,
    Holder,
    LeaseExpiresAtMs,
}

fn index(name: &str, table: &str, columns: &[&str]) -> IndexCreateStatement {
    let mut index = Index::create();
    index.name(name).table(Alias::new(table));
    for column in columns {
        index.col(Alias::new(*column));
    }
    index.to_owned()
}

fn tenant_column() -> ColumnDef {
    ColumnDef::new(Alias::new("tenant"))
        .string_len(TENANT_LEN)
        .not_null()
        .default(DEFAULT_TENANT)
        .to_owned()
}

/// `ferry_idempotency_keys` as it is after this migration (`name` lets it be built beside the
/// old one first).
fn idempotency_table(name: &str) -> TableCreateStatement {
    Table::create()
        .table(Alias::new(name))
        .col(tenant_column())
        .col(
            ColumnDef::new(FerryIdempotencyKeys::Key)
                .string_len(255)
                .not_null(),
        )
        .col(
            ColumnDef::new(FerryIdempotencyKeys::Fingerprint)
                .string_len(64)
                .not_null(),
        )
        .col(ColumnDef::new(FerryIdempotencyKeys::JobId).uuid())
        .col(
            ColumnDef::new(FerryIdempotencyKeys::CreatedAtMs)
                .big_integer()
                .not_null(),
        )
        .col(ColumnDef::new(FerryIdempotencyKeys::Holder).string_len(64))
        .col(ColumnDef::new(FerryIdempotencyKeys::LeaseExpiresAtMs).big_integer())
        .primary_key(
            Index::create()
                .col(FerryIdempotencyKeys::Tenant)
                .col(FerryIdempotencyKeys::Key),
        )
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in TENANT_TABLES {
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .add_column(tenant_column())
                    .to_owned(),
            )
            .await?;
        }

        m.create_table(idempotency_table("ferry_idempotency_keys_v2"))
            .await?;
        m.get_connection()
            .execute_unprepared(&format!(
                "INSERT INTO ferry_idempotency_keys_v2 \
                 (tenant, key, fingerprint, job_id, created_at_ms, holder, lease_expires_at_ms) \
                 SELECT '{DEFAULT_TENANT}', key, fingerprint, job_id, created_at_ms, holder, \
                 lease_expires_at_ms FROM ferry_idempotency_keys"
            ))
            .await?;
        m.drop_table(Table::drop().table(FerryIdempotencyKeys::Table).to_owned())
            .await?;
        m.rename_table(
            Table::rename()
                .table(
                    Alias::new("ferry_idempotency_keys_v2"),
                    FerryIdempotencyKeys::Table,
                )
                .to_owned(),
        )
        .await?;
        // Dropped with the old table; the names are free again.
        m.create_index(index(
            "ferry_idx_idempotency_created",
            "ferry_idempotency_keys",
            &["created_at_ms"],
        ))
        .await?;
        m.create_index(index(
            "ferry_idx_idempotency_job",
            "ferry_idempotency_keys",
            &["job_id"],
        ))
        .await?;

        m.create_table(
            Table::create()
                .table(FerryApiKeys::Table)
                .col(
                    ColumnDef::new(FerryApiKeys::Id)
                        .uuid()
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(FerryApiKeys::Tenant)
                        .string_len(TENANT_LEN)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryApiKeys::Name).text().not_null())
                .col(
                    ColumnDef::new(FerryApiKeys::SecretSha256)
                        .string_len(64)
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(FerryApiKeys::Prefix).text().not_null())
                .col(ColumnDef::new(FerryApiKeys::Scopes).text().not_null())
                .col(
                    ColumnDef::new(FerryApiKeys::CreatedAtMs)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryApiKeys::ExpiresAtMs).big_integer())
                .col(ColumnDef::new(FerryApiKeys::LastUsedAtMs).big_integer())
                .col(ColumnDef::new(FerryApiKeys::RevokedAtMs).big_integer())
                .to_owned(),
        )
        .await?;

        for (old, new, table, columns) in REPLACED_INDEXES {
            m.drop_index(Index::drop().name(old).table(Alias::new(table)).to_owned())
                .await?;
            m.create_index(index(new, table, columns)).await?;
        }
        for (name, table, columns) in NEW_INDEXES {
            m.create_index(index(name, table, columns)).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for (name, table, _) in NEW_INDEXES {
            m.drop_index(Index::drop().name(name).table(Alias::new(table)).to_owned())
                .await?;
        }
        for (old, new, table, columns) in REPLACED_INDEXES {
            m.drop_index(Index::drop().name(new).table(Alias::new(table)).to_owned())
                .await?;
            // The old index: the same columns without the tenant.
            m.create_index(index(old, table, &columns[1..])).await?;
        }
        m.drop_table(Table::drop().table(FerryApiKeys::Table).to_owned())
            .await?;
        // Idempotency keys keep their tenant column on the way down: keys of two tenants may
        // now share a name, which the old primary key could not hold.
        for table in TENANT_TABLES {
            m.alter_table(
                Table::alter()
                    .table(Alias::new(table))
                    .drop_column(Alias::new("tenant"))
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
