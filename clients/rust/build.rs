//! Generates the client from the repository's `openapi.yaml` into `$OUT_DIR/ferry_api.rs` on
//! every build where the spec changed.

use std::{env, fs, path::PathBuf};

fn main() {
    let spec_path =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../openapi.yaml");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = fs::read_to_string(&spec_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", spec_path.display()));
    let mut spec: openapiv3::OpenAPI = serde_norway::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not OpenAPI 3.0: {err}", spec_path.display()));
    drop_tus(&mut spec);
    drop_bodiless_successes(&mut spec);
    drop_optional_auth_refusals(&mut spec);
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let tokens = progenitor::Generator::new(&settings)
        .generate_tokens(&spec)
        .unwrap_or_else(|err| panic!("progenitor cannot generate from the spec: {err}"));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("ferry_api.rs");
    fs::write(&out, tokens.to_string())
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", out.display()));
}

/// The tus endpoints (`/v1/tus…`) are for tus clients (tus-js-client, tuspy, …), which speak a
/// protocol whose answers are headers and whose bodies are `application/offset+octet-stream`,
/// a media type progenitor does not take. This client uploads with `POST /v1/uploads`.
fn drop_tus(spec: &mut openapiv3::OpenAPI) {
    spec.paths
        .paths
        .retain(|path, _| !path.starts_with("/v1/tus"));
}

/// Progenitor 0.15 gives an operation one success type, so it refuses one whose `200` has a body
/// and whose `204` has none. The spec has such an operation only for server-sent events (a
/// job's event stream answers `204` when nothing will follow), which this client never asks
/// for: it sends no `Accept: text/event-stream`. Such `2xx`s without a body are left out.
fn drop_bodiless_successes(spec: &mut openapiv3::OpenAPI) {
    use openapiv3::{ReferenceOr, StatusCode};
    for (_, item) in spec.paths.paths.iter_mut() {
        let ReferenceOr::Item(item) = item else {
            continue;
        };
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for op in operations.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            let has_body = |r: &ReferenceOr<openapiv3::Response>| match r {
                ReferenceOr::Item(r) => !r.content.is_empty(),
                ReferenceOr::Reference { .. } => false,
            };
            let success = |code: &StatusCode| match code {
                StatusCode::Code(c) => (200..300).contains(c),
                StatusCode::Range(_) => false,
            };
            let any_body = responses.iter().any(|(c, r)| success(c) && has_body(r));
            if any_body {
                responses.retain(|c, r| !success(c) || has_body(r));
            }
        }
    }
}

/// Progenitor 0.15 gives an operation one error type, so it refuses `/readyz`, whose `503` is a
/// `Readiness` document and whose `401` a problem. That `401` comes only from a server told to
/// ask for a key there (`auth.readyz_requires_key`); an operation whose security lets requests
/// without a key in (an empty requirement) has its `401` left out here, and a client that meets
/// it gets an unexpected-response error instead of a typed one.
fn drop_optional_auth_refusals(spec: &mut openapiv3::OpenAPI) {
    use openapiv3::{ReferenceOr, StatusCode};
    for (_, item) in spec.paths.paths.iter_mut() {
        let ReferenceOr::Item(item) = item else {
            continue;
        };
        for op in [&mut item.get, &mut item.head].into_iter().flatten() {
            let optional = op
                .security
                .as_ref()
                .is_some_and(|requirements| requirements.iter().any(|r| r.is_empty()));
            if optional {
                op.responses.responses.shift_remove(&StatusCode::Code(401));
            }
        }
    }
}
