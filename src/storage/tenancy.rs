//! Tenant-scoped statements: how the service layer reaches the objects a client names (jobs,
//! uploads, webhook endpoints, events). Each constructor here filters on the tenant, so a read
//! made through them cannot return another tenant's row; another tenant's id reads as an id that
//! does not exist. Rows reached only through one of these (a job's results, logs, inputs and
//! webhook deliveries) are read after their owner was found here.
//!
//! Work done for every tenant (workers, the reconciler, the webhook deliverer) uses sea-orm
//! directly: it acts on what tenants already made, never on what a request names.

use sea_orm::{
    ColumnTrait, DeleteMany, EntityTrait, PrimaryKeyTrait, QueryFilter, Select, UpdateMany,
};

use super::entities::{job, job_event, upload, webhook_endpoint};
use crate::tenancy::Tenant;

/// A table whose rows belong to a tenant.
pub trait Owned: EntityTrait {
    fn tenant_column() -> Self::Column;
}

impl Owned for job::Entity {
    fn tenant_column() -> job::Column {
        job::Column::Tenant
    }
}

impl Owned for upload::Entity {
    fn tenant_column() -> upload::Column {
        upload::Column::Tenant
    }
}

impl Owned for webhook_endpoint::Entity {
    fn tenant_column() -> webhook_endpoint::Column {
        webhook_endpoint::Column::Tenant
    }
}

impl Owned for job_event::Entity {
    fn tenant_column() -> job_event::Column {
        job_event::Column::Tenant
    }
}

/// `SELECT … FROM E WHERE tenant = ?`
pub fn find<E: Owned>(tenant: &Tenant) -> Select<E> {
    E::find().filter(E::tenant_column().eq(tenant.as_str()))
}

/// The row `id` of `E`, if it is `tenant`'s.
pub fn find_by_id<E: Owned>(
    tenant: &Tenant,
    id: impl Into<<E::PrimaryKey as PrimaryKeyTrait>::ValueType>,
) -> Select<E> {
    E::find_by_id(id).filter(E::tenant_column().eq(tenant.as_str()))
}

/// `UPDATE E … WHERE tenant = ?`
pub fn update_many<E: Owned>(tenant: &Tenant) -> UpdateMany<E> {
    E::update_many().filter(E::tenant_column().eq(tenant.as_str()))
}

/// `DELETE FROM E WHERE tenant = ?`
pub fn delete_many<E: Owned>(tenant: &Tenant) -> DeleteMany<E> {
    E::delete_many().filter(E::tenant_column().eq(tenant.as_str()))
}
