//! Private RabbitMQ, PostgreSQL and Redis servers for one scenario: own ports, own data
//! directories under one temporary directory, so they can be killed, paused and filled
//! without touching the shared servers on the standard ports. Everything is removed when the
//! [`Servers`] value is dropped, also when the scenario panics.
//!
//! Started as TESTING.md says: RabbitMQ as the `rabbitmq` user with its own node name, ports
//! and directories, PostgreSQL initialised and run as the `postgres` user, Redis without
//! persistence and with `DEBUG` allowed from loopback. When the tests do not run as root,
//! the servers run as the current user.
//!
//! A run that is killed outright (no unwinding, so no `Drop`) leaves its servers behind; the
//! next run finds their directory (its owner process gone) and stops them by their pid files.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use uuid::Uuid;

use crate::cluster::free_port;

/// How long a server may take to come up.
const START_DEADLINE: Duration = Duration::from_secs(90);

static IS_ROOT: LazyLock<bool> = LazyLock::new(|| {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
});

/// `program`, started through a shell that first closes every inherited descriptor above
/// stderr: a server that outlives a killed test run must not keep what the run held open
/// (such as the build lock that `flock` hands down to `cargo test`, which would then never be
/// released).
fn clean_command(program: &str) -> Command {
    let mut c = Command::new("bash");
    c.args([
        "-c",
        r#"for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && eval "exec $fd>&-"; done; exec "$@""#,
        "bash",
        program,
    ]);
    c
}

/// `program` as `user` with `env` (when we are root; as ourselves otherwise). `runuser`
/// resets the environment, so the variables go through `env`.
fn as_user(user: &str, program: &str, env: &[(&str, String)]) -> Command {
    if *IS_ROOT {
        let mut c = clean_command("runuser");
        c.args(["-u", user, "--", "env"]);
        if user == "rabbitmq" {
            // Its home holds the Erlang cookie the CLI tools need.
            c.arg("HOME=/var/lib/rabbitmq");
        }
        for (k, v) in env {
            c.arg(format!("{k}={v}"));
        }
        c.arg(program);
        c
    } else {
        let mut c = clean_command(program);
        c.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        c
    }
}

/// The first of `candidates` that exists, else the bare name (found on PATH).
fn binary(name: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|c| Path::new(c).exists())
        .map(|c| c.to_string())
        .unwrap_or_else(|| name.to_string())
}

