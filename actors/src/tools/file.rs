//! `file`: read, write, append, list and delete inside the workspace directory
//! (`tools.file.workspace`). It gives steps a place to leave and pick up data without handing
//! them the node's file system: paths are relative, `..` and absolute paths are refused, and
//! symlinks that lead outside are refused when the step runs (see [`super::workspace`]).
//! Reads and listings are capped like every other output.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, fstatat};

use serde::Deserialize;

use super::beneath::{self, Beneath, BeneathError, Kind};
use super::output::{Capped, lossy_text, parse_json};
use super::{ToolError, ToolOutput, parse_args, workspace};

#[derive(Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Op {
    Read,
    Write,
    Append,
    List,
    Delete,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    op: Op,
    path: Option<String>,
    content: Option<String>,
}

fn parse(args: &serde_json::Value) -> Result<(Op, PathBuf, Option<String>), ToolError> {
    let Args { op, path, content } = parse_args("file", args)?;
    let path = match (op, path) {
        (_, Some(path)) => path,
        (Op::List, None) => ".".to_owned(),
        (_, None) => {
            return Err(ToolError::InvalidArgs(format!(
                "file: `path` is required for op {op:?}"
            )));
        }
    };
    if content.is_some() && !matches!(op, Op::Write | Op::Append) {
        return Err(ToolError::InvalidArgs(
            "file: `content` is only for op write and append".into(),
        ));
    }
    Ok((op, workspace::relative("file", &path)?, content))
}

pub(super) fn validate(args: &serde_json::Value) -> Result<(), ToolError> {
    parse(args).map(|_| ())
}

pub(super) async fn run(
    workspace: &Path,
    cap: usize,
    args: &serde_json::Value,
    input: Option<&str>,
) -> Result<ToolOutput, ToolError> {
    let (op, rel, content) = parse(args)?;
    let content = match op {
        Op::Write | Op::Append => match content.or_else(|| input.map(str::to_owned)) {
            Some(content) => Some(content),
            None => {
                return Err(ToolError::InvalidArgs(
                    "file: `content` is required for write and append when the step has no input"
                        .into(),
                ));
            }
        },
        _ => None,
    };
    let workspace = workspace.to_path_buf();
    // File system calls block; keep them off the async threads.
    tokio::task::spawn_blocking(move || match op {
        Op::Read => read(&workspace, &rel, cap),
        Op::Write | Op::Append => write(&workspace, &rel, op, &content.unwrap_or_default()),
        Op::List => list(&workspace, &rel, cap),
        Op::Delete => delete(&workspace, &rel),
    })
    .await
    .map_err(|e| ToolError::Failed(format!("file: {e}")))?
}

fn shown(rel: &Path) -> String {
    rel.display().to_string()
}

fn io_failed(op: &str, rel: &Path) -> impl Fn(std::io::Error) -> ToolError {
    let path = shown(rel);
    let op = op.to_owned();
    move |e| ToolError::Failed(format!("file: {op} {path:?}: {e}"))
}

/// The tool's error for a failure to open `rel` beneath the workspace.
fn beneath_failed(op: &str, e: BeneathError) -> ToolError {
    match e {
        BeneathError::IsDirectory { .. }
        | BeneathError::NotDirectory { .. }
        | BeneathError::NoName => ToolError::InvalidArgs(format!("file: {op}: {e}")),
        e if e.is_refusal() => ToolError::Denied(format!("file: {op}: {e}")),
        e => ToolError::Failed(format!("file: {op}: {e}")),
    }
}

fn read(workspace: &Path, rel: &Path, cap: usize) -> Result<ToolOutput, ToolError> {
    let failed = io_failed("read", rel);
    let beneath = Beneath::new(workspace).map_err(|e| beneath_failed("read", e))?;
    // O_NONBLOCK: opening a FIFO must not hang the step (it is refused below).
    let fd = beneath
        .open(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())
        .map_err(|e| beneath_failed("read", e))?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(&failed)?;
    refuse_hard_links(&meta, rel)?;
    if meta.is_dir() {
        return Err(ToolError::InvalidArgs(format!(
            "file: {:?} is a directory; use op list",
            shown(rel)
        )));
    }
    if !meta.is_file() {
        return Err(ToolError::InvalidArgs(format!(
            "file: {:?} is not a regular file",
            shown(rel)
        )));
    }
    let mut buf = Vec::new();
    file.take(cap as u64)
        .read_to_end(&mut buf)
        .map_err(&failed)?;
    let bytes = meta.len().max(buf.len() as u64);
    let truncated = bytes > buf.len() as u64;
    let text = lossy_text(&buf, cap, truncated);
    Ok(ToolOutput {
        json: parse_json(&text, truncated),
        text,
        exit_code: Some(0),
        truncated,
        bytes,
        ..ToolOutput::default()
    })
}

