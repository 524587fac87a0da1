//! Every error is an RFC 9457 problem, including the framework's own: unknown routes, wrong
//! methods, malformed ids and query strings. Plus the health endpoints.

use crate::helpers::*;

async fn unknown_routes_wrong_methods_and_bad_ids_are_problems() {
    let app = TestApp::spawn().await;
    let res = app.client.get(app.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let status = res.status().as_u16();
    assert_problem(status, &res.json().await.unwrap(), 404, "route_not_found");

    let res = app.client.put(app.url("/v1/jobs")).send().await.unwrap();
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let status = res.status().as_u16();
    assert_problem(
        status,
        &res.json().await.unwrap(),
        405,
        "method_not_allowed",
    );

    let (status, body) = app.get_json("/v1/jobs/not-a-job").await;
    assert_problem(status, &body, 404, "job_not_found");
    let (status, body) = app
        .get_json("/v1/jobs/upl_0193a1b2c3d47e8f9a0b1c2d3e4f5061")
        .await;
    assert_problem(status, &body, 404, "job_not_found");
    let (status, body) = app
        .get_json("/v1/uploads/job_0193a1b2c3d47e8f9a0b1c2d3e4f5061")
        .await;
    assert_problem(status, &body, 404, "upload_not_found");
    let (status, body) = app
        .get_json("/v1/jobs/job_0193a1b2c3d47e8f9a0b1c2d3e4f5061/events?after=x")
        .await;
    assert_problem(status, &body, 400, "invalid_query");
}

async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/healthz").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body["database"], "ok");
    assert_eq!(body["blob_store"], "ok");
}

crate::matrix!(
    unknown_routes_wrong_methods_and_bad_ids_are_problems,
    health_and_readiness_answer,
);
