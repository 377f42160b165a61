//! The event feed's shared reader (`src/feed/hub.rs`) with NATS: clients that follow
//! broadly share one consumer of the event stream, and a resumed client hands over from
//! its own replay to it while events keep coming, without a gap or a duplicate. And a
//! feed for people (`max_rate`, `src/feed/sample.rs`): the events it does not send are
//! counted, none unaccounted for.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::cluster::{Member, cluster_name, metric};
use common::feed::*;
use common::nats::NatsServer;
use common::tasks::submit_ok;
use common::tasks::wait_final;
use common::{TestNode, eventually, postgres_database};
use serde_json::Value;

/// Submits wide tasks from two clients until `stop`: a steady flow of events.
fn load(node: &Arc<TestNode>, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let (node, stop) = (node.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    submit_ok(&node, &wide(4)).await;
                }
            })
        })
        .collect()
}

/// A node of a cluster of its own (its own NATS, a fresh PostgreSQL database) under
/// [`load`], its event stream there.
struct Busy {
    nats: NatsServer,
    cluster: String,
    _db: common::PgDatabase,
    node: Arc<TestNode>,
    stop: Arc<AtomicBool>,
    submitters: Vec<tokio::task::JoinHandle<()>>,
}

impl Busy {
    async fn start(name: &str) -> Busy {
        let nats = NatsServer::spawn().await;
        let db = postgres_database().await;
        let cluster = cluster_name(name);
        let node = Arc::new(Member::new(&cluster, &db, nats.url(), "n1").start().await);
        let stop = Arc::new(AtomicBool::new(false));
        let submitters = load(&node, &stop);
        stream_ready(&node).await;
        let _db = db;
        Busy {
            nats,
            cluster,
            _db,
            node,
            stop,
            submitters,
        }
    }

    /// The cluster's event stream.
    async fn stream(&self) -> async_nats::jetstream::stream::Stream {
        let nats = async_nats::connect(self.nats.url()).await.expect("NATS");
        let name = format!(
            "MS_{}_EVENTS",
            self.cluster.replace('.', "_").to_uppercase()
        );
        let stream = async_nats::jetstream::new(nats).get_stream(name).await;
        stream.expect("the event stream")
    }

    /// Stops the load once every submitter's task is in.
    async fn quiet(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.submitters.drain(..) {
            s.await.expect("a submitter");
        }
    }
}

