//! Wire types of kinds, their versions, tags and the workers serving them (`/v1/kinds`).

use serde::{Deserialize, Serialize};

use crate::{
    domain::serve_key,
    service::{kinds::KindView, workers::serves_of},
    storage::entities::{kind_tag, tag_move, worker},
    time::to_rfc3339,
};

/// A live worker process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerOut {
    pub id: String,
    pub hostname: String,
    pub pid: i64,
    pub started_at: String,
    pub last_seen_at: String,
    /// `kind`, or `kind@version`, for each handler it runs.
    pub serves: Vec<String>,
}

impl From<&worker::Model> for WorkerOut {
    fn from(w: &worker::Model) -> Self {
        Self {
            id: w.id.clone(),
            hostname: w.hostname.clone(),
            pid: w.pid,
            started_at: to_rfc3339(w.started_at_ms),
            last_seen_at: to_rfc3339(w.last_seen_ms),
            serves: serves_of(w),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionOut {
    pub name: String,
    pub timeout_seconds: f64,
    pub max_attempts: u32,
    /// Jobs of this version one worker runs at once.
    pub concurrency: usize,
    /// The live workers that serve it (their ids).
    pub served_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagOut {
    pub kind: String,
    pub tag: String,
    pub version: String,
    pub moved_at: String,
    /// `key:<id>` (the key that moved it), `config` or `anonymous`.
    pub moved_by: String,
}

impl From<&kind_tag::Model> for TagOut {
    fn from(t: &kind_tag::Model) -> Self {
        Self {
            kind: t.kind.clone(),
            tag: t.tag.clone(),
            version: t.version.clone(),
            moved_at: to_rfc3339(t.moved_at_ms),
            moved_by: t.moved_by.clone(),
        }
    }
}

/// `PUT /v1/kinds/{kind}/tags/{tag}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagIn {
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindOut {
    pub kind: String,
    /// The kind's own defaults (a kind without versions), or its versions' defaults.
    pub timeout_seconds: f64,
    pub max_attempts: u32,
    /// Empty for a kind without versions.
    pub versions: Vec<VersionOut>,
    pub tags: Vec<TagOut>,
    /// What a job naming the bare kind runs now: the `production` tag's version, the
    /// `default_version`, or the only version; null for a kind without versions (or when none
    /// of these exists).
    pub resolves_to: Option<String>,
    pub default_version: Option<String>,
    /// The live workers serving the kind (any of its versions).
    pub served_by: Vec<String>,
}

impl KindOut {
    /// `view`, with the workers among `live` that serve it.
    pub fn of(view: &KindView, resolves_to: Option<String>, live: &[worker::Model]) -> Self {
        let serving = |key: &str| -> Vec<String> {
            live.iter()
                .filter(|w| serves_of(w).iter().any(|s| s == key))
                .map(|w| w.id.clone())
                .collect()
        };
        let versions: Vec<VersionOut> = view
            .defaults
            .versions
            .iter()
            .map(|(name, d)| VersionOut {
                name: name.clone(),
                timeout_seconds: d.timeout.as_secs_f64(),
                max_attempts: d.max_attempts,
                concurrency: d.concurrency,
                served_by: serving(&serve_key(&view.kind, Some(name))),
            })
            .collect();
        let served_by = if versions.is_empty() {
            serving(&view.kind)
        } else {
            let mut all: Vec<String> = versions
                .iter()
                .flat_map(|v| v.served_by.iter().cloned())
                .collect();
            all.sort();
            all.dedup();
            all
        };
        Self {
            kind: view.kind.clone(),
            timeout_seconds: view.defaults.timeout.as_secs_f64(),
            max_attempts: view.defaults.max_attempts,
            versions,
            tags: view.tags.values().map(TagOut::from).collect(),
            resolves_to,
            default_version: view.defaults.default_version.clone(),
            served_by,
        }
    }
}

/// `GET /v1/kinds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindList {
    pub items: Vec<KindOut>,
    /// Every live worker process.
    pub workers: Vec<WorkerOut>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagMoveOut {
    pub kind: String,
    pub tag: String,
    /// Null: the tag was made by this move.
    pub from_version: Option<String>,
    /// Null: the tag was deleted by this move.
    pub to_version: Option<String>,
    pub moved_at: String,
    pub moved_by: String,
    /// The tenant of the key that moved it, if a key did.
    pub tenant: Option<String>,
}

impl From<&tag_move::Model> for TagMoveOut {
    fn from(m: &tag_move::Model) -> Self {
        Self {
            kind: m.kind.clone(),
            tag: m.tag.clone(),
            from_version: m.from_version.clone(),
            to_version: m.to_version.clone(),
            moved_at: to_rfc3339(m.moved_at_ms),
            moved_by: m.moved_by.clone(),
            tenant: m.tenant.clone(),
        }
    }
}

/// `GET /v1/kinds/{kind}/tag-moves`: newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagMoveList {
    pub items: Vec<TagMoveOut>,
    pub next: Option<String>,
}
