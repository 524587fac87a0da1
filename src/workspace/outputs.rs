//! Reading a handler's outputs without trusting it: every path component is opened beneath the
//! attempt's own folder descriptor with `O_NOFOLLOW`, so no symbolic link — a result, a
//! sub-folder on the way to it, or the output folder itself — is ever followed. Only regular
//! files with a single link are published: a hard link could be a host file (`ferry.toml`, with
//! its keys) that the handler linked in.

use std::{
    ffi::{CStr, OsStr},
    fs::File,
    io,
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
};

use nix::{
    dir::Dir,
    errno::Errno,
    fcntl::{AtFlags, OFlag, openat},
    sys::stat::{FileStat, Mode, SFlag, fstat, fstatat},
};

use super::AttemptDir;
use crate::domain::validate_result_name;

/// An output folder with more files than this is refused rather than listed into memory.
pub const MAX_OUTPUT_FILES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The handler left something Ferry will not publish; the message says what and why.
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the output folder: {0}")]
    Io(#[from] io::Error),
}

fn refused(msg: impl Into<String>) -> OutputError {
    OutputError::Refused(msg.into())
}

fn open_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK
}

fn what_it_is(stat: &FileStat) -> &'static str {
    match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFLNK => "a symbolic link",
        SFlag::S_IFDIR => "a folder",
        SFlag::S_IFREG => "a regular file",
        SFlag::S_IFIFO => "a named pipe",
        SFlag::S_IFSOCK => "a socket",
        _ => "a device",
    }
}

fn is(stat: &FileStat, kind: SFlag) -> bool {
    SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind
}

const LINKS: &str = "Ferry publishes only regular files in the output folder, never what a \
                     link points to";

impl AttemptDir {
    /// The output folder, refused if the handler replaced it with anything but a folder.
    fn open_outputs(&self) -> Result<OwnedFd, OutputError> {
        let flags = open_flags() | OFlag::O_DIRECTORY;
        match openat(&self.fd, "outputs", flags, Mode::empty()) {
            Ok(fd) => Ok(fd),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let what = fstatat(&self.fd, "outputs", AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map(|s| what_it_is(&s))
                    .unwrap_or("something else");
                Err(refused(format!(
                    "the output folder was replaced by {what}; nothing was published ({LINKS})"
                )))
            }
            Err(Errno::ENOENT) => Err(refused(
                "the output folder was removed; nothing was published",
            )),
            Err(errno) => Err(io::Error::from(errno).into()),
        }
    }

    /// Opens the output `name` (a valid result name) for reading if it is a regular file with
    /// one link, reached without following any link.
    pub fn open_output(&self, name: &str) -> Result<File, OutputError> {
        validate_result_name(name).map_err(|msg| refused(format!("result path {name:?} {msg}")))?;
        let mut dir = self.open_outputs()?;
        let mut segments = name.split('/').peekable();
        while let Some(segment) = segments.next() {
            let stat = match fstatat(&dir, segment, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT | Errno::ENOTDIR) => {
                    return Err(refused(format!(
                        "result {name:?} is not a file in the output folder"
                    )));
                }
                Err(errno) => return Err(io::Error::from(errno).into()),
            };
            let last = segments.peek().is_none();
            let wanted = if last { SFlag::S_IFREG } else { SFlag::S_IFDIR };
            if !is(&stat, wanted) {
                let role = if last { "result" } else { "folder" };
                return Err(refused(format!(
                    "{role} {segment:?} of result {name:?} is {}, not {}: {LINKS}",
                    what_it_is(&stat),
                    if last { "a regular file" } else { "a folder" },
                )));
            }
            let flags = if last {
                open_flags()
            } else {
                open_flags() | OFlag::O_DIRECTORY
            };
            // Checked again on the descriptor: the entry may have changed since `fstatat`.
            let fd = openat(&dir, segment, flags, Mode::empty()).map_err(|errno| match errno {
                Errno::ELOOP | Errno::ENOTDIR => refused(format!(
                    "{segment:?} of result {name:?} is a symbolic link: {LINKS}"
                )),
                other => io::Error::from(other).into(),
            })?;
            if last {
                check_file(name, &fstat(&fd).map_err(io::Error::from)?)?;
                return Ok(File::from(fd));
            }
            dir = fd;
        }
        unreachable!("a valid result name has at least one segment")
    }

    /// The names of every file in the output folder, sorted, and the entries skipped because
    /// their names cannot be a result's (with why; never opened, so harmless whatever they are).
    /// Refuses the whole folder — so nothing of it is published — if anything else in it is not
    /// a regular file with one link or a folder.
    pub fn list_outputs(&self) -> Result<Listing, OutputError> {
        let mut listing = Listing::default();
        walk(
            Dir::from_fd(self.open_outputs()?).map_err(io::Error::from)?,
            "",
            &mut listing,
        )?;
        listing.names.sort();
        listing.skipped.sort();
        Ok(listing)
    }
}

