//! `shop up | run | migrate | dlq | seed`: every option is also an environment variable, and
//! `shop --help` documents each.

use std::{process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shop_platform::{
    amqp::{Broker, BrokerConfig},
    config::Config,
    dlq,
    metrics::Metrics,
    service::{self, Running},
    telemetry,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{PROGRAMS, Settings, fleet, names, program, topology};

/// Shop: an event-driven e-commerce backend (gateway + six services over RabbitMQ, Redis and
/// PostgreSQL).
#[derive(Parser, Debug)]
#[command(name = "shop", version, about)]
pub struct Cli {
    #[command(
        flatten,
        next_help_heading = "Servers, messaging and logs (every command)"
    )]
    pub config: Config,
    #[command(flatten, next_help_heading = "Programs (every command)")]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run all seven programs in one process, each on its own port, talking only through
    /// RabbitMQ and HTTP (for a laptop).
    Up(UpArgs),
    /// Run one program, as in production.
    Run {
        /// users, products, inventory, orders, payments, notifications or gateway.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(names()))]
        program: String,
    },
    /// Apply every service's database migrations (also done at start-up).
    Migrate,
    /// Check the invariants across every service's data and the broker; exits non-zero on
    /// any violation. Run it once the system is quiet.
    Audit {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print one order's path across the services from what they recorded: its status
    /// history, each event of its saga (who wrote it, when it was published, who handled it
    /// and when, who has not yet), its dead letters and its trace id. No tracing backend
    /// needed: "where is this order stuck?" in one command.
    Order {
        /// The order id.
        id: uuid::Uuid,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fill an idempotent demo catalog (about 20 products with stock).
    Seed,
    /// Print the AsyncAPI 3 document of every event (also served by the gateway at
    /// `/asyncapi.json`, and committed as docs/asyncapi.json).
    Asyncapi,
    /// Generate load against the gateway (orders, or cached product reads), report rates,
    /// latencies, errors and outcomes, then audit; exits non-zero if an order did not
    /// settle or the audit fails.
    Load(crate::load::LoadArgs),
    /// Exit 0 if URL answers 2xx in time, else 1: a container's healthcheck, for images
    /// without curl (`shop health http://127.0.0.1:8084/health/ready`).
    Health {
        #[arg(default_value = "http://127.0.0.1:8080/health/ready")]
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout_secs: u64,
    },
    /// Inspect and re-drive dead-lettered messages.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Start private RabbitMQ, Redis and PostgreSQL servers from the binaries installed on
    /// this machine (on free ports, data in --local-dir), instead of using the servers the
    /// URLs name; stopped when the shop stops, reused by the next run if still running.
    #[arg(long, env = "SHOP_LOCAL_SERVERS")]
    pub local_servers: bool,

    /// Where --local-servers keeps the servers' data (kept across runs).
    #[arg(long, env = "SHOP_LOCAL_DIR", default_value = ".shop")]
    pub local_dir: std::path::PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// List dead-lettered messages: service, id, type, reason, attempts, first death time.
    List {
        /// Only this service's dead-letter queue.
        #[arg(long)]
        service: Option<String>,
        /// Print a JSON array instead of a table (`[]` when there are none).
        #[arg(long)]
        json: bool,
    },
    /// Show one dead-lettered message with its body.
    Show {
        /// The message id (the event id).
        id: String,
    },
    /// Re-drive dead-lettered messages to their queue as fresh first attempts.
    Replay {
        /// The service whose dead-letter queue to replay.
        #[arg(long)]
        service: String,
        /// Only the message with this id.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every message in that queue.
        #[arg(long)]
        all: bool,
    },
}

pub fn main(cli: Cli) -> ExitCode {
    // The programs this process runs export their spans, each under its own service name.
    let programs: Vec<&'static str> = match &cli.command {
        Command::Up(_) => names().collect(),
        Command::Run { program } => names().filter(|n| n == program).collect(),
        _ => Vec::new(),
    };
    let tracing = telemetry::init(cli.config.log.as_deref(), &cli.config.log_format, &programs);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(execute(cli));
    // After the programs stopped: their last spans are still buffered.
    tracing.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `shop health`: one GET, 2xx or an error naming what came back.
async fn health(url: &str, timeout_secs: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout_secs))
        .build()?;
    let resp = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    println!("{url}: {status}");
    Ok(())
}

