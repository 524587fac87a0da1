//! A job's inputs as the client names them — one upload (`"scan": "upl_…"`) or an ordered list
//! of uploads (`"series": ["upl_a", "upl_b", …]`, a CT series of hundreds of slices) — checked
//! and resolved to the rows the job records: one per upload, each with its path under the
//! handler's input folder. A list becomes a folder, `series/`, with one file per upload named
//! after the upload's `filename` (made safe; numbered when absent or taken).
//!
//! The uploads are looked up in batches, not one query each: a job with 2,000 inputs is created
//! by one request in a fraction of a second.

use std::collections::{BTreeMap, HashMap, HashSet};

use sea_orm::{ColumnTrait, QueryFilter, sea_query::ExprTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ServiceError, ServiceResult, Services};
use crate::{
    domain::validate_input_name,
    ids::UploadId,
    storage::{entities::upload, tenancy},
    tenancy::Tenant,
    time::now_ms,
};

/// Uploads looked up per query.
const LOOKUP_BATCH: usize = 500;

/// What the client named an input: one upload or an ordered list of them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InputRef {
    One(String),
    List(Vec<String>),
}

/// An upload becoming a job's input.
pub(super) enum InputUpload {
    /// Recorded earlier (`POST /v1/uploads`): attached to the job in its transaction.
    Recorded(upload::Model),
    /// Stored by this request (the one-request form) but not recorded yet: recorded, already
    /// attached, in the job's transaction.
    Stored(upload::Model),
}

impl InputUpload {
    pub(super) fn row(&self) -> &upload::Model {
        match self {
            InputUpload::Recorded(row) | InputUpload::Stored(row) => row,
        }
    }
}

/// One upload of a job, where the handler will find it.
pub(super) struct PlannedInput {
    /// The input's name, or for an item of a list its path (`series/IM-0001.dcm`).
    pub path: String,
    /// For an item of a list: the list's name and the item's place in it.
    pub list: Option<(String, i32)>,
    pub upload: InputUpload,
}

impl PlannedInput {
    /// An input of one upload.
    pub(super) fn single(name: String, upload: InputUpload) -> Self {
        PlannedInput {
            path: name,
            list: None,
            upload,
        }
    }

    /// The order a job shows its inputs in: by name, a list's items in their order.
    pub(super) fn order_key(&self) -> (&str, i32) {
        match &self.list {
            Some((name, position)) => (name, *position),
            None => (&self.path, -1),
        }
    }
}

/// An upload id as the client wrote it, with the field to blame if it is wrong.
struct Named {
    field: String,
    id: UploadId,
}

impl Services {
    /// Checks the inputs' names, counts and sizes and finds their uploads, which must exist, be
    /// unexpired (or held by another job: an upload may be the input of many) and be named
    /// once.
    pub(super) async fn recorded_inputs(
        &self,
        tenant: &Tenant,
        inputs: BTreeMap<String, InputRef>,
    ) -> ServiceResult<Vec<PlannedInput>> {
        if inputs.is_empty() {
            return Err(ServiceError::invalid(
                "inputs",
                "a job needs at least one input: {\"NAME\": \"upl_…\"} or \
                 {\"NAME\": [\"upl_…\", …]}",
            ));
        }
        let limits = &self.settings.limits;
        let mut named: Vec<(String, Option<Vec<Named>>, Option<Named>)> = Vec::new();
        let mut count = 0usize;
        for (name, reference) in &inputs {
            let field = format!("inputs.{name}");
            validate_input_name(name)
                .map_err(|msg| ServiceError::invalid(&field, format!("input name {msg}")))?;
            match reference {
                InputRef::One(text) => {
                    count += 1;
                    named.push((name.clone(), None, Some(parse_id(&field, text)?)));
                }
                InputRef::List(texts) => {
                    if texts.is_empty() {
                        return Err(ServiceError::invalid(
                            &field,
                            "a list input needs at least one upload",
                        ));
                    }
                    count += texts.len();
                    let items = texts
                        .iter()
                        .enumerate()
                        .map(|(i, text)| parse_id(&format!("{field}[{i}]"), text))
                        .collect::<ServiceResult<Vec<_>>>()?;
                    named.push((name.clone(), Some(items), None));
                }
            }
            if count > limits.max_inputs_per_job {
                return Err(ServiceError::invalid(
                    "inputs",
                    format!(
                        "a job takes at most {} uploads as inputs (limits.max_inputs_per_job)",
                        limits.max_inputs_per_job
                    ),
                ));
            }
        }
        let all: Vec<&Named> = named
            .iter()
            .flat_map(|(_, list, one)| list.iter().flatten().chain(one.iter()))
            .collect();
        let mut seen = HashSet::new();
        for item in &all {
            if !seen.insert(item.id.0) {
                return Err(ServiceError::invalid(
                    &item.field,
                    format!("upload {} is named twice among the inputs", item.id),
                ));
            }
        }
        let mut rows = self.find_uploads(tenant, &all).await?;
        let mut total = 0u64;
        let mut take = |item: &Named| -> ServiceResult<upload::Model> {
            let row = rows.remove(&item.id.0).ok_or_else(|| {
                ServiceError::invalid(
                    &item.field,
                    format!(
                        "no upload {}: it never existed, expired or was deleted",
                        item.id
                    ),
                )
            })?;
            total += u64::try_from(row.size).unwrap_or(0);
            Ok(row)
        };
        let mut planned = Vec::with_capacity(all.len());
        for (name, list, one) in &named {
            if let Some(item) = one {
                let row = take(item)?;
                planned.push(PlannedInput::single(
                    name.clone(),
                    InputUpload::Recorded(row),
                ));
            }
            if let Some(items) = list {
                let mut files = FolderNames::new(items.len());
                for (position, item) in items.iter().enumerate() {
                    let row = take(item)?;
                    let file = files.name(row.filename.as_deref(), position);
                    planned.push(PlannedInput {
                        path: format!("{name}/{file}"),
                        list: Some((name.clone(), position as i32)),
                        upload: InputUpload::Recorded(row),
                    });
                }
            }
        }
        if total > limits.max_job_input_bytes {
            return Err(ServiceError::invalid(
                "inputs",
                format!(
                    "the inputs add up to {total} bytes; a job takes at most {} \
                     (limits.max_job_input_bytes)",
                    limits.max_job_input_bytes
                ),
            ));
        }
        Ok(planned)
    }