/// What the output folder holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Files that can be published, by result name.
    pub names: Vec<String>,
    /// Entries whose names cannot be results' (`a b.txt`, `ä.txt`, not UTF-8), with why.
    pub skipped: Vec<(String, String)>,
}

fn check_file(name: &str, stat: &FileStat) -> Result<(), OutputError> {
    if !is(stat, SFlag::S_IFREG) {
        return Err(refused(format!(
            "result {name:?} is {}, not a regular file: {LINKS}",
            what_it_is(stat)
        )));
    }
    if stat.st_nlink > 1 {
        return Err(refused(format!(
            "result {name:?} has {} hard links: it could be a file from outside the output \
             folder, so Ferry does not publish it (write or copy results, never link them)",
            stat.st_nlink
        )));
    }
    Ok(())
}

fn walk(mut dir: Dir, prefix: &str, listing: &mut Listing) -> Result<(), OutputError> {
    let entries: Vec<Vec<u8>> = dir
        .iter()
        .map(|entry| entry.map(|e| e.file_name().to_bytes().to_vec()))
        .collect::<Result<_, Errno>>()
        .map_err(io::Error::from)?;
    for raw in entries {
        if raw == b"." || raw == b".." {
            continue;
        }
        let Some(segment) = std::str::from_utf8(&raw).ok() else {
            let shown = OsStr::from_bytes(&raw).to_string_lossy().into_owned();
            let why = "its name is not UTF-8".to_owned();
            listing.skipped.push((format!("{prefix}{shown}"), why));
            continue;
        };
        let name = format!("{prefix}{segment}");
        if let Err(msg) = validate_result_name(&name) {
            listing.skipped.push((name, format!("a result name {msg}")));
            continue;
        }
        let c_name = std::ffi::CString::new(raw).map_err(io::Error::other)?;
        let stat = fstatat(&dir, c_name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)?;
        if is(&stat, SFlag::S_IFDIR) {
            let sub = open_sub(&dir, &c_name, &name)?;
            walk(sub, &format!("{name}/"), listing)?;
        } else {
            check_file(&name, &stat).map_err(|err| match err {
                OutputError::Refused(msg) => refused(format!("{msg}; nothing was published")),
                other => other,
            })?;
            if listing.names.len() + listing.skipped.len() >= MAX_OUTPUT_FILES {
                return Err(refused(format!(
                    "the output folder holds more than {MAX_OUTPUT_FILES} files; nothing was \
                     published"
                )));
            }
            listing.names.push(name);
        }
    }
    Ok(())
}

