//! Opening paths beneath the workspace with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`,
//! for the `file` tool.
//!
//! Checking a path and then opening it by name is a race: a symlink swapped in between (by a
//! `shell` step, or by anything else that writes the workspace) would be followed out of it.
//! Here the kernel resolves every path from a descriptor of the workspace directory and, in
//! that same resolution, refuses any component that is a symlink or that would leave the
//! directory (`..` above it, an absolute path). Missing parent directories are made one
//! component at a time with `mkdirat` on the descriptor of the directory above, and entered
//! with `openat2` again, never by name; deletion works on descriptors the same way.
//!
//! `openat2` needs Linux 5.6. On an older kernel every operation fails with
//! [`BeneathError::Unsupported`] saying so, rather than falling back to the racy way.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Why a path could not be opened beneath the workspace. `path` is the step's relative path.
#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub(super) enum BeneathError {
    #[error(
        "path {path:?} goes through a symlink, and links are not followed (opened beneath the workspace with openat2 RESOLVE_NO_SYMLINKS): one could lead outside the workspace"
    )]
    Symlink { path: String },
    #[error("path {path:?} leads outside the workspace (refused by openat2 RESOLVE_BENEATH)")]
    Escapes { path: String },
    #[error("{path:?} does not exist in the workspace")]
    NotFound { path: String },
    #[error("{path:?} is a directory")]
    IsDirectory { path: String },
    #[error("{path:?} is not a directory")]
    NotDirectory { path: String },
    #[error(
        "cannot open {path:?} beneath the workspace: this kernel has no openat2 (Linux 5.6 or later is needed), and the file tool does not fall back to opening by name"
    )]
    Unsupported { path: String },
    #[error("`path` must name an entry inside the workspace, not the workspace itself")]
    NoName,
    #[error("cannot open the workspace {workspace:?}: {errno}")]
    Root { workspace: String, errno: Errno },
    #[error("{path:?}: {errno}")]
    Io { path: String, errno: Errno },
}

impl BeneathError {
    /// The error for `errno` from an operation on `rel` (the step's path, for the message).
    pub(super) fn from_errno(rel: &Path, errno: Errno) -> BeneathError {
        let path = rel.display().to_string();
        match errno {
            Errno::ELOOP => BeneathError::Symlink { path },
            // RESOLVE_BENEATH refuses a path leaving the directory with EXDEV.
            Errno::EXDEV => BeneathError::Escapes { path },
            Errno::ENOENT => BeneathError::NotFound { path },
            Errno::EISDIR => BeneathError::IsDirectory { path },
            Errno::ENOTDIR => BeneathError::NotDirectory { path },
            Errno::ENOSYS => BeneathError::Unsupported { path },
            errno => BeneathError::Io { path, errno },
        }
    }

    /// The error is a refusal to leave the workspace (rather than a failure).
    pub(super) fn is_refusal(&self) -> bool {
        matches!(
            self,
            BeneathError::Symlink { .. } | BeneathError::Escapes { .. }
        )
    }
}

/// What an entry of the workspace is, without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    pub(super) fn of(stat: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// A descriptor of the workspace directory; every path is resolved from it.
pub(super) struct Beneath {
    root: OwnedFd,
}

/// `openat2` from `dir` with the confinement flags; `O_CLOEXEC` always (a `shell` step
/// forked meanwhile must not inherit the descriptor).
fn open_at<P: ?Sized + nix::NixPath>(
    dir: impl AsFd,
    path: &P,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    openat2(dir, path, how)
}

/// Opens the entry `name` of the directory `dir` (from [`Beneath::parent`]) with `flags`;
/// the entry itself must not be a symlink either.
pub(super) fn open_in(
    dir: &OwnedFd,
    name: &OsStr,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    open_at(dir, name, flags, mode)
}

/// A directory to walk or make entries in (never read through: `O_PATH`).
const DIR_PATH: OFlag = OFlag::O_PATH.union(OFlag::O_DIRECTORY);

impl Beneath {
    /// Opens the workspace directory (the canonical path the tools were given at start).
    pub(super) fn new(workspace: &Path) -> Result<Beneath, BeneathError> {
        nix::fcntl::open(workspace, DIR_PATH | OFlag::O_CLOEXEC, Mode::empty())
            .map(|root| Beneath { root })
            .map_err(|errno| BeneathError::Root {
                workspace: workspace.display().to_string(),
                errno,
            })
    }

    /// Opens `rel` (relative, no `..`; the workspace itself when empty) with `flags`.
    pub(super) fn open(
        &self,
        rel: &Path,
        flags: OFlag,
        mode: Mode,
    ) -> Result<OwnedFd, BeneathError> {
        let path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        open_at(&self.root, path, flags, mode).map_err(|e| BeneathError::from_errno(rel, e))
    }

