//! Generates the client from the repository's `openapi.yaml` into `$OUT_DIR/ferry_api.rs` on
//! every build where the spec changed.

use std::{env, fs, path::PathBuf};

fn main() {
    let spec_path =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../openapi.yaml");
    println!("cargo:rerun-if-changed={}", spec_path.display());
    let text = fs::read_to_string(&spec_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", spec_path.display()));
    let spec: openapiv3::OpenAPI = serde_norway::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not OpenAPI 3.0: {err}", spec_path.display()));
    let mut settings = progenitor::GenerationSettings::default();
    settings.with_interface(progenitor::InterfaceStyle::Builder);
    let tokens = progenitor::Generator::new(&settings)
        .generate_tokens(&spec)
        .unwrap_or_else(|err| panic!("progenitor cannot generate from the spec: {err}"));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("ferry_api.rs");
    fs::write(&out, tokens.to_string())
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", out.display()));
}
