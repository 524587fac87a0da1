//! Settings: defaults, then an optional TOML file, then `FERRY_*` environment variables (nested
//! keys with `__`, e.g. `FERRY_LIMITS__MAX_UPLOAD_BYTES`), then command-line flags — four
//! figment providers merged in that order. Paths are normalised once, after the merge, whichever
//! source they came from.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::{
    cli::{Cli, Command},
    telemetry::LogFormat,
};

/// `FERRY_*` variables that are not server settings: `FERRY_CONFIG` (the `--config` flag) and
/// the client commands' `FERRY_SERVER`, `FERRY_API_KEY` and `FERRY_CLIENT_CONFIG`.
const CLIENT_ENV: &[&str] = &["CONFIG", "SERVER", "API_KEY", "CLIENT_CONFIG"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the API listens on.
    pub listen: String,
    /// Where a `ferry worker` serves `GET /metrics` (and `/healthz`) for Prometheus; none
    /// unless set. `ferry serve` serves them on `listen`.
    pub metrics_listen: Option<String>,
    /// Folder for the SQLite file, local blobs and handler work folders.
    pub data_dir: PathBuf,
    /// `sqlite://…`; default `<data_dir>/ferry.db`.
    pub database_url: Option<String>,
    /// A local path, `file://` URL, or object storage URL (`s3://bucket/prefix`, `gs://…`,
    /// `az://…`); default `<data_dir>/blobs`.
    pub blob_store: Option<String>,
    /// object_store settings for `blob_store` URLs (e.g. `aws_endpoint`, `aws_region`,
    /// `aws_access_key_id`); they override the `AWS_*`/`GOOGLE_*`/`AZURE_*` environment.
    pub blob_options: BTreeMap<String, String>,
    /// Where handlers get their per-attempt input and output folders; default `<data_dir>/work`.
    pub work_dir: Option<PathBuf>,
    /// Run workers inside `serve`.
    pub workers: bool,
    /// Serve the built-in handlers (`digest`, `noop`).
    pub builtin_handlers: bool,
    /// Log lines as `text` or `json`.
    pub log_format: LogFormat,
    pub limits: Limits,
    pub queue: QueueSettings,
    pub webhooks: WebhookSettings,
    pub events: EventSettings,
    /// OpenTelemetry traces (see [`crate::telemetry`]).
    pub traces: TraceSettings,
    pub auth: AuthSettings,
    pub cors: CorsSettings,
    /// Every tenant's limits, unless `tenants.<name>` says otherwise.
    pub tenant_defaults: TenantLimits,
    /// Limits of one tenant, each one given replacing `tenant_defaults`'.
    pub tenants: BTreeMap<String, TenantOverrides>,
    pub handlers: BTreeMap<String, HandlerSettings>,
}

/// What one tenant may use, and how long its data is kept. Every API replica and worker must be
/// given the same (like `handlers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantLimits {
    /// Jobs the tenant may have queued (not yet running) at once; more are refused with `429
    /// queue_full`. 0: no limit.
    pub max_queued_jobs: u64,
    /// Jobs of the tenant that run at once, across all workers; the others wait their turn
    /// (the job says so: `waiting_for`). 0: no limit beyond the workers' concurrency.
    pub max_running_jobs: u64,
    /// Requests per second one API key may make to one API process (a token bucket of
    /// `request_burst` tokens); more are refused with `429 rate_limited`. 0: no limit.
    pub requests_per_second: u32,
    /// How many requests a key may make at once after being idle (default: one second's worth).
    pub request_burst: Option<u32>,
    /// Bytes the tenant's unfinished uploads may have sent to one API process at once; an
    /// upload that would go beyond is refused (or cut off) with `429 upload_quota`. 0: no
    /// limit.
    pub max_upload_bytes_in_flight: u64,
    /// Bytes the tenant may upload per UTC day (counted when an upload is stored); beyond,
    /// uploads are refused with `429 upload_quota` until midnight UTC. 0: no limit.
    pub max_upload_bytes_per_day: u64,
    /// Bytes the tenant may keep stored (uploads and results); beyond, uploads are refused with
    /// `507 storage_quota` and results fail their job (`storage_quota`). 0: no limit.
    pub max_stored_bytes: u64,
    /// How long a finished job is kept, with its results, logs and inputs; then the reconciler
    /// deletes it, bytes first. `"never"` (the default): until deleted.
    pub job_retention: Retention,
    /// How long a finished job's inputs' bytes are kept (`"0s"`: deleted as soon as it
    /// finishes); the job still lists them, size and digest. `"never"`: as long as the job.
    pub input_retention: Retention,
}

