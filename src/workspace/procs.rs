//! Finding an attempt's processes wherever they went. A command handler's process group does not
//! hold all of them: a process can start its own session (a daemon), and when the worker dies
//! the kernel's parent-death signal reaches only its direct child (`sh` in `sh -c "python3
//! model.py"`), not the model beneath it. What every process the command starts does keep is
//! its environment, which carries `FERRY_JOB_ID` and `FERRY_INPUT_DIR` (inside the attempt's
//! work folder, whose name is unique) — so Ferry finds them by those (Linux `/proc`; elsewhere
//! this finds nothing).
//!
//! A program that clears its environment before forking escapes this; run workers under a
//! supervisor that confines them to a cgroup (systemd's default `KillMode=control-group`)
//! for a hard guarantee.

use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};
use uuid::Uuid;

/// Rounds of search-and-kill: a process forking while it is being killed leaves a child the
/// next round finds.
const ROUNDS: usize = 5;

/// Whose processes to kill.
#[derive(Clone, Copy, Debug)]
pub enum Whose<'a> {
    /// Every process of the job, whatever the attempt (the job is being deleted).
    Job(Uuid),
    /// The processes of one attempt, named by its work folder: `FERRY_INPUT_DIR` ends in
    /// `/<folder>/inputs`, and the folder's name (128 random bits) is never used twice — so a
    /// later run of the same attempt number (after a requeue) is never mistaken for it.
    Attempt { job: Uuid, folder: &'a str },
}

/// SIGKILLs every process of this user that belongs to `whose`; returns how many processes were
/// signalled (a dying process may still show its environment for a moment and be signalled again
/// in the next round: it counts once).
pub fn kill(whose: Whose) -> usize {
    let job = match whose {
        Whose::Job(job) | Whose::Attempt { job, .. } => job,
    };
    let job_var = format!("FERRY_JOB_ID=job_{}", job.simple());
    let input_dir_end = match whose {
        Whose::Job(_) => None,
        Whose::Attempt { folder, .. } => Some(format!("/{folder}/inputs")),
    };
    let matches = |vars: &[&[u8]]| {
        vars.contains(&job_var.as_bytes())
            && input_dir_end.as_ref().is_none_or(|end| {
                vars.iter().any(|v| {
                    v.strip_prefix(b"FERRY_INPUT_DIR=")
                        .is_some_and(|dir| dir.ends_with(end.as_bytes()))
                })
            })
    };
    let mut signalled = std::collections::BTreeSet::new();
    for _ in 0..ROUNDS {
        let found = tagged(&matches);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if signal::kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                signalled.insert(pid);
            }
        }
    }
    let killed = signalled.len();
    if killed > 0 {
        let job_id = crate::ids::JobId(job);
        tracing::info!(%job_id, ?whose, killed, "killed processes left by an attempt");
    }
    killed
}

/// Processes whose environment `matches`. Processes of other users, and zombies, have no
/// readable environment and never match.
fn tagged(matches: &dyn Fn(&[&[u8]]) -> bool) -> Vec<i32> {
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
            matches(&vars)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_carrying_an_attempts_tags_are_killed_and_no_others() {
        let job = Uuid::now_v7();
        let spawn = |folder: &str| {
            let child = std::process::Command::new("sleep")
                .arg("60")
                .env("FERRY_JOB_ID", format!("job_{}", job.simple()))
                .env("FERRY_INPUT_DIR", format!("/work/owner/{folder}/inputs"))
                .spawn()
                .expect("spawn sleep");
            // `spawn` returns once the child execs, but /proc shows its environment only when
            // the kernel has finished setting up the new image: wait for that.
            let environ = format!("/proc/{}/environ", child.id());
            let start = std::time::Instant::now();
            let tagged = |env: Vec<u8>| env.windows(6).any(|w| w == b"FERRY_");
            while !std::fs::read(&environ).is_ok_and(tagged) {
                assert!(start.elapsed() < std::time::Duration::from_secs(10));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            child
        };
        let mut first = spawn("job-1-aaaa");
        let mut again = spawn("job-1-bbbb");
        let first_attempt = Whose::Attempt {
            job,
            folder: "job-1-aaaa",
        };
        assert_eq!(kill(first_attempt), 1);
        assert!(first.wait().is_ok_and(|s| !s.success()));
        assert!(
            again.try_wait().unwrap().is_none(),
            "another run of the same attempt number is not touched"
        );
        assert_eq!(kill(Whose::Job(job)), 1);
        assert!(again.wait().is_ok_and(|s| !s.success()));
    }
}
