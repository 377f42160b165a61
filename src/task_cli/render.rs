//! How `task get` and `task list` draw tasks for people.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::*;
use crate::client::text;

// ---------------------------------------------------------------------------------------
// `task get` for people.

pub(super) fn render_task(task: &Value) -> String {
    let mut out = format!(
        "task {}  {}\n",
        text(&task["task_id"]),
        text(&task["status"])
    );
    let mut fields: Vec<(&str, String)> = vec![
        ("description", text(&task["description"])),
        ("priority", text(&task["priority"])),
    ];
    if !task["owner"].is_null() {
        fields.push((
            "owner",
            format!(
                "{} (lease epoch {})",
                text(&task["owner"]),
                text(&task["lease_epoch"])
            ),
        ));
    }
    fields.push(("created", text(&task["created_at"])));
    fields.push(("updated", text(&task["updated_at"])));
    fields.push(("finished", text(&task["finished_at"])));
    if let Some(took) = took(task) {
        fields.push(("took", format!("{:.3} s", took.as_secs_f64())));
    }
    if !task["error"].is_null() {
        fields.push(("error", text(&task["error"])));
    }
    for (name, value) in fields {
        let _ = writeln!(out, "  {name:<12} {value}");
    }

    let steps = task["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(out, "\nsteps ({}):", steps.len());
    if steps.is_empty() {
        out.push_str("  (none yet)\n");
    }
    let width = |key: &str| {
        steps
            .iter()
            .map(|s| text(&s[key]).chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths = [width("id"), width("tool"), width("status")];
    let pad = " ".repeat(widths[0] + 4);
    for step in steps {
        render_step(&mut out, step, widths, &pad);
    }

    let events = task["events"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let _ = writeln!(out, "\nevents ({}):", events.len());
    let mut rows = vec![["SEQ", "TIME", "KIND", "DATA"].map(String::from)];
    for event in events {
        let time = event["at_ms"]
            .as_u64()
            .map(|ms| {
                humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
            })
            .unwrap_or_else(|| text(&event["at_ms"]));
        rows.push([
            text(&event["seq"]),
            time,
            text(&event["kind"]),
            one_line(&event_data(&event["data"]), EVENT_DATA_CHARS),
        ]);
    }
    for line in table(&rows).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// A step in a line (id, tool, status, attempts, agent@node, what it waits for), then its
/// last attempt's verdict, output preview and error.
pub(super) fn render_step(
    out: &mut String,
    step: &Value,
    [id_w, tool_w, status_w]: [usize; 3],
    pad: &str,
) {
    let attempts = step["attempts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let last = attempts.last();
    let _ = write!(
        out,
        "  {:<id_w$}  {:<tool_w$}  {:<status_w$}  attempts {}",
        text(&step["id"]),
        text(&step["tool"]),
        text(&step["status"]),
        attempts.len()
    );
    if let Some(last) = last
        && !last["agent"].is_null()
    {
        let _ = write!(out, "  {}@{}", text(&last["agent"]), text(&last["node"]));
    }
    let deps: Vec<String> = step["depends_on"]
        .as_array()
        .map(|d| d.iter().map(text).collect())
        .unwrap_or_default();
    if !deps.is_empty() {
        let _ = write!(out, "  after {}", deps.join(", "));
    }
    out.push('\n');
    let Some(last) = last else { return };
    if let Some(reason) = last["verdict"]["reason"].as_str() {
        let passed = match last["verdict"]["passed"].as_bool() {
            Some(true) => "passed: ",
            Some(false) => "failed: ",
            None => "",
        };
        let _ = writeln!(out, "{pad}verdict  {passed}{reason}");
    }
    let output = if step["output"].is_null() {
        &last["output"]
    } else {
        &step["output"]
    };
    if let Some(preview) = preview(output) {
        let _ = writeln!(out, "{pad}output   {preview}");
    }
    if let Some(error) = last["error"].as_str() {
        let _ = writeln!(out, "{pad}error    {error}");
    }
}

/// A step's output in one short line: the tool's text, else its JSON.
pub(super) fn preview(output: &Value) -> Option<String> {
    let full = match output {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("text") {
            Some(Value::String(s)) => s.clone(),
            _ => output.to_string(),
        },
        other => other.to_string(),
    };
    Some(format!("{:?}", one_line(&full, PREVIEW_CHARS)))
}

/// An event's data as `key=value …` (strings bare, anything else as compact JSON).
pub(super) fn event_data(data: &Value) -> String {
    match data {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                Value::Object(o) if o.get("passed").is_some_and(Value::is_boolean) => {
                    let passed = if o["passed"] == true {
                        "passed"
                    } else {
                        "failed"
                    };
                    match o.get("reason").and_then(Value::as_str) {
                        Some(reason) => format!("{k}={passed} ({reason})"),
                        None => format!("{k}={passed}"),
                    }
                }
                other => format!("{k}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Text.

/// `s` with every run of whitespace made one space, cut to `max` characters.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub(crate) fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
