//! Results: listing a job's artifacts and streaming their bytes, whole or by range.

use std::ops::Range;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::{ServiceError, ServiceResult, Services, jobs::JobView};
use crate::storage::lookup::AtMostOne;
use crate::{
    blobs::BlobError, domain::validate_result_name, error_code::ErrorCode, ids::JobId,
    storage::entities::result, tenancy::Tenant,
};

impl Services {
    /// The job (it says when its results expire) and its results, oldest first.
    pub async fn list_results(
        &self,
        tenant: &Tenant,
        job: JobId,
    ) -> ServiceResult<(JobView, Vec<result::Model>)> {
        let view = self.get_job(tenant, job).await?;
        let rows = result::Entity::find()
            .filter(result::Column::JobId.eq(job.0))
            .order_by_asc(result::Column::CreatedAtMs)
            .order_by_asc(result::Column::Name)
            .all(&self.db.orm)
            .await?;
        Ok((view, rows))
    }

    pub async fn get_result(
        &self,
        tenant: &Tenant,
        job: JobId,
        name: &str,
    ) -> ServiceResult<result::Model> {
        validate_result_name(name)
            .map_err(|msg| ServiceError::invalid("name", format!("result name {name:?} {msg}")))?;
        self.get_job(tenant, job).await?;
        result::Entity::find()
            .filter(result::Column::JobId.eq(job.0))
            .filter(result::Column::Name.eq(name))
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| {
                ServiceError::new(
                    ErrorCode::ResultNotFound,
                    format!("job {job} has no result named {name:?} (yet)"),
                )
            })
    }

    pub async fn open_result(
        &self,
        row: &result::Model,
        range: Option<Range<u64>>,
    ) -> ServiceResult<BoxStream<'static, Result<Bytes, BlobError>>> {
        Ok(self
            .blobs
            .get(
                &object_store::path::Path::from(row.blob_key.as_str()),
                range,
            )
            .await?)
    }

    /// Checks that a result's bytes are still stored, without reading them (a `HEAD` answers
    /// what a `GET` would: `blob_missing` when they are gone).
    pub async fn check_result_stored(&self, row: &result::Model) -> ServiceResult<()> {
        self.blobs
            .head(&object_store::path::Path::from(row.blob_key.as_str()))
            .await?;
        Ok(())
    }
}