/// An error as one line, said once: its causes joined by `: `, each on one line, a cause
/// left out when the text before it already says it; and what to check when a server could
/// not be reached.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() || parts.iter().any(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    let mut line = parts.join(": ");
    if line.contains("cannot connect to") {
        line.push_str(
            " (check that the server runs there and that the URL and credentials are right; \
             `shop --help` lists the settings. No servers on this machine? \
             `shop up --local-servers` starts private ones from the installed binaries, and \
             `docker compose -f deploy/docker-compose.yml up -d rabbitmq redis redis-cache postgres` \
             runs them in containers)",
        );
    }
    line
}

async fn execute(cli: Cli) -> anyhow::Result<()> {
    let (mut config, mut settings) = (cli.config, cli.settings);
    match cli.command {
        Command::Up(args) => {
            // One process for everything: no load balancer to wait for.
            config.drain_secs.get_or_insert(0);
            with_development_admin(&mut settings);
            with_assertion_keys(&mut config, KeyDefault::PerRun)?;
            let local = match args.local_servers {
                true => {
                    let local = crate::local::LocalServers::up(&args.local_dir).await?;
                    local.configure(&mut config);
                    Some(local)
                }
                false => None,
            };
            let served = async {
                crate::setup_roles(&config).await?;
                crate::setup_broker_users(&config).await?;
                serve(&config, &settings, &names().collect::<Vec<_>>()).await
            }
            .await;
            // The servers stop after the programs, also when the shop failed.
            if let Some(local) = local {
                local.stop().await?;
            }
            served
        }
        Command::Run { program } => {
            with_assertion_keys(&mut config, KeyDefault::DevelopmentOnLoopback)?;
            serve(&config, &settings, &[program.as_str()]).await
        }
        Command::Migrate => {
            crate::setup_roles(&config).await?;
            crate::setup_broker_users(&config).await?;
            for e in PROGRAMS {
                service::migrate((e.build)(&settings).as_ref(), &config).await?;
            }
            println!("migrations applied");
            Ok(())
        }
        Command::Dlq { command } => dlq_command(&config, command).await,
        Command::Health { url, timeout_secs } => health(&url, timeout_secs).await,
        Command::Load(args) => crate::load::run(&config, &settings, args).await,
        Command::Audit { json } => {
            let broker = dlq_broker(&config).await?;
            let report = crate::audit::run(&config, &settings, Some(&broker)).await;
            broker.close().await;
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            if report.ok() {
                Ok(())
            } else {
                anyhow::bail!("{} invariant violation(s)", report.violations.len())
            }
        }
        Command::Order { id, json } => {
            let broker = match dlq_broker(&config).await {
                Ok(b) => Some(b),
                Err(e) => {
                    warn!(error = %one_line(&e), "the broker is unreachable: dead letters are not checked");
                    None
                }
            };
            let timeline = crate::timeline::read(&config, id, broker.as_deref()).await;
            if let Some(b) = broker {
                b.close().await;
            }
            let timeline = timeline?;
            if json {
                println!("{}", serde_json::to_string_pretty(&timeline)?);
            } else {
                print!("{}", timeline.table());
            }
            Ok(())
        }
        Command::Asyncapi => {
            println!("{}", serde_json::to_string_pretty(&crate::asyncapi())?);
            Ok(())
        }
        Command::Seed => {
            let products = program(shop_products::program::IDENTITY.name, &settings)
                .expect("products is a program");
            let pool = shop_platform::db::connect_service(&config, products.name(), 2).await?;
            products.migrate(&pool).await?;
            let n = shop_products::seed(&pool).await?;
            println!(
                "seeded {n} new product(s); the relay of a running products service publishes them"
            );
            Ok(())
        }
    }
}

