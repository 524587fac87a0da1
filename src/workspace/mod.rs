//! Work folders on this machine: where command handlers find their inputs and leave their
//! outputs, and how nothing of an attempt — folder or process — outlives it.
//!
//! Layout under `work_dir`, every folder mode 0700:
//!
//! ```text
//! <work_dir>/<owner>/                        one per worker process (a ULID), flock'ed while
//!                                            that process lives
//! <work_dir>/<owner>/<job uuid>-<attempt>-<128 random bits in hex>/{inputs,outputs}
//! ```
//!
//! Handlers are not trusted with the file system: a handler may one day run sandboxed with only
//! its output folder shared, and any link it makes there would be followed by Ferry on the host.
//! So an attempt's folder is created fresh (never reused, never guessable by an earlier
//! attempt), inputs are written with create-new semantics, and outputs are opened beneath the
//! attempt's own folder without following a single link ([`outputs`]).
//!
//! Clean-up: the worker removes an attempt's folder and kills the attempt's processes
//! ([`procs`]) on every exit path; a worker killed with `kill -9` leaves both behind, so
//! [`survey`] + [`Survey::clear`] (at every worker's start-up and in its reconciler) remove the
//! attempts of owners whose lock is free (their process is dead) and of jobs no longer running
//! that attempt (deleted, retried, settled); and deleting a job removes its folders at once
//! ([`remove_job`]) wherever the deleting process shares the work folder.

pub mod outputs;
pub mod procs;

use std::{
    fs::DirBuilder,
    io,
    os::{fd::OwnedFd, unix::fs::DirBuilderExt},
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{Flock, FlockArg, OFlag, open},
    sys::stat::{Mode, mkdirat},
};
use uuid::Uuid;

const DIR_MODE: u32 = 0o700;

/// Creates the work folder (mode 0700) if it does not exist.
pub fn ensure_root(root: &Path) -> io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(root)
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    Ok(open(path, flags, Mode::empty())?)
}

/// A worker process's folder of attempt folders. Its exclusive `flock` is what tells other
/// Ferry processes on this machine that it is alive: the kernel releases it when the process
/// dies, however it dies. Dropping it removes the folder.
#[derive(Debug)]
pub struct Owner {
    dir: PathBuf,
    _lock: Flock<OwnedFd>,
}

impl Owner {
    /// Creates and locks `<root>/<token>`. (Made under a dot-name, locked, then renamed, so a
    /// sweep never sees it unlocked.)
    pub fn claim(root: &Path, token: &str) -> io::Result<Owner> {
        ensure_root(root)?;
        let staging = root.join(format!(".new-{token}"));
        DirBuilder::new().mode(DIR_MODE).create(&staging)?;
        let lock = Flock::lock(open_dir(&staging)?, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        let dir = root.join(token);
        std::fs::rename(&staging, &dir)?;
        Ok(Owner { dir, _lock: lock })
    }

    /// A fresh folder for one attempt, with empty `inputs` and `outputs`. Creation fails rather
    /// than reuse anything already there.
    pub fn create_attempt(&self, job: Uuid, attempt: i32) -> io::Result<AttemptDir> {
        let random: u128 = rand::random();
        let path = self
            .dir
            .join(format!("{}-{attempt}-{random:032x}", job.simple()));
        DirBuilder::new().mode(DIR_MODE).create(&path)?;
        let fd = open_dir(&path)?;
        for sub in ["inputs", "outputs"] {
            mkdirat(&fd, sub, Mode::from_bits_truncate(DIR_MODE))?;
        }
        Ok(AttemptDir {
            inputs: path.join("inputs"),
            outputs: path.join("outputs"),
            path,
            fd,
        })
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Err(err) = remove_tree(&self.dir) {
            let dir = self.dir.display();
            tracing::warn!(%dir, error = %err, "could not remove this worker's work folder");
        }
    }
}

/// One attempt's private folder. Ferry reads it through the descriptor it opened when it made
/// it, so renaming or replacing the folder's path cannot redirect Ferry elsewhere.
#[derive(Debug)]
pub struct AttemptDir {
    pub path: PathBuf,
    pub inputs: PathBuf,
    pub outputs: PathBuf,
    fd: OwnedFd,
}

impl AttemptDir {
    /// Removes the folder and everything in it (links are removed, never followed).
    pub fn remove(&self) -> io::Result<()> {
        remove_tree(&self.path)
    }
}

/// Removes a folder tree without following links; a handler that took permissions away from
/// its own sub-folders does not keep them on disk.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let retry = match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() == io::ErrorKind::PermissionDenied => err,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => return other,
    };
    tracing::debug!(path = %path.display(), error = %retry, "restoring permissions to remove");
    restore_access(path, 0);
    match std::fs::remove_dir_all(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Gives the owner full access to every real folder under `dir` (links are left alone).
fn restore_access(dir: &Path, depth: u32) {
    use std::os::unix::fs::PermissionsExt;
    let is_dir = std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_dir());
    if !is_dir || depth > 4096 {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                restore_access(&entry.path(), depth + 1);
            }
        }
    }
}

