//! SHA-256 of a large body, computed on a thread of its own while the body is still arriving.
//!
//! Why: on the request's task, hashing (about 1 GB/s with SHA-NI on these machines) and
//! receiving the body take turns, so a single upload ran at 476 MB/s, 65 % of what the disk
//! takes (README, "Uploads and memory"). Hashing beside the receiving task lets both run at once
//! on two cores. Chunks go over in batches of [`BATCH_BYTES`], because every hand-over to the
//! hashing thread may cost a thread wake-up, and at most [`QUEUED_BATCHES`] wait, so a hasher
//! that falls behind slows the upload rather than holding its bytes. The chunks are `Bytes`:
//! handing them over shares them, it does not copy them.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

/// Bytes gathered before they are handed to the hashing thread.
const BATCH_BYTES: usize = 1 << 20;
/// Batches waiting for the hashing thread at most (so at most ~4 MiB not hashed yet).
const QUEUED_BATCHES: usize = 4;

/// A running SHA-256 that hashes on a blocking thread. Dropping it (a failed upload) ends the
/// thread once it has hashed what it was given.
pub struct BackgroundSha256 {
    batch: Vec<Bytes>,
    batch_bytes: usize,
    queue: mpsc::Sender<Vec<Bytes>>,
    hashing: JoinHandle<Sha256>,
}

impl BackgroundSha256 {
    /// Continues `hasher` (which may have hashed a first part already) on a blocking thread.
    pub fn start(mut hasher: Sha256) -> Self {
        let (queue, mut batches) = mpsc::channel::<Vec<Bytes>>(QUEUED_BATCHES);
        let hashing = tokio::task::spawn_blocking(move || {
            while let Some(batch) = batches.blocking_recv() {
                for chunk in batch {
                    hasher.update(&chunk);
                }
            }
            hasher
        });
        Self {
            batch: Vec::new(),
            batch_bytes: 0,
            queue,
            hashing,
        }
    }

    /// Adds `chunk`; waits only when the hashing thread is [`QUEUED_BATCHES`] behind.
    pub async fn update(&mut self, chunk: Bytes) -> Result<(), HashingStopped> {
        self.batch_bytes += chunk.len();
        self.batch.push(chunk);
        if self.batch_bytes >= BATCH_BYTES {
            self.batch_bytes = 0;
            let batch = std::mem::take(&mut self.batch);
            self.queue.send(batch).await.map_err(|_| HashingStopped)?;
        }
        Ok(())
    }

    /// The digest of everything added, once the hashing thread has caught up.
    pub async fn finish(self) -> Result<[u8; 32], HashingStopped> {
        let Self {
            batch,
            queue,
            hashing,
            ..
        } = self;
        if !batch.is_empty() {
            queue.send(batch).await.map_err(|_| HashingStopped)?;
        }
        drop(queue); // the thread's loop ends once it has hashed the rest
        let hasher = hashing.await.map_err(|_| HashingStopped)?;
        Ok(hasher.finalize().into())
    }
}

/// The hashing thread ended before the body did (it panicked, or the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("hashing the body stopped before it ended")]
pub struct HashingStopped;

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the chunking, the digest is the one of the whole body, including a first part
    /// hashed before the thread took over and a last batch smaller than `BATCH_BYTES`.
    #[tokio::test]
    async fn the_digest_is_that_of_the_whole_body_however_it_is_cut() {
        let body: Vec<u8> = (0..(3 * BATCH_BYTES + 12_345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let expected: [u8; 32] = Sha256::digest(&body).into();
        for chunk in [7, 4096, 65_536, BATCH_BYTES + 1] {
            let (head, rest) = body.split_at(1000);
            let mut started = Sha256::new();
            started.update(head);
            let mut hasher = BackgroundSha256::start(started);
            for piece in rest.chunks(chunk) {
                hasher
                    .update(Bytes::copy_from_slice(piece))
                    .await
                    .expect("hashing");
            }
            assert_eq!(
                hasher.finish().await.expect("digest"),
                expected,
                "chunks of {chunk}"
            );
        }
    }
}
