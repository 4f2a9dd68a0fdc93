//! A private RabbitMQ cluster for the benchmark's scale-out section (`scripts/bench`):
//!
//! ```sh
//! rabbit_cluster DIR N
//! ```
//!
//! starts N nodes whose files live under DIR (own node names and ports, never the machine's
//! server), joins them to the first with `rabbitmqctl join_cluster`, prints
//! `SHOP_AMQP_URL=<every node, comma-separated>` and `SHOP_AMQP_ADMIN_URL=<the first node's
//! management API>`, and keeps them running until SIGTERM or SIGINT; then it kills them
//! (nothing in them is worth keeping) and removes DIR. Needs root (the nodes run as the
//! `rabbitmq` user), like the fault suite's private servers.

use std::{io::Write as _, net::TcpListener, path::PathBuf};

use anyhow::Context as _;
use shop::local::{Rabbit, signal};
use tokio::signal::unix::{SignalKind, signal as on};

/// `n` distinct free loopback ports.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    Ok(ports)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: rabbit_cluster DIR N";
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().context(usage)?);
    let n: usize = args.next().context(usage)?.parse().context(usage)?;
    anyhow::ensure!(n >= 1, "{usage} (N at least 1)");
    std::fs::create_dir_all(&dir)?;
    // The nodes' user must reach their directories.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let tag = format!("bench{}", std::process::id());
    let ports = free_ports(3 * n)?;
    let nodes = (0..n)
        .map(|i| {
            let [amqp, dist, management] = [ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]];
            let node = format!("{tag}n{i}@localhost");
            Rabbit::new(dir.join(format!("node{i}")), node, amqp, dist, management)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (mut term, mut int) = (on(SignalKind::terminate())?, on(SignalKind::interrupt())?);
    let started = async {
        futures::future::try_join_all(nodes.iter().map(Rabbit::start)).await?;
        for node in &nodes[1..] {
            node.join(&nodes[0]).await?;
        }
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = started => r,
        _ = term.recv() => Err(anyhow::anyhow!("stopped while starting")),
        _ = int.recv() => Err(anyhow::anyhow!("stopped while starting")),
    };
    if result.is_ok() {
        let urls: Vec<String> = nodes.iter().map(Rabbit::url).collect();
        let mut out = std::io::stdout().lock();
        writeln!(out, "SHOP_AMQP_URL={}", urls.join(","))?;
        writeln!(out, "SHOP_AMQP_ADMIN_URL={}", nodes[0].management_url())?;
        out.flush()?;
        drop(out);
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
    for node in &nodes {
        if let Some(pid) = node.pid() {
            signal(pid, "KILL");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}
