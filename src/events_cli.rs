//! `mister-smith events`: follows the event feed (`GET /api/v1/events/ws`) from a terminal
//! or a script: one line per event (or its JSON with `--json`), or with `--stats` only a
//! summary — events/s and the latency from each event's time to its frame, which is what
//! `scripts/bench-events.sh` measures.

use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::cli::BearerToken;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The node's API address.
    #[arg(
        long,
        value_name = "ADDR",
        env = "MISTER_SMITH__HTTP__LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub http: String,
    /// Only these kinds, comma-separated (`task`, `child_failed`, `node_down`, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this task's trace.
    #[arg(long)]
    pub task: Option<String>,
    /// Only this session's turns.
    #[arg(long)]
    pub session: Option<String>,
    /// Only events of (or about) this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Only events naming this actor.
    #[arg(long)]
    pub actor: Option<String>,
    /// Resume after this sequence number (the last one received).
    #[arg(long, value_name = "SEQ")]
    pub after_seq: Option<u64>,
    /// Replay from this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// At most this many events a second; the node counts the rest in `skipped` frames.
    #[arg(long, value_name = "N")]
    pub max_rate: Option<u32>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (`30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Print only a summary at the end: events, events/s, latency percentiles.
    #[arg(long)]
    pub stats: bool,
    /// Print each frame as received (JSON).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub bearer: BearerToken,
}

/// Exit code when the feed could not be had or broke off.
const EXIT_FAILURE: u8 = 1;

pub async fn run(args: &EventsArgs) -> u8 {
    match follow(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILURE
        }
    }
}

/// What `--stats` sums up.
#[derive(Default)]
struct Stats {
    events: u64,
    /// Events the node skipped for `--max-rate`.
    skipped: u64,
    latencies_ms: Vec<f64>,
    first: Option<Instant>,
}

async fn follow(args: &EventsArgs) -> Result<(), String> {
    let url = feed_url(args)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad address {url}: {e}"))?;
    if let Some(token) = &args.bearer.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| refused(&url, e))?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut stats = Stats::default();
    loop {
        let message = match deadline {
            Some(at) => match tokio::time::timeout_at(at, socket.next()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => socket.next().await,
        };
        let text = match message {
            None => return Err("the node closed the feed".into()),
            Some(Err(e)) => return Err(format!("the feed broke off: {e}")),
            Some(Ok(Message::Close(frame))) => {
                let why = frame.map_or_else(
                    || "no reason".to_string(),
                    |f| format!("{} {}", u16::from(f.code), f.reason),
                );
                return Err(format!("the node closed the feed: {why}"));
            }
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
        };
        let not_json =
            |e: serde_json::Error| format!("the node sent a frame that is not JSON: {e}");
        if args.stats {
            // Only what the summary needs: a summary costs the client little.
            let brief: Brief = serde_json::from_str(&text).map_err(not_json)?;
            if stats.note(brief) && args.count.is_some_and(|n| stats.events >= n) {
                break;
            }
            continue;
        }
        let frame: Value = serde_json::from_str(&text).map_err(not_json)?;
        if frame["kind"] == "hello" || frame["kind"] == "skipped" {
            eprintln!("{text}");
            continue;
        }
        stats.events += 1;
        if args.json {
            println!("{text}");
        } else {
            println!("{}", line(&frame));
        }
        if args.count.is_some_and(|n| stats.events >= n) {
            break;
        }
    }
    if args.stats {
        println!("{}", stats.report());
    }
    Ok(())
}

/// What `--stats` reads of a frame.
#[derive(serde::Deserialize)]
struct Brief<'a> {
    #[serde(borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    count: Option<u64>,
    #[serde(borrow)]
    event: Option<BriefEvent<'a>>,
}

#[derive(serde::Deserialize)]
struct BriefEvent<'a> {
    #[serde(borrow)]
    at: Option<std::borrow::Cow<'a, str>>,
}

impl Stats {
    /// Notes a frame; `true` when it was an event's.
    fn note(&mut self, frame: Brief<'_>) -> bool {
        match frame.kind.as_deref() {
            Some("hello") => return false,
            Some("skipped") => {
                self.skipped += frame.count.unwrap_or(0);
                return false;
            }
            _ => {}
        }
        self.events += 1;
        self.first.get_or_insert_with(Instant::now);
        let at = frame
            .event
            .and_then(|e| e.at)
            .and_then(|at| humantime::parse_rfc3339_weak(&at).ok());
        if let Some(at) = at {
            let ms = SystemTime::now()
                .duration_since(at)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            self.latencies_ms.push(ms);
        }
        true
    }

    fn report(&mut self) -> String {
        let secs = self.first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let rate = if secs > 0.0 {
            self.events as f64 / secs
        } else {
            0.0
        };
        self.latencies_ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            let n = self.latencies_ms.len();
            if n == 0 {
                return 0.0;
            }
            self.latencies_ms[((n as f64 * p).ceil() as usize).clamp(1, n) - 1]
        };
        serde_json::json!({
            "events": self.events,
            "skipped": self.skipped,
            "secs": secs,
            "events_per_sec": rate,
            "latency_p50_ms": pct(0.50),
            "latency_p99_ms": pct(0.99),
            "latency_max_ms": pct(1.0),
        })
        .to_string()
    }
}

/// One event for people: `seq node kind` and what it is about.
fn line(frame: &Value) -> String {
    let event = &frame["event"];
    let kind = event["kind"].as_str().unwrap_or("?");
    let about = if kind == "task" {
        format!(
            "{} {}",
            event["task_id"].as_str().unwrap_or("?"),
            event["event"].as_str().unwrap_or("?")
        )
    } else {
        let mut rest = event.clone();
        if let Some(map) = rest.as_object_mut() {
            map.remove("kind");
            map.remove("at");
        }
        rest.to_string()
    };
    format!(
        "{} {} {} {kind} {about}",
        frame["seq"],
        event["at"].as_str().unwrap_or("?"),
        frame["node"].as_str().unwrap_or("?"),
    )
}

fn feed_url(args: &EventsArgs) -> Result<reqwest::Url, String> {
    let mut params: Vec<(&str, String)> = Vec::new();
    let text = [
        ("kind", &args.kind),
        ("task", &args.task),
        ("session", &args.session),
        ("node", &args.node),
        ("actor", &args.actor),
        ("since", &args.since),
    ];
    for (key, value) in text {
        if let Some(v) = value {
            params.push((key, v.clone()));
        }
    }
    if let Some(after) = args.after_seq {
        params.push(("after_seq", after.to_string()));
    }
    if let Some(rate) = args.max_rate {
        params.push(("max_rate", rate.to_string()));
    }
    let base = format!("ws://{}/api/v1/events/ws", args.http);
    reqwest::Url::parse_with_params(&base, &params).map_err(|e| format!("bad address {base}: {e}"))
}

/// A failed connection, as a person reads it: the node's JSON error when it answered one.
fn refused(url: &reqwest::Url, e: tungstenite::Error) -> String {
    match e {
        tungstenite::Error::Http(response) => {
            let body: Value = response
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or_default();
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            format!(
                "the node at {url} answered {}: {message}",
                response.status()
            )
        }
        other => format!("cannot reach the node at {url}: {other}"),
    }
}
