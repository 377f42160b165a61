//! Tasks (DESIGN §4): what is submitted ([`spec`]), the states a task and its steps go
//! through, and what is recorded about them.

pub mod spec;
pub mod store;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use spec::{AgentTask, Expectation, FieldError, Priority, StepSpec, TaskSpec};

/// `queued → planning → running → succeeded | failed | cancelled | timed_out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Planning,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

/// A step's state; `pending` until its dependencies have succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Not run because a step it depends on failed.
    Skipped,
    /// An agent's tool call that needs a person's approval (`tools.approval`), waiting
    /// for it; approved it becomes `pending`, denied `failed`.
    AwaitingApproval,
}

macro_rules! string_enum {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALLOWED: &'static str = concat!($($s, " "),+);

            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $s),+ }
            }

            pub fn parse(s: &str) -> Option<$ty> {
                match s { $($s => Some($ty::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(TaskStatus {
    Queued => "queued",
    Planning => "planning",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    TimedOut => "timed_out",
});

string_enum!(StepStatus {
    Pending => "pending",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Cancelled => "cancelled",
    Skipped => "skipped",
    AwaitingApproval => "awaiting_approval",
});

impl TaskStatus {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            TaskStatus::Succeeded
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::TimedOut
        )
    }
}

impl StepStatus {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            StepStatus::Pending | StepStatus::Running | StepStatus::AwaitingApproval
        )
    }
}

/// The Critic's judgement of one attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Verdict {
    pub passed: bool,
    /// Why, in words a person reads (which check failed and what was seen).
    pub reason: String,
}

/// One attempt at a step, as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: u32,
    #[schema(required)]
    pub agent: Option<String>,
    #[schema(required)]
    pub node: Option<String>,
    /// The tool's output (any JSON value).
    #[schema(required)]
    pub output: Option<Value>,
    #[schema(required)]
    pub error: Option<String>,
    #[schema(required)]
    pub verdict: Option<Verdict>,
    #[schema(required, format = DateTime)]
    pub started_at: Option<String>,
    #[schema(required, format = DateTime)]
    pub finished_at: Option<String>,
}
