//! Memory: knowledge store and blackboard — key/value entries with tags and text search,
//! scoped to a task or global, persisted, with a time to live.
//!
//! Steps reach it with the `memory` tool (routed to memory agents): `put` stores a value
//! (given, or the output of the step's `input_from`), `get` reads one (its output feeds the
//! next step), `search` finds entries by tags and text, `delete` removes one. Storage is a
//! port ([`MemoryStore`]) the node implements over SQL.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::task::store::{BoxFuture, StoreError, now_ms};
use crate::tools::{ToolError, ToolOutput};

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &["memory.kv", "memory.search", "memory.blackboard"];

/// Most entries a search returns.
pub const SEARCH_LIMIT: i64 = 100;
/// Longest time to live an entry may be given, in seconds: ten years (beyond it, keep the
/// entry without one). Bounded so that its deadline in milliseconds cannot overflow.
pub const MAX_TTL_SECS: f64 = 10.0 * 365.0 * 24.0 * 3600.0;

/// One stored entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemoryEntry {
    pub scope: String,
    pub scope_id: String,
    pub key: String,
    pub value: String,
    pub tags: Vec<String>,
    /// Milliseconds since the epoch after which the entry is gone; `None`: kept.
    pub expires_at_ms: Option<i64>,
}

/// Where memory lives; implemented by the node's store.
pub trait MemoryStore: Send + Sync + 'static {
    fn put(&self, entry: MemoryEntry) -> BoxFuture<'_, Result<(), StoreError>>;
    fn get(
        &self,
        scope: String,
        scope_id: String,
        key: String,
    ) -> BoxFuture<'_, Result<Option<MemoryEntry>, StoreError>>;
    /// Entries of the scope having every tag in `tags` and containing `text` (in key or
    /// value, case-insensitive) when given.
    fn search(
        &self,
        scope: String,
        scope_id: String,
        tags: Vec<String>,
        text: Option<String>,
    ) -> BoxFuture<'_, Result<Vec<MemoryEntry>, StoreError>>;
    fn delete(
        &self,
        scope: String,
        scope_id: String,
        key: String,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryArgs {
    op: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    value: Option<Value>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    query: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    ttl_secs: Option<f64>,
}

fn parse(args: &Value) -> Result<MemoryArgs, String> {
    let a: MemoryArgs = serde_json::from_value(args.clone()).map_err(|e| format!("args: {e}"))?;
    match a.op.as_str() {
        "put" | "get" | "delete" if a.key.as_deref().is_none_or(str::is_empty) => {
            return Err(format!("args.key: required for `{}`", a.op));
        }
        "put" | "get" | "delete" | "search" => {}
        other => {
            return Err(format!(
                "args.op: `{other}` is not one of put, get, search, delete"
            ));
        }
    }
    if let Some(scope) = &a.scope
        && !["task", "session", "global"].contains(&scope.as_str())
    {
        return Err(format!(
            "args.scope: `{scope}` is not one of task, session, global"
        ));
    }
    // Entries are text in storage, and PostgreSQL's text refuses NUL.
    let texts = [a.key.as_deref(), a.query.as_deref()];
    if texts
        .into_iter()
        .flatten()
        .chain(a.tags.iter().map(String::as_str))
        .any(|t| t.contains('\0'))
    {
        return Err("args: key, query and tags must not contain NUL characters".into());
    }
    if let Some(ttl) = a.ttl_secs
        && !(ttl.is_finite() && ttl > 0.0 && ttl <= MAX_TTL_SECS)
    {
        return Err(format!(
            "args.ttl_secs: must be a number of seconds above 0 and at most {MAX_TTL_SECS} (ten years), got {ttl}"
        ));
    }
    Ok(a)
}

/// The scope id of `id` (a session's name, or `""` for `global`) as `principal` sees it:
/// each principal has its own sessions and its own global memory, so one API caller never
/// reads or overwrites another's. Without authentication (no principal) there is one
/// namespace, as before. A principal's ids carry its name and a newline, which no
/// session name can hold (validated at submission), so namespaces never overlap.
fn owned_by(principal: Option<&str>, id: &str) -> String {
    match principal {
        Some(p) => format!("{p}\n{id}"),
        None => id.to_string(),
    }
}

/// Checks a `memory` step's arguments at submission.
pub fn validate(args: &Value) -> Result<(), String> {
    parse(args).map(drop)
}

/// Runs a `memory` step for task `task_id` (of `session`, if it belongs to one) that
/// `principal` submitted.
pub async fn run(
    store: &dyn MemoryStore,
    task_id: &str,
    session: Option<&str>,
    principal: Option<&str>,
    args: &Value,
    input: Option<&str>,
) -> Result<ToolOutput, ToolError> {
    let a = parse(args).map_err(ToolError::InvalidArgs)?;
    let scope = a.scope.clone().unwrap_or_else(|| "task".into());
    let scope_id = match scope.as_str() {
        "task" => task_id.to_string(),
        "session" => {
            let session = session.ok_or_else(|| {
                ToolError::InvalidArgs("args.scope: `session` needs the task's `session`".into())
            })?;
            owned_by(principal, session)
        }
        _ => owned_by(principal, ""),
    };
    let key = a.key.clone().unwrap_or_default();
    let failed = |e: StoreError| ToolError::Failed(e.to_string());
    let text = match a.op.as_str() {
        "put" => {
            let value = match (&a.value, input) {
                (Some(Value::String(s)), _) => s.clone(),
                (Some(other), _) => other.to_string(),
                (None, Some(input)) => input.to_string(),
                (None, None) => {
                    return Err(ToolError::InvalidArgs(
                        "args.value: give a value or an input_from step".into(),
                    ));
                }
            };
            if value.contains('\0') {
                return Err(ToolError::InvalidArgs(
                    "the value holds a NUL character, which memory does not keep".into(),
                ));
            }
            // `as` saturates, and so does the sum: no overflow even past validation.
            let expires_at_ms = a
                .ttl_secs
                .map(|t| now_ms().saturating_add((t * 1000.0) as i64));
            let entry = MemoryEntry {
                scope,
                scope_id,
                key,
                value,
                tags: a.tags,
                expires_at_ms,
            };
            store.put(entry.clone()).await.map_err(failed)?;
            json!({"stored": entry.key}).to_string()
        }
        "get" => match store
            .get(scope, scope_id, key.clone())
            .await
            .map_err(failed)?
        {
            Some(entry) => entry.value,
            None => return Err(ToolError::Failed(format!("no memory entry `{key}`"))),
        },
        "delete" => json!({"deleted": store.delete(scope, scope_id, key).await.map_err(failed)?})
            .to_string(),
        _ => {
            let found = store
                .search(scope, scope_id, a.tags, a.query)
                .await
                .map_err(failed)?;
            serde_json::to_string(&found).unwrap_or_default()
        }
    };
    Ok(ToolOutput {
        bytes: text.len() as u64,
        json: serde_json::from_str(&text).ok(),
        exit_code: Some(0),
        text,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(ttl: Value) -> Value {
        json!({"op": "put", "key": "k", "value": "v", "ttl_secs": ttl})
    }

    #[test]
    fn ttl_is_a_bounded_number_of_seconds() {
        for ttl in [json!(0), json!(-1), json!(1e308), json!(MAX_TTL_SECS * 2.0)] {
            let e = validate(&put(ttl.clone())).unwrap_err();
            assert!(e.starts_with("args.ttl_secs:"), "{ttl}: {e}");
        }
        let e = validate(&put(json!("soon"))).unwrap_err();
        assert!(e.contains("ttl_secs") || e.contains("invalid type"), "{e}");
        validate(&put(json!(0.2))).unwrap();
        validate(&put(json!(MAX_TTL_SECS))).unwrap();
    }
}