fn open_sub(dir: &impl AsFd, c_name: &CStr, name: &str) -> Result<Dir, OutputError> {
    let flags = open_flags() | OFlag::O_DIRECTORY;
    let fd = openat(dir, c_name, flags, Mode::empty()).map_err(|errno| match errno {
        Errno::ELOOP | Errno::ENOTDIR => refused(format!(
            "output folder {name:?} was replaced by a link; nothing was published"
        )),
        other => io::Error::from(other).into(),
    })?;
    Ok(Dir::from_fd(fd).map_err(io::Error::from)?)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::workspace::Owner;

    fn attempt() -> (tempfile::TempDir, Owner, AttemptDir) {
        let root = tempfile::tempdir().unwrap();
        let owner = Owner::claim(root.path(), &ulid::Ulid::new().to_string()).unwrap();
        let attempt = owner.create_attempt(uuid::Uuid::now_v7(), 1).unwrap();
        (root, owner, attempt)
    }

    fn refusal(result: Result<impl std::fmt::Debug, OutputError>) -> String {
        match result {
            Err(OutputError::Refused(msg)) => msg,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn regular_files_in_sub_folders_open_and_list() {
        let (_root, _owner, a) = attempt();
        std::fs::create_dir_all(a.outputs.join("masks/deep")).unwrap();
        std::fs::write(a.outputs.join("masks/deep/m.json"), "{}").unwrap();
        std::fs::write(a.outputs.join("report.txt"), "ok").unwrap();
        let mut file = a.open_output("masks/deep/m.json").unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut file, &mut text).unwrap();
        assert_eq!(text, "{}");
        assert_eq!(
            a.list_outputs().unwrap().names,
            vec!["masks/deep/m.json", "report.txt"]
        );
    }

    #[test]
    fn links_and_special_files_are_refused() {
        let (root, _owner, a) = attempt();
        let host = root.path().join("host.txt");
        std::fs::write(&host, "secret").unwrap();
        symlink(&host, a.outputs.join("leak.txt")).unwrap();
        assert!(refusal(a.open_output("leak.txt")).contains("symbolic link"));
        symlink(root.path(), a.outputs.join("linked")).unwrap();
        assert!(refusal(a.open_output("linked/host.txt")).contains("symbolic link"));
        assert!(refusal(a.list_outputs()).contains("symbolic link"));
        std::fs::remove_file(a.outputs.join("leak.txt")).unwrap();
        std::fs::remove_file(a.outputs.join("linked")).unwrap();

        std::fs::hard_link(&host, a.outputs.join("hard.txt")).unwrap();
        assert!(refusal(a.open_output("hard.txt")).contains("hard link"));
        assert!(refusal(a.list_outputs()).contains("hard link"));
        std::fs::remove_file(a.outputs.join("hard.txt")).unwrap();

        nix::unistd::mkfifo(&a.outputs.join("pipe"), Mode::S_IRWXU).unwrap();
        assert!(refusal(a.open_output("pipe")).contains("named pipe"));
        assert!(refusal(a.list_outputs()).contains("named pipe"));
        std::fs::remove_file(a.outputs.join("pipe")).unwrap();

        std::fs::write(a.outputs.join("bad name.txt"), "x").unwrap();
        let listing = a.list_outputs().unwrap();
        assert!(listing.names.is_empty());
        assert_eq!(listing.skipped[0].0, "bad name.txt", "skipped, not refused");
        std::fs::remove_file(a.outputs.join("bad name.txt")).unwrap();

        assert_eq!(a.list_outputs().unwrap(), Listing::default());
    }

    #[test]
    fn a_replaced_output_folder_is_refused() {
        let (root, _owner, a) = attempt();
        std::fs::write(root.path().join("host.txt"), "secret").unwrap();
        std::fs::remove_dir(&a.outputs).unwrap();
        symlink(root.path(), &a.outputs).unwrap();
        assert!(refusal(a.list_outputs()).contains("output folder was replaced"));
        assert!(refusal(a.open_output("host.txt")).contains("output folder was replaced"));
    }

    #[test]
    fn a_renamed_attempt_folder_cannot_redirect_ferry() {
        let (root, _owner, a) = attempt();
        let host = root.path().join("host");
        std::fs::create_dir_all(host.join("outputs")).unwrap();
        std::fs::write(host.join("outputs/secret.txt"), "secret").unwrap();
        std::fs::rename(&a.path, root.path().join("moved")).unwrap();
        symlink(&host, &a.path).unwrap();
        assert!(
            a.list_outputs().unwrap().names.is_empty(),
            "Ferry reads its own folder"
        );
    }
}