/// `tenants.<name>`: the limits given replace the defaults'.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantOverrides {
    pub max_queued_jobs: Option<u64>,
    pub max_running_jobs: Option<u64>,
    pub requests_per_second: Option<u32>,
    pub request_burst: Option<u32>,
    pub max_upload_bytes_in_flight: Option<u64>,
    pub max_upload_bytes_per_day: Option<u64>,
    pub max_stored_bytes: Option<u64>,
    pub job_retention: Option<Retention>,
    pub input_retention: Option<Retention>,
}

/// How long something is kept: a duration (`"30days"`, `"0s"`) or `"never"` deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Retention(pub Option<Duration>);

impl Retention {
    /// In milliseconds, as a job row keeps it (None: never deleted).
    pub fn as_millis(self) -> Option<i64> {
        self.0.map(|d| d.as_millis().min(i64::MAX as u128) as i64)
    }
}

impl TryFrom<String> for Retention {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        if text.trim() == "never" {
            return Ok(Self(None));
        }
        humantime::parse_duration(&text)
            .map(|d| Self(Some(d)))
            .map_err(|e| {
                format!("{text:?} is neither \"never\" nor a duration like \"30days\": {e}")
            })
    }
}

impl From<Retention> for String {
    fn from(r: Retention) -> String {
        match r.0 {
            None => "never".into(),
            Some(d) => humantime::format_duration(d).to_string(),
        }
    }
}

impl Default for TenantLimits {
    fn default() -> Self {
        Self {
            max_queued_jobs: 10_000,
            max_running_jobs: 0,
            requests_per_second: 0,
            request_burst: None,
            max_upload_bytes_in_flight: 0,
            max_upload_bytes_per_day: 0,
            max_stored_bytes: 0,
            job_retention: Retention(None),
            input_retention: Retention(None),
        }
    }
}

impl Settings {
    /// The limits of `tenant`: its own where given, else the defaults.
    pub fn tenant_limits(&self, tenant: &str) -> TenantLimits {
        let d = &self.tenant_defaults;
        match self.tenants.get(tenant) {
            None => d.clone(),
            Some(own) => TenantLimits {
                max_queued_jobs: own.max_queued_jobs.unwrap_or(d.max_queued_jobs),
                max_running_jobs: own.max_running_jobs.unwrap_or(d.max_running_jobs),
                requests_per_second: own.requests_per_second.unwrap_or(d.requests_per_second),
                request_burst: own.request_burst.or(d.request_burst),
                max_upload_bytes_in_flight: own
                    .max_upload_bytes_in_flight
                    .unwrap_or(d.max_upload_bytes_in_flight),
                max_upload_bytes_per_day: own
                    .max_upload_bytes_per_day
                    .unwrap_or(d.max_upload_bytes_per_day),
                max_stored_bytes: own.max_stored_bytes.unwrap_or(d.max_stored_bytes),
                job_retention: own.job_retention.unwrap_or(d.job_retention),
                input_retention: own.input_retention.unwrap_or(d.input_retention),
            },
        }
    }

    /// Whether any tenant has a `max_running_jobs`: only then do claims count running jobs.
    pub fn limits_running_jobs(&self) -> bool {
        self.tenant_defaults.max_running_jobs > 0
            || self
                .tenants
                .values()
                .any(|t| t.max_running_jobs.unwrap_or(0) > 0)
    }
}

