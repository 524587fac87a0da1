//! Where a resumable upload's bytes live until it completes, and how they become an ordinary
//! upload object (`uploads/<id>`) without being copied.
//!
//! - Local folder: one staging file, `tus/<id>`, written at the recorded offset and fsynced at
//!   each checkpoint; completing renames it to `uploads/<id>` (same file system: no copy).
//! - S3: one multipart upload to `uploads/<id>`, begun with the upload. Whole parts
//!   (`upload_part_bytes`) are put as they fill. Bytes short of a part when a request ends are
//!   kept as a *tail* object `tus/<id>/tail-<offset>` in the bucket, not on this machine's disk:
//!   any replica can resume the upload, and memory stays at one part per request whatever the
//!   clients' chunk sizes. Completing puts the tail as the last part and completes the upload.
//!
//! The caller (`service::resumable`) records the offset and the [`StoreState`] a checkpoint
//! returns, and trusts nothing past the recorded offset: a local file is cut back to it when a
//! request resumes, a part put but not recorded is put again under the same number (S3 keeps the
//! last one), and a tail is named by the offset it ends at, so a newer tail never replaces the
//! one a recorded offset points to.

use std::{collections::VecDeque, fmt, path::PathBuf, sync::Arc};

use bytes::Bytes;
use object_store::{
    ObjectStore, ObjectStoreExt, PutPayload,
    multipart::{MultipartStore, PartId},
    path::Path,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;

use super::{BlobError, Blobs, keys};

/// Where a store keeps resumable uploads.
#[derive(Clone)]
pub enum Target {
    /// A local folder (the blob store's own).
    Local { root: PathBuf },
    Multipart {
        store: Arc<dyn MultipartStore>,
        /// The bucket prefix of the blob store's URL (the multipart API does not apply it).
        prefix: Path,
        part_bytes: usize,
    },
    /// Object stores other than S3 and local folders (tus answers `501` there).
    Unsupported,
}

impl Target {
    pub(super) fn multipart(
        store: Arc<dyn MultipartStore>,
        prefix: Path,
        part_bytes: usize,
    ) -> Self {
        Target::Multipart {
            store,
            prefix,
            part_bytes,
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local { root } => f.debug_struct("Local").field("root", root).finish(),
            Target::Multipart { prefix, .. } => {
                f.debug_struct("Multipart").field("prefix", prefix).finish()
            }
            Target::Unsupported => f.write_str("Unsupported"),
        }
    }
}

/// What a resumable upload's row records about its bytes besides the offset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreState {
    /// The S3 multipart upload (none on a local folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multipart_id: Option<String>,
    /// The parts put and recorded, in order (their S3 ETags).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<String>,
    /// Every part's size but the last: fixed when the upload begins, so a changed
    /// `upload_part_bytes` does not misplace an upload in progress.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub part_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StoreState {
    /// Bytes held in recorded parts; the rest of the offset is in the tail.
    fn in_parts(&self) -> u64 {
        self.parts.len() as u64 * self.part_bytes
    }
}

/// The staging file of a resumable upload in a local folder.
fn staging_file(root: &std::path::Path, id: Uuid) -> PathBuf {
    root.join(keys::RESUMABLE).join(id.simple().to_string())
}

/// `key` under the bucket prefix, for the multipart API.
fn prefixed(prefix: &Path, key: &Path) -> Path {
    prefix.parts().chain(key.parts()).collect()
}

async fn sync_dir(dir: &std::path::Path) -> Result<(), BlobError> {
    tokio::fs::File::open(dir).await?.sync_all().await?;
    Ok(())
}

impl Blobs {
    pub fn supports_resumable(&self) -> bool {
        !matches!(self.resumable, Target::Unsupported)
    }

