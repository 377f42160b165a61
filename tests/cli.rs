//! The client commands (DESIGN §8): `mister-smith actors` and `mister-smith agents` against
//! a running node, for people and with `--json`, and what they say when no node listens.

mod common;

use common::{Finished, TestNode, actor_at, closed_addr, id_of, run_to_exit, temp_dir};
use serde_json::Value;

/// Runs a client command to its end in a scratch dir.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let dir = temp_dir();
    run_to_exit(dir.path(), args, env).await
}

fn ok(out: &Finished) {
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

/// The line of the drawing that shows the actor `name`.
fn line_of<'a>(drawing: &'a str, name: &str) -> &'a str {
    drawing
        .lines()
        .find(|l| {
            l.trim_start_matches(|c: char| !c.is_alphanumeric())
                .split_whitespace()
                .next()
                == Some(name)
        })
        .unwrap_or_else(|| panic!("no line for `{name}` in:\n{drawing}"))
}

#[tokio::test]
async fn actors_draws_the_supervision_tree() {
    let node = TestNode::start(&["--node", "drawn"], &[]).await;
    let admin = node.admin.to_string();
    let out = cli(&["actors", "--admin", &admin], &[]).await;
    ok(&out);
    let drawing = &out.stdout;
    let tree = node.tree().await;
    let root = &tree["root"];

    assert_eq!(drawing.lines().next(), Some("node drawn"), "{drawing}");
    let root_line = line_of(drawing, "root");
    assert!(root_line.contains("one_for_one"), "{root_line}");
    assert!(
        root_line.contains(&format!("id={}", id_of(root))),
        "{root_line}"
    );
    assert!(line_of(drawing, "registry").contains("id="), "{drawing}");
    for domain in common::DEFAULT_DOMAINS {
        let line = line_of(drawing, domain);
        assert!(line.contains("one_for_one"), "{line}");
        let id = id_of(actor_at(root, &[domain]).expect("domain"));
        assert!(line.contains(&format!("id={id}")), "{line}");
    }
    for (domain, name, role) in common::DEFAULT_AGENTS {
        let line = line_of(drawing, name);
        let id = id_of(actor_at(root, &[domain, name]).expect("agent"));
        assert!(line.contains(&format!("id={id}")), "{line}");
        assert!(line.contains(role), "{line}");
        assert!(line.contains("running"), "{line}");
    }
    // Agents are drawn below their domain: deeper than the domain's own line.
    let depth = |line: &str| line.find(|c: char| c.is_alphanumeric()).unwrap_or(0);
    assert!(
        depth(line_of(drawing, "executor-1")) > depth(line_of(drawing, "execution")),
        "{drawing}"
    );
    assert!(
        depth(line_of(drawing, "execution")) > depth(line_of(drawing, "root")),
        "{drawing}"
    );
}

#[tokio::test]
async fn actors_shows_restarts_and_last_error() {
    let node = TestNode::start(&[], &[]).await;
    let victim = id_of(&node.actor(&["knowledge", "memory-1"]).await);
    let (status, body) = node
        .post(&format!("{}/admin/actors/{victim}/kill", node.admin_url()))
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body}");
    common::eventually("memory-1 to be restarted", || async {
        let a = node.actor(&["knowledge", "memory-1"]).await;
        if a["restarts"] == 1 && a["status"] == "running" {
            Ok(())
        } else {
            Err(a.to_string())
        }
    })
    .await;

    let out = cli(&["actors", "--admin", &node.admin.to_string()], &[]).await;
    ok(&out);
    let line = line_of(&out.stdout, "memory-1");
    assert!(line.contains("restarts=1"), "{line}");
    assert!(line.contains("killed"), "{line}");
}

#[tokio::test]
async fn actors_json_is_the_admin_tree() {
    let node = TestNode::start(&["--node", "jsonic"], &[]).await;
    let out = cli(
        &["actors", "--admin", &node.admin.to_string(), "--json"],
        &[],
    )
    .await;
    ok(&out);
    let body: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()));
    assert_eq!(body["node"], "jsonic", "{body}");
    assert_eq!(body["root"]["name"], "root", "{body}");
    // The same actors as GET /admin/actors (counters may move between the two reads).
    fn ids(actor: &Value, out: &mut Vec<(String, String)>) {
        out.push((
            actor["id"].as_str().unwrap_or("?").to_string(),
            actor["name"].as_str().unwrap_or("?").to_string(),
        ));
        for child in actor["children"].as_array().into_iter().flatten() {
            ids(child, out);
        }
    }
    let (mut printed, mut served) = (Vec::new(), Vec::new());
    ids(&body["root"], &mut printed);
    ids(&node.tree().await["root"], &mut served);
    assert_eq!(printed, served);
    // root, registry, four domains, the runs supervisor and the scheduler, then the agents.
    assert_eq!(printed.len(), 1 + 1 + 4 + 2 + common::DEFAULT_AGENTS.len());
}

