//! One node end to end: health, metrics, the agents API, the admin tree and its
//! operations, the admin token, shutdown, escalation past the root, and restarting on the
//! same files (DESIGN §2, §7, §8).

mod common;

use common::{
    DEFAULT_AGENTS, DEFAULT_DOMAINS, Launch, TestNode, actor_at, assert_error_shape, eventually,
    id_of, temp_dir,
};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use serde_json::Value;

/// The children of each default domain, in configuration (start) order.
const DEFAULT_TREE: [(&str, &[&str]); 4] = [
    (
        "orchestration",
        &[
            "coordinator-1",
            "coordinator-2",
            "planner-1",
            "router-1",
            "critic-1",
        ],
    ),
    (
        "execution",
        &[
            "executor-1",
            "executor-2",
            "executor-3",
            "executor-4",
            "worker-1",
            "worker-2",
        ],
    ),
    ("knowledge", &["memory-1"]),
    ("operations", &["monitor-1"]),
];

fn names(node: &Value) -> Vec<String> {
    node["children"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|c| c["name"].as_str().unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `actor` is a running incarnation other than `old` (a vacant slot has an id of
/// the form `<supervisor>:<child>`, not a number).
fn replaced(actor: &Value, old: u64) -> bool {
    actor["id"]
        .as_str()
        .and_then(|id| id.parse::<u64>().ok())
        .is_some_and(|id| id != old)
        && actor["status"] == "running"
}

/// Waits until the actor at `path` satisfies `done`; returns it.
async fn wait_actor(
    node: &TestNode,
    path: &[&str],
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    eventually(what, || async {
        let tree = node.tree().await;
        match actor_at(&tree["root"], path) {
            Some(actor) if done(actor) => Ok(actor.clone()),
            Some(actor) => Err(actor.to_string()),
            None => Err(format!("no actor at {path:?} in {tree}")),
        }
    })
    .await
}

/// Waits until every default agent is registered and active (registration is
/// asynchronous, so readiness may come a moment before it).
async fn all_agents_active(node: &TestNode) -> Vec<Value> {
    eventually("every default agent to be active", || async {
        let agents = node.agents("state=active").await;
        if agents.len() == DEFAULT_AGENTS.len() {
            Ok(agents)
        } else {
            Err(format!("{} active: {agents:?}", agents.len()))
        }
    })
    .await
}

/// The registry's records of the agent `name` (live and terminated).
async fn records(node: &TestNode, name: &str) -> Vec<Value> {
    node.agents("")
        .await
        .into_iter()
        .filter(|a| a["name"] == name)
        .collect()
}

/// Value of one exact series (`name{labels}`) in Prometheus text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

async fn metrics(node: &TestNode) -> String {
    let (status, text) = node.get_text(&format!("{}/metrics", node.http_url())).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    text
}

#[tokio::test]
async fn ready_and_live_answer_with_their_checks() {
    let node = TestNode::start(&["--node", "health-node"], &[]).await;

    let (status, ready) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["node"], "health-node", "{ready}");
    assert_eq!(ready["checks"]["storage"], "up", "{ready}");
    assert_eq!(ready["checks"]["supervision"], "up", "{ready}");
    assert!(ready["checks"]["bus"].is_string(), "{ready}");

    let (status, live) = node
        .get_json(&format!("{}/health/live", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{live}");
    assert_eq!(live["status"], "live", "{live}");
}

#[tokio::test]
async fn metrics_show_uptime_agents_and_supervisor_restarts() {
    let node = TestNode::start(&[], &[]).await;
    let response = node
        .client
        .get(format!("{}/metrics", node.http_url()))
        .send()
        .await
        .expect("GET /metrics");
    let content_type = response.headers()[CONTENT_TYPE]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    let text = metrics(&node).await;
    let uptime = metric(&text, "ms_uptime_seconds")
        .unwrap_or_else(|| panic!("no ms_uptime_seconds:\n{text}"));
    assert!(uptime >= 0.0, "{uptime}");
    eventually(
        "ms_agents{state=\"active\"} to count every default agent",
        || async {
            let text = metrics(&node).await;
            match metric(&text, "ms_agents{state=\"active\"}") {
                Some(n) if n == DEFAULT_AGENTS.len() as f64 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let restarts = "ms_supervisor_restarts_total{supervisor=\"execution\"}";
    assert_eq!(
        metric(&text, restarts).unwrap_or(0.0),
        0.0,
        "no restart yet:\n{text}"
    );

    let victim = node.actor(&["execution", "executor-1"]).await;
    let (status, body) = node
        .post(&format!(
            "{}/admin/actors/{}/kill",
            node.admin_url(),
            id_of(&victim)
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    eventually(
        "the execution supervisor's restart to be counted",
        || async {
            let text = metrics(&node).await;
            match metric(&text, restarts) {
                Some(1.0) => Ok(()),
                other => Err(format!("{restarts} = {other:?}")),
            }
        },
    )
    .await;
    // The restarted actor's own detail shows its slot's restart and why.
    let detail = eventually("executor-1 back under a new id", || async {
        let now = node.actor(&["execution", "executor-1"]).await;
        if now["id"] == victim["id"] || now["status"] != "running" {
            return Err(format!("{now}"));
        }
        let url = format!("{}/admin/actors/{}", node.admin_url(), id_of(&now));
        let (status, body) = node.get_json(&url).await;
        (status == StatusCode::OK)
            .then_some(body)
            .ok_or(format!("{status}"))
    })
    .await;
    assert_eq!(detail["actor"]["restarts"], 1, "{detail}");
    assert!(detail["actor"]["last_error"].is_string(), "{detail}");
    let text = metrics(&node).await;
    assert_eq!(
        metric(
            &text,
            "ms_supervisor_child_failures_total{supervisor=\"execution\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn agents_lists_every_default_agent() {
    let node = TestNode::start(&["--node", "lister"], &[]).await;
    let active = all_agents_active(&node).await;
    let all = node.agents("").await;
    assert_eq!(all.len(), DEFAULT_AGENTS.len(), "{all:#?}");
    assert_eq!(active.len(), DEFAULT_AGENTS.len(), "{active:#?}");
    let seen: Vec<(&str, &str, &str)> = all
        .iter()
        .map(|a| {
            (
                a["domain"].as_str().unwrap_or("?"),
                a["name"].as_str().unwrap_or("?"),
                a["role"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    assert_eq!(seen, DEFAULT_AGENTS, "sorted by domain, then name");
    let mut instance_ids = std::collections::HashSet::new();
    for a in &all {
        assert_eq!(a["node"], "lister", "{a}");
        assert_eq!(a["state"], "active", "{a}");
        assert_eq!(a["healthy"], true, "{a}");
        assert!(a["actor_id"].is_u64(), "{a}");
        assert!(
            a["capabilities"].as_array().is_some_and(|c| !c.is_empty()),
            "{a}"
        );
        let id = a["instance_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no instance_id: {a}"));
        assert!(
            instance_ids.insert(id.to_string()),
            "duplicate instance_id {id}"
        );
    }
}

#[tokio::test]
async fn agents_can_be_filtered_by_role_capability_domain_and_state() {
    let node = TestNode::start(&[], &[]).await;
    all_agents_active(&node).await;

    let names_of = |agents: &[Value]| -> Vec<String> {
        agents
            .iter()
            .map(|a| a["name"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    let executors = ["executor-1", "executor-2", "executor-3", "executor-4"];

    let by_role = node.agents("role=executor").await;
    assert_eq!(names_of(&by_role), executors);
    let by_capability = node.agents("capability=tool.echo").await;
    assert_eq!(names_of(&by_capability), executors);
    for a in &by_capability {
        assert!(
            a["capabilities"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "tool.echo")),
            "{a}"
        );
    }
    assert_eq!(
        names_of(&node.agents("domain=knowledge").await),
        ["memory-1"]
    );
    assert_eq!(
        node.agents("state=active").await.len(),
        DEFAULT_AGENTS.len()
    );
    assert!(node.agents("state=terminated").await.is_empty());
    assert_eq!(
        names_of(&node.agents("role=worker&domain=execution").await),
        ["worker-1", "worker-2"]
    );
    assert!(node.agents("role=worker&domain=knowledge").await.is_empty());
    assert!(
        node.agents("capability=no.such.capability")
            .await
            .is_empty()
    );
    assert!(node.agents("domain=nowhere").await.is_empty());
}

#[tokio::test]
async fn agents_rejects_bad_queries_with_a_json_400() {
    let node = TestNode::start(&[], &[]).await;
    for (query, must_mention) in [
        ("state=bogus", ["bogus", "active"]),
        ("role=wizard", ["wizard", "executor"]),
        ("colour=blue", ["colour", "colour"]),
    ] {
        let url = format!("{}/api/v1/agents?{query}", node.http_url());
        let (status, body) = node.get_json(&url).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        let (code, message) = assert_error_shape(&body, &url);
        assert_eq!(code, "bad_request", "{url}: {body}");
        for word in must_mention {
            assert!(
                message.contains(word),
                "{url}: message does not mention `{word}`: {body}"
            );
        }
    }
}

async fn assert_json_error(
    node: &TestNode,
    method: reqwest::Method,
    url: &str,
    status: StatusCode,
    code: &str,
) {
    let response = node
        .client
        .request(method.clone(), url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    assert_eq!(response.status(), status, "{method} {url}");
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{method} {url}: content-type {content_type}"
    );
    let body: Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: not JSON: {e}"));
    let (got, _) = assert_error_shape(&body, url);
    assert_eq!(got, code, "{method} {url}: {body}");
}

#[tokio::test]
async fn unknown_routes_are_a_json_404() {
    let node = TestNode::start(&[], &[]).await;
    let (api, admin) = (node.http_url(), node.admin_url());
    for url in [
        format!("{api}/nope"),
        format!("{api}/api/v1/nope"),
        format!("{api}/admin/actors"), // admin routes live on the admin listener only
        format!("{admin}/nope"),
        format!("{admin}/admin/nope"),
        format!("{admin}/api/v1/agents"),
    ] {
        assert_json_error(
            &node,
            reqwest::Method::GET,
            &url,
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
    }
}

#[tokio::test]
async fn wrong_methods_are_a_json_405() {
    let node = TestNode::start(&[], &[]).await;
    let (api, admin) = (node.http_url(), node.admin_url());
    let root = id_of(&node.tree().await["root"]);
    use reqwest::Method;
    for (method, url) in [
        (Method::POST, format!("{api}/health/ready")),
        (Method::POST, format!("{api}/health/live")),
        (Method::DELETE, format!("{api}/api/v1/agents")),
        (Method::PUT, format!("{api}/metrics")),
        (Method::POST, format!("{admin}/admin/actors")),
        (Method::DELETE, format!("{admin}/admin/actors/{root}")),
        (Method::GET, format!("{admin}/admin/actors/{root}/kill")),
    ] {
        assert_json_error(
            &node,
            method,
            &url,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    }
    // Nothing was done by the refused requests.
    assert_eq!(id_of(&node.tree().await["root"]), root);
}

#[tokio::test]
async fn admin_tree_shows_root_registry_domains_and_agents() {
    let node = TestNode::start(&["--node", "treetop"], &[]).await;
    all_agents_active(&node).await;
    let tree = node.tree().await;
    assert_eq!(tree["node"], "treetop", "{tree}");
    let root = &tree["root"];
    assert_eq!(root["name"], "root", "{root}");
    assert_eq!(root["kind"], "supervisor");
    assert_eq!(root["strategy"], "one_for_one");
    assert_eq!(root["status"], "running");

    let mut expected = vec!["registry".to_string()];
    expected.extend(DEFAULT_DOMAINS.iter().map(|d| d.to_string()));
    expected.extend(["runs".to_string(), "scheduler".to_string()]);
    assert_eq!(names(root), expected, "{tree:#}");

    let registry = actor_at(root, &["registry"]).expect("registry");
    assert_eq!(registry["kind"], "registry", "{registry}");
    assert_eq!(registry["status"], "running", "{registry}");

    let mut ids = std::collections::HashSet::new();
    ids.insert(id_of(root));
    ids.insert(id_of(registry));
    for (domain, agents) in DEFAULT_TREE {
        let sup = actor_at(root, &[domain]).unwrap_or_else(|| panic!("no {domain}"));
        assert_eq!(sup["kind"], "supervisor", "{sup}");
        assert_eq!(sup["strategy"], "one_for_one", "{sup}");
        assert_eq!(sup["domain"], domain, "{sup}");
        assert_eq!(sup["status"], "running", "{sup}");
        assert_eq!(sup["restarts"], 0, "{sup}");
        assert!(ids.insert(id_of(sup)), "duplicate id {sup}");
        assert_eq!(names(sup), *agents, "{sup:#}");
        for agent in sup["children"].as_array().expect("agents") {
            let name = agent["name"].as_str().expect("name");
            let role = name.rsplit_once('-').map(|(r, _)| r).expect("role-n");
            assert_eq!(agent["kind"], "agent", "{agent}");
            assert_eq!(agent["role"], role, "{agent}");
            assert_eq!(agent["domain"], domain, "{agent}");
            assert_eq!(agent["status"], "running", "{agent}");
            assert_eq!(agent["restart"], "permanent", "{agent}");
            assert_eq!(agent["restarts"], 0, "{agent}");
            assert!(agent["last_error"].is_null(), "{agent}");
            assert!(agent["messages_handled"].is_u64(), "{agent}");
            assert!(ids.insert(id_of(agent)), "duplicate id {agent}");
        }
    }
}

#[tokio::test]
async fn admin_shows_one_actor_in_detail() {
    let node = TestNode::start(&[], &[]).await;
    let tree = node.tree().await;
    let root = &tree["root"];
    let execution = actor_at(root, &["execution"]).expect("execution");
    let executor = actor_at(root, &["execution", "executor-2"]).expect("executor-2");
    let admin = node.admin_url();

    let (status, body) = node
        .get_json(&format!("{admin}/admin/actors/{}", id_of(execution)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["actor"]["name"], "execution", "{body}");
    assert_eq!(body["actor"]["strategy"], "one_for_one", "{body}");
    assert_eq!(
        body["actor"]["children"].as_array().map(Vec::len),
        Some(6),
        "{body}"
    );
    assert_eq!(body["parent"], root["id"], "{body}");
    assert_eq!(body["node"], tree["node"], "{body}");

    let (status, body) = node
        .get_json(&format!("{admin}/admin/actors/{}", id_of(executor)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let actor = &body["actor"];
    assert_eq!(actor["id"], executor["id"], "{body}");
    assert_eq!(actor["name"], "executor-2", "{body}");
    assert_eq!(actor["role"], "executor", "{body}");
    assert_eq!(actor["domain"], "execution", "{body}");
    assert_eq!(actor["status"], "running", "{body}");
    assert!(actor["messages_handled"].is_u64(), "{body}");
    assert_eq!(body["parent"], execution["id"], "{body}");

    let (status, body) = node
        .get_json(&format!("{admin}/admin/actors/{}", id_of(root)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["parent"].is_null(), "the root has no parent: {body}");
}

#[tokio::test]
async fn killed_agent_is_restarted_with_a_new_id() {
    let node = TestNode::start(&[], &[]).await;
    all_agents_active(&node).await;
    let old = id_of(&node.actor(&["execution", "executor-1"]).await);
    let sibling = id_of(&node.actor(&["execution", "executor-2"]).await);
    let admin = node.admin_url();

    let (status, body) = node.post(&format!("{admin}/admin/actors/{old}/kill")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["killed"], true, "{body}");

    let new = wait_actor(
        &node,
        &["execution", "executor-1"],
        "executor-1 to come back",
        |a| replaced(a, old),
    )
    .await;
    assert_eq!(new["restarts"], 1, "{new}");
    assert_eq!(new["last_error"], "killed", "{new}");
    let new = id_of(&new);
    // one_for_one: the sibling was left alone.
    assert_eq!(
        id_of(&node.actor(&["execution", "executor-2"]).await),
        sibling
    );

    let (status, body) = node.get_json(&format!("{admin}/admin/actors/{old}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the old incarnation is gone: {body}"
    );

    eventually(
        "the registry to show the old instance terminated and the new one active",
        || async {
            let records = records(&node, "executor-1").await;
            let old_record = records.iter().find(|r| r["actor_id"] == old);
            let new_record = records.iter().find(|r| r["actor_id"] == new);
            match (old_record, new_record) {
                (Some(o), Some(n))
                    if o["state"] == "terminated"
                        && o["exit_reason"] == "killed"
                        && n["state"] == "active" =>
                {
                    assert_ne!(o["instance_id"], n["instance_id"]);
                    Ok(())
                }
                _ => Err(format!("{records:?}")),
            }
        },
    )
    .await;
}

#[tokio::test]
async fn stopped_agent_stays_stopped_until_restarted() {
    let node = TestNode::start(&[], &[]).await;
    all_agents_active(&node).await;
    let admin = node.admin_url();
    let execution = id_of(&node.actor(&["execution"]).await);
    let stopped = id_of(&node.actor(&["execution", "executor-2"]).await);

    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{stopped}/stop"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["stopped"], true, "{body}");
    let slot = node.actor(&["execution", "executor-2"]).await;
    assert_eq!(slot["status"], "stopped", "{slot}");
    // A stopped slot has no actor; the tree addresses it as <supervisor>:<child>.
    let address = format!("{execution}:executor-2");
    assert_eq!(slot["id"], address.as_str(), "{slot}");

    // Let the supervisor handle something else, then look again: a supervisor that meant
    // to restart executor-2 would have done so by the time it restarted executor-1.
    let other = id_of(&node.actor(&["execution", "executor-1"]).await);
    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{other}/kill"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    wait_actor(
        &node,
        &["execution", "executor-1"],
        "executor-1 to be restarted",
        |a| replaced(a, other),
    )
    .await;
    let slot = node.actor(&["execution", "executor-2"]).await;
    assert_eq!(
        slot["status"], "stopped",
        "executor-2 was restarted after a stop: {slot}"
    );
    assert_eq!(slot["restarts"], 0, "{slot}");

    eventually(
        "the registry to show executor-2 terminated and not replaced",
        || async {
            let records = records(&node, "executor-2").await;
            if !records.is_empty() && records.iter().all(|r| r["state"] == "terminated") {
                Ok(())
            } else {
                Err(format!("{records:?}"))
            }
        },
    )
    .await;

    // Stopping it again, by its old id or by its slot, is refused.
    for target in [stopped.to_string(), address.clone()] {
        let (status, body) = node
            .post(&format!("{admin}/admin/actors/{target}/stop"))
            .await;
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::CONFLICT,
            "a second stop of {target}: {status} {body}"
        );
        assert_error_shape(&body, "second stop");
    }
    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{address}/kill"))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "kill of a stopped slot: {body}"
    );
    assert_error_shape(&body, "kill of a stopped slot");

    // The operator brings it back through its slot.
    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{address}/restart"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let new: u64 = body["new_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no numeric new_id: {body}"));
    let back = node.actor(&["execution", "executor-2"]).await;
    assert_eq!(id_of(&back), new, "{back}");
    assert_eq!(back["status"], "running", "{back}");
    eventually("the registry to show executor-2 active again", || async {
        let records = records(&node, "executor-2").await;
        match records.iter().find(|r| r["actor_id"] == new) {
            Some(r) if r["state"] == "active" => Ok(()),
            _ => Err(format!("{records:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn restarted_agent_gets_a_new_id() {
    let node = TestNode::start(&[], &[]).await;
    all_agents_active(&node).await;
    let admin = node.admin_url();
    let old = id_of(&node.actor(&["execution", "executor-3"]).await);

    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{old}/restart"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["restarted"], true, "{body}");
    let new: u64 = body["new_id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no numeric new_id: {body}"));
    assert_ne!(new, old);

    let actor = node.actor(&["execution", "executor-3"]).await;
    assert_eq!(id_of(&actor), new, "{actor}");
    assert_eq!(actor["status"], "running", "{actor}");
    let (status, body) = node.get_json(&format!("{admin}/admin/actors/{old}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    eventually("the registry to show the new instance active", || async {
        let records = records(&node, "executor-3").await;
        match records.iter().find(|r| r["actor_id"] == new) {
            Some(r) if r["state"] == "active" => Ok(()),
            _ => Err(format!("{records:?}")),
        }
    })
    .await;
}

#[tokio::test]
async fn admin_operations_refuse_bad_targets() {
    let node = TestNode::start(&[], &[]).await;
    let admin = node.admin_url();
    let tree = node.tree().await;
    let root = id_of(&tree["root"]);
    let agent = id_of(actor_at(&tree["root"], &["knowledge", "memory-1"]).expect("memory-1"));

    let cases = [
        (
            "POST",
            "/admin/actors/999999/kill".to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/admin/actors/999999/stop".to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/admin/actors/999999/restart".to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "GET",
            "/admin/actors/999999".to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            "/admin/actors/abc/kill".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/admin/actors/-1/stop".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "GET",
            "/admin/actors/abc".to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            format!("/admin/actors/{agent}/explode"),
            StatusCode::NOT_FOUND,
        ),
        (
            "POST",
            format!("/admin/actors/{root}/kill"),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            format!("/admin/actors/{root}/stop"),
            StatusCode::CONFLICT,
        ),
        (
            "POST",
            format!("/admin/actors/{root}/restart"),
            StatusCode::CONFLICT,
        ),
    ];
    for (method, path, expected) in cases {
        let url = format!("{admin}{path}");
        let (status, body) = if method == "GET" {
            node.get_json(&url).await
        } else {
            node.post(&url).await
        };
        assert_eq!(status, expected, "{method} {path}: {body}");
        assert_error_shape(&body, &path);
    }

    // None of it changed anything.
    let after = node.tree().await;
    assert_eq!(id_of(&after["root"]), root);
    assert_eq!(
        id_of(actor_at(&after["root"], &["knowledge", "memory-1"]).expect("memory-1")),
        agent
    );
    let (status, body) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn killed_domain_supervisor_restarts_with_fresh_agents() {
    let node = TestNode::start(&[], &[]).await;
    all_agents_active(&node).await;
    let before = node.tree().await;
    let domain = id_of(actor_at(&before["root"], &["knowledge"]).expect("knowledge"));
    let agent = id_of(actor_at(&before["root"], &["knowledge", "memory-1"]).expect("memory-1"));
    let untouched =
        id_of(actor_at(&before["root"], &["execution", "executor-1"]).expect("executor-1"));

    let (status, body) = node
        .post(&format!("{}/admin/actors/{domain}/kill", node.admin_url()))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let sup = wait_actor(
        &node,
        &["knowledge"],
        "the knowledge supervisor to come back with its agent",
        |s| replaced(s, domain) && actor_at(s, &["memory-1"]).is_some_and(|a| replaced(a, agent)),
    )
    .await;
    assert_eq!(sup["restarts"], 1, "{sup}");
    assert_eq!(sup["last_error"], "killed", "{sup}");
    let fresh = actor_at(&sup, &["memory-1"]).expect("memory-1");
    assert_ne!(
        id_of(fresh),
        agent,
        "memory-1 must be a new incarnation: {sup}"
    );
    assert_eq!(
        fresh["restarts"], 0,
        "a fresh supervisor starts fresh agents: {fresh}"
    );
    let new_agent = id_of(fresh);

    // Other domains were not touched (root is one_for_one).
    assert_eq!(
        id_of(&node.actor(&["execution", "executor-1"]).await),
        untouched
    );

    eventually(
        "the registry to show memory-1's old instance terminated and the new one active",
        || async {
            let records = records(&node, "memory-1").await;
            let old = records.iter().find(|r| r["actor_id"] == agent);
            let new = records.iter().find(|r| r["actor_id"] == new_agent);
            match (old, new) {
                (Some(o), Some(n)) if o["state"] == "terminated" && n["state"] == "active" => {
                    Ok(())
                }
                _ => Err(format!("{records:?}")),
            }
        },
    )
    .await;
    let text = metrics(&node).await;
    assert_eq!(
        metric(&text, "ms_supervisor_restarts_total{supervisor=\"root\"}"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn admin_token_is_required_when_set() {
    let node = TestNode::start(&[], &[("MISTER_SMITH__ADMIN__TOKEN", "secret")]).await;
    let url = format!("{}/admin/actors", node.admin_url());

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer secre"),
        Some("secret"),
        Some("Basic c2VjcmV0"),
    ] {
        let mut request = node.client.get(&url);
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let response = request.send().await.expect("GET /admin/actors");
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "Authorization: {auth:?}"
        );
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            challenge.starts_with("Bearer"),
            "WWW-Authenticate: {challenge:?}"
        );
        let body: Value = response.json().await.expect("a JSON 401");
        let (code, _) = assert_error_shape(&body, "401");
        assert_eq!(code, "unauthorized", "{body}");
    }

    // Operations are guarded too: a kill without the token does nothing.
    let tree = node.tree().await; // the harness sends the token
    let victim = id_of(actor_at(&tree["root"], &["knowledge", "memory-1"]).expect("memory-1"));
    let response = node
        .client
        .post(format!("{}/admin/actors/{victim}/kill", node.admin_url()))
        .send()
        .await
        .expect("POST kill");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(id_of(&node.actor(&["knowledge", "memory-1"]).await), victim);

    let response = node
        .client
        .get(&url)
        .bearer_auth("secret")
        .send()
        .await
        .expect("GET /admin/actors");
    assert_eq!(response.status(), StatusCode::OK);

    // The API listener is not behind the admin token.
    let response = node
        .client
        .get(format!("{}/api/v1/agents", node.http_url()))
        .send()
        .await
        .expect("GET /api/v1/agents");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn admin_on_all_interfaces_starts_when_a_token_is_set() {
    let node = Launch::new()
        .admin_ip("0.0.0.0".parse().expect("an IP"))
        .env("MISTER_SMITH__ADMIN__TOKEN", "s3cr3t")
        .start()
        .await;
    assert!(node.admin_listen.ip().is_unspecified());
    let url = format!("{}/admin/actors", node.admin_url());
    let anonymous = node.client.get(&url).send().await.expect("GET");
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let tree = node.tree().await;
    assert_eq!(tree["root"]["name"], "root", "{tree}");
}

#[tokio::test]
async fn sigterm_stops_the_node_with_exit_code_0() {
    let mut node = TestNode::start(&[], &[]).await;
    node.sigterm();
    let status = node.wait_exit().await;
    let log = node.log();
    assert_eq!(status.code(), Some(0), "{status}; log:\n{log}");
    assert!(log.contains("outcome=Signalled"), "{log}");
    assert!(
        log.lines().any(|l| l.trim_end().ends_with("stopped")),
        "the log says the node stopped:\n{log}"
    );
}

#[tokio::test]
async fn sigint_stops_the_node_with_exit_code_0() {
    let mut node = TestNode::start(&[], &[]).await;
    node.signal(nix::sys::signal::Signal::SIGINT);
    let status = node.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{status}; log:\n{}", node.log());
}

#[tokio::test]
async fn escalation_past_the_root_stops_the_node() {
    let dir = temp_dir();
    let config = dir.path().join("strict.toml");
    std::fs::write(
        &config,
        "[supervision]\nmax_restarts = 1\nwithin_secs = 30\n",
    )
    .expect("config");
    let config = config.to_str().expect("UTF-8").to_string();
    let mut node = Launch::new()
        .in_dir(dir)
        .args(&["--config", &config])
        .start()
        .await;
    let admin = node.admin_url();

    let first = id_of(&node.actor(&["knowledge"]).await);
    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{first}/kill"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let second = wait_actor(
        &node,
        &["knowledge"],
        "the first restart of knowledge",
        |s| replaced(s, first),
    )
    .await;
    assert!(node.is_running(), "one restart is within the intensity");

    let (status, body) = node
        .post(&format!("{admin}/admin/actors/{}/kill", id_of(&second)))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let status = node.wait_exit().await;
    let log = node.log();
    assert!(
        !status.success(),
        "escalation past the root must fail the process: {status}\n{log}"
    );
    assert_eq!(status.code(), Some(1), "{status}\n{log}");
    assert!(
        log.contains("supervision escalated past the root"),
        "the node must say it stopped because of the escalation:\n{log}"
    );
    assert!(
        log.contains("supervisor `root`"),
        "the log names the root supervisor:\n{log}"
    );
    assert!(
        log.contains("child `knowledge`"),
        "the log names the failing child:\n{log}"
    );
}

#[tokio::test]
async fn node_starts_again_on_the_same_sqlite_file() {
    let mut first = TestNode::start(&["--node", "again"], &[]).await;
    first.sigterm();
    let status = first.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", first.log());
    assert!(first.log().contains("starts=1"), "{}", first.log());
    let dir = first.into_dir();
    assert!(dir.path().join("data/mister-smith.db").is_file());

    let second = Launch::new()
        .in_dir(dir)
        .args(&["--node", "again"])
        .start()
        .await;
    assert!(second.log().contains("starts=2"), "{}", second.log());
    let (status, body) = second
        .get_json(&format!("{}/health/ready", second.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    all_agents_active(&second).await;
}