fn postgres_bin(name: &str) -> String {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.iter()
        .rev()
        .map(|d| d.join("bin").join(name))
        .find(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Runs a command to completion; panics with its output if it fails.
fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    text
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn chown(path: &Path, user: &str) {
    if *IS_ROOT {
        let mut c = Command::new("chown");
        c.args(["-R", &format!("{user}:{user}")]).arg(path);
        run(c, "chown");
    }
}

/// Blocking work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A RabbitMQ node of its own.
pub struct Rabbit {
    pub node: String,
    pub port: u16,
    /// The management API's (`shop migrate` makes the programs' own users through it).
    pub management_port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl Rabbit {
    fn new(root: &Path) -> Rabbit {
        let dir = root.join("rabbitmq");
        let id = Uuid::new_v4().simple().to_string();
        let port = free_port();
        let mut dist_port = free_port();
        while dist_port == port {
            dist_port = free_port();
        }
        let mut management_port = free_port();
        while management_port == port || management_port == dist_port {
            management_port = free_port();
        }
        std::fs::create_dir_all(dir.join("mnesia")).unwrap();
        std::fs::create_dir_all(dir.join("log")).unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{port}\n\
                 management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"
            ),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_management].\n").unwrap();
        chown(&dir, "rabbitmq");
        Rabbit {
            node: format!("chaos{}@localhost", &id[..10]),
            port,
            management_port,
            dist_port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    pub fn management_url(&self) -> String {
        format!("http://guest:guest@127.0.0.1:{}", self.management_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("rabbitmq.pid")
    }

    /// The Erlang VM's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn rabbitmqctl(&self) -> Command {
        let mut c = as_user(
            "rabbitmq",
            &binary("rabbitmqctl", &["/usr/lib/rabbitmq/bin/rabbitmqctl"]),
            &[],
        );
        c.args(["-n", &self.node]);
        c
    }

    /// `rabbitmqctl -n NODE args...`; panics if it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut c = self.rabbitmqctl();
        c.args(args);
        let what = format!("rabbitmqctl {}", args.join(" "));
        blocking(move || run(c, &what)).await
    }

    async fn ctl_ok(&self, args: &[&str]) -> bool {
        let mut c = self.rabbitmqctl();
        c.args(args);
        blocking(move || {
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .await
    }

    /// Starts the node (detached) and waits until it accepts AMQP connections.
    pub async fn start(&self) {
        let _ = std::fs::remove_file(self.pid_file());
        let d = &self.dir;
        let path = |p: PathBuf| p.display().to_string();
        let mut c = as_user(
            "rabbitmq",
            &binary(
                "rabbitmq-server",
                &["/usr/lib/rabbitmq/bin/rabbitmq-server"],
            ),
            &[
                ("RABBITMQ_NODENAME", self.node.clone()),
                ("RABBITMQ_NODE_PORT", self.port.to_string()),
                ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
                ("RABBITMQ_MNESIA_BASE", path(d.join("mnesia"))),
                ("RABBITMQ_LOG_BASE", path(d.join("log"))),
                ("RABBITMQ_PID_FILE", path(self.pid_file())),
                // Our own configuration file: the machine's binds the standard port.
                ("RABBITMQ_CONFIG_FILE", path(d.join("rabbitmq.conf"))),
                (
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    path(d.join("enabled_plugins")),
                ),
            ],
        );
        c.arg("-detached");
        blocking(move || run(c, "rabbitmq-server -detached")).await;
        let until = Instant::now() + START_DEADLINE;
        loop {
            if self.ctl_ok(&["await_startup", "--timeout", "30"]).await && port_open(self.port) {
                return;
            }
            assert!(
                Instant::now() < until,
                "private RabbitMQ {} did not start; log:\n{}",
                self.node,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Graceful stop of the whole node (`rabbitmqctl stop`).
    pub async fn stop(&self) {
        self.ctl(&["stop"]).await;
        let until = Instant::now() + START_DEADLINE;
        while port_open(self.port) {
            assert!(
                Instant::now() < until,
                "RabbitMQ still listening after stop"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9` of the Erlang VM.
    pub async fn kill(&self) {
        let pid = self.pid().expect("RabbitMQ pid file");
        signal(pid, "CONT");
        signal(pid, "KILL");
        let until = Instant::now() + START_DEADLINE;
        while port_open(self.port) {
            assert!(Instant::now() < until, "RabbitMQ survived kill -9");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -STOP`: the node freezes, its sockets stay open.
    pub fn pause(&self) {
        signal(self.pid().expect("RabbitMQ pid file"), "STOP");
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "CONT");
        }
    }

    fn log_tail(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for e in entries.flatten() {
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    let tail: Vec<&str> = t.lines().rev().take(30).collect();
                    all.push_str(&format!("== {}\n", e.path().display()));
                    for l in tail.into_iter().rev() {
                        all.push_str(l);
                        all.push('\n');
                    }
                }
            }
        }
        all
    }
}

/// A PostgreSQL cluster of its own.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
}

impl Postgres {
    fn new(root: &Path) -> Postgres {
        let dir = root.join("postgres");
        std::fs::create_dir_all(&dir).unwrap();
        chown(&dir, "postgres");
        Postgres {
            port: free_port(),
            data: dir.join("data"),
            socket_dir: dir.clone(),
            log: dir.join("postgres.log"),
        }
    }

    /// The database the shop uses (created by the programs).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/shop", self.port)
    }

    fn pg_ctl(&self) -> Command {
        let mut c = as_user("postgres", &postgres_bin("pg_ctl"), &[]);
        c.arg("-D").arg(&self.data);
        c
    }

    async fn init(&self) {
        let mut c = as_user("postgres", &postgres_bin("initdb"), &[]);
        c.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        blocking(move || run(c, "initdb")).await;
    }

    /// `pg_ctl start` on our port and socket directory; returns when it accepts connections.
    pub async fn start(&self) {
        let mut c = self.pg_ctl();
        c.arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "90", "start", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
                self.port,
                self.socket_dir.display()
            ));
        blocking(move || run(c, "pg_ctl start")).await;
    }

    /// `pg_ctl stop -m immediate`: a crash; recovery runs at the next start.
    pub async fn crash(&self) {
        let mut c = self.pg_ctl();
        c.args(["-m", "immediate", "stop"]);
        blocking(move || run(c, "pg_ctl stop -m immediate")).await;
    }

    fn stop_now(&self) {
        let mut c = self.pg_ctl();
        c.args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let _ = c.status();
    }
}

/// A Redis server of its own (no persistence: a restart loses every key).
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Redis {
    fn new(root: &Path) -> Redis {
        let dir = root.join("redis");
        std::fs::create_dir_all(&dir).unwrap();
        Redis {
            port: free_port(),
            dir,
            child: Mutex::new(None),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = clean_command(&binary("redis-server", &["/usr/bin/redis-server"]))
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("redis-server");
        std::fs::write(self.dir.join("redis.pid"), child.id().to_string()).unwrap();
        *self.child.lock().unwrap() = Some(child);
        let until = Instant::now() + START_DEADLINE;
        while !port_open(self.port) {
            assert!(Instant::now() < until, "private Redis did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const DIR_PREFIX: &str = "shop-chaos-";
/// The file naming the test process that owns a scenario's directory.
const OWNER: &str = "owner.pid";

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

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

/// The three servers of one scenario.
pub struct Servers {
    pub root: PathBuf,
    pub rabbit: Rabbit,
    pub postgres: Postgres,
    pub redis: Redis,
}

impl Servers {
    /// Starts all three (concurrently) on free ports.
    pub async fn start() -> Servers {
        sweep_abandoned();
        let root = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}",
            &Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(OWNER), std::process::id().to_string()).unwrap();
        // The server users must be able to reach their directories.
        let mut c = Command::new("chmod");
        c.arg("755").arg(&root);
        run(c, "chmod");
        let servers = Servers {
            rabbit: Rabbit::new(&root),
            postgres: Postgres::new(&root),
            redis: Redis::new(&root),
            root,
        };
        tokio::join!(
            servers.rabbit.start(),
            async {
                servers.postgres.init().await;
                servers.postgres.start().await;
            },
            servers.redis.start(),
        );
        servers
    }

    /// The environment that points the programs at these servers.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SHOP_AMQP_URL".into(), self.rabbit.url()),
            ("SHOP_AMQP_ADMIN_URL".into(), self.rabbit.management_url()),
            ("SHOP_REDIS_URL".into(), self.redis.url()),
            ("SHOP_DATABASE_URL".into(), self.postgres.url()),
        ]
    }

    /// Makes sure nothing is frozen, so that clients cleaning up get an answer or a refusal,
    /// never a hang.
    pub fn unfreeze(&self) {
        self.rabbit.resume();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(pid) = self.rabbit.pid() {
            signal(pid, "CONT");
            signal(pid, "KILL");
        }
        self.postgres.stop_now();
        self.redis.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
