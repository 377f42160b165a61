//! Configuration (DESIGN §8): layering default → `--config` → environment → flags, and
//! refusal of unknown or invalid settings with exit code 2 and a message naming the key.

mod common;

use common::{Finished, TestNode, child, run_to_exit, temp_dir};
use reqwest::StatusCode;

/// Runs `mister-smith <args>` in a fresh dir holding `files`, expecting a configuration
/// error: exit code 2, every string of `must_name` in stderr, and storage never touched.
/// The listeners default to port 0 through the environment, so a wrongly accepted
/// configuration cannot collide with anything while the test waits for it to fail.
async fn expect_config_error(
    files: &[(&str, &str)],
    args: &[&str],
    env: &[(&str, &str)],
    must_name: &[&str],
) -> Finished {
    let dir = temp_dir();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).expect("writing a config file");
    }
    let mut all_env = vec![
        ("MISTER_SMITH__HTTP__LISTEN", "127.0.0.1:0"),
        ("MISTER_SMITH__ADMIN__LISTEN", "127.0.0.1:0"),
    ];
    all_env.extend_from_slice(env); // later entries win
    let out = run_to_exit(dir.path(), args, &all_env).await;
    assert_eq!(
        out.code(),
        Some(2),
        "expected exit code 2 (bad configuration)\n{}",
        out.describe()
    );
    for needle in must_name {
        assert!(
            out.stderr.contains(needle),
            "stderr does not name `{needle}`\n{}",
            out.describe()
        );
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused configuration must not create the SQLite file\n{}",
        out.describe()
    );
    out
}