/// The administrator of a development shop (`shop up` with no administrator configured),
/// announced with a warning: never for production.
pub const DEVELOPMENT_ADMIN: (&str, &str) = ("admin@example.com", "change-me-please");

/// `shop up` is for a laptop: without a configured administrator it creates the development
/// one, so that the README's walk-through works as pasted.
fn with_development_admin(settings: &mut Settings) {
    let users = &mut settings.users;
    if users.admin_email.is_none() && users.admin_password.is_none() {
        let (email, password) = DEVELOPMENT_ADMIN;
        warn!(
            email,
            password,
            "no administrator configured (SHOP_ADMIN_EMAIL, SHOP_ADMIN_PASSWORD): shop up creates this development one; never use it in production"
        );
        users.admin_email = Some(email.into());
        users.admin_password = Some(password.into());
    }
}

/// What a program signs its assertions with when no key is configured.
enum KeyDefault {
    /// `shop up`: every program is in this process, so a fresh key for this run.
    PerRun,
    /// `shop run`: the programs of a laptop (all on loopback) share the development key;
    /// bound to any other address, a program refuses to start without a real key.
    DevelopmentOnLoopback,
}

/// The development assertion key of `shop run` on a loopback address: public, so never
/// for an address another machine can reach.
const DEVELOPMENT_ASSERTION_KEY: &str = "development-only-assertion-key-not-for-production";

fn with_assertion_keys(config: &mut Config, default: KeyDefault) -> anyhow::Result<()> {
    if config.assertion_keys.is_some() || config.assertion_key_file.is_some() {
        config.assertion_keys()?;
        return Ok(());
    }
    let key = match default {
        KeyDefault::PerRun => {
            info!("no SHOP_ASSERTION_KEYS: the programs of this run sign with a key of its own");
            shop_platform::assertion::Keys::generate()
        }
        KeyDefault::DevelopmentOnLoopback if is_loopback(&config.bind) => {
            warn!(
                "no SHOP_ASSERTION_KEYS: signing caller assertions with the public development key (loopback only; never in production)"
            );
            DEVELOPMENT_ASSERTION_KEY.to_string()
        }
        KeyDefault::DevelopmentOnLoopback => anyhow::bail!(
            "SHOP_ASSERTION_KEYS (or SHOP_ASSERTION_KEY_FILE) is required: SHOP_BIND={} is not a loopback address, and every program there must share a secret key",
            config.bind
        ),
    };
    config.assertion_keys = Some(key);
    Ok(())
}

/// Whether `host` is reachable only from this machine.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Cancelled on SIGINT or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        info!("stop requested; finishing work in flight");
        t.cancel();
    });
    token
}

/// Starts the named programs, then waits for a stop signal and stops them gracefully.
async fn serve(config: &Config, settings: &Settings, names: &[&str]) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    let fleet = fleet(config, settings);
    let mut running: Vec<Running> = Vec::new();
    for name in names {
        let started = async {
            let program = program(name, settings).expect("a known program");
            let listener = service::bind(&config.bind, settings.ports.of(name)).await?;
            service::start(
                program,
                config.clone(),
                fleet.clone(),
                listener,
                shutdown.clone(),
            )
            .await
        }
        .await
        .with_context(|| format!("starting {name}"));
        match started {
            Ok(r) => running.push(r),
            Err(e) => {
                shutdown.cancel();
                for r in running {
                    let _ = r.wait().await;
                }
                return Err(e);
            }
        }
    }
    info!(programs = ?names, "shop is up");
    shutdown.cancelled().await;
    let results = futures::future::join_all(running.into_iter().map(|r| r.wait())).await;
    for r in results {
        r?;
    }
    Ok(())
}

async fn dlq_broker(config: &Config) -> anyhow::Result<Arc<Broker>> {
    Broker::connect(
        BrokerConfig::for_tools(config, "shop-tool", topology()),
        Arc::new(Metrics::new("dlq-tool")),
    )
    .await
}

