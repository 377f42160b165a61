//! `file`: read, write, append, list and delete inside the workspace directory
//! (`tools.file.workspace`). It gives steps a place to leave and pick up data without handing
//! them the node's file system: paths are relative, `..` and absolute paths are refused, and
//! symlinks that lead outside are refused when the step runs (see [`super::workspace`]).
//! Reads and listings are capped like every other output.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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

fn read(workspace: &Path, rel: &Path, cap: usize) -> Result<ToolOutput, ToolError> {
    let path = workspace::existing("file", workspace, rel)?;
    let failed = io_failed("read", rel);
    let file = std::fs::File::open(&path).map_err(&failed)?;
    let meta = file.metadata().map_err(&failed)?;
    if meta.is_dir() {
        return Err(ToolError::InvalidArgs(format!(
            "file: {:?} is a directory; use op list",
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

fn write(workspace: &Path, rel: &Path, op: Op, content: &str) -> Result<ToolOutput, ToolError> {
    let path = workspace::entry("file", workspace, rel, true)?;
    let failed = io_failed(if op == Op::Append { "append" } else { "write" }, rel);
    if path.is_dir() {
        return Err(ToolError::InvalidArgs(format!(
            "file: {:?} is a directory",
            shown(rel)
        )));
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true);
    if op == Op::Append {
        options.append(true);
    } else {
        options.write(true).truncate(true);
    }
    let mut file = options.open(&path).map_err(&failed)?;
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
    let path = workspace::existing("file", workspace, rel)?;
    let failed = io_failed("list", rel);
    if !path.is_dir() {
        return Err(ToolError::InvalidArgs(format!(
            "file: {:?} is not a directory; use op read",
            shown(rel)
        )));
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&path).map_err(&failed)? {
        let entry = entry.map_err(&failed)?;
        let meta = entry.path().symlink_metadata().map_err(&failed)?;
        let kind = if meta.file_type().is_symlink() {
            "symlink"
        } else if meta.is_dir() {
            "dir"
        } else {
            "file"
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        entries.push((name, kind, meta.len()));
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
    let path = workspace::entry("file", workspace, rel, false)?;
    let failed = io_failed("delete", rel);
    let meta = path.symlink_metadata().map_err(&failed)?;
    if meta.is_dir() {
        // Does not follow symlinks inside the directory.
        std::fs::remove_dir_all(&path).map_err(&failed)?;
    } else {
        std::fs::remove_file(&path).map_err(&failed)?;
    }
    Ok(ToolOutput {
        text: format!("deleted {}", shown(rel)),
        exit_code: Some(0),
        ..ToolOutput::default()
    })
}
