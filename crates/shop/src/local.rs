//! Private RabbitMQ, PostgreSQL and Redis servers run from the binaries installed on this
//! machine, each on its own ports with its own data directory: `shop up --local-servers`
//! (data kept in one directory across runs, [`LocalServers`]) and the fault-injection suite
//! (a temporary directory per scenario, servers killed, paused and crashed at will) both
//! start them with this code.
//!
//! As root, RabbitMQ runs as the `rabbitmq` user and PostgreSQL as `postgres` (initdb refuses
//! root); otherwise both run as the current user. Every server is started in a session of its
//! own (`setsid`), so a Ctrl-C at the terminal reaches the shop, which then stops them in
//! order, and not the servers first.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tracing::info;

/// How long a server may take to come up.
pub const START_DEADLINE: Duration = Duration::from_secs(90);

static IS_ROOT: LazyLock<bool> = LazyLock::new(|| {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
});

/// `program` in a session of its own, through a shell that first closes every inherited
/// descriptor above stderr: a server that outlives its starter must not keep what the
/// starter held open (such as the build lock that `flock` hands down to `cargo test`).
fn clean_command(program: &str) -> Command {
    let mut c = Command::new("setsid");
    c.args([
        "bash",
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

/// A server binary: the first of `candidates` that exists, else `name` on the PATH; when
/// neither, an error naming the packages that bring it.
fn binary(name: &str, candidates: &[&str], debian: &str, homebrew: &str) -> anyhow::Result<String> {
    if let Some(found) = candidates.iter().find(|c| Path::new(c).exists()) {
        return Ok(found.to_string());
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if on_path {
        return Ok(name.to_string());
    }
    bail!(
        "{name} is not installed: install the {debian} package (Debian, Ubuntu: apt-get install {debian}) or {homebrew} (Homebrew: brew install {homebrew})"
    )
}

fn postgres_bin(name: &str) -> anyhow::Result<String> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    let candidates: Vec<String> = dirs
        .iter()
        .rev()
        .map(|d| d.join("bin").join(name).display().to_string())
        .collect();
    let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
    binary(name, &candidates, "postgresql", "postgresql@15")
}

/// Runs a command to completion; its output, or an error with it.
fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("{what} failed ({}):\n{text}", out.status);
    }
    Ok(text)
}

/// Sends `sig` (as `kill -SIG` names it) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Whether something accepts connections on `127.0.0.1:port`.
pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The first line of `path` as a process id.
pub fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

fn chown(path: &Path, user: &str) -> anyhow::Result<()> {
    if *IS_ROOT {
        let mut c = Command::new("chown");
        c.args(["-R", &format!("{user}:{user}")]).arg(path);
        run(c, "chown")?;
    }
    Ok(())
}

/// Blocking work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// Waits until `ready` holds, or fails with `what` and `log()` after [`START_DEADLINE`].
async fn wait_until(
    what: &str,
    mut ready: impl AsyncFnMut() -> bool,
    log: impl Fn() -> String,
) -> anyhow::Result<()> {
    let until = Instant::now() + START_DEADLINE;
    while !ready().await {
        if Instant::now() > until {
            bail!(
                "{what} within {} s; its log:\n{}",
                START_DEADLINE.as_secs(),
                log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A RabbitMQ node of its own (with the management plugin).
pub struct Rabbit {
    pub node: String,
    pub port: u16,
    /// The management API's (`shop migrate` makes the programs' own users through it).
    pub management_port: u16,
    dist_port: u16,
    dir: PathBuf,
}

impl Rabbit {
    /// A node named `node` whose files live under `dir` (made if missing).
    pub fn new(
        dir: PathBuf,
        node: String,
        port: u16,
        dist_port: u16,
        management_port: u16,
    ) -> anyhow::Result<Rabbit> {
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{port}\n\
                 management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {management_port}\n"
            ),
        )?;
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_management].\n")?;
        chown(&dir, "rabbitmq")?;
        Ok(Rabbit {
            node,
            port,
            management_port,
            dist_port,
            dir,
        })
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
        read_pid(&self.pid_file()).filter(|p| alive(*p))
    }

    fn rabbitmqctl(&self) -> anyhow::Result<Command> {
        let ctl = binary(
            "rabbitmqctl",
            &["/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/sbin/rabbitmqctl"],
            "rabbitmq-server",
            "rabbitmq",
        )?;
        let mut c = as_user("rabbitmq", &ctl, &[]);
        c.args(["-n", &self.node]);
        Ok(c)
    }

    /// `rabbitmqctl -n NODE args...`.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = self.rabbitmqctl()?;
        c.args(args);
        let what = format!("rabbitmqctl {}", args.join(" "));
        blocking(move || run(c, &what)).await
    }

    async fn ctl_ok(&self, args: &[&str]) -> bool {
        let Ok(mut c) = self.rabbitmqctl() else {
            return false;
        };
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
    pub async fn start(&self) -> anyhow::Result<()> {
        let server = binary(
            "rabbitmq-server",
            &[
                "/usr/lib/rabbitmq/bin/rabbitmq-server",
                "/usr/sbin/rabbitmq-server",
            ],
            "rabbitmq-server",
            "rabbitmq",
        )?;
        let _ = std::fs::remove_file(self.pid_file());
        let d = &self.dir;
        let path = |p: PathBuf| p.display().to_string();
        let mut c = as_user(
            "rabbitmq",
            &server,
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
        blocking(move || run(c, "rabbitmq-server -detached")).await?;
        wait_until(
            &format!("RabbitMQ {} did not start", self.node),
            async || {
                self.ctl_ok(&["await_startup", "--timeout", "30"]).await && port_open(self.port)
            },
            || self.log_tail(),
        )
        .await
    }

    /// Joins this running node to `first`'s cluster (`stop_app`, `join_cluster`,
    /// `start_app`) and waits until it runs again.
    pub async fn join(&self, first: &Rabbit) -> anyhow::Result<()> {
        for args in [
            &["stop_app"][..],
            &["join_cluster", first.node.as_str()],
            &["start_app"],
            &["await_startup", "--timeout", "60"],
        ] {
            self.ctl(args)
                .await
                .with_context(|| format!("joining {} to {}", self.node, first.node))?;
        }
        Ok(())
    }

    /// Graceful stop of the whole node (`rabbitmqctl stop`).
    pub async fn stop(&self) -> anyhow::Result<()> {
        self.ctl(&["stop"]).await?;
        wait_until(
            "RabbitMQ still listening after stop",
            async || !port_open(self.port),
            || self.log_tail(),
        )
        .await
    }

    /// `kill -9` of the Erlang VM.
    pub async fn kill(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("RabbitMQ's pid file")?;
        signal(pid, "CONT");
        signal(pid, "KILL");
        wait_until(
            "RabbitMQ survived kill -9",
            async || !port_open(self.port),
            String::new,
        )
        .await
    }

    /// `kill -STOP`: the node freezes, its sockets stay open.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "STOP");
        }
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
                    all.push_str(&format!("== {}\n", e.path().display()));
                    all.push_str(&tail(&t, 30));
                }
            }
        }
        all
    }
}

