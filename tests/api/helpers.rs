//! `TestApp`: a Ferry server on port 0 with its own temporary data folder, its own database and
//! its own blob store, and a fast-ticking configuration written to a `ferry.toml`.
//!
//! Most tests run the application in-process ([`TestApp::spawn`], [`TestApp::spawn_with`]): the
//! configuration file goes through `Settings::load` exactly as `ferry serve` reads it, and
//! `Application::build` runs on a runtime and thread of its own, so a test that blocks its own
//! thread (e.g. on a raw socket) never stalls the server. Tests that need what only a process
//! gives — `kill -9`, signals, a restart, several processes, the server's own memory figures —
//! start real `ferry` processes ([`TestApp::spawn_process`], [`TestApp::spawn_api_only`]).
//! Command handlers are real external processes in both modes. The typed request helpers live
//! in `client.rs`.
//!
//! Every test in the [`matrix!`] runs twice: on the embedded configuration {SQLite, local folder}
//! and on the scale-out one {PostgreSQL, S3-compatible server}. The second needs PostgreSQL
//! (`TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432`) and an S3 endpoint
//! (`TEST_S3_ENDPOINT`, which `.ci/run` sets after starting one). Without them it is
//! skipped with a notice, unless `CI=true`, where it fails.

use std::{
    cell::Cell,
    future::Future,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::in_process::InProcessApp;
pub use crate::{
    client::{Headers, items, read_raw_reply},
    spec::{Reply, spec},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// Generates, for each listed `async fn`, a `sqlite` and a `postgres_s3` test.
#[macro_export]
macro_rules! matrix {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    $crate::helpers::run_on($crate::helpers::Backend::Sqlite, super::$name()).await
                }
                #[tokio::test]
                async fn postgres_s3() {
                    $crate::helpers::run_on($crate::helpers::Backend::PostgresS3, super::$name()).await
                }
            }
        )*
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    PostgresS3,
}

thread_local! {
    // Tests run on a current-thread runtime, so the test body sees what `run_on` set.
    static BACKEND: Cell<Backend> = const { Cell::new(Backend::Sqlite) };
}

pub fn backend() -> Backend {
    BACKEND.with(Cell::get)
}

fn pg_url() -> String {
    std::env::var("TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

fn s3_endpoint() -> Option<String> {
    std::env::var("TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
}

fn reachable(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
        return false;
    };
    std::net::TcpStream::connect_timeout(
        &format!("{host}:{port}").parse().expect("socket address"),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Runs `test` on `backend`, or explains why it cannot.
pub async fn run_on(backend: Backend, test: impl Future<Output = ()>) {
    if backend == Backend::PostgresS3 {
        let pg = pg_url();
        let missing = match s3_endpoint() {
            None => Some("TEST_S3_ENDPOINT is not set".to_owned()),
            Some(s3) if !reachable(&s3) => Some(format!("no S3 server at {s3}")),
            Some(_) if !reachable(&pg) => Some(format!("no PostgreSQL at {pg}")),
            Some(_) => None,
        };
        if let Some(why) = missing {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true but the PostgreSQL + S3 configuration cannot run: {why}");
            }
            eprintln!(
                "NOTICE: skipping the PostgreSQL + S3 run of this test: {why} (.ci/run starts both)"
            );
            return;
        }
    }
    BACKEND.with(|b| b.set(backend));
    test.await
}

/// Knobs a test may turn; everything else is the fast test default.
#[derive(Clone, Debug)]
pub struct TestConfig {
    pub max_upload_bytes: u64,
    pub upload_ttl: &'static str,
    /// `limits.resumable_upload_ttl`: how long an idle tus upload is kept.
    pub resumable_upload_ttl: &'static str,
    pub lease_ttl: &'static str,
    pub model_concurrency: u32,
    pub model_max_attempts: u32,
    pub model_timeout: &'static str,
    /// A private S3 server instead of the shared one (for outage tests).
    pub s3_endpoint: Option<String>,
    /// Where Ferry reaches PostgreSQL, if not directly (e.g. through a test's cuttable proxy);
    /// the test itself still inspects the database directly.
    pub pg_via: Option<String>,
    pub max_concurrent_uploads: usize,
    /// Configure the model as `python3 model.py`, relative to the configuration file's folder.
    pub relative_model: bool,
    /// `limits.progress_event_interval`, when not the server's default.
    pub progress_event_interval: Option<&'static str>,
    /// The `[webhooks]` section: by default receivers on loopback are allowed (the tests'
    /// receivers listen there) and the retry schedule is short.
    pub webhooks: String,
    /// `events.heartbeat`: how long an event stream stays silent before a heartbeat.
    pub heartbeat: &'static str,
    /// `events.poll_cache_max_age`: how long PostgreSQL's status polls may be answered from
    /// memory (the server's default when `None`).
    pub poll_cache_max_age: Option<&'static str>,
    /// More tables at the end of the configuration (`[tenants.x]`, …).
    pub extra_toml: String,
    /// More lines in `[limits]`.
    pub extra_limits: &'static str,
}

/// The tests' `[webhooks]` section: loopback receivers, a fast scan and a short schedule.
pub const TEST_WEBHOOKS: &str = r#"allow_loopback = true
timeout = "2s"
poll_interval = "50ms"
retry_schedule = ["0s", "200ms", "400ms", "800ms"]
"#;

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 << 30,
            upload_ttl: "1h",
            resumable_upload_ttl: "1h",
            lease_ttl: "3s",
            model_concurrency: 2,
            model_max_attempts: 3,
            model_timeout: "60s",
            s3_endpoint: None,
            pg_via: None,
            max_concurrent_uploads: 16,
            relative_model: false,
            webhooks: TEST_WEBHOOKS.to_owned(),
            progress_event_interval: None,
            heartbeat: "15s",
            poll_cache_max_age: None,
            extra_toml: String::new(),
            extra_limits: "",
        }
    }
}

