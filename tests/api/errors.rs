//! Every error is an RFC 9457 problem, including the framework's own: unknown routes, wrong
//! methods, malformed ids and query strings. Plus the health endpoints.

use crate::helpers::*;

async fn unknown_routes_wrong_methods_and_bad_ids_are_problems() {
    let app = TestApp::spawn().await;
    let reply = app.get("/v2/nothing").await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.assert_problem(404, "route_not_found");
    let reply = app.request("put", "/v1/jobs", |r| r).await;
    assert_eq!(
        reply.header("content-type"),
        Some("application/problem+json")
    );
    reply.assert_problem(405, "method_not_allowed");

    app.get_job("not-a-job")
        .await
        .assert_problem(404, "job_not_found");
    app.get_job("upl_0193a1b2c3d47e8f9a0b1c2d3e4f5061")
        .await
        .assert_problem(404, "job_not_found");
    app.get_upload("job_0193a1b2c3d47e8f9a0b1c2d3e4f5061")
        .await
        .assert_problem(404, "upload_not_found");
    app.job_events("job_0193a1b2c3d47e8f9a0b1c2d3e4f5061", "after=x")
        .await
        .assert_problem(400, "invalid_query");
}

async fn health_and_readiness_answer() {
    let app = TestApp::spawn().await;
    let health = app.healthz().await;
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("ok"))
    );
    let ready = app.readyz().await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["status"], "ok");
    assert_eq!(ready.body["database"], "ok");
    assert_eq!(ready.body["blob_store"], "ok");
}

crate::matrix!(
    unknown_routes_wrong_methods_and_bad_ids_are_problems,
    health_and_readiness_answer,
);
