//! The audit trail: one row per request a tenant's key made — who (key, tenant, client
//! address), what (`GET /v1/jobs/{id}` and the object's id), when, and the answer's status —
//! and never a payload, a parameter or a result. Append-only: Ferry never updates a row, and
//! deletes none (keeping them is the operator's policy). Read newest first per tenant, filtered
//! by key, action or object: `(tenant, id)` serves the plain page, `(tenant, key_id, id)` what one
//! key did, `(tenant, object_id, id)` the history of one object.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum FerryAuditEvents {
    Table,
    Id,
    Tenant,
    KeyId,
    Action,
    ObjectId,
    Status,
    ClientAddr,
    AtMs,
}

const INDEXES: [(&str, &[FerryAuditEvents]); 3] = [
    (
        "ferry_idx_audit_tenant_id",
        &[FerryAuditEvents::Tenant, FerryAuditEvents::Id],
    ),
    (
        "ferry_idx_audit_tenant_key_id",
        &[
            FerryAuditEvents::Tenant,
            FerryAuditEvents::KeyId,
            FerryAuditEvents::Id,
        ],
    ),
    (
        "ferry_idx_audit_tenant_object_id",
        &[
            FerryAuditEvents::Tenant,
            FerryAuditEvents::ObjectId,
            FerryAuditEvents::Id,
        ],
    ),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(FerryAuditEvents::Table)
                .col(
                    ColumnDef::new(FerryAuditEvents::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(FerryAuditEvents::Tenant)
                        .string_len(63)
                        .not_null(),
                )
                .col(ColumnDef::new(FerryAuditEvents::KeyId).uuid())
                .col(ColumnDef::new(FerryAuditEvents::Action).text().not_null())
                .col(ColumnDef::new(FerryAuditEvents::ObjectId).text())
                .col(
                    ColumnDef::new(FerryAuditEvents::Status)
                        .integer()
                        .not_null(),
                )
                .col(ColumnDef::new(FerryAuditEvents::ClientAddr).text())
                .col(
                    ColumnDef::new(FerryAuditEvents::AtMs)
                        .big_integer()
                        .not_null(),
                )
                .to_owned(),
        )
        .await?;
        for (name, columns) in INDEXES {
            let mut index = Index::create();
            index.name(name).table(FerryAuditEvents::Table);
            for column in columns {
                index.col(*column);
            }
            m.create_index(index.to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(FerryAuditEvents::Table).to_owned())
            .await
    }
}
