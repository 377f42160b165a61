//! Confinement to the workspace directory, shared by `file` and by `shell`'s `cwd`. Paths
//! given by steps are relative to the workspace; absolute paths and `..` are refused when a
//! step is checked ([`relative`]). The `file` tool then opens them beneath a descriptor of
//! the workspace without following links ([`super::beneath`]), so nothing swapped in later
//! can lead it out. `shell`'s `cwd` is resolved by name ([`existing`]: symlinks followed,
//! the result must stay inside); a process that swaps a directory for a link between that
//! check and the program's start could move its working directory out, which the program
//! (allowlisted, and free to `cd` anyway) could do itself.

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
