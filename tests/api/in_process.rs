//! A Ferry application running inside the test binary: the test's `ferry.toml` goes through
//! `Settings::load` exactly as `ferry serve --listen 127.0.0.1:0` reads it, and
//! `Application::build` runs on a runtime and thread of its own. Its own thread, not the test's
//! runtime: the test may block its thread (raw sockets, `std::fs` polling) without stalling the
//! server, and the server's I/O never depends on the test polling.
//!
//! Stopping it ([`InProcessApp::stop`], or dropping it) stops the workers (running handler
//! commands are signalled and reaped), drops open connections, and waits for the thread, so no
//! task, connection or handler process outlives the test.

use std::{
    ffi::OsStr,
    path::Path,
    sync::{Once, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use clap::Parser;
use ferry::{app::Application, cli::Cli, config::Settings, worker::Registry};
use serde_json::json;
use tokio::sync::oneshot;

use crate::helpers::*;

/// How long a stopping application may take: workers give running commands `kill_grace`
/// (1 s in the tests) before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(30);

pub struct InProcessApp {
    stop: Option<oneshot::Sender<()>>,
    stopped: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl InProcessApp {
    /// Builds the application from `config` and starts it; returns it and its base URL.
    pub async fn start(config: &Path) -> (InProcessApp, String) {
        let settings = load_settings(config);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<u16, String>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (stopped_tx, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ferry-in-process".into())
            .spawn(move || {
                // Like the `ferry` binary: a multi-threaded runtime (actix adds its own threads).
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(serve(settings, ready_tx, stop_rx));
                // Whatever the application spawned and did not wait for ends with the runtime.
                runtime.shutdown_timeout(Duration::from_secs(5));
                let _ = stopped_tx.send(());
            })
            .expect("start the application thread");
        let mut app = InProcessApp {
            stop: Some(stop_tx),
            stopped,
            thread: Some(thread),
        };
        match ready_rx.await {
            Ok(Ok(port)) => (app, format!("http://127.0.0.1:{port}")),
            Ok(Err(e)) => panic!("the in-process application did not start: {e}"),
            Err(_) => {
                app.join();
                panic!("the in-process application thread died while starting")
            }
        }
    }

    /// Stops the application and waits for its thread.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // Dropping the sender is the stop signal.
        self.stop.take();
        match self.stopped.recv_timeout(STOP_WITHIN) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => self.join(),
            // Not while unwinding already: a panic in a drop would abort the whole binary.
            Err(mpsc::RecvTimeoutError::Timeout) if !std::thread::panicking() => {
                panic!("the in-process application did not stop within {STOP_WITHIN:?}")
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("the in-process application did not stop within {STOP_WITHIN:?}")
            }
        }
    }

    fn join(&mut self) {
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for InProcessApp {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_and_join();
        }
    }
}

async fn serve(
    settings: Settings,
    ready: oneshot::Sender<Result<u16, String>>,
    stop: oneshot::Receiver<()>,
) {
    let registry = Registry::from_settings(&settings);
    let app = match Application::build(settings, registry, true).await {
        Ok(app) => app,
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return;
        }
    };
    let handle = app.stop_handle();
    tokio::spawn(async move {
        // A message or a dropped sender: either way, stop. Not gracefully: the test is over,
        // and a client's idle keep-alive connection must not hold the shutdown up.
        let _ = stop.await;
        handle.stop(false).await;
    });
    let _ = ready.send(Ok(app.port().expect("the application serves HTTP")));
    if let Err(e) = app.run().await {
        eprintln!("the in-process application stopped with an error: {e:#}");
    }
}

/// The settings `ferry --config <config> serve --listen 127.0.0.1:0` would run with.
fn load_settings(config: &Path) -> Settings {
    forget_ferry_environment();
    let cli = Cli::parse_from([
        OsStr::new("ferry"),
        OsStr::new("--config"),
        config.as_os_str(),
        OsStr::new("serve"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
    ]);
    Settings::load(&cli).expect("the test configuration loads")
}

/// The test's configuration file is the whole truth: `FERRY_*` variables from the caller's
/// shell would override it inside `Settings::load` (worker processes get them removed from
/// their environment instead).
fn forget_ferry_environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FERRY_") {
                // SAFETY: only when such a variable exists, once per test binary. Nothing in
                // the tests reads the environment besides std (whose own access is locked) and
                // `Settings::load`, which runs after this.
                unsafe { std::env::remove_var(&key) };
            }
        }
    });
}

/// The harness keeps its promise: once a test's app is dropped, its handler processes are gone,
/// nothing listens on its port, and its database and files are deleted.
async fn a_dropped_app_leaves_nothing_running_or_stored() {
    let app = TestApp::spawn().await;
    let pid_file = app.dir.path().join("model.pid");
    let job = app
        .submit(
            "model",
            bytes(10, 90),
            json!({"mode": "sleep", "pid_file": pid_file}),
        )
        .await;
    let pid = read_pid(&pid_file, Duration::from_secs(30)).await;
    app.wait_status(
        job["id"].as_str().unwrap(),
        "running",
        Duration::from_secs(30),
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let dir = app.dir.path().to_owned();
    let database = app.database_url.rsplit('/').next().unwrap().to_owned();
    let bucket = app.s3_endpoint.clone().zip(app.bucket.clone());
    let backend = app.backend;

    drop(app);
    assert!(
        !process_alive(pid),
        "the handler process {pid} outlived its app"
    );
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "something still listens on {addr}"
    );
    assert!(!dir.exists(), "{} is left behind", dir.display());
    if backend == Backend::PostgresS3 {
        assert_eq!(
            count_pg_databases(&database).await,
            0,
            "{database} is left behind"
        );
        let (endpoint, bucket) = bucket.expect("a bucket");
        let res = reqwest::get(format!("{endpoint}/{bucket}")).await.unwrap();
        assert_eq!(res.status(), 404, "bucket {bucket} is left behind");
    }
}

crate::matrix!(a_dropped_app_leaves_nothing_running_or_stored);
