//! The event feed, `GET /api/v1/events/ws` (DESIGN §7), through a real WebSocket client
//! (tokio-tungstenite): this node's events without NATS (`source` `local`), every node's
//! with NATS (`source` `stream`), filtered, resumed after a sequence without gap or
//! duplicate, a slow client closed with 4008 naming where to resume, bad queries and
//! missing scopes refused as JSON; and the task SSE stream following a task that runs on
//! another node.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::{Member, cluster_name, metric, wait_status};
use common::feed::*;
use common::nats::NatsServer;
use common::tasks::{TASK_DEADLINE, get_task, submit_ok, wait_final};
use common::{Launch, TestNode, assert_error_shape, eventually, http_client, postgres_database};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

/// A node without NATS, named `name`.
async fn local_node(name: &str) -> TestNode {
    TestNode::start(&["--node", name], &[]).await
}

// ---------------------------------------------------------------------------------------
// One node, no NATS: the node's own events.

/// A task's entries reach a feed filtered on it, from `started` to `succeeded`, and no
/// other task's; a feed of `agent_state` events passes no task entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_feed_passes_a_tasks_entries_and_only_what_its_filter_names() {
    let node = local_node("solo").await;
    let start = SystemTime::now() - Duration::from_secs(1);
    // Opened before the tasks: every event of theirs happens while it listens.
    let mut live = open(node.http, "").await;
    assert_eq!(live.hello["source"], "local", "{}", live.hello);
    assert_eq!(live.hello["node"], "solo", "{}", live.hello);
    assert_eq!(live.hello["missed"], 0, "{}", live.hello);

    let other = submit_ok(&node, &echo("not this one")).await;
    wait_final(&node, &other).await;
    let id = submit_ok(&node, &echo("hi")).await;
    let task = wait_final(&node, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");

    // The unfiltered live feed: both tasks' entries, numbered by this node, one by one.
    let all = live.until_final(&id).await;
    let seqs: Vec<u64> = all.iter().map(seq).collect();
    assert_contiguous(&seqs, "the unfiltered local feed");
    assert!(
        all.iter().all(|f| f["node"] == "solo"),
        "every event happened on this node: {all:?}"
    );
    assert_whole_trace(&entries_of(&all, &other), "the other task, unfiltered");
    assert_whole_trace(&entries_of(&all, &id), "the task, unfiltered");
    live.close().await;

    // Filtered on the task and replayed from the start: its entries and nothing else, even
    // though the other task's entries come first.
    for query in [
        format!("kind=task&task={id}&after_seq=0"),
        format!("task={id}&since={}", rfc3339(start)),
    ] {
        let mut feed = open(node.http, &query).await;
        assert_eq!(feed.hello["source"], "local", "{query}: {}", feed.hello);
        let frames = feed.until_final(&id).await;
        for frame in &frames {
            assert!(is_entry_of(frame, &id), "{query}: passed {frame}");
            assert_eq!(frame["node"], "solo", "{query}: {frame}");
            assert!(frame["event"]["at"].is_string(), "{query}: {frame}");
            assert!(frame["event"]["at_ms"].is_i64(), "{query}: {frame}");
        }
        let entries: Vec<&Value> = frames.iter().collect();
        assert_whole_trace(&entries, &query);
        let seqs: Vec<u64> = frames.iter().map(seq).collect();
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "{query}: seqs go up: {seqs:?}"
        );
        // The same entries, with the same numbers, as the unfiltered feed gave.
        let unfiltered: Vec<u64> = entries_of(&all, &id).into_iter().map(seq).collect();
        assert_eq!(seqs, unfiltered, "{query}");
        feed.close().await;
    }

    // Agent state changes only: everything this node retains, replayed, and none is a task
    // entry (there are task entries among them).
    let mut states = open(node.http, "kind=agent_state&after_seq=0").await;
    let last = states.hello["last_seq"].as_u64().expect("last_seq");
    let mut seen = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), states.next()).await {
            Err(_) => break, // the replay is over and nothing new happens
            Ok(Got::Frame(frame)) => {
                assert_eq!(frame["event"]["kind"], "agent_state", "passed {frame}");
                assert!(frame["event"]["agent"].is_string(), "{frame}");
                seen += 1;
                if seq(&frame) >= last {
                    break;
                }
            }
            Ok(other) => panic!("the agent_state feed ended: {other:?}"),
        }
    }
    assert!(seen > 0, "no agent_state event among the {last} retained");
    states.close().await;
}

