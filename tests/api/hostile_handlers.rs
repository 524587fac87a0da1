//! Hostile handlers (`tests/handlers/hostile.py`): links out of the output folder, a swapped
//! output folder, links planted for the next attempt, work folders and processes left behind by
//! a worker killed with `kill -9`, and processes that try to outlive their attempt.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::helpers::*;

const WITHIN: Duration = Duration::from_secs(45);

/// An API-only server whose `ferry.toml` also declares two command handlers running
/// `hostile.py`: `hostile` directly, `shell` through `sh -c` (so the model is the worker's
/// grandchild, as with most real deployments' wrapper scripts). Start workers with
/// [`TestApp::spawn_worker`].
async fn hostile_app() -> TestApp {
    let mut app = TestApp::spawn_api_only(TestConfig {
        lease_ttl: "2s",
        ..TestConfig::default()
    })
    .await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/handlers/hostile.py");
    let script = script.display();
    let handlers = format!(
        r#"
[handlers.hostile]
command = ["python3", "{script}"]
timeout = "60s"
max_attempts = 3
concurrency = 2

[handlers.shell]
command = ["sh", "-c", "python3 {script}; exit $?"]
timeout = "60s"
max_attempts = 3
concurrency = 2
"#
    );
    let mut toml = std::fs::read_to_string(&app.config_path).expect("read config");
    toml.push_str(&handlers);
    std::fs::write(&app.config_path, toml).expect("write config");
    // The API must know the new kinds to accept their jobs.
    app.kill9_server();
    app.start_server(&["--no-workers"]);
    app
}

fn id_of(job: &Value) -> String {
    job["id"].as_str().expect("job id").to_owned()
}

/// Every folder under the work folder (at any depth) that belongs to `job_id`.
fn work_folders_of(app: &TestApp, job_id: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, prefix: &str, depth: u32, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                out.push(path);
            } else if depth > 0 && entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, prefix, depth - 1, out);
            }
        }
    }
    let hex = job_id.trim_start_matches("job_");
    let mut out = Vec::new();
    walk(&app.data_dir().join("work"), hex, 2, &mut out);
    out
}

/// Waits until no work folder of `job_id` is left, or panics listing them.
async fn wait_no_work_folders(app: &TestApp, job_id: &str) {
    let start = Instant::now();
    loop {
        let left = work_folders_of(app, job_id);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < WITHIN,
            "work folders left behind: {left:?}\n{}",
            app.logs_of("worker")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `job_id` to fail, and checks that it failed for the handler's output and that
/// nothing at all was published.
async fn assert_refused(app: &TestApp, job_id: &str, what: &str) {
    let job = app
        .wait_job(job_id, WITHIN, |j| {
            matches!(
                j["status"].as_str(),
                Some("succeeded" | "failed" | "canceled")
            )
        })
        .await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "invalid_result", "{job}");
    let detail = job["error"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(what),
        "the error should say {what:?}: {job}"
    );
    assert!(
        app.results(job_id).await.is_empty(),
        "nothing may be published"
    );
    assert!(
        app.blob_files("jobs").await.is_empty(),
        "no result bytes may be stored"
    );
}

async fn a_result_linked_to_a_host_file_is_refused() {
    let mut app = hostile_app().await;
    app.spawn_worker();
    // ferry.toml holds the S3 keys on the PostgreSQL + S3 configuration.
    let target = app.config_path.clone();
    let job = app
        .submit(
            "hostile",
            bytes(100, 1),
            json!({"mode": "link_file", "target": target}),
        )
        .await;
    assert_refused(&app, &id_of(&job), "symbolic link").await;
}

async fn a_result_inside_a_linked_folder_is_refused() {
    let mut app = hostile_app().await;
    app.spawn_worker();
    let job = app
        .submit(
            "hostile",
            bytes(100, 2),
            json!({"mode": "link_dir", "target_dir": app.dir.path(), "name": "ferry.toml"}),
        )
        .await;
    assert_refused(&app, &id_of(&job), "symbolic link").await;
}

async fn a_hard_linked_result_is_refused() {
    let mut app = hostile_app().await;
    app.spawn_worker();
    let target = app.dir.path().join("host-secret.txt");
    std::fs::write(&target, "a host file\n").unwrap();
    let job = app
        .submit(
            "hostile",
            bytes(100, 3),
            json!({"mode": "hard_link", "target": target}),
        )
        .await;
    assert_refused(&app, &id_of(&job), "hard link").await;
}

async fn an_output_folder_replaced_by_a_link_publishes_nothing() {
    let mut app = hostile_app().await;
    app.spawn_worker();
    let host = app.dir.path().join("host-folder");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("secret.txt"), "a host file\n").unwrap();
    std::fs::copy(&app.config_path, host.join("ferry.toml")).unwrap();
    let job = app
        .submit(
            "hostile",
            bytes(100, 4),
            json!({"mode": "swap_output", "target_dir": host}),
        )
        .await;
    assert_refused(&app, &id_of(&job), "output folder").await;
}

