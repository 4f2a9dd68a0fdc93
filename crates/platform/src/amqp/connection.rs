//! The self-healing connection: a [`Broker`] owns one connection and a confirm-mode
//! publishing channel; its supervisor reconnects with backoff, declares the topology again
//! and hands the new connection to every consumer.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use futures::StreamExt as _;
use lapin::{
    Channel, Connection, ConnectionProperties, Event as LapinEvent, options::ConfirmSelectOptions,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{BrokerConfig, declare::declare_topology};
use crate::{config::redact_url, metrics::Metrics, topology::Names};

pub(super) struct Live {
    pub(super) conn: Connection,
    pub(super) publish: Channel,
}

/// A self-healing connection to RabbitMQ.
pub struct Broker {
    pub(super) cfg: BrokerConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) live: watch::Sender<Option<Arc<Live>>>,
    closed: CancellationToken,
    /// Asks the supervisor to drop the current connection and build a new one.
    pub(super) broken: tokio::sync::Notify,
}

impl Broker {
    /// Connects (failing with a one-line error naming the URL if the broker cannot be
    /// reached), declares the topology, and starts the supervisor that reconnects.
    pub async fn connect(cfg: BrokerConfig, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Broker>> {
        let (live, _) = connect_any(&cfg).await?;
        let (tx, _) = watch::channel(Some(Arc::new(live)));
        let broker = Arc::new(Broker {
            cfg,
            metrics,
            live: tx,
            closed: CancellationToken::new(),
            broken: tokio::sync::Notify::new(),
        });
        tokio::spawn(broker.clone().supervise());
        Ok(broker)
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.cfg
    }

    pub fn names(&self) -> &Names {
        &self.cfg.names
    }

    /// Whether a connection with a usable publishing channel is up.
    pub fn is_connected(&self) -> bool {
        self.live
            .borrow()
            .as_ref()
            .is_some_and(|l| l.conn.status().connected() && l.publish.status().connected())
    }

    /// Waits until the broker is connected, or the timeout passes.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.live.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if self.is_connected() {
                    return;
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await
        .is_ok()
    }

    /// A new channel on the current connection (for tools such as `shop dlq`).
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let live = self
            .current()
            .ok_or_else(|| anyhow::anyhow!("the broker is unavailable"))?;
        Ok(live.conn.create_channel().await?)
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        self.closed.cancel();
        let live = self.live.send_replace(None);
        if let Some(live) = live {
            let _ = live.conn.close(200, "shutdown".into()).await;
        }
    }

    pub(super) fn current(&self) -> Option<Arc<Live>> {
        self.live.borrow().clone()
    }

    async fn supervise(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if let Some(live) = self.current() {
                let mut events = live.conn.events_listener();
                let mut check = tokio::time::interval(Duration::from_millis(500));
                let mut probe = tokio::time::interval(PROBE_EVERY);
                loop {
                    tokio::select! {
                        _ = probe.tick() => {
                            // A link that drops packets leaves the connection "open" and
                            // silent: a round trip that does not come back in time means it
                            // is gone (TCP would take minutes to say so).
                            if !probe_answers(&live.publish).await {
                                warn!(timeout_ms = PROBE_TIMEOUT.as_millis() as u64, "RabbitMQ did not answer in time; reconnecting");
                                break;
                            }
                        }
                        _ = self.closed.cancelled() => return,
                        _ = self.broken.notified() => break,
                        ev = events.next() => match ev {
                            // A channel's error (a tool's passive declare of a missing
                            // queue, say) is reported here too: only a broken connection
                            // or publishing channel is a reason to reconnect (the tick
                            // below also catches one that breaks a moment later).
                            Some(LapinEvent::Error(e)) if live.conn.status().connected() && live.publish.status().connected() => {
                                debug!(error = %e, "a channel closed; the connection stays");
                            }
                            Some(LapinEvent::Error(e)) => { warn!(error = %e, "RabbitMQ connection lost"); break }
                            Some(LapinEvent::ConnectionBlocked(r)) => warn!(reason = %r, "RabbitMQ blocked publishing (resource alarm)"),
                            Some(LapinEvent::ConnectionUnblocked) => info!("RabbitMQ unblocked publishing"),
                            Some(_) => {}
                            None => break,
                        },
                        _ = check.tick() => {
                            if !(live.conn.status().connected() && live.publish.status().connected()) {
                                warn!("RabbitMQ connection or publishing channel closed");
                                break;
                            }
                        }
                    }
                }
                self.live.send_replace(None);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    live.conn.close(320, "reconnecting".into()),
                )
                .await;
            }
            // Reconnect with growing delays until it works or we are closed.
            loop {
                if self.closed.is_cancelled() {
                    return;
                }
                match connect_any(&self.cfg).await {
                    Ok((live, url)) => {
                        info!(url = %redact_url(url), "RabbitMQ connected; topology declared");
                        self.live.send_replace(Some(Arc::new(live)));
                        backoff = Duration::from_millis(100);
                        break;
                    }
                    Err(e) => {
                        debug!(error = %format!("{e:#}"), "RabbitMQ still unavailable");
                        tokio::select! {
                            _ = self.closed.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }
}

/// How often the supervisor makes a round trip on its connection, and how long it waits
/// for the answer: a silent link is noticed within their sum (10 s).
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the broker answers a round trip on `channel` in time (a `basic.qos`: no effect on
/// a channel that publishes only).
async fn probe_answers(channel: &Channel) -> bool {
    use lapin::options::BasicQosOptions;
    matches!(
        tokio::time::timeout(
            PROBE_TIMEOUT,
            channel.basic_qos(0, BasicQosOptions::default())
        )
        .await,
        Ok(Ok(()))
    )
}

/// Connects to one of the configured nodes, trying them in a shuffled order (so that the
/// programs of a deployment spread over a cluster's nodes, and a lost node's clients move to
/// the others); returns the connection and the URL it used. The error names every node.
async fn connect_any(cfg: &BrokerConfig) -> anyhow::Result<(Live, &str)> {
    use rand::seq::SliceRandom as _;
    let mut order: Vec<&str> = cfg.urls.iter().map(String::as_str).collect();
    order.shuffle(&mut rand::rng());
    let mut errors = Vec::new();
    for url in order {
        match connect_live(cfg, url).await {
            Ok(live) => return Ok((live, url)),
            Err(e) => {
                debug!(url = %redact_url(url), error = %format!("{e:#}"), "RabbitMQ node unavailable");
                errors.push(format!("{}: {e:#}", redact_url(url)));
            }
        }
    }
    match errors.len() {
        0 => anyhow::bail!("no RabbitMQ URL configured (SHOP_AMQP_URL)"),
        1 => Err(anyhow::anyhow!(
            "cannot connect to RabbitMQ at {}",
            errors[0]
        )),
        _ => Err(anyhow::anyhow!(
            "cannot connect to any RabbitMQ node: {}",
            errors.join("; ")
        )),
    }
}

/// How long one node may take to accept a connection before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

async fn connect_live(cfg: &BrokerConfig, url: &str) -> anyhow::Result<Live> {
    let props =
        ConnectionProperties::default().with_connection_name(cfg.connection_name.clone().into());
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, props))
        .await
        .context("timed out")??;
    if cfg.declare_topology {
        let setup = conn.create_channel().await?;
        declare_topology(&setup, cfg).await?;
        let _ = setup.close(200, "topology declared".into()).await;
    }
    let publish = conn.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(Live { conn, publish })
}
