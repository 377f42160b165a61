//! Cluster traffic is authenticated (issue 10, item 3): messages on `ms.<cluster>.*`
//! without the cookie's MAC, with a MAC over other bytes, or replayed, are refused,
//! counted and audited, and change nothing (no member appears, no drain happens).

mod common;

use common::cluster::{CLUSTER_DEADLINE, Member, cluster_name, cluster_view, metric};
use common::nats::NatsServer;
use common::postgres_database;
use common::tasks::eventually_within;
use futures::StreamExt;
use serde_json::{Value, json};

fn members(view: &Value) -> Vec<String> {
    view["members"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["node"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_log(node: &common::TestNode, what: &str, needles: &[&str]) {
    eventually_within(CLUSTER_DEADLINE, what, || async {
        let log = node.log();
        if needles.iter().all(|n| log.contains(n)) {
            Ok(())
        } else {
            Err(format!("not in the log yet: {needles:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn forged_replayed_and_unsigned_messages_are_refused_and_change_nothing() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("seal");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1").start().await;
    let client = async_nats::connect(nats.url()).await.expect("NATS");

    // A real heartbeat of n1, captured with its MAC header.
    let mut beats = client
        .subscribe(format!("ms.{cluster}.cluster.heartbeat"))
        .await
        .expect("subscribe");
    let captured = beats.next().await.expect("a heartbeat of n1");
    let headers = captured
        .headers
        .clone()
        .expect("a sealed heartbeat has headers");
    assert!(headers.get("Ms-Mac").is_some(), "{headers:?}");

    // 1. A heartbeat of a node "ghost" without a MAC, and one with n1's MAC: no member.
    let mut beat: Value = {
        let env: mister_smith::bridge::Envelope<Value> =
            mister_smith::bridge::envelope::decode(&captured.payload, None).expect("envelope");
        env.payload
    };
    beat["cluster_addr"] = json!("127.0.0.1:1");
    let ghost = mister_smith::bridge::Envelope::new("node.heartbeat", "ghost", beat)
        .encode()
        .expect("envelope");
    let subject = format!("ms.{cluster}.cluster.heartbeat");
    for _ in 0..5 {
        client
            .publish(subject.clone(), ghost.clone())
            .await
            .expect("publish");
        client
            .publish_with_headers(subject.clone(), headers.clone(), ghost.clone())
            .await
            .expect("publish");
        // 2. The captured heartbeat replayed as it was (same id, same MAC).
        client
            .publish_with_headers(subject.clone(), headers.clone(), captured.payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    wait_log(
        &n1,
        "the forged heartbeats to be audited",
        &["cluster.refused", "peer:ghost", "unsigned"],
    )
    .await;
    // The log and audit say it once per peer per 10 s; the metric counts every one.
    wait_log(&n1, "the replay to be audited", &["peer:n1", "replayed"]).await;
    let (_, text) = n1.get_text(&format!("{}/metrics", n1.http_url())).await;
    for reason in ["unsigned", "bad_mac", "replayed"] {
        let line =
            format!("ms_cluster_refused_total{{kind=\"node.heartbeat\",reason=\"{reason}\"}} 5");
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    let view = cluster_view(&n1).await;
    assert_eq!(members(&view), vec!["n1".to_string()], "{view:#}");
    let refused = metric(&n1, "ms_cluster_refused_total").await;
    assert!(refused >= 15.0, "ms_cluster_refused_total: {refused}");

    // 3. An unsigned drain: refused, audited; n1 keeps running and is not draining.
    let drain = mister_smith::bridge::Envelope::new(
        "admin.request",
        "intruder",
        json!({"verb": "drain", "id": null, "query": {}}),
    )
    .encode()
    .expect("envelope");
    let asked = client
        .request(format!("ms.{cluster}.admin.n1.drain"), drain)
        .await;
    assert!(asked.is_err(), "an unsigned drain got an answer: {asked:?}");
    wait_log(
        &n1,
        "the unsigned drain to be audited",
        &["peer:intruder", "admin.request"],
    )
    .await;
    let view = cluster_view(&n1).await;
    assert_eq!(view["members"][0]["status"], "self", "{view:#}");
    assert!(!n1.log().contains("draining"), "{}", n1.log());

    // 4. An unsigned execute: no step runs (no answer but an error).
    let step = mister_smith::bridge::Envelope::new(
        "agent.step",
        "intruder",
        json!({"task_id": "t", "session": null, "input": null, "timeout_ms": 1000,
               "step": {"id": "a", "tool": "echo", "args": {"text": "pwned"}}}),
    )
    .encode()
    .expect("envelope");
    let answer = client
        .request(
            format!("ms.{cluster}.agents.execution.executor.execute"),
            step,
        )
        .await
        .expect("an error reply");
    assert!(
        !String::from_utf8_lossy(&answer.payload).contains("pwned"),
        "{answer:?}"
    );
    assert!(
        answer
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .is_some_and(|c| c.as_str() == "400"),
        "{answer:?}"
    );
}

/// A NATS TLS file that does not exist stops the node at start, naming the key.
#[tokio::test]
async fn a_missing_nats_tls_file_is_refused_naming_the_key() {
    let dir = common::temp_dir();
    for (key, name) in [
        ("MISTER_SMITH__NATS__TLS_CA", "nats.tls_ca"),
        ("MISTER_SMITH__NATS__NKEY_FILE", "nats.nkey_file"),
        ("MISTER_SMITH__NATS__TLS_CERT", "nats.tls_cert"),
    ] {
        let out = common::run_to_exit(
            dir.path(),
            &["run"],
            &[
                ("MISTER_SMITH__HTTP__LISTEN", "127.0.0.1:0"),
                ("MISTER_SMITH__ADMIN__LISTEN", "127.0.0.1:0"),
                (key, "/nonexistent/file.pem"),
            ],
        )
        .await;
        assert_eq!(out.code(), Some(2), "{}", out.describe());
        assert!(out.stderr.contains(name), "{}", out.describe());
    }
}

/// Steps of others beyond `cluster.max_remote_steps` get a busy reply at once; the node
/// stays ready.
#[tokio::test]
async fn remote_steps_beyond_the_limit_are_answered_busy() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("busy");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1")
        .env("MISTER_SMITH__CLUSTER__MAX_REMOTE_STEPS", "1")
        .start()
        .await;
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let sealer = mister_smith::bridge::seal::Sealer::new(common::cluster::COOKIE);
    let subject = format!("ms.{cluster}.agents.execution.executor.execute");
    let asks = (0..5).map(|_| {
        let bytes = mister_smith::bridge::Envelope::new(
            "agent.step",
            "tester",
            json!({"task_id": "t", "session": null, "input": null, "timeout_ms": 5000,
                   "step": {"id": "a", "tool": "sleep", "args": {"ms": 1500}}}),
        )
        .encode()
        .expect("envelope");
        let headers = sealer.headers(&subject, &bytes);
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            client
                .request_with_headers(subject, headers, bytes)
                .await
                .expect("a reply")
        }
    });
    let replies = futures::future::join_all(asks).await;
    let kinds: Vec<String> = replies
        .iter()
        .map(|r| {
            mister_smith::bridge::envelope::decode::<serde::de::IgnoredAny>(&r.payload, None)
                .map(|e| e.kind)
                .unwrap_or_else(|e| format!("{e}: {r:?}"))
        })
        .collect();
    let busy = kinds.iter().filter(|k| *k == "agent.busy").count();
    let done = kinds.iter().filter(|k| *k == "agent.done").count();
    assert_eq!((busy, done), (4, 1), "{kinds:?}");
    let (status, body) = n1
        .get_json(&format!("{}/health/ready", n1.http_url()))
        .await;
    assert!(status.is_success(), "{body}");
}
