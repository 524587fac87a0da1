//! Moving bytes: a file streamed to `createUpload` and a result streamed to disk, each hashed
//! on the way (SHA-256) and checked against what the server says, never held in memory whole.

use std::{
    path::{Component, Path, PathBuf},
    sync::{Arc, Mutex},
};

use ferry_client::{
    Client,
    reqwest::Body,
    types::{self, Upload},
};
use futures_util::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::output::{Bars, Failure};

/// Read and sent in chunks of this size.
const CHUNK_BYTES: usize = 256 << 10;

/// Streams `path` to `POST /v1/uploads`, checking the server's SHA-256 against the one computed
/// while sending.
pub async fn upload_file(
    client: &Client,
    server: &str,
    path: &Path,
    bars: &Bars,
) -> Result<Upload, Failure> {
    let unreadable =
        |err: std::io::Error| Failure::Usage(format!("cannot read {}: {err}", path.display()));
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let len = file.metadata().await.map_err(unreadable)?.len();
    let label = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bar = bars.transfer(len, &label);
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let chunks = {
        let (hasher, bar) = (hasher.clone(), bar.clone());
        ReaderStream::with_capacity(file, CHUNK_BYTES).inspect_ok(move |chunk| {
            hasher.lock().expect("hasher").update(chunk);
            bar.inc(chunk.len() as u64);
        })
    };
    let answer = client
        .create_upload()
        .body(Body::wrap_stream(chunks))
        .send()
        .await;
    bar.finish_and_clear();
    let upload = answer
        .map_err(|err| Failure::request(server, err))?
        .into_inner();
    // The server answers only once the whole body is stored, so every chunk went through.
    let sent = hex::encode(hasher.lock().expect("hasher").clone().finalize());
    if upload.sha256.as_str() != sent || upload.size != len as i64 {
        return Err(Failure::Request(format!(
            "upload {} of {} does not match the file: the server stored {} bytes with SHA-256 \
             {}, the file has {len} bytes with SHA-256 {sent}",
            upload.id.as_str(),
            path.display(),
            upload.size,
            upload.sha256.as_str()
        )));
    }
    Ok(upload)
}

/// Where result `name` goes under `dir`: refused unless every part of it is a plain name, so a
/// result can never be written outside `dir`.
pub fn result_path(dir: &Path, name: &str) -> Result<PathBuf, Failure> {
    let relative = Path::new(name);
    let plain = relative
        .components()
        .all(|part| matches!(part, Component::Normal(_)));
    if !plain || name.is_empty() {
        return Err(Failure::Request(format!(
            "result name {name:?} is not a relative path; not written"
        )));
    }
    Ok(dir.join(relative))
}

/// Downloads a result into `dir` (a `.part` file renamed once its SHA-256 matches the listed
/// one); returns the file's path.
pub async fn download_result(
    client: &Client,
    server: &str,
    job_id: &str,
    result: &types::Result,
    dir: &Path,
    bars: &Bars,
) -> Result<PathBuf, Failure> {
    let target = result_path(dir, result.name.as_str())?;
    let local = |err: std::io::Error, what: &Path| {
        Failure::Usage(format!("cannot write {}: {err}", what.display()))
    };
    if let Some(parent) = target.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| local(e, parent))?;
    }
    let partial = target.with_file_name(format!(
        "{}.part",
        target.file_name().unwrap_or_default().to_string_lossy()
    ));
    let answer = client
        .download_job_result()
        .id(job_id)
        .name(result.name.as_str())
        .send()
        .await
        .map_err(|err| Failure::request(server, err))?;
    let mut body = answer.into_inner();
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| local(e, &partial))?;
    let bar = bars.transfer(result.size as u64, result.name.as_str());
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|err| {
            Failure::Request(format!(
                "download of result {} broke off: {}",
                result.name.as_str(),
                super::output::causes(&err)
            ))
        })?;
        hasher.update(&chunk);
        received += chunk.len() as u64;
        bar.inc(chunk.len() as u64);
        file.write_all(&chunk)
            .await
            .map_err(|e| local(e, &partial))?;
    }
    file.flush().await.map_err(|e| local(e, &partial))?;
    drop(file);
    bar.finish_and_clear();
    let got = hex::encode(hasher.finalize());
    if got != result.sha256.as_str() {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(Failure::Request(format!(
            "result {} arrived with SHA-256 {got} ({received} bytes), not the listed {}; \
             not kept",
            result.name.as_str(),
            result.sha256.as_str()
        )));
    }
    tokio::fs::rename(&partial, &target)
        .await
        .map_err(|e| local(e, &target))?;
    Ok(target)
}