/// Who may use the API. Keys live in the database (`ferry keys`, `/v1/keys`); while none
/// exists, a server on a loopback address serves every request as the `default` tenant.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Serve without keys on a non-loopback address while none exists (anyone who can reach
    /// the server can read every job). Also `ferry serve --insecure-no-auth`.
    pub insecure_no_auth: bool,
    /// `/readyz` asks for a key (any valid key, whatever its scopes) when keys exist. By
    /// default it is open, like `/healthz`, for load balancers and orchestrators.
    pub readyz_requires_key: bool,
}

/// Cross-origin requests from browsers (`[cors]`): off unless origins are listed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins (`https://app.example.org`) whose pages may call the API, e.g. an Uppy or
    /// tus-js-client upload page served elsewhere; `["*"]` for any. Empty: no CORS headers, so
    /// browsers keep other origins' pages out.
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// How long an upload not attached to any job is kept.
    #[serde(with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// How long a resumable (tus) upload that receives no bytes is kept before it and its bytes
    /// are deleted; every request that adds bytes moves this on.
    #[serde(with = "humantime_serde")]
    pub resumable_upload_ttl: Duration,
    /// Size of the parts an upload is written in; bounds memory per upload (about 3 parts).
    pub upload_part_bytes: usize,
    /// Largest accepted JSON body.
    pub max_json_bytes: usize,
    /// Uploads one job may take as inputs, the items of list inputs counted one by one.
    pub max_inputs_per_job: usize,
    /// The sum of a job's inputs' sizes, in bytes.
    pub max_job_input_bytes: u64,
    /// Uploads received at once by one process; more are refused with 503 until one finishes.
    /// With `upload_part_bytes`, this bounds upload memory: at most
    /// `max_concurrent_uploads × 2 × upload_part_bytes`, whatever the sizes and the number of
    /// clients.
    pub max_concurrent_uploads: usize,
    /// Longest handler log line kept, in bytes (stdout and stderr alike); longer lines are cut
    /// and end with `…`.
    pub max_log_line_bytes: usize,
    /// A job's stored log, in bytes, each line counting [`Limits::LOG_LINE_OVERHEAD_BYTES`] more
    /// than its length: the oldest lines go first, while the job runs. `/logs` answers within
    /// the same budget.
    pub max_log_bytes_per_job: u64,
    /// At most one progress event per this interval (plus one per change of stage, at most one
    /// a second); the job itself always shows the latest progress.
    #[serde(with = "humantime_serde")]
    pub progress_event_interval: Duration,
    /// Largest `params` of a job, as JSON, in bytes. Command handlers get them in an environment
    /// variable, which Linux limits to 128 KiB.
    pub max_params_bytes: usize,
    /// Uploads one client address may have in progress at once, so that no single client can
    /// take every slot. Behind a reverse proxy every client has the proxy's address.
    pub max_uploads_per_client: usize,
    /// A request body the client stops sending, or a download it stops reading, for this long
    /// is cut off (`408 body_timeout` for a body), freeing what it held.
    #[serde(with = "humantime_serde")]
    pub transfer_idle_timeout: Duration,
    /// Bytes per second a body or download must move on average over each
    /// `transfer_idle_timeout` of waiting for the client; slower ones are cut off. 0: no minimum.
    pub transfer_min_rate: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// How often idle workers look for new jobs.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A running job's lease: a worker that has not renewed it by then is presumed dead.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the reconciler looks for expired leases, lost dispatches and expired uploads
    /// (it also wakes up when a retry's backoff ends).
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// First retry delay; doubled on each further attempt, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// Cap on the retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Time a canceled or timed-out command gets between SIGTERM and SIGKILL.
    #[serde(with = "humantime_serde")]
    pub kill_grace: Duration,
    /// How often the reconciler lists the blob store for objects no row points to (results an
    /// attempt stored before its worker died, uploads whose process died before recording them).
    #[serde(with = "humantime_serde")]
    pub orphan_sweep_interval: Duration,
}