pub struct TestApp {
    pub backend: Backend,
    /// The test's own database (SQLite URL or PostgreSQL URL).
    pub database_url: String,
    /// The test's own bucket, on the PostgreSQL + S3 configuration.
    pub bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    server: Option<Server>,
    /// Worker and extra replica processes.
    pub workers: Vec<Child>,
    logs: u32,
}

/// How the test's main server runs.
enum Server {
    InProcess(InProcessApp),
    Process(Child),
}

/// How [`TestApp::start`] starts the server.
enum Mode<'a> {
    InProcess,
    /// `ferry serve` with these extra arguments.
    Process(&'a [&'a str]),
}

/// Runs `$body` with `$pool` connected to the test's own database and `$sql` the statement for
/// its backend (a macro: sqlx's pools and rows are typed by database).
macro_rules! on_test_db {
    ($app:expr, $sqlite:expr, $postgres:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $app.backend {
            Backend::Sqlite => {
                let $pool = sqlx::SqlitePool::connect(&$app.database_url)
                    .await
                    .expect("open db");
                let $sql = $sqlite;
                let out = $body;
                $pool.close().await;
                out
            }
            Backend::PostgresS3 => {
                let $pool = sqlx::PgPool::connect(&$app.database_url)
                    .await
                    .expect("open db");
                let $sql = $postgres;
                let out = $body;
                $pool.close().await;
                out
            }
        }
    };
}

impl TestApp {
    /// An in-process application (API and workers) with the default test configuration.
    pub async fn spawn() -> TestApp {
        Self::spawn_with(TestConfig::default()).await
    }

    /// An in-process application (API and workers).
    pub async fn spawn_with(cfg: TestConfig) -> TestApp {
        Self::start(cfg, Mode::InProcess).await
    }

    /// A real `ferry serve` process (API and workers), for tests that kill, signal or restart it
    /// or look at the process itself.
    pub async fn spawn_process(cfg: TestConfig) -> TestApp {
        Self::start(cfg, Mode::Process(&[])).await
    }

    /// A real `ferry serve --no-workers` process; start worker processes with
    /// [`TestApp::spawn_worker`].
    pub async fn spawn_api_only(cfg: TestConfig) -> TestApp {
        Self::start(cfg, Mode::Process(&["--no-workers"])).await
    }

