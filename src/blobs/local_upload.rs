//! A multipart write into the local folder that keeps the disk busy while the bytes arrive.
//!
//! object_store's local multipart upload writes its parts into the page cache and flushes the
//! whole file with one `fsync` once the last byte has arrived. The kernel starts writing back
//! on its own only past `dirty_background_ratio` (10 % of memory: gigabytes here), so for a
//! 1 GiB upload that final `fsync` did all the disk's work — 0.68 s of a 2.2 s upload, timed
//! with `strace -T`, with nothing else happening. This upload asks the kernel to start writing
//! each part back as soon as it is written (`sync_file_range`), and waits for the writeback of
//! what came before the part just written, so at most about two parts are dirty, the disk works
//! while the rest arrives, and the final `fsync` finds little left to do.
//!
//! Otherwise it is object_store's local upload (which exposes no file handle to do this with):
//! the same staging file (`dest#N`, created new beside `dest`, so the sweep of abandoned
//! staging files finds it), every created folder and the file fsynced, renamed into place, the
//! destination's folder fsynced, so a completed upload is durable, and reads go through
//! object_store as before.

use std::{
    fs::{File, OpenOptions},
    io::ErrorKind,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use async_trait::async_trait;
use futures_util::FutureExt;
use object_store::{MultipartUpload, PutPayload, PutResult, UploadPart};

/// A staged write of one object; dropped unfinished, it deletes its staging file.
#[derive(Debug)]
pub(super) struct LocalUpload {
    file: Arc<File>,
    staging: Option<PathBuf>,
    dest: PathBuf,
    /// Where the next part goes.
    offset: u64,
}

impl LocalUpload {
    /// Creates the staging file of `dest` (and any missing folders, fsynced).
    pub(super) async fn create(dest: PathBuf) -> object_store::Result<LocalUpload> {
        blocking(move || {
            let (file, staging) = new_staging_file(&dest)?;
            Ok(LocalUpload {
                file: Arc::new(file),
                staging: Some(staging),
                dest,
                offset: 0,
            })
        })
        .await
    }
}

#[async_trait]
impl MultipartUpload for LocalUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let offset = self.offset;
        let len = data.content_length() as u64;
        self.offset += len;
        let file = self.file.clone();
        blocking(move || {
            let mut at = offset;
            for chunk in data.iter() {
                file.write_all_at(chunk, at).map_err(io_error)?;
                at += chunk.len() as u64;
            }
            writeback::start(&file, offset, len);
            // Parts before this one: wait until they are on their way to the disk, which
            // bounds what an upload leaves dirty and paces it to the disk.
            writeback::wait(&file, offset);
            Ok(())
        })
        .boxed()
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let staging = self.staging.take().ok_or_else(aborted)?;
        let (file, dest) = (self.file.clone(), self.dest.clone());
        blocking(move || {
            let published = file
                .sync_all()
                .and_then(|()| std::fs::rename(&staging, &dest))
                .and_then(|()| sync_parent(&dest));
            if published.is_err() {
                // Whether or not the rename happened, leave no staging file behind (the caller
                // deletes `dest` when completion fails).
                let _ = std::fs::remove_file(&staging);
            }
            published.map_err(io_error)
        })
        .await?;
        Ok(PutResult {
            e_tag: None,
            version: None,
            extensions: Default::default(),
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        let staging = self.staging.take().ok_or_else(aborted)?;
        blocking(move || std::fs::remove_file(&staging).map_err(io_error)).await
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        if let Some(staging) = self.staging.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || std::fs::remove_file(staging))),
                Err(_) => drop(std::fs::remove_file(staging)),
            }
        }
    }
}

/// Opens `dest#N` for the first `N` (from 1) not taken, creating missing folders.
fn new_staging_file(dest: &Path) -> object_store::Result<(File, PathBuf)> {
    let mut n = 1u32;
    loop {
        let staging = staging_path(dest, n);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&staging)
        {
            Ok(file) => return Ok((file, staging)),
            Err(err) if err.kind() == ErrorKind::AlreadyExists => n += 1,
            Err(err) if err.kind() == ErrorKind::NotFound => {
                create_folders(dest.parent().unwrap_or(Path::new("/"))).map_err(io_error)?
            }
            Err(err) => return Err(io_error(err)),
        }
    }
}