#[tokio::test]
async fn unknown_key_in_config_file_is_refused_naming_it() {
    let out = expect_config_error(
        &[("bad.toml", "[http]\nlisten_port = 1\n")],
        &["run", "--config", "bad.toml"],
        &[],
        &["listen_port", "http"],
    )
    .await;
    // And what is allowed in that section.
    assert!(
        out.stderr.contains("body_limit_bytes"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn unknown_key_in_a_domain_entry_is_refused_naming_it() {
    expect_config_error(
        &[(
            "bad.toml",
            "[[domains]]\nname = \"x\"\nagents = [{ role = \"executor\", instance = 2 }]\n",
        )],
        &["run", "--config", "bad.toml"],
        &[],
        &["instance`"],
    )
    .await;
}

#[tokio::test]
async fn unknown_environment_key_is_refused_naming_it() {
    expect_config_error(
        &[],
        &["run"],
        &[("MISTER_SMITH__HTTP__BOGUS", "1")],
        &["bogus", "http"],
    )
    .await;
}

#[tokio::test]
async fn unparsable_address_in_environment_is_refused_naming_the_key() {
    expect_config_error(
        &[],
        &["run"],
        &[("MISTER_SMITH__HTTP__LISTEN", "notanaddress")],
        &["http.listen"],
    )
    .await;
}

#[tokio::test]
async fn wrong_type_in_config_file_is_refused_naming_the_key() {
    let out = expect_config_error(
        &[("bad.toml", "[supervision]\nmax_restarts = \"lots\"\n")],
        &["run", "--config", "bad.toml"],
        &[],
        &["supervision.max_restarts", "lots"],
    )
    .await;
    assert!(out.stderr.contains("integer"), "{}", out.describe());
}

#[tokio::test]
async fn wrong_type_in_environment_is_refused_naming_the_key() {
    expect_config_error(
        &[],
        &["run"],
        &[("MISTER_SMITH__SUPERVISION__MAX_RESTARTS", "lots")],
        &["supervision.max_restarts"],
    )
    .await;
}

const UNKNOWN_STRATEGY: &str = "[[domains]]\nname = \"x\"\nstrategy = \"one_for_none\"\n\
                                agents = [{ role = \"executor\" }]\n";
const UNKNOWN_ROLE: &str = "[[domains]]\nname = \"x\"\nagents = [{ role = \"wizard\" }]\n";

#[tokio::test]
async fn domain_with_unknown_strategy_is_refused_naming_the_key() {
    expect_config_error(
        &[("bad.toml", UNKNOWN_STRATEGY)],
        &["run", "--config", "bad.toml"],
        &[],
        &["domains[0]", "strategy", "one_for_none"],
    )
    .await;
}

#[tokio::test]
async fn agent_with_unknown_role_is_refused_naming_the_key() {
    expect_config_error(
        &[("bad.toml", UNKNOWN_ROLE)],
        &["run", "--config", "bad.toml"],
        &[],
        &["domains[0]", "agents[0]", "role", "wizard"],
    )
    .await;
}

/// DESIGN §8: the message names the key *and what is allowed*.
#[tokio::test]
async fn unknown_strategy_and_role_messages_say_what_is_allowed() {
    let strategy = expect_config_error(
        &[("bad.toml", UNKNOWN_STRATEGY)],
        &["run", "--config", "bad.toml"],
        &[],
        &[],
    )
    .await;
    for allowed in ["one_for_one", "one_for_all", "rest_for_one"] {
        assert!(
            strategy.stderr.contains(allowed),
            "the unknown-strategy message does not list `{allowed}`\n{}",
            strategy.describe()
        );
    }
    let role = expect_config_error(
        &[("bad.toml", UNKNOWN_ROLE)],
        &["run", "--config", "bad.toml"],
        &[],
        &[],
    )
    .await;
    for allowed in ["coordinator", "executor", "monitor"] {
        assert!(
            role.stderr.contains(allowed),
            "the unknown-role message does not list `{allowed}`\n{}",
            role.describe()
        );
    }
    expect_config_error(
        &[],
        &["run"],
        &[("MISTER_SMITH__DATABASE__SQLITE_SYNCHRONOUS", "sometimes")],
        &["database.sqlite_synchronous", "sometimes", "normal, full"],
    )
    .await;
}

#[tokio::test]
async fn permanent_agent_with_zero_instances_is_refused_naming_the_key() {
    expect_config_error(
        &[(
            "bad.toml",
            "[[domains]]\nname = \"x\"\nagents = [{ role = \"executor\", instances = 0 }]\n",
        )],
        &["run", "--config", "bad.toml"],
        &[],
        &["domains[0].agents[0].instances"],
    )
    .await;
}

#[tokio::test]
async fn durations_and_agent_limits_out_of_bounds_are_refused_naming_the_key() {
    // 1e308 s is a valid float but no `Duration`: refused, not a panic at start.
    for (key, env, value) in [
        (
            "supervision.within_secs",
            "MISTER_SMITH__SUPERVISION__WITHIN_SECS",
            "1e308",
        ),
        (
            "node.shutdown_timeout_secs",
            "MISTER_SMITH__NODE__SHUTDOWN_TIMEOUT_SECS",
            "1e308",
        ),
        (
            "agents.max_in_flight",
            "MISTER_SMITH__AGENTS__MAX_IN_FLIGHT",
            "0",
        ),
        (
            "agents.max_waiting",
            "MISTER_SMITH__AGENTS__MAX_WAITING",
            "4000000000",
        ),
    ] {
        expect_config_error(&[], &["run"], &[(env, value)], &[key]).await;
    }
    expect_config_error(
        &[(
            "bad.toml",
            "[[domains]]\nname = \"x\"\nwithin_secs = 1e308\nagents = []\n",
        )],
        &["run", "--config", "bad.toml"],
        &[],
        &["domains[0].within_secs"],
    )
    .await;
}

#[tokio::test]
async fn duplicated_domain_name_is_refused_naming_the_key() {
    expect_config_error(
        &[(
            "bad.toml",
            "[[domains]]\nname = \"twin\"\n\n[[domains]]\nname = \"twin\"\n",
        )],
        &["run", "--config", "bad.toml"],
        &[],
        &["domains[1].name", "twin"],
    )
    .await;
}

#[tokio::test]
async fn non_loopback_admin_without_token_is_refused() {
    expect_config_error(
        &[],
        &["run", "--admin", "0.0.0.0:0"],
        &[],
        &["admin.token", "admin.listen"],
    )
    .await;
}

#[tokio::test]
async fn unsupported_database_scheme_is_refused_naming_the_key() {
    expect_config_error(
        &[],
        &["run", "--database", "mysql://127.0.0.1/ms"],
        &[],
        &["database.url", "mysql://"],
    )
    .await;
}

#[tokio::test]
async fn missing_config_file_is_refused_naming_it() {
    expect_config_error(
        &[],
        &["run", "--config", "does-not-exist.toml"],
        &[],
        &["--config", "does-not-exist.toml"],
    )
    .await;
}

#[tokio::test]
async fn unknown_flag_is_refused_by_the_command_line_parser() {
    expect_config_error(&[], &["run", "--bogus-flag"], &[], &["--bogus-flag"]).await;
}

#[tokio::test]
async fn migrate_refuses_bad_configuration_too() {
    expect_config_error(
        &[],
        &["migrate"],
        &[("MISTER_SMITH__DATABASE__BOGUS", "1")],
        &["bogus", "database"],
    )
    .await;
}

/// The node's name as the running node reports it in `/health/ready`.
async fn reported_name(node: &TestNode) -> String {
    let (status, body) = node
        .get_json(&format!("{}/health/ready", node.http_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["node"]
        .as_str()
        .unwrap_or_else(|| panic!("no `node` in {body}"))
        .to_string()
}

#[tokio::test]
async fn config_file_then_environment_then_flag_override_each_other() {
    // One config file, shared by the three nodes through its absolute path.
    let files = temp_dir();
    let config = files.path().join("node.toml");
    std::fs::write(&config, "[node]\nname = \"from-file\"\n").expect("writing the config");
    let config = config.to_str().expect("a UTF-8 path");
    let env = [("MISTER_SMITH__NODE__NAME", "from-env")];

    let file_args = ["--config", config];
    let flag_args = ["--config", config, "--node", "from-flag"];
    let (file_only, file_env, file_env_flag) = tokio::join!(
        TestNode::start(&file_args, &[]),
        TestNode::start(&file_args, &env),
        TestNode::start(&flag_args, &env),
    );
    assert_eq!(reported_name(&file_only).await, "from-file");
    assert_eq!(reported_name(&file_env).await, "from-env");
    assert_eq!(reported_name(&file_env_flag).await, "from-flag");

    // The name is the node's identity everywhere, not only in the health check.
    let tree = file_env_flag.tree().await;
    assert_eq!(tree["node"], "from-flag", "{tree}");
    for agent in file_env_flag.agents("").await {
        assert_eq!(agent["node"], "from-flag", "{agent}");
    }
}

#[tokio::test]
async fn config_file_domains_replace_the_default_domains() {
    let dir = temp_dir();
    let config = dir.path().join("solo.toml");
    std::fs::write(
        &config,
        "[[domains]]\nname = \"solo\"\nstrategy = \"one_for_all\"\n\
         agents = [{ role = \"executor\", instances = 2, capabilities = [\"tool.extra\"] }]\n",
    )
    .expect("writing the config");
    let node = TestNode::start(&["--config", config.to_str().expect("UTF-8")], &[]).await;

    let agents = node.agents("").await;
    let names: Vec<&str> = agents.iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["executor-1", "executor-2"], "{agents:#?}");
    for agent in &agents {
        assert_eq!(agent["domain"], "solo", "{agent}");
        assert_eq!(agent["role"], "executor", "{agent}");
        let caps = agent["capabilities"].as_array().expect("capabilities");
        assert!(caps.iter().any(|c| c == "tool.extra"), "{agent}");
        assert!(caps.iter().any(|c| c == "tool.echo"), "{agent}");
    }

    let tree = node.tree().await;
    let root = &tree["root"];
    let children: Vec<&str> = root["children"]
        .as_array()
        .expect("root children")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        children,
        ["registry", "solo", "runs", "scheduler"],
        "{tree:#}"
    );
    let solo = child(root, "solo").expect("solo domain");
    assert_eq!(solo["strategy"], "one_for_all", "{solo}");
}

#[tokio::test]
async fn a_cluster_needs_a_cookie_and_a_shared_database() {
    let nats = ["run", "--nats", "nats://127.0.0.1:4222"];
    expect_config_error(
        &[],
        &nats,
        &[],
        &["cluster.cookie", "MISTER_SMITH__CLUSTER__COOKIE"],
    )
    .await;
    expect_config_error(
        &[],
        &nats,
        &[("MISTER_SMITH__CLUSTER__COOKIE", "s3cret")],
        &["database.url", "postgres://"],
    )
    .await;
    expect_config_error(
        &[],
        &nats,
        &[
            ("MISTER_SMITH__CLUSTER__COOKIE", "s3cret"),
            (
                "MISTER_SMITH__DATABASE__URL",
                "postgres://postgres@127.0.0.1:1/x",
            ),
            ("MISTER_SMITH__CLUSTER__DETECTOR", "gossip"),
        ],
        &["detector", "phi", "deadline"],
    )
    .await;
    expect_config_error(
        &[],
        &nats,
        &[
            ("MISTER_SMITH__CLUSTER__COOKIE", "s3cret"),
            (
                "MISTER_SMITH__DATABASE__URL",
                "postgres://postgres@127.0.0.1:1/x",
            ),
            ("MISTER_SMITH__CLUSTER__DEADLINE_MS", "100"),
        ],
        &["deadline_ms", "heartbeat_ms"],
    )
    .await;
}

#[tokio::test]
async fn an_approval_setting_naming_no_tool_or_no_mode_is_refused() {
    expect_config_error(
        &[("bad.toml", "[tools]\napproval = { shel = \"required\" }\n")],
        &["run", "--config", "bad.toml"],
        &[],
        &["tools.approval.shel", "shell"],
    )
    .await;
    expect_config_error(
        &[(
            "bad.toml",
            "[tools]\napproval = { shell = \"sometimes\" }\n",
        )],
        &["run", "--config", "bad.toml"],
        &[],
        &["sometimes", "required"],
    )
    .await;
}
