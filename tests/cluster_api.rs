//! What a cluster offers beyond membership and takeover (DESIGN §6–§7), with real
//! processes on one NATS and one PostgreSQL database: steps run on another node's agents,
//! the agents of every node listed and visible as NATS services, any node's actors asked
//! of any node, a node drained, and a deep queue shared through the JetStream work queue.

mod common;

use std::time::Duration;

use common::cluster::{
    CLUSTER_DEADLINE, Member, NO_EXECUTORS, cluster_name, metric, wait_link, wait_status,
};
use common::nats::NatsServer;
use common::tasks::{attempts, eventually_within, get_task, submit, submit_ok, wait_final};
use common::{TestNode, postgres_database, run_to_exit};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn echo(text: &str) -> Value {
    json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": text}}]})
}

fn sleepy(ms: u64) -> Value {
    json!({"steps": [{"id": "a", "tool": "sleep", "args": {"ms": ms}}]})
}

#[tokio::test]
async fn steps_run_on_another_nodes_agents_which_every_node_lists_and_nats_tooling_sees() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("remote");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1")
        .config(NO_EXECUTORS)
        .start()
        .await;
    let n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    wait_status(&n1, &["n2"], "up").await;

    // n1 has no executor: the step goes to n2's, and the attempt says so.
    let id = submit_ok(&n1, &echo("over there")).await;
    let task = wait_final(&n1, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    assert_eq!(task["owner"], "n1", "{task:#}");
    let attempt = &attempts(&task, "a")[0];
    assert_eq!(attempt["node"], "n2", "{task:#}");
    assert_eq!(attempt["output"]["text"], "over there", "{task:#}");

    // Every node's agents, each with its node, from either node.
    let url = format!("{}/api/v1/agents?role=executor", n1.http_url());
    let (status, body) = n1.get_json(&url).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let nodes: Vec<&str> = body["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, vec!["n2"; 4], "{body}");
    assert_eq!(body["nodes"]["n1"], "ok", "{body}");
    assert_eq!(body["nodes"]["n2"], "ok", "{body}");
    let (_, all) = n2
        .get_json(&format!("{}/api/v1/agents", n2.http_url()))
        .await;
    let from_n1 = all["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["node"] == "n1")
        .count();
    assert_eq!(
        from_n1, 4,
        "n1's four orchestration agents, listed by n2: {all}"
    );

    // The NATS service API: the executor role of n2, with its metadata.
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let service = format!("ms-{cluster}-execution-executor");
    let info = client
        .request(format!("$SRV.INFO.{service}"), "".into())
        .await
        .expect("$SRV.INFO");
    let info: Value = serde_json::from_slice(&info.payload).expect("INFO is JSON");
    assert_eq!(info["name"], service, "{info:#}");
    assert_eq!(info["metadata"]["node"], "n2", "{info:#}");
    assert_eq!(info["metadata"]["role"], "executor", "{info:#}");
    let caps = info["metadata"]["capabilities"]
        .as_str()
        .unwrap_or_default();
    assert!(caps.split(',').any(|c| c == "tool.echo"), "{info:#}");
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["subject"].as_str())
        .collect();
    assert!(
        subjects.contains(&format!("ms.{cluster}.agents.execution.executor.execute").as_str()),
        "{info:#}"
    );
    // PING reaches every service instance of both nodes: n1 serves orchestration roles.
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await
        .expect("$SRV.PING");
    let mut seen = std::collections::BTreeSet::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), replies.next()).await {
        let ping: Value = serde_json::from_slice(&m.payload).expect("PING is JSON");
        if ping["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("ms-{cluster}-")))
        {
            seen.insert(ping["name"].as_str().unwrap().to_string());
        }
    }
    for role in [
        "orchestration-coordinator",
        "execution-executor",
        "execution-worker",
    ] {
        assert!(
            seen.contains(&format!("ms-{cluster}-{role}")),
            "{role} not in {seen:?}"
        );
    }
    // The events go to the cluster's JetStream stream, e.g. a task's trace.
    let js = async_nats::jetstream::new(client.clone());
    let stream_name = format!("MS_{}_EVENTS", cluster.replace('.', "_").to_uppercase());
    let stream = eventually_within(CLUSTER_DEADLINE, "the event stream", || {
        let (js, name) = (js.clone(), stream_name.clone());
        async move { js.get_stream(&name).await.map_err(|e| e.to_string()) }
    })
    .await;
    // Events published before the stream was declared are not kept: run one more task.
    let later = submit_ok(&n1, &echo("kept")).await;
    wait_final(&n1, &later).await;
    {
        // A task's entries are on its own subject, `…task.trace.<task id>`.
        let subject = format!("ms.{cluster}.events.task.trace.{later}");
        let last = eventually_within(CLUSTER_DEADLINE, &subject, || {
            let (stream, subject) = (stream.clone(), subject.clone());
            async move {
                stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await;
        let envelope: mister_smith::bridge::Envelope<Value> =
            mister_smith::bridge::envelope::decode(&last.payload, None)
                .unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert!(
            envelope.kind.starts_with("event."),
            "{subject}: {envelope:?}"
        );
        assert!(
            ["n1", "n2"].contains(&envelope.from.as_str()),
            "{envelope:?}"
        );
    }

    // STATS count the execute request of the task above.
    let stats = client
        .request(format!("$SRV.STATS.{service}"), "".into())
        .await
        .expect("$SRV.STATS");
    let stats: Value = serde_json::from_slice(&stats.payload).expect("STATS is JSON");
    let executed: u64 = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["subject"]
                .as_str()
                .is_some_and(|s| s.ends_with(".execute"))
        })
        .filter_map(|e| e["num_requests"].as_u64())
        .sum();
    assert!(executed >= 1, "{stats:#}");
}

/// The steps n2's executors have in flight (running or waiting), by n2's own account.
async fn executor_load(n2: &TestNode) -> Result<u64, String> {
    let agents = n2.agents("role=executor").await;
    let mine: Vec<&Value> = agents.iter().filter(|a| a["node"] == "n2").collect();
    if mine.len() != 4 {
        return Err(format!("n2's four executors not all listed: {agents:?}"));
    }
    Ok(mine.iter().filter_map(|a| a["load"].as_u64()).sum())
}

#[tokio::test]
async fn a_cancel_stops_the_step_where_another_node_runs_it() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("cancel");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1")
        .config(NO_EXECUTORS)
        .start()
        .await;
    let n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    wait_status(&n1, &["n2"], "up").await;

    // Fifty minutes of sleep: only a cancel that reaches n2 ends it within the test.
    let mut task = sleepy(3_000_000);
    task["steps"][0]["timeout_secs"] = json!(3600);
    let id = submit_ok(&n1, &task).await;
    eventually_within(CLUSTER_DEADLINE, "the step running on n2", || async {
        match executor_load(&n2).await? {
            1 => Ok(()),
            n => Err(format!("load {n}")),
        }
    })
    .await;

    let (status, body) = n1
        .post(&format!("{}/api/v1/tasks/{id}/cancel", n1.http_url()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    eventually_within(
        CLUSTER_DEADLINE,
        "n2's executor to stop the step",
        || async {
            match executor_load(&n2).await? {
                0 => Ok(()),
                n => Err(format!("load {n}")),
            }
        },
    )
    .await;
    let task = get_task(&n1, &id).await;
    assert_eq!(task["status"], "cancelled", "{task:#}");
}

#[tokio::test]
async fn any_node_answers_for_the_actors_of_any_other() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("admin");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1").start().await;
    let n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    wait_status(&n1, &["n2"], "up").await;

    let (status, tree) = n1
        .get_json(&format!("{}/admin/actors?node=n2", n1.admin_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["node"], "n2", "{tree}");
    // The same tree n2 gives of itself (its ids, its children).
    let (_, own) = n2
        .get_json(&format!("{}/admin/actors", n2.admin_url()))
        .await;
    let names = |t: &Value| -> Vec<String> {
        t["root"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| format!("{}#{}", c["name"].as_str().unwrap(), c["id"]))
            .collect()
    };
    assert_eq!(names(&tree), names(&own));
    assert!(
        names(&own).iter().any(|n| n.starts_with("cluster#")),
        "{own}"
    );

    let id = own["root"]["children"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, one) = n1
        .get_json(&format!("{}/admin/actors/{id}?node=n2", n1.admin_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["node"], "n2");
    assert_eq!(one["actor"]["id"], id.as_str());

    // The CLI: the members table, and n2's tree drawn by asking n1.
    wait_link(&n1, &["n2"], "connected").await;
    let admin = n1.admin_url().replace("http://", "");
    let out = run_to_exit(n1.dir(), &["cluster", "--admin", &admin], &[]).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let n2_row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("n2 "))
        .unwrap_or_default();
    assert!(
        n2_row.contains(" up ") && n2_row.contains("connected"),
        "{}",
        out.stdout
    );
    let out = run_to_exit(
        n1.dir(),
        &["actors", "--admin", &admin, "--node", "n2"],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.starts_with("node n2\n"), "{}", out.stdout);
    assert!(
        out.stdout.contains("cluster [membership]"),
        "{}",
        out.stdout
    );

    let (status, body) = n1
        .get_json(&format!("{}/admin/actors?node=nobody", n1.admin_url()))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "unknown_node", "{body}");
    let (status, body) = n1
        .get_json(&format!("{}/admin/actors/banana?node=n2", n1.admin_url()))
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "n2's own answer, relayed: {body}"
    );
    // A well-formed leave notice "from n2" without the cookie's MAC changes nothing.
    let client = async_nats::connect(nats.url()).await.expect("NATS");
    let forged = mister_smith::bridge::Envelope::new("node.leave", "n2", json!({}))
        .encode()
        .expect("envelope");
    client
        .publish(format!("ms.{cluster}.cluster.leave"), forged)
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    eventually_within(
        CLUSTER_DEADLINE,
        "the forged leave to be ignored",
        || async {
            let log = n1.log();
            if log.contains("cluster.refused") && log.contains("a `node.leave` message") {
                Ok(())
            } else {
                Err("not logged yet".to_string())
            }
        },
    )
    .await;
    let view = wait_status(&n1, &["n2"], "up").await;
    assert_eq!(view["tasks_taken_over"], 0, "{view}");
}