fn tail(text: &str, lines: usize) -> String {
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().map(|l| format!("{l}\n")).collect()
}

/// A PostgreSQL cluster of its own.
pub struct Postgres {
    pub port: u16,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
}

impl Postgres {
    /// A cluster whose files live under `dir` (made if missing; initialised by [`Postgres::init`]).
    pub fn new(dir: PathBuf, port: u16) -> anyhow::Result<Postgres> {
        std::fs::create_dir_all(&dir)?;
        chown(&dir, "postgres")?;
        Ok(Postgres {
            port,
            data: dir.join("data"),
            socket_dir: dir.clone(),
            log: dir.join("postgres.log"),
        })
    }

    /// The database the shop uses (created by the programs).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/shop", self.port)
    }

    fn pg_ctl(&self) -> anyhow::Result<Command> {
        let mut c = as_user("postgres", &postgres_bin("pg_ctl")?, &[]);
        c.arg("-D").arg(&self.data);
        Ok(c)
    }

    /// Whether the data directory holds a cluster already.
    pub fn initialised(&self) -> bool {
        self.data.join("PG_VERSION").exists()
    }

    /// `initdb` (trust authentication on loopback, superuser `postgres`).
    pub async fn init(&self) -> anyhow::Result<()> {
        let mut c = as_user("postgres", &postgres_bin("initdb")?, &[]);
        c.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        blocking(move || run(c, "initdb")).await.map(|_| ())
    }

    /// The postmaster's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.data.join("postmaster.pid")).filter(|p| alive(*p))
    }

    /// `pg_ctl start` on our port and socket directory; returns when it accepts connections.
    pub async fn start(&self) -> anyhow::Result<()> {
        let mut c = self.pg_ctl()?;
        c.arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "90", "start", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
                self.port,
                self.socket_dir.display()
            ));
        let log = self.log.clone();
        blocking(move || run(c, "pg_ctl start"))
            .await
            .map(|_| ())
            .with_context(|| {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                format!("PostgreSQL's log:\n{}", tail(&log, 30))
            })
    }

    /// `pg_ctl stop -m fast`: sessions ended, data flushed.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let mut c = self.pg_ctl()?;
        c.args(["-w", "-m", "fast", "stop"]);
        blocking(move || run(c, "pg_ctl stop")).await.map(|_| ())
    }

    /// `pg_ctl stop -m immediate`: a crash; recovery runs at the next start.
    pub async fn crash(&self) -> anyhow::Result<()> {
        let mut c = self.pg_ctl()?;
        c.args(["-m", "immediate", "stop"]);
        blocking(move || run(c, "pg_ctl stop -m immediate"))
            .await
            .map(|_| ())
    }

    /// An immediate stop that reports nothing (for cleanup).
    pub fn stop_now(&self) {
        if let Ok(mut c) = self.pg_ctl() {
            c.args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = c.status();
        }
    }
}