/// OpenTelemetry traces: off unless an OTLP endpoint is given, here or in the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceSettings {
    /// Where spans go, over OTLP/HTTP (protobuf): a collector's base URL such as
    /// `http://otel-collector:4318` (`/v1/traces` is added).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of every span.
    pub service_name: String,
    /// How often finished spans are sent (the OpenTelemetry batch processor's delay).
    #[serde(with = "humantime_serde")]
    pub export_interval: Duration,
}

impl Default for TraceSettings {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "ferry".into(),
            export_interval: Duration::from_secs(5),
        }
    }
}

/// Server-sent event streams (`GET /v1/jobs/{id}/events`, `GET /v1/events`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventSettings {
    /// A stream that has sent nothing for this long sends a comment line, so that proxies and
    /// load balancers do not close it as idle.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// PostgreSQL: how long a job row read for a status poll may answer later polls from this
    /// process's memory. Every change to a job drops its row at once, in every process (see
    /// `storage::row_cache`); this bounds what a listener that died without a word could miss.
    /// `0s`: every poll reads the database.
    #[serde(with = "humantime_serde")]
    pub poll_cache_max_age: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Whether this process sends webhook deliveries (any number of processes may: each
    /// delivery is sent by one at a time, under a lease).
    pub deliver: bool,
    /// A receiver that has not answered within this is given up on for this attempt.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Delays before each attempt of a delivery, each counted from the attempt before (the first
    /// from the event); after the last, the delivery is recorded as failed. Default: Svix's schedule (at once, 5 s, 5 min, 30 min, 2 h, 5 h,
    /// 10 h, 10 h). Each delay gets ±10 % jitter; a longer `Retry-After` is honoured.
    pub retry_schedule: Vec<humantime_serde::Serde<Duration>>,
    /// How long a rotated secret keeps signing next to the new one.
    #[serde(with = "humantime_serde")]
    pub secret_rotation_overlap: Duration,
    /// Deliveries sent at once by this process.
    pub concurrency: usize,
    /// How often the deliverer looks for due deliveries without being woken by an event.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Allow receivers on loopback addresses (127.0.0.0/8, ::1): off, since a webhook URL must
    /// not reach the server's own machine; on for tests and single-machine setups.
    pub allow_loopback: bool,
    /// Allow receivers on private, link-local and shared (CGNAT) networks. Cloud metadata
    /// addresses stay refused even then.
    pub allow_private_networks: bool,
    /// The API's public base URL (`https://ferry.example.org`), to make result URLs in payloads
    /// absolute; without it they are paths.
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandlerSettings {
    /// Program and arguments of an external command handler.
    pub command: Vec<String>,
    /// Default run time allowed for one attempt (a job may ask for less).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Default number of attempts (a job may ask for fewer).
    pub max_attempts: u32,
    /// Jobs of this kind run at once per worker process.
    pub concurrency: usize,
    /// Extra environment variables for the command.
    pub env: BTreeMap<String, String>,
    /// Directory the command runs in, so relative paths in `command` work; default: the
    /// directory of the configuration file (or the current directory without one).
    pub working_dir: Option<PathBuf>,
    /// Versions of the model (`[handlers.segment.versions.v3]`), each run by its own command
    /// (or the kind's, with its own `env`); the settings above are their defaults. A kind
    /// without versions is run by `command` itself.
    pub versions: BTreeMap<String, VersionSettings>,
    /// Tags, each naming a version (`production = "v3"`). These are where tags start: once a
    /// tag exists in the database, it is moved with `PUT /v1/kinds/{kind}/tags/{tag}` (or
    /// `ferry tag`), and this setting no longer moves it.
    pub tags: BTreeMap<String, String>,
    /// The version a job for the bare kind runs when the kind has no `production` tag.
    pub default_version: Option<String>,
}

/// One version of a kind; what it leaves out, it takes from the kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VersionSettings {
    pub command: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub concurrency: Option<usize>,
    /// Added to (and replacing the same names of) the kind's `env`.
    pub env: BTreeMap<String, String>,
    pub working_dir: Option<PathBuf>,
}

