//! Start-up and shutdown: loads settings, opens the database and blob store, runs migrations,
//! and starts the HTTP server and/or the workers for `ferry serve`, `ferry worker` and
//! `ferry migrate`.

use std::{net::TcpListener, sync::Arc};

use actix_web::{App, HttpServer, dev::ServerHandle, middleware, web};
use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long requests in flight get to finish when the server stops.
const HTTP_SHUTDOWN_GRACE_SECS: u64 = 10;
/// How long workers get to stop, beyond the handlers' `kill_grace`, before they are abandoned.
const WORKER_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

use crate::{
    api,
    cli::Command,
    config::Settings,
    service::Services,
    storage::Db,
    webhooks::deliverer::Deliverer,
    worker::{self, Registry},
};

/// Runs `command` with `settings` (loaded by the caller, which sets up logging from them first).
pub async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    let registry = Registry::from_settings(&settings);
    match command {
        Command::Migrate { .. } => {
            let db = Db::connect(&settings.database_url()).await?;
            db.migrate().await?;
            println!(
                "ferry: database {} is up to date",
                crate::storage::redact(&settings.database_url())
            );
            Ok(())
        }
        Command::Serve { .. } => {
            let app = Application::build(settings, registry, true).await?;
            app.run_until_stopped().await
        }
        Command::Worker { .. } => {
            let app = Application::build(settings, registry, false).await?;
            app.run_until_stopped().await
        }
        Command::Keys { action, .. } => crate::keys_cli::run(action, &settings).await,
        // `main` hands client commands to `client_cli` before any server setting is read.
        Command::Client(_) => anyhow::bail!("client commands do not run a server"),
    }
}

/// A running Ferry process: the HTTP server (for `serve`) and the workers (unless disabled).
pub struct Application {
    port: Option<u16>,
    server: Option<(actix_web::dev::Server, ServerHandle)>,
    workers: JoinSet<()>,
    shutdown: CancellationToken,
    /// Handlers' SIGTERM-to-SIGKILL grace: stopping workers may take this long.
    kill_grace: std::time::Duration,
}

