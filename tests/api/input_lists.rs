//! Inputs that are lists of uploads (a CT series), on both backends: the handler gets a folder
//! with one file per upload, named after the uploads' filenames (made safe, numbered when
//! absent or taken), and the list's order in `$FERRY_INPUT_MANIFEST`; a job naming 2,000
//! uploads is created by one request; counts, sizes and bad items are refused naming the field.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{helpers::*, matrix};

matrix!(
    a_500_file_series_reaches_its_handler_as_a_folder_in_order,
    a_job_naming_2000_uploads_is_created_in_one_request,
    list_inputs_over_the_limits_or_naming_bad_uploads_are_refused_by_field,
);

/// Uploads `data` with `filename` (if any); its id.
async fn upload(app: &TestApp, data: Vec<u8>, filename: Option<&str>) -> String {
    let reply = app
        .request("post", "/v1/uploads", |r| match filename {
            Some(name) => r.query(&[("filename", name)]).body(data),
            None => r.body(data),
        })
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(reply.body["filename"], json!(filename));
    reply.body["id"].as_str().expect("id").to_owned()
}

async fn create_job(app: &TestApp, inputs: Value, params: Value) -> Reply {
    app.request("post", "/v1/jobs", |r| {
        r.json(&json!({"kind": "model", "inputs": inputs, "params": params}))
    })
    .await
}

/// 500 slices, uploaded under names whose order is not the series' (and some without a name,
/// two with the same name, one with a path in it): the handler finds them all in one folder,
/// with the right bytes, and the manifest lists them in the series' order.
async fn a_500_file_series_reaches_its_handler_as_a_folder_in_order() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    let mut expected: Vec<(String, String)> = Vec::new();
    for i in 0..500usize {
        let data = bytes(64 + i, i as u64);
        // A permutation of the numbers, so that name order is not list order.
        let filename = match i {
            7 | 8 => Some("same.dcm".to_owned()),
            9 => Some("../../escape.dcm".to_owned()),
            _ if i % 50 == 3 => None,
            _ => Some(format!("IM-{:04}.dcm", (i * 7 + 11) % 500)),
        };
        let file = match (i, &filename) {
            (8, _) => "same-0009.dcm".to_owned(),
            (9, _) => "escape.dcm".to_owned(),
            (_, None) => format!("{:04}", i + 1),
            (_, Some(name)) => name.clone(),
        };
        expected.push((format!("series/{file}"), sha256_hex(&data)));
        ids.push(upload(&app, data, filename.as_deref()).await);
    }
    let note = upload(&app, b"ward 4".to_vec(), Some("note.txt")).await;
    let reply = create_job(
        &app,
        json!({"series": ids, "note": note}),
        json!({"mode": "manifest"}),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let inputs = reply.body["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 501);
    // The job shows the note first (name order), then the series in its order.
    assert_eq!(inputs[0]["name"], "note");
    assert_eq!(inputs[0]["file"], "note");
    for (i, input) in inputs[1..].iter().enumerate() {
        assert_eq!(input["name"], "series");
        assert_eq!(input["position"], i);
        assert_eq!(input["upload_id"], ids[i]);
        assert_eq!(input["file"], expected[i].0);
    }
    let id = reply.body["id"].as_str().expect("id");
    let job = app
        .wait_job(id, Duration::from_secs(120), |j| {
            j["status"] == "succeeded" || j["status"] == "failed"
        })
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let seen = app
        .request(
            "get",
            &format!("/v1/jobs/{id}/results/manifest.json"),
            |r| r,
        )
        .await;
    assert_eq!(seen.status, 200);
    let seen: Value = serde_json::from_slice(&seen.bytes).expect("manifest.json");
    let series = seen["inputs"]["series"].as_array().expect("series list");
    assert_eq!(series.len(), 500);
    for (i, (file, sha)) in expected.iter().enumerate() {
        assert_eq!(series[i]["file"], *file, "item {i}");
        assert_eq!(series[i]["sha256"], *sha, "item {i}");
    }
    assert_eq!(seen["inputs"]["note"]["file"], "note");
    assert_eq!(seen["inputs"]["note"]["sha256"], sha256_hex(b"ward 4"));
    let mut in_folder: Vec<String> = expected
        .iter()
        .map(|(f, _)| f.trim_start_matches("series/").to_owned())
        .collect();
    in_folder.sort();
    assert_eq!(seen["folders"]["series"], json!(in_folder));
}

/// One request names 2,000 uploads as one list input; the time it took is printed (the
/// benchmark's business, not an assertion).
async fn a_job_naming_2000_uploads_is_created_in_one_request() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..2000usize {
        ids.push(upload(&app, bytes(16, i as u64), Some(&format!("s{i}.dcm"))).await);
    }
    let start = Instant::now();
    let reply = create_job(&app, json!({"series": ids}), json!({"mode": "manifest"})).await;
    let took = start.elapsed();
    assert_eq!(reply.status, 202, "{}", reply.body);
    eprintln!(
        "a job naming 2,000 uploads was created in {took:?} ({:?})",
        backend()
    );
    let id = reply.body["id"].as_str().expect("id");
    let job = app.job(id).await;
    assert_eq!(job["inputs"].as_array().map(Vec::len), Some(2000));
    assert_eq!(job["inputs"][1999]["file"], "series/s1999.dcm");
    // Every upload is held by the job now, and may be the input of another.
    let held = app.get_upload(&ids[1234]).await;
    assert_eq!(held.body["job_count"], 1, "{}", held.body);
    let again = create_job(&app, json!({"again": [ids[1234]]}), json!({})).await;
    assert_eq!(again.status, 202, "{}", again.body);
    let held = app.get_upload(&ids[1234]).await;
    assert_eq!(held.body["job_count"], 2, "{}", held.body);
}

async fn list_inputs_over_the_limits_or_naming_bad_uploads_are_refused_by_field() {
    let app = TestApp::spawn_with(TestConfig {
        extra_limits: "max_inputs_per_job = 3\nmax_job_input_bytes = 1000",
        ..TestConfig::default()
    })
    .await;
    let a = upload(&app, bytes(100, 1), None).await;
    let b = upload(&app, bytes(100, 2), None).await;
    let c = upload(&app, bytes(100, 3), None).await;
    let d = upload(&app, bytes(100, 4), None).await;
    let big = upload(&app, bytes(950, 5), None).await;
    let missing = "upl_00000000000000000000000000000000";
    let cases = [
        (json!({"series": [a, b], "one": c, "more": [d]}), "inputs"),
        (json!({"series": [a, b, a]}), "inputs.series[2]"),
        (json!({"series": [a, missing]}), "inputs.series[1]"),
        (json!({"series": [a, "not-an-id"]}), "inputs.series[1]"),
        (json!({"series": []}), "inputs.series"),
        (json!({"series": [a, big]}), "inputs"),
    ];
    for (inputs, field) in cases {
        let reply = create_job(&app, inputs.clone(), json!({})).await;
        assert_problem(reply.status, &reply.body, 422, "invalid_field");
        assert_eq!(
            reply.body["errors"][0]["field"], field,
            "{inputs}: {}",
            reply.body
        );
    }
    // None of them took an upload.
    let ok = create_job(
        &app,
        json!({"series": [a, b, c]}),
        json!({"mode": "manifest"}),
    )
    .await;
    assert_eq!(ok.status, 202, "{}", ok.body);
}
