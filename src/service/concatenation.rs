//! tus' concatenation: a client sends parts of a file as separate uploads, in parallel
//! (`Upload-Concat: partial`), then asks for the final upload that joins them
//! (`Upload-Concat: final;<part> <part> …`). Each part, once complete, is an ordinary upload;
//! the final upload is made from their bytes in order, recorded like any upload (with the job
//! its metadata asks for), and the parts are deleted.
//!
//! Joining reads every part's bytes once: the final upload's SHA-256 cannot be derived from the
//! parts' digests, and object_store offers no server-side "copy a range into a part" on S3
//! (`UploadPartCopy`), so the bytes pass through this process, streamed, never held whole.
//! Nothing is charged to the tenant's daily upload bytes again: the parts were.

use futures_util::{StreamExt, TryStreamExt};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryTrait};

use super::{ServiceError, ServiceResult, Services, inputs::InputUpload, resumable::NewResumable};
use crate::{
    blobs::{BlobError, keys},
    error_code::ErrorCode,
    ids::{JobId, UploadId},
    storage::{
        entities::{resumable_upload, upload},
        lookup::AtMostOne,
    },
    tenancy::Tenant,
    time::now_ms,
};

/// Parts one final upload may join.
pub const MAX_PARTS: usize = 1000;

/// The final upload, recorded.
#[derive(Debug)]
pub struct Joined {
    pub upload: upload::Model,
    pub job: Option<JobId>,
    /// Why the job the metadata asked for was not created (the upload was kept).
    pub job_problem: Option<ServiceError>,
}

impl Services {
    /// Joins the complete partial uploads `parts`, in order, into a new upload described by
    /// `new` (its metadata; its length is theirs).
    pub async fn concatenate(
        &self,
        tenant: &Tenant,
        parts: Vec<UploadId>,
        new: NewResumable,
    ) -> ServiceResult<Joined> {
        if parts.is_empty() || parts.len() > MAX_PARTS {
            return Err(concat_problem(format!(
                "a final upload joins 1 to {MAX_PARTS} partial uploads"
            )));
        }
        if let Some(job) = &new.job {
            self.check_job_on_completion(job).await?;
            self.precheck_queue_room(tenant).await?;
        }
        let rows = self.complete_parts(tenant, &parts).await?;
        let size: u64 = rows.iter().map(|row| row.size.max(0) as u64).sum();
        let limit = self.settings.limits.max_upload_bytes;
        if size > limit {
            return Err(ServiceError::new(
                ErrorCode::PayloadTooLarge,
                format!("the parts add up to {size} bytes; the upload limit is {limit}"),
            ));
        }
        let _slot = self.take_upload_slot()?;
        let id = UploadId::new();
        let key = keys::upload(id.0);
        let blobs = self.blobs.clone();
        let bytes = futures_util::stream::iter(rows.clone())
            .then(move |row| {
                let blobs = blobs.clone();
                async move { blobs.get(&keys::upload(row.id), None).await }
            })
            .try_flatten()
            .map_err(|e: BlobError| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) });
        let stored = self.blobs.put_stream(&key, bytes, limit).await?;
        if stored.size != size {
            self.discard_stored_upload(id).await;
            return Err(ServiceError::internal(
                "joining partial uploads",
                format!("read {} bytes of parts holding {size}", stored.size),
            ));
        }
        let now = now_ms();
        let row = upload::Model {
            id: id.0,
            tenant: tenant.as_str().to_owned(),
            size: size as i64,
            sha256: stored.sha256_hex(),
            content_type: new.content_type,
            blob_key: key.to_string(),
            filename: new.filename,
            job_count: 0,
            created_at_ms: now,
            expires_at_ms: Some(now + self.settings.limits.upload_ttl.as_millis() as i64),
        };
        if let Err(err) = self.replace_parts(&row, &rows).await {
            self.discard_stored_upload(id).await;
            return Err(err);
        }
        for part in &rows {
            self.discard_stored_upload(UploadId(part.id)).await;
        }
        tracing::info!(upload = %id, size, parts = rows.len(), "partial uploads joined");
        let (job, job_problem) = match new.job {
            None => (None, None),
            Some(job) => match self
                .create_job_on(tenant, job, InputUpload::Recorded(row.clone()))
                .await
            {
                Ok(job) => (Some(job), None),
                Err(err) => {
                    tracing::warn!(upload = %id, error = %err,
                        "a joined upload's job could not be created; the upload is kept");
                    (None, Some(err))
                }
            },
        };
        Ok(Joined {
            upload: row,
            job,
            job_problem,
        })
    }

    /// The uploads `parts` name, in order: each must be `tenant`'s, complete, unexpired and no
    /// job's input, and named once.
    async fn complete_parts(
        &self,
        tenant: &Tenant,
        parts: &[UploadId],
    ) -> ServiceResult<Vec<upload::Model>> {
        let mut rows = Vec::with_capacity(parts.len());
        for (i, id) in parts.iter().enumerate() {
            if parts[..i].contains(id) {
                return Err(concat_problem(format!(
                    "partial upload {id} is named twice"
                )));
            }
            let row = match self.get_upload(tenant, *id).await {
                Ok(row) => row,
                Err(e) if e.code == ErrorCode::UploadNotFound => {
                    let unfinished = resumable_upload::Entity::find_by_id(id.0)
                        .filter(resumable_upload::Column::Tenant.eq(tenant.as_str()))
                        .at_most_one(&self.db.orm)
                        .await?
                        .is_some();
                    return Err(concat_problem(if unfinished {
                        format!("partial upload {id} is not complete yet; finish it first")
                    } else {
                        format!("no partial upload {id}: it never existed, expired or was deleted")
                    }));
                }
                Err(e) => return Err(e),
            };
            if row.job_count > 0 {
                return Err(concat_problem(format!(
                    "upload {id} is the input of a job, not a part to join"
                )));
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Records the joined upload and deletes its parts' rows, in one transaction: either the
    /// final upload exists and the parts are gone, or nothing changed.
    async fn replace_parts(
        &self,
        joined: &upload::Model,
        parts: &[upload::Model],
    ) -> ServiceResult<()> {
        let mut tx = self.db.begin().await?;
        tx.execute(&upload::Entity::insert(upload::ActiveModel::from(joined.clone())).into_query())
            .await?;
        let ids: Vec<uuid::Uuid> = parts.iter().map(|part| part.id).collect();
        let deleted = tx
            .execute(
                &upload::Entity::delete_many()
                    .filter(upload::Column::Id.is_in(ids))
                    .filter(upload::Column::JobCount.eq(0))
                    .into_query(),
            )
            .await?;
        if deleted != parts.len() as u64 {
            // A part was taken by a job or deleted meanwhile; dropping `tx` rolls back.
            return Err(concat_problem(
                "a partial upload was taken by a job or deleted meanwhile",
            ));
        }
        tx.commit().await?;
        Ok(())
    }
}

fn concat_problem(detail: impl Into<String>) -> ServiceError {
    ServiceError::new(ErrorCode::InvalidUploadHeader, detail)
}