/// An attempt folder found on disk.
#[derive(Debug)]
pub struct Found {
    pub job: Uuid,
    pub attempt: i32,
    path: PathBuf,
}

impl Found {
    fn kill_processes(&self) {
        let folder = self
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        procs::kill(procs::Whose::Attempt {
            job: self.job,
            folder,
        });
    }
}

/// What a sweep found under the work folder; [`Survey::clear`] acts on it.
#[derive(Debug, Default)]
pub struct Survey {
    /// Attempts of live owners (and of Ferry versions before owners): kept while their job is
    /// running that attempt.
    pub live: Vec<Found>,
    /// Owners whose process is gone, locked by this sweep, with their attempts: all removed.
    dead: Vec<(PathBuf, Flock<OwnedFd>, Vec<Found>)>,
}

impl Survey {
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.dead.is_empty()
    }

    /// Kills the processes of, and removes, every attempt of a dead owner and every live one
    /// for which `keep` is false; returns how many attempt folders went.
    pub fn clear(self, keep: impl Fn(&Found) -> bool) -> usize {
        let mut removed = 0;
        for found in self.live.into_iter().filter(|f| !keep(f)) {
            found.kill_processes();
            match remove_tree(&found.path) {
                Ok(()) => removed += 1,
                Err(err) => warn_not_removed(&found.path, &err),
            }
        }
        for (dir, lock, attempts) in self.dead {
            for found in &attempts {
                found.kill_processes();
            }
            match remove_tree(&dir) {
                Ok(()) => removed += attempts.len(),
                Err(err) => warn_not_removed(&dir, &err),
            }
            drop(lock);
        }
        removed
    }
}

fn warn_not_removed(path: &Path, err: &io::Error) {
    let path = path.display();
    tracing::warn!(%path, error = %err, "could not remove a work folder left behind");
}

/// `<job uuid>-<attempt>[-<random>]`: the job and attempt an attempt folder belongs to.
fn parse_attempt(name: &str) -> Option<(Uuid, i32)> {
    let mut parts = name.splitn(3, '-');
    let job = parts.next().filter(|hex| hex.len() == 32)?;
    let attempt = parts.next()?.parse().ok()?;
    Some((Uuid::try_parse(job).ok()?, attempt))
}

fn attempts_in(dir: &Path) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let (job, attempt) = parse_attempt(name.to_str()?)?;
            Some(Found {
                job,
                attempt,
                path: entry.path(),
            })
        })
        .collect()
}