#[tokio::test]
async fn a_drained_node_finishes_its_runs_hands_its_queue_over_and_exits_0() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("drain");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1").start().await;
    let mut n2 = Member::new(&cluster, &db, nats.url(), "n2")
        .env("MISTER_SMITH__SCHEDULER__MAX_RUNNING", "1")
        .start()
        .await;
    wait_status(&n1, &["n2"], "up").await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit_ok(&n2, &sleepy(1500)).await);
    }
    // One runs on n2, three wait in its queue.
    eventually_within(CLUSTER_DEADLINE, "n2 running its first task", || async {
        let t = get_task(&n2, &ids[0]).await;
        if t["status"] == "running" {
            Ok(())
        } else {
            Err(t["status"].to_string())
        }
    })
    .await;

    let (status, body) = n1
        .post(&format!("{}/admin/nodes/n2/drain", n1.admin_url()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["node"], "n2");
    assert_eq!(body["draining"], true);
    assert_eq!(body["running"], 1, "{body}");
    let (status, body) = submit(&n2, &echo("late")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a draining node takes no task: {body}"
    );

    let exit = n2.wait_exit().await;
    assert_eq!(
        exit.code(),
        Some(0),
        "a drained node exits 0:\n{}",
        n2.log()
    );
    assert!(n2.log().contains("drained"), "{}", n2.log());
    let mut owners = Vec::new();
    for id in &ids {
        let t = wait_final(&n1, id).await;
        assert_eq!(t["status"], "succeeded", "{t:#}");
        assert_eq!(attempts(&t, "a").len(), 1, "nothing ran twice: {t:#}");
        owners.push(t["owner"].as_str().unwrap().to_string());
    }
    assert_eq!(
        owners[0], "n2",
        "the run in flight finished on n2: {owners:?}"
    );
    assert!(
        owners[1..].iter().all(|o| o == "n1"),
        "the queue went to n1: {owners:?}"
    );
    let view = wait_status(&n1, &["n2"], "left").await;
    assert!(view["tasks_taken_over"].as_u64() >= Some(3), "{view}");
}

