//! The scale-out configuration under load and faults: several API replicas and worker
//! processes sharing PostgreSQL and S3, a worker killed mid-run, a cancel crossing machines,
//! database connections cut, and the S3 server going away and coming back.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sqlx::Connection as _;

use crate::{helpers::*, long_poll::gated_job};

const WITHIN: Duration = Duration::from_secs(60);

/// Terminates every connection to the test's database but the one it runs on, and says how many.
const TERMINATE_OTHER_CONNECTIONS: &str = "SELECT COUNT(pg_terminate_backend(pid)) \
     FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()";

/// A `model` job on `data`, created in one request through the replica at `base`.
async fn submit_to(app: &TestApp, base: &str, data: Vec<u8>) -> Value {
    let reply = app
        .request_at(base, "post", "/v1/kinds/model/jobs", |r| r.body(data))
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body
}

async fn two_replicas_and_two_workers_run_200_jobs_exactly_once_despite_a_killed_worker() {
    let mut app = TestApp::spawn_api_only(TestConfig {
        lease_ttl: "2s",
        model_concurrency: 4,
        ..TestConfig::default()
    })
    .await;
    let replica_b = app.spawn_replica();
    let doomed = app.spawn_worker();
    app.spawn_worker();
    let replicas = [app.base.clone(), replica_b];

    let mut ids = Vec::new();
    for batch in 0..20 {
        let futures = (0..10).map(|i| {
            let n = batch * 10 + i;
            submit_to(&app, &replicas[n % 2], bytes(2000, n as u64))
        });
        for job in futures_util::future::join_all(futures).await {
            ids.push(job["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), 200);

    // Once some work is done, kill one worker mid-run.
    let start = Instant::now();
    while app
        .count_rows("SELECT COUNT(*) FROM ferry_jobs WHERE status = 'succeeded'")
        .await
        < 40
    {
        assert!(start.elapsed() < WITHIN, "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.kill9_worker(doomed);

    let start = Instant::now();
    loop {
        let done = app
            .count_rows("SELECT COUNT(*) FROM ferry_jobs WHERE status = 'succeeded'")
            .await;
        if done == 200 {
            break;
        }
        let failed = app
            .count_rows("SELECT COUNT(*) FROM ferry_jobs WHERE status IN ('failed', 'canceled')")
            .await;
        assert_eq!(failed, 0, "jobs failed");
        if start.elapsed() > Duration::from_secs(180) {
            // Say what is stuck: the jobs' rows, their deliveries in apalis, the processes' logs.
            let stuck = app
                .text_rows(
                    "SELECT concat_ws(' ', j.id, j.status, 'attempt', j.attempt, 'dispatch', \
                     j.dispatch_id, 'lease', j.lease_owner, j.lease_expires_at_ms, 'run_after', \
                     j.run_after_ms, 'apalis', a.status, a.lock_by, a.attempts) \
                     FROM ferry_jobs j LEFT JOIN apalis.jobs a ON a.id = j.dispatch_id \
                     WHERE j.status <> 'succeeded'",
                )
                .await;
            let workers = app
                .text_rows("SELECT concat_ws(' ', id, worker_type, last_seen) FROM apalis.workers")
                .await;
            // A transaction left open, or a statement waiting for a lock, shows here.
            let sessions = app
                .text_rows(
                    "SELECT concat_ws(' ', pid, application_name, state, wait_event_type, \
                     wait_event, 'xact', now() - xact_start, 'query', now() - query_start, \
                     left(regexp_replace(query, '\\s+', ' ', 'g'), 160)) \
                     FROM pg_stat_activity WHERE datname = current_database() \
                     AND pid <> pg_backend_pid()",
                )
                .await;
            panic!(
                "only {done} of 200 jobs succeeded after 180 s; not succeeded:\n{}\n\
                 apalis workers:\n{}\nsessions:\n{}\n{}\n{}",
                stuck.join("\n"),
                workers.join("\n"),
                sessions.join("\n"),
                app.logs_of("worker"),
                app.logs_of("serve")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Exactly once: one completion per job, one result per name, and any replica answers.
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_job_events WHERE kind = 'succeeded'")
            .await,
        200
    );
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_results").await,
        400
    );
    for (i, id) in ids.iter().enumerate().step_by(17) {
        let job = app
            .request_at(
                &replicas[(i + 1) % 2],
                "get",
                &format!("/v1/jobs/{id}"),
                |r| r,
            )
            .await
            .body;
        assert_eq!(job["status"], "succeeded");
        assert_eq!(job["result_count"], 2);
    }
    let retried = app
        .count_rows("SELECT COUNT(*) FROM ferry_jobs WHERE attempt > 1")
        .await;
    println!("200 jobs succeeded; {retried} were retried after the worker was killed");
}

async fn a_cancel_sent_to_one_replica_stops_the_job_on_a_worker_process() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let replica_b = app.spawn_replica();
    app.spawn_worker();
    let pid_file = app.dir.path().join("model.pid");
    let upload = app
        .request_at(&replica_b, "post", "/v1/uploads", |r| {
            r.body(bytes(100, 80))
        })
        .await
        .body;
    let job = app
        .request_at(&replica_b, "post", "/v1/jobs", |r| {
            r.json(&json!({
                "kind": "model",
                "inputs": {"scan": upload["id"]},
                "params": {"mode": "sleep", "pid_file": pid_file},
            }))
        })
        .await
        .body;
    let id = job["id"].as_str().unwrap();
    let pid = read_pid(&pid_file, WITHIN).await;
    app.wait_status(id, "running", WITHIN).await;
    assert_eq!(app.cancel_job(id).await.status, 202);
    let started = Instant::now();
    let done = app
        .wait_status(id, "canceled", Duration::from_secs(15))
        .await;
    println!("cancel across processes took {:?}", started.elapsed());
    assert!(done["finished_at"].is_string());
    assert!(!process_alive(pid), "the job's process survived the cancel");
}

async fn workers_and_api_survive_terminated_database_connections() {
    let app = TestApp::spawn_process(TestConfig::default()).await;
    let first = app.submit("model", bytes(100, 81), json!({})).await;
    app.wait_status(first["id"].as_str().unwrap(), "succeeded", WITHIN)
        .await;

    let killed = app.count_rows(TERMINATE_OTHER_CONNECTIONS).await;
    assert!(killed > 0, "no connection was terminated");

    // The service recovers by itself: new work is accepted and runs.
    let mut ids = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        loop {
            let reply = app
                .create_job_from_file("model", "", bytes(100, 90 + i), &[])
                .await;
            if reply.status == 202 {
                ids.push(reply.body["id"].as_str().unwrap().to_owned());
                break;
            }
            // While connections are re-established the answer may be a 503 problem, never a 500.
            reply.assert_problem(503, "database_unavailable");
            assert!(start.elapsed() < WITHIN);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    for id in &ids {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
}

/// A job that finishes while every database connection is being killed: its worker cannot
/// record the success then, and keeps trying until it can, so the job succeeds at its first
/// attempt instead of being run again once its lease runs out.
async fn an_outcome_that_cannot_be_recorded_at_once_is_recorded_later_not_run_again() {
    let app = TestApp::spawn_process(TestConfig {
        // Longer than the blip below and the retries after it, so that the reconciler does not
        // settle the attempt as lost meanwhile.
        lease_ttl: "8s",
        ..TestConfig::default()
    })
    .await;
    let gate = app.dir.path().join("gate");
    let job = app
        .submit(
            "model",
            bytes(100, 89),
            json!({"mode": "quiet", "gate": gate}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_status(&id, "running", WITHIN).await;

    // For 1.5 s, every connection to the job's database is terminated as soon as it is seen;
    // the handler exits at the start of it.
    let mut killer = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    std::fs::write(&gate, "go").unwrap();
    let blip = Instant::now();
    let mut killed = 0i64;
    while blip.elapsed() < Duration::from_millis(1500) {
        killed += sqlx::query_scalar::<_, i64>(TERMINATE_OTHER_CONNECTIONS)
            .fetch_one(&mut killer)
            .await
            .unwrap();
    }
    println!("terminated {killed} connections during the blip");
    assert!(killed > 0, "no connection was terminated");

    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 1, "the job ran again: {done}");
}

/// The lease of an attempt whose leftover outputs are being published is renewed beside the
/// publishing, which must go on meanwhile. The results table is locked as the handler exits, so
/// the publishing transaction waits there holding the job's row, past a renewal's turn: the
/// renewal then waits for that row, and only the publishing's commit releases it. (A renewal
/// that was awaited in the publishing's place waited for a commit nothing drove: the job stayed
/// `running` for good, its row locked against the reconciler too.)
async fn a_lease_renewal_waits_beside_the_publishing_it_keeps_alive() {
    let app = TestApp::spawn_process(TestConfig {
        // Renewals every 2 s; the lock below (3 s) outlasts one but not the lease.
        lease_ttl: "6s",
        ..TestConfig::default()
    })
    .await;
    let gate = app.dir.path().join("gate");
    // Its intermediate result is in and it waits at the gate; once through, it leaves its final
    // output (masks/mask.json) for the worker to publish after it exits.
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    let mut locker = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE ferry_results IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    std::fs::write(&gate, "go").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let waiting: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut locker)
    .await
    .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut locker).await.unwrap();
    // The publishing, and a renewal behind it on the job's row.
    assert!(
        waiting >= 2,
        "{waiting} statement(s) waited for the lock, not the two expected"
    );

    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 1, "the job ran again: {done}");
    assert_eq!(done["result_count"], 2, "{done}");
}

/// A transaction Ferry left open by mistake (as above, before that was fixed) does not hold its
/// locks for ever: both of Ferry's PostgreSQL pools open their sessions with
/// `idle_in_transaction_session_timeout`, so PostgreSQL ends one that sits a minute in a
/// transaction without a statement. What is checked is the setting each pool's sessions carry
/// (PostgreSQL's default is `0`, no limit); waiting out the minute is PostgreSQL's part.
async fn both_pools_open_sessions_with_an_idle_transaction_timeout() {
    let app = TestApp::spawn().await;
    let db = ferry::storage::Db::connect(&app.database_url)
        .await
        .unwrap();
    for (name, pool) in [("main", db.pool()), ("read", db.read_pool())] {
        let ferry::storage::Pool::Postgres(pool) = pool else {
            panic!("a PostgreSQL test without a PostgreSQL pool")
        };
        let timeout: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(timeout, "1min", "the {name} pool's sessions");
    }
}

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start(port: u16) -> Moto {
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 must be on PATH (with moto: pip install 'moto[server]')");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn an_unreachable_s3_fails_uploads_cleanly_and_recovers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut moto = Moto::start(port);
    let app = TestApp::spawn_process(TestConfig {
        s3_endpoint: Some(moto.endpoint()),
        ..TestConfig::default()
    })
    .await;
    app.upload(bytes(1000, 82)).await;

    // A long upload, with S3 gone from under it midway. Sent by hand on a raw connection, so the
    // test reads the server's answer whether or not the client is still writing its body.
    let mut conn = app.partial_post("/v1/uploads", "", 64 << 20, &bytes(16 << 20, 1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(moto);
    let mut reader = conn.try_clone().unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for i in 0..24 {
            if conn.write_all(&bytes(2 << 20, 100 + i)).is_err() {
                break; // the server answered and closed: expected
            }
        }
    });
    let reply = tokio::task::spawn_blocking(move || read_raw_reply(&mut reader))
        .await
        .unwrap();
    spec().check_reply("post", "/v1/uploads", &reply);
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.assert_problem(503, "blob_store_unavailable");
    assert_eq!(
        app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await,
        1,
        "no half-visible upload"
    );
    let ready = app.readyz().await;
    assert_eq!(
        (ready.status, ready.body["blob_store"].as_str()),
        (503, Some("unavailable"))
    );

    // S3 comes back (moto keeps nothing: the bucket is made again) and uploads work again.
    moto = Moto::start(port);
    create_bucket(&moto.endpoint(), app.bucket.as_deref().unwrap()).await;
    app.upload(bytes(3 << 20, 83)).await;
    assert_eq!(app.readyz().await.status, 200);
    drop(moto);
}

/// A TCP proxy in front of PostgreSQL that the test can cut and restore: the database "goes
/// away" for Ferry (open connections die, new ones are refused) without disturbing the shared
/// server other tests use.
struct DbProxy {
    port: u16,
    enabled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl DbProxy {
    /// Runs on a thread of its own: the test's runtime blocks while it waits for `ferry serve`.
    fn start(upstream: &'static str) -> DbProxy {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let enabled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (on, conns) = (enabled.clone(), connections.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !on.load(Ordering::SeqCst) {
                        continue; // dropped: refused
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    conns.lock().unwrap().push(task.abort_handle());
                }
            });
        });
        DbProxy {
            port,
            enabled,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.enabled
            .store(false, std::sync::atomic::Ordering::SeqCst);
        for conn in self.connections.lock().unwrap().drain(..) {
            conn.abort();
        }
    }

    fn restore(&self) {
        self.enabled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn the_service_answers_503_while_the_database_is_away_and_recovers_losing_nothing() {
    let proxy = DbProxy::start("127.0.0.1:5432");
    let mut app = TestApp::spawn_process(TestConfig {
        pg_via: Some(proxy.url()),
        // Every poll reads the database, so the poll made while it is away meets the outage: a
        // row read in the last second could otherwise be answered from memory (right, but not
        // what this test looks at), until the process notices its listener is gone.
        poll_cache_max_age: Some("0s"),
        ..TestConfig::default()
    })
    .await;
    let done = app.submit("model", bytes(100, 84), json!({})).await;
    let done_id = done["id"].as_str().unwrap().to_owned();
    app.wait_status(&done_id, "succeeded", WITHIN).await;
    let gate = app.dir.path().join("gate");
    let running = app
        .submit("model", bytes(100, 85), json!({"gate": gate}))
        .await;
    let running_id = running["id"].as_str().unwrap().to_owned();
    app.wait_status(&running_id, "running", WITHIN).await;
    let queued = app.submit("noop", bytes(10, 86), json!({})).await;
    let queued_id = queued["id"].as_str().unwrap().to_owned();
    app.wait_status(&queued_id, "succeeded", WITHIN).await;

    proxy.cut();
    // The running job finishes while its worker cannot record it.
    std::fs::write(&gate, "go").unwrap();
    // On fresh connections.
    app.client = reqwest::Client::new();
    let reply = app.get_job(&done_id).await;
    reply.assert_problem(503, "database_unavailable");
    assert_eq!(reply.header("retry-after"), Some("5"));
    app.create_upload(bytes(1000, 87), &[])
        .await
        .assert_problem(503, "database_unavailable");
    assert_eq!(app.readyz().await.status, 503);

    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    // Same process, no restart: everything comes back and nothing was lost.
    let start = Instant::now();
    loop {
        if app.readyz().await.status == 200 {
            break;
        }
        assert!(start.elapsed() < WITHIN, "the service did not recover");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "recovered {:?} after the database came back",
        start.elapsed()
    );
    assert_eq!(app.job(&done_id).await["status"], "succeeded");
    let finished = app.wait_status(&running_id, "succeeded", WITHIN).await;
    println!(
        "the job running during the outage succeeded at attempt {}",
        finished["attempt"]
    );
    let after = app.submit("noop", bytes(10, 88), json!({})).await;
    app.wait_status(after["id"].as_str().unwrap(), "succeeded", WITHIN)
        .await;
    // The upload refused during the outage left no bytes behind.
    let uploads = app.count_rows("SELECT COUNT(*) FROM ferry_uploads").await;
    assert_eq!(uploads as usize, app.blob_files("uploads").await.len());
}

#[tokio::test]
async fn scale_out_200_jobs() {
    run_on(
        Backend::PostgresS3,
        two_replicas_and_two_workers_run_200_jobs_exactly_once_despite_a_killed_worker(),
    )
    .await
}

#[tokio::test]
async fn scale_out_cancel_across_processes() {
    run_on(
        Backend::PostgresS3,
        a_cancel_sent_to_one_replica_stops_the_job_on_a_worker_process(),
    )
    .await
}

#[tokio::test]
async fn scale_out_terminated_connections() {
    run_on(
        Backend::PostgresS3,
        workers_and_api_survive_terminated_database_connections(),
    )
    .await
}

#[tokio::test]
async fn scale_out_s3_outage() {
    run_on(
        Backend::PostgresS3,
        an_unreachable_s3_fails_uploads_cleanly_and_recovers(),
    )
    .await
}

#[tokio::test]
async fn scale_out_outcome_recorded_after_a_blip() {
    run_on(
        Backend::PostgresS3,
        an_outcome_that_cannot_be_recorded_at_once_is_recorded_later_not_run_again(),
    )
    .await
}

#[tokio::test]
async fn scale_out_lease_renewed_beside_a_waiting_publish() {
    run_on(
        Backend::PostgresS3,
        a_lease_renewal_waits_beside_the_publishing_it_keeps_alive(),
    )
    .await
}

#[tokio::test]
async fn scale_out_sessions_carry_an_idle_transaction_timeout() {
    run_on(
        Backend::PostgresS3,
        both_pools_open_sessions_with_an_idle_transaction_timeout(),
    )
    .await
}

#[tokio::test]
async fn scale_out_database_outage() {
    run_on(
        Backend::PostgresS3,
        the_service_answers_503_while_the_database_is_away_and_recovers_losing_nothing(),
    )
    .await
}
