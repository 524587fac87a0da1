//! The blob store: every payload byte (uploads, results) lives here, behind object_store, so the
//! embedded local folder and S3-compatible storage share one code path. Bytes are always
//! streamed: writes go through multipart uploads with at most a few parts in memory, reads are
//! streams of chunks.
//!
//! The local store fsyncs each file and its folder before a write returns (object_store's
//! `with_fsync`), which is what lets the API answer 2xx only for durable bytes.

use std::{ops::Range, path::PathBuf, sync::Arc};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart, local::LocalFileSystem,
    path::Path,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

/// Every object path Ferry writes, in one place.
pub mod keys {
    use object_store::path::Path;
    use uuid::Uuid;

    pub fn upload(id: Uuid) -> Path {
        Path::from(format!("uploads/{}", id.simple()))
    }

    /// Results are keyed by attempt so a stale attempt can never overwrite a newer one's bytes.
    pub fn result(job: Uuid, attempt: i32, name: &str) -> Path {
        Path::from(format!("jobs/{}/results/{attempt}/{name}", job.simple()))
    }

    pub fn job_prefix(job: Uuid) -> Path {
        Path::from(format!("jobs/{}", job.simple()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object not found")]
    NotFound,
    #[error("the payload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the payload failed: {0}")]
    Source(String),
    #[error("blob store error: {0}")]
    Store(#[from] object_store::Error),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    fn from_store(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { .. } => BlobError::NotFound,
            other => BlobError::Store(other),
        }
    }
}

/// What a completed write stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub sha256: [u8; 32],
}

impl Stored {
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
    part_bytes: usize,
}

impl Blobs {
    /// Opens the store named by `spec`: a local folder path or a `file://` URL.
    pub fn open(spec: &str, part_bytes: usize) -> anyhow::Result<Blobs> {
        let dir = match spec.strip_prefix("file://") {
            Some(path) => PathBuf::from(path),
            None if spec.contains("://") => anyhow::bail!(
                "unsupported blob_store {spec:?}: expected a local path or file:// URL \
                 (object storage URLs come with the scale-out configuration)"
            ),
            None => PathBuf::from(spec),
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create blob folder {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(&dir)
            .with_context(|| format!("cannot open blob folder {}", dir.display()))?
            .with_fsync(true)
            .with_automatic_cleanup(true);
        Ok(Blobs {
            store: Arc::new(store),
            part_bytes,
        })
    }

    /// Streams `body` to `key`, hashing as it goes. Fails with [`BlobError::TooLarge`] as soon
    /// as more than `limit` bytes arrive. On any failure the partial object is aborted, so
    /// nothing is left behind; on success the bytes are durable.
    pub async fn put_stream<S, E>(
        &self,
        key: &Path,
        body: S,
        limit: u64,
    ) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let upload = self.store.put_multipart(key).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_bytes);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        let outcome: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Source(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(BlobError::TooLarge { limit });
                }
                hasher.update(&chunk);
                // Backpressure: at most two parts in flight besides the one being filled.
                writer.wait_for_capacity(2).await?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match outcome {
            Ok(()) => {
                writer.finish().await?;
                Ok(Stored {
                    size,
                    sha256: hasher.finalize().into(),
                })
            }
            Err(err) => {
                if let Err(abort_err) = writer.abort().await {
                    tracing::warn!(%key, error = %abort_err, "aborting a partial blob failed");
                }
                Err(err)
            }
        }
    }

    /// Streams a local file into the store (used to publish handler outputs).
    pub async fn put_file(&self, key: &Path, file: &std::path::Path) -> Result<Stored, BlobError> {
        let f = tokio::fs::File::open(file).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10);
        self.put_stream(key, stream, u64::MAX).await
    }

    /// Streams an object, or a byte range of it.
    pub async fn get(
        &self,
        key: &Path,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let result = self
            .store
            .get_opts(key, options)
            .await
            .map_err(BlobError::from_store)?;
        Ok(result.into_stream().map_err(BlobError::from_store).boxed())
    }

    /// Copies an object into a local file (a handler's input folder), streaming.
    pub async fn copy_to_file(&self, key: &Path, dest: &std::path::Path) -> Result<u64, BlobError> {
        let mut stream = self.get(key, None).await?;
        let mut file = tokio::fs::File::create(dest).await?;
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            written += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        Ok(written)
    }

    /// Deletes an object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &Path) -> Result<(), BlobError> {
        match self.store.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes every object under `prefix`.
    pub async fn delete_prefix(&self, prefix: &Path) -> Result<(), BlobError> {
        let mut listing = self.store.list(Some(prefix));
        while let Some(meta) = listing.next().await {
            match meta {
                Ok(meta) => self.delete(&meta.location).await?,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Checks that the store answers (readiness probe).
    pub async fn ping(&self) -> Result<(), BlobError> {
        let probe = Path::from(format!("readyz/{}", Uuid::now_v7().simple()));
        match self.store.head(&probe).await {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
