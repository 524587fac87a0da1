//! Uploads: stream a body into the blob store, verify it, record it. A row exists only for a
//! complete, durable upload, so a client that disconnects midway leaves nothing behind.
//!
//! Each upload holds one of `limits.max_concurrent_uploads` slots of this process and one of
//! `limits.max_uploads_per_client` of its client's address, and its body is paced
//! ([`super::pacing`]): a client that stalls is cut off and its slots are free again.
//!
//! Deleting and expiring share one path: the row is first marked expired (so no job can attach
//! it any more), then the bytes are deleted, then the row. A crash between the steps leaves an
//! expired row, which the reconciler finishes deleting.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures_util::Stream;
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QueryTrait,
    sea_query::{Expr, ExprTrait},
};
use uuid::Uuid;

use super::{
    ServiceError, ServiceResult, Services,
    pacing::{Pace, paced_body},
    quota::charged_body,
};
use crate::storage::lookup::{AtMostOne, Paged};
use crate::{
    blobs::keys,
    error_code::ErrorCode,
    ids::UploadId,
    storage::{entities::upload, tenancy},
    tenancy::Tenant,
    time::now_ms,
};

/// Which uploads `GET /v1/uploads` lists.
#[derive(Clone, Debug, Default)]
pub struct UploadFilter {
    /// `Some(true)`: only inputs of a job; `Some(false)`: only uploads no job uses yet.
    pub attached: Option<bool>,
    /// Only uploads older than this one (the `next` cursor).
    pub before_id: Option<Uuid>,
    pub limit: u64,
}

/// What the client told us about an upload before sending it.
#[derive(Clone, Debug, Default)]
pub struct UploadMeta {
    pub content_type: Option<String>,
    /// The file's name, as the client gave it.
    pub filename: Option<String>,
    pub declared_length: Option<u64>,
    /// From `Repr-Digest` / `Content-Digest`.
    pub expected_sha256: Option<[u8; 32]>,
    /// The address the request came from (the connection's peer), for its share of the slots.
    pub client: Option<IpAddr>,
}