/// A file with another name may be a hard link to a file outside the workspace (made by a
/// `shell` step, or before): reading or writing it would reach outside.
fn refuse_hard_links(meta: &std::fs::Metadata, rel: &Path) -> Result<(), ToolError> {
    if !meta.is_dir() && meta.nlink() > 1 {
        return Err(ToolError::Denied(format!(
            "file: {:?} has {} hard links; a file with more than one may be shared with a file outside the workspace",
            shown(rel),
            meta.nlink()
        )));
    }
    Ok(())
}

fn write(workspace: &Path, rel: &Path, op: Op, content: &str) -> Result<ToolOutput, ToolError> {
    let verb = if op == Op::Append { "append" } else { "write" };
    let failed = io_failed(verb, rel);
    let beneath = Beneath::new(workspace).map_err(|e| beneath_failed(verb, e))?;
    let (dir, name) = beneath
        .parent(rel, true)
        .map_err(|e| beneath_failed(verb, e))?;
    // Never O_TRUNC: the file is truncated only once it is known to have one link (a hard
    // link to a file elsewhere must not be emptied either).
    let mut flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK;
    if op == Op::Append {
        flags |= OFlag::O_APPEND;
    }
    let fd = beneath::open_in(&dir, name, flags, Mode::from_bits_truncate(0o666))
        .map_err(|e| beneath_failed(verb, BeneathError::from_errno(rel, e)))?;
    let mut file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(&failed)?;
    refuse_hard_links(&meta, rel)?;
    if !meta.is_file() {
        return Err(ToolError::InvalidArgs(format!(
            "file: {:?} is not a regular file",
            shown(rel)
        )));
    }
    if op == Op::Write {
        file.set_len(0).map_err(&failed)?;
    }
    std::io::Write::write_all(&mut file, content.as_bytes()).map_err(&failed)?;
    let verb = if op == Op::Append {
        "appended"
    } else {
        "wrote"
    };
    Ok(ToolOutput {
        text: format!("{verb} {} bytes to {}", content.len(), shown(rel)),
        exit_code: Some(0),
        bytes: content.len() as u64,
        ..ToolOutput::default()
    })
}

fn list(workspace: &Path, rel: &Path, cap: usize) -> Result<ToolOutput, ToolError> {
    let failed = |e: Errno| beneath_failed("list", BeneathError::from_errno(rel, e));
    let beneath = Beneath::new(workspace).map_err(|e| beneath_failed("list", e))?;
    let open = |flags| beneath.open(rel, flags, Mode::empty());
    let dir = open(OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|e| match e {
        BeneathError::NotDirectory { .. } => ToolError::InvalidArgs(format!(
            "file: {:?} is not a directory; use op read",
            shown(rel)
        )),
        e => beneath_failed("list", e),
    })?;
    // A second descriptor of the same directory to stat its entries by, since reading the
    // entries consumes the first.
    let walk = open(OFlag::O_PATH | OFlag::O_DIRECTORY).map_err(|e| beneath_failed("list", e))?;
    let mut entries = Vec::new();
    for name in beneath::names(dir).map_err(failed)? {
        let stat =
            fstatat(&walk, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(failed)?;
        let kind = match Kind::of(&stat) {
            Kind::Symlink => "symlink",
            Kind::Dir => "dir",
            Kind::File | Kind::Other => "file",
        };
        entries.push((
            name.to_string_lossy().into_owned(),
            kind,
            stat.st_size as u64,
        ));
    }
    entries.sort();
    let mut text = Capped::new(cap);
    for (name, kind, _) in &entries {
        let suffix = if *kind == "dir" { "/" } else { "" };
        text.push(format!("{name}{suffix}\n").as_bytes());
    }
    let truncated = text.truncated();
    let json = (!truncated).then(|| {
        entries
            .iter()
            .map(|(name, kind, size)| serde_json::json!({"name": name, "kind": kind, "size": size}))
            .collect()
    });
    Ok(ToolOutput {
        text: text.text(),
        exit_code: Some(0),
        json,
        truncated,
        bytes: text.bytes(),
        ..ToolOutput::default()
    })
}

fn delete(workspace: &Path, rel: &Path) -> Result<ToolOutput, ToolError> {
    let beneath = Beneath::new(workspace).map_err(|e| beneath_failed("delete", e))?;
    beneath
        .remove(rel)
        .map_err(|e| beneath_failed("delete", e))?;
    Ok(ToolOutput {
        text: format!("deleted {}", shown(rel)),
        exit_code: Some(0),
        ..ToolOutput::default()
    })
}