/// A client that disconnects and comes back with `after_seq` of the last frame it got
/// misses nothing that happened meanwhile and gets nothing twice: this node's seqs go on
/// one by one, and every task's final entry arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_feed_resumed_after_a_seq_has_no_gap_and_no_duplicate() {
    let node = local_node("solo").await;
    let mut feed = open(node.http, "").await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(submit_ok(&node, &echo(&format!("before {n}"))).await);
    }
    // Some frames, then away: the first task's whole trace at least.
    let mut frames = feed.until_final(&ids[0]).await;
    let last = seq(frames.last().expect("a frame"));
    feed.close().await;

    // While nobody listens: more tasks, all of them run to their end.
    for n in 0..4 {
        ids.push(submit_ok(&node, &echo(&format!("meanwhile {n}"))).await);
    }
    for id in &ids {
        wait_final(&node, id).await;
    }

    let mut resumed = open(node.http, &format!("after_seq={last}")).await;
    let hello = resumed.hello.clone();
    assert_eq!(hello["source"], "local", "{hello}");
    assert_eq!(hello["missed"], 0, "nothing is lost after {last}: {hello}");
    assert!(
        hello["last_seq"].as_u64() > Some(last),
        "events happened after {last}: {hello}"
    );
    let first = resumed.frame().await;
    assert_eq!(
        seq(&first),
        last + 1,
        "the first frame after {last}: {first}"
    );
    frames.push(first);
    let mut pending: HashSet<&str> = ids.iter().map(String::as_str).collect();
    for frame in &frames {
        if FINAL.contains(&frame["event"]["event"].as_str().unwrap_or_default()) {
            pending.remove(frame["event"]["task_id"].as_str().unwrap_or_default());
        }
    }
    while !pending.is_empty() {
        let frame = resumed.frame().await;
        if frame["event"]["kind"] == "task"
            && FINAL.contains(&frame["event"]["event"].as_str().unwrap_or_default())
        {
            pending.remove(frame["event"]["task_id"].as_str().unwrap_or_default());
        }
        frames.push(frame);
    }
    resumed.close().await;

    let seqs: Vec<u64> = frames.iter().map(seq).collect();
    assert_contiguous(&seqs, "the feed before and after the resume");
    for id in &ids {
        assert_whole_trace(&entries_of(&frames, id), &format!("task {id}"));
    }
}

