//! The raw baseline of the event feed's throughput: the same JetStream event stream read
//! by a bare ordered pull consumer (what the feed's stream reader sits on), counting
//! messages and touching nothing else — no envelope, no seal check, no filter, no JSON, no
//! WebSocket. `scripts/bench-events.sh` runs it beside `mister-smith events --stats` on the
//! same stream in the same run.
//!
//! Usage: `cargo bench --bench event_stream -- NATS_URL STREAM COUNT`.

use std::time::Instant;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use futures::StreamExt;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [url, stream, count] = args.as_slice() else {
        eprintln!("usage: cargo bench --bench event_stream -- NATS_URL STREAM COUNT");
        std::process::exit(2);
    };
    let count: u64 = count.parse().expect("COUNT is a number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = async_nats::connect(url.as_str()).await.expect("NATS");
        let js = jetstream::new(client);
        let stream = js.get_stream(stream).await.expect("the event stream");
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..OrderedConfig::default()
            })
            .await
            .expect("a consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let started = Instant::now();
        let mut n = 0u64;
        let mut bytes = 0usize;
        while n < count {
            let message = messages.next().await.expect("more").expect("a message");
            bytes += message.payload.len();
            n += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{{\"events\": {n}, \"secs\": {secs:.3}, \"events_per_sec\": {:.0}, \"mean_bytes\": {}}}",
            n as f64 / secs,
            bytes / n.max(1) as usize
        );
    });
}