impl HandlerSettings {
    /// The settings of `version` (the kind's own without one), the kind's filling what the
    /// version leaves out. `None` for a version the kind does not declare.
    pub fn for_version(&self, version: Option<&str>) -> Option<HandlerSettings> {
        let Some(version) = version else {
            return Some(self.clone());
        };
        let v = self.versions.get(version)?;
        let mut env = self.env.clone();
        env.extend(v.env.clone());
        Some(HandlerSettings {
            command: v.command.clone().unwrap_or_else(|| self.command.clone()),
            timeout: v.timeout.unwrap_or(self.timeout),
            max_attempts: v.max_attempts.unwrap_or(self.max_attempts),
            concurrency: v.concurrency.unwrap_or(self.concurrency),
            env,
            working_dir: v.working_dir.clone().or_else(|| self.working_dir.clone()),
            versions: BTreeMap::new(),
            tags: BTreeMap::new(),
            default_version: None,
        })
    }

    /// What a worker runs for this kind: each version (or the kind itself, without versions)
    /// with its settings.
    pub fn runnable(&self) -> Vec<(Option<String>, HandlerSettings)> {
        if self.versions.is_empty() {
            return vec![(None, self.clone())];
        }
        self.versions
            .keys()
            .filter_map(|v| Some((Some(v.clone()), self.for_version(Some(v))?)))
            .collect()
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: None,
            data_dir: PathBuf::from("./ferry-data"),
            database_url: None,
            blob_store: None,
            blob_options: BTreeMap::new(),
            work_dir: None,
            workers: true,
            builtin_handlers: true,
            log_format: LogFormat::Text,
            limits: Limits::default(),
            queue: QueueSettings::default(),
            webhooks: WebhookSettings::default(),
            events: EventSettings::default(),
            traces: TraceSettings::default(),
            auth: AuthSettings::default(),
            cors: CorsSettings::default(),
            tenant_defaults: TenantLimits::default(),
            tenants: BTreeMap::new(),
            handlers: BTreeMap::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 64 << 30,
            upload_ttl: Duration::from_secs(24 * 3600),
            resumable_upload_ttl: Duration::from_secs(24 * 3600),
            upload_part_bytes: 8 << 20,
            max_json_bytes: 1 << 20,
            max_inputs_per_job: 10_000,
            max_job_input_bytes: 1 << 40,
            max_concurrent_uploads: 16,
            max_log_line_bytes: 4 << 10,
            max_log_bytes_per_job: 1 << 20,
            progress_event_interval: Duration::from_secs(5),
            max_params_bytes: 64 << 10,
            max_uploads_per_client: 8,
            transfer_idle_timeout: Duration::from_secs(30),
            transfer_min_rate: 1024,
        }
    }
}

impl Limits {
    /// What a stored log line costs beyond its text (its row: ids, times, index entries), so
    /// that a flood of empty lines is bounded too.
    pub const LOG_LINE_OVERHEAD_BYTES: u64 = 64;
    /// Longest `params` a command can be given: Linux's limit on one environment variable
    /// (`MAX_ARG_STRLEN`, 128 KiB), less `FERRY_PARAMS=` and the terminating NUL.
    pub const MAX_COMMAND_PARAMS_BYTES: usize = (128 << 10) - "FERRY_PARAMS=".len() - 1;

    /// What a log line of `len` bytes counts against `max_log_bytes_per_job`.
    pub fn log_line_cost(len: usize) -> u64 {
        len as u64 + Self::LOG_LINE_OVERHEAD_BYTES
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(50),
            lease_ttl: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(5),
            retry_base_delay: Duration::from_secs(2),
            retry_max_delay: Duration::from_secs(600),
            kill_grace: Duration::from_secs(10),
            orphan_sweep_interval: Duration::from_secs(3600),
        }
    }
}