/// Uploads in progress per client address.
#[derive(Clone, Debug, Default)]
pub struct ClientShares(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One upload of a client in progress; given back when dropped.
#[derive(Debug)]
pub struct ClientShare {
    shares: ClientShares,
    client: IpAddr,
}

impl ClientShares {
    /// Takes one of `client`'s `max` shares, if it has one left.
    fn take(&self, client: IpAddr, max: usize) -> Option<ClientShare> {
        let mut counts = self.0.lock().expect("client shares lock");
        let count = counts.entry(client).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientShare {
            shares: self.clone(),
            client,
        })
    }
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut counts = self.shares.0.lock().expect("client shares lock");
        if let Some(count) = counts.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

impl Services {
    /// Fails fast, before any byte is read, when the declared length is zero or over the limit.
    pub(super) fn check_declared_length(&self, declared: Option<u64>) -> ServiceResult<()> {
        let limit = self.settings.limits.max_upload_bytes;
        match declared {
            Some(0) => Err(empty_body()),
            Some(len) if len > limit => Err(ServiceError::new(
                ErrorCode::PayloadTooLarge,
                format!("Content-Length {len} exceeds the upload limit of {limit} bytes"),
            )),
            _ => Ok(()),
        }
    }

    pub async fn create_upload<S, E>(
        &self,
        tenant: &Tenant,
        body: S,
        meta: UploadMeta,
    ) -> ServiceResult<upload::Model>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let row = self.store_upload(tenant, body, meta).await?;
        let id = UploadId(row.id);
        match self.record_upload(&row).await {
            Ok(()) => {
                tracing::info!(upload = %id, size = row.size, "upload stored");
                Ok(row)
            }
            Err(err) => {
                self.discard_stored_upload(id).await;
                Err(err)
            }
        }
    }

    /// Records a stored upload, and counts it in its tenant's day ([`super::quota`]).
    pub(super) async fn record_upload(&self, row: &upload::Model) -> ServiceResult<()> {
        let mut tx = self.db.begin().await?;
        tx.execute(&upload::Entity::insert(upload::ActiveModel::from(row.clone())).into_query())
            .await?;
        Self::count_uploaded(&mut tx, &row.tenant, row.size, row.created_at_ms).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Streams a body into the blob store and checks it (declared length, digest, not empty);
    /// returns its row, not yet recorded: the caller records it (`create_upload`, or the
    /// transaction that creates a job from it) or discards the bytes. Counted in the metrics.
    pub(crate) async fn store_upload<S, E>(
        &self,
        tenant: &Tenant,
        body: S,
        meta: UploadMeta,
    ) -> ServiceResult<upload::Model>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let began = std::time::Instant::now();
        let stored = self.receive_upload(tenant, body, meta).await;
        match &stored {
            Ok(row) => self
                .db
                .metrics()
                .upload_stored(row.size as u64, began.elapsed()),
            Err(e) if e.code.status() < 500 => self.db.metrics().upload_ended("refused"),
            Err(_) => self.db.metrics().upload_ended("failed"),
        }
        stored
    }

    async fn receive_upload<S, E>(
        &self,
        tenant: &Tenant,
        body: S,
        meta: UploadMeta,
    ) -> ServiceResult<upload::Model>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.check_declared_length(meta.declared_length)?;
        let in_flight = self.open_upload_quota(tenant, meta.declared_length).await?;
        // Held until this upload is stored or refused: bounds memory across all uploads.
        let _slot = self.take_upload_slot()?;
        let _share = match meta.client {
            None => None,
            Some(client) => Some(self.take_client_share(client)?),
        };
        let id = UploadId::new();
        let key = keys::upload(id.0);
        let body = charged_body(paced_body(body, Pace::of(&self.settings.limits)), in_flight);
        let stored = self
            .blobs
            .put_stream(&key, body, self.settings.limits.max_upload_bytes)
            .await?;
        let reject = |err: ServiceError| async {
            self.discard_stored_upload(id).await;
            Err(err)
        };
        if let Some(declared) = meta.declared_length
            && declared != stored.size
        {
            return reject(ServiceError::new(
                ErrorCode::BodyIncomplete,
                format!(
                    "received {} bytes but Content-Length said {declared}",
                    stored.size
                ),
            ))
            .await;
        }
        if stored.size == 0 {
            return reject(empty_body()).await;
        }
        if let Err(over) = self.check_upload_room(tenant, stored.size).await {
            return reject(over).await;
        }
        if let Some(expected) = meta.expected_sha256
            && expected != stored.sha256
        {
            return reject(ServiceError::new(
                ErrorCode::DigestMismatch,
                format!(
                    "the body's SHA-256 is {} but the digest header says {}; the upload was \
                     discarded, send it again",
                    stored.sha256_hex(),
                    hex::encode(expected)
                ),
            ))
            .await;
        }
        let now = now_ms();
        let ttl_ms = self.settings.limits.upload_ttl.as_millis() as i64;
        Ok(upload::Model {
            id: id.0,
            tenant: tenant.as_str().to_owned(),
            size: stored.size as i64,
            sha256: stored.sha256_hex(),
            content_type: meta.content_type,
            blob_key: key.to_string(),
            filename: meta.filename,
            job_count: 0,
            created_at_ms: now,
            expires_at_ms: Some(now + ttl_ms),
        })
    }

    /// Deletes the bytes of an upload that was stored but will not be recorded. (Bytes left
    /// behind by a process that died first are swept by the reconciler.)
    pub(crate) async fn discard_stored_upload(&self, id: UploadId) {
        if let Err(e) = self.blobs.delete(&keys::upload(id.0)).await {
            tracing::warn!(upload = %id, error = %e, "could not delete a refused upload");
        }
    }

    /// One of this process's `limits.max_concurrent_uploads` slots, held while a body arrives.
    pub(super) fn take_upload_slot(&self) -> ServiceResult<tokio::sync::OwnedSemaphorePermit> {
        self.upload_slots.clone().try_acquire_owned().map_err(|_| {
            ServiceError::new(
                ErrorCode::UploadsAtCapacity,
                format!(
                    "this server is already receiving {} uploads; retry shortly",
                    self.settings.limits.max_concurrent_uploads
                ),
            )
        })
    }

    pub(super) fn take_client_share(&self, client: IpAddr) -> ServiceResult<ClientShare> {
        let max = self.settings.limits.max_uploads_per_client;
        self.upload_clients.take(client, max).ok_or_else(|| {
            ServiceError::new(
                ErrorCode::ClientUploadsAtCapacity,
                format!(
                    "{client} already sends {max} uploads at once, its share of this server's \
                     upload slots; retry when one of them has finished"
                ),
            )
        })
    }

    /// `tenant`'s upload `id`, unless it expired; another tenant's is not found.
    pub async fn get_upload(&self, tenant: &Tenant, id: UploadId) -> ServiceResult<upload::Model> {
        tenancy::find_by_id::<upload::Entity>(tenant, id.0)
            .filter(
                upload::Column::ExpiresAtMs
                    .is_null()
                    .or(upload::Column::ExpiresAtMs.gt(now_ms())),
            )
            .at_most_one(&self.db.orm)
            .await?
            .ok_or_else(|| upload_not_found(id))
    }

    /// Unexpired uploads, newest first (ids are UUIDv7). Returns the page and whether more
    /// uploads follow it.
    pub async fn list_uploads(
        &self,
        tenant: &Tenant,
        filter: UploadFilter,
    ) -> ServiceResult<(Vec<upload::Model>, bool)> {
        let mut query = tenancy::find::<upload::Entity>(tenant)
            .filter(
                upload::Column::ExpiresAtMs
                    .is_null()
                    .or(upload::Column::ExpiresAtMs.gt(now_ms())),
            )
            .order_by_desc(upload::Column::Id);
        query = match filter.attached {
            Some(true) => query.filter(upload::Column::JobCount.gt(0)),
            Some(false) => query.filter(upload::Column::JobCount.eq(0)),
            None => query,
        };
        if let Some(cursor) = filter.before_id {
            query = query.filter(upload::Column::Id.lt(cursor));
        }
        Ok(query.page(filter.limit, &self.db.orm).await?)
    }

    pub async fn delete_upload(&self, tenant: &Tenant, id: UploadId) -> ServiceResult<()> {
        // An expired upload is already gone as far as clients are concerned.
        let row = self.get_upload(tenant, id).await?;
        if row.job_count > 0 {
            return Err(in_use(id, row.job_count));
        }
        let marked = upload::Entity::update_many()
            .col_expr(upload::Column::ExpiresAtMs, Expr::value(0i64))
            .filter(upload::Column::Id.eq(id.0))
            .filter(upload::Column::JobCount.eq(0))
            .exec(&self.db.orm)
            .await?;
        if marked.rows_affected == 0 {
            return Err(in_use(id, 1));
        }
        self.purge_upload(row.id, &row.blob_key).await
    }

    /// Deletes an expired (or marked) upload's bytes, then its row.
    pub(crate) async fn purge_upload(&self, id: Uuid, blob_key: &str) -> ServiceResult<()> {
        self.blobs
            .delete(&object_store::path::Path::from(blob_key))
            .await?;
        upload::Entity::delete_many()
            .filter(upload::Column::Id.eq(id))
            .filter(upload::Column::JobCount.eq(0))
            .exec(&self.db.orm)
            .await?;
        Ok(())
    }
}

/// An upload without bytes is refused: it is almost always a client that lost its file (curl
/// sends an empty body, with a mere warning, when `--data-binary @FILE` cannot read FILE), and
/// a job would run on nothing. HTTP cannot tell a missing body from an empty one.
fn empty_body() -> ServiceError {
    ServiceError::new(
        ErrorCode::EmptyBody,
        "the body is empty: an upload needs at least one byte (did the client fail to read its \
         file?)",
    )
}

fn in_use(id: UploadId, jobs: i64) -> ServiceError {
    let jobs = match jobs {
        1 => "a job".to_owned(),
        n => format!("{n} jobs"),
    };
    ServiceError::new(
        ErrorCode::UploadInUse,
        format!(
            "upload {id} is an input of {jobs}; it is deleted with the last job that uses it \
             (GET /v1/jobs?upload={id} lists them)"
        ),
    )
}

fn upload_not_found(id: UploadId) -> ServiceError {
    ServiceError::new(
        ErrorCode::UploadNotFound,
        format!("no upload {id}: it never existed, expired or was deleted"),
    )
}