/// A client that reads steadily but far slower than the node's events come is closed with
/// 4008 and a reason naming the last seq it was sent, from which it resumes; the node is
/// unharmed.
///
/// The client reads a frame every few milliseconds until the node lets go of the feed
/// (its `ms_events_ws_clients` gauge drops to 0), then reads what is left in the kernel's
/// buffers at full speed: the last thing there must be the 4008 close frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_local_client_is_closed_with_4008_naming_where_to_resume() {
    let node = local_node("busy").await;
    // A small receive window, so the client's reads pace the node's writes.
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(node.http).await.expect("connecting");
    let (ws, _) = tokio_tungstenite::client_async(ws_url(node.http, ""), stream)
        .await
        .expect("the handshake");
    let mut slow = Feed::start(ws, "the slow feed".into()).await;
    assert_eq!(metric(&node, "ms_events_ws_clients").await, 1.0);

    // Wide tasks from a few submitters at once, until the node lets go of the feed (or a
    // cap: several times more events than the node's channel holds).
    const STEPS: usize = 100;
    const CAP: usize = 300;
    let stop = Arc::new(AtomicBool::new(false));
    let submitted = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/api/v1/tasks", node.http_url());
    let mut submitters = Vec::new();
    for _ in 0..4 {
        let (stop, submitted, url) = (stop.clone(), submitted.clone(), url.clone());
        submitters.push(tokio::spawn(async move {
            let client = http_client();
            let body = wide(STEPS);
            while !stop.load(Ordering::Relaxed) && submitted.load(Ordering::Relaxed) < CAP {
                submitted.fetch_add(1, Ordering::Relaxed);
                let response = client.post(&url).json(&body).send().await;
                match response {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {}
                    Ok(r) => {
                        let status = r.status();
                        panic!(
                            "submitting: {status} {}",
                            r.text().await.unwrap_or_default()
                        )
                    }
                    Err(e) => panic!("submitting: {e}"),
                }
            }
        }));
    }

    let reading = Instant::now();
    let mut received = 0u64;
    let mut last = 0;
    // When the node let go of the feed: frames read by then, and its slow-close count.
    let mut let_go: Option<(u64, u64)> = None;
    let end = loop {
        match slow.next().await {
            Got::Frame(frame) => {
                let s = seq(&frame);
                assert!(s > last, "seq {s} after {last}");
                last = s;
                received += 1;
                if let_go.is_some() {
                    continue;
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
                if received.is_multiple_of(100) && metric(&node, "ms_events_ws_clients").await < 1.0
                {
                    stop.store(true, Ordering::Relaxed);
                    let slow_closed = metric(&node, "ms_events_ws_slow_closed_total").await as u64;
                    let_go = Some((received, slow_closed));
                }
                assert!(
                    reading.elapsed() < Duration::from_secs(90),
                    "the node still feeds a client {received} frames in, the last seq {s}, \
                     with {} tasks submitted",
                    submitted.load(Ordering::Relaxed)
                );
            }
            other => break other,
        }
    };
    stop.store(true, Ordering::Relaxed);
    for s in submitters {
        s.await.expect("a submitter");
    }
    let Got::Closed(code, reason) = end else {
        panic!(
            "the feed ended without a close frame: {end:?}. The client read {received} frames \
             (the last seq {last}); {} tasks were submitted; when the node let go of the feed \
             (frames read by then, ms_events_ws_slow_closed_total): {let_go:?}",
            submitted.load(Ordering::Relaxed)
        );
    };
    assert_eq!(code, 4008, "closed after {received} frames: {reason}");
    assert_eq!(
        reason,
        format!("slow consumer: resume with after_seq={last}"),
        "the reason names the last seq the client was sent (it read every frame before the \
         close)"
    );
    assert!(
        metric(&node, "ms_events_ws_slow_closed_total").await >= 1.0,
        "the slow close is counted"
    );

    // Resumed where the reason says: the next seq, or the oldest still held.
    let mut resumed = open(node.http, &format!("after_seq={last}")).await;
    let hello = resumed.hello.clone();
    let first_held = hello["first_seq"].as_u64().expect("first_seq");
    let expected = (last + 1).max(first_held);
    assert_eq!(
        hello["missed"].as_u64(),
        Some(expected - last - 1),
        "{hello}"
    );
    let first = resumed.frame().await;
    assert_eq!(
        seq(&first),
        expected,
        "resumed after {last}: {hello} then {first}"
    );
    resumed.close().await;

    let (status, body) = node
        .get_text(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "after the slow client: {body}");
}

// ---------------------------------------------------------------------------------------
// Refusals.

/// A query the feed cannot serve, and a GET that is no WebSocket handshake, are 400s
/// with the API's error shape naming what is wrong; nothing is upgraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_and_plain_gets_are_400_json() {
    let node = local_node("solo").await;
    let cases = [
        ("kind=task,nope", "nope"),
        ("kind=,", "kind"),
        ("task=not-a-uuid", "task"),
        ("session=42", "session"),
        ("after_seq=3&since=2026-01-01T00:00:00Z", "after_seq"),
        ("since=yesterday", "since"),
        ("after_seq=-1", "after_seq"),
        ("colour=blue", "colour"),
    ];
    for (query, named) in cases {
        assert_eq!(
            refused(node.http, query, None).await,
            StatusCode::BAD_REQUEST,
            "{query}"
        );
        let (status, body) = get_feed(node.http, query, true, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        let (code, message) = assert_error_shape(&body, query);
        assert_eq!(code, "bad_request", "{query}: {body}");
        assert!(
            message.contains(named),
            "{query}: the message names {named}: {body}"
        );
    }
    // A good query without the handshake.
    for query in ["", "kind=task"] {
        let (status, body) = get_feed(node.http, query, false, None).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "plain GET ?{query}: {body}"
        );
        let (code, _) = assert_error_shape(&body, "a plain GET");
        assert_eq!(code, "bad_request", "{body}");
    }
    // The node still serves the feed.
    let feed = open(node.http, "kind=task").await;
    feed.close().await;
}