impl WebhookSettings {
    /// `retry_schedule` as plain durations.
    pub fn retry_delays(&self) -> Vec<Duration> {
        self.retry_schedule.iter().map(|d| **d).collect()
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            deliver: true,
            timeout: Duration::from_secs(15),
            retry_schedule: [
                Duration::ZERO,
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
                minutes(600),
            ]
            .map(humantime_serde::Serde::from)
            .to_vec(),
            secret_rotation_overlap: Duration::from_secs(24 * 3600),
            concurrency: 16,
            poll_interval: Duration::from_secs(1),
            allow_loopback: false,
            allow_private_networks: false,
            public_url: None,
        }
    }
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            poll_cache_max_age: Duration::from_secs(1),
        }
    }
}

impl Default for HandlerSettings {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            timeout: Duration::from_secs(30 * 60),
            max_attempts: 3,
            concurrency: 1,
            env: BTreeMap::new(),
            working_dir: None,
            versions: BTreeMap::new(),
            tags: BTreeMap::new(),
            default_version: None,
        }
    }
}

/// The settings given on the command line, as the last configuration source: only the flags
/// that were given, so that the others leave the earlier sources alone.
#[derive(Debug, Default, Serialize)]
struct CommandLine {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blob_store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<AuthFlags>,
}

/// `[auth]` settings given as flags.
#[derive(Debug, Default, Serialize)]
struct AuthFlags {
    insecure_no_auth: bool,
}

impl CommandLine {
    fn of(cli: &Cli) -> Self {
        let common = cli.command.common().cloned().unwrap_or_default();
        let mut flags = CommandLine {
            data_dir: common.data_dir,
            database_url: common.database_url,
            blob_store: common.blob_store,
            log_format: cli.log_format,
            ..CommandLine::default()
        };
        if let Command::Worker { metrics_listen, .. } = &cli.command {
            flags.metrics_listen = metrics_listen.clone();
        }
        if let Command::Serve {
            listen,
            no_workers,
            insecure_no_auth,
            ..
        } = &cli.command
        {
            flags.listen = listen.clone();
            flags.workers = no_workers.then_some(false);
            flags.auth = insecure_no_auth.then_some(AuthFlags {
                insecure_no_auth: true,
            });
        }
        flags
    }
}