    /// Prepares the store for upload `id`'s bytes; returns the state to record with it.
    pub async fn begin_resumable(&self, id: Uuid) -> Result<StoreState, BlobError> {
        match &self.resumable {
            Target::Local { root } => {
                let file = staging_file(root, id);
                let dir = file.parent().expect("staging file has a folder");
                tokio::fs::create_dir_all(dir).await?;
                tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&file)
                    .await?
                    .sync_all()
                    .await?;
                sync_dir(dir).await?;
                Ok(StoreState::default())
            }
            Target::Multipart {
                store,
                prefix,
                part_bytes,
            } => {
                let path = prefixed(prefix, &keys::upload(id));
                let multipart_id = store.create_multipart(&path).await?;
                Ok(StoreState {
                    multipart_id: Some(multipart_id),
                    parts: Vec::new(),
                    part_bytes: *part_bytes as u64,
                })
            }
            Target::Unsupported => Err(unsupported()),
        }
    }

    /// Opens upload `id` for appending at `offset`, the offset recorded with `state`.
    pub async fn resume(
        &self,
        id: Uuid,
        state: &StoreState,
        offset: u64,
    ) -> Result<ResumableWriter, BlobError> {
        let sink = match &self.resumable {
            Target::Local { root } => {
                let path = staging_file(root, id);
                let mut file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .await
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => BlobError::NotFound,
                        _ => e.into(),
                    })?;
                // Bytes past the recorded offset were never acknowledged: a request cut short
                // (or a process killed) after writing them but before recording them.
                file.set_len(offset).await?;
                file.seek(std::io::SeekFrom::Start(offset)).await?;
                Sink::Local {
                    file,
                    unsynced: 0,
                    checkpoint_bytes: self.part_bytes as u64,
                }
            }
            Target::Multipart { store, prefix, .. } => {
                let tail_len = offset - state.in_parts();
                let mut tail = VecDeque::new();
                let tail_key = (tail_len > 0).then(|| keys::resumable_tail(id, offset));
                if let Some(key) = &tail_key {
                    let bytes = self
                        .store
                        .get(key)
                        .await
                        .map_err(BlobError::from_store)?
                        .bytes()
                        .await
                        .map_err(BlobError::from_store)?;
                    if bytes.len() as u64 != tail_len {
                        return Err(BlobError::Io(std::io::Error::other(format!(
                            "tail {key} holds {} bytes, the upload's record says {tail_len}",
                            bytes.len()
                        ))));
                    }
                    tail.push_back(bytes);
                }
                Sink::Multipart {
                    store: store.clone(),
                    objects: self.store.clone(),
                    path: prefixed(prefix, &keys::upload(id)),
                    buffered: tail_len as usize,
                    buffer: tail,
                    tail_key,
                    stale_tails: Vec::new(),
                }
            }
            Target::Unsupported => return Err(unsupported()),
        };
        Ok(ResumableWriter {
            id,
            offset,
            state: state.clone(),
            sink,
        })
    }

    /// Makes everything `writer` appended part of the object `uploads/<id>`, where an ordinary
    /// upload's bytes are. The caller checked that the upload is complete.
    pub async fn finish_resumable(&self, writer: ResumableWriter) -> Result<(), BlobError> {
        let ResumableWriter {
            id, state, sink, ..
        } = writer;
        match sink {
            Sink::Local { mut file, .. } => {
                file.flush().await?;
                file.sync_all().await?;
                drop(file);
                let Target::Local { root } = &self.resumable else {
                    unreachable!("a local sink comes from a local target")
                };
                let to = root.join(keys::upload(id).as_ref());
                let dir = to.parent().expect("uploads folder");
                tokio::fs::create_dir_all(dir).await?;
                tokio::fs::rename(staging_file(root, id), &to).await?;
                sync_dir(dir).await?;
                sync_dir(&root.join(keys::RESUMABLE)).await?;
            }
            Sink::Multipart {
                store,
                path,
                buffer,
                buffered,
                ..
            } => {
                let multipart_id = state.multipart_id.clone().expect("multipart id");
                let mut parts: Vec<PartId> = state
                    .parts
                    .iter()
                    .map(|etag| PartId {
                        content_id: etag.clone(),
                    })
                    .collect();
                if buffered > 0 {
                    let payload: PutPayload = buffer.into_iter().collect();
                    parts.push(
                        store
                            .put_part(&path, &multipart_id, parts.len(), payload)
                            .await?,
                    );
                }
                store
                    .complete_multipart(&path, &multipart_id, parts)
                    .await?;
                self.delete_prefix(&keys::resumable_prefix(id)).await?;
            }
        }
        Ok(())
    }

    /// Deletes everything an unfinished upload stored. Never touches `uploads/<id>`: an upload
    /// that did finish keeps its object even if its resumable row was left behind.
    pub async fn discard_resumable(&self, id: Uuid, state: &StoreState) -> Result<(), BlobError> {
        match &self.resumable {
            Target::Local { root } => match tokio::fs::remove_file(staging_file(root, id)).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e.into()),
            },
            Target::Multipart { store, prefix, .. } => {
                if let Some(multipart_id) = &state.multipart_id {
                    let path = prefixed(prefix, &keys::upload(id));
                    // Already completed or aborted: nothing of it is left to abort.
                    if let Err(err) = store.abort_multipart(&path, multipart_id).await {
                        tracing::debug!(upload = %id, error = %err, "aborting a multipart upload");
                    }
                }
                self.delete_prefix(&keys::resumable_prefix(id)).await
            }
            Target::Unsupported => Ok(()),
        }
    }
}

