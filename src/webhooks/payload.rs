//! What a webhook sends: one event of a job's log, in the envelope Standard Webhooks suggests
//! (`type`, `timestamp`, `data`). Built from the event row when it is sent, so every retry of a
//! delivery sends the same bytes' meaning, and the event's id doubles as the `webhook-id`
//! receivers deduplicate on.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{domain::JobStatus, ids::JobId, storage::entities::job_event, time::to_rfc3339};

/// The id of event `seq` of job `job_id`: the payload's `id` and the `webhook-id` header.
pub fn event_id(job_id: Uuid, seq: i64) -> String {
    format!("evt_{}_{seq}", job_id.simple())
}

/// The JSON body for `event` of a job of kind `kind` running `version` (`None`: a kind without
/// versions). `public_url`, when configured, makes the links absolute.
pub fn body(
    event: &job_event::Model,
    kind: &str,
    version: Option<&str>,
    public_url: Option<&str>,
) -> String {
    let data: Value = serde_json::from_str(&event.data).unwrap_or_else(|_| json!({}));
    let event_type = sea_orm::ActiveEnum::to_value(&event.kind);
    let base = public_url.unwrap_or("").trim_end_matches('/');
    let job_path = format!("/v1/jobs/{}", JobId(event.job_id));
    // Progress and results happen only while the job runs; state changes carry their status.
    let status = data
        .get("status")
        .cloned()
        .unwrap_or_else(|| json!(JobStatus::Running));
    let mut out = json!({
        "job_id": JobId(event.job_id).to_string(),
        "kind": kind,
        "version": version,
        "seq": event.seq,
        "status": status,
        "attempt": data.get("attempt").cloned().unwrap_or(Value::Null),
        "progress": Value::Null,
        "links": {"job": format!("{base}{job_path}"), "events": format!("{base}{job_path}/events")},
    });
    match event_type.as_str() {
        "progress" => {
            out["progress"] = json!({
                "percent": data.get("percent"), "stage": data.get("stage"),
                "message": data.get("message"),
            });
        }
        "result" => {
            let name = data.get("name").and_then(Value::as_str).unwrap_or_default();
            out["result"] = json!({
                "name": name, "final": data.get("final"), "size": data.get("size"),
                "sha256": data.get("sha256"), "content_type": data.get("content_type"),
                "url": format!("{base}{job_path}/results/{name}"),
            });
        }
        _ => {}
    }
    if let Some(error) = data.get("error") {
        out["error"] = error.clone();
    }
    if let Some(retry_at) = data.get("retry_at") {
        out["retry_at"] = retry_at.clone();
    }
    json!({
        "id": event_id(event.job_id, event.seq),
        "type": event_type,
        "timestamp": to_rfc3339(event.created_at_ms),
        "data": out,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    #[test]
    fn a_result_event_carries_its_result_and_url() {
        let job = Uuid::now_v7();
        let event = job_event::Model {
            id: 1,
            job_id: job,
            seq: 4,
            kind: EventKind::Result,
            data: json!({"name": "mask.png", "final": true, "size": 10, "sha256": "ab",
                         "content_type": "image/png", "attempt": 1})
            .to_string(),
            created_at_ms: 0,
            tx: 0,
            tenant: "default".into(),
        };
        let body: Value =
            serde_json::from_str(&body(&event, "seg", Some("v3"), Some("https://f.example/")))
                .unwrap();
        assert_eq!(body["type"], "result");
        assert_eq!(body["id"], event_id(job, 4));
        assert_eq!(body["data"]["status"], "running");
        assert_eq!(body["data"]["attempt"], 1);
        assert_eq!(body["data"]["kind"], "seg");
        assert_eq!(body["data"]["version"], "v3");
        assert_eq!(
            body["data"]["result"]["url"],
            format!("https://f.example/v1/jobs/{}/results/mask.png", JobId(job))
        );
    }
}