/// A Redis server of its own.
pub struct Redis {
    pub port: u16,
    dir: PathBuf,
    /// Keep the keys across restarts (append-only file in `dir`).
    persist: bool,
    child: Mutex<Option<Child>>,
}

impl Redis {
    pub fn new(dir: PathBuf, port: u16, persist: bool) -> anyhow::Result<Redis> {
        std::fs::create_dir_all(&dir)?;
        Ok(Redis {
            port,
            dir,
            persist,
            child: Mutex::new(None),
        })
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("redis.pid")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        read_pid(&self.pid_file()).filter(|p| alive(*p))
    }

    pub async fn start(&self) -> anyhow::Result<()> {
        let server = binary(
            "redis-server",
            &["/usr/bin/redis-server"],
            "redis-server",
            "redis",
        )?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))?;
        let persistence: &[&str] = if self.persist {
            &["--appendonly", "yes"]
        } else {
            &["--save", "", "--appendonly", "no"]
        };
        let child = clean_command(&server)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(persistence)
            .args(["--enable-debug-command", "local"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting redis-server")?;
        std::fs::write(self.pid_file(), child.id().to_string())?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let log = self.dir.join("redis.log");
        wait_until(
            "Redis did not start",
            async || port_open(self.port),
            || tail(&std::fs::read_to_string(&log).unwrap_or_default(), 30),
        )
        .await
    }

    /// `kill -9`.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        } else if let Some(pid) = self.pid() {
            signal(pid, "KILL");
        }
    }

    /// A graceful stop (SIGTERM: Redis writes its file and exits).
    pub async fn stop(&self) -> anyhow::Result<()> {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pid) = child.as_ref().map(Child::id).or_else(|| self.pid()) {
            signal(pid, "TERM");
        }
        wait_until(
            "Redis still running after SIGTERM",
            async || !port_open(self.port),
            String::new,
        )
        .await?;
        if let Some(mut c) = child {
            let _ = c.wait();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_server_is_named_with_its_packages() {
        let err = binary(
            "no-such-server-xyz",
            &["/nonexistent/x"],
            "xyz-server",
            "xyz",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no-such-server-xyz is not installed")
                && err.contains("apt-get install xyz-server")
                && err.contains("brew install xyz"),
            "{err}"
        );
        assert_eq!(binary("bash", &[], "bash", "bash").unwrap(), "bash");
    }
}

/// A port nobody listens on right now (the kernel's choice).
fn any_free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The ports `shop up --local-servers` chose, kept in `<dir>/servers.json` so that a later
/// run finds the servers (still running after a crash, or to start on the same ports).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Ports {
    amqp: u16,
    amqp_dist: u16,
    management: u16,
    postgres: u16,
    redis: u16,
    node: String,
}

