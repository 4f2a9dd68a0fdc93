//! Order event streams hold no connection past their end: whether the stream ends at a
//! terminal status or its client leaves, the gateway's connection to orders is released at
//! once (counted on the orders side, in the kernel's table of open TCP connections).

use std::time::Duration;

use futures::StreamExt as _;
use shop_platform::testkit::eventually;

use crate::cluster::Cluster;

/// Established TCP connections whose local port is `port` (the server's side of each).
fn established_to(port: u16) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields[1].rsplit(':').next();
                    local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port)
                        && fields[3] == "01"
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ended_and_abandoned_streams_release_their_connections() {
    const STREAMS: usize = 40;
    let shop = Cluster::start(&[]).await;
    let (alice, _, widget, done) = shop.confirmed_order().await;
    // Payment answers only after the saga's deadline: this one stays open a while.
    let open = shop.order(&alice, &[(widget, 1)], "tok_timeout").await;
    let open = open["id"].as_str().unwrap().to_string();
    let orders = shop.port("orders");
    let before = established_to(orders);

    let stream = |id: String| {
        let (http, base, token) = (shop.http.clone(), shop.base.clone(), alice.clone());
        async move {
            http.get(format!("{base}/api/orders/{id}/events"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .error_for_status()
                .unwrap()
        }
    };
    // Streams of a confirmed order end after its status; read each to its end.
    let ended = futures::future::join_all((0..STREAMS).map(|_| async {
        tokio::time::timeout(Duration::from_secs(20), stream(done.clone()).await.text())
            .await
            .expect("a terminal order's stream ends")
            .unwrap()
    }))
    .await;
    assert!(ended.iter().all(|t| t.contains("CONFIRMED")), "{ended:?}");
    let released = |what: &'static str| {
        eventually(what, Duration::from_secs(10), || async {
            established_to(orders) <= before + 2
        })
    };
    released("the ended streams' connections to orders are closed").await;
    // Streams of an open order: the client reads the first event, then leaves.
    futures::future::join_all((0..STREAMS).map(|_| async {
        let mut body = stream(open.clone()).await.bytes_stream();
        tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("the stream starts with the order's status")
            .unwrap()
            .unwrap();
    }))
    .await;

    released("the abandoned streams' connections to orders are closed").await;
}