async fn an_attempt_cannot_plant_links_in_the_next_attempts_inputs() {
    let mut app = hostile_app().await;
    app.spawn_worker();
    let target = app.dir.path().join("host-file.txt");
    let original = b"a host file that no upload may overwrite\n";
    std::fs::write(&target, original).unwrap();
    let job = app
        .submit(
            "hostile",
            bytes(5000, 5),
            json!({"mode": "plant_next", "target": target}),
        )
        .await;
    let done = app.wait_status(&id_of(&job), "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 2, "{done}");
    let now = std::fs::read(&target).unwrap();
    assert!(
        now == original,
        "attempt 2 wrote the client's upload ({} bytes) through a link attempt 1 planted",
        now.len()
    );
}

/// Starts a sleeping `kind` job on a first worker and kills that worker with `kill -9`; returns
/// the job id and the pid of attempt 1's model.
async fn job_orphaned_by_kill9(app: &mut TestApp, kind: &str, params: Value) -> (String, i32) {
    let first = app.spawn_worker();
    let job = app.submit(kind, bytes(20_000, 6), params).await;
    let id = id_of(&job);
    app.wait_status(&id, "running", WITHIN).await;
    let pid = read_pid(&app.dir.path().join("attempt-1.pid"), WITHIN).await;
    assert!(
        !work_folders_of(app, &id).is_empty(),
        "attempt 1 should have a work folder"
    );
    app.kill9_worker(first);
    (id, pid)
}

/// Kills test processes that a failing test may have left behind (by pid).
fn kill_pids(pids: &[i32]) {
    for &pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

async fn a_killed_workers_work_folder_is_removed_when_the_job_is_deleted() {
    let mut app = hostile_app().await;
    let pid_dir = app.dir.path().to_owned();
    let (id, pid) = job_orphaned_by_kill9(
        &mut app,
        "hostile",
        json!({"mode": "sleep", "pid_dir": pid_dir}),
    )
    .await;
    assert_eq!(app.delete_job(&id).await.status, 204);
    // Whichever Ferry process shares that machine's work folder removes it: here the API
    // process at once, or a worker when it starts.
    app.spawn_worker();
    wait_no_work_folders(&app, &id).await;
    kill_pids(&[pid]);
}

async fn a_killed_workers_work_folder_is_removed_once_the_job_is_retried() {
    let mut app = hostile_app().await;
    let pid_dir = app.dir.path().to_owned();
    let params = json!({"mode": "sleep", "pid_dir": pid_dir, "succeed_from": 2});
    let (id, pid) = job_orphaned_by_kill9(&mut app, "hostile", params).await;
    app.spawn_worker();
    let done = app.wait_status(&id, "succeeded", WITHIN).await;
    assert_eq!(done["attempt"], 2, "{done}");
    // Attempt 1's folder holds a full copy of the input: it must not outlive the job's run.
    wait_no_work_folders(&app, &id).await;
    kill_pids(&[pid]);
}

async fn a_shell_started_handler_dies_with_its_killed_worker_before_the_retry() {
    let mut app = hostile_app().await;
    let pid_dir = app.dir.path().to_owned();
    let (id, first_pid) = job_orphaned_by_kill9(
        &mut app,
        "shell",
        json!({"mode": "sleep", "pid_dir": pid_dir}),
    )
    .await;
    app.spawn_worker();
    app.wait_job(&id, WITHIN, |j| {
        j["status"] == "running" && j["attempt"] == 2
    })
    .await;
    let second_pid = read_pid(&app.dir.path().join("attempt-2.pid"), WITHIN).await;
    let first_alive = process_alive(first_pid);
    kill_pids(&[first_pid, second_pid]);
    assert!(
        !first_alive,
        "attempt 1's model (pid {first_pid}, started through sh -c) outlived its killed worker \
         and ran beside attempt 2 (pid {second_pid})"
    );
}

async fn processes_a_handler_detaches_are_killed_when_its_attempt_ends() {
    let mut app = hostile_app().await;
    app.spawn_worker();
    let pid_file = app.dir.path().join("daemon.pid");
    let job = app
        .submit(
            "hostile",
            bytes(100, 7),
            json!({"mode": "daemon", "pid_file": pid_file}),
        )
        .await;
    app.wait_status(&id_of(&job), "succeeded", WITHIN).await;
    let daemon = read_pid(&pid_file, WITHIN).await;
    let start = Instant::now();
    while process_alive(daemon) && start.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let alive = process_alive(daemon);
    kill_pids(&[daemon]);
    assert!(
        !alive,
        "a process the handler started in its own session outlived the attempt (pid {daemon})"
    );
}

crate::matrix!(
    a_result_linked_to_a_host_file_is_refused,
    a_result_inside_a_linked_folder_is_refused,
    a_hard_linked_result_is_refused,
    an_output_folder_replaced_by_a_link_publishes_nothing,
    an_attempt_cannot_plant_links_in_the_next_attempts_inputs,
    a_killed_workers_work_folder_is_removed_when_the_job_is_deleted,
    a_killed_workers_work_folder_is_removed_once_the_job_is_retried,
    a_shell_started_handler_dies_with_its_killed_worker_before_the_retry,
    processes_a_handler_detaches_are_killed_when_its_attempt_ends,
);