const SECRET: &str = "test-secret-of-at-least-thirty-two-bytes!";

fn token(scope: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "scope": scope, "exp": exp}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("signing a test token")
}

/// With API auth on, the feed needs a token with `events:read`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jwt_auth_the_feed_needs_events_read() {
    let node = Launch::new()
        .args(&["--node", "guarded"])
        .envs(&[
            ("MISTER_SMITH__AUTH__MODE", "jwt"),
            ("MISTER_SMITH__AUTH__SECRET", SECRET),
        ])
        .start()
        .await;
    assert_eq!(
        refused(node.http, "", None).await,
        StatusCode::UNAUTHORIZED,
        "no token"
    );
    let (status, body) = get_feed(node.http, "", true, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(assert_error_shape(&body, "no token").0, "unauthorized");

    let wrong = token("tasks:read tasks:write agents:read");
    assert_eq!(
        refused(node.http, "", Some(&wrong)).await,
        StatusCode::FORBIDDEN,
        "a token without events:read"
    );
    let (status, body) = get_feed(node.http, "", true, Some(&wrong)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(assert_error_shape(&body, "no events:read").0, "forbidden");

    let right = token("events:read");
    let feed = open_as(node.http, "kind=audit", Some(&right)).await;
    assert_eq!(feed.hello["source"], "local", "{}", feed.hello);
    assert_eq!(feed.hello["node"], "guarded", "{}", feed.hello);
    // The refusals just made are on the audit record the feed replays.
    feed.close().await;
    let mut audit = open_as(node.http, "kind=audit&after_seq=0", Some(&right)).await;
    loop {
        let frame = audit.frame().await;
        assert_eq!(frame["event"]["kind"], "audit", "{frame}");
        if frame["event"]["action"] == "api.auth" && frame["event"]["outcome"] == "refused" {
            break;
        }
    }
    audit.close().await;
}

// ---------------------------------------------------------------------------------------
// A cluster: two nodes on one NATS and one PostgreSQL database.

/// A feed opened on n1 hears what happens on n2 (the cluster's event stream numbers
/// every node's events), and a client that leaves n1 goes on at n2 after the last seq it
/// got: the same entries with the same numbers, no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_feed_hears_every_node_and_resumes_on_another_node() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("feed");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1").start().await;
    let n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    wait_status(&n1, &["n2"], "up").await;

    let mut live = open(n1.http, "kind=task").await;
    assert_eq!(live.hello["source"], "stream", "{}", live.hello);
    assert_eq!(live.hello["node"], "n1", "{}", live.hello);

    let id = submit_ok(&n2, &echo_nap_echo(1500)).await;

    // On n1, replayed from the stream's start and filtered on the task: its first entries.
    let mut on_n1 = open(n1.http, &format!("task={id}&after_seq=0")).await;
    assert_eq!(on_n1.hello["source"], "stream", "{}", on_n1.hello);
    let mut got = vec![on_n1.frame().await, on_n1.frame().await];
    on_n1.close().await;
    let last = seq(&got[1]);

    // Then on n2, after the last seq n1 gave.
    let mut on_n2 = open(n2.http, &format!("task={id}&after_seq={last}")).await;
    assert_eq!(on_n2.hello["source"], "stream", "{}", on_n2.hello);
    assert_eq!(on_n2.hello["node"], "n2", "{}", on_n2.hello);
    assert_eq!(on_n2.hello["missed"], 0, "{}", on_n2.hello);
    got.extend(on_n2.until_final(&id).await);
    on_n2.close().await;

    let task = get_task(&n2, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["owner"], "n2", "{task:#}");
    for frame in &got {
        assert!(is_entry_of(frame, &id), "the task filter passed {frame}");
        assert_eq!(
            frame["node"], "n2",
            "the entries are the run's, on n2: {frame}"
        );
    }
    let seqs: Vec<u64> = got.iter().map(seq).collect();
    assert!(
        seqs.windows(2).all(|p| p[0] < p[1]),
        "stream seqs go up across the two nodes: {seqs:?}"
    );
    let entries: Vec<&Value> = got.iter().collect();
    assert_whole_trace(&entries, "the task's entries from n1 then n2");

    // The live feed of n1 heard the same entries of n2's, numbered the same.
    let heard = live.until_final(&id).await;
    live.close().await;
    assert!(
        heard.iter().all(|f| f["event"]["kind"] == "task"),
        "kind=task passed something else: {heard:?}"
    );
    let heard_seqs: Vec<u64> = entries_of(&heard, &id).into_iter().map(seq).collect();
    assert_eq!(
        heard_seqs, seqs,
        "the stream's numbers, whichever node serves them"
    );
    assert!(
        entries_of(&heard, &id).iter().all(|f| f["node"] == "n2"),
        "{heard:?}"
    );
}