/// Lists the attempt folders under `root`, telling live owners from dead ones by trying their
/// lock. Folders whose names Ferry never makes are left alone.
pub fn survey(root: &Path) -> Survey {
    let mut survey = Survey::default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return survey;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if let Some((job, attempt)) = parse_attempt(name) {
            // A folder of the layout before owners (`<job>-<attempt>`).
            survey.live.push(Found { job, attempt, path });
            continue;
        }
        if ulid::Ulid::from_string(name).is_err() {
            continue;
        }
        let Ok(fd) = open_dir(&path) else { continue };
        match Flock::lock(fd, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let attempts = attempts_in(&path);
                survey.dead.push((path, lock, attempts));
            }
            Err(_) => survey.live.extend(attempts_in(&path)),
        }
    }
    survey
}

/// Kills every process of `job` and removes all its attempt folders under `root` (a deleted job
/// leaves nothing on this machine); returns how many folders went.
pub fn remove_job(root: &Path, job: Uuid) -> usize {
    procs::kill(procs::Whose::Job(job));
    let survey = survey(root);
    let mut removed = 0;
    let mine = |f: &Found| f.job == job;
    for found in survey.live.iter().filter(|f| mine(f)) {
        match remove_tree(&found.path) {
            Ok(()) => removed += 1,
            Err(err) => warn_not_removed(&found.path, &err),
        }
    }
    // Dead owners' folders go whole: they hold nothing anyone still uses.
    removed
        + Survey {
            live: Vec::new(),
            dead: survey.dead,
        }
        .clear(|_| true)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn attempt_folders_are_fresh_private_and_unguessable() {
        let root = tempfile::tempdir().unwrap();
        let owner =
            Owner::claim(&root.path().join("work"), &ulid::Ulid::new().to_string()).unwrap();
        let job = Uuid::now_v7();
        let a = owner.create_attempt(job, 1).unwrap();
        let b = owner.create_attempt(job, 1).unwrap();
        assert_ne!(a.path, b.path, "two attempt folders never share a path");
        for dir in [
            &a.path,
            &a.inputs,
            &a.outputs,
            &owner.dir,
            &root.path().join("work"),
        ] {
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        let name = a.path.file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_attempt(name), Some((job, 1)));
        assert_eq!(name.len(), 32 + 3 + 32, "{name}");
    }

    #[test]
    fn a_sweep_removes_dead_owners_and_finished_attempts_only() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path();
        let live = Owner::claim(root, &ulid::Ulid::new().to_string()).unwrap();
        let running = live.create_attempt(Uuid::now_v7(), 1).unwrap();
        let finished = live.create_attempt(Uuid::now_v7(), 2).unwrap();
        // A dead owner: its folder exists, nobody holds its lock.
        let dead_dir = root.join(ulid::Ulid::new().to_string());
        std::fs::create_dir_all(dead_dir.join(format!("{}-1-00", Uuid::now_v7().simple())))
            .unwrap();
        let stranger = root.join("not-ferrys");
        std::fs::create_dir(&stranger).unwrap();
        let running_job = parse_attempt(running.path.file_name().unwrap().to_str().unwrap());

        let survey = survey(root);
        assert_eq!(survey.live.len(), 2);
        let removed = survey.clear(|f| Some((f.job, f.attempt)) == running_job);
        assert_eq!(removed, 2);
        assert!(running.path.is_dir());
        assert!(!finished.path.exists());
        assert!(!dead_dir.exists());
        assert!(
            stranger.is_dir(),
            "folders Ferry never makes are left alone"
        );
        drop(live);
        assert!(
            !running.path.exists(),
            "an owner removes its folder when it goes"
        );
    }

    #[test]
    fn folders_a_handler_locked_itself_out_of_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let owner = Owner::claim(root.path(), &ulid::Ulid::new().to_string()).unwrap();
        let attempt = owner.create_attempt(Uuid::now_v7(), 1).unwrap();
        let locked = attempt.outputs.join("locked");
        std::fs::create_dir_all(locked.join("inner")).unwrap();
        std::fs::write(locked.join("inner/file"), "x").unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        attempt.remove().unwrap();
        assert!(!attempt.path.exists());
    }
}