fn staging_path(dest: &Path, n: u32) -> PathBuf {
    let mut path = dest.as_os_str().to_owned();
    path.push(format!("#{n}"));
    path.into()
}

/// Creates `dir` and its missing ancestors, then fsyncs each folder whose entries changed, so
/// the new file's path survives a power cut along with the file.
fn create_folders(dir: &Path) -> std::io::Result<()> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    let existing = existing.to_path_buf();
    std::fs::create_dir_all(dir)?;
    let mut changed = dir;
    loop {
        File::open(changed)?.sync_all()?;
        if changed == existing {
            return Ok(());
        }
        match changed.parent() {
            Some(parent) => changed = parent,
            None => return Ok(()),
        }
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => File::open(parent)?.sync_all(),
        None => Ok(()),
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> object_store::Result<T> + Send + 'static,
) -> object_store::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| object_store::Error::JoinError { source: err })?
}

fn io_error(err: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalUpload",
        source: Box::new(err),
    }
}

fn aborted() -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalUpload",
        source: "the upload was already completed or aborted".into(),
    }
}

/// `sync_file_range(2)`: Linux only; elsewhere the final `fsync` does all the work, as before.
/// Both calls are hints: a failure costs speed, never durability (the `fsync` at completion is
/// what makes the bytes durable), so it is ignored.
mod writeback {
    use std::fs::File;

    /// Starts writing back `len` bytes from `offset`, without waiting.
    #[cfg(target_os = "linux")]
    pub(super) fn start(file: &File, offset: u64, len: u64) {
        sync_range(file, offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }

    /// Waits until the writeback of everything before `end` already started has finished.
    #[cfg(target_os = "linux")]
    pub(super) fn wait(file: &File, end: u64) {
        if end > 0 {
            sync_range(file, 0, end, libc::SYNC_FILE_RANGE_WAIT_BEFORE);
        }
    }

    #[cfg(target_os = "linux")]
    fn sync_range(file: &File, offset: u64, len: u64, flags: libc::c_uint) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor belongs to `file`, which outlives the call; the kernel reads
        // nothing from our memory.
        let _ = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn start(_: &File, _: u64, _: u64) {}

    #[cfg(not(target_os = "linux"))]
    pub(super) fn wait(_: &File, _: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(bytes: &[u8]) -> PutPayload {
        PutPayload::from(bytes.to_vec())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = walk(dir)
            .into_iter()
            .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
            .collect();
        names.sort();
        names
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[tokio::test]
    async fn parts_land_in_order_and_only_completion_publishes_them() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("jobs/a/results/1/out.bin");
        let mut upload = LocalUpload::create(dest.clone()).await.unwrap();
        let (first, second) = (vec![1u8; 300_000], vec![2u8; 5]);
        let parts = [
            upload.put_part(payload(&first)),
            upload.put_part(payload(&second)),
        ];
        futures_util::future::try_join_all(parts).await.unwrap();
        // Written but not complete: only the staging file exists.
        assert_eq!(names(dir.path()), ["jobs/a/results/1/out.bin#1"]);
        upload.complete().await.unwrap();
        assert_eq!(names(dir.path()), ["jobs/a/results/1/out.bin"]);
        let stored = std::fs::read(&dest).unwrap();
        assert_eq!(stored, [first, second].concat());
    }

    #[tokio::test]
    async fn an_aborted_or_dropped_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("uploads/x");
        let mut upload = LocalUpload::create(dest.clone()).await.unwrap();
        upload.put_part(payload(b"partial")).await.unwrap();
        upload.abort().await.unwrap();
        assert!(names(dir.path()).is_empty());
        assert!(
            upload.complete().await.is_err(),
            "an aborted upload cannot complete"
        );

        let mut dropped = LocalUpload::create(dest.clone()).await.unwrap();
        dropped.put_part(payload(b"partial")).await.unwrap();
        drop(dropped);
        // Removed on a blocking thread: wait for it.
        for _ in 0..100 {
            if names(dir.path()).is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(names(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_staging_file_already_there_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("uploads/y");
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(staging_path(&dest, 1), b"someone else's").unwrap();
        let mut upload = LocalUpload::create(dest.clone()).await.unwrap();
        upload.put_part(payload(b"mine")).await.unwrap();
        upload.complete().await.unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"mine");
        assert_eq!(
            std::fs::read(staging_path(&dest, 1)).unwrap(),
            b"someone else's"
        );
    }
}