    async fn start(cfg: TestConfig, mode: Mode<'_>) -> TestApp {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("ferry.toml");
        let mut model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/handlers/model.py");
        if cfg.relative_model {
            std::fs::copy(&model, dir.path().join("model.py")).expect("copy model");
            model = PathBuf::from("model.py");
        }
        let backend = backend();
        let unique = uuid::Uuid::now_v7().simple().to_string();
        let mut ferry_database_url = None;
        let (database_url, bucket, storage_toml, part_bytes) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("data/ferry.db").display()),
                None,
                String::new(),
                1 << 20,
            ),
            Backend::PostgresS3 => {
                let db_name = format!("ferry_test_{unique}");
                create_pg_database(&db_name).await;
                let bucket = format!("ferry-test-{unique}");
                let endpoint = cfg
                    .s3_endpoint
                    .clone()
                    .or_else(s3_endpoint)
                    .expect("checked by run_on");
                create_bucket(&endpoint, &bucket).await;
                ferry_database_url = cfg.pg_via.as_ref().map(|via| format!("{via}/{db_name}"));
                (
                    format!("{}/{db_name}", pg_url()),
                    Some(bucket.clone()),
                    format!(
                        "blob_store = \"s3://{bucket}/ferry\"\n\
                         [blob_options]\n\
                         aws_endpoint = \"{endpoint}\"\n\
                         aws_region = \"us-east-1\"\n\
                         aws_access_key_id = \"ferry-test\"\n\
                         aws_secret_access_key = \"ferry-test-secret\"\n"
                    ),
                    5 << 20,
                )
            }
        };
        let toml = format!(
            r#"
data_dir = "{data}"
database_url = "{ferry_database_url}"
{storage_toml}
[limits]
max_upload_bytes = {max_upload}
upload_ttl = "{upload_ttl}"
resumable_upload_ttl = "{resumable_upload_ttl}"
upload_part_bytes = {part_bytes}
max_concurrent_uploads = {max_uploads}
{progress_event_interval}
{extra_limits}

[queue]
poll_interval = "20ms"
lease_ttl = "{lease_ttl}"
reconcile_interval = "300ms"
retry_base_delay = "100ms"
retry_max_delay = "1s"
kill_grace = "1s"

[webhooks]
{webhooks}
[events]
heartbeat = "{heartbeat}"
{poll_cache_max_age}

[handlers.model]
command = ["python3", "{model}"]
timeout = "{timeout}"
max_attempts = {attempts}
concurrency = {concurrency}
{extra_toml}
"#,
            data = dir.path().join("data").display(),
            ferry_database_url = ferry_database_url.as_deref().unwrap_or(&database_url),
            max_upload = cfg.max_upload_bytes,
            max_uploads = cfg.max_concurrent_uploads,
            upload_ttl = cfg.upload_ttl,
            resumable_upload_ttl = cfg.resumable_upload_ttl,
            lease_ttl = cfg.lease_ttl,
            model = model.display(),
            timeout = cfg.model_timeout,
            attempts = cfg.model_max_attempts,
            concurrency = cfg.model_concurrency,
            webhooks = cfg.webhooks,
            progress_event_interval = cfg
                .progress_event_interval
                .map(|every| format!("progress_event_interval = \"{every}\""))
                .unwrap_or_default(),
            heartbeat = cfg.heartbeat,
            poll_cache_max_age = cfg
                .poll_cache_max_age
                .map(|age| format!("poll_cache_max_age = \"{age}\""))
                .unwrap_or_default(),
            extra_toml = cfg.extra_toml,
            extra_limits = cfg.extra_limits,
        );
        std::fs::write(&config_path, toml).expect("write config");
        let mut app = TestApp {
            backend,
            database_url,
            bucket,
            s3_endpoint: cfg.s3_endpoint.clone().or_else(s3_endpoint),
            base: String::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                // Below the server's 5 s keep-alive: a connection the server has closed is
                // never reused, even when the test's runtime was blocked (e.g. waiting for a
                // process to stop) and could not notice the close.
                .pool_idle_timeout(Duration::from_secs(4))
                .build()
                .expect("client"),
            dir,
            config_path,
            server: None,
            workers: Vec::new(),
            logs: 0,
        };
        match mode {
            Mode::InProcess => {
                let (server, base) = InProcessApp::start(&app.config_path).await;
                app.base = base;
                app.server = Some(Server::InProcess(server));
            }
            Mode::Process(extra) => app.start_server(extra),
        }
        app
    }

    fn log_file(&mut self, what: &str) -> std::fs::File {
        self.logs += 1;
        std::fs::File::create(self.dir.path().join(format!("{what}-{}.log", self.logs)))
            .expect("log file")
    }

    fn command(&mut self, args: &[&str], what: &str) -> Command {
        let mut cmd = Command::new(BIN);
        // The test's configuration file is the whole truth: no FERRY_* from the caller's shell.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERRY_")) {
            cmd.env_remove(key);
        }
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(args)
            // `TEST_PROCESS_LOG=info,ferry=debug,sqlx=debug,apalis_core=debug` shows every
            // statement and the queue's steps when chasing a failure.
            .env(
                "RUST_LOG",
                std::env::var("TEST_PROCESS_LOG").unwrap_or("info,ferry=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(self.log_file(what));
        cmd
    }

    /// Starts `ferry serve` on port 0 and waits for it to say where it listens (again, after
    /// [`TestApp::kill9_server`]).
    pub fn start_server(&mut self, extra: &[&str]) {
        assert!(
            !matches!(self.server, Some(Server::InProcess(_))),
            "an in-process app cannot be restarted as a process: use TestApp::spawn_process"
        );
        let (child, addr) = self.launch_server(extra);
        self.base = addr;
        self.server = Some(Server::Process(child));
    }

    /// Starts another API replica (`serve --no-workers`) on the same database and blobs; returns
    /// its base URL.
    pub fn spawn_replica(&mut self) -> String {
        let (child, addr) = self.launch_server(&["--no-workers"]);
        self.workers.push(child);
        addr
    }

    /// Like [`TestApp::start_server`], but run from `cwd` with `env` added; returns the file its
    /// stderr goes to.
    pub fn start_server_in(&mut self, extra: &[&str], cwd: &Path, env: &[(&str, &str)]) -> PathBuf {
        let (child, addr) = self.launch_server_with(extra, |cmd| {
            cmd.current_dir(cwd).envs(env.iter().copied());
        });
        self.base = addr;
        self.server = Some(Server::Process(child));
        self.dir.path().join(format!("serve-{}.log", self.logs))
    }

    fn launch_server(&mut self, extra: &[&str]) -> (Child, String) {
        self.launch_server_with(extra, |_| {})
    }

    fn launch_server_with(
        &mut self,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> (Child, String) {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let mut cmd = self.command(&args, "serve");
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("start ferry serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("ferry: listening on ") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let log = std::fs::read_to_string(
                    self.dir.path().join(format!("serve-{}.log", self.logs)),
                )
                .unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!(
                    "ferry serve did not start; its log ends with:\n{}",
                    tail.join("\n")
                );
            }
        };
        (child, addr)
    }

    /// A key of `tenant` with `scopes`, made with `ferry keys create` against the test's
    /// database, as an operator bootstraps a tenant.
    pub fn create_key(&self, tenant: &str, scopes: &[&str]) -> String {
        let mut cmd = Command::new(BIN);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERRY_")) {
            cmd.env_remove(key);
        }
        cmd.arg("--config")
            .arg(&self.config_path)
            .args(["keys", "create", "--tenant", tenant, "--name", "test key"]);
        for scope in scopes {
            cmd.args(["--scope", scope]);
        }
        let out = cmd.output().expect("run ferry keys create");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "ferry keys create failed: {stderr}");
        assert!(stderr.contains(&format!("for tenant {tenant}")), "{stderr}");
        let key = String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_owned();
        assert!(
            key.starts_with("fk_") && key.len() == 43,
            "not a key: {key:?}"
        );
        key
    }

    /// Waits until the server at `base`, which was open, notices that keys exist (it re-reads
    /// that at most a second later) and refuses a request without one.
    pub async fn wait_keys_required(&self, base: &str) {
        let start = Instant::now();
        loop {
            let reply = self.request_at(base, "get", "/v1/jobs", |r| r).await;
            if reply.status == 401 {
                reply.assert_problem(401, "unauthenticated");
                assert_eq!(
                    reply.header("www-authenticate"),
                    Some("Bearer realm=\"ferry\"")
                );
                return;
            }
            assert_eq!(reply.status, 200, "{}", reply.body);
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{base} still serves requests without a key 5 s after keys were made"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a separate `ferry worker` process on the same database and blobs.
    pub fn spawn_worker(&mut self) -> u32 {
        self.spawn_worker_with(&[]).0
    }

    /// A `ferry worker` with `extra` arguments; its pid, and the address it serves metrics on
    /// when `extra` asks it to (`--metrics-listen 127.0.0.1:0`), read from its first lines.
    pub fn spawn_worker_with(&mut self, extra: &[&str]) -> (u32, Option<String>) {
        let mut args = vec!["worker"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args, "worker")
            .spawn()
            .expect("start ferry worker");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut metrics = None;
        if extra.contains(&"--metrics-listen") {
            for line in lines.by_ref().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("ferry: metrics on ") {
                    metrics = Some(url.trim_end_matches("/metrics").to_owned());
                    break;
                }
            }
            assert!(
                metrics.is_some(),
                "the worker never said where its metrics are"
            );
        }
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        let pid = child.id();
        self.workers.push(child);
        (pid, metrics)
    }

    /// Takes the test's server process back, to signal it by hand.
    pub fn take_server_process(&mut self) -> Option<Child> {
        match self.server.take() {
            Some(Server::Process(child)) => Some(child),
            other => {
                self.server = other;
                None
            }
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill9_server(&mut self) {
        match self.server.take() {
            Some(Server::Process(mut child)) => {
                child.kill().expect("kill -9");
                child.wait().expect("reap");
            }
            Some(Server::InProcess(_)) => {
                panic!("an in-process app cannot be killed: use TestApp::spawn_process")
            }
            None => {}
        }
    }

    pub fn kill9_worker(&mut self, pid: u32) {
        let idx = self
            .workers
            .iter()
            .position(|c| c.id() == pid)
            .expect("known worker");
        let mut child = self.workers.remove(idx);
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }

    /// SIGTERM, then waits (up to 30 s) for a graceful exit; returns whether it exited cleanly.
    pub fn terminate_worker(&mut self, pid: u32) -> bool {
        self.terminate_worker_status(pid)
            .is_some_and(|status| status.success())
    }

    /// Sends SIGTERM to the worker and waits up to 30 s for it to exit: its exit status, or
    /// `None` if it had to be killed.
    pub fn terminate_worker_status(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let idx = self
            .workers
            .iter()
            .position(|c| c.id() == pid)
            .expect("known worker");
        let mut child = self.workers.remove(idx);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                eprintln!("worker logs:\n{}", self.logs_of("worker"));
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every log of processes named `what` (for failure messages).
    pub fn logs_of(&self, what: &str) -> String {
        let mut out = String::new();
        for n in 1..=self.logs {
            let path = self.dir.path().join(format!("{what}-{n}.log"));
            if let Ok(text) = std::fs::read_to_string(&path) {
                let lines: Vec<&str> = text.lines().collect();
                // Failure messages show the last 30 lines, or `TEST_LOG_TAIL` of them.
                let keep: usize = std::env::var("TEST_LOG_TAIL")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(30);
                let tail = &lines[lines.len().saturating_sub(keep)..];
                out.push_str(&format!("== {}\n{}\n", path.display(), tail.join("\n")));
            }
        }
        out
    }

    pub fn server_pid(&self) -> u32 {
        match &self.server {
            Some(Server::Process(child)) => child.id(),
            Some(Server::InProcess(_)) => {
                panic!("an in-process app has no pid of its own: use TestApp::spawn_process")
            }
            None => panic!("no server running"),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The absolute URL of `path` on the main server (for requests built by hand).
    #[allow(dead_code)] // no test here needs one today; tests in flight do
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Objects (and, on a local folder, any partial files) under `sub` of the blob store, or
    /// the object `sub` itself (`uploads/<id>`): a listing by prefix finds only what is below
    /// it, which would make a check that an upload's object is gone pass whether it is or not.
    pub async fn blob_files(&self, sub: &str) -> Vec<String> {
        match self.backend {
            Backend::Sqlite if self.data_dir().join("blobs").join(sub).is_file() => {
                vec![
                    self.data_dir()
                        .join("blobs")
                        .join(sub)
                        .display()
                        .to_string(),
                ]
            }
            Backend::PostgresS3
                if !sub.is_empty()
                    && self
                        .blobs()
                        .head(&object_store::path::Path::from(sub))
                        .await
                        .is_ok() =>
            {
                vec![sub.to_owned()]
            }
            Backend::Sqlite => {
                fn walk(dir: &Path, out: &mut Vec<String>) {
                    let Ok(entries) = std::fs::read_dir(dir) else {
                        return;
                    };
                    for e in entries.flatten() {
                        let p = e.path();
                        if p.is_dir() {
                            walk(&p, out);
                        } else {
                            out.push(p.display().to_string());
                        }
                    }
                }
                let mut out = Vec::new();
                walk(&self.data_dir().join("blobs").join(sub), &mut out);
                out
            }
            Backend::PostgresS3 => {
                let mut keys = self
                    .blobs()
                    .list(Some(sub).filter(|s| !s.is_empty()))
                    .await
                    .expect("list bucket");
                // Unfinished multipart uploads are leftovers too.
                keys.extend(self.pending_multipart_uploads().await);
                keys
            }
        }
    }

    /// Waits (up to 15 s: aborting a multipart upload is asynchronous) until nothing is stored
    /// under `sub`, or panics listing what is left.
    pub async fn wait_no_blobs(&self, sub: &str) {
        let start = Instant::now();
        loop {
            let left = self.blob_files(sub).await;
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "bytes left behind: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The bytes of the only object under `sub`.
    pub async fn single_blob(&self, sub: &str) -> Vec<u8> {
        match self.backend {
            Backend::Sqlite => {
                let files = self.blob_files(sub).await;
                assert_eq!(files.len(), 1, "{files:?}");
                std::fs::read(&files[0]).expect("read blob")
            }
            Backend::PostgresS3 => {
                let keys = self.blobs().list(Some(sub)).await.expect("list");
                assert_eq!(keys.len(), 1, "{keys:?}");
                let chunks: Vec<bytes::Bytes> = futures_util::TryStreamExt::try_collect(
                    self.blobs()
                        .get(&object_store::path::Path::from(keys[0].as_str()), None)
                        .await
                        .expect("read"),
                )
                .await
                .expect("read");
                chunks.concat()
            }
        }
    }

    /// The test's S3 bucket, opened as Ferry opens it (PostgreSQL + S3 configuration only).
    pub fn blobs(&self) -> ferry::blobs::Blobs {
        let endpoint = self.s3_endpoint.as_deref().expect("S3 endpoint");
        s3_blobs(endpoint, self.bucket.as_deref().expect("bucket"), "ferry")
    }

    async fn pending_multipart_uploads(&self) -> Vec<String> {
        let endpoint = self.s3_endpoint.clone().expect("S3 endpoint");
        let bucket = self.bucket.as_deref().expect("bucket");
        let xml = reqwest::get(format!("{endpoint}/{bucket}?uploads"))
            .await
            .expect("list multipart uploads")
            .text()
            .await
            .expect("body");
        xml.split("<Upload>")
            .skip(1)
            .filter_map(|upload| xml_tag(upload, "Key"))
            .map(|key| format!("(unfinished multipart upload) {key}"))
            .collect()
    }

    /// Runs one SQL count against the test's database, as an operator would inspect it.
    pub async fn count_rows(&self, sql: &str) -> i64 {
        on_test_db!(self, sql, sql, |pool, statement| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(statement.to_owned()))
                .fetch_one(&pool)
                .await
                .expect("count")
        })
    }

    /// The one text column `sql` selects, row by row (for failure messages that show rows).
    pub async fn text_rows(&self, sql: &str) -> Vec<String> {
        on_test_db!(self, sql, sql, |pool, statement| {
            sqlx::query_scalar(sqlx::AssertSqlSafe(statement.to_owned()))
                .fetch_all(&pool)
                .await
                .expect("rows")
        })
    }

    /// Runs `f` while a transaction of the test's own holds the database against Ferry's
    /// writes (SQLite: the write lock; PostgreSQL: `ferry_jobs` locked), then lets go.
    pub async fn while_database_locked<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let sqlite = "BEGIN IMMEDIATE";
        let postgres = "BEGIN; LOCK TABLE ferry_jobs IN EXCLUSIVE MODE";
        on_test_db!(self, sqlite, postgres, |pool, sql| {
            let mut conn = pool.acquire().await.expect("connection");
            sqlx::raw_sql(sql).execute(&mut *conn).await.expect("lock");
            let out = f(self);
            sqlx::raw_sql("ROLLBACK")
                .execute(&mut *conn)
                .await
                .expect("unlock");
            drop(conn);
            out
        })
    }

    /// Runs a statement against the test's database; returns the rows it touched.
    pub async fn execute_sql(&self, sqlite: &str, postgres: &str) -> u64 {
        on_test_db!(self, sqlite, postgres, |pool, sql| {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&pool)
                .await
                .expect("execute")
                .rows_affected()
        })
    }

    /// Starts a POST by hand and sends only `first` of its `content_length` body bytes, leaving
    /// the request in flight (the caller sends the rest, or drops the connection).
    pub fn partial_post(
        &self,
        path: &str,
        extra_headers: &str,
        content_length: usize,
        first: &[u8],
    ) -> std::net::TcpStream {
        use std::io::Write;
        let addr = self.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Content-Length: {content_length}\r\n\r\n"
        )
        .expect("send head");
        stream.write_all(first).expect("send body");
        stream.flush().expect("flush");
        stream
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let server = match self.server.take() {
            Some(Server::InProcess(app)) => {
                app.stop();
                None
            }
            Some(Server::Process(child)) => Some(child),
            None => None,
        };
        for mut child in server.into_iter().chain(self.workers.drain(..)) {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.backend == Backend::PostgresS3 {
            let db = self
                .database_url
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let bucket = self.s3_endpoint.clone().zip(self.bucket.clone());
            // Drop is synchronous: use a short-lived runtime on a plain thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async move {
                    if let Some((endpoint, bucket)) = bucket {
                        delete_bucket(&endpoint, &bucket).await;
                    }
                    let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_url()))
                        .await
                        .ok()?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await
                    .ok()
                })
            })
            .join();
        }
    }
}

