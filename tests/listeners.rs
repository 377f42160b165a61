//! The listeners under a connection flood (issue 10, item 6): half-sent headers are cut
//! after the header-read timeout, idle keep-alive connections after the idle timeout,
//! connections past the cap are closed at once, and the node never stops accepting for
//! good: a real request is served once slots free, and the admin listener (a cap of its
//! own) answers `/admin/actors` while the API listener is flooded.

mod common;

use std::time::Duration;

use common::TestNode;
use common::tasks::eventually_within;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: the server closes within its timeouts; this only bounds a broken server.
const CLOSE_DEADLINE: Duration = Duration::from_secs(60);

/// Reads until the server closes the connection (EOF or reset); fails past the deadline.
async fn closed_by_server(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(CLOSE_DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept a connection open past {CLOSE_DEADLINE:?}"),
        }
    }
}

async fn half_sent(node: &TestNode) -> TcpStream {
    let mut stream = TcpStream::connect(node.http).await.expect("connecting");
    // A request line and one header, never the blank line that ends the header.
    let _ = stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await;
    stream
}

#[tokio::test]
async fn a_flood_of_half_sent_headers_is_cut_and_the_node_keeps_serving() {
    let cap = 50;
    let node = TestNode::start(
        &[],
        &[
            ("MISTER_SMITH__HTTP__MAX_CONNECTIONS", &cap.to_string()),
            ("MISTER_SMITH__HTTP__HEADER_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let mut flood = Vec::new();
    for _ in 0..(cap * 4) {
        flood.push(half_sent(&node).await);
    }
    // The admin listener has its own cap: operators are not locked out.
    let admin = format!("http://{}/admin/actors", node.admin);
    let (status, _) = node.get_json(&admin).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "admin /admin/actors during the flood"
    );
    // Every flooding connection ends: past the cap at once, the others at their header
    // timeout. None is answered with a request served.
    for stream in &mut flood {
        let seen = closed_by_server(stream).await;
        let text = String::from_utf8_lossy(&seen);
        assert!(
            !text.contains("200 OK"),
            "a half-sent request was served: {text}"
        );
    }
    // Slots are free again: real requests are served (the listener never stopped).
    let url = format!("{}/health/live", node.http_url());
    eventually_within(CLOSE_DEADLINE, "the API listener serving again", || async {
        match node.client.get(&url).send().await {
            Ok(r) if r.status() == StatusCode::OK => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let metrics = format!("{}/metrics", node.http_url());
    let (_, text) = node.get_text(&metrics).await;
    assert!(
        text.contains("ms_http_connections_refused_total{listener=\"http\"}"),
        "refusals are counted"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let node = TestNode::start(
        &[],
        &[
            ("MISTER_SMITH__HTTP__IDLE_TIMEOUT_SECS", "1"),
            ("MISTER_SMITH__HTTP__HEADER_TIMEOUT_SECS", "600"),
        ],
    )
    .await;
    let mut stream = TcpStream::connect(node.http).await.expect("connecting");
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("sending a request");
    // The answer comes, the connection stays for keep-alive, then goes once idle.
    let seen = closed_by_server(&mut stream).await;
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "the request was served: {text}"
    );
}

#[tokio::test]
async fn method_labels_come_from_a_fixed_set() {
    let node = TestNode::start(&[], &[]).await;
    let odd = reqwest::Method::from_bytes(b"XATTACK12345").expect("a method token");
    let url = format!("{}/api/v1/tasks", node.http_url());
    let response = node.client.request(odd, &url).send().await.expect("sent");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let metrics = format!("{}/metrics", node.http_url());
    let (_, text) = node.get_text(&metrics).await;
    assert!(
        !text.contains("XATTACK12345"),
        "a sent method became a label"
    );
    assert!(text.contains("method=\"other\""), "{text}");
}
