//! Finding an attempt's processes wherever they went. A command handler's process group does not
//! hold all of them: a process can start its own session (a daemon), and when the worker dies
//! the kernel's parent-death signal reaches only its direct child (`sh` in `sh -c "python3
//! model.py"`), not the model beneath it. What every process the command starts does keep is
//! its environment, which carries `FERRY_JOB_ID` and `FERRY_ATTEMPT` — so Ferry finds them by
//! those (Linux `/proc`; elsewhere this finds nothing).
//!
//! A program that clears its environment before forking escapes this; run workers under a
//! supervisor that confines them to a cgroup (systemd's default `KillMode=control-group`)
//! for a hard guarantee.

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use uuid::Uuid;

/// Rounds of search-and-kill: a process forking while it is being killed leaves a child the
/// next round finds.
const ROUNDS: usize = 5;

/// SIGKILLs every process of this user that belongs to `job`'s `attempt` (or to any attempt of
/// `job`); returns how many signals were sent.
pub fn kill_attempt(job: Uuid, attempt: Option<i32>) -> usize {
    let job_var = format!("FERRY_JOB_ID=job_{}", job.simple());
    let attempt_var = attempt.map(|a| format!("FERRY_ATTEMPT={a}"));
    let mut killed = 0;
    for _ in 0..ROUNDS {
        let found = tagged(
            job_var.as_bytes(),
            attempt_var.as_ref().map(|v| v.as_bytes()),
        );
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    if killed > 0 {
        let job_id = crate::ids::JobId(job);
        tracing::info!(%job_id, ?attempt, killed, "killed processes left by an attempt");
    }
    killed
}

/// Processes whose environment holds `job_var` (and `attempt_var`, if given). Processes of other
/// users, and zombies, have no readable environment and never match.
fn tagged(job_var: &[u8], attempt_var: Option<&[u8]>) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
            vars.contains(&job_var) && attempt_var.is_none_or(|want| vars.contains(&want))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_carrying_an_attempts_tags_are_killed_and_no_others() {
        let job = Uuid::now_v7();
        let spawn = |attempt: &str| {
            std::process::Command::new("sleep")
                .arg("60")
                .env("FERRY_JOB_ID", format!("job_{}", job.simple()))
                .env("FERRY_ATTEMPT", attempt)
                .spawn()
                .expect("spawn sleep")
        };
        let mut first = spawn("1");
        let mut second = spawn("2");
        assert_eq!(kill_attempt(job, Some(1)), 1);
        assert!(first.wait().is_ok_and(|s| !s.success()));
        assert!(
            second.try_wait().unwrap().is_none(),
            "attempt 2 is not touched"
        );
        assert_eq!(kill_attempt(job, None), 1);
        assert!(second.wait().is_ok_and(|s| !s.success()));
    }
}
