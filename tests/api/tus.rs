//! Resumable uploads over tus 1.0 and the IETF draft, on both backends: the protocols spoken
//! by hand (offsets, cuts, checksums, deferred length, termination, expiry, a job made by the
//! completing request), real clients (tuspy; tus-js-client over tus and over drafts 03 and 05)
//! whose connections are cut at random offsets, a PATCH racing another across two replicas,
//! and a server killed with `kill -9` mid-request. What is left in the blob store is checked in
//! the store itself (a local folder, or the S3 bucket and its multipart uploads).

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::Engine as _;
use sha2::Digest as _;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{helpers::*, matrix, tools};

matrix!(
    a_tus_upload_survives_cuts_and_becomes_an_ordinary_upload,
    tus_refuses_what_it_cannot_take_without_moving_the_offset,
    a_tus_upload_with_ferry_kind_creates_its_job,
    terminated_and_expired_tus_uploads_leave_nothing_in_the_store,
    tuspy_uploads_200_mb_through_20_cut_connections,
    tus_js_client_uploads_200_mb_through_20_cut_connections,
    tus_js_client_on_ietf_draft_03_uploads_200_mb_through_20_cut_connections,
    tus_js_client_on_ietf_draft_05_uploads_200_mb_through_20_cut_connections,
    the_ietf_draft_creates_appends_and_completes_an_upload,
    partial_uploads_sent_in_parallel_are_joined_into_one_with_its_job,
    tus_js_client_sends_a_file_as_4_parallel_parts,
    a_page_of_an_allowed_origin_may_upload_and_others_get_no_cors_headers,
    an_upload_whose_completion_was_cut_is_completed_by_the_reconciler,
    a_patch_racing_another_on_a_second_replica_is_refused,
    a_tus_upload_resumes_after_kill_9_of_the_server_mid_patch,
);

const TUS: (&str, &str) = ("Tus-Resumable", "1.0.0");

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Creates an upload of `length` bytes (or a deferred one); its path (`/v1/tus/upl_…`).
async fn create_at(app: &TestApp, base: &str, length: Option<usize>, metadata: &str) -> String {
    let reply = app
        .request_at(base, "post", "/v1/tus", |r| {
            let r = r.header(TUS.0, TUS.1);
            let r = match length {
                Some(len) => r.header("Upload-Length", len.to_string()),
                None => r.header("Upload-Defer-Length", "1"),
            };
            if metadata.is_empty() {
                r
            } else {
                r.header("Upload-Metadata", metadata)
            }
        })
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.header("Tus-Resumable"), Some("1.0.0"));
    assert_eq!(reply.header("Upload-Offset"), Some("0"));
    assert!(reply.header("Upload-Expires").is_some());
    let location = reply.header("Location").expect("Location").to_owned();
    assert!(location.starts_with("/v1/tus/upl_"), "{location}");
    location
}

async fn create(app: &TestApp, length: Option<usize>, metadata: &str) -> String {
    create_at(app, &app.base, length, metadata).await
}

async fn patch_at(
    app: &TestApp,
    base: &str,
    path: &str,
    offset: usize,
    bytes: &[u8],
    extra: &[(&str, String)],
) -> Reply {
    let body = bytes.to_vec();
    let extra: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    app.request_at(base, "patch", path, |r| {
        let mut r = r
            .header(TUS.0, TUS.1)
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", offset.to_string());
        for (k, v) in extra {
            r = r.header(k, v);
        }
        r.body(body)
    })
    .await
}

async fn patch(app: &TestApp, path: &str, offset: usize, bytes: &[u8]) -> Reply {
    patch_at(app, &app.base, path, offset, bytes, &[]).await
}

/// The upload's offset, once no request holds it (a cut request's writer may still be
/// recording what arrived).
async fn offset_at(app: &TestApp, base: &str, path: &str) -> usize {
    let reply = app
        .request_at(base, "head", path, |r| r.header(TUS.0, TUS.1))
        .await;
    assert_eq!(reply.status, 200, "HEAD {path}");
    assert_eq!(reply.header("Cache-Control"), Some("no-store"));
    reply
        .header("Upload-Offset")
        .expect("Upload-Offset")
        .parse()
        .expect("a number")
}

/// Sends `data[from..]` to `path` in requests of `chunk` bytes, resuming from HEAD's offset
/// whenever the server is busy with a request of ours that was cut (`423`).
async fn send_rest_at(app: &TestApp, base: &str, path: &str, data: &[u8], chunk: usize) -> Reply {
    let start = Instant::now();
    loop {
        let offset = offset_at(app, base, path).await;
        let end = (offset + chunk).min(data.len());
        let reply = patch_at(app, base, path, offset, &data[offset..end], &[]).await;
        match reply.status {
            204 if end == data.len() => return reply,
            204 => assert_eq!(
                reply.header("Upload-Offset"),
                Some(end.to_string().as_str())
            ),
            423 | 409 => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "still refused: {}",
                    reply.body
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("PATCH answered {other}: {}", reply.body),
        }
    }
}