#[tokio::test]
async fn a_deep_queue_is_shared_through_the_jetstream_work_queue() {
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("spill");
    let n1 = Member::new(&cluster, &db, nats.url(), "n1")
        .env("MISTER_SMITH__SCHEDULER__MAX_RUNNING", "1")
        .env("MISTER_SMITH__CLUSTER__SPILL_QUEUED", "2")
        .start()
        .await;
    let n2 = Member::new(&cluster, &db, nats.url(), "n2").start().await;
    wait_status(&n1, &["n2"], "up").await;
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(submit_ok(&n1, &sleepy(300)).await);
    }
    let mut on_n2 = 0;
    for id in &ids {
        let t = wait_final(&n1, id).await;
        assert_eq!(t["status"], "succeeded", "{t:#}");
        assert_eq!(attempts(&t, "a").len(), 1, "{t:#}");
        on_n2 += usize::from(t["owner"] == "n2");
    }
    assert!(on_n2 > 0, "n2 pulled none of n1's deep queue");
    let offered = metric(&n1, "ms_work_queue_offered_total").await;
    let pulled = metric(&n1, "ms_work_queue_pulled_total").await
        + metric(&n2, "ms_work_queue_pulled_total").await;
    assert!(offered >= on_n2 as f64, "offered {offered}, on n2 {on_n2}");
    assert_eq!(pulled, offered, "every ticket offered was pulled");
    // Acked once recorded: the work-queue stream empties.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.expect("NATS"));
    let stream = format!("MS_{}_TASKS", cluster.replace('.', "_").to_uppercase());
    eventually_within(CLUSTER_DEADLINE, "the work queue to be acked empty", || {
        let js = js.clone();
        let stream = stream.clone();
        async move {
            let mut s = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
            let info = s.info().await.map_err(|e| e.to_string())?;
            if info.state.messages == 0 {
                Ok(())
            } else {
                Err(format!("{} left", info.state.messages))
            }
        }
    })
    .await;
}
