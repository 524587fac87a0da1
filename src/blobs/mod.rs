//! The blob store: every payload byte (uploads, results) lives here, behind object_store, so the
//! embedded local folder and S3-compatible storage share one code path. Bytes are always
//! streamed: writes go through multipart uploads with at most a few parts in memory, reads are
//! streams of chunks.
//!
//! The local store fsyncs each file and its folder before a write returns (object_store's
//! `with_fsync`; streamed writes go through [`local_upload`], which also starts the disk's
//! writeback while the bytes still arrive), which is what lets the API answer 2xx only for
//! durable bytes; on object storage a multipart upload is only visible once completed, which
//! the store makes durable.
//!
//! `s3://bucket/prefix` (and `gs://`, `az://`, … through object_store's URL parser) are
//! configured the way their SDKs are: `AWS_*` / `GOOGLE_*` / `AZURE_*` environment variables
//! (`AWS_ENDPOINT_URL` for S3-compatible servers), overridden by `blob_options` in `ferry.toml`.

mod hashing;
mod local_upload;
pub mod resumable;

use std::{collections::BTreeMap, ops::Range, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart, local::LocalFileSystem,
    path::Path, prefix::PrefixStore,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use local_upload::LocalUpload;

/// Every object path Ferry writes, in one place.
pub mod keys {
    use object_store::path::Path;
    use uuid::Uuid;

    pub fn upload(id: Uuid) -> Path {
        Path::from(format!("{UPLOADS}/{}", id.simple()))
    }

    /// Results are keyed by attempt so a stale attempt can never overwrite a newer one's bytes.
    pub fn result(job: Uuid, attempt: i32, name: &str) -> Path {
        Path::from(format!("{JOBS}/{}/results/{attempt}/{name}", job.simple()))
    }

    pub fn job_prefix(job: Uuid) -> Path {
        Path::from(format!("{JOBS}/{}", job.simple()))
    }

    /// Where every job's objects live, and every upload's.
    pub const JOBS: &str = "jobs";
    pub const UPLOADS: &str = "uploads";
    /// Where resumable uploads keep what they cannot keep in place until they complete (see
    /// `blobs::resumable`). The orphan sweep leaves it alone: the reconciler expires these.
    pub const RESUMABLE: &str = "tus";

    /// Everything of resumable upload `id` under [`RESUMABLE`].
    pub fn resumable_prefix(id: Uuid) -> Path {
        Path::from(format!("{RESUMABLE}/{}", id.simple()))
    }

    /// The bytes of resumable upload `id` past its last whole part, up to `offset`.
    pub fn resumable_tail(id: Uuid, offset: u64) -> Path {
        Path::from(format!("{RESUMABLE}/{}/tail-{offset}", id.simple()))
    }

    /// The job and attempt of a key made by [`result`]; `None` for any other key.
    pub fn parse_result(key: &str) -> Option<(Uuid, i32)> {
        let mut parts = key.splitn(5, '/');
        let (Some(JOBS), Some(job), Some("results"), Some(attempt), Some(_name)) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        Some((Uuid::try_parse(job).ok()?, attempt.parse().ok()?))
    }

    /// The upload of a key made by [`upload`]; `None` for any other key.
    pub fn parse_upload(key: &str) -> Option<Uuid> {
        Uuid::try_parse(key.strip_prefix(UPLOADS)?.strip_prefix('/')?).ok()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object not found")]
    NotFound,
    #[error("the payload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("reading the payload failed: {0}")]
    Source(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("blob store error: {0}")]
    Store(#[from] object_store::Error),
    #[error("local file error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Hashing(#[from] hashing::HashingStopped),
}

impl BlobError {
    fn from_store(err: object_store::Error) -> Self {
        match err {
            object_store::Error::NotFound { .. } => BlobError::NotFound,
            other => BlobError::Store(other),
        }
    }
}

/// Aborts a multipart write that is dropped unfinished — e.g. when the HTTP request carrying
/// it is dropped because the client went away — so no partial upload lingers in the store.
struct AbortOnDrop(Option<WriteMultipart>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                if let Err(err) = writer.abort().await {
                    tracing::warn!(error = %err, "aborting an abandoned upload failed");
                }
            });
        }
    }
}