/// Waits until the feed opens: the event stream is there once the node has forwarded an
/// event to it.
async fn stream_ready(node: &TestNode) {
    eventually("the event stream", || async {
        match tokio_tungstenite::connect_async(request(node.http, "", None)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
}

/// Reads frames of `feed` until one has a seq of at least `until`.
async fn read_to(feed: &mut Client, until: u64) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = feed.frame().await;
        let done = seq(&frame) >= until;
        frames.push(frame);
        if done {
            return frames;
        }
    }
}

/// A client following everything live, and two resumed after the same seq while tasks
/// keep running (one following everything, one every task's entries): each replays, hands
/// over to the shared reader, and goes on; every seq after the resume point arrives once,
/// in order, as it does to the live client; one shared reader serves all three, and it
/// stops once they have gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_broad_feeds_hand_over_to_the_shared_reader_without_gap_or_duplicate() {
    let mut busy = Busy::start("hub").await;
    let node = busy.node.clone();
    let mut live = open(node.http, "").await;
    assert_eq!(live.hello["source"], "stream", "{}", live.hello);
    let first = live.frame().await;
    let from = seq(&first);
    let mut live_frames = vec![first];
    // A backlog for the resumed clients to replay.
    live_frames.extend(read_to(&mut live, from + 2_000).await);

    let mut all = open(node.http, &format!("after_seq={from}")).await;
    let mut tasks = open(node.http, &format!("kind=task&after_seq={from}")).await;
    let opened_at = all.hello["last_seq"].as_u64().expect("last_seq");
    assert!(
        opened_at >= from + 2_000,
        "a backlog to replay: {}",
        all.hello
    );
    // Well past where the replays caught up: they have handed over by then.
    let until = opened_at + 3_000;
    let all_frames = read_to(&mut all, until).await;
    let task_frames = read_to(&mut tasks, until).await;
    live_frames.extend(read_to(&mut live, until).await);
    busy.quiet().await;

    let live_seqs: Vec<u64> = live_frames.iter().map(seq).collect();
    assert_contiguous(&live_seqs, "the live client");
    let all_seqs: Vec<u64> = all_frames.iter().map(seq).collect();
    assert_eq!(
        all_seqs[0],
        from + 1,
        "the first frame after the resume point"
    );
    assert_contiguous(&all_seqs, "the client resumed on everything");
    assert!(
        task_frames.iter().all(|f| f["event"]["kind"] == "task"),
        "kind=task passed something else"
    );
    let task_seqs: Vec<u64> = task_frames.iter().map(seq).collect();
    let expected: Vec<u64> = all_frames
        .iter()
        .filter(|f| f["event"]["kind"] == "task")
        .map(seq)
        .filter(|s| *s <= *task_seqs.last().expect("a task frame"))
        .collect();
    assert_eq!(
        task_seqs, expected,
        "the client resumed on task entries got exactly the task entries among them"
    );
    // The same seq is the same event, whichever path it took to each client.
    let by_seq: std::collections::HashMap<u64, &Value> =
        live_frames.iter().map(|f| (seq(f), f)).collect();
    for frame in all_frames.iter().chain(&task_frames) {
        if let Some(heard) = by_seq.get(&seq(frame)) {
            assert_eq!(*heard, frame, "seq {} differs between clients", seq(frame));
        }
    }

    let handovers = metric(&node, "ms_events_feed_handovers_total").await;
    assert!(
        handovers >= 2.0,
        "both resumed clients handed over to the shared reader"
    );
    assert_eq!(
        metric(&node, "ms_events_feed_shared_readers").await,
        1.0,
        "one shared reader for the three clients"
    );
    for feed in [live, all, tasks] {
        feed.close().await;
    }
    // It stops at the first event that finds no client.
    eventually("the shared reader stops with its last client", || async {
        submit_ok(&node, &wide(1)).await;
        match metric(&node, "ms_events_feed_shared_readers").await {
            0.0 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await;
    // And starts again for the next.
    let mut again = open(node.http, "kind=task").await;
    let id = submit_ok(&node, &wide(2)).await;
    again.until_final(&id).await;
}

/// A feed with `max_rate=5` beside one without, while two tasks write 84 entries at once:
/// the sampled one gets a few of them and `skipped` frames counting the rest, so that
/// what it got and what it was told it missed add up to what the other got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_feed_counts_every_event_it_does_not_send() {
    let node = TestNode::start(&["--node", "solo"], &[]).await;
    let mut all = open(node.http, "kind=task").await;
    let mut sampled = open(node.http, "kind=task&max_rate=5").await;
    let ids = [
        submit_ok(&node, &wide(40)).await,
        submit_ok(&node, &wide(40)).await,
    ];
    for id in &ids {
        wait_final(&node, id).await;
    }
    let mut every = Vec::new();
    let mut running: Vec<&String> = ids.iter().collect();
    while !running.is_empty() {
        let frame = all.frame().await;
        let done = FINAL.contains(&frame["event"]["event"].as_str().unwrap_or_default());
        if done {
            running.retain(|id| !is_entry_of(&frame, id));
        }
        every.push(frame);
    }
    let total = every.len() as u64;
    let last = seq(every.last().expect("a frame"));
    assert!(total >= 84, "{total} entries");

    // Read the sampled feed until everything is accounted for (a skipped frame comes
    // within a second of the events it counts).
    let (mut sent, mut skipped, mut reports) = (0u64, 0u64, 0);
    while sent + skipped < total {
        match sampled.next().await {
            Got::Frame(f) if f["kind"] == "skipped" => {
                let count = f["count"].as_u64().expect("a count");
                assert!(count > 0, "{f}");
                assert!(f["last_seq"].as_u64() <= Some(last), "{f}");
                skipped += count;
                reports += 1;
            }
            Got::Frame(f) => {
                assert_eq!(f["event"]["kind"], "task", "{f}");
                sent += 1;
            }
            other => panic!("the sampled feed ended: {other:?}"),
        }
    }
    assert_eq!(sent + skipped, total, "sent {sent}, skipped {skipped}");
    assert!(reports > 0 && sent < total, "sent {sent} of {total}");
}

/// Events on the stream that no node of the cluster sealed (no MAC, or a wrong one) are
/// read only as far as filters need, and never sent: not to a client of the shared reader,
/// nor to one replaying with its own consumer. Each is refused and audited instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_no_node_sealed_reach_no_client() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("forged");
    let node = Member::new(&cluster, &db, nats.url(), "n1").start().await;
    stream_ready(&node).await;
    let mut live = open(node.http, "").await;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    let subject = format!("ms.{cluster}.events.node.left");
    let forged = |node: &str| {
        let payload =
            serde_json::json!({"kind": "node_left", "node": node, "at": "2026-01-01T00:00:00Z"});
        mister_smith::bridge::envelope::Envelope::new("event.node.left", "mallory", payload)
            .encode()
            .expect("an envelope")
    };
    let mut seqs = Vec::new();
    let unsigned = js
        .publish(subject.clone(), forged("n8"))
        .await
        .expect("published");
    seqs.push(unsigned.await.expect("stored").sequence);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Ms-Mac", "00".repeat(32).as_str());
    let bad_mac = js
        .publish_with_headers(subject, headers, forged("n9"))
        .await
        .expect("published");
    seqs.push(bad_mac.await.expect("stored").sequence);

    // Genuine events after the forged ones.
    let task = submit_ok(&node, &echo("after")).await;
    wait_final(&node, &task).await;

    // Each is refused as it would have been sent, and the refusal audited (once per sender
    // within a while): both clients read past the forged events and see the audit.
    let mut replay = open(node.http, &format!("after_seq={}", seqs[0] - 1)).await;
    for feed in [&mut live, &mut replay] {
        let mut audited = false;
        loop {
            let frame = feed.frame().await;
            let seq = seq(&frame);
            assert!(!seqs.contains(&seq), "a forged event was sent: {frame}");
            let event = &frame["event"];
            assert_ne!(event["kind"], "node_left", "{frame}");
            if event["action"] == "cluster.refused" {
                assert_eq!(event["principal"], "peer:mallory", "{frame}");
                audited = true;
            }
            if audited && seq > seqs[1] {
                break;
            }
        }
    }
    let refused = metric(&node, "ms_cluster_refused_total").await;
    assert!(refused >= 2.0, "refusals counted: {refused}");
}

/// What a sampled feed has told of: events sent and events counted as skipped, after the
/// hello's `last_seq`.
struct Tally {
    from: u64,
    sent: u64,
    skipped: u64,
    last_sent: u64,
    reports: u32,
}

impl Tally {
    fn new(from: u64) -> Self {
        let (sent, skipped, last_sent, reports) = (0, 0, from, 0);
        Tally {
            from,
            sent,
            skipped,
            last_sent,
            reports,
        }
    }

    /// Takes `frame`, none of whose seqs may be past `head`.
    fn take(&mut self, frame: Value, head: u64) {
        if frame["kind"] == "skipped" {
            let count = frame["count"].as_u64().expect("a count");
            let last = frame["last_seq"].as_u64().expect("a last_seq");
            assert!(count > 0 && last > self.from && last <= head, "{frame}");
            self.skipped += count;
            self.reports += 1;
        } else {
            let seq = seq(&frame);
            let after = self.last_sent;
            assert!(seq > after && seq <= head, "after {after}: {frame}");
            self.last_sent = seq;
            self.sent += 1;
        }
    }

    fn told(&self) -> u64 {
        self.sent + self.skipped
    }
}

/// The next frame of a sampled feed: an event, or a `skipped` count.
async fn told(feed: &mut Client) -> Value {
    match feed.next().await {
        Got::Frame(frame) => frame,
        other => panic!("the sampled feed ended: {other:?}"),
    }
}

/// Sampled feeds of everything (two consoles' Events views) under load read only the
/// events they send (`src/feed/stride.rs`): one stride serves both, with no shared reader
/// and no consumer of the stream, whose sequence numbers tell how many events were gone
/// past. For each feed, every seq after its hello's `last_seq` is accounted for once:
/// sent (in order, none twice) or counted in a `skipped` frame. The stride stops with
/// its last feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sampled_feed_of_everything_reads_only_what_it_sends() {
    let mut busy = Busy::start("stride").await;
    let node = busy.node.clone();
    let mut stream = busy.stream().await;
    let opened = time::OffsetDateTime::now_utc();

    // Two consoles' Events views: one stride serves both.
    let mut feeds = Vec::new();
    for _ in 0..2 {
        let feed = open(node.http, "max_rate=20").await;
        let from = feed.hello["last_seq"]
            .as_u64()
            .expect("the hello's last_seq");
        feeds.push((feed, Tally::new(from)));
    }
    for (feed, tally) in &mut feeds {
        while tally.reports < 3 {
            tally.take(told(feed).await, u64::MAX);
        }
    }
    let consumers: Vec<String> = futures::StreamExt::collect::<Vec<_>>(stream.consumers())
        .await
        .into_iter()
        .map(|c| c.expect("a consumer's info"))
        .filter(|c| c.created >= opened)
        .map(|c| format!("{} (created {})", c.name, c.created))
        .collect();
    assert_eq!(
        consumers,
        Vec::<String>::new(),
        "consumers since the feeds opened"
    );
    assert_eq!(
        metric(&node, "ms_events_feed_shared_readers").await,
        0.0,
        "a sampled feed of everything starts no shared reader"
    );
    assert_eq!(
        metric(&node, "ms_events_feed_strides").await,
        1.0,
        "one stride for both feeds"
    );

    busy.quiet().await;
    // Quiet now: each feed catches up with the stream's end and has told of every seq.
    for (feed, tally) in &mut feeds {
        let last_seq = |info: &async_nats::jetstream::stream::Info| info.state.last_sequence;
        let mut head = last_seq(stream.info().await.expect("stream info"));
        while tally.told() < head - tally.from {
            let frame = told(feed).await;
            head = last_seq(stream.info().await.expect("stream info"));
            tally.take(frame, head);
        }
        let (sent, skipped) = (tally.sent, tally.skipped);
        assert_eq!(
            sent + skipped,
            head - tally.from,
            "sent {sent}, skipped {skipped}"
        );
        assert!(
            skipped > sent,
            "sent {sent}, skipped {skipped}: not a busy stream"
        );
    }
    for (feed, _) in feeds {
        feed.close().await;
    }
    eventually("the stride stops with its last feed", || async {
        match metric(&node, "ms_events_feed_strides").await {
            0.0 => Ok(()),
            n => Err(format!("{n} running")),
        }
    })
    .await;
}
