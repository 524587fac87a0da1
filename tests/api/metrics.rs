//! `GET /metrics` on both backends, read by the Prometheus project's own text parser (the
//! `prometheus_client` Python package, pinned in tools/): after known activity — jobs that
//! succeed, fail after a retry, run, wait, are canceled; uploads; results; webhook deliveries
//! that fail and then succeed — every counter says exactly what happened, and the queue's gauges
//! say what the database holds.

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    helpers::*,
    matrix, tools,
    webhook_receiver::{Answer, Receiver},
};

matrix!(
    metrics_count_what_happened_and_gauges_read_the_queue,
    a_worker_machine_serves_its_own_counts_and_the_same_queue,
);

const WITHIN: Duration = Duration::from_secs(60);
const PARSER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/metrics/parse.py");

/// One sample, as the parser read it.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
    family: String,
    kind: String,
    help: String,
}

struct Scrape(Vec<Sample>);

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`; 0 when there is none
    /// (a labelled counter that was never incremented has no sample) — but some sample must be
    /// named so, lest a misspelt name read as zero.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        assert!(
            self.0.iter().any(|s| s.name == name),
            "no sample is named {name}: {:#?}",
            self.0
        );
        let found: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }

    /// The sum over every sample `name` (any labels).
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Whether no sample is named `name` (the process never counted it).
    fn lacks(&self, name: &str) -> bool {
        !self.0.iter().any(|s| s.name == name)
    }

    fn family(&self, family: &str) -> Option<&Sample> {
        self.0.iter().find(|s| s.family == family)
    }
}

/// Scrapes `/metrics` and parses it; `None` (after a notice, or a panic under CI) when the
/// parser is not installed.
async fn scrape(app: &TestApp) -> Option<Scrape> {
    scrape_at(app, &app.base).await
}

/// [`scrape`] of the process at `base`.
async fn scrape_at(app: &TestApp, base: &str) -> Option<Scrape> {
    let reply = app.request_at(base, "get", "/metrics", |r| r).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let python = tools::python();
    let found = if python.exists() {
        Ok(python)
    } else {
        Err(format!("{} is missing", python.display()))
    };
    let python = tools::or_skip("the Prometheus text parser", found)?;
    let mut child = Command::new(python)
        .arg(PARSER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the parser");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&reply.bytes).expect("feed the parser");
    }
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&reply.bytes)
    );
    let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    let samples = parsed
        .iter()
        .map(|s| Sample {
            name: s["name"].as_str().expect("name").to_owned(),
            labels: serde_json::from_value(s["labels"].clone()).expect("labels"),
            value: s["value"].as_f64().expect("value"),
            family: s["family"].as_str().expect("family").to_owned(),
            kind: s["type"].as_str().expect("type").to_owned(),
            help: s["help"].as_str().expect("help").to_owned(),
        })
        .collect();
    Some(Scrape(samples))
}

/// Scrapes until `done` holds (counts made after an answer was sent, e.g. a webhook attempt's,
/// land a moment later); panics with the last scrape's values after `WITHIN`.
async fn scrape_until(app: &TestApp, what: &str, done: impl Fn(&Scrape) -> bool) -> Option<Scrape> {
    let start = Instant::now();
    loop {
        let scrape = scrape(app).await?;
        if done(&scrape) {
            return Some(scrape);
        }
        assert!(
            start.elapsed() < WITHIN,
            "{what} never held: {:#?}",
            scrape.0
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics_count_what_happened_and_gauges_read_the_queue() {
    let app = TestApp::spawn_with(TestConfig {
        model_concurrency: 1,
        model_max_attempts: 2,
        ..TestConfig::default()
    })
    .await;
    if scrape(&app).await.is_none() {
        return;
    }
    let gate = app.dir.path().join("gate");
    let mut uploaded = 0u64;

    // Three jobs that succeed.
    let mut digests = Vec::new();
    for i in 0..3 {
        let data = bytes(1000 + i * 10, i as u64);
        uploaded += data.len() as u64;
        let job = app.submit("digest", data, json!({})).await;
        digests.push(job["id"].as_str().unwrap().to_owned());
    }
    // One that fails, after one retry.
    uploaded += 10;
    let failing = app
        .submit("model", bytes(10, 7), json!({"mode": "fail"}))
        .await;
    let failing = failing["id"].as_str().unwrap().to_owned();
    for id in &digests {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    app.wait_status(&failing, "failed", WITHIN).await;
    // One that runs (waiting at its gate) and one queued behind it (concurrency 1).
    uploaded += 20;
    let gated = json!({"gate": gate.display().to_string()});
    let running = app.submit("model", bytes(10, 8), gated.clone()).await;
    let running = running["id"].as_str().unwrap().to_owned();
    app.wait_job(&running, WITHIN, |j| j["result_count"] == 1)
        .await;
    let before_queued = Instant::now();
    let queued = app.submit("model", bytes(10, 9), gated).await;
    let queued = queued["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(app.job(&queued).await["status"], "queued");

    let m = scrape(&app).await.expect("parser");
    let waited = before_queued.elapsed().as_secs_f64();

    // Every family is documented, and typed as Prometheus expects.
    for (family, kind) in [
        ("ferry_jobs_created", "counter"),
        ("ferry_jobs_finished", "counter"),
        ("ferry_attempt_duration_seconds", "histogram"),
        ("ferry_queue_wait_seconds", "histogram"),
        ("ferry_upload_duration_seconds", "histogram"),
        ("ferry_queue_depth", "gauge"),
        ("ferry_queue_oldest_age_seconds", "gauge"),
        ("ferry_jobs_running", "gauge"),
        ("ferry_workers_live", "gauge"),
        ("ferry_uploads_capacity", "gauge"),
    ] {
        let sample = m.family(family).unwrap_or_else(|| panic!("no {family}"));
        assert_eq!(sample.kind, kind, "{family}");
        assert!(!sample.help.is_empty(), "{family} has no help");
    }
    // No label names a job: cardinality stays bounded.
    for s in &m.0 {
        for (key, value) in &s.labels {
            assert!(!key.contains("job") && !value.starts_with("job_"), "{s:?}");
        }
    }

    // Jobs, by kind, version and outcome.
    let no_version = ("version", "");
    assert_eq!(
        m.value(
            "ferry_jobs_created_total",
            &[("kind", "digest"), no_version]
        ),
        3.0
    );
    assert_eq!(
        m.value("ferry_jobs_created_total", &[("kind", "model"), no_version]),
        3.0
    );
    let finished = |kind, outcome| {
        m.value(
            "ferry_jobs_finished_total",
            &[("kind", kind), no_version, ("outcome", outcome)],
        )
    };
    assert_eq!(finished("digest", "succeeded"), 3.0);
    assert_eq!(finished("model", "failed"), 1.0);
    assert_eq!(finished("model", "succeeded"), 0.0);
    // Attempts: three successes, the failing job's retried and failed attempts.
    let attempts = |kind, outcome| {
        m.value(
            "ferry_attempts_total",
            &[("kind", kind), ("outcome", outcome)],
        )
    };
    assert_eq!(attempts("digest", "succeeded"), 3.0);
    assert_eq!(attempts("model", "retried"), 1.0);
    assert_eq!(attempts("model", "failed"), 1.0);
    assert_eq!(m.value("ferry_retries_total", &[("kind", "model")]), 1.0);
    assert_eq!(
        m.value(
            "ferry_attempt_duration_seconds_count",
            &[("kind", "digest"), ("outcome", "succeeded")]
        ),
        3.0
    );
    // Submit → start: the three digests, the failing job once (its retry is not a start), the
    // running one; not the queued one.
    assert_eq!(
        m.value("ferry_queue_wait_seconds_count", &[("kind", "digest")]),
        3.0
    );
    assert_eq!(
        m.value("ferry_queue_wait_seconds_count", &[("kind", "model")]),
        2.0
    );

    // The queue, from the database.
    let depth = |kind| m.value("ferry_queue_depth", &[("kind", kind), no_version]);
    assert_eq!(depth("model"), 1.0);
    assert_eq!(depth("digest"), 0.0, "configured kinds show at zero");
    assert_eq!(depth("noop"), 0.0);
    let age = m.value(
        "ferry_queue_oldest_age_seconds",
        &[("kind", "model"), no_version],
    );
    assert!(
        age >= 1.0 && age <= waited + 0.5,
        "oldest age {age}, waited {waited}"
    );
    assert_eq!(m.sum("ferry_jobs_running"), 1.0);
    assert_eq!(m.value("ferry_workers_live", &[]), 1.0);
    let worker =
        m.0.iter()
            .find(|s| s.name == "ferry_jobs_running" && s.value == 1.0)
            .expect("the running worker");
    let kinds = app.get("/v1/kinds").await;
    assert_eq!(
        kinds.body["workers"][0]["id"].as_str(),
        worker.labels.get("worker").map(String::as_str),
        "the worker label is the live worker's id: {}",
        kinds.body
    );

    // Uploads and results.
    assert_eq!(m.value("ferry_upload_bytes_total", &[]), uploaded as f64);
    assert_eq!(
        m.value("ferry_uploads_completed_total", &[("outcome", "stored")]),
        6.0
    );
    assert_eq!(m.value("ferry_upload_duration_seconds_count", &[]), 6.0);
    assert_eq!(m.value("ferry_uploads_capacity", &[]), 16.0);
    assert_eq!(m.value("ferry_uploads_active", &[]), 0.0);
    let mut digest_result_bytes = 0.0;
    for id in &digests {
        for result in app.results(id).await {
            digest_result_bytes += result["size"].as_f64().unwrap();
        }
    }
    assert!(digest_result_bytes > 0.0);
    assert_eq!(
        m.value("ferry_result_bytes_total", &[("kind", "digest")]),
        digest_result_bytes
    );
    assert_eq!(
        m.value(
            "ferry_results_published_total",
            &[("kind", "model"), ("stage", "intermediate")]
        ),
        1.0,
        "the running job's preview"
    );

    // Cancel the running job; the queued one then runs and, let through its gate, succeeds.
    assert_eq!(app.cancel_job(&running).await.status, 202);
    app.wait_status(&running, "canceled", WITHIN).await;
    std::fs::write(&gate, b"go").unwrap();
    app.wait_status(&queued, "succeeded", WITHIN).await;
    let m = scrape_until(&app, "the canceled attempt counted", |m| {
        m.value(
            "ferry_attempts_total",
            &[("kind", "model"), ("outcome", "canceled")],
        ) == 1.0
    })
    .await
    .expect("parser");
    assert_eq!(
        m.value(
            "ferry_jobs_finished_total",
            &[("kind", "model"), no_version, ("outcome", "canceled")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "ferry_jobs_finished_total",
            &[("kind", "model"), no_version, ("outcome", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        m.value("ferry_queue_depth", &[("kind", "model"), no_version]),
        0.0
    );
    assert_eq!(
        m.value(
            "ferry_queue_oldest_age_seconds",
            &[("kind", "model"), no_version]
        ),
        0.0
    );
    assert_eq!(m.sum("ferry_jobs_running"), 0.0);

    // Webhook attempts: a receiver that fails at first, then accepts.
    let receiver = Receiver::start();
    receiver.answer(Answer::status(500));
    let upload = app.upload(bytes(10, 11)).await;
    let hooked = app
        .create_job(
            &json!({"kind": "digest", "inputs": {"scan": upload["id"]},
                    "webhook": {"url": receiver.url}}),
            &[],
        )
        .await;
    assert_eq!(hooked.status, 202, "{}", hooked.body);
    receiver
        .wait_until(WITHIN, "a refused delivery", |r| {
            r.iter().any(|r| r.answered == 500)
        })
        .await;
    receiver.answer(Answer::status(200));
    let hooked = hooked.body["id"].as_str().unwrap();
    app.wait_status(hooked, "succeeded", WITHIN).await;
    receiver
        .wait_until(WITHIN, "the succeeded event", |r| {
            r.iter()
                .any(|r| r.answered == 200 && r.json()["type"] == "succeeded")
        })
        .await;
    let answered = |status: u16| {
        receiver
            .received()
            .iter()
            .filter(|r| r.answered == status)
            .count()
    };
    scrape_until(
        &app,
        "webhook attempts counted as the receiver answered",
        |m| {
            m.value("ferry_webhook_attempts_total", &[("outcome", "failed")])
                == answered(500) as f64
                && m.value("ferry_webhook_attempts_total", &[("outcome", "delivered")])
                    == answered(200) as f64
        },
    )
    .await;
    assert!(answered(500) >= 1 && answered(200) >= 3);
}

/// Scale-out: a `ferry worker` serves its own counts on `--metrics-listen` (the attempts it ran
/// are counted there, not on the API replica), while both report the same queue, read from
/// the database.
async fn a_worker_machine_serves_its_own_counts_and_the_same_queue() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    let Some(before) = scrape(&app).await else {
        return;
    };
    assert_eq!(before.value("ferry_workers_live", &[]), 0.0);
    let job = app.submit("digest", bytes(100, 1), json!({})).await;
    let id = job["id"].as_str().unwrap();
    // The names each process counts under, and the other must not: one spelling for both.
    const CREATED: &str = "ferry_jobs_created_total";
    const FINISHED: &str = "ferry_jobs_finished_total";
    let api = scrape(&app).await.expect("parser");
    assert_eq!(api.value("ferry_queue_depth", &[("kind", "digest")]), 1.0);
    assert_eq!(api.value(CREATED, &[("kind", "digest")]), 1.0);

    let (_, worker) = app.spawn_worker_with(&["--metrics-listen", "127.0.0.1:0"]);
    let worker = worker.expect("the worker's metrics address");
    app.wait_status(id, "succeeded", WITHIN).await;
    let on_worker = scrape_at(&app, &worker).await.expect("parser");
    let succeeded = [("kind", "digest"), ("outcome", "succeeded")];
    assert_eq!(on_worker.value("ferry_attempts_total", &succeeded), 1.0);
    assert_eq!(on_worker.value(FINISHED, &succeeded), 1.0);
    assert_eq!(
        on_worker.value("ferry_queue_wait_seconds_count", &[("kind", "digest")]),
        1.0
    );
    assert!(on_worker.lacks(CREATED), "the worker created no job");
    let api = scrape(&app).await.expect("parser");
    assert!(api.lacks(FINISHED), "the API replica finished no job");
    // The queue, the same from both: read from the database.
    for m in [&api, &on_worker] {
        assert_eq!(m.value("ferry_queue_depth", &[("kind", "digest")]), 0.0);
        assert_eq!(m.value("ferry_workers_live", &[]), 1.0);
    }
    // The worker's listener serves metrics and liveness, nothing else.
    // (Not through the checked helpers: the spec describes the API's answer to this path.)
    let other = app
        .client
        .get(format!("{worker}/v1/jobs"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    let alive = app.request_at(&worker, "get", "/healthz", |r| r).await;
    assert_eq!(alive.status, 200);
}
