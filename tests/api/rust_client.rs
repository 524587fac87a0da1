//! The generated Rust client (`ferry-client`, progenitor) against a live server: the whole flow
//! and typed problems, as a user of the crate writes it.

use std::{collections::HashMap, time::Duration};

use ferry_client::{
    Client, Error,
    reqwest::Body,
    types::{self, JobStatus},
};
use futures_util::StreamExt;
use serde_json::Value;

use crate::helpers::{TestApp, bytes, sha256_hex};

/// A client sending `key` on every request, as a user of the crate builds one: progenitor's
/// client over a reqwest client with the `Authorization` header as a default.
fn keyed_client(base: &str, key: &str) -> Client {
    let mut headers = ferry_client::reqwest::header::HeaderMap::new();
    let mut value: ferry_client::reqwest::header::HeaderValue =
        format!("Bearer {key}").parse().expect("a header value");
    value.set_sensitive(true);
    headers.insert(ferry_client::reqwest::header::AUTHORIZATION, value);
    let http = ferry_client::reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a reqwest client");
    Client::new_with_client(base, http)
}

/// A key with every scope, once the server has noticed that keys exist.
async fn key_of(app: &TestApp) -> String {
    let key = app.create_key(
        "default",
        &["jobs:read", "jobs:write", "results:read", "admin"],
    );
    app.wait_keys_required(&app.base).await;
    key
}

/// Polls the job, waiting what `Retry-After` says between polls, until `done` holds.
async fn poll(client: &Client, id: &str, done: impl Fn(&types::Job) -> bool) -> types::Job {
    for _ in 0..60 {
        let answer = client.get_job().id(id).send().await.unwrap();
        let retry_after = answer.headers().get("retry-after").cloned();
        let job = answer.into_inner();
        if done(&job) {
            return job;
        }
        // An unfinished job always says when to look again.
        let secs: u64 = retry_after
            .expect("Retry-After on an unfinished job")
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    panic!("job {id} never reached the expected state");
}

async fn the_generated_client_runs_the_whole_flow() {
    let app = TestApp::spawn().await;
    let key = key_of(&app).await;
    let client = keyed_client(&app.base, &key);
    let data = bytes(2 * 1024 * 1024 + 3, 51);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        data.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let upload = client
        .create_upload()
        .body(Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status().as_u16(), 201);
    let upload = upload.into_inner();
    assert_eq!(upload.sha256.as_str(), sha256_hex(&data));

    // The JSON form, with the upload as input `scan`.
    let inputs: HashMap<String, types::JobInInputsValue> = [(
        "scan".to_owned(),
        types::UploadRef::try_from(upload.id.as_str())
            .unwrap()
            .into(),
    )]
    .into();
    let job = client
        .create_job()
        .body(types::JobIn::builder().kind("digest").inputs(inputs))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status().as_u16(), 202);
    let job = poll(&client, job.id.as_str(), |j| {
        j.status == JobStatus::Succeeded
    })
    .await;
    assert!(job.error.is_none());

    let results = client
        .list_job_results()
        .id(job.id.as_str())
        .send()
        .await
        .unwrap()
        .into_inner();
    let report = results
        .items
        .iter()
        .find(|r| r.name.as_str() == "report.json")
        .expect("report.json");
    let mut body = client
        .download_job_result()
        .id(job.id.as_str())
        .name(report.name.as_str())
        .send()
        .await
        .unwrap()
        .into_inner();
    let mut downloaded = Vec::new();
    while let Some(chunk) = body.next().await {
        downloaded.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(sha256_hex(&downloaded), report.sha256.as_str());
    let report: Value = serde_json::from_slice(&downloaded).unwrap();
    assert_eq!(report["inputs"][0]["sha256"], sha256_hex(&data));

    let events = client
        .list_job_events()
        .id(job.id.as_str())
        .send()
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<String> = events.items.iter().map(|e| e.kind.to_string()).collect();
    let raw = app
        .request(
            "get",
            &format!("/v1/jobs/{}/events", job.id.as_str()),
            |r| r.bearer_auth(&key),
        )
        .await;
    let raw_kinds: Vec<&str> = crate::helpers::items(&raw)
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, raw_kinds);

    // The one-request form: the file as the body, the input name and params in the query.
    let one = client
        .create_job_with_file()
        .kind("model")
        .input("scan")
        .params_json(r#"{"mode":"sleep"}"#)
        .body(bytes(1000, 52))
        .send()
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.inputs[0].name.as_str(), "scan");
    poll(&client, one.id.as_str(), |j| j.status == JobStatus::Running).await;
    client
        .cancel_job()
        .id(one.id.as_str())
        .send()
        .await
        .unwrap();
    let canceled = poll(&client, one.id.as_str(), |j| {
        j.status.to_string() == "canceled"
    })
    .await;
    assert_eq!(canceled.status, JobStatus::Canceled);

    let deleted = client
        .delete_job()
        .id(one.id.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status().as_u16(), 204);
    let pages = client.list_uploads().send().await.unwrap().into_inner();
    assert_eq!(
        pages.items.len(),
        1,
        "the canceled job's input went with it"
    );
}

async fn errors_arrive_as_typed_problems() {
    let app = TestApp::spawn().await;
    let client = keyed_client(&app.base, &key_of(&app).await);
    let problem = |err: Error<types::Problem>| match err {
        Error::ErrorResponse(answer) => answer.into_inner(),
        other => panic!("not a problem answer: {other}"),
    };
    // Without the key: a typed 401.
    let anonymous = Client::new(&app.base)
        .list_jobs()
        .send()
        .await
        .map(|_| ())
        .map_err(problem)
        .unwrap_err();
    assert_eq!(
        (anonymous.code.as_str(), anonymous.status),
        ("unauthenticated", 401)
    );
    let missing = client
        .get_job()
        .id("job_0192f1d4a8e97c3b9e5d2a7f6c1b0e34")
        .send()
        .await
        .map(|_| ())
        .map_err(problem)
        .unwrap_err();
    assert_eq!(missing.code.as_str(), "job_not_found");
    assert_eq!(missing.status, 404);
    let inputs: HashMap<String, types::JobInInputsValue> = HashMap::new();
    let unknown = client
        .create_job()
        .body(types::JobIn::builder().kind("no-such-kind").inputs(inputs))
        .send()
        .await
        .map(|_| ())
        .map_err(problem)
        .unwrap_err();
    assert_eq!(unknown.code.as_str(), "unknown_kind");
    assert_eq!(unknown.status, 422);
}

crate::matrix!(
    the_generated_client_runs_the_whole_flow,
    errors_arrive_as_typed_problems,
);