/// Reads a task SSE stream to its end (within [`TASK_DEADLINE`]): each event's `event:`
/// and its data as JSON.
async fn sse_until_end(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut response = response;
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        loop {
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                };
                if let Some(data) = field("data:") {
                    let kind = field("event:").unwrap_or_else(|| "message".into());
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"));
                    events.push((kind, data));
                }
            }
            match response.chunk().await {
                Ok(Some(chunk)) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(None) => return,
                Err(e) => panic!("the SSE stream broke after {events:?}: {e}"),
            }
        }
    };
    if tokio::time::timeout(TASK_DEADLINE, read).await.is_err() {
        panic!("the SSE stream did not end within {TASK_DEADLINE:?}");
    }
    events
}

/// A task that runs on n2, followed through n1's task SSE stream: the stream hears its
/// entries and ends with its final one. Then, NATS gone, n1's feed is a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_sse_stream_of_one_node_follows_a_task_run_on_another() {
    let mut nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("sse");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1").start().await;
    let n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    wait_status(&n1, &["n2"], "up").await;

    let id = submit_ok(&n2, &echo_nap_echo(1500)).await;
    let url = format!("{}/api/v1/tasks/{id}/events", n1.http_url());
    let response = n1
        .client
        .get(&url)
        .timeout(TASK_DEADLINE * 2)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status(), StatusCode::OK, "GET {url}");
    let events = sse_until_end(response).await;
    let traced: Vec<(i64, String)> = events
        .iter()
        .map(|(kind, data)| {
            assert_eq!(data["kind"].as_str(), Some(kind.as_str()), "{data}");
            (data["seq"].as_i64().expect("a seq"), kind.clone())
        })
        .collect();
    assert_eq!(
        traced.first().map(|t| t.1.as_str()),
        Some("submitted"),
        "{traced:?}"
    );
    assert_eq!(
        traced.last().map(|t| t.1.as_str()),
        Some("succeeded"),
        "the stream ends with the final entry: {traced:?}"
    );
    for (i, (seq, _)) in traced.iter().enumerate() {
        assert_eq!(*seq, i as i64, "no gap, no duplicate: {traced:?}");
    }
    let task = get_task(&n1, &id).await;
    assert_eq!(task["owner"], "n2", "{task:#}");
    let stored: Vec<i64> = task["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().expect("a seq"))
        .collect();
    assert_eq!(
        stored,
        traced.iter().map(|t| t.0).collect::<Vec<_>>(),
        "the whole stored trace"
    );

    // Without NATS the cluster's event stream cannot be read: 503, as JSON.
    nats.stop().await;
    let status = eventually("n1's feed refused as unavailable", || async {
        match tokio_tungstenite::connect_async(request(n1.http, "", None)).await {
            Ok((mut socket, _)) => {
                let _ = socket.close(None).await;
                Err("upgraded".to_string())
            }
            Err(tungstenite::Error::Http(r)) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                Ok(r.status())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = get_feed(n1.http, "kind=task", true, None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        assert_error_shape(&body, "no NATS").0,
        "unavailable",
        "{body}"
    );
}
