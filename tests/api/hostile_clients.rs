//! Hostile clients and hostile handlers: bodies that stall or trickle, one address taking every
//! upload slot, readers that stop reading a download, `Range` headers at the edges, result
//! content types that would break or open a download, leftover outputs with unsafe names, job
//! requests whose content type says something else than their form, an `Idempotency-Key` held by
//! an API replica killed mid-request, and stored objects that no row points to.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(30);

/// A handler that writes the files `params.files` lists — `{name, text | bytes, content_type,
/// publish}` — announcing those with `publish: true` as results, and exits 0.
const HOSTILE_HANDLER: &str = r#"
import json, os, pathlib
params = json.loads(os.environ["FERRY_PARAMS"])
out = pathlib.Path(os.environ["FERRY_OUTPUT_DIR"])
for f in params["files"]:
    path = out / f["name"]
    path.parent.mkdir(parents=True, exist_ok=True)
    if "bytes" in f:
        with open(path, "wb") as w:
            block = bytes(range(256)) * 4096
            left = f["bytes"]
            while left > 0:
                w.write(block[:left])
                left -= len(block)
    else:
        path.write_text(f.get("text", ""))
    if f.get("publish"):
        print(json.dumps({"result": f["name"], "content_type": f["content_type"]}), flush=True)
"#;

/// What a test adds to the standard test configuration.
#[derive(Default)]
struct Tuning {
    /// Lines for `[limits]`.
    limits: &'static str,
    /// Lines for `[queue]`.
    queue: &'static str,
    /// Serve the `hostile` kind ([`HOSTILE_HANDLER`]).
    hostile_handler: bool,
    /// Run workers in the server process.
    workers: bool,
}

/// A `ferry serve` process with the test configuration plus `tuning`.
async fn spawn_tuned(cfg: TestConfig, tuning: Tuning) -> TestApp {
    let mut app = TestApp::spawn_api_only(cfg).await;
    app.kill9_server();
    let mut toml = std::fs::read_to_string(&app.config_path).expect("read config");
    toml = toml.replacen("[limits]\n", &format!("[limits]\n{}\n", tuning.limits), 1);
    toml = toml.replacen("[queue]\n", &format!("[queue]\n{}\n", tuning.queue), 1);
    if tuning.hostile_handler {
        let script = app.dir.path().join("hostile.py");
        std::fs::write(&script, HOSTILE_HANDLER).expect("write handler");
        toml.push_str(&format!(
            "\n[handlers.hostile]\ncommand = [\"python3\", \"{}\"]\nmax_attempts = 1\n",
            script.display()
        ));
    }
    std::fs::write(&app.config_path, toml).expect("write config");
    app.start_server(if tuning.workers {
        &[]
    } else {
        &["--no-workers"]
    });
    app
}

/// Runs a `hostile` job writing `files` and waits for it to finish.
async fn run_hostile(app: &TestApp, files: Value) -> Value {
    let upload = app.upload(b"x".to_vec()).await;
    let (status, job) = app
        .post_job(json!({"kind": "hostile", "inputs": {"in": upload["id"]},
                         "params": {"files": files}}))
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_job(&id, WITHIN, |j| {
        matches!(j["status"].as_str(), Some("succeeded" | "failed"))
    })
    .await
}

/// Opens a connection to `base` (`http://host:port`) and sends a request head.
fn raw_request(base: &str, head: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(stream, "{head}").expect("send head");
    stream.flush().expect("flush");
    stream
}

/// Reads the answer to a request whose body the server cut off: status line and body text.
fn read_answer(stream: &mut TcpStream) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .expect("timeout");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if buf.is_empty() => panic!("no answer: {e}"),
            Err(_) => break,
        }
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < WITHIN, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- A stalled client cannot take the service down --------------------------------------------

/// Several parts on either backend, so a multipart write is under way when the body stalls;
/// and more than the connection's buffers can hold, so the server is surely reading the body
/// (and holds a slot) once the client has sent it.
const STALL_AFTER: usize = 16 << 20;