/// Empties and deletes a test's bucket, best effort (the S3 server may be gone, e.g. after an
/// outage test). Objects are deleted with credentials; the bucket with an unsigned request, as
/// [`create_bucket`] makes it.
async fn delete_bucket(endpoint: &str, bucket: &str) {
    if !reachable(endpoint) {
        return;
    }
    let blobs = s3_blobs(endpoint, bucket, "");
    for key in blobs.list(None).await.unwrap_or_default() {
        let _ = blobs.delete(&object_store::path::Path::from(key)).await;
    }
    let _ = reqwest::Client::new()
        .delete(format!("{endpoint}/{bucket}"))
        .send()
        .await;
}

/// The test bucket `bucket` (under `prefix`) as Ferry's own blob store.
fn s3_blobs(endpoint: &str, bucket: &str, prefix: &str) -> ferry::blobs::Blobs {
    let options = [
        ("aws_endpoint", endpoint),
        ("aws_region", "us-east-1"),
        ("aws_access_key_id", "ferry-test"),
        ("aws_secret_access_key", "ferry-test-secret"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    ferry::blobs::Blobs::open(&format!("s3://{bucket}/{prefix}"), 5 << 20, &options)
        .expect("open bucket")
}

/// The text of the first `<tag>…</tag>` in `xml`.
fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(&xml[start..start + len])
}

/// How many PostgreSQL databases are called `name` (0 or 1).
pub async fn count_pg_databases(name: &str) -> i64 {
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_url()))
        .await
        .expect("connect to PostgreSQL");
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_one(&admin)
        .await
        .expect("count databases");
    admin.close().await;
    n
}