impl Ports {
    fn fresh() -> anyhow::Result<Ports> {
        let mut taken = Vec::new();
        let mut next = || -> anyhow::Result<u16> {
            loop {
                let p = any_free_port()?;
                if !taken.contains(&p) {
                    taken.push(p);
                    return Ok(p);
                }
            }
        };
        Ok(Ports {
            amqp: next()?,
            amqp_dist: next()?,
            management: next()?,
            postgres: next()?,
            redis: next()?,
            node: format!(
                "shop{}@localhost",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
        })
    }
}

/// The servers of `shop up --local-servers`, their data under one directory.
pub struct LocalServers {
    pub dir: PathBuf,
    pub rabbit: Rabbit,
    pub postgres: Postgres,
    pub redis: Redis,
}

impl LocalServers {
    /// Finds the servers of an earlier run in `dir` and reuses those still running, starts the
    /// others (on the same ports when they are free), and waits until all three answer.
    pub async fn up(dir: &Path) -> anyhow::Result<LocalServers> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the local servers' directory {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        if *IS_ROOT {
            // The server users must be able to reach their directories.
            let mut c = Command::new("chmod");
            c.arg("755").arg(&dir);
            run(c, "chmod")?;
        }
        let state = dir.join("servers.json");
        let earlier: Option<Ports> = std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        let ports = match earlier {
            Some(p) => p,
            None => Ports::fresh()?,
        };
        let rabbit = Rabbit::new(
            dir.join("rabbitmq"),
            ports.node.clone(),
            ports.amqp,
            ports.amqp_dist,
            ports.management,
        )?;
        let mut servers = LocalServers {
            postgres: Postgres::new(dir.join("postgres"), ports.postgres)?,
            redis: Redis::new(dir.join("redis"), ports.redis, true)?,
            rabbit,
            dir: dir.clone(),
        };
        // A port taken by something else than our own server: move to a free one.
        let fresh = Ports::fresh()?;
        if servers.rabbit.pid().is_none()
            && [ports.amqp, ports.amqp_dist, ports.management]
                .into_iter()
                .any(port_open)
        {
            servers.rabbit = Rabbit::new(
                dir.join("rabbitmq"),
                ports.node.clone(),
                fresh.amqp,
                fresh.amqp_dist,
                fresh.management,
            )?;
        }
        if servers.postgres.pid().is_none() && port_open(ports.postgres) {
            servers.postgres = Postgres::new(dir.join("postgres"), fresh.postgres)?;
        }
        if servers.redis.pid().is_none() && port_open(ports.redis) {
            servers.redis = Redis::new(dir.join("redis"), fresh.redis, true)?;
        }
        let s = &servers;
        let (r, p, d) = tokio::join!(
            async {
                if s.rabbit.pid().is_some() && port_open(s.rabbit.port) {
                    info!(
                        port = s.rabbit.port,
                        "local RabbitMQ from an earlier run still runs: reusing it"
                    );
                    return Ok(());
                }
                info!(port = s.rabbit.port, "starting a local RabbitMQ");
                s.rabbit.start().await
            },
            async {
                if s.postgres.pid().is_some() && port_open(s.postgres.port) {
                    info!(
                        port = s.postgres.port,
                        "local PostgreSQL from an earlier run still runs: reusing it"
                    );
                    return Ok(());
                }
                if !s.postgres.initialised() {
                    s.postgres.init().await?;
                }
                info!(port = s.postgres.port, "starting a local PostgreSQL");
                s.postgres.start().await
            },
            async {
                if s.redis.pid().is_some() && port_open(s.redis.port) {
                    info!(
                        port = s.redis.port,
                        "local Redis from an earlier run still runs: reusing it"
                    );
                    return Ok(());
                }
                info!(port = s.redis.port, "starting a local Redis");
                s.redis.start().await
            },
        );
        r.context("local RabbitMQ")?;
        p.context("local PostgreSQL")?;
        d.context("local Redis")?;
        let now = Ports {
            amqp: servers.rabbit.port,
            amqp_dist: servers.rabbit.dist_port,
            management: servers.rabbit.management_port,
            postgres: servers.postgres.port,
            redis: servers.redis.port,
            node: servers.rabbit.node.clone(),
        };
        std::fs::write(&state, serde_json::to_string_pretty(&now)?)?;
        info!(dir = %dir.display(), "local servers ready");
        Ok(servers)
    }

    /// Points the shop at these servers.
    pub fn configure(&self, config: &mut shop_platform::config::Config) {
        config.amqp_url = self.rabbit.url();
        config.amqp_admin_url = Some(self.rabbit.management_url());
        config.redis_url = self.redis.url();
        config.cache_redis_url = None;
        config.database_url = self.postgres.url();
    }

    /// Stops all three, each gracefully; says which did not stop.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let (r, p, d) = tokio::join!(self.rabbit.stop(), self.postgres.stop(), self.redis.stop());
        let failed: Vec<String> = [("RabbitMQ", r), ("PostgreSQL", p), ("Redis", d)]
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e:#}")))
            .collect();
        if !failed.is_empty() {
            bail!("stopping the local servers: {}", failed.join("; "));
        }
        info!("local servers stopped");
        Ok(())
    }
}
