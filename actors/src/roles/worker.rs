//! Worker: computational steps (`llm` completions, JSON transforms, text and data functions),
//! off the async threads where they are heavy.

/// Capabilities the registry indexes this role under.
pub const CAPABILITIES: &[&str] = &[
    "llm.complete",
    "data.transform",
    "text.template",
    "data.hash",
];