impl Settings {
    /// Layers defaults, the TOML file, the environment and the command line, then makes paths
    /// absolute.
    pub fn load(cli: &Cli) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        match &cli.config {
            Some(path) => {
                if !path.exists() {
                    bail!("configuration file {} does not exist", path.display());
                }
                figment = figment.merge(Toml::file(path));
            }
            None => figment = figment.merge(Toml::file("ferry.toml")),
        }
        let mut settings: Settings = figment
            // The client commands' variables share the prefix; a shell that sets them for
            // `ferry submit` must still be able to run `ferry serve`.
            .merge(Env::prefixed("FERRY_").ignore(CLIENT_ENV).split("__"))
            .merge(Serialized::defaults(CommandLine::of(cli)))
            .extract()
            .context("invalid configuration")?;
        // Relative handler paths are relative to the configuration file, like any config file's.
        let config_dir = match &cli.config {
            Some(path) => path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".")),
            None => PathBuf::from("."),
        };
        settings.normalise_paths(&config_dir);
        settings.validate()?;
        Ok(settings)
    }

    /// Makes every folder absolute, once and after all sources are merged: handlers run in
    /// their own working directory and get their input and output folders by environment
    /// variable. Data folders are relative to the current directory (like any command-line
    /// path), handlers' working folders to the configuration file's folder.
    fn normalise_paths(&mut self, config_dir: &std::path::Path) {
        self.data_dir = absolute(std::mem::take(&mut self.data_dir));
        self.work_dir = self.work_dir.take().map(absolute);
        if let Some(store) = &self.blob_store
            && !store.contains("://")
        {
            self.blob_store = Some(absolute(PathBuf::from(store)).display().to_string());
        }
        let resolve = |dir: PathBuf| -> PathBuf {
            absolute(if dir.is_relative() {
                config_dir.join(dir)
            } else {
                dir
            })
        };
        for handler in self.handlers.values_mut() {
            let dir = handler
                .working_dir
                .take()
                .unwrap_or_else(|| config_dir.to_path_buf());
            handler.working_dir = Some(resolve(dir));
            for version in handler.versions.values_mut() {
                version.working_dir = version.working_dir.take().map(resolve);
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        for (kind, handler) in &self.handlers {
            crate::domain::validate_kind(kind)
                .map_err(|msg| anyhow::anyhow!("handler name {kind:?}: {msg}"))?;
            validate_versions(kind, handler)?;
            for (version, settings) in handler.runnable() {
                let name = match &version {
                    Some(v) => format!("{kind}@{v}"),
                    None => kind.clone(),
                };
                if settings.command.is_empty() {
                    bail!("handler {name:?}: `command` must name a program");
                }
                if settings.concurrency == 0 || settings.max_attempts == 0 {
                    bail!("handler {name:?}: `concurrency` and `max_attempts` must be at least 1");
                }
            }
        }
        if self.limits.max_concurrent_uploads == 0 {
            bail!("limits.max_concurrent_uploads must be at least 1");
        }
        if self.limits.max_uploads_per_client == 0 {
            bail!("limits.max_uploads_per_client must be at least 1");
        }
        if self.limits.transfer_idle_timeout.is_zero() {
            bail!("limits.transfer_idle_timeout must be positive");
        }
        if self.events.heartbeat.is_zero() {
            bail!("events.heartbeat must be positive");
        }
        for name in self.tenants.keys() {
            crate::tenancy::Tenant::parse(name)
                .map_err(|msg| anyhow::anyhow!("[tenants.{name}]: {msg}"))?;
        }
        if self.queue.orphan_sweep_interval.is_zero() {
            bail!("queue.orphan_sweep_interval must be positive");
        }
        if self.limits.upload_part_bytes < 64 << 10 {
            bail!("limits.upload_part_bytes must be at least 65536");
        }
        let webhooks = &self.webhooks;
        if webhooks.retry_schedule.is_empty() || webhooks.concurrency == 0 {
            bail!("webhooks.retry_schedule needs at least one delay; webhooks.concurrency >= 1");
        }
        if webhooks.timeout.is_zero() || webhooks.poll_interval.is_zero() {
            bail!("webhooks.timeout and webhooks.poll_interval must be positive");
        }
        if let Some(public) = &webhooks.public_url
            && !matches!(url::Url::parse(public), Ok(u) if u.scheme().starts_with("http"))
        {
            bail!("webhooks.public_url must be an http(s) URL, not {public:?}");
        }
        let limits = &self.limits;
        if !(64..=1 << 20).contains(&limits.max_log_line_bytes) {
            bail!("limits.max_log_line_bytes must be between 64 and 1048576");
        }
        if limits.max_log_bytes_per_job < Limits::log_line_cost(limits.max_log_line_bytes) {
            bail!(
                "limits.max_log_bytes_per_job must hold at least one whole line: at least \
                 limits.max_log_line_bytes + {}",
                Limits::LOG_LINE_OVERHEAD_BYTES
            );
        }
        if !(2..=Limits::MAX_COMMAND_PARAMS_BYTES).contains(&limits.max_params_bytes) {
            bail!(
                "limits.max_params_bytes must be between 2 and {} (Linux's limit on one \
                 environment variable, which is how commands get their params)",
                Limits::MAX_COMMAND_PARAMS_BYTES
            );
        }
        Ok(())
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("ferry.db").display()))
    }

    pub fn blob_store(&self) -> String {
        self.blob_store
            .clone()
            .unwrap_or_else(|| self.data_dir.join("blobs").display().to_string())
    }

    pub fn work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("work"))
    }
}

