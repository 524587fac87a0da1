//! Objects no row points to, found by listing the blob store and deleted:
//!
//! - `jobs/<job>/results/<attempt>/<name>` without a result row, unless that attempt is the one
//!   running now (it may be about to record it). An attempt that is over can never record a
//!   result again — every write is guarded by its lease — so its unrecorded objects are
//!   garbage: stored before its worker died between storing and recording, or an earlier
//!   attempt's object whose deletion after a replacement was cut short. Objects of a job that no
//!   longer exists go too.
//! - `uploads/<id>` without an upload row, once older than [`UPLOAD_GRACE`] (a live upload
//!   records its row a moment after storing its bytes).
//!
//! The job's row is read before its results, so a result recorded by the running attempt just
//! before it ended is seen. Anything under another prefix, or not shaped like Ferry's keys, is
//! left alone. Deleting is idempotent, so every reconciler may sweep at once.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use uuid::Uuid;

use super::{ServiceResult, Services};
use crate::{
    blobs::keys,
    domain::JobStatus,
    storage::entities::{job, result, upload},
};

/// Keys looked up in the database at once.
const BATCH: usize = 500;
/// An upload's bytes without a row are only an orphan once this old.
pub const UPLOAD_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// A result object's key, with the job and attempt it names.
struct ResultKey {
    key: String,
    job: Uuid,
    attempt: i32,
}

impl Services {
    /// One sweep over the whole store; returns how many objects it deleted.
    pub async fn sweep_orphans(&self) -> ServiceResult<usize> {
        let mut deleted = 0;
        let mut listing = self.blobs.list_objects(keys::JOBS);
        let mut batch = Vec::new();
        while let Some(object) = listing.next().await {
            let key = object?.0;
            if let Some((job, attempt)) = keys::parse_result(&key) {
                batch.push(ResultKey { key, job, attempt });
            }
            if batch.len() >= BATCH {
                deleted += self.sweep_results(std::mem::take(&mut batch)).await?;
            }
        }
        deleted += self.sweep_results(batch).await?;

        let cutoff = crate::time::now_ms() - UPLOAD_GRACE.as_millis() as i64;
        let mut listing = self.blobs.list_objects(keys::UPLOADS);
        let mut batch = Vec::new();
        while let Some(object) = listing.next().await {
            let (key, written) = object?;
            if written.timestamp_millis() < cutoff
                && let Some(id) = keys::parse_upload(&key)
            {
                batch.push((key, id));
            }
            if batch.len() >= BATCH {
                deleted += self.sweep_uploads(std::mem::take(&mut batch)).await?;
            }
        }
        deleted += self.sweep_uploads(batch).await?;
        if deleted > 0 {
            tracing::info!(deleted, "deleted stored objects that no row pointed to");
        }
        Ok(deleted)
    }

    async fn sweep_results(&self, keys: Vec<ResultKey>) -> ServiceResult<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let jobs: BTreeSet<Uuid> = keys.iter().map(|k| k.job).collect();
        // Jobs first, then their results: see the module documentation.
        let running: BTreeMap<Uuid, (JobStatus, i32)> = job::Entity::find()
            .select_only()
            .columns([job::Column::Id, job::Column::Status, job::Column::Attempt])
            .filter(job::Column::Id.is_in(jobs.iter().copied()))
            .into_tuple::<(Uuid, JobStatus, i32)>()
            .all(&self.db.orm)
            .await?
            .into_iter()
            .map(|(id, status, attempt)| (id, (status, attempt)))
            .collect();
        let recorded: BTreeSet<String> = result::Entity::find()
            .select_only()
            .column(result::Column::BlobKey)
            .filter(result::Column::JobId.is_in(jobs.iter().copied()))
            .into_tuple::<String>()
            .all(&self.db.orm)
            .await?
            .into_iter()
            .collect();
        let mut deleted = 0;
        for key in keys {
            let live_attempt = matches!(
                running.get(&key.job),
                Some((JobStatus::Running, attempt)) if *attempt == key.attempt
            );
            if recorded.contains(&key.key) || live_attempt {
                continue;
            }
            self.blobs
                .delete(&object_store::path::Path::from(key.key.as_str()))
                .await?;
            let job_id = crate::ids::JobId(key.job);
            tracing::warn!(%job_id, key = %key.key, "deleted a result object no row points to");
            deleted += 1;
        }
        Ok(deleted)
    }

    async fn sweep_uploads(&self, keys: Vec<(String, Uuid)>) -> ServiceResult<usize> {
        if keys.is_empty() {
            return Ok(0);
        }
        let known: BTreeSet<Uuid> = upload::Entity::find()
            .select_only()
            .column(upload::Column::Id)
            .filter(upload::Column::Id.is_in(keys.iter().map(|(_, id)| *id)))
            .into_tuple::<Uuid>()
            .all(&self.db.orm)
            .await?
            .into_iter()
            .collect();
        let mut deleted = 0;
        for (key, id) in keys {
            if known.contains(&id) {
                continue;
            }
            self.blobs
                .delete(&object_store::path::Path::from(key.as_str()))
                .await?;
            tracing::warn!(%key, "deleted an upload object no row points to");
            deleted += 1;
        }
        Ok(deleted)
    }
}
