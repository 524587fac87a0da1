//! Workers: one supervised queue consumer per handler kind, the attempt runner, and the
//! reconciler loop. Workers call the service layer, never the API.

pub mod attempt;
pub mod builtin;
pub mod command;
mod flush;
pub mod handler;

use std::{collections::BTreeMap, sync::Arc};

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use handler::{Handler, HandlerError, JobContext};

use crate::{
    config::{HandlerSettings, Settings},
    domain::serve_key,
    queue::{self, ConsumerSettings, DispatchFn},
    service::{KindDefaults, Services, VersionDefaults, workers::WorkerProcess},
    workspace,
};

/// A handler with its operating settings: one version of a kind (or a kind without versions).
#[derive(Clone)]
pub struct Registered {
    pub handler: Arc<dyn Handler>,
    /// The version's own settings, the kind's filling what it leaves out.
    pub settings: HandlerSettings,
    pub kind: String,
    pub version: Option<String>,
}

/// The handlers this deployment serves, by what they serve (`kind`, or `kind@version`; see
/// [`serve_key`]).
#[derive(Clone, Default)]
pub struct Registry {
    pub handlers: BTreeMap<String, Registered>,
    /// Each configured kind's own settings (its versions' defaults, default version and
    /// starting tags).
    kinds: BTreeMap<String, HandlerSettings>,
}

impl Registry {
    /// Built-ins (unless disabled) plus the configured commands, one per version; a configured
    /// handler replaces a built-in of the same name.
    pub fn from_settings(settings: &Settings) -> Registry {
        let mut registry = Registry::default();
        if settings.builtin_handlers {
            let builtin = HandlerSettings {
                command: Vec::new(),
                concurrency: 2,
                ..HandlerSettings::default()
            };
            registry.register("digest", Arc::new(builtin::DigestHandler), builtin.clone());
            let noop = HandlerSettings {
                concurrency: 8,
                ..builtin
            };
            registry.register("noop", Arc::new(builtin::NoopHandler), noop);
        }
        for (kind, handler) in &settings.handlers {
            registry.handlers.retain(|_, r| &r.kind != kind);
            for (version, effective) in handler.runnable() {
                let key = serve_key(kind, version.as_deref());
                let command = command::CommandHandler {
                    program: effective.command.clone(),
                    env: effective.env.clone(),
                    working_dir: effective.working_dir.clone(),
                };
                registry.handlers.insert(
                    key,
                    Registered {
                        handler: Arc::new(command),
                        settings: effective,
                        kind: kind.clone(),
                        version,
                    },
                );
            }
            registry.kinds.insert(kind.clone(), handler.clone());
        }
        registry
    }

    /// Adds an in-process Rust handler for a kind without versions.
    pub fn register(&mut self, kind: &str, handler: Arc<dyn Handler>, settings: HandlerSettings) {
        self.handlers.insert(
            kind.to_owned(),
            Registered {
                handler,
                settings,
                kind: kind.to_owned(),
                version: None,
            },
        );
    }

    /// What the API knows of each kind: its defaults, and its versions' (see [`KindDefaults`]).
    pub fn kind_defaults(&self) -> BTreeMap<String, KindDefaults> {
        let mut kinds: BTreeMap<String, KindDefaults> = BTreeMap::new();
        for r in self.handlers.values() {
            let entry = kinds.entry(r.kind.clone()).or_default();
            match &r.version {
                None => {
                    entry.timeout = r.settings.timeout;
                    entry.max_attempts = r.settings.max_attempts;
                }
                Some(version) => {
                    entry.versions.insert(
                        version.clone(),
                        VersionDefaults {
                            timeout: r.settings.timeout,
                            max_attempts: r.settings.max_attempts,
                            concurrency: r.settings.concurrency,
                        },
                    );
                }
            }
        }
        for (kind, configured) in &self.kinds {
            if let Some(entry) = kinds.get_mut(kind) {
                // A kind with versions shows its own settings: its versions' defaults.
                entry.timeout = configured.timeout;
                entry.max_attempts = configured.max_attempts;
                entry.default_version = configured.default_version.clone();
                entry.tags = configured.tags.clone();
            }
        }
        kinds
    }

    /// The handler of a job of `kind` resolved to `version`, if this worker serves it.
    pub fn handler_for(&self, kind: &str, version: Option<&str>) -> Option<&Registered> {
        self.handlers.get(&serve_key(kind, version))
    }
}