/// A PATCH whose body stops after `sent` of its `declared` bytes; the connection stays open
/// until the returned stream is dropped.
fn partial_patch(
    base: &str,
    path: &str,
    offset: usize,
    declared: usize,
    first: &[u8],
) -> std::net::TcpStream {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nTus-Resumable: 1.0.0\r\n\
         Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n\
         Content-Length: {declared}\r\n\r\n"
    )
    .expect("send head");
    stream.write_all(first).expect("send body");
    stream.flush().expect("flush");
    stream
}

/// The id of a tus path.
fn upload_id(path: &str) -> &str {
    path.trim_start_matches("/v1/tus/")
}

async fn assert_upload_is(app: &TestApp, path: &str, data: &[u8], content_type: Option<&str>) {
    let upload = app
        .request("get", &format!("/v1/uploads/{}", upload_id(path)), |r| r)
        .await;
    assert_eq!(upload.status, 200, "{}", upload.body);
    assert_eq!(upload.body["size"], data.len() as u64);
    assert_eq!(upload.body["sha256"], sha256_hex(data));
    if let Some(ct) = content_type {
        assert_eq!(upload.body["content_type"], ct);
    }
    // The bytes themselves, where uploads keep theirs: completing moved them, no copy left.
    let key = format!("uploads/{}", upload_id(path).trim_start_matches("upl_"));
    let stored = match backend() {
        Backend::Sqlite => std::fs::read(app.data_dir().join("blobs").join(&key)).expect("read"),
        Backend::PostgresS3 => {
            let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(
                app.blobs()
                    .get(&object_store::path::Path::from(key.as_str()), None)
                    .await
                    .expect("read"),
            )
            .await
            .expect("read");
            chunks.concat()
        }
    };
    assert_eq!(sha256_hex(&stored), sha256_hex(data));
    app.wait_no_blobs("tus").await;
}