fn unsupported() -> BlobError {
    BlobError::Io(std::io::Error::other(
        "resumable uploads need a local folder or S3 as blob store",
    ))
}

/// Appends to one resumable upload during one request.
pub struct ResumableWriter {
    id: Uuid,
    /// Bytes appended so far, durable or not.
    offset: u64,
    state: StoreState,
    sink: Sink,
}

enum Sink {
    Local {
        file: tokio::fs::File,
        unsynced: u64,
        /// Bytes written before a checkpoint is worth its fsync and its database write.
        checkpoint_bytes: u64,
    },
    Multipart {
        store: Arc<dyn MultipartStore>,
        /// The blob store itself, for tails (its keys are prefixed already).
        objects: Arc<dyn ObjectStore>,
        path: Path,
        /// Bytes since the last part (the tail), at most about one part.
        buffer: VecDeque<Bytes>,
        buffered: usize,
        /// The tail object the recorded offset points to, if any.
        tail_key: Option<Path>,
        /// Tails superseded by a checkpoint, deleted once it is recorded.
        stale_tails: Vec<Path>,
    },
}

impl ResumableWriter {
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Appends `chunk`. `Ok(true)` when enough has been appended since the last checkpoint for
    /// one to be cheap and worth it (a part was just put, or a part's worth written locally).
    pub async fn append(&mut self, chunk: Bytes) -> Result<bool, BlobError> {
        self.offset += chunk.len() as u64;
        match &mut self.sink {
            Sink::Local {
                file,
                unsynced,
                checkpoint_bytes,
            } => {
                file.write_all(&chunk).await?;
                *unsynced += chunk.len() as u64;
                Ok(*unsynced >= *checkpoint_bytes)
            }
            Sink::Multipart {
                store,
                path,
                buffer,
                buffered,
                ..
            } => {
                *buffered += chunk.len();
                buffer.push_back(chunk);
                let part_bytes = self.state.part_bytes as usize;
                let mut put = false;
                while *buffered >= part_bytes {
                    let part = take_front(buffer, part_bytes);
                    *buffered -= part_bytes;
                    let multipart_id = self.state.multipart_id.as_ref().expect("multipart id");
                    let index = self.state.parts.len();
                    let payload: PutPayload = part.into_iter().collect();
                    let id = store.put_part(path, multipart_id, index, payload).await?;
                    self.state.parts.push(id.content_id);
                    put = true;
                }
                Ok(put)
            }
        }
    }

    /// Makes every appended byte durable; returns the state to record with [`Self::offset`].
    pub async fn checkpoint(&mut self) -> Result<StoreState, BlobError> {
        match &mut self.sink {
            Sink::Local { file, unsynced, .. } => {
                file.flush().await?;
                file.sync_data().await?;
                *unsynced = 0;
            }
            Sink::Multipart {
                objects,
                buffer,
                buffered,
                tail_key,
                stale_tails,
                ..
            } => {
                let new_key = (*buffered > 0).then(|| keys::resumable_tail(self.id, self.offset));
                if new_key != *tail_key {
                    if let Some(key) = &new_key {
                        let payload: PutPayload = buffer.iter().cloned().collect();
                        objects.put(key, payload).await?;
                    }
                    stale_tails.extend(std::mem::replace(tail_key, new_key));
                }
            }
        }
        Ok(self.state.clone())
    }

    /// Deletes the tails that recorded checkpoints superseded (after the caller recorded
    /// them; one left behind by a crash goes with the upload's prefix).
    pub async fn tidy(&mut self) {
        if let Sink::Multipart {
            objects,
            stale_tails,
            ..
        } = &mut self.sink
        {
            for key in stale_tails.drain(..) {
                if let Err(err) = objects.delete(&key).await {
                    tracing::debug!(%key, error = %err, "deleting a superseded tail");
                }
            }
        }
    }
}

/// Takes exactly `len` bytes off the front of `buffer` (splitting a chunk, without copying).
fn take_front(buffer: &mut VecDeque<Bytes>, len: usize) -> Vec<Bytes> {
    let mut taken = Vec::new();
    let mut left = len;
    while left > 0 {
        let first = buffer.front_mut().expect("the buffer holds `len` bytes");
        if first.len() <= left {
            left -= first.len();
            taken.extend(buffer.pop_front());
        } else {
            taken.push(first.split_to(left));
            left = 0;
        }
    }
    taken
}
