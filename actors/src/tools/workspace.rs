//! Confinement to the workspace directory, shared by `file` and by `shell`'s `cwd`. Paths
//! given by steps are relative to the workspace; absolute paths and `..` are refused when a
//! step is checked, and symlinks are resolved when it runs so that a link pointing outside
//! cannot be used to read, write or list outside. (A race with a process that swaps a
//! directory for a link between the check and the use is not defended against: the
//! workspace is meant to be written only through these tools.)

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::ToolError;

/// Checks `path` without touching the disk and returns it relative, without `.` parts.
pub(super) fn relative(tool: &str, path: &str) -> Result<PathBuf, ToolError> {
    if path.contains('\0') {
        return Err(ToolError::InvalidArgs(format!(
            "{tool}: `path` contains a NUL byte"
        )));
    }
    let mut rel = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(ToolError::Denied(format!(
                    "{tool}: path {path:?} is absolute; paths are relative to the workspace (tools.file.workspace)"
                )));
            }
            Component::ParentDir => {
                return Err(ToolError::Denied(format!(
                    "{tool}: path {path:?} uses `..`, which could escape the workspace (tools.file.workspace)"
                )));
            }
        }
    }
    Ok(rel)
}

fn outside(tool: &str, rel: &Path) -> ToolError {
    ToolError::Denied(format!(
        "{tool}: path {:?} resolves outside the workspace (through a symlink)",
        rel.display().to_string()
    ))
}

/// Resolves an existing path (following symlinks) and checks it stays inside `workspace`.
pub(super) fn existing(tool: &str, workspace: &Path, rel: &Path) -> Result<PathBuf, ToolError> {
    match workspace.join(rel).canonicalize() {
        Ok(real) if real.starts_with(workspace) => Ok(real),
        Ok(_) => Err(outside(tool, rel)),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // A dangling symlink may point anywhere: say so rather than "not found".
            if workspace.join(rel).symlink_metadata().is_ok() {
                Err(outside(tool, rel))
            } else {
                Err(ToolError::Failed(format!(
                    "{tool}: {:?} does not exist in the workspace",
                    rel.display().to_string()
                )))
            }
        }
        Err(e) => Err(ToolError::Failed(format!(
            "{tool}: cannot resolve {:?}: {e}",
            rel.display().to_string()
        ))),
    }
}

/// Resolves the parent directory of a path that is to be created or removed, checks that it
/// (and the path itself, when it is a symlink) stays inside `workspace`, and returns the full
/// path to use. For a `write`, missing parent directories are made and an existing symlink
/// at the path must point inside; otherwise (removal) the link itself is the entry.
pub(super) fn entry(
    tool: &str,
    workspace: &Path,
    rel: &Path,
    write: bool,
) -> Result<PathBuf, ToolError> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(ToolError::InvalidArgs(format!(
            "{tool}: `path` must name an entry inside the workspace, not the workspace itself"
        )));
    };
    let fail = |e: std::io::Error| ToolError::Failed(format!("{tool}: {e}"));
    // The deepest parent that exists must resolve inside; what is below it does not exist
    // yet, so it cannot be a link.
    let mut existing_part = parent;
    while !workspace.join(existing_part).exists() {
        match existing_part.parent() {
            Some(up) => existing_part = up,
            None => break,
        }
    }
    let real = workspace.join(existing_part).canonicalize().map_err(fail)?;
    if !real.starts_with(workspace) {
        return Err(outside(tool, rel));
    }
    let missing = parent.strip_prefix(existing_part).unwrap_or(Path::new(""));
    let real_parent = real.join(missing);
    if write {
        std::fs::create_dir_all(&real_parent).map_err(fail)?;
    } else if !missing.as_os_str().is_empty() {
        return Err(ToolError::Failed(format!(
            "{tool}: {:?} does not exist in the workspace",
            rel.display().to_string()
        )));
    }
    let path = real_parent.join(name);
    if let Ok(meta) = path.symlink_metadata()
        && meta.file_type().is_symlink()
        && write
    {
        // Writing through a link writes wherever it points.
        match path.canonicalize() {
            Ok(target) if target.starts_with(workspace) => {}
            _ => return Err(outside(tool, rel)),
        }
    }
    Ok(path)
}
