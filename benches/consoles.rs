//! Consoles' worth of traffic at one node, from one process, the way browser tabs send it:
//! each console holds one WebSocket of the event feed and polls over kept-alive HTTP
//! connections (a browser neither forks a process per request nor opens a connection per
//! poll). `scripts/bench-events.sh` runs it beside the echo load to measure what open
//! consoles cost the node's throughput.
//!
//! Usage: `cargo bench --bench consoles -- API ADMIN N SECS VIEW`, where API and ADMIN
//! are the node's `host:port`s and VIEW one of:
//! - `events`: the Events view (the feed of everything at `max_rate=50`);
//! - `tabs`: every view's traffic at once, which no one console sends (it shows one view
//!   at a time): the Events view's feed, `/admin/actors` every second (the tree),
//!   `/admin/metrics/history` and `/admin/cluster` every 2 s (charts, cluster);
//! - `firehose`: the feed of everything at full rate, no polls (no page asks for it).
//!
//! Prints one JSON line: what the consoles received and whether any failed.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[derive(Default)]
struct Seen {
    events: u64,
    skipped: u64,
    polls: u64,
    failures: Vec<String>,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [api, admin, n, secs, view] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench consoles -- API ADMIN N SECS events|tabs|firehose");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let secs: u64 = secs.parse().expect("SECS is a number");
    let (rate, polls) = match view.as_str() {
        "events" => (Some(50), false),
        "tabs" => (Some(50), true),
        "firehose" => (None, false),
        other => panic!("unknown view {other}: events, tabs or firehose"),
    };
    // One thread, as the node's own share of the machine is what is measured.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let until = Instant::now() + Duration::from_secs(secs);
    let seen: Vec<Seen> = runtime.block_on(async {
        let consoles = (0..n).map(|_| console(api, admin, rate, polls, until));
        futures::future::join_all(consoles).await
    });
    let events: Vec<u64> = seen.iter().map(|s| s.events).collect();
    let skipped: Vec<u64> = seen.iter().map(|s| s.skipped).collect();
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    println!(
        "{}",
        json!({
            "consoles": n,
            "view": view,
            "events_min": events.iter().min(),
            "events_max": events.iter().max(),
            "skipped_min": skipped.iter().min(),
            "skipped_max": skipped.iter().max(),
            "polls": seen.iter().map(|s| s.polls).sum::<u64>(),
            "failures": failures,
        })
    );
}

/// One console until `until`: its feed, and its polls when `polls`.
async fn console(api: &str, admin: &str, rate: Option<u32>, polls: bool, until: Instant) -> Seen {
    let mut seen = Seen::default();
    let query = rate.map(|r| format!("?max_rate={r}")).unwrap_or_default();
    let url = format!("ws://{api}/api/v1/events/ws{query}");
    let (mut socket, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(connected) => connected,
        Err(e) => {
            seen.failures.push(format!("feed: {e}"));
            return seen;
        }
    };
    let http = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0u64;
    let deadline = tokio::time::Instant::from_std(until);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            frame = socket.next() => match frame {
                Some(Ok(Message::Text(text))) => count(&mut seen, &text),
                Some(Ok(_)) => {}
                Some(Err(e)) => { seen.failures.push(format!("feed: {e}")); break; }
                None => { seen.failures.push("feed: closed".into()); break; }
            },
            _ = tick.tick(), if polls => {
                let mut paths = vec!["/admin/actors"];
                if second.is_multiple_of(2) {
                    paths.extend(["/admin/metrics/history", "/admin/cluster"]);
                }
                second += 1;
                for path in paths {
                    match poll(&http, admin, path).await {
                        Ok(()) => seen.polls += 1,
                        Err(e) => seen.failures.push(e),
                    }
                }
            }
        }
    }
    seen
}

/// One frame: an event, or a count of those skipped for `max_rate`.
fn count(seen: &mut Seen, text: &str) {
    #[derive(serde::Deserialize)]
    struct Brief {
        kind: Option<String>,
        count: Option<u64>,
    }
    match serde_json::from_str::<Brief>(text) {
        Ok(Brief {
            kind: Some(k),
            count,
        }) if k == "skipped" => seen.skipped += count.unwrap_or(0),
        Ok(Brief { kind: Some(k), .. }) if k == "hello" => {}
        Ok(_) => seen.events += 1,
        Err(e) => seen.failures.push(format!("frame: {e}")),
    }
}

/// One poll, its body read whole as the page reads it.
async fn poll(http: &reqwest::Client, admin: &str, path: &str) -> Result<(), String> {
    let response = http
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .map_err(|e| format!("{path}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{path}: {}", response.status()));
    }
    response
        .json::<Value>()
        .await
        .map(|_| ())
        .map_err(|e| format!("{path}: {e}"))
}