/// Deletes a key whose single PUT was abandoned midway (see [`Blobs::put_stream`]).
struct DeleteOnDrop(Option<(Arc<dyn ObjectStore>, Path)>);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Some((store, key)) = self.0.take()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = store.delete(&key).await;
            });
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
    /// The local folder's store, when that is the store: multipart writes into it go through
    /// [`local_upload`], which overlaps the disk's work with the upload's.
    local: Option<Arc<LocalFileSystem>>,
    /// Where resumable uploads keep their bytes until they complete.
    resumable: resumable::Target,
}

impl Blobs {
    /// Opens the store named by `spec`: a local folder path, a `file://` URL, or an object
    /// storage URL such as `s3://bucket/prefix`. `options` are object_store configuration keys
    /// (e.g. `aws_endpoint`, `aws_region`) that override the environment.
    pub fn open(
        spec: &str,
        part_bytes: usize,
        options: &BTreeMap<String, String>,
    ) -> anyhow::Result<Blobs> {
        if let Some(dir) = local_folder(spec) {
            return open_local(dir, part_bytes);
        }
        let url =
            url::Url::parse(spec).with_context(|| format!("invalid blob_store URL {spec:?}"))?;
        let config = object_store_config(options);
        let mut resumable = resumable::Target::Unsupported;
        let (store, prefix): (Box<dyn ObjectStore>, Path) = if matches!(url.scheme(), "s3" | "s3a")
        {
            check_s3_options(options)?;
            let (s3, prefix) = open_s3(spec, &url, part_bytes, &config)?;
            let s3 = Arc::new(s3);
            resumable = resumable::Target::multipart(s3.clone(), prefix.clone(), part_bytes);
            (Box::new(s3), prefix)
        } else {
            // As for S3 (see `open_s3`), but the URL parser only takes string keys, which
            // cannot switch the total timeout off: a day bounds a whole request instead.
            let mut config = config;
            for (key, value) in [("timeout", "24h"), ("read_timeout", "300s")] {
                config.entry(key.into()).or_insert_with(|| value.into());
            }
            object_store::parse_url_opts(&url, config)
                .with_context(|| format!("cannot configure blob store {spec:?}"))?
        };
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Blobs {
            store,
            part_bytes,
            local: None,
            resumable,
        })
    }

    /// Deletes staging files (`name#N`) of local writes that a killed process abandoned and that
    /// nobody has written to for `older_than`. A disconnect or error aborts its own staging file;
    /// only `kill -9` mid-upload leaves one, and it never has a row pointing at it.
    pub async fn sweep_abandoned_staging(&self, older_than: std::time::Duration) -> usize {
        // The folder of a local store; object stores have no staging files.
        let resumable::Target::Local { root } = &self.resumable else {
            return 0;
        };
        let root = root.clone();
        tokio::task::spawn_blocking(move || {
            fn walk(dir: &std::path::Path, older_than: std::time::Duration, removed: &mut usize) {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    return;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_dir() {
                        walk(&path, older_than, removed);
                        continue;
                    }
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let is_staging = name.rsplit_once('#').is_some_and(|(_, n)| {
                        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
                    });
                    let idle = meta
                        .modified()
                        .ok()
                        .and_then(|m| m.elapsed().ok())
                        .is_some_and(|age| age >= older_than);
                    if is_staging && idle && std::fs::remove_file(&path).is_ok() {
                        *removed += 1;
                    }
                }
            }
            let mut removed = 0;
            walk(&root, older_than, &mut removed);
            removed
        })
        .await
        .unwrap_or(0)
    }

    /// Streams `body` to `key`, hashing as it goes (beyond its first part on a thread of its
    /// own, see [`hashing`]). Fails with [`BlobError::TooLarge`] as soon as more than `limit`
    /// bytes arrive. On any failure the partial object is aborted, so nothing is left behind; on
    /// success the bytes are durable.
    pub async fn put_stream<S, E>(
        &self,
        key: &Path,
        body: S,
        limit: u64,
    ) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        let mut accept = |chunk: Result<Bytes, E>| -> Result<Bytes, BlobError> {
            let chunk = chunk.map_err(|e| BlobError::Source(e.into()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(BlobError::TooLarge { limit });
            }
            Ok(chunk)
        };

        // A body that fits in one part is stored with a single PUT: one request instead of a
        // multipart upload's three (most job parameters and small inputs).
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let overflow = loop {
            match body.next().await {
                None => {
                    let payload: object_store::PutPayload = head.into_iter().collect();
                    // If this request is dropped mid-PUT, the object may still land: delete it.
                    let mut guard = DeleteOnDrop(Some((self.store.clone(), key.clone())));
                    self.store.put(key, payload).await?;
                    guard.0 = None; // stored: keep it
                    return Ok(Stored {
                        size,
                        sha256: hasher.finalize().into(),
                    });
                }
                Some(chunk) => {
                    let chunk = accept(chunk)?;
                    if head_len + chunk.len() > self.part_bytes {
                        break chunk;
                    }
                    hasher.update(&chunk);
                    head_len += chunk.len();
                    head.push(chunk);
                }
            }
        };

        // A body larger than a part is hashed on a thread of its own from here on.
        let mut hashing = hashing::BackgroundSha256::start(hasher);
        let upload: Box<dyn object_store::MultipartUpload> = match &self.local {
            Some(local) => Box::new(LocalUpload::create(local.path_to_filesystem(key)?).await?),
            None => self.store.put_multipart(key).await?,
        };
        let mut writer = AbortOnDrop(Some(WriteMultipart::new_with_chunk_size(
            upload,
            self.part_bytes,
        )));
        let outcome: Result<[u8; 32], BlobError> = async {
            let w = writer.0.as_mut().expect("writer present until finished");
            for chunk in head {
                w.wait_for_capacity(1).await?;
                w.put(chunk);
            }
            let mut rest = futures_util::stream::iter([Ok(overflow)]).chain(body.map(accept));
            while let Some(chunk) = rest.next().await {
                let chunk = chunk?;
                hashing.update(chunk.clone()).await?;
                // Backpressure: at most one part in flight besides the one being filled, so an
                // upload holds at most two parts in memory.
                w.wait_for_capacity(1).await?;
                w.put(chunk);
            }
            // Before the object is completed: a body whose digest is unknown is not stored.
            Ok(hashing.finish().await?)
        }
        .await;
        let w = writer.0.take().expect("writer present until finished");
        match outcome {
            Ok(sha256) => match w.finish().await {
                Ok(_) => Ok(Stored { size, sha256 }),
                Err(err) => {
                    // The completion may still take effect on the server after our request gave
                    // up (a slow CompleteMultipartUpload): delete the key too, so no object that
                    // no row points to is left behind.
                    tracing::error!(%key, error = %err, "completing a blob failed");
                    if let Err(cleanup) = self.store.delete(key).await
                        && !matches!(cleanup, object_store::Error::NotFound { .. })
                    {
                        tracing::warn!(%key, error = %cleanup, "deleting a failed blob failed");
                    }
                    Err(err.into())
                }
            },
            Err(err) => {
                if let Err(abort_err) = w.abort().await {
                    tracing::warn!(%key, error = %abort_err, "aborting a partial blob failed");
                }
                Err(err)
            }
        }
    }

    /// Streams an open local file into the store (used to publish handler outputs). It takes
    /// the file, not a path: the caller opened and checked it (see `workspace::outputs`), and
    /// a path could be swapped for a link in between.
    pub async fn put_file(&self, key: &Path, file: std::fs::File) -> Result<Stored, BlobError> {
        let f = tokio::fs::File::from_std(file);
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

    /// The size of an object, asked without reading it.
    pub async fn head(&self, key: &Path) -> Result<u64, BlobError> {
        let meta = self.store.head(key).await.map_err(BlobError::from_store)?;
        Ok(meta.size)
    }

    /// Copies an object into a new local file (a handler's input folder), streaming. The file
    /// must not exist, not even as a link: nothing already there is ever written through.
    pub async fn copy_to_file(&self, key: &Path, dest: &std::path::Path) -> Result<u64, BlobError> {
        let mut stream = self.get(key, None).await?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(dest)
            .await?;
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

    /// Every object key under `prefix` (for operators' tools and tests).
    pub async fn list(&self, prefix: Option<&str>) -> Result<Vec<String>, BlobError> {
        let prefix = prefix.map(Path::from);
        self.store
            .list(prefix.as_ref())
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(BlobError::from_store)
    }

    /// Every object under `prefix` with when it was last written, as a stream (for the
    /// reconciler's sweep of objects no row points to; a listing may be large).
    pub fn list_objects(
        &self,
        prefix: &str,
    ) -> BoxStream<'static, Result<(String, chrono::DateTime<chrono::Utc>), BlobError>> {
        self.store
            .list(Some(&Path::from(prefix)))
            .map_ok(|meta| (meta.location.to_string(), meta.last_modified))
            .map_err(BlobError::from_store)
            .boxed()
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

/// The folder a `blob_store` names, if it is a local one (a path or a `file://` URL).
fn local_folder(spec: &str) -> Option<PathBuf> {
    match spec.strip_prefix("file://") {
        Some(path) => Some(PathBuf::from(path)),
        None if spec.contains("://") => None,
        None => Some(PathBuf::from(spec)),
    }
}

/// A local folder, created if needed; every write is fsynced before it returns.
fn open_local(dir: PathBuf, part_bytes: usize) -> anyhow::Result<Blobs> {
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create blob folder {}", dir.display()))?;
    let store = LocalFileSystem::new_with_prefix(&dir)
        .with_context(|| format!("cannot open blob folder {}", dir.display()))?
        .with_fsync(true)
        .with_automatic_cleanup(true);
    let store = Arc::new(store);
    Ok(Blobs {
        store: store.clone(),
        part_bytes,
        local: Some(store),
        resumable: resumable::Target::Local { root: dir },
    })
}

/// object_store configuration keys: the `AWS_*`, `GOOGLE_*` and `AZURE_*` environment, then
/// `options` over it.
fn object_store_config(options: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut config: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("AWS_") || k.starts_with("GOOGLE_") || k.starts_with("AZURE_")
        })
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect();
    config.extend(
        options
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone())),
    );
    // An S3-compatible server on plain HTTP (a local MinIO, moto…) needs HTTP allowed.
    let endpoint = ["aws_endpoint_url", "aws_endpoint", "endpoint"]
        .iter()
        .find_map(|k| config.get(*k).cloned());
    if endpoint.is_some_and(|e| e.starts_with("http://")) {
        config
            .entry("aws_allow_http".into())
            .or_insert_with(|| "true".into());
    }
    config
}

