//! Server-sent events and the feed across jobs: a job's stream from creation to success, resumed
//! after a forced disconnect with `Last-Event-ID`, heartbeats on an idle stream, events written
//! by another process, streams ending when their job is deleted or the server stops; the feed's
//! JSON pages, filters and cursors, its stream, and (on PostgreSQL) an event committed late with
//! a lower id that the feed must not skip.

use std::{collections::BTreeSet, time::Duration};

use serde_json::{Value, json};

use crate::{event_source::Frame, helpers::*, long_poll::gated_job};

const WITHIN: Duration = Duration::from_secs(60);

fn events_path(id: &str) -> String {
    format!("/v1/jobs/{id}/events")
}

/// A job's whole event log, as the JSON list shows it (asserts `200`).
async fn event_list(app: &TestApp, id: &str) -> Vec<Value> {
    let reply = app.job_events(id, "limit=1000").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    items(&reply).to_vec()
}

/// Frames of a job's stream agree with its JSON list: one frame per event, in order, `id` =
/// `seq`, `event` = `kind`, `data` = the item.
fn assert_frames_are_the_log(frames: &[Frame], log: &[Value]) {
    let ids: Vec<&str> = frames.iter().map(Frame::id).collect();
    let seqs: Vec<String> = log.iter().map(|e| e["seq"].to_string()).collect();
    assert_eq!(ids, seqs, "every event once, in order");
    let expected: Vec<String> = (1..=log.len()).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected, "ids are the seqs 1, 2, 3…");
    for (frame, item) in frames.iter().zip(log) {
        assert_eq!(frame.event(), item["kind"]);
        assert_eq!(frame.json(), *item);
    }
}

/// A `model` job that, once started, publishes its preview and waits for its gate file;
/// returned at once (unlike `gated_job`, which waits until it is waiting).
async fn job_behind_a_gate(app: &TestApp, seed: u64) -> (String, std::path::PathBuf) {
    let gate = app.dir.path().join(format!("gate-{seed}"));
    let upload = app.upload(bytes(1000, seed)).await;
    let created = app
        .create_job(
            &json!({"kind": "model", "inputs": {"scan": upload["id"]}, "params": {"gate": gate}}),
            &[],
        )
        .await;
    assert_eq!(created.status, 202, "{}", created.body);
    (created.body["id"].as_str().unwrap().to_owned(), gate)
}

fn is_preview(frame: &Frame) -> bool {
    frame.event() == "result" && frame.json()["data"]["name"] == "preview.txt"
}

async fn a_job_streams_every_event_from_creation_to_success() {
    let app = TestApp::spawn().await;
    let (id, gate) = job_behind_a_gate(&app, 7).await;

    let mut stream = app.open_events(&events_path(&id), &[]).await.stream();
    assert_eq!(stream.headers["cache-control"], "no-store");
    assert_eq!(stream.headers["x-accel-buffering"], "no");
    let first = stream.next_frame().await.expect("a first frame");
    assert_eq!(first.retry, Some(2000), "{first:?}");
    // Live: the job publishes its preview, then waits for the gate.
    let mut frames = stream.events_until(is_preview).await;
    std::fs::write(&gate, "go").unwrap();
    frames.extend(stream.rest().await);
    assert_eq!(frames.last().unwrap().event(), "succeeded");
    assert_frames_are_the_log(&frames, &event_list(&app, &id).await);

    // Nothing follows the last event: a reconnecting client is told to stop (204).
    let last = frames.last().unwrap().id().to_owned();
    let again = app
        .open_events(&events_path(&id), &[("last-event-id", &last)])
        .await
        .reply();
    assert_eq!(again.status, 204);
    // A finished job's stream from the start sends its whole log and ends.
    let replay = app
        .open_events(&events_path(&id), &[])
        .await
        .stream()
        .rest()
        .await;
    assert_frames_are_the_log(&replay, &event_list(&app, &id).await);

    for (last_event_id, status) in [("0", 200), (last.as_str(), 204)] {
        let head = app
            .request("head", &events_path(&id), |r| {
                r.header("accept", "text/event-stream")
                    .header("last-event-id", last_event_id)
            })
            .await;
        assert_eq!(head.status, status, "after {last_event_id}");
        assert!(head.bytes.is_empty());
    }
    let unknown = app
        .open_events(&events_path("job_00000000000000000000000000000000"), &[])
        .await
        .reply();
    unknown.assert_problem(404, "job_not_found");
    for bad in ["abc", "-1", "+1", "1.5", " "] {
        let reply = app
            .open_events(&events_path(&id), &[("last-event-id", bad)])
            .await
            .reply();
        reply.assert_problem(400, "invalid_last_event_id");
        // The JSON form reads it too.
        let json = app
            .request("get", &events_path(&id), |r| r.header("last-event-id", bad))
            .await;
        json.assert_problem(400, "invalid_last_event_id");
    }
    // `Last-Event-ID` replaces `after` in the JSON form too.
    let resumed = app
        .request("get", &format!("{}?after=0", events_path(&id)), |r| {
            r.header("last-event-id", "2")
        })
        .await;
    assert_eq!(items(&resumed)[0]["seq"], 3, "{}", resumed.body);
}

