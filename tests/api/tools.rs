//! The external tools some tests run (schemathesis, the client generators, tsc, node): where the
//! pinned ones are (`scripts/install-tools.sh` exports `TEST_TOOLS_PYTHON` and
//! `TEST_TOOLS_NPM_BIN`), and the one rule for a missing tool: the test prints a notice and
//! passes, except under `CI=true`, where it fails.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

/// Where scripts/install-tools.sh puts its venv unless told otherwise.
const DEFAULT_PYTHON: &str = "/var/tmp/ferry-tools/venv/bin/python";

/// The python of the tools venv; its scripts (schemathesis, openapi-python-client, ruff) are
/// beside it.
pub fn python() -> PathBuf {
    std::env::var_os("TEST_TOOLS_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PYTHON))
}

/// The tool, or `None` after a notice that `what` is skipped (a panic under `CI=true`).
pub fn or_skip<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(tool) => Some(tool),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but {what} cannot run: {why}")
        }
        Err(why) => {
            eprintln!("NOTICE: skipping {what}: {why} (source scripts/install-tools.sh)");
            None
        }
    }
}

/// `dir` first on the caller's PATH.
pub fn path_with(dir: &Path) -> OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).expect("a PATH")
}