/// A kind's versions, tags and default version name each other consistently.
fn validate_versions(kind: &str, handler: &HandlerSettings) -> anyhow::Result<()> {
    if handler.versions.is_empty() {
        if !handler.tags.is_empty() || handler.default_version.is_some() {
            bail!("handler {kind:?}: `tags` and `default_version` need `versions`");
        }
        return Ok(());
    }
    for version in handler.versions.keys() {
        crate::domain::validate_kind(version)
            .map_err(|msg| anyhow::anyhow!("handler {kind:?}: version name {version:?} {msg}"))?;
    }
    for (tag, version) in &handler.tags {
        crate::domain::validate_kind(tag)
            .map_err(|msg| anyhow::anyhow!("handler {kind:?}: tag name {tag:?} {msg}"))?;
        if handler.versions.contains_key(tag) {
            bail!("handler {kind:?}: {tag:?} is both a tag and a version; name them apart");
        }
        if !handler.versions.contains_key(version) {
            bail!("handler {kind:?}: tag {tag:?} names version {version:?}, which is not declared");
        }
    }
    if let Some(version) = &handler.default_version
        && !handler.versions.contains_key(version)
    {
        bail!("handler {kind:?}: default_version {version:?} is not declared");
    }
    Ok(())
}

fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn storage_limits_are_checked() {
        let with = |limits: Limits| {
            Settings {
                limits,
                ..Settings::default()
            }
            .validate()
        };
        assert!(with(Limits::default()).is_ok());
        for bad in [
            Limits {
                max_params_bytes: 128 << 10,
                ..Limits::default()
            },
            Limits {
                max_log_line_bytes: 10,
                ..Limits::default()
            },
            Limits {
                max_log_bytes_per_job: 4096,
                ..Limits::default()
            },
        ] {
            assert!(with(bad.clone()).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_command_line_comes_last_and_folders_end_up_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            "data_dir = \"/from/the/file\"\nlisten = \"127.0.0.1:1\"\nlog_format = \"json\"\n\
             [handlers.m]\ncommand = [\"x\"]\nworking_dir = \"models\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "ferry",
            "--config",
            config.to_str().unwrap(),
            "serve",
            "--data-dir",
            "relative/data",
            "--no-workers",
            "--log-format",
            "text",
        ]);
        let settings = Settings::load(&cli).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(settings.data_dir, cwd.join("relative/data"));
        assert_eq!(settings.work_dir(), cwd.join("relative/data/work"));
        assert_eq!(
            settings.blob_store(),
            cwd.join("relative/data/blobs").display().to_string()
        );
        assert_eq!(
            settings.listen, "127.0.0.1:1",
            "a flag not given changes nothing"
        );
        assert!(!settings.workers);
        assert_eq!(settings.log_format, LogFormat::Text);
        assert_eq!(
            settings.handlers["m"].working_dir.as_deref(),
            Some(dir.path().join("models").as_path())
        );
    }

    #[test]
    fn a_tenant_takes_its_own_limits_and_retention_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ferry.toml");
        std::fs::write(
            &config,
            "[tenant_defaults]\njob_retention = \"30days\"\nmax_running_jobs = 4\n\
             [tenants.ward]\njob_retention = \"never\"\ninput_retention = \"0s\"\n\
             max_stored_bytes = 1000\n",
        )
        .unwrap();
        let cli = Cli::parse_from(["ferry", "--config", config.to_str().unwrap(), "serve"]);
        let settings = Settings::load(&cli).unwrap();
        let other = settings.tenant_limits("other");
        assert_eq!(other.job_retention.as_millis(), Some(30 * 86_400_000));
        assert_eq!(other.input_retention.as_millis(), None);
        assert_eq!(other.max_running_jobs, 4);
        let ward = settings.tenant_limits("ward");
        assert_eq!(ward.job_retention.as_millis(), None);
        assert_eq!(ward.input_retention.as_millis(), Some(0));
        assert_eq!(ward.max_running_jobs, 4, "not given: the default's");
        assert_eq!(ward.max_stored_bytes, 1000);
        assert!(settings.limits_running_jobs());

        std::fs::write(&config, "[tenant_defaults]\njob_retention = \"a while\"\n").unwrap();
        let err = format!("{:#}", Settings::load(&cli).unwrap_err());
        assert!(err.contains("neither \"never\" nor a duration"), "{err}");
    }
}