/// Parts, tails, a cut request and a wrong offset: the upload ends with the client's bytes, as
/// an ordinary upload with the same id.
async fn a_tus_upload_survives_cuts_and_becomes_an_ordinary_upload() {
    let app = TestApp::spawn().await;
    let options = app.request("options", "/v1/tus", |r| r).await;
    assert_eq!(options.status, 204);
    assert_eq!(options.header("Tus-Version"), Some("1.0.0"));
    let extensions = options.header("Tus-Extension").expect("extensions");
    for ext in [
        "creation",
        "creation-with-upload",
        "checksum",
        "termination",
        "expiration",
    ] {
        assert!(extensions.split(',').any(|e| e == ext), "{extensions}");
    }

    // Larger than two S3 parts (5 MiB in the tests), in requests that are not part-aligned.
    let data = bytes((12 << 20) + 12_345, 7);
    let metadata = format!(
        "filename {},filetype {}",
        b64("scan-0001.dcm"),
        b64("application/dicom")
    );
    let path = create(&app, Some(data.len()), &metadata).await;
    let head = app.request("head", &path, |r| r.header(TUS.0, TUS.1)).await;
    assert_eq!(
        head.header("Upload-Length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(head.header("Upload-Metadata"), Some(metadata.as_str()));

    let chunk = (3 << 20) + 7;
    let first = patch(&app, &path, 0, &data[..chunk]).await;
    assert_eq!(first.status, 204, "{}", first.body);
    assert_eq!(
        first.header("Upload-Offset"),
        Some(chunk.to_string().as_str())
    );

    // A request cut after half its body: what arrived is kept, nothing more.
    let half = chunk / 2;
    let cut = partial_patch(&app.base, &path, chunk, chunk, &data[chunk..chunk + half]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(cut);
    // Every byte sent before the cut arrived (the connection was open 300 ms): all are kept,
    // once the cut request's writer has recorded them.
    let start = Instant::now();
    let resumed_at = loop {
        let at = offset_at(&app, &app.base, &path).await;
        if at == chunk + half || start.elapsed() > Duration::from_secs(15) {
            break at;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resumed_at, chunk + half, "the offset after a cut request");

    // A client that lost track of the offset is told, and nothing moves.
    let wrong = patch(&app, &path, chunk, &data[chunk..chunk + 10]).await;
    assert_problem(wrong.status, &wrong.body, 409, "upload_offset_mismatch");
    assert!(
        wrong.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains(&resumed_at.to_string()),
        "{}",
        wrong.body
    );

    let last = send_rest_at(&app, &app.base, &path, &data, chunk).await;
    assert!(
        last.header("Upload-Expires").is_none(),
        "a complete upload does not expire"
    );
    assert_upload_is(&app, &path, &data, Some("application/dicom")).await;
    // Asked again, the complete upload answers its whole length.
    assert_eq!(offset_at(&app, &app.base, &path).await, data.len());
}

/// Checksums, versions, media types, lengths: each refused with its problem, the offset where
/// it was. Deferred length works.
async fn tus_refuses_what_it_cannot_take_without_moving_the_offset() {
    let app = TestApp::spawn().await;
    let data = bytes(1000, 3);
    let path = create(&app, Some(data.len()), "").await;

    let sha1 = |b: &[u8]| {
        let digest = sha1::Sha1::digest(b);
        base64::engine::general_purpose::STANDARD.encode(digest)
    };
    let sha256 =
        |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(b));
    let wrong = patch_at(
        &app,
        &app.base,
        &path,
        0,
        &data[..500],
        &[(
            "Upload-Checksum",
            format!("sha1 {}", sha1(b"something else")),
        )],
    )
    .await;
    assert_problem(wrong.status, &wrong.body, 460, "checksum_mismatch");
    assert_eq!(offset_at(&app, &app.base, &path).await, 0);

    let md5 = patch_at(
        &app,
        &app.base,
        &path,
        0,
        &data[..500],
        &[("Upload-Checksum", "md5 AAAA".to_owned())],
    )
    .await;
    assert_problem(md5.status, &md5.body, 400, "unsupported_checksum");

    let right = patch_at(
        &app,
        &app.base,
        &path,
        0,
        &data[..500],
        &[("Upload-Checksum", format!("sha1 {}", sha1(&data[..500])))],
    )
    .await;
    assert_eq!(right.status, 204, "{}", right.body);
    assert_eq!(right.header("Upload-Offset"), Some("500"));

    let no_version = app
        .request("patch", &path, |r| {
            r.header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", "500")
                .body(data[500..].to_vec())
        })
        .await;
    assert_problem(
        no_version.status,
        &no_version.body,
        412,
        "unsupported_tus_version",
    );
    let not_bytes = app
        .request("patch", &path, |r| {
            r.header(TUS.0, TUS.1)
                .header("Content-Type", "application/json")
                .header("Upload-Offset", "500")
                .body("{}")
        })
        .await;
    assert_problem(
        not_bytes.status,
        &not_bytes.body,
        415,
        "unsupported_media_type",
    );
    let too_long = patch(&app, &path, 500, &bytes(501, 4)).await;
    assert_problem(
        too_long.status,
        &too_long.body,
        400,
        "upload_length_exceeded",
    );
    let no_length = app
        .request("post", "/v1/tus", |r| r.header(TUS.0, TUS.1))
        .await;
    assert_problem(
        no_length.status,
        &no_length.body,
        400,
        "invalid_upload_header",
    );
    let bad_metadata = app
        .request("post", "/v1/tus", |r| {
            r.header(TUS.0, TUS.1)
                .header("Upload-Length", "10")
                .header("Upload-Metadata", "filename not-base64!")
        })
        .await;
    assert_problem(
        bad_metadata.status,
        &bad_metadata.body,
        400,
        "invalid_upload_header",
    );
    assert_eq!(offset_at(&app, &app.base, &path).await, 500);

    let done = patch_at(
        &app,
        &app.base,
        &path,
        500,
        &data[500..],
        &[(
            "Upload-Checksum",
            format!("sha256 {}", sha256(&data[500..])),
        )],
    )
    .await;
    assert_eq!(done.status, 204, "{}", done.body);
    assert_upload_is(&app, &path, &data, None).await;

    // Deferred length: given with a later request.
    let deferred = create(&app, None, "").await;
    let head = app
        .request("head", &deferred, |r| r.header(TUS.0, TUS.1))
        .await;
    assert_eq!(head.header("Upload-Defer-Length"), Some("1"));
    assert_eq!(patch(&app, &deferred, 0, &data[..300]).await.status, 204);
    let end = patch_at(
        &app,
        &app.base,
        &deferred,
        300,
        &data[300..600],
        &[("Upload-Length", "600".to_owned())],
    )
    .await;
    assert_eq!(end.status, 204, "{}", end.body);
    assert_upload_is(&app, &deferred, &data[..600], None).await;
}

/// Metadata `ferry-kind` makes the completing request create the job, on the upload's bytes.
async fn a_tus_upload_with_ferry_kind_creates_its_job() {
    let app = TestApp::spawn().await;
    let data = bytes(300_000, 11);
    let refused = app
        .request("post", "/v1/tus", |r| {
            r.header(TUS.0, TUS.1).header("Upload-Length", "10").header(
                "Upload-Metadata",
                format!("ferry-kind {}", b64("no-such-kind")),
            )
        })
        .await;
    assert_problem(refused.status, &refused.body, 422, "unknown_kind");

    let metadata = format!(
        "filename {},ferry-kind {},ferry-params {},ferry-input {}",
        b64("ct.nii"),
        b64("model"),
        b64(r#"{"mode":"ok"}"#),
        b64("scan")
    );
    let path = create(&app, Some(data.len()), &metadata).await;
    assert_eq!(patch(&app, &path, 0, &data[..100_000]).await.status, 204);
    let last = patch(&app, &path, 100_000, &data[100_000..]).await;
    assert_eq!(last.status, 204, "{}", last.body);
    let job_path = last
        .header("Ferry-Job-Location")
        .expect("Ferry-Job-Location")
        .to_owned();
    let job_id = job_path.trim_start_matches("/v1/jobs/");
    let job = app
        .wait_job(job_id, Duration::from_secs(30), |j| {
            j["status"] == "succeeded" || j["status"] == "failed"
        })
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let inputs = job["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 1, "{job}");
    assert_eq!(inputs[0]["name"], "scan");
    assert_eq!(inputs[0]["upload_id"], upload_id(&path));
    assert_eq!(inputs[0]["sha256"], sha256_hex(&data));
    // HEAD after the fact tells a client that lost the answer where its job is.
    let head = app.request("head", &path, |r| r.header(TUS.0, TUS.1)).await;
    assert_eq!(head.header("Ferry-Job-Location"), Some(job_path.as_str()));
}

/// Termination deletes an unfinished upload's bytes at once; the reconciler deletes those of
/// one that stopped receiving bytes. Checked in the store (S3: objects and multipart uploads).
async fn terminated_and_expired_tus_uploads_leave_nothing_in_the_store() {
    let app = TestApp::spawn_with(TestConfig {
        resumable_upload_ttl: "2s",
        ..TestConfig::default()
    })
    .await;
    // Over one S3 part, so a part and a tail are stored.
    let data = bytes((6 << 20) + 99, 5);
    let terminated = create(&app, Some(data.len() * 2), "").await;
    assert_eq!(patch(&app, &terminated, 0, &data).await.status, 204);
    assert!(!app.blob_files("").await.is_empty(), "bytes are stored");
    let delete = app
        .request("delete", &terminated, |r| r.header(TUS.0, TUS.1))
        .await;
    assert_eq!(delete.status, 204, "{}", delete.body);
    let gone = app
        .request("head", &terminated, |r| r.header(TUS.0, TUS.1))
        .await;
    assert_eq!(gone.status, 404);
    app.wait_no_blobs("").await;

    let abandoned = create(&app, Some(data.len() * 2), "").await;
    assert_eq!(patch(&app, &abandoned, 0, &data).await.status, 204);
    assert!(!app.blob_files("").await.is_empty(), "bytes are stored");
    // The reconciler (every 300 ms in the tests) deletes it 2 s after its last write: the
    // bytes first, then the row. HEAD answers 404 as soon as the upload has expired, which can
    // be before the reconciler's pass, so the row is waited for too.
    app.wait_no_blobs("").await;
    let start = Instant::now();
    loop {
        let head = app
            .request("head", &abandoned, |r| r.header(TUS.0, TUS.1))
            .await;
        let rows = app
            .count_rows("SELECT COUNT(*) FROM ferry_resumable_uploads")
            .await;
        if head.status == 404 && rows == 0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never expired: HEAD {}, {rows} resumable rows",
            head.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Forwards connections to `upstream`, cutting the connection that carries the byte at each
/// of `cuts` (offsets into everything sent to the server, in order). Returns its address and
/// how many cuts it made.
async fn cutting_proxy(upstream: String, mut cuts: Vec<u64>) -> (String, Arc<AtomicU64>) {
    cuts.sort_unstable();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let sent = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let cuts = Arc::new(cuts);
    let made_out = made.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let (sent, made, cuts, upstream) =
                (sent.clone(), made.clone(), cuts.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
                let mut buf = vec![0u8; 64 << 10];
                loop {
                    let n = match client_read.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let before = sent.fetch_add(n as u64, Ordering::SeqCst);
                    let next_cut = cuts.get(made.load(Ordering::SeqCst) as usize).copied();
                    if let Some(cut) = next_cut.filter(|c| *c < before + n as u64) {
                        let keep = (cut.saturating_sub(before)) as usize;
                        let _ = server_write.write_all(&buf[..keep]).await;
                        made.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    (addr, made_out)
}

/// A tus client nobody here wrote.
#[derive(Clone, Copy, Debug)]
enum Client {
    Tuspy,
    /// tus-js-client with its `protocol` option.
    TusJs(&'static str),
}

impl Client {
    /// The command that uploads `file` to `endpoint` in `chunk`-byte requests and prints the
    /// upload's URL last, or why it cannot run here.
    fn command(
        self,
        endpoint: &str,
        file: &std::path::Path,
        chunk: usize,
    ) -> Result<Command, String> {
        let scripts = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tus");
        match self {
            Client::Tuspy => {
                let python = tools::python();
                let found = Command::new(&python)
                    .args(["-c", "import tusclient"])
                    .status()
                    .map_err(|e| e.to_string())?;
                if !found.success() {
                    return Err(format!(
                        "no tuspy beside {} (TEST_TOOLS_PYTHON)",
                        python.display()
                    ));
                }
                let mut cmd = Command::new(python);
                cmd.arg(format!("{scripts}/tuspy_upload.py"));
                cmd.arg(endpoint).arg(file).arg(chunk.to_string());
                Ok(cmd)
            }
            Client::TusJs(protocol) => {
                let modules = std::env::var_os("TEST_TOOLS_NPM_BIN")
                    .map(std::path::PathBuf::from)
                    .and_then(|bin| bin.parent().map(std::path::Path::to_path_buf))
                    .unwrap_or_else(|| {
                        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/node_modules")
                    });
                if !modules.join("tus-js-client/package.json").exists() {
                    return Err(format!(
                        "no tus-js-client in {} (`npm ci` in tools/)",
                        modules.display()
                    ));
                }
                let mut cmd = Command::new("node");
                cmd.env("FERRY_TOOLS_NODE_MODULES", &modules);
                cmd.arg(format!("{scripts}/tus_js_upload.mjs"));
                cmd.arg(endpoint)
                    .arg(file)
                    .arg(chunk.to_string())
                    .arg(protocol);
                Ok(cmd)
            }
        }
    }
}

/// A file of `size` bytes in `dir`, and its SHA-256.
fn study_file(dir: &std::path::Path, size: u64) -> (std::path::PathBuf, String) {
    let file = dir.join("study.bin");
    let mut hasher = sha2::Sha256::new();
    let mut f = std::fs::File::create(&file).expect("create");
    let mut written = 0u64;
    let mut seed = 0;
    while written < size {
        let chunk = bytes((size - written).min(4 << 20) as usize, seed);
        hasher.update(&chunk);
        std::io::Write::write_all(&mut f, &chunk).expect("write");
        written += chunk.len() as u64;
        seed += 1;
    }
    (file, hex::encode(hasher.finalize()))
}

/// `client` sends 200 MB in 5 MB requests through a proxy that cuts its connection at 20
/// random offsets; it resumes each time from HEAD's offset, and the upload ends with the file's
/// SHA-256.
async fn a_client_uploads_200_mb_through_20_cut_connections(client: Client) {
    let app = TestApp::spawn().await;
    let size: u64 = 200_000_000;
    let (file, expected) = study_file(app.dir.path(), size);
    // 20 cuts spread over the bytes sent (headers included), none in the last few MB.
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ size;
    let cuts: Vec<u64> = (0..20)
        .map(|_| {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            rng_state % (size - (10 << 20))
        })
        .collect();
    let (proxy, made) =
        cutting_proxy(app.base.trim_start_matches("http://").to_owned(), cuts).await;
    let command = client.command(&format!("http://{proxy}/v1/tus"), &file, 5_000_000);
    let Some(command) = tools::or_skip(&format!("the {client:?} client"), command) else {
        return;
    };
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{client:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = stdout
        .lines()
        .last()
        .expect("the client prints the upload's URL");
    let path = &url[url.find("/v1/tus/").expect("a tus URL")..];
    assert_eq!(made.load(Ordering::SeqCst), 20, "every cut was made");
    let upload = app
        .request("get", &format!("/v1/uploads/{}", upload_id(path)), |r| r)
        .await;
    assert_eq!(upload.status, 200, "{}", upload.body);
    assert_eq!(upload.body["size"], size);
    assert_eq!(upload.body["sha256"], expected);
    assert_eq!(upload.body["filename"], "study.bin");
    eprintln!("{client:?}: 200 MB through 20 cuts, SHA-256 {expected}");
    app.wait_no_blobs("tus").await;
}

async fn tuspy_uploads_200_mb_through_20_cut_connections() {
    a_client_uploads_200_mb_through_20_cut_connections(Client::Tuspy).await
}

async fn tus_js_client_uploads_200_mb_through_20_cut_connections() {
    a_client_uploads_200_mb_through_20_cut_connections(Client::TusJs("tus-v1")).await
}

async fn tus_js_client_on_ietf_draft_03_uploads_200_mb_through_20_cut_connections() {
    a_client_uploads_200_mb_through_20_cut_connections(Client::TusJs("ietf-draft-03")).await
}

async fn tus_js_client_on_ietf_draft_05_uploads_200_mb_through_20_cut_connections() {
    a_client_uploads_200_mb_through_20_cut_connections(Client::TusJs("ietf-draft-05")).await
}

/// The IETF draft by hand: no length until the request that says `Upload-Complete: ?1`,
/// `application/partial-upload` bodies (and none, as draft 03 sends), `Upload-Complete` in every
/// answer, offsets checked as in tus.
async fn the_ietf_draft_creates_appends_and_completes_an_upload() {
    let app = TestApp::spawn().await;
    let data = bytes(3 << 20, 17);
    let interop = ("Upload-Draft-Interop-Version", "6");
    let created = app
        .request("post", "/v1/tus", |r| {
            r.header(interop.0, interop.1)
                .header("Upload-Complete", "?0")
                .header("Content-Type", "application/partial-upload")
                .body(data[..1000].to_vec())
        })
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.header("Upload-Complete"), Some("?0"));
    assert_eq!(created.header("Upload-Offset"), Some("1000"));
    assert!(created.header("Tus-Resumable").is_none(), "a draft answer");
    assert!(
        created
            .header("Upload-Limit")
            .is_some_and(|l| l.starts_with("max-size="))
    );
    let path = created.header("Location").expect("Location").to_owned();

    let ietf_patch = |offset: usize, end: usize, complete: &'static str, typed: bool| {
        let body = data[offset..end].to_vec();
        let path = path.clone();
        let app = &app;
        async move {
            app.request("patch", &path, |r| {
                let r = r
                    .header(interop.0, interop.1)
                    .header("Upload-Offset", offset.to_string())
                    .header("Upload-Complete", complete);
                let r = if typed {
                    r.header("Content-Type", "application/partial-upload")
                } else {
                    r
                };
                r.body(body)
            })
            .await
        }
    };
    // Draft 03 sends no media type.
    let second = ietf_patch(1000, 1 << 20, "?0", false).await;
    assert_eq!(second.status, 204, "{}", second.body);
    assert_eq!(second.header("Upload-Complete"), Some("?0"));
    let mismatch = ietf_patch(1000, 2000, "?0", true).await;
    assert_problem(
        mismatch.status,
        &mismatch.body,
        409,
        "upload_offset_mismatch",
    );
    let head = app
        .request("head", &path, |r| r.header(interop.0, interop.1))
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("Upload-Offset"),
        Some((1usize << 20).to_string().as_str())
    );
    assert_eq!(head.header("Upload-Complete"), Some("?0"));
    let last = ietf_patch(1 << 20, data.len(), "?1", true).await;
    assert_eq!(last.status, 204, "{}", last.body);
    assert_eq!(last.header("Upload-Complete"), Some("?1"));
    assert_eq!(
        last.header("Upload-Offset"),
        Some(data.len().to_string().as_str())
    );
    let head = app
        .request("head", &path, |r| r.header(interop.0, interop.1))
        .await;
    assert_eq!(head.header("Upload-Complete"), Some("?1"));
    assert_eq!(
        head.header("Upload-Length"),
        Some(data.len().to_string().as_str())
    );
    assert_upload_is(&app, &path, &data, None).await;

    let unknown = app
        .request("post", "/v1/tus", |r| {
            r.header("Upload-Draft-Interop-Version", "99")
                .header("Upload-Complete", "?0")
        })
        .await;
    assert_problem(unknown.status, &unknown.body, 400, "invalid_upload_header");
}

/// One replica is receiving a PATCH; the same upload's PATCH on another replica is refused
/// with `423` (the hold lives in the database), and succeeds once the first has ended.
async fn a_patch_racing_another_on_a_second_replica_is_refused() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let replica_b = app.spawn_replica();
    let data = bytes(2 << 20, 9);
    let path = create(&app, Some(data.len()), "").await;
    let slow = partial_patch(&app.base, &path, 0, data.len(), &data[..1000]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let racing = patch_at(&app, &replica_b, &path, 0, &data, &[]).await;
    assert_problem(racing.status, &racing.body, 423, "upload_locked");
    drop(slow);
    let last = send_rest_at(&app, &replica_b, &path, &data, 1 << 20).await;
    assert_eq!(last.status, 204);
    assert_upload_is(&app, &path, &data, None).await;
}

/// `kill -9` of the server while a PATCH streams: what the last checkpoint acknowledged is
/// there after the restart, and the client resumes from HEAD's offset to the right SHA-256.
async fn a_tus_upload_resumes_after_kill_9_of_the_server_mid_patch() {
    let mut app = TestApp::spawn_process(TestConfig::default()).await;
    let data = bytes(24 << 20, 21);
    let path = create(&app, Some(data.len()), "").await;
    let acknowledged = 6 << 20;
    assert_eq!(
        patch(&app, &path, 0, &data[..acknowledged]).await.status,
        204
    );
    // Most of the rest, in one request that never ends.
    let streaming = partial_patch(
        &app.base,
        &path,
        acknowledged,
        data.len() - acknowledged,
        &data[acknowledged..acknowledged + (12 << 20)],
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.kill9_server();
    drop(streaming);
    app.start_server(&[]);
    let resumed_at = offset_at(&app, &app.base, &path).await;
    assert!(
        resumed_at >= acknowledged && resumed_at <= acknowledged + (12 << 20),
        "after kill -9 the offset is {resumed_at}"
    );
    let last = send_rest_at(&app, &app.base, &path, &data, 4 << 20).await;
    assert_eq!(last.status, 204);
    assert_upload_is(&app, &path, &data, None).await;
}

/// tus concatenation by hand: three parts sent at once (one over two requests), then the final
/// upload naming them in order, with a job; the parts are gone afterwards, in the store too.
async fn partial_uploads_sent_in_parallel_are_joined_into_one_with_its_job() {
    let app = TestApp::spawn().await;
    // Over an S3 part each, of unequal sizes.
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| bytes((5 << 20) + 1000 * i, 40 + i as u64))
        .collect();
    let whole: Vec<u8> = parts.concat();
    let partial = |len: usize| {
        let app = &app;
        async move {
            let reply = app
                .request("post", "/v1/tus", |r| {
                    r.header(TUS.0, TUS.1)
                        .header("Upload-Length", len.to_string())
                        .header("Upload-Concat", "partial")
                })
                .await;
            assert_eq!(reply.status, 201, "{}", reply.body);
            reply.header("Location").expect("Location").to_owned()
        }
    };
    let mut paths = Vec::new();
    for part in &parts {
        paths.push(partial(part.len()).await);
    }
    let head = app
        .request("head", &paths[0], |r| r.header(TUS.0, TUS.1))
        .await;
    assert_eq!(head.header("Upload-Concat"), Some("partial"));
    // The first part's first half, then everything at once.
    let half = parts[0].len() / 2;
    assert_eq!(
        patch(&app, &paths[0], 0, &parts[0][..half]).await.status,
        204
    );
    let unfinished = app
        .request("post", "/v1/tus", |r| {
            r.header(TUS.0, TUS.1)
                .header("Upload-Concat", format!("final;{} {}", paths[0], paths[1]))
        })
        .await;
    assert_problem(
        unfinished.status,
        &unfinished.body,
        400,
        "invalid_upload_header",
    );
    let (a, b, c) = tokio::join!(
        patch(&app, &paths[0], half, &parts[0][half..]),
        patch(&app, &paths[1], 0, &parts[1]),
        patch(&app, &paths[2], 0, &parts[2]),
    );
    for reply in [a, b, c] {
        assert_eq!(reply.status, 204, "{}", reply.body);
    }
    let twice = app
        .request("post", "/v1/tus", |r| {
            r.header(TUS.0, TUS.1)
                .header("Upload-Concat", format!("final;{} {}", paths[0], paths[0]))
        })
        .await;
    assert_problem(twice.status, &twice.body, 400, "invalid_upload_header");

    let urls: Vec<String> = paths.iter().map(|p| app.url(p)).collect();
    let metadata = format!("ferry-kind {},filename {}", b64("model"), b64("study.bin"));
    let joined = app
        .request("post", "/v1/tus", |r| {
            r.header(TUS.0, TUS.1)
                .header("Upload-Concat", format!("final;{}", urls.join(" ")))
                .header("Upload-Metadata", metadata)
        })
        .await;
    assert_eq!(joined.status, 201, "{}", joined.body);
    assert_eq!(
        joined.header("Upload-Offset"),
        Some(whole.len().to_string().as_str())
    );
    let path = joined.header("Location").expect("Location").to_owned();
    assert_upload_is(&app, &path, &whole, None).await;
    let job_path = joined
        .header("Ferry-Job-Location")
        .expect("a job")
        .to_owned();
    let job = app
        .wait_job(
            job_path.trim_start_matches("/v1/jobs/"),
            Duration::from_secs(30),
            |j| j["status"] == "succeeded" || j["status"] == "failed",
        )
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["inputs"][0]["sha256"], sha256_hex(&whole));
    // The parts are gone, rows and bytes: only the joined upload is stored.
    for part in &paths {
        let gone = app
            .request("get", &format!("/v1/uploads/{}", upload_id(part)), |r| r)
            .await;
        assert_eq!(gone.status, 404, "{part}");
    }
    let start = Instant::now();
    loop {
        let stored = app.blob_files("uploads").await;
        if stored.len() == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "left: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// tus-js-client's `parallelUploads`: four partial uploads at once and a final one joining
/// them, the way a browser app sends a large file over several connections.
async fn tus_js_client_sends_a_file_as_4_parallel_parts() {
    let app = TestApp::spawn().await;
    let (file, expected) = study_file(app.dir.path(), 60_000_000);
    let command = Client::TusJs("tus-v1").command(&app.url("/v1/tus"), &file, 5_000_000);
    let Some(mut command) = tools::or_skip("the tus-js-client", command) else {
        return;
    };
    command.env("FERRY_TUS_JS_PARALLEL", "4");
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .expect("run tus-js-client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "tus-js-client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = stdout.lines().last().expect("the upload's URL");
    let path = &url[url.find("/v1/tus/").expect("a tus URL")..];
    let upload = app
        .request("get", &format!("/v1/uploads/{}", upload_id(path)), |r| r)
        .await;
    assert_eq!(upload.status, 200, "{}", upload.body);
    assert_eq!(upload.body["size"], 60_000_000);
    assert_eq!(upload.body["sha256"], expected);
    let listed = app.request("get", "/v1/uploads", |r| r).await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(1),
        "the parts are gone: {}",
        listed.body
    );
}

/// `[cors] allowed_origins`: a browser's preflight for a tus PATCH from an allowed origin is
/// answered (no key needed), and answers carry the headers a tus client must read; another
/// origin gets no CORS headers, so the browser keeps its page out.
async fn a_page_of_an_allowed_origin_may_upload_and_others_get_no_cors_headers() {
    let app = TestApp::spawn_with(TestConfig {
        extra_toml: "[cors]\nallowed_origins = [\"https://viewer.example\"]\n".into(),
        ..TestConfig::default()
    })
    .await;
    let path = create(&app, Some(10), "").await;
    // Raw requests: a preflight is the CORS layer's answer, not an operation of the spec.
    let http = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, app.url(&path))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "PATCH")
            .header(
                "Access-Control-Request-Headers",
                "authorization,content-type,tus-resumable,upload-offset",
            )
            .send()
    };
    let allowed = preflight("https://viewer.example")
        .await
        .expect("preflight");
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII").to_ascii_lowercase())
    };
    assert_eq!(
        header(&allowed, "access-control-allow-origin").as_deref(),
        Some("https://viewer.example")
    );
    assert!(
        header(&allowed, "access-control-allow-methods").is_some_and(|m| m.contains("patch")),
        "{:?}",
        allowed.headers()
    );
    let refused = preflight("https://elsewhere.example")
        .await
        .expect("preflight");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let patched = http
        .patch(app.url(&path))
        .header("Origin", "https://viewer.example")
        .header(TUS.0, TUS.1)
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", "0")
        .body(vec![7u8; 10])
        .send()
        .await
        .expect("PATCH");
    assert_eq!(patched.status(), 204);
    let exposed = header(&patched, "access-control-expose-headers").unwrap_or_default();
    for needed in [
        "upload-offset",
        "location",
        "tus-resumable",
        "ferry-job-location",
    ] {
        assert!(
            exposed.contains(needed),
            "{needed} is not exposed: {exposed}"
        );
    }
}

/// Makes the one upload at offset `len` look as if all its bytes were in: its length cut to
/// them, as a completion that never happened leaves it.
async fn cut_length_to_offset(app: &TestApp, len: usize) {
    let set =
        format!("UPDATE ferry_resumable_uploads SET length = {len} WHERE upload_offset = {len}");
    assert_eq!(app.execute_sql(&set, &set).await, 1);
}

/// Waits (up to 15 s) until the upload `path` names is recorded (`GET /v1/uploads/{id}`).
async fn wait_recorded(app: &TestApp, path: &str) {
    let start = Instant::now();
    loop {
        let upload = app
            .request("get", &format!("/v1/uploads/{}", upload_id(path)), |r| r)
            .await;
        if upload.status == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{path} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every byte is in but the completion never happened (the store failed while completing, or
/// the process died then): the reconciler completes it, as the client's next request would —
/// a tus client that reads `Upload-Offset` equal to the length sends none. The state is made
/// by hand: bytes sent to an upload that said it was longer, then its length cut to them.
async fn an_upload_whose_completion_was_cut_is_completed_by_the_reconciler() {
    let app = TestApp::spawn().await;
    let data = bytes((5 << 20) + 321, 23);
    let path = create(&app, Some(data.len() + 5), "").await;
    assert_eq!(patch(&app, &path, 0, &data).await.status, 204);
    cut_length_to_offset(&app, data.len()).await;
    wait_recorded(&app, &path).await;
    assert_upload_is(&app, &path, &data, None).await;
}

/// A completion cut after the bytes were moved into place but before the upload was recorded
/// (made by hand on a local folder: the staging file renamed to where uploads are, the length
/// cut to the bytes): the upload is recorded from the bytes in place, not lost because there is
/// no staging file left to resume from.
#[tokio::test]
async fn a_completion_cut_after_the_bytes_moved_is_recorded_from_them() {
    run_on(Backend::Sqlite, async {
        let app = TestApp::spawn().await;
        let data = bytes(300_000, 29);
        let path = create(&app, Some(data.len() + 5), "").await;
        assert_eq!(patch(&app, &path, 0, &data).await.status, 204);
        let simple = upload_id(&path).trim_start_matches("upl_").to_owned();
        let blobs = app.data_dir().join("blobs");
        std::fs::create_dir_all(blobs.join("uploads")).expect("uploads folder");
        std::fs::rename(
            blobs.join("tus").join(&simple),
            blobs.join("uploads").join(&simple),
        )
        .expect("move the staging file");
        cut_length_to_offset(&app, data.len()).await;
        wait_recorded(&app, &path).await;
        assert_upload_is(&app, &path, &data, None).await;
    })
    .await
}