#[tokio::test]
async fn actors_sends_the_admin_token() {
    let node = TestNode::start(&[], &[("MISTER_SMITH__ADMIN__TOKEN", "tok3n")]).await;
    let admin = node.admin.to_string();

    let with_flag = cli(&["actors", "--admin", &admin, "--token", "tok3n"], &[]).await;
    ok(&with_flag);
    assert!(
        with_flag.stdout.contains("root"),
        "{}",
        with_flag.describe()
    );

    let with_env = cli(
        &["actors", "--admin", &admin],
        &[("MISTER_SMITH__ADMIN__TOKEN", "tok3n")],
    )
    .await;
    ok(&with_env);

    let without = cli(&["actors", "--admin", &admin], &[]).await;
    assert_eq!(without.code(), Some(1), "{}", without.describe());
    let stderr = without.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{}", without.describe());
    assert!(stderr.contains("401"), "{}", without.describe());
    assert!(without.stdout.is_empty(), "{}", without.describe());
}

/// The rows of the agents table (without its header), split into cells.
fn rows(table: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let mut lines = table.lines();
    let header = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect();
    let rows = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect();
    (header, rows)
}

#[tokio::test]
async fn agents_prints_a_table_of_the_four_executors() {
    let node = TestNode::start(&[], &[]).await;
    common::eventually("the executors to be registered", || async {
        match node.agents("capability=tool.echo&state=active").await.len() {
            4 => Ok(()),
            n => Err(format!("{n} executors")),
        }
    })
    .await;
    let out = cli(
        &[
            "agents",
            "--http",
            &node.http.to_string(),
            "--capability",
            "tool.echo",
        ],
        &[],
    )
    .await;
    ok(&out);
    let (header, rows) = rows(&out.stdout);
    assert_eq!(
        header,
        [
            "NAME",
            "DOMAIN",
            "ROLE",
            "STATE",
            "HEALTHY",
            "LOAD",
            "ACTOR",
            "CAPABILITIES"
        ],
        "{}",
        out.stdout
    );
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        ["executor-1", "executor-2", "executor-3", "executor-4"],
        "exactly the four executors:\n{}",
        out.stdout
    );
    let api = node.agents("capability=tool.echo").await;
    for (row, agent) in rows.iter().zip(&api) {
        assert_eq!(row.len(), header.len(), "{row:?}");
        assert_eq!(row[1], "execution", "{row:?}");
        assert_eq!(row[2], "executor", "{row:?}");
        assert_eq!(row[3], "active", "{row:?}");
        assert_eq!(row[4], "true", "{row:?}");
        assert_eq!(row[6], agent["actor_id"].to_string(), "{row:?}");
        assert!(row[7].split(',').any(|c| c == "tool.echo"), "{row:?}");
    }
}

#[tokio::test]
async fn agents_json_lists_the_same_agents() {
    let node = TestNode::start(&[], &[]).await;
    common::eventually("every agent to be registered", || async {
        match node.agents("state=active").await.len() {
            n if n == common::DEFAULT_AGENTS.len() => Ok(()),
            n => Err(format!("{n} active agents")),
        }
    })
    .await;
    let http = node.http.to_string();
    let out = cli(
        &[
            "agents",
            "--http",
            &http,
            "--capability",
            "tool.echo",
            "--json",
        ],
        &[],
    )
    .await;
    ok(&out);
    let body: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()));
    assert_eq!(body["count"], 4, "{body}");
    let agents = body["agents"].as_array().expect("agents");
    assert!(agents.iter().all(|a| a["role"] == "executor"), "{body}");

    // Other filters reach the API too.
    let out = cli(
        &[
            "agents",
            "--http",
            &http,
            "--role",
            "memory",
            "--domain",
            "knowledge",
            "--json",
        ],
        &[],
    )
    .await;
    ok(&out);
    let body: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(body["count"], 1, "{body}");
    assert_eq!(body["agents"][0]["name"], "memory-1", "{body}");
}

#[tokio::test]
async fn agents_reports_a_refused_filter_in_one_line() {
    let node = TestNode::start(&[], &[]).await;
    let out = cli(
        &[
            "agents",
            "--http",
            &node.http.to_string(),
            "--state",
            "sleepy",
        ],
        &[],
    )
    .await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{}", out.describe());
    assert!(
        stderr.contains("400") && stderr.contains("sleepy"),
        "{}",
        out.describe()
    );
}

/// A client command against a port where nothing listens: one clear line, exit 1.
async fn assert_unreachable(args: &[&str], addr: &str) {
    let out = cli(args, &[]).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let stderr = out.stderr.trim();
    assert_eq!(
        stderr.lines().count(),
        1,
        "exactly one line:\n{}",
        out.describe()
    );
    assert!(stderr.starts_with("error:"), "{}", out.describe());
    assert!(
        stderr.contains(addr),
        "names the address tried:\n{}",
        out.describe()
    );
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

#[tokio::test]
async fn actors_against_a_closed_port_fails_in_one_line() {
    let addr = closed_addr();
    assert_unreachable(&["actors", "--admin", &addr], &addr).await;
    assert_unreachable(&["actors", "--admin", &addr, "--json"], &addr).await;
}

#[tokio::test]
async fn agents_against_a_closed_port_fails_in_one_line() {
    let addr = closed_addr();
    assert_unreachable(&["agents", "--http", &addr], &addr).await;
    assert_unreachable(&["agents", "--http", &addr, "--json"], &addr).await;
}