async fn a_stream_resumes_after_a_forced_disconnect_without_loss_or_duplicate() {
    let app = TestApp::spawn().await;
    let (id, gate) = job_behind_a_gate(&app, 8).await;

    let mut stream = app.open_events(&events_path(&id), &[]).await.stream();
    let mut frames = vec![
        stream.next_event().await.expect("queued"),
        stream.next_event().await.expect("started"),
    ];
    // The connection goes away mid-stream, while the job runs on.
    drop(stream);
    app.wait_job(&id, WITHIN, |j| j["result_count"] == 1).await;

    // Resumed from the last id received; the URL's own `after` (stale) loses to the header.
    let last = frames.last().unwrap().id().to_owned();
    let mut resumed = app
        .open_events(
            &format!("{}?after=0", events_path(&id)),
            &[("last-event-id", &last)],
        )
        .await
        .stream();
    frames.extend(resumed.events_until(is_preview).await);
    std::fs::write(&gate, "go").unwrap();
    frames.extend(resumed.rest().await);
    assert_eq!(frames.last().unwrap().event(), "succeeded");
    assert_frames_are_the_log(&frames, &event_list(&app, &id).await);
}

async fn an_idle_stream_gets_heartbeats() {
    let app = TestApp::spawn_with(TestConfig {
        heartbeat: "200ms",
        ..TestConfig::default()
    })
    .await;
    let gate = app.dir.path().join("gate");
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    for path in [events_path(&id), format!("/v1/events?job={id}")] {
        let mut stream = app.open_events(&path, &[]).await.stream();
        // Whatever events there are, then silence: the job waits for its gate.
        let beat = loop {
            let frame = stream.next_frame().await.expect("the stream goes on");
            if !frame.comments.is_empty() {
                break frame;
            }
        };
        assert_eq!(beat.comments, ["keep-alive"], "{path}");
        assert!(!beat.is_event());
    }
    std::fs::write(&gate, "go").unwrap();
}

async fn a_stream_ends_when_its_job_is_deleted() {
    let app = TestApp::spawn().await;
    let gate = app.dir.path().join("gate");
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    let mut stream = app.open_events(&events_path(&id), &[]).await.stream();
    stream.events_until(is_preview).await;
    assert_eq!(app.delete_job(&id).await.status, 204);
    // Ends, cleanly (a broken stream panics): with the cancellation, or as the job goes.
    let rest = stream.rest().await;
    assert!(
        rest.iter()
            .all(|f| matches!(f.event(), "progress" | "canceled")),
        "{rest:?}"
    );
    let gone = app.open_events(&events_path(&id), &[]).await.reply();
    gone.assert_problem(404, "job_not_found");
}

crate::matrix!(
    a_job_streams_every_event_from_creation_to_success,
    a_stream_resumes_after_a_forced_disconnect_without_loss_or_duplicate,
    an_idle_stream_gets_heartbeats,
    a_stream_ends_when_its_job_is_deleted,
);