/// Starts every consumer and the reconciler; they stop when `shutdown` fires (in-flight
/// attempts are stopped and settled as retryable failures, so another worker picks them up).
///
/// First it claims this process's folder of work folders, and sweeps what earlier worker
/// processes on this machine left behind — their work folders, and their attempts' processes
/// still running (e.g. a model started through `sh -c` after `kill -9` of its worker) — so
/// nothing of theirs runs beside the retries this worker may take.
pub async fn start(
    services: Services,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinSet<()>> {
    let mut set = JoinSet::new();
    let token = ulid::Ulid::new();
    let owner = format!("{}-{}-{token}", hostname(), std::process::id());
    let root = services.settings.work_dir();
    let folders = Arc::new(
        workspace::Owner::claim(&root, &token.to_string())
            .with_context(|| format!("cannot create work folders in {}", root.display()))?,
    );
    sweep_work_folders(&services).await;
    let process = WorkerProcess {
        id: owner.clone(),
        hostname: hostname(),
        pid: i64::from(std::process::id()),
        serves: registry.handlers.keys().cloned().collect(),
    };
    services
        .register_worker(&process)
        .await
        .context("registering this worker process")?;
    set.spawn(keep_alive(services.clone(), process, shutdown.clone()));
    // Every attempt runs in a task of its own, tracked here rather than left to apalis: on
    // shutdown the process waits for them (bounded by the caller's grace) so that each one
    // stops its handler and hands its job back. Seen otherwise: apalis' worker returned at
    // once, the process exited, and the attempt vanished mid-flight with its job `running`
    // until the lease expired (and an attempt used up).
    let attempts = TaskTracker::new();
    {
        let (attempts, shutdown) = (attempts.clone(), shutdown.clone());
        set.spawn(async move {
            shutdown.cancelled().await;
            attempts.close();
            attempts.wait().await;
        });
    }
    for (key, registered) in &registry.handlers {
        let on_dispatch: DispatchFn = {
            let services = services.clone();
            let registry = registry.clone();
            let owner = owner.clone();
            let folders = folders.clone();
            let shutdown = shutdown.clone();
            let attempts = attempts.clone();
            DispatchFn(Arc::new(move |dispatch| {
                let attempt = attempts.spawn(attempt::run_dispatch(
                    services.clone(),
                    registry.clone(),
                    owner.clone(),
                    folders.clone(),
                    shutdown.clone(),
                    dispatch,
                ));
                let shutdown = shutdown.clone();
                Box::pin(async move {
                    // On shutdown apalis stops polling its fetch stream but keeps it alive until
                    // every delivery returns; on SQLite a fetch cut short there holds the write
                    // lock, and the attempt could not hand its job back (seen: every write
                    // waited for the lock until the grace ran out). So a delivery returns as
                    // soon as shutdown starts, letting apalis drop that fetch; the attempt runs
                    // on in `attempts`, which shutdown waits for.
                    tokio::select! {
                        joined = attempt => if let Err(e) = joined {
                            tracing::error!(error = %e, "an attempt's task failed");
                        },
                        _ = shutdown.cancelled() => {}
                    }
                })
            }))
        };
        let consumer = ConsumerSettings {
            serves: key.clone(),
            concurrency: registered.settings.concurrency,
            poll_interval: services.settings.queue.poll_interval,
        };
        set.spawn(queue::run_consumer(
            services.db.clone(),
            consumer,
            on_dispatch,
            shutdown.clone(),
        ));
    }
    set.spawn(reconciler(services, shutdown));
    Ok(set)
}

/// Renews this worker's registration until shutdown, then removes it (see
/// `service::workers`).
async fn keep_alive(services: Services, process: WorkerProcess, shutdown: CancellationToken) {
    let every = services.settings.queue.lease_ttl / 3;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => break,
        }
        if let Err(err) = services.worker_alive(&process).await {
            tracing::warn!(error = %err, "renewing this worker's registration failed");
        }
    }
    if let Err(err) = services.unregister_worker(&process).await {
        tracing::warn!(error = %err, "removing this worker's registration failed");
    }
}

/// Removes work folders (and kills processes) of attempts that no longer run on this machine.
async fn sweep_work_folders(services: &Services) {
    match services.sweep_work_folders().await {
        Ok(0) => {}
        Ok(removed) => tracing::info!(removed, "removed work folders of attempts that ended"),
        Err(err) => tracing::warn!(error = %err, "sweeping work folders failed"),
    }
}

/// Staging files idle this long are abandoned (their writer was killed).
const STAGING_IDLE: std::time::Duration = std::time::Duration::from_secs(3600);

async fn reconciler(services: Services, shutdown: CancellationToken) {
    let every = services.settings.queue.reconcile_interval;
    let mut last_sweep: Option<std::time::Instant> = None;
    loop {
        if last_sweep.is_none_or(|t| t.elapsed() >= STAGING_IDLE) {
            let removed = services.blobs.sweep_abandoned_staging(STAGING_IDLE).await;
            if removed > 0 {
                tracing::info!(removed, "deleted abandoned partial uploads");
            }
            last_sweep = Some(std::time::Instant::now());
        }
        match services.reconcile_once().await {
            Ok(repairs) if repairs != Default::default() => {
                tracing::info!(?repairs, "reconciler repaired state")
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "reconciler pass failed"),
        }
        sweep_work_folders(&services).await;
        // A retry due before the next regular pass is dispatched on time.
        let pause = match services.next_retry_due_ms().await {
            Ok(Some(due)) => {
                let until_due = (due - crate::time::now_ms()).max(50) as u64;
                every.min(std::time::Duration::from_millis(until_due))
            }
            _ => every,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".to_owned())
}