    /// The directory that holds `rel`'s last component, and that component. With `create`,
    /// missing directories on the way are made, each beneath the descriptor of the one above.
    pub(super) fn parent<'a>(
        &self,
        rel: &'a Path,
        create: bool,
    ) -> Result<(OwnedFd, &'a OsStr), BeneathError> {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(BeneathError::NoName);
        };
        let fail = |errno| BeneathError::from_errno(rel, errno);
        let mut dir = open_at(&self.root, ".", DIR_PATH, Mode::empty()).map_err(fail)?;
        for component in parent.components() {
            let part = match component {
                Component::Normal(part) => part,
                Component::CurDir => continue,
                // The kernel would refuse these too; the caller's check already has.
                _ => {
                    return Err(BeneathError::Escapes {
                        path: rel.display().to_string(),
                    });
                }
            };
            dir = match open_at(&dir, part, DIR_PATH, Mode::empty()) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    match mkdirat(&dir, part, Mode::from_bits_truncate(0o777)) {
                        // Made by someone else meanwhile: entered below all the same, and
                        // refused there if it is a link.
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(errno) => return Err(fail(errno)),
                    }
                    open_at(&dir, part, DIR_PATH, Mode::empty()).map_err(fail)?
                }
                Err(errno) => return Err(fail(errno)),
            };
        }
        Ok((dir, name))
    }

    /// Removes `rel`: a file or link itself, or a directory with everything in it (whose
    /// links are removed, never followed).
    pub(super) fn remove(&self, rel: &Path) -> Result<(), BeneathError> {
        let (dir, name) = self.parent(rel, false)?;
        let fail = |errno| BeneathError::from_errno(rel, errno);
        let stat = fstatat(&dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(fail)?;
        if Kind::of(&stat) == Kind::Dir {
            remove_tree(&dir, name).map_err(fail)
        } else {
            unlinkat(&dir, name, UnlinkatFlags::NoRemoveDir).map_err(fail)
        }
    }
}

/// The names in the directory `dir` (without `.` and `..`).
pub(super) fn names(dir: OwnedFd) -> Result<Vec<OsString>, Errno> {
    let mut entries = nix::dir::Dir::from_fd(dir)?;
    let mut names = Vec::new();
    for entry in entries.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(&name).to_owned());
        }
    }
    Ok(names)
}

/// Removes the directory `name` in `parent` and everything in it, by descriptors.
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let dir = open_at(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY,
        Mode::empty(),
    )?;
    let walk = open_at(&dir, ".", DIR_PATH, Mode::empty())?;
    for entry in names(dir)? {
        let stat = fstatat(
            &walk,
            entry.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )?;
        if Kind::of(&stat) == Kind::Dir {
            remove_tree(&walk, &entry)?;
        } else {
            unlinkat(&walk, entry.as_os_str(), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    unlinkat(parent, name, UnlinkatFlags::RemoveDir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel's own refusals, without the tool's earlier check of the path in front.
    #[test]
    fn the_kernel_refuses_dot_dot_absolute_paths_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path(), ws.join("up")).unwrap();
        let beneath = Beneath::new(&ws).unwrap();
        let read = |p: &str| beneath.open(Path::new(p), OFlag::O_RDONLY, Mode::empty());

        let err = read("../secret").unwrap_err();
        assert!(matches!(err, BeneathError::Escapes { .. }), "{err:?}");
        assert!(err.to_string().contains("RESOLVE_BENEATH"), "{err}");
        assert!(err.is_refusal());
        let err = read(&dir.path().join("secret").display().to_string()).unwrap_err();
        assert!(matches!(err, BeneathError::Escapes { .. }), "{err:?}");
        let err = read("up/secret").unwrap_err();
        assert!(matches!(err, BeneathError::Symlink { .. }), "{err:?}");
        assert!(err.to_string().contains("RESOLVE_NO_SYMLINKS"), "{err}");
        let err = beneath.parent(Path::new("up/new/file"), true).unwrap_err();
        assert!(matches!(err, BeneathError::Symlink { .. }), "{err:?}");
        assert!(!dir.path().join("new").exists());
        assert!(matches!(
            read("missing"),
            Err(BeneathError::NotFound { .. })
        ));
        assert!(matches!(
            beneath.parent(Path::new(""), true),
            Err(BeneathError::NoName)
        ));
    }

    #[test]
    fn parents_are_made_and_trees_removed_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let beneath = Beneath::new(&ws).unwrap();
        let (parent, name) = beneath.parent(Path::new("a/b/c.txt"), true).unwrap();
        assert_eq!(name, "c.txt");
        drop(parent);
        assert!(ws.join("a/b").is_dir());
        std::fs::write(dir.path().join("kept"), "k").unwrap();
        std::os::unix::fs::symlink(dir.path(), ws.join("a/b/link")).unwrap();
        std::fs::write(ws.join("a/b/c.txt"), "c").unwrap();
        beneath.remove(Path::new("a")).unwrap();
        assert!(!ws.join("a").exists());
        assert!(dir.path().join("kept").exists());
    }
}
