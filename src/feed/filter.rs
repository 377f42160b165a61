//! What a feed's client asks for: the query of `GET /api/v1/events/ws`, checked, and the
//! test each event passes or not.

use std::time::SystemTime;

use actors::events::KINDS;
use serde::Deserialize;

use super::Start;
use crate::bridge::Subjects;

/// The feed's query parameters.
#[derive(Debug, Default, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Only these kinds, comma-separated: `task`, `child_failed`, `restart_scheduled`,
    /// `child_restarted`, `escalated`, `agent_state`, `health`, `node_joined`,
    /// `node_down`, `node_left`, `tasks_taken_over`, `audit`.
    pub kind: Option<String>,
    /// Only the entries of this task's trace.
    pub task: Option<String>,
    /// Only the entries of this session's turns.
    pub session: Option<String>,
    /// Only events of this node: that happened on it, or are about it.
    pub node: Option<String>,
    /// Only events naming this actor (as supervisor, child or agent).
    pub actor: Option<String>,
    /// Resume: the last `seq` received; the feed goes on with the next one.
    pub after_seq: Option<u64>,
    /// Replay from this time (RFC 3339, e.g. `2026-12-05T10:00:00Z`).
    pub since: Option<String>,
    /// At most this many events a second (1 to 100000), for people: the rest are counted
    /// in a `skipped` frame (`{"kind": "skipped", "count", "last_seq"}`) once a second.
    pub max_rate: Option<u32>,
    /// The bearer token, for clients that cannot set headers on a WebSocket (browsers);
    /// read by the authentication only.
    pub access_token: Option<String>,
}

/// A checked query: what passes, and where the feed starts.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    kinds: Option<Vec<&'static str>>,
    task: Option<String>,
    session: Option<String>,
    node: Option<String>,
    actor: Option<String>,
}

/// What a filter looks at in one event, whichever source it came from.
#[derive(Debug, Default)]
pub struct View<'a> {
    pub kind: &'a str,
    /// The node it happened on.
    pub node: &'a str,
    /// The node it is about (joined, down, left, taken over from).
    pub about_node: Option<&'a str>,
    pub task: Option<&'a str>,
    pub session: Option<&'a str>,
    pub actors: [Option<&'a str>; 2],
}

/// Longest id or name a filter takes.
const MAX_NAME: usize = 256;

impl FeedQuery {
    /// The filter and the start this query asks for, or a message naming what is wrong.
    pub fn check(&self) -> Result<(Filter, Start), String> {
        let kinds = match &self.kind {
            None => None,
            Some(list) => {
                let mut kinds = Vec::new();
                for k in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
                    let known = KINDS.iter().find(|(kind, _)| *kind == k).ok_or_else(|| {
                        let allowed: Vec<&str> = KINDS.iter().map(|(kind, _)| *kind).collect();
                        format!("kind: unknown kind `{k}`; allowed: {}", allowed.join(", "))
                    })?;
                    kinds.push(known.0);
                }
                if kinds.is_empty() {
                    return Err("kind: give at least one kind".into());
                }
                Some(kinds)
            }
        };
        for (field, id) in [("task", &self.task), ("session", &self.session)] {
            if let Some(id) = id
                && uuid::Uuid::parse_str(id).is_err()
            {
                return Err(format!(
                    "{field}: `{id}` is not an id this API gave (a UUID)"
                ));
            }
        }
        for (field, name) in [("node", &self.node), ("actor", &self.actor)] {
            if let Some(name) = name
                && (name.is_empty() || name.len() > MAX_NAME || name.contains('\0'))
            {
                return Err(format!(
                    "{field}: give a name of 1 to {MAX_NAME} characters"
                ));
            }
        }
        if let Some(rate) = self.max_rate
            && !(1..=super::sample::MAX_RATE).contains(&rate)
        {
            return Err(format!(
                "max_rate: give 1 to {} events a second",
                super::sample::MAX_RATE
            ));
        }
        let start = match (self.after_seq, &self.since) {
            (Some(_), Some(_)) => return Err("give after_seq or since, not both".into()),
            (Some(after), None) => Start::After(after),
            (None, Some(since)) => Start::Since(
                humantime::parse_rfc3339_weak(since)
                    .map_err(|e| format!("since: `{since}` is not an RFC 3339 time: {e}"))?,
            ),
            (None, None) => Start::Live,
        };
        let filter = Filter {
            kinds,
            task: self.task.clone(),
            session: self.session.clone(),
            node: self.node.clone(),
            actor: self.actor.clone(),
        };
        Ok((filter, start))
    }
}

impl Filter {
    /// A filter of one task's entries (the task SSE stream's).
    pub fn task(task_id: &str) -> Self {
        Filter {
            task: Some(task_id.to_string()),
            ..Filter::default()
        }
    }

    /// Whether every event passes (no field asked for).
    pub fn passes_everything(&self) -> bool {
        let Filter {
            kinds,
            task,
            session,
            node,
            actor,
        } = self;
        kinds.is_none() && task.is_none() && session.is_none() && node.is_none() && actor.is_none()
    }

