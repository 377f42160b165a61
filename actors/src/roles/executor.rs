//! Executor: carries out atomic actions through tools (`shell`, `http`, `file`, and the
//! always-safe `echo` and `sleep`) with timeouts, cancellation and output limits.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &[
    "tool.echo",
    "tool.sleep",
    "tool.shell",
    "tool.http",
    "tool.file",
];