/// A stream served by an API-only process follows events a separate worker process writes
/// (PostgreSQL: `NOTIFY`; SQLite: the stream's one-second re-read).
async fn a_stream_follows_events_written_by_another_process() {
    let mut app = TestApp::spawn_api_only(TestConfig::default()).await;
    app.spawn_worker();
    let gate = app.dir.path().join("gate");
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    let mut stream = app.open_events(&events_path(&id), &[]).await.stream();
    let mut frames = stream.events_until(is_preview).await;
    let mut feed = app
        .open_events(&format!("/v1/events?job={id}&type=succeeded"), &[])
        .await
        .stream();
    std::fs::write(&gate, "go").unwrap();
    frames.extend(stream.rest().await);
    assert_frames_are_the_log(&frames, &event_list(&app, &id).await);
    let done = feed.next_event().await.expect("the feed goes on");
    assert_eq!(done.event(), "succeeded");
    assert_eq!(done.json()["job_id"], id.as_str());
}

/// On SIGTERM, open streams end at once and cleanly, and the server exits: a stream does not
/// hold the shutdown up until its grace period runs out (after which the connection would be
/// cut, which the client sees as a broken stream).
async fn open_streams_end_cleanly_when_the_server_stops() {
    let mut app = TestApp::spawn_process(TestConfig::default()).await;
    let gate = app.dir.path().join("gate");
    let (id, _) = gated_job(&app, &app.base, &gate).await;
    let mut job_stream = app.open_events(&events_path(&id), &[]).await.stream();
    let mut feed = app.open_events("/v1/events", &[]).await.stream();
    job_stream.events_until(is_preview).await;
    feed.events_until(is_preview).await;

    let mut server = app.take_server_process().expect("a server process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    for stream in [&mut job_stream, &mut feed] {
        let rest = stream.rest().await;
        assert!(rest.iter().all(|f| f.event() != "succeeded"), "{rest:?}");
    }
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap()
        .expect("wait for the server");
    assert!(status.success(), "{status}");
}

crate::matrix!(
    a_stream_follows_events_written_by_another_process,
    open_streams_end_cleanly_when_the_server_stops,
);

/// Every event of `jobs`, as the feed must show them: the job's list items with `job_id`,
/// `job_kind` and `job_version` (these kinds have no versions), keyed by (job id, seq).
async fn expected_feed(app: &TestApp, jobs: &[(String, &str)]) -> Vec<Value> {
    let mut all = Vec::new();
    for (id, kind) in jobs {
        for mut item in event_list(app, id).await {
            item["job_id"] = json!(id);
            item["job_kind"] = json!(kind);
            item["job_version"] = Value::Null;
            all.push(item);
        }
    }
    all
}