async fn a_stalled_body_is_cut_off_frees_its_slot_and_leaves_nothing() {
    let app = spawn_tuned(
        TestConfig {
            max_concurrent_uploads: 2,
            ..TestConfig::default()
        },
        Tuning {
            limits: "transfer_idle_timeout = \"1s\"\ntransfer_min_rate = 0",
            ..Tuning::default()
        },
    )
    .await;
    // Both slots taken by bodies that send a few MiB and then nothing: an upload and a
    // one-request job.
    let mut stalled: Vec<TcpStream> = ["/v1/uploads", "/v1/kinds/model/jobs"]
        .into_iter()
        .map(|path| app.partial_post(path, "", 64 << 20, &bytes(STALL_AFTER, 1)))
        .collect();

    // An honest upload gets in once the stalled ones are cut off.
    let honest = bytes(10_000, 2);
    let start = Instant::now();
    loop {
        let res = app
            .client
            .post(app.url("/v1/uploads"))
            .body(honest.clone())
            .send()
            .await
            .unwrap();
        if res.status() == 201 {
            break;
        }
        let status = res.status().as_u16();
        assert_problem(
            status,
            &res.json().await.unwrap(),
            503,
            "uploads_at_capacity",
        );
        assert!(
            start.elapsed() < WITHIN,
            "stalled bodies still hold every upload slot"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for stream in &mut stalled {
        let (status, text) = read_answer(stream);
        assert_eq!(status, 408, "{text}");
        assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    // Nothing of the stalled bodies is left: no row, no object, no multipart upload.
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 0);
    wait_until("only the honest upload is stored", || async {
        app.blob_files("").await.len() == 1
    })
    .await;
}

async fn a_body_below_the_minimum_rate_is_cut_off() {
    let app = spawn_tuned(
        TestConfig::default(),
        Tuning {
            limits: "transfer_idle_timeout = \"1s\"\ntransfer_min_rate = 10000",
            ..Tuning::default()
        },
    )
    .await;
    // 100 bytes every 100 ms: never quiet for a second, but ten times too slow.
    let mut stream = app.partial_post("/v1/uploads", "", 1_000_000, b"x");
    let mut writer = stream.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        for _ in 0..400 {
            if writer.write_all(&[7u8; 100]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let (status, text) = read_answer(&mut stream);
    drop(stream);
    assert_eq!(status, 408, "{text}");
    assert!(text.contains("\"code\":\"body_timeout\""), "{text}");
    assert!(text.contains("minimum"), "{text}");
    trickle.join().expect("trickle");
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        0
    );
    app.wait_no_blobs("").await;
}

async fn one_address_gets_only_its_share_of_the_upload_slots() {
    let app = spawn_tuned(
        TestConfig::default(),
        Tuning {
            limits: "max_uploads_per_client = 2\ntransfer_idle_timeout = \"60s\"",
            ..Tuning::default()
        },
    )
    .await;
    // Uploads from this address that stall, opened until the server refuses one more: an
    // upload racing a stalled one may take a share first, so open stalled ones until two are
    // held.
    let mut stalled: Vec<TcpStream> = Vec::new();
    let start = Instant::now();
    let refused = loop {
        if stalled.len() < 10 {
            let seed = stalled.len() as u64;
            stalled.push(app.partial_post("/v1/uploads", "", 1_000_000, &bytes(1000, seed)));
        }
        let res = app
            .client
            .post(app.url("/v1/uploads"))
            .body(bytes(1000, 20))
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            break res;
        }
        assert_eq!(res.status(), 201, "{:?}", res.text().await);
        assert!(
            start.elapsed() < WITHIN,
            "one address may hold as many upload slots as it likes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    let status = refused.status().as_u16();
    assert_problem(
        status,
        &refused.json().await.unwrap(),
        429,
        "client_uploads_at_capacity",
    );
    // Another address still gets a slot.
    let other = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let res = other
        .post(app.url("/v1/uploads"))
        .body(bytes(1000, 21))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{:?}", res.text().await);
    // The shares come back when the stalled uploads end (here: their client goes away).
    drop(stalled);
    let start = Instant::now();
    loop {
        let res = app
            .client
            .post(app.url("/v1/uploads"))
            .body(bytes(1000, 22))
            .send()
            .await
            .unwrap();
        if res.status() == 201 {
            break;
        }
        assert_eq!(res.status(), 429);
        assert!(start.elapsed() < WITHIN, "the shares never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether the server process still holds `object` of the store open: the local file (SQLite
/// configuration), or a connection to the S3 server with unread bytes waiting in it.
fn server_holds_object(app: &TestApp, object: &Path) -> bool {
    let pid = app.server_pid();
    let mut sockets = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
    {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if target == object {
            return true;
        }
        let target = target.display().to_string();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            sockets.push(inode.to_owned());
        }
    }
    let Some(endpoint) = &app.s3_endpoint else {
        return false;
    };
    let port = url::Url::parse(endpoint).unwrap().port().unwrap();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).expect("tcp table");
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let remote_port = cols[2].rsplit(':').next().unwrap();
        let rx_queue = cols[4].rsplit(':').next().unwrap();
        u16::from_str_radix(remote_port, 16) == Ok(port)
            && u64::from_str_radix(rx_queue, 16).unwrap_or(0) > 0
            && sockets.iter().any(|s| s == cols[9])
    })
}

async fn a_reader_that_stops_reading_a_download_releases_the_stored_object() {
    // A lease long enough for a loaded machine to store 64 MiB in S3 while the job runs.
    let app = spawn_tuned(
        TestConfig {
            lease_ttl: "20s",
            ..TestConfig::default()
        },
        Tuning {
            limits: "transfer_idle_timeout = \"1s\"",
            hostile_handler: true,
            workers: true,
            ..Tuning::default()
        },
    )
    .await;
    const SIZE: usize = 64 << 20;
    let job = run_hostile(
        &app,
        json!([{"name": "big.bin", "bytes": SIZE, "publish": true,
                "content_type": "application/octet-stream"}]),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    let object = match app.backend {
        Backend::Sqlite => {
            let files = app.blob_files(&format!("jobs/{}", &id[4..])).await;
            assert_eq!(files.len(), 1, "{files:?}");
            std::path::PathBuf::from(&files[0])
        }
        Backend::PostgresS3 => std::path::PathBuf::new(),
    };
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut reader = raw_request(
        &app.base,
        &format!("GET /v1/jobs/{id}/results/big.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    );
    let mut first = [0u8; 65536];
    let got = reader.read(&mut first).expect("first bytes");
    assert!(String::from_utf8_lossy(&first[..got]).starts_with("HTTP/1.1 200"));
    // The client stops reading: once the buffers are full the server waits on it, holding the
    // object — until the idle timeout releases it.
    wait_until("the stalled download holds the stored object", || async {
        server_holds_object(&app, &object)
    })
    .await;
    wait_until(
        "the stalled download releases the stored object",
        || async { !server_holds_object(&app, &object) },
    )
    .await;
    // Reading again, the client finds the body cut short.
    reader
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let mut total = got;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < SIZE, "the whole {total}-byte answer arrived");
    // The server is fine, and a reader that keeps reading gets everything.
    let whole = app
        .client
        .get(app.url(&format!("/v1/jobs/{id}/results/big.bin")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len(), SIZE);
}

// --- Smaller defects -------------------------------------------------------------------------

async fn range_headers_at_the_edges_are_saturated_or_ignored() {
    let app = TestApp::spawn().await;
    let job = app.submit("model", bytes(100, 7), json!({})).await;
    let id = job["id"].as_str().unwrap();
    app.wait_status(id, "succeeded", WITHIN).await;
    let url = app.url(&format!("/v1/jobs/{id}/results/preview.txt"));
    let get = |range: &'static str| {
        let req = app.client.get(&url).header("range", range);
        async move { req.send().await.unwrap() }
    };
    let res = get("bytes=0-18446744073709551615").await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.headers()["content-range"], "bytes 0-12/13");
    assert_eq!(res.text().await.unwrap(), "intermediate\n");
    // Unparseable ranges are ignored: the whole result, as if there were no Range at all.
    for unparseable in [
        "bytes=",
        "bytes=0-99999999999999999999",
        "bytes=5-2",
        "bytes=x-",
    ] {
        let res = get(unparseable).await;
        assert_eq!(res.status(), 200, "{unparseable}");
        assert!(res.headers().get("content-range").is_none());
        assert_eq!(res.text().await.unwrap(), "intermediate\n", "{unparseable}");
    }
    let res = get("bytes=13-").await;
    let status = res.status().as_u16();
    assert_eq!(res.headers()["content-range"], "bytes */13");
    assert_problem(
        status,
        &res.json().await.unwrap(),
        416,
        "range_not_satisfiable",
    );
}

async fn result_content_types_are_checked_and_downloads_never_render() {
    let app = spawn_tuned(
        TestConfig::default(),
        Tuning {
            hostile_handler: true,
            workers: true,
            ..Tuning::default()
        },
    )
    .await;
    // A content type with a line break would end the download's header: refused at publish.
    let job = run_hostile(
        &app,
        json!([{"name": "x.txt", "text": "hi", "publish": true,
                "content_type": "text/plain\r\nX-Injected: yes"}]),
    )
    .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "invalid_result", "{job}");
    assert!(
        job["error"]["detail"]
            .as_str()
            .unwrap()
            .contains("content type"),
        "{job}"
    );
    assert!(app.results(job["id"].as_str().unwrap()).await.is_empty());

    // What a browser would render is an attachment; nothing is sniffed or run.
    let page = "<script>alert(document.cookie)</script>";
    let published = |name: &str, text: &str, content_type: &str| {
        let mut file = json!({"name": name, "text": text, "publish": true});
        file["content_type"] = json!(content_type);
        file
    };
    let job = run_hostile(
        &app,
        json!([
            published("page.html", page, "text/html"),
            published("pic.svg", "<svg/>", "image/svg+xml"),
            published("data.json", "{}", "application/json"),
        ]),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    for (name, attachment) in [("page.html", true), ("pic.svg", true), ("data.json", false)] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let res = app
                .client
                .request(
                    method.clone(),
                    app.url(&format!("/v1/jobs/{id}/results/{name}")),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{method} {name}");
            let h = res.headers();
            assert_eq!(h["x-content-type-options"], "nosniff", "{method} {name}");
            let csp = h["content-security-policy"].to_str().unwrap();
            assert!(
                csp.contains("default-src 'none'") && csp.contains("sandbox"),
                "{csp}"
            );
            match h.get("content-disposition") {
                Some(v) if attachment => {
                    assert_eq!(v, &format!("attachment; filename=\"{name}\""), "{name}")
                }
                None if !attachment => {}
                other => panic!("{method} {name}: Content-Disposition {other:?}"),
            }
        }
    }
}

async fn leftover_outputs_with_unsafe_names_are_skipped_with_a_warning() {
    let app = spawn_tuned(
        TestConfig::default(),
        Tuning {
            hostile_handler: true,
            workers: true,
            ..Tuning::default()
        },
    )
    .await;
    let job = run_hostile(
        &app,
        json!([
            {"name": "a b.txt", "text": "space"},
            {"name": "ä.txt", "text": "umlaut"},
            {"name": "ok.txt", "text": "fine"},
        ]),
    )
    .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let id = job["id"].as_str().unwrap();
    let names: Vec<Value> = app
        .results(id)
        .await
        .iter()
        .map(|r| r["name"].clone())
        .collect();
    assert_eq!(names, [json!("ok.txt")]);
    let (status, logs) = app.get_json(&format!("/v1/jobs/{id}/logs")).await;
    assert_eq!(status, 200);
    let lines: Vec<&str> = logs["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["line"].as_str())
        .collect();
    for name in ["a b.txt", "ä.txt"] {
        assert!(
            lines
                .iter()
                .any(|l| l.contains("warning") && l.contains(&format!("{name:?}"))),
            "no warning about {name:?} in {lines:?}"
        );
    }
}

async fn job_requests_are_read_as_their_content_type_says() {
    let app = TestApp::spawn().await;
    // A JSON body is a job request, never an input file.
    let res = app
        .client
        .post(app.url("/v1/kinds/noop/jobs?input=doc"))
        .json(&json!({"kind": "noop", "inputs": {}}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_problem(status, &body, 415, "unsupported_media_type");
    assert!(
        body["detail"].as_str().unwrap().contains("octet-stream"),
        "{body}"
    );
    // The same bytes labelled as a file are the input of a one-request job.
    let res = app
        .client
        .post(app.url("/v1/kinds/noop/jobs?input=doc"))
        .header("content-type", "application/octet-stream")
        .body(json!({"kind": "noop", "inputs": {}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    // A raw file without ?kind is refused, saying what is missing.
    let res = app
        .client
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/octet-stream")
        .body("raw")
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_problem(status, &body, 415, "unsupported_media_type");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("/v1/kinds/{kind}/jobs"),
        "{body}"
    );
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 1);
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );

    // An empty input name is refused (OpenAPI 3.0 cannot constrain property names, so the
    // spec says it in words).
    let upload = app.upload(bytes(10, 8)).await;
    let (status, body) = app
        .post_job(json!({"kind": "noop", "inputs": {"": upload["id"]}}))
        .await;
    assert_problem(status, &body, 422, "invalid_field");
}

// --- Crashes of an API replica ---------------------------------------------------------------

async fn an_idempotency_key_held_by_a_killed_replica_is_free_within_seconds() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let replica = app.spawn_replica();
    let replica_pid = app.workers.last().expect("the replica").id();
    const LEN: usize = 10_000;
    let body = bytes(LEN, 9);
    // The replica reserves the key, reads part of the body, and dies.
    let addr = replica.trim_start_matches("http://").to_owned();
    let mut doomed = raw_request(
        &replica,
        &format!(
            "POST /v1/kinds/model/jobs HTTP/1.1\r\nHost: {addr}\r\nIdempotency-Key: study-42\r\n\
             Content-Length: {LEN}\r\n\r\n"
        ),
    );
    doomed.write_all(&body[..100]).unwrap();
    wait_until("the replica reserved the key", || async {
        app.count_rows("SELECT COUNT(*) FROM ferry_idempotency_keys")
            .await
            == 1
    })
    .await;
    app.kill9_worker(replica_pid);
    drop(doomed);

    // The client retries the same request on the surviving replica.
    let send = || {
        app.client
            .post(app.url("/v1/kinds/model/jobs"))
            .header("idempotency-key", "study-42")
            .body(body.clone())
            .send()
    };
    let start = Instant::now();
    let created: Value = loop {
        let res = send().await.unwrap();
        if res.status() == 202 {
            assert!(res.headers().get("idempotent-replayed").is_none());
            break res.json().await.unwrap();
        }
        let status = res.status().as_u16();
        assert_problem(
            status,
            &res.json().await.unwrap(),
            409,
            "idempotency_key_in_flight",
        );
        assert!(
            start.elapsed() < WITHIN,
            "the key stayed in flight after its replica died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let res = send().await.unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let replayed: Value = res.json().await.unwrap();
    assert_eq!(replayed["id"], created["id"]);
    assert_eq!(app.count_rows("SELECT COUNT(*) FROM ferry_jobs").await, 1);
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1
    );
}

/// Stores `data` at `key` directly in the test's blob store, as a crashed process would have.
async fn store_directly(app: &TestApp, key: &str, data: &[u8]) {
    match app.backend {
        Backend::Sqlite => {
            let path = app.data_dir().join("blobs").join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
        Backend::PostgresS3 => {
            let chunk: Result<bytes::Bytes, std::io::Error> = Ok(data.to_vec().into());
            app.blobs()
                .put_stream(
                    &object_store::path::Path::from(key),
                    futures_util::stream::iter([chunk]),
                    u64::MAX,
                )
                .await
                .expect("store");
        }
    }
}

/// Whether an object is stored at `key`.
async fn stored(app: &TestApp, key: &str) -> bool {
    match app.backend {
        Backend::Sqlite => app.data_dir().join("blobs").join(key).exists(),
        Backend::PostgresS3 => match app.blobs().head(&object_store::path::Path::from(key)).await {
            Ok(_) => true,
            Err(ferry::blobs::BlobError::NotFound) => false,
            Err(e) => panic!("head {key}: {e}"),
        },
    }
}

async fn objects_no_row_points_to_are_swept() {
    let app = spawn_tuned(
        TestConfig::default(),
        Tuning {
            queue: "orphan_sweep_interval = \"1s\"",
            workers: true,
            ..Tuning::default()
        },
    )
    .await;
    let done = app.submit("model", bytes(100, 10), json!({})).await;
    let done_id = done["id"].as_str().unwrap();
    app.wait_status(done_id, "succeeded", WITHIN).await;
    let running = app
        .submit("model", bytes(100, 11), json!({"mode": "sleep"}))
        .await;
    let running_id = running["id"].as_str().unwrap();
    app.wait_status(running_id, "running", WITHIN).await;

    // What crashes leave: a result attempt 1 stored before its worker died (the job went on and
    // finished), and a result of a job that is gone. A result the running attempt has stored
    // but not recorded yet is not an orphan.
    let stale = format!("jobs/{}/results/1/out.json", &done_id[4..]);
    let gone = format!("jobs/{}/results/2/x.json", uuid::Uuid::now_v7().simple());
    let pending = format!("jobs/{}/results/1/pending.json", &running_id[4..]);
    // And uploads whose process died before recording them: once old enough (only a local
    // folder lets the test age an object), never while they may still be recorded.
    let fresh_upload = format!("uploads/{}", uuid::Uuid::now_v7().simple());
    let old_upload = format!("uploads/{}", uuid::Uuid::now_v7().simple());
    for key in [&stale, &gone, &pending, &fresh_upload, &old_upload] {
        store_directly(&app, key, b"{}").await;
    }
    if app.backend == Backend::Sqlite {
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(app.data_dir().join("blobs").join(&old_upload))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    wait_until("the orphans are deleted", || async {
        !stored(&app, &stale).await
            && !stored(&app, &gone).await
            && (app.backend != Backend::Sqlite || !stored(&app, &old_upload).await)
    })
    .await;
    // A later orphan is deleted by a later pass, which starts once the first pass has ended:
    // by then that pass has looked at everything stored before it started.
    let marker = format!("jobs/{}/results/1/marker", uuid::Uuid::now_v7().simple());
    store_directly(&app, &marker, b"{}").await;
    wait_until("a later pass deleted a later orphan", || async {
        !stored(&app, &marker).await
    })
    .await;
    assert!(
        stored(&app, &pending).await,
        "the running attempt's object was deleted"
    );
    assert!(
        stored(&app, &fresh_upload).await,
        "an upload that may still be recorded was deleted"
    );
    // The job's own results are untouched.
    for result in app.results(done_id).await {
        let res = app
            .client
            .get(app.url(result["url"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{result}");
    }
    assert_eq!(
        app.blob_files(&format!("jobs/{}", &done_id[4..]))
            .await
            .len(),
        2
    );
}

crate::matrix!(
    a_stalled_body_is_cut_off_frees_its_slot_and_leaves_nothing,
    a_body_below_the_minimum_rate_is_cut_off,
    one_address_gets_only_its_share_of_the_upload_slots,
    a_reader_that_stops_reading_a_download_releases_the_stored_object,
    range_headers_at_the_edges_are_saturated_or_ignored,
    result_content_types_are_checked_and_downloads_never_render,
    leftover_outputs_with_unsafe_names_are_skipped_with_a_warning,
    job_requests_are_read_as_their_content_type_says,
    an_idempotency_key_held_by_a_killed_replica_is_free_within_seconds,
    objects_no_row_points_to_are_swept,
);
