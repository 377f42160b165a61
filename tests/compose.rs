//! `docker-compose.yml` (DESIGN §1): NATS with JetStream, PostgreSQL and three nodes that
//! form one cluster. These machines have no Docker engine, so the file is checked with
//! `docker-compose config` (which parses, validates and resolves it) and the resolved
//! file is read for what a working cluster needs.

use std::process::Command;

/// The resolved compose file, as `docker-compose config` prints it.
fn resolved() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(root)
        .env("MS_CLUSTER_COOKIE", "test-cookie")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run docker-compose ({e}); install it (`apt-get install docker-compose`, \
                 or run scripts/test.sh, which does)"
            )
        });
    assert!(
        out.status.success(),
        "docker-compose config refused docker-compose.yml:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lines of one top-level service's block in the resolved file.
fn service<'a>(config: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    let mut lines = config.lines().skip_while(|l| *l != header);
    assert!(lines.next().is_some(), "no service `{name}` in:\n{config}");
    lines
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .collect()
}

fn has(block: &[&str], needle: &str) -> bool {
    block.iter().any(|l| l.contains(needle))
}

#[test]
fn compose_runs_nats_postgres_and_three_nodes_of_one_cluster() {
    let config = resolved();
    let nats = service(&config, "nats");
    assert!(has(&nats, "-js"), "NATS without JetStream: {nats:#?}");
    let postgres = service(&config, "postgres");
    assert!(has(&postgres, "image: postgres"), "{postgres:#?}");
    for node in ["n1", "n2", "n3"] {
        let block = service(&config, node);
        for needle in [
            "MISTER_SMITH__NATS__URL: nats://nats:4222",
            "MISTER_SMITH__DATABASE__URL: postgres://",
            "@postgres:5432/",
            "MISTER_SMITH__CLUSTER__NAME: demo",
            "MISTER_SMITH__CLUSTER__COOKIE: test-cookie",
            "MISTER_SMITH__CLUSTER__LISTEN: 0.0.0.0:4697",
            &format!("MISTER_SMITH__NODE__NAME: {node}"),
            &format!("hostname: {node}"),
            &format!("MISTER_SMITH__CLUSTER__ADVERTISE: {node}"),
            "MISTER_SMITH__ADMIN__TOKEN:",
            "MISTER_SMITH__AUTH__MODE: jwt",
            "MISTER_SMITH__AUTH__SECRET:",
        ] {
            assert!(
                has(&block, needle),
                "{node} lacks `{needle}`:\n{}",
                block.join("\n")
            );
        }
    }
}