/// Pages through `/v1/events?query` from `after` until `want` events have come (a page may
/// come back empty for a while on PostgreSQL, where another transaction of the server can hold
/// the feed back); returns them and the last `next`.
async fn read_feed(
    app: &TestApp,
    query: &str,
    after: Option<&str>,
    want: usize,
) -> (Vec<Value>, String) {
    let mut got = Vec::new();
    let mut after = after.map(str::to_owned);
    let start = std::time::Instant::now();
    loop {
        let cursor = after
            .as_deref()
            .map(|c| format!("&after={c}"))
            .unwrap_or_default();
        let reply = app.get(&format!("/v1/events?{query}{cursor}")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        got.extend(items(&reply).iter().cloned());
        after = Some(reply.body["next"].as_str().expect("next").to_owned());
        if got.len() >= want {
            return (got, after.unwrap());
        }
        assert!(
            start.elapsed() < WITHIN,
            "only {} of {want} events: {got:#?}",
            got.len()
        );
        if items(&reply).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn keys(items: &[Value]) -> Vec<(String, i64)> {
    items
        .iter()
        .map(|e| {
            (
                e["job_id"].as_str().unwrap().to_owned(),
                e["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// The feed holds every event of every job exactly once, each job's in `seq` order.
fn assert_is_the_feed(got: &[Value], expected: &[Value]) {
    let unique: BTreeSet<_> = keys(got).into_iter().collect();
    assert_eq!(unique.len(), got.len(), "no event twice: {:?}", keys(got));
    let mut sorted = got.to_vec();
    sorted.sort_by_key(|e| (e["job_id"].as_str().unwrap().to_owned(), e["seq"].as_i64()));
    let mut want = expected.to_vec();
    want.sort_by_key(|e| (e["job_id"].as_str().unwrap().to_owned(), e["seq"].as_i64()));
    assert_eq!(sorted, want);
    for job in unique.iter().map(|(j, _)| j) {
        let seqs: Vec<i64> = keys(got)
            .into_iter()
            .filter(|(j, _)| j == job)
            .map(|(_, s)| s)
            .collect();
        assert!(seqs.is_sorted(), "{job}: {seqs:?}");
    }
}

async fn finished_jobs(app: &TestApp) -> Vec<(String, &'static str)> {
    let mut jobs = Vec::new();
    for (n, kind) in ["digest", "model", "digest"].into_iter().enumerate() {
        let job = app.submit(kind, bytes(100, 20 + n as u64), json!({})).await;
        jobs.push((job["id"].as_str().unwrap().to_owned(), kind));
    }
    for (id, _) in &jobs {
        app.wait_status(id, "succeeded", WITHIN).await;
    }
    jobs
}

/// `after=now` is the feed's end: the position a reader of the whole feed reaches, and from it
/// only what happens afterwards — as a page and as a stream.
async fn the_feed_from_now_starts_at_its_end() {
    let app = TestApp::spawn().await;
    let before = finished_jobs(&app).await;
    let history = expected_feed(&app, &before).await;
    let (_, end) = read_feed(&app, "limit=100", None, history.len()).await;
    // On PostgreSQL a transaction of the server still open can hold the end back for a moment.
    let start = std::time::Instant::now();
    let now = loop {
        let now = app.get("/v1/events?after=now").await;
        assert_eq!(now.status, 200, "{}", now.body);
        assert!(
            items(&now).is_empty(),
            "nothing after now yet: {}",
            now.body
        );
        if now.body["next"] == end.as_str() || start.elapsed() > WITHIN {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        now.body["next"],
        end.as_str(),
        "now is where the whole feed ends"
    );
    let mut stream = app.open_events("/v1/events?after=now", &[]).await.stream();

    let job = app.submit("digest", bytes(100, 40), json!({})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.wait_status(&id, "succeeded", WITHIN).await;
    let expected = expected_feed(&app, &[(id.clone(), "digest")]).await;
    let (got, _) = read_feed(&app, "", Some(&end), expected.len()).await;
    assert_is_the_feed(&got, &expected);
    let streamed = stream.events_until(|f| f.event() == "succeeded").await;
    assert!(
        streamed.iter().all(|f| f.json()["job_id"] == id.as_str()),
        "the stream from now shows only the new job: {streamed:?}"
    );
    assert_eq!(streamed.len(), expected.len());

    let bad = app.get("/v1/events?after=later").await;
    bad.assert_problem(400, "invalid_query");
}

async fn the_feed_pages_through_every_event_once_with_filters() {
    let app = TestApp::spawn().await;
    let jobs = finished_jobs(&app).await;
    let expected = expected_feed(&app, &jobs).await;

    let (got, next) = read_feed(&app, "limit=2", None, expected.len()).await;
    assert_is_the_feed(&got, &expected);
    // At the end: an empty page that keeps the cursor.
    let end = app.get(&format!("/v1/events?after={next}")).await;
    assert_eq!(end.status, 200);
    assert!(items(&end).is_empty(), "{}", end.body);
    assert_eq!(end.body["next"], next.as_str());

    let count = |pred: &dyn Fn(&Value) -> bool| expected.iter().filter(|e| pred(e)).count();
    let (model_id, _) = &jobs[1];
    let cases = [
        (
            "type=succeeded".to_owned(),
            count(&|e| e["kind"] == "succeeded"),
        ),
        (
            "type=queued,started".to_owned(),
            count(&|e| e["kind"] == "queued" || e["kind"] == "started"),
        ),
        (
            "status=running".to_owned(),
            count(&|e| e["kind"] == "started"),
        ),
        (
            "status=succeeded,failed&type=succeeded".to_owned(),
            jobs.len(),
        ),
        (
            "kind=model".to_owned(),
            count(&|e| e["job_kind"] == "model"),
        ),
        ("kind=digest,model".to_owned(), expected.len()),
        (
            format!("job={model_id}"),
            count(&|e| e["job_id"] == model_id.as_str()),
        ),
        (format!("job={model_id}&type=result"), 2),
    ];
    for (query, want) in cases {
        let query = query.as_str();
        let (got, _) = read_feed(&app, query, None, want).await;
        let want_items: Vec<Value> = expected
            .iter()
            .filter(|e| got.iter().any(|g| g == *e))
            .cloned()
            .collect();
        assert_eq!(got.len(), want, "{query}");
        assert_is_the_feed(&got, &want_items);
        let filters: Vec<(&str, &str)> =
            query.split('&').filter_map(|p| p.split_once('=')).collect();
        for item in &got {
            for (name, values) in &filters {
                let field = match *name {
                    "type" => &item["kind"],
                    "status" => &item["data"]["status"],
                    "kind" => &item["job_kind"],
                    _ => &item["job_id"],
                };
                let value = field.as_str().unwrap_or_default();
                assert!(values.split(',').any(|v| v == value), "{query}: {item}");
            }
        }
    }
    // Nothing can match both: an empty page at once.
    let none = app.get("/v1/events?type=progress&status=succeeded").await;
    assert!(items(&none).is_empty(), "{}", none.body);

    for (query, field) in [
        ("type=finished", "type"),
        ("type=", "type"),
        ("status=done", "status"),
        ("kind=no-such-kind", "kind"),
        ("job=job_123", "job"),
        ("after=zzz", "after"),
        ("after=8000000000000000000000000000000f", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ] {
        let reply = app.get(&format!("/v1/events?{query}")).await;
        reply.assert_problem(400, "invalid_query");
        assert_eq!(reply.field_errors(), [field], "{query}");
    }
    let reply = app
        .request("get", "/v1/events", |r| r.header("last-event-id", "12"))
        .await;
    reply.assert_problem(400, "invalid_last_event_id");
    let reply = app
        .open_events("/v1/events", &[("last-event-id", "not-a-cursor")])
        .await
        .reply();
    reply.assert_problem(400, "invalid_last_event_id");
}

/// The feed's stream, cut after a few events and resumed with `Last-Event-ID`, misses nothing
/// and repeats nothing, then follows a new job live.
async fn the_feed_stream_resumes_with_last_event_id() {
    let app = TestApp::spawn().await;
    let mut jobs = finished_jobs(&app).await;
    let before = expected_feed(&app, &jobs).await;

    let mut stream = app.open_events("/v1/events", &[]).await.stream();
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(stream.next_event().await.expect("an event"));
    }
    drop(stream);
    let last = frames.last().unwrap().id().to_owned();
    let mut resumed = app
        .open_events(
            &format!("/v1/events?after={}", "0".repeat(32)),
            &[("last-event-id", &last)],
        )
        .await
        .stream();
    while frames.len() < before.len() {
        frames.push(resumed.next_event().await.expect("an event"));
    }
    // Live: a new job's events follow on the same stream.
    let job = app.submit("digest", bytes(100, 30), json!({})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let live = resumed
        .events_until(|f| f.event() == "succeeded" && f.json()["job_id"] == id.as_str())
        .await;
    frames.extend(live);
    jobs.push((id, "digest"));

    let ids: Vec<&str> = frames.iter().map(Frame::id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids (cursors) only grow: {ids:?}"
    );
    let got: Vec<Value> = frames.iter().map(Frame::json).collect();
    assert_is_the_feed(&got, &expected_feed(&app, &jobs).await);
    for frame in &frames {
        assert_eq!(frame.event(), frame.json()["kind"]);
    }
    // A stream's id is a cursor of the JSON form too.
    let (page, _) = read_feed(&app, "limit=1", Some(&last), 1).await;
    assert_eq!(page[0], frames[3].json());
}

crate::matrix!(
    the_feed_pages_through_every_event_once_with_filters,
    the_feed_from_now_starts_at_its_end,
    the_feed_stream_resumes_with_last_event_id,
);

/// PostgreSQL commits transactions in any order: an event whose id was taken first can become
/// visible after events with higher ids. The feed must neither skip it (as "id > cursor"
/// would) nor show the later events before it is decided.
async fn an_event_committed_late_with_a_lower_id_is_not_skipped() {
    let app = TestApp::spawn().await;
    let first = app.submit("digest", bytes(100, 40), json!({})).await;
    let first_id = first["id"].as_str().unwrap().to_owned();
    app.wait_status(&first_id, "succeeded", WITHIN).await;
    let (seen, cursor) = read_feed(&app, "", None, event_list(&app, &first_id).await.len()).await;

    // A transaction that appends an event (taking its id now) and stays open.
    let pool = sqlx::PgPool::connect(&app.database_url).await.unwrap();
    let mut held = pool.begin().await.unwrap();
    let late_id: i64 = sqlx::query_scalar(
        "INSERT INTO ferry_job_events (job_id, seq, kind, data, created_at_ms) \
         SELECT id, 1000, 'progress', \
                '{\"percent\": null, \"stage\": \"late\", \"message\": null, \"attempt\": 1}', \
                created_at_ms \
         FROM ferry_jobs WHERE id = $1 RETURNING id",
    )
    .bind(uuid::Uuid::parse_str(first_id.trim_start_matches("job_")).unwrap())
    .fetch_one(&mut *held)
    .await
    .unwrap();

    // Meanwhile another job's events commit, with higher ids.
    let second = app.submit("digest", bytes(100, 41), json!({})).await;
    let second_id = second["id"].as_str().unwrap().to_owned();
    app.wait_status(&second_id, "succeeded", WITHIN).await;
    let second_ids: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM ferry_job_events WHERE seq < 1000 AND job_id = $1")
            .bind(uuid::Uuid::parse_str(second_id.trim_start_matches("job_")).unwrap())
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        second_ids.iter().all(|id| *id > late_id),
        "the late event's id is lower"
    );

    // They are held back while the older transaction is open, not passed.
    let page = app.get(&format!("/v1/events?after={cursor}")).await;
    assert!(items(&page).is_empty(), "held back: {}", page.body);
    assert_eq!(page.body["next"], cursor.as_str());
    let mut stream = app
        .open_events("/v1/events", &[("last-event-id", &cursor)])
        .await
        .stream();

    held.commit().await.unwrap();
    let want = 1 + event_list(&app, &second_id).await.len();
    let (after, _) = read_feed(&app, "", Some(&cursor), want).await;
    assert_eq!(after.len(), want, "{after:#?}");
    assert_eq!(
        after[0]["data"]["stage"], "late",
        "the late event comes first"
    );
    let mut all = seen;
    all.extend(after.clone());
    let jobs = [(first_id, "digest"), (second_id, "digest")];
    assert_is_the_feed(&all, &expected_feed(&app, &jobs).await);
    // The stream, opened while they were held back, gets them too, in the same order.
    let mut streamed = Vec::new();
    for _ in 0..want {
        streamed.push(stream.next_event().await.expect("an event").json());
    }
    assert_eq!(streamed, after);
    pool.close().await;
}

#[tokio::test]
async fn an_event_committed_late_with_a_lower_id_is_not_skipped_on_postgres() {
    run_on(
        Backend::PostgresS3,
        an_event_committed_late_with_a_lower_id_is_not_skipped(),
    )
    .await
}