/// A fresh database for one test: a copy of [`pg_template`], which has every migration applied
/// (copying it takes a fraction of running them all again; the server's start-up still runs
/// the migrator, which finds nothing to do).
async fn create_pg_database(name: &str) {
    let template = pg_template().await;
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_url()))
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""
    )))
    .execute(&admin)
    .await
    .expect("create test database");
    admin.close().await;
}

/// A migrated database the tests' databases are copied from, shared by test runs: its name
/// carries a fingerprint of the schema's sources, so a changed migration makes a new one. It is
/// built under a temporary name and renamed once complete, so no test binary running at the
/// same time copies half a schema.
async fn pg_template() -> &'static str {
    static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    TEMPLATE.get_or_init(build_pg_template).await
}

async fn build_pg_template() -> String {
    let name = format!("ferry_test_template_{}", schema_fingerprint());
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", pg_url()))
        .await
        .expect("connect to PostgreSQL");
    let exists = |db: String| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
                .bind(db)
                .fetch_one(&admin)
                .await
                .expect("look for the template")
                > 0
        }
    };
    if !exists(name.clone()).await {
        let building = format!("ferry_test_building_{}", uuid::Uuid::now_v7().simple());
        let run = |sql: String| {
            let admin = admin.clone();
            async move { sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await }
        };
        run(format!("CREATE DATABASE \"{building}\""))
            .await
            .expect("create the template database");
        let db = ferry::storage::Db::connect(&format!("{}/{building}", pg_url()))
            .await
            .expect("connect to the template database");
        db.migrate().await.expect("migrate the template database");
        drop(db);
        // A database with sessions can be neither renamed nor copied: end the migrator's.
        run(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{building}'"
        ))
        .await
        .expect("disconnect from the template database");
        if run(format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .await
        .is_err()
        {
            // Another test binary finished one first.
            assert!(exists(name.clone()).await, "cannot set up {name}");
            let _ = run(format!("DROP DATABASE \"{building}\" WITH (FORCE)")).await;
        }
    }
    admin.close().await;
    name
}