/// Every `blob_options` key of an S3 store must be one object_store knows: a misspelt
/// `aws_server_side_encryption` must stop the server, not leave scans unencrypted. (Unknown
/// `AWS_*` environment variables are left alone: the environment holds other tools' settings.)
fn check_s3_options(options: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for key in options.keys() {
        let known = key
            .to_ascii_lowercase()
            .parse::<object_store::aws::AmazonS3ConfigKey>()
            .is_ok();
        if !known {
            anyhow::bail!(
                "blob_options.{key} is not an S3 setting (see object_store's AmazonS3ConfigKey: \
                 aws_region, aws_endpoint, aws_server_side_encryption, aws_sse_kms_key_id, …)"
            );
        }
    }
    Ok(())
}

/// An S3 (or S3-compatible) bucket, with timeouts and retries suited to multi-GiB payloads;
/// returns the store and the key prefix from the URL's path.
fn open_s3(
    spec: &str,
    url: &url::Url,
    part_bytes: usize,
    config: &BTreeMap<String, String>,
) -> anyhow::Result<(object_store::aws::AmazonS3, Path)> {
    if part_bytes < 5 << 20 {
        anyhow::bail!(
            "limits.upload_part_bytes must be at least 5 MiB for S3 (its minimum part size)"
        );
    }
    // No limit on a whole request: a download is paced by the HTTP client reading it, and a
    // multi-GiB result read at a modest rate takes hours (a total timeout cut every download at
    // that mark). A stalled store is caught instead by the read timeout, which waits for each
    // answer or body chunk: long enough for a slow store to complete a multi-GiB multipart
    // upload, which object_store's default 30 s is not. Connection failures still surface at
    // once. Set before the configuration keys, which may adjust the client further.
    let client = object_store::ClientOptions::new()
        .with_timeout_disabled()
        .with_read_timeout(Duration::from_secs(300))
        .with_connect_timeout(Duration::from_secs(5));
    let mut builder = object_store::aws::AmazonS3Builder::new()
        .with_client_options(client)
        .with_url(spec);
    for (key, value) in config {
        if let Ok(key) = key.parse() {
            builder = builder.with_config(key, value);
        }
    }
    // Ride out blips, but give up soon enough to answer the client with a clear 503 instead of
    // holding its request for object_store's default three minutes.
    let retry = object_store::RetryConfig {
        max_retries: 4,
        retry_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let store = builder
        .with_retry(retry)
        .build()
        .with_context(|| format!("cannot configure blob store {spec:?}"))?;
    let prefix = Path::parse(url.path().trim_start_matches('/'))
        .with_context(|| format!("invalid prefix in {spec:?}"))?;
    Ok((store, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn s3_options(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Server-side encryption is object_store's, set through `blob_options`; a setting it does
    /// not know, or an encryption it does not have, stops the server at start-up.
    #[test]
    fn s3_encryption_settings_are_taken_and_mistakes_refused() {
        let open = |pairs: &[(&str, &str)]| {
            Blobs::open("s3://bucket/prefix", 8 << 20, &s3_options(pairs)).map(|_| ())
        };
        let base = [
            ("aws_region", "eu-west-1"),
            ("aws_endpoint", "http://127.0.0.1:1"),
        ];
        open(&base).expect("plain S3");
        for sse in [
            &[("aws_server_side_encryption", "AES256")][..],
            &[
                ("aws_server_side_encryption", "aws:kms"),
                ("aws_sse_kms_key_id", "arn:aws:kms:eu-west-1:1:key/abc"),
            ],
        ] {
            open(&[&base[..], sse].concat()).expect("an encryption object_store knows");
        }
        let typo = open(&[&base[..], &[("aws_server_side_encrytion", "AES256")]].concat());
        assert!(format!("{:#}", typo.unwrap_err()).contains("aws_server_side_encrytion"));
        let unknown = open(&[&base[..], &[("aws_server_side_encryption", "rot13")]].concat());
        assert!(unknown.is_err(), "an unknown encryption is refused");
    }

    #[test]
    fn keys_parse_back_to_what_made_them_and_nothing_else() {
        let job = uuid::Uuid::now_v7();
        let result = keys::result(job, 2, "masks/a.json");
        assert_eq!(keys::parse_result(result.as_ref()), Some((job, 2)));
        assert_eq!(keys::parse_upload(keys::upload(job).as_ref()), Some(job));
        for other in [
            "jobs/x/results/1/a",
            &format!("jobs/{}/results/one/a", job.simple()),
            &format!("jobs/{}/other/1/a", job.simple()),
            &format!("jobs/{}/results/1", job.simple()),
            keys::upload(job).as_ref(),
            "readyz/abc",
        ] {
            assert_eq!(keys::parse_result(other), None, "{other}");
        }
        assert_eq!(keys::parse_upload("uploads/x"), None);
        assert_eq!(keys::parse_upload(result.as_ref()), None);
    }

    #[tokio::test]
    async fn only_idle_staging_files_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let blobs =
            Blobs::open(dir.path().to_str().unwrap(), 1 << 20, &Default::default()).unwrap();
        let uploads = dir.path().join("uploads");
        std::fs::create_dir_all(&uploads).unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for (name, old) in [
            ("abandoned#1", true),
            ("complete", true),
            ("writing#2", false),
            ("odd#x", true),
        ] {
            let f = std::fs::File::create(uploads.join(name)).unwrap();
            if old {
                f.set_modified(two_hours_ago).unwrap();
            }
        }
        assert_eq!(
            blobs
                .sweep_abandoned_staging(Duration::from_secs(3600))
                .await,
            1
        );
        let mut left: Vec<String> = std::fs::read_dir(&uploads)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, vec!["complete", "odd#x", "writing#2"]);
    }

    #[tokio::test]
    async fn a_stream_is_stored_hashed_and_read_back_by_range() {
        let dir = tempfile::tempdir().unwrap();
        let blobs =
            Blobs::open(dir.path().to_str().unwrap(), 64 << 10, &Default::default()).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let key = keys::upload(Uuid::now_v7());
        let stored = blobs
            .put_stream(&key, futures_util::stream::iter(chunks), u64::MAX)
            .await
            .unwrap();
        assert_eq!(stored.size, data.len() as u64);
        assert_eq!(stored.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        let part: Vec<Bytes> = blobs
            .get(&key, Some(1000..1010))
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), data[1000..1010]);
    }

    #[tokio::test]
    async fn an_input_is_never_written_through_something_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let blobs =
            Blobs::open(dir.path().to_str().unwrap(), 64 << 10, &Default::default()).unwrap();
        let key = keys::upload(Uuid::now_v7());
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("upload"))]);
        blobs.put_stream(&key, body, u64::MAX).await.unwrap();
        let host = dir.path().join("host.txt");
        std::fs::write(&host, "host").unwrap();
        let planted = dir.path().join("scan");
        std::os::unix::fs::symlink(&host, &planted).unwrap();
        assert!(blobs.copy_to_file(&key, &planted).await.is_err());
        assert_eq!(std::fs::read_to_string(&host).unwrap(), "host");
        let fresh = dir.path().join("fresh");
        assert_eq!(blobs.copy_to_file(&key, &fresh).await.unwrap(), 6);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn a_stream_over_the_limit_is_aborted_without_a_trace() {
        let dir = tempfile::tempdir().unwrap();
        let blobs =
            Blobs::open(dir.path().to_str().unwrap(), 64 << 10, &Default::default()).unwrap();
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..20)
            .map(|_| Ok(Bytes::from(vec![7u8; 50_000])))
            .collect();
        let key = keys::upload(Uuid::now_v7());
        let err = blobs
            .put_stream(&key, futures_util::stream::iter(chunks), 300_000)
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { limit: 300_000 }));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("uploads"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}

#[cfg(test)]
mod url_tests {
    use super::*;

    fn options(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn object_storage_urls_of_every_supported_kind_open() {
        // Opening builds a client only; no request is made.
        for (url, opts) in [
            (
                "s3://bucket/prefix",
                options(&[
                    ("aws_endpoint", "http://127.0.0.1:1"),
                    ("aws_region", "us-east-1"),
                ]),
            ),
            (
                "az://container/prefix",
                options(&[
                    ("azure_storage_account_name", "devstoreaccount1"),
                    ("azure_storage_use_emulator", "true"),
                ]),
            ),
            (
                "gs://bucket/prefix",
                options(&[("google_bearer_token", "test-token")]),
            ),
        ] {
            let opened = Blobs::open(url, 8 << 20, &opts);
            assert!(opened.is_ok(), "{url}: {:?}", opened.err());
        }
        assert!(
            Blobs::open("s3://bucket", 1 << 20, &Default::default()).is_err(),
            "S3 parts must be ≥ 5 MiB"
        );
        assert!(Blobs::open("ftp://host/x", 8 << 20, &Default::default()).is_err());
    }
}
