//! NATS over TLS end to end (issue 10): a nats-server that requires TLS and verifies client
//! certificates (mutual TLS, certificates from a throwaway CA), two nodes configured with
//! `nats.tls_ca`, `nats.tls_cert` and `nats.tls_key` that see each other, run a step for
//! each other and answer each other's admin calls; and a node without the client
//! certificate, which the server refuses: it stays up but not ready, and says why.
//!
//! And the ractor_cluster link over mutual TLS (`cluster.tls_*`): nodes with certificates
//! of the cluster's CA link; a node with the right cookie but a certificate of another CA
//! is heard on NATS and never linked.

mod common;

#[path = "../actors/tests/common/pki.rs"]
mod pki;

use common::cluster::{
    CLUSTER_DEADLINE, Member, NO_EXECUTORS, cluster_name, cluster_view, metric, wait_link,
    wait_status,
};
use common::nats::NatsServer;
use common::postgres_database;
use common::tasks::{attempts, eventually_within, submit_ok, wait_final};
use pki::Pki;
use reqwest::StatusCode;
use serde_json::json;

fn path(p: &std::path::Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A nats-server on TLS only, which verifies every client's certificate against the CA.
async fn mutual_tls_server(pki: &Pki) -> NatsServer {
    NatsServer::spawn_with(&[
        "--tlsverify",
        "--tlscert",
        path(&pki.server_cert),
        "--tlskey",
        path(&pki.server_key),
        "--tlscacert",
        path(&pki.ca),
    ])
    .await
}

/// `member` trusting the test CA and (with `client_cert`) presenting the client certificate.
fn tls_member<'a>(member: Member<'a>, pki: &'a Pki, client_cert: bool) -> Member<'a> {
    let member = member
        .env("MISTER_SMITH__NATS__TLS_CA", path(&pki.ca))
        .env("MISTER_SMITH__NATS__TLS_REQUIRED", "true");
    if client_cert {
        member
            .env("MISTER_SMITH__NATS__TLS_CERT", path(&pki.client_cert))
            .env("MISTER_SMITH__NATS__TLS_KEY", path(&pki.client_key))
    } else {
        member
    }
}

#[tokio::test]
async fn nodes_with_client_certificates_cluster_over_mutual_tls_and_one_without_is_refused() {
    let pki = Pki::new();
    let nats = mutual_tls_server(&pki).await;
    let db = postgres_database().await;
    let cluster = cluster_name("tls");
    // n1 has no executor, so its step can only run on n2, over the TLS connections.
    let n1 = tls_member(Member::new(&cluster, &db, nats.url(), "n1"), &pki, true)
        .config(NO_EXECUTORS)
        .start()
        .await;
    let n2 = tls_member(Member::new(&cluster, &db, nats.url(), "n2"), &pki, true)
        .start()
        .await;
    wait_status(&n1, &["n2"], "up").await;
    wait_status(&n2, &["n1"], "up").await;

    let id = submit_ok(
        &n1,
        &json!({"steps": [{"id": "a", "tool": "echo", "args": {"text": "over TLS"}}]}),
    )
    .await;
    let task = wait_final(&n1, &id).await;
    assert_eq!(task["status"], "succeeded", "{task:#}");
    let attempt = &attempts(&task, "a")[0];
    assert_eq!(attempt["node"], "n2", "{task:#}");
    assert_eq!(attempt["output"]["text"], "over TLS", "{task:#}");

    let (status, tree) = n1
        .get_json(&format!("{}/admin/actors?node=n2", n1.admin_url()))
        .await;
    assert_eq!(status, StatusCode::OK, "{tree}");
    assert_eq!(tree["node"], "n2", "{tree}");

    // Trusts the server but has no certificate to show: the server refuses it.
    let mut n3 = tls_member(Member::new(&cluster, &db, nats.url(), "n3"), &pki, false)
        .live_only()
        .start()
        .await;
    let ready = format!("{}/health/ready", n3.http_url());
    eventually_within(CLUSTER_DEADLINE, "n3 to say why NATS is not up", || async {
        let log = n3.log();
        if log.contains("NATS connection failed") {
            Ok(())
        } else {
            Err(format!("log so far:\n{log}"))
        }
    })
    .await;
    let (status, body) = n3.get_json(&ready).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["bus"], "connecting", "{body}");
    assert!(n3.is_running(), "n3 exited:\n{}", n3.log());
    assert!(
        nats.log().contains("TLS handshake error"),
        "the server's log:\n{}",
        nats.log()
    );
    // The others never saw it.
    let view = cluster_view(&n1).await;
    let members = view["members"].as_array().cloned().unwrap_or_default();
    assert!(members.iter().all(|m| m["node"] != "n3"), "{view:#}");
}

/// `member` with its ractor_cluster link over TLS, with the node certificate of `pki`.
fn linked_over_tls<'a>(member: Member<'a>, pki: &'a Pki) -> Member<'a> {
    member
        .env("MISTER_SMITH__CLUSTER__TLS_CA", path(&pki.ca))
        .env("MISTER_SMITH__CLUSTER__TLS_CERT", path(&pki.node_cert))
        .env("MISTER_SMITH__CLUSTER__TLS_KEY", path(&pki.node_key))
}

/// `node`'s link to `peer` as its cluster view shows it.
async fn link_to(node: &common::TestNode, peer: &str) -> String {
    let view = cluster_view(node).await;
    view["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["node"] == peer)
        .map(|m| m["link"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn ractor_cluster_links_need_a_certificate_of_the_cluster_ca() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let nats = NatsServer::spawn().await;
    let db = postgres_database().await;
    let cluster = cluster_name("link-tls");
    let n1 = linked_over_tls(Member::new(&cluster, &db, nats.url(), "n1"), &pki)
        .start()
        .await;
    let n2 = linked_over_tls(Member::new(&cluster, &db, nats.url(), "n2"), &pki)
        .start()
        .await;
    wait_link(&n1, &["n2"], "connected").await;
    wait_link(&n2, &["n1"], "connected").await;
    assert_eq!(metric(&n1, "ms_cluster_link_failures_total").await, 0.0);

    // The right cookie, a certificate of another CA: heard on NATS (its heartbeats carry
    // the cookie's proof), refused on the link by both ends' verification.
    let n3 = linked_over_tls(Member::new(&cluster, &db, nats.url(), "n3"), &stranger)
        .start()
        .await;
    wait_status(&n1, &["n3"], "up").await;
    // n1 sorts first, so it dials n3: its check of n3's certificate fails.
    eventually_within(CLUSTER_DEADLINE, "n1's dial to n3 to fail", || async {
        let failures = metric(&n1, "ms_cluster_link_failures_total").await;
        let log = n1.log();
        let said = log
            .lines()
            .any(|l| l.contains("ractor_cluster connection failed") && l.contains("n3"));
        if failures >= 1.0 && said {
            Ok(())
        } else {
            Err(format!("{failures} failures; log:\n{log}"))
        }
    })
    .await;
    assert_ne!(link_to(&n1, "n3").await, "connected");
    assert_ne!(link_to(&n3, "n1").await, "connected");
    assert_ne!(link_to(&n3, "n2").await, "connected");
    // The members of the CA keep their link.
    assert_eq!(link_to(&n1, "n2").await, "connected");
}