    pub fn accepts(&self, e: &View<'_>) -> bool {
        let kind_ok = self.kinds.as_ref().is_none_or(|k| k.contains(&e.kind));
        let task_ok = self.task.as_deref().is_none_or(|t| e.task == Some(t));
        let session_ok = self.session.as_deref().is_none_or(|s| e.session == Some(s));
        let node_ok = self
            .node
            .as_deref()
            .is_none_or(|n| e.node == n || e.about_node == Some(n));
        let actor_ok = self
            .actor
            .as_deref()
            .is_none_or(|a| e.actors.contains(&Some(a)));
        kind_ok && task_ok && session_ok && node_ok && actor_ok
    }

    /// The subject of the cluster's event stream this filter passes within (NATS filters
    /// the rest out before they are sent): one task's entries, every task's, one kind's
    /// subject, the subjects of kinds of one family (`node.>` for the cluster's
    /// membership), or all.
    pub fn subject(&self, subjects: &Subjects) -> String {
        if let Some(task) = &self.task {
            return subjects.event(&format!("task.trace.{task}"));
        }
        if self.session.is_some() {
            return subjects.event("task.trace.>");
        }
        let Some(kinds) = &self.kinds else {
            return subjects.events();
        };
        let mut suffixes: Vec<&str> = KINDS
            .iter()
            .filter(|(k, _)| kinds.contains(k))
            .map(|(_, suffix)| *suffix)
            .collect();
        suffixes.sort_unstable();
        suffixes.dedup();
        // NATS 2.9 filters a consumer by one subject: several kinds' subjects take their
        // family's (their first token), or all.
        let family = |s: &str| s.split('.').next().unwrap_or_default().to_string();
        match suffixes.as_slice() {
            ["task.trace"] => subjects.event("task.trace.>"),
            [one] => subjects.event(one),
            [first, rest @ ..] if rest.iter().all(|s| family(s) == family(first)) => {
                subjects.event(&format!("{}.>", family(first)))
            }
            _ => subjects.events(),
        }
    }
}

/// A time as the stream's consumers take it.
pub fn offset_time(at: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> Result<(Filter, Start), String> {
        let map: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(k, v)| {
                let v = v.parse::<u64>().map_or_else(|_| (*v).into(), Into::into);
                (k.to_string(), v)
            })
            .collect();
        let q: FeedQuery = serde_json::from_value(map.into()).map_err(|e| e.to_string())?;
        q.check()
    }

    const TASK: &str = "0194f7a0-0000-7000-8000-000000000001";

    #[test]
    fn a_bad_query_names_what_is_wrong() {
        let err = query(&[("kind", "task,nope")]).unwrap_err();
        assert!(
            err.contains("`nope`") && err.contains("child_failed"),
            "{err}"
        );
        assert!(query(&[("task", "x")]).unwrap_err().starts_with("task:"));
        assert!(query(&[("after_seq", "3"), ("since", "2026-01-01T00:00:00Z")]).is_err());
        assert!(
            query(&[("since", "yesterday")])
                .unwrap_err()
                .starts_with("since:")
        );
        assert!(query(&[("kind", ",")]).is_err());
        assert!(
            query(&[("max_rate", "0")])
                .unwrap_err()
                .starts_with("max_rate:")
        );
        assert!(query(&[("max_rate", "50")]).is_ok());
    }

    #[test]
    fn filters_pass_what_they_name() {
        let (f, start) = query(&[("task", TASK), ("after_seq", "7")]).unwrap();
        assert_eq!(start, Start::After(7));
        let entry = View {
            kind: "task",
            node: "n1",
            task: Some(TASK),
            ..View::default()
        };
        assert!(f.accepts(&entry));
        assert!(!f.accepts(&View {
            task: None,
            ..entry
        }));

        let (f, _) = query(&[("node", "n2"), ("kind", "node_down,child_failed")]).unwrap();
        let down = View {
            kind: "node_down",
            node: "n1",
            about_node: Some("n2"),
            ..View::default()
        };
        assert!(f.accepts(&down), "an event about n2 is n2's");
        assert!(!f.accepts(&View {
            about_node: None,
            ..down
        }));
        assert!(!f.accepts(&View {
            kind: "task",
            node: "n2",
            ..View::default()
        }));

        let (f, _) = query(&[("actor", "worker-1")]).unwrap();
        let failed = View {
            kind: "child_failed",
            actors: [Some("workers"), Some("worker-1")],
            ..View::default()
        };
        assert!(f.accepts(&failed));
    }

    #[test]
    fn subjects_narrow_what_the_stream_sends() {
        let subjects = Subjects::new("c");
        let subject = |pairs: &[(&str, &str)]| query(pairs).unwrap().0.subject(&subjects);
        assert_eq!(
            subject(&[("task", TASK)]),
            format!("ms.c.events.task.trace.{TASK}")
        );
        assert_eq!(subject(&[("kind", "task")]), "ms.c.events.task.trace.>");
        assert_eq!(
            subject(&[("kind", "restart_scheduled,child_restarted")]),
            "ms.c.events.supervision.recovery"
        );
        assert_eq!(
            subject(&[("kind", "node_joined,node_down,node_left,tasks_taken_over")]),
            "ms.c.events.node.>",
            "the cluster's membership: one family"
        );
        assert_eq!(
            subject(&[("kind", "child_failed,health")]),
            "ms.c.events.supervision.>"
        );
        assert_eq!(subject(&[("kind", "task,audit")]), "ms.c.events.>");
        assert_eq!(subject(&[("kind", "agent_state,health")]), "ms.c.events.>");
        assert_eq!(subject(&[]), "ms.c.events.>");
    }
}