impl Application {
    pub async fn build(settings: Settings, registry: Registry, http: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!("cannot create data folder {}", settings.data_dir.display())
        })?;
        crate::workspace::ensure_root(&settings.work_dir()).with_context(|| {
            format!(
                "cannot create work folder {}",
                settings.work_dir().display()
            )
        })?;
        let registry = Arc::new(registry);
        let services = Services::open(settings.clone(), registry.kind_defaults()).await?;
        // Where the configuration starts tags that do not exist yet (see `service::kinds`).
        services
            .seed_tags()
            .await
            .map_err(|e| anyhow::anyhow!("writing the configured tags: {}", e.detail))?;
        let kinds: Vec<&str> = registry.handlers.keys().map(String::as_str).collect();
        let shutdown = CancellationToken::new();

        let run_workers = !http || settings.workers;
        let mut workers = if run_workers {
            worker::start(services.clone(), registry.clone(), shutdown.clone()).await?
        } else {
            JoinSet::new()
        };
        if settings.webhooks.deliver {
            let deliverer = Arc::new(Deliverer::new(services.db.clone(), &settings)?);
            workers.spawn(deliverer.run(shutdown.clone()));
        }

        if http {
            check_access(&services).await?;
        }
        let (port, server) = if http {
            let listener = TcpListener::bind(&settings.listen)
                .with_context(|| format!("cannot listen on {}", settings.listen))?;
            let addr = listener.local_addr()?;
            let api_services = services.clone();
            let stopping = shutdown.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(middleware::from_fn(api::auth::authorize))
                    .wrap(middleware::from_fn(api::audit::record))
                    .wrap(middleware::from_fn(api::problem::negotiate_problem_type))
                    // Outside the key check: a browser's preflight carries no key.
                    .wrap(api::cors::middleware(&api_services.settings.cors))
                    .wrap(middleware::Logger::new("%r %s %b %Dms").log_target("ferry::http"))
                    // Outermost: the span covers everything the request does.
                    .wrap(middleware::from_fn(api::trace::request_span))
                    .configure(api::configure(api_services.clone(), stopping.clone()))
                    .default_service(web::to(api::problem::not_found))
            })
            .disable_signals()
            .shutdown_timeout(HTTP_SHUTDOWN_GRACE_SECS)
            .listen(listener)?
            .run();
            let handle = server.handle();
            println!("ferry: listening on http://{addr}");
            (Some(addr.port()), Some((server, handle)))
        } else if let Some(address) = &settings.metrics_listen {
            // A worker machine's own counts (its attempts, results, retries) are only here.
            let listener = TcpListener::bind(address)
                .with_context(|| format!("cannot listen on {address} for metrics"))?;
            let addr = listener.local_addr()?;
            let metrics_services = services.clone();
            let server = HttpServer::new(move || {
                App::new()
                    .wrap(middleware::from_fn(api::auth::authorize))
                    .wrap(middleware::from_fn(api::problem::negotiate_problem_type))
                    .configure(api::configure_metrics(metrics_services.clone()))
                    .default_service(web::to(api::problem::not_found))
            })
            .disable_signals()
            .shutdown_timeout(HTTP_SHUTDOWN_GRACE_SECS)
            .workers(1)
            .listen(listener)?
            .run();
            let handle = server.handle();
            println!("ferry: metrics on http://{addr}/metrics");
            (Some(addr.port()), Some((server, handle)))
        } else {
            (None, None)
        };
        if run_workers {
            println!("ferry: workers running handlers: {}", kinds.join(", "));
        } else {
            println!(
                "ferry: serving kinds {} (workers run elsewhere)",
                kinds.join(", ")
            );
        }
        tracing::info!(
            database = %crate::storage::redact(&settings.database_url()),
            blob_store = %settings.blob_store(),
            "ferry started"
        );
        Ok(Self {
            port,
            server,
            workers,
            shutdown,
            kill_grace: settings.queue.kill_grace,
        })
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// A handle that stops this application from outside (the signal handler of
    /// [`Application::run_until_stopped`], or whoever embeds it, e.g. the integration tests).
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            shutdown: self.shutdown.clone(),
            server: self.server.as_ref().map(|(_, h)| h.clone()),
        }
    }

    /// Runs until SIGINT/SIGTERM, then stops taking requests and jobs; running attempts are
    /// stopped and recorded as retryable so another worker takes them over.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let stop = self.stop_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            stop.stop(true).await;
        });
        self.run().await
    }

    /// Runs until stopped through a [`StopHandle`]; returns once the server and every worker
    /// have finished, or an error if workers had to be abandoned after the grace period.
    pub async fn run(mut self) -> anyhow::Result<()> {
        if let Some((server, _)) = self.server.take() {
            server.await?;
        } else {
            self.shutdown.cancelled().await;
        }
        self.shutdown.cancel();
        // Bounded: a stop must not hang on a stuck task. An attempt abandoned here keeps its
        // lease until it expires; then the reconciler settles it and the job runs again.
        let grace = self.kill_grace + WORKER_SHUTDOWN_GRACE;
        let drained = async { while self.workers.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drained).await.is_err() {
            self.workers.abort_all();
            // Not a clean stop: the process exits non-zero so a supervisor or deploy notices.
            anyhow::bail!(
                "workers did not stop within {}; abandoned them (their attempts are retried \
                 once their leases expire)",
                humantime::format_duration(grace)
            );
        }
        Ok(())
    }
}

/// Stops an [`Application`]: no new jobs are taken, running attempts are stopped (and recorded
/// as retryable), and the HTTP server stops.
#[derive(Clone)]
pub struct StopHandle {
    shutdown: CancellationToken,
    server: Option<ServerHandle>,
}

impl StopHandle {
    /// `graceful` lets requests in flight finish (up to actix's shutdown timeout); otherwise
    /// open connections are dropped at once.
    pub async fn stop(&self, graceful: bool) {
        self.shutdown.cancel();
        if let Some(server) = &self.server {
            server.stop(graceful).await;
        }
    }
}

/// Refuses to serve without keys on an address others can reach, unless told to; says at start-up
/// when the server is open.
async fn check_access(services: &Services) -> anyhow::Result<()> {
    let keys = services
        .keys
        .count_active()
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the API keys: {}", e.detail))?;
    if keys > 0 {
        println!("ferry: API keys required ({keys} active)");
        return Ok(());
    }
    let listen = &services.settings.listen;
    if !services.keys.open_allowed() {
        anyhow::bail!(
            "no API key exists, and {listen} is not a loopback address: anyone who can reach it \
             could read every job. Create a key first (`ferry keys create --name NAME --scope \
             admin …`), listen on 127.0.0.1, or pass --insecure-no-auth to serve without keys"
        );
    }
    // Open is allowed (checked above): by the flag, or because the address is loopback.
    if services.settings.auth.insecure_no_auth {
        println!(
            "ferry: WARNING: no API key exists and --insecure-no-auth is set: serving {listen} \
             without authentication"
        );
    } else {
        println!(
            "ferry: no API key exists: serving without authentication, on loopback only \
             (create one with `ferry keys create`; from then on every request needs a key)"
        );
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
