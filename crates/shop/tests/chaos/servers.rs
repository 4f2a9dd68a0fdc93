//! Private RabbitMQ, PostgreSQL and Redis servers for one scenario ([`shop::local`]): own
//! ports, own data directories under one temporary directory, so they can be killed, paused
//! and filled without touching the shared servers on the standard ports. Everything is
//! removed when the [`Servers`] value is dropped, also when the scenario panics.
//!
//! A run that is killed outright (no unwinding, so no `Drop`) leaves its servers behind; the
//! next run finds their directory (its owner process gone) and stops them by their pid files.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

pub use shop::local::{Postgres, Rabbit, Redis};
use shop::local::{read_pid, signal};
use uuid::Uuid;

use crate::cluster::free_port;

const DIR_PREFIX: &str = "shop-chaos-";
/// The file naming the test process that owns a scenario's directory.
const OWNER: &str = "owner.pid";

/// Stops the servers of scenarios whose test process died without cleaning up, and removes
/// their directories.
fn sweep_abandoned() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        match read_pid(&dir.join(OWNER)) {
            Some(owner) if Path::new(&format!("/proc/{owner}")).exists() => continue,
            Some(_) => {}
            // Being created right now by another run, or not ours.
            None => continue,
        }
        for pid_file in [
            "rabbitmq/rabbitmq.pid",
            "rabbitmq-1/rabbitmq.pid",
            "rabbitmq-2/rabbitmq.pid",
            "postgres/data/postmaster.pid",
            "redis/redis.pid",
        ] {
            if let Some(pid) = read_pid(&dir.join(pid_file)) {
                signal(pid, "CONT");
                signal(pid, "KILL");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Distinct free ports.
fn ports<const N: usize>() -> [u16; N] {
    let mut out = [0; N];
    for i in 0..N {
        let mut p = free_port();
        while out[..i].contains(&p) {
            p = free_port();
        }
        out[i] = p;
    }
    out
}

/// The three servers of one scenario.
pub struct Servers {
    pub root: PathBuf,
    /// The (first) RabbitMQ node.
    pub rabbit: Rabbit,
    /// The other nodes of a RabbitMQ cluster (none for a single node).
    pub more_rabbits: Vec<Rabbit>,
    pub postgres: Postgres,
    pub redis: Redis,
}

impl Servers {
    /// Starts all three (concurrently) on free ports.
    pub async fn start() -> Servers {
        Servers::start_with(1).await
    }

    /// Like [`Servers::start`], with a RabbitMQ cluster of `nodes` nodes (own names, ports
    /// and data directories; the others joined to the first with `rabbitmqctl
    /// join_cluster`).
    pub async fn start_with(nodes: usize) -> Servers {
        sweep_abandoned();
        let id = Uuid::new_v4().simple().to_string();
        let root = std::env::temp_dir().join(format!("{DIR_PREFIX}{}", &id[..12]));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(OWNER), std::process::id().to_string()).unwrap();
        // The server users must be able to reach their directories.
        let status = Command::new("chmod").arg("755").arg(&root).status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "chmod {}",
            root.display()
        );
        let [amqp, dist, management, pg, redis] = ports();
        let more_rabbits = (1..nodes)
            .map(|n| {
                let [amqp, dist, management] = ports();
                Rabbit::new(
                    root.join(format!("rabbitmq-{n}")),
                    format!("chaos{}n{n}@localhost", &id[..10]),
                    amqp,
                    dist,
                    management,
                )
                .expect("RabbitMQ's files")
            })
            .collect();
        let servers = Servers {
            rabbit: Rabbit::new(
                root.join("rabbitmq"),
                format!("chaos{}@localhost", &id[..10]),
                amqp,
                dist,
                management,
            )
            .expect("RabbitMQ's files"),
            more_rabbits,
            postgres: Postgres::new(root.join("postgres"), pg).expect("PostgreSQL's directory"),
            redis: Redis::new(root.join("redis"), redis, false).expect("Redis's directory"),
            root,
        };
        let (r, p, d) = tokio::join!(
            servers.rabbit.start(),
            async {
                servers.postgres.init().await?;
                servers.postgres.start().await
            },
            servers.redis.start(),
        );
        r.expect("private RabbitMQ");
        p.expect("private PostgreSQL");
        d.expect("private Redis");
        let started =
            futures::future::join_all(servers.more_rabbits.iter().map(|n| n.start())).await;
        for (n, r) in servers.more_rabbits.iter().zip(started) {
            r.unwrap_or_else(|e| panic!("RabbitMQ node {}: {e:#}", n.node));
            n.join(&servers.rabbit)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
        }
        servers
    }

    /// Every RabbitMQ node, the first one first.
    pub fn rabbits(&self) -> impl Iterator<Item = &Rabbit> {
        std::iter::once(&self.rabbit).chain(&self.more_rabbits)
    }

    /// The environment that points the programs at these servers.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "SHOP_AMQP_URL".into(),
                self.rabbits()
                    .map(Rabbit::url)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("SHOP_AMQP_ADMIN_URL".into(), self.rabbit.management_url()),
            ("SHOP_REDIS_URL".into(), self.redis.url()),
            ("SHOP_DATABASE_URL".into(), self.postgres.url()),
        ]
    }

    /// Makes sure nothing is frozen, so that clients cleaning up get an answer or a refusal,
    /// never a hang.
    pub fn unfreeze(&self) {
        for r in self.rabbits() {
            r.resume();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for r in std::iter::once(&self.rabbit).chain(&self.more_rabbits) {
            if let Some(pid) = r.pid() {
                signal(pid, "CONT");
                signal(pid, "KILL");
            }
        }
        self.postgres.stop_now();
        self.redis.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
