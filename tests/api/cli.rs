//! The command line: help text, `ferry migrate`, and clear start-up errors.

use std::process::Command;

use crate::helpers::BIN;

#[test]
fn help_explains_every_command_and_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for word in ["serve", "worker", "migrate", "--config"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--no-workers",
        "--data-dir",
        "--database-url",
        "--blob-store",
    ] {
        assert!(text.contains(flag), "serve --help lacks {flag}:\n{text}");
    }
}

#[test]
fn migrate_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is up to date"));
    assert!(dir.path().join("ferry.db").exists());
    // Running it again is harmless.
    let again = Command::new(BIN)
        .args(["migrate", "--data-dir"])
        .arg(dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(again.status.success());
}

#[test]
fn bad_configuration_fails_with_a_readable_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, "[handlers.seg]\ncommand = []\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("handler \"seg\"") && err.contains("command"),
        "{err}"
    );

    std::fs::write(&config, "lissen = \"x\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lissen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/ferry.toml", "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

#[test]
fn the_client_commands_variables_are_not_server_settings() {
    // A shell set up for `ferry submit` (FERRY_SERVER, FERRY_API_KEY, FERRY_CLIENT_CONFIG) can
    // still run the server, while a misspelt server variable is still refused.
    let dir = tempfile::tempdir().unwrap();
    let migrate = |extra: (&str, &str)| {
        Command::new(BIN)
            .args(["migrate", "--data-dir"])
            .arg(dir.path())
            .current_dir(dir.path())
            .env("FERRY_SERVER", "http://127.0.0.1:9")
            .env("FERRY_API_KEY", "fk_test")
            .env("FERRY_CLIENT_CONFIG", "/nonexistent/client.toml")
            .env(extra.0, extra.1)
            .output()
            .unwrap()
    };
    let out = migrate(("FERRY_LOG_FORMAT", "text"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = migrate(("FERRY_LISSEN", "127.0.0.1:1"));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lissen"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