/// What the PostgreSQL schema is made from: the source of Ferry's migrations and the checksums
/// of the queue's.
fn schema_fingerprint() -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/src");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the migrations' sources")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    for file in files {
        hasher.update(file.file_name().expect("a file name").as_encoded_bytes());
        hasher.update(std::fs::read(&file).expect("read a migration"));
    }
    for migration in apalis_postgres::PostgresStorage::migrations().iter() {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&*migration.checksum);
    }
    hex::encode(&hasher.finalize()[..8])
}

pub async fn create_bucket(endpoint: &str, name: &str) {
    let res = reqwest::Client::new()
        .put(format!("{endpoint}/{name}"))
        .send()
        .await
        .expect("create bucket");
    assert!(
        res.status().is_success(),
        "creating bucket {name}: {}",
        res.status()
    );
}

/// Whether a process exists (and is not a zombie we could still reap).
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits up to `within` for a process to be gone, or panics with `why`.
pub async fn wait_process_gone(pid: i32, within: Duration, why: &str) {
    let start = Instant::now();
    while process_alive(pid) {
        assert!(start.elapsed() < within, "{why} (pid {pid})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a pid a test handler wrote, waiting for the file to appear.
pub async fn read_pid(path: &Path, within: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            start.elapsed() < within,
            "no pid file at {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no fixtures.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

/// The RFC 9530 `Repr-Digest` of `data`: `sha-256=:BASE64:`.
pub fn repr_digest(data: &[u8]) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let b64 = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data));
    format!("sha-256=:{b64}:")
}

/// The not-found code of the object a route template names by `{id}`.
pub fn not_found_code(template: &str) -> &'static str {
    if template.starts_with("/v1/uploads/") || template.starts_with("/v1/tus/") {
        "upload_not_found"
    } else if template.starts_with("/v1/webhooks/") {
        "webhook_not_found"
    } else if template.starts_with("/v1/webhook-deliveries/") {
        "delivery_not_found"
    } else if template.starts_with("/v1/keys/") {
        "key_not_found"
    } else if template.starts_with("/v1/kinds/{kind}/tags/") {
        "tag_not_found"
    } else if template.starts_with("/v1/kinds/") {
        "kind_not_found"
    } else {
        "job_not_found"
    }
}

pub fn assert_problem(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "unexpected status; body: {body}");
    assert_eq!(
        body["code"], want_code,
        "unexpected problem code; body: {body}"
    );
    assert_eq!(body["status"], want_status);
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:ferry:problem:"))
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "problem without detail: {body}"
    );
}