    /// `tenant`'s unexpired uploads among `items`, by id, in a few queries.
    async fn find_uploads(
        &self,
        tenant: &Tenant,
        items: &[&Named],
    ) -> ServiceResult<HashMap<Uuid, upload::Model>> {
        let now = now_ms();
        let mut found = HashMap::with_capacity(items.len());
        for batch in items.chunks(LOOKUP_BATCH) {
            let ids: Vec<Uuid> = batch.iter().map(|item| item.id.0).collect();
            let rows = tenancy::find::<upload::Entity>(tenant)
                .filter(upload::Column::Id.is_in(ids))
                .filter(
                    upload::Column::ExpiresAtMs
                        .is_null()
                        .or(upload::Column::ExpiresAtMs.gt(now)),
                )
                .all(&self.db.orm)
                .await?;
            found.extend(rows.into_iter().map(|row| (row.id, row)));
        }
        Ok(found)
    }
}

fn parse_id(field: &str, text: &str) -> ServiceResult<Named> {
    let id = UploadId::parse(text).ok_or_else(|| {
        ServiceError::invalid(field, format!("{text:?} is not an upload id (upl_…)"))
    })?;
    Ok(Named {
        field: field.to_owned(),
        id,
    })
}

/// The file names of one list input's folder: each upload's own name made safe, numbered
/// (`0007`) when it has none, and numbered after its stem (`IM-0001-7.dcm`) when the name is
/// taken, so that no file replaces another.
struct FolderNames {
    taken: HashSet<String>,
    /// Digits of the numbers, so that numbered files sort in list order.
    width: usize,
}

impl FolderNames {
    fn new(count: usize) -> Self {
        FolderNames {
            taken: HashSet::with_capacity(count),
            width: count.to_string().len().max(4),
        }
    }

    fn name(&mut self, filename: Option<&str>, position: usize) -> String {
        let number = format!("{:0width$}", position + 1, width = self.width);
        let name = match filename.and_then(safe_file_name) {
            None => number.clone(),
            Some(safe) if self.taken.contains(&safe) => {
                match safe.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()) {
                    Some((stem, ext)) => format!("{stem}-{number}.{ext}"),
                    None => format!("{safe}-{number}"),
                }
            }
            Some(safe) => safe,
        };
        // A numbered name may itself be taken (a client named a file `0003`): number it again.
        let mut unique = name.clone();
        let mut again = 1;
        while !self.taken.insert(unique.clone()) {
            again += 1;
            unique = format!("{name}-{again}");
        }
        unique
    }
}

/// A client's file name as a safe file name: its last path segment, characters outside
/// letters, digits, `-`, `_` and `.` replaced by `_`, no leading dot, at most 128 bytes.
/// `None` when nothing usable is left.
fn safe_file_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let mut safe: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while safe.starts_with('.') {
        safe.remove(0);
    }
    safe.truncate(128);
    let usable = !safe.is_empty() && safe.chars().any(|c| c != '_' && c != '.');
    (usable && validate_input_name(&safe).is_ok()).then_some(safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_made_safe() {
        assert_eq!(
            safe_file_name("IM-0001.dcm").as_deref(),
            Some("IM-0001.dcm")
        );
        assert_eq!(
            safe_file_name("../../etc/passwd").as_deref(),
            Some("passwd")
        );
        assert_eq!(
            safe_file_name("C:\\scans\\a b.dcm").as_deref(),
            Some("a_b.dcm")
        );
        assert_eq!(safe_file_name(".hidden").as_deref(), Some("hidden"));
        assert_eq!(safe_file_name("...").as_deref(), None);
        assert_eq!(safe_file_name("").as_deref(), None);
        assert_eq!(safe_file_name("ünï").as_deref(), Some("_n_"));
        assert_eq!(safe_file_name("üü").as_deref(), None);
        assert_eq!(safe_file_name(&"x".repeat(300)).map(|s| s.len()), Some(128));
    }

    #[test]
    fn folder_names_are_unique_and_numbered_in_order() {
        let mut names = FolderNames::new(12);
        assert_eq!(names.name(Some("a.dcm"), 0), "a.dcm");
        assert_eq!(names.name(Some("a.dcm"), 1), "a-0002.dcm");
        assert_eq!(names.name(None, 2), "0003");
        assert_eq!(names.name(Some("0004"), 3), "0004");
        assert_eq!(names.name(None, 3), "0004-2");
        assert_eq!(names.name(Some("noext"), 5), "noext");
        assert_eq!(names.name(Some("noext"), 6), "noext-0007");
        assert_eq!(names.name(Some("..."), 7), "0008");
    }
}