async fn dlq_command(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let broker = dlq_broker(config).await?;
    let result = async {
        match command {
            DlqCommand::List { service, json } => {
                let letters = dlq::list(&broker, service.as_deref()).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&letters)?);
                } else {
                    println!(
                        "{:<14} {:<38} {:<26} {:>8} {:<25} reason",
                        "service", "id", "type", "attempts", "first death"
                    );
                    for l in &letters {
                        let at = l
                            .first_death_at
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into());
                        println!(
                            "{:<14} {:<38} {:<26} {:>8} {:<25} {}",
                            l.service, l.message_id, l.event_type, l.attempts, at, l.reason
                        );
                    }
                    println!("{} dead-lettered message(s)", letters.len());
                }
                Ok(())
            }
            DlqCommand::Show { id } => {
                let letters = dlq::list(&broker, None).await?;
                let l = letters
                    .into_iter()
                    .find(|l| l.message_id == id)
                    .with_context(|| format!("no dead letter with id {id}"))?;
                println!("{}", serde_json::to_string_pretty(&l)?);
                Ok(())
            }
            DlqCommand::Replay {
                service,
                id,
                all: _,
            } => {
                let n = dlq::replay(&broker, &service, id.as_deref()).await?;
                if id.is_some() && n == 0 {
                    anyhow::bail!("no dead letter with that id in {service}'s dead-letter queue");
                }
                println!("replayed {n} message(s) to {service}");
                Ok(())
            }
        }
    }
    .await;
    broker.close().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_one_line_with_each_cause_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        let e = anyhow::Error::new(io)
            .context("cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:5672/%2f: Connection refused (os error 111)")
            .context("starting orders");
        let line = one_line(&e);
        assert_eq!(line.matches("Connection refused").count(), 1, "{line}");
        assert!(
            line.starts_with("starting orders: cannot connect to RabbitMQ at amqp://guest:***@")
        );
        assert!(line.contains("check that the server runs there"), "{line}");
        let multi = anyhow::anyhow!("first line\n  second line\n\tthird");
        assert_eq!(one_line(&multi), "first line second line third");
    }

    #[test]
    fn a_program_bound_beyond_loopback_needs_a_real_key() {
        let mut c = Config::defaults();
        c.bind = "0.0.0.0".into();
        let e = with_assertion_keys(&mut c, KeyDefault::DevelopmentOnLoopback).unwrap_err();
        assert!(e.to_string().contains("SHOP_ASSERTION_KEYS"), "{e}");
        let mut c = Config::defaults();
        with_assertion_keys(&mut c, KeyDefault::DevelopmentOnLoopback).unwrap();
        assert_eq!(c.assertion_keys.as_deref(), Some(DEVELOPMENT_ASSERTION_KEY));
        let mut c = Config::defaults();
        c.bind = "0.0.0.0".into();
        with_assertion_keys(&mut c, KeyDefault::PerRun).unwrap();
        assert_ne!(c.assertion_keys.as_deref(), Some(DEVELOPMENT_ASSERTION_KEY));
        c.assertion_keys = Some("short".into());
        assert!(with_assertion_keys(&mut c, KeyDefault::PerRun).is_err());
    }

    #[test]
    fn global_options_are_grouped_in_a_subcommand_help() {
        use clap::CommandFactory as _;
        let mut cmd = Cli::command();
        cmd.build();
        let help = cmd
            .find_subcommand_mut("dlq")
            .and_then(|d| d.find_subcommand_mut("list"))
            .expect("shop dlq list")
            .render_long_help()
            .to_string();
        let own = help.find("--service").expect("its own option");
        let global = help
            .find("Servers, messaging and logs (every command)")
            .expect("the global options under their heading");
        assert!(own < global, "its own options come first:\n{help}");
        assert!(help.contains("SHOP_LOG"), "SHOP_LOG is documented");
    }
}
