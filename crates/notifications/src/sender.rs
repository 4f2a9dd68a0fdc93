//! How a notification leaves: by e-mail over SMTP ([`SmtpSender`], when `SHOP_SMTP_URL` is
//! set) or, by default, as a log line ([`LogSender`]). The [`Sender`] seam is what the
//! delivery worker ([`crate::delivery`]) calls; it never runs inside an event handler.

use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::{AsyncSmtpTransportBuilder, authentication::Credentials},
};
use tracing::info;
use uuid::Uuid;

/// One e-mail, ready to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email {
    pub notification_id: Uuid,
    pub kind: String,
    pub user_id: Uuid,
    pub order_id: Option<Uuid>,
    pub to_address: String,
    pub to_name: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Why a delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later: the server is away, slow, or said "not now" (4xx).
    #[error("{0}")]
    Transient(String),
    /// Never going to work for this message (a 5xx answer such as an unknown mailbox, or an
    /// address no server would take): recorded as refused with this reason.
    #[error("{0}")]
    Permanent(String),
}

/// Delivers a notification. A delivery may be repeated after a crash between sending and
/// recording it; the `Message-ID` ([`message_id`]) then lets the receiver see the repeat.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    async fn send(&self, email: &Email) -> Result<(), SendError>;
}

/// The `Message-ID` of a notification's e-mail: derived from its id only, so a resend is
/// recognisably the same message.
pub fn message_id(notification_id: Uuid, from: &Mailbox) -> String {
    format!("<{notification_id}@{}>", from.email.domain())
}

/// Writes one log line per notification: its id, kind, user and order, never its text or
/// the user's address.
pub struct LogSender;

#[async_trait]
impl Sender for LogSender {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        info!(
            notification_id = %email.notification_id,
            kind = %email.kind,
            user_id = %email.user_id,
            order_id = ?email.order_id,
            "notification sent (to the log: SHOP_SMTP_URL is not set)"
        );
        Ok(())
    }
}

/// Sends e-mail through an SMTP server (a pooled connection, a timeout per command).
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The most one delivery may take, whatever the server does (lettre's own timeout does
    /// not cover every step: a server silent after AUTH held a delivery forever).
    deadline: Duration,
}

/// The commands a delivery waits on, for its overall deadline: connecting and greeting, the
/// envelope, the data.
pub const STEPS: u32 = 3;

impl SmtpSender {
    /// A sender for `url` (`smtp://[user:password@]host[:port]`; `?tls=required`,
    /// `?tls=opportunistic` and `smtps://` with the `smtp-tls` feature), from `from`, giving
    /// each SMTP command at most `timeout`.
    pub fn new(url: &str, from: &str, timeout: Duration) -> anyhow::Result<SmtpSender> {
        let from: Mailbox = from
            .parse()
            .with_context(|| format!("SHOP_SMTP_FROM {from:?} is not an e-mail address"))?;
        let transport = transport(url)
            .with_context(|| {
                format!(
                    "SHOP_SMTP_URL {}: expected smtp://[user:password@]host[:port]",
                    shop_platform::config::redact_url(url)
                )
            })?
            .timeout(Some(timeout))
            .build();
        Ok(SmtpSender {
            transport,
            from,
            deadline: timeout * STEPS,
        })
    }

    /// The e-mail as it goes on the wire.
    pub fn message(&self, email: &Email) -> Result<lettre::Message, SendError> {
        let to = email
            .to_address
            .parse()
            .map(|address| Mailbox::new(Some(email.to_name.clone()), address))
            .map_err(|e| {
                SendError::Permanent(format!("not an address: {:?}: {e}", email.to_address))
            })?;
        lettre::Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(&email.subject)
            .message_id(Some(message_id(email.notification_id, &self.from)))
            .multipart(MultiPart::alternative_plain_html(
                email.text.clone(),
                email.html.clone(),
            ))
            .map_err(|e| SendError::Permanent(format!("cannot build the message: {e}")))
    }
}

/// The transport `url` names: plain SMTP here; TLS through lettre's own URL parser, which
/// exists only in a build with the `smtp-tls` feature.
fn transport(url: &str) -> anyhow::Result<AsyncSmtpTransportBuilder> {
    let parsed = url::Url::parse(url)?;
    let tls = parsed.scheme() == "smtps" || parsed.query_pairs().any(|(k, _)| k == "tls");
    if tls {
        #[cfg(feature = "smtp-tls")]
        return Ok(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?);
        #[cfg(not(feature = "smtp-tls"))]
        anyhow::bail!("TLS (smtps:// or ?tls=) needs a build with the smtp-tls feature");
    }
    anyhow::ensure!(parsed.scheme() == "smtp", "the scheme is smtp or smtps");
    let host = parsed.host_str().context("no host")?;
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
        .port(parsed.port().unwrap_or(25));
    if !parsed.username().is_empty() {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        builder = builder.credentials(Credentials::new(
            decode(parsed.username()),
            decode(parsed.password().unwrap_or_default()),
        ));
    }
    Ok(builder)
}

/// A 5xx about authentication (RFC 4954: 530 required, 534 mechanism too weak, 535
/// credentials invalid, 538 encryption required).
fn is_login_refused(e: &lettre::transport::smtp::Error) -> bool {
    e.status()
        .is_some_and(|code| matches!(u16::from(code), 530 | 534 | 535 | 538))
}

#[async_trait]
impl Sender for SmtpSender {
    async fn send(&self, email: &Email) -> Result<(), SendError> {
        let message = self.message(email)?;
        let sent = tokio::time::timeout(self.deadline, self.transport.send(message)).await;
        let Ok(sent) = sent else {
            return Err(SendError::Transient(format!(
                "the mail server did not finish within {} s",
                self.deadline.as_secs()
            )));
        };
        match sent {
            Ok(_) => Ok(()),
            // Refused logins say nothing about the message: the shop's own settings are
            // wrong, and the mail waits until they are fixed.
            Err(e) if is_login_refused(&e) => Err(SendError::Transient(format!(
                "the mail server refused the shop's login (check SHOP_SMTP_URL): {e}"
            ))),
            Err(e) if e.is_permanent() => Err(SendError::Permanent(format!("{e}"))),
            Err(e) => Err(SendError::Transient(format!("{e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(to: &str) -> Email {
        Email {
            notification_id: Uuid::now_v7(),
            kind: "welcome".into(),
            user_id: Uuid::now_v7(),
            order_id: None,
            to_address: to.into(),
            to_name: "Ada Lovelace".into(),
            subject: "Welcome to Shop".into(),
            text: "Hello Ada".into(),
            html: "<p>Hello Ada</p>".into(),
        }
    }

    fn sender(from: &str) -> SmtpSender {
        SmtpSender::new("smtp://127.0.0.1:2525", from, Duration::from_secs(1)).unwrap()
    }

    // The pooled transport lives on a Tokio runtime.
    #[tokio::test]
    async fn the_message_id_is_the_notification_s_and_both_parts_are_there() {
        let sender = sender("Shop <shop@shop.example>");
        let e = email("ada@example.com");
        let wire = String::from_utf8(sender.message(&e).unwrap().formatted()).unwrap();
        assert!(
            wire.contains(&format!("Message-ID: <{}@shop.example>", e.notification_id)),
            "{wire}"
        );
        assert!(
            wire.contains("To: \"Ada Lovelace\" <ada@example.com>"),
            "{wire}"
        );
        assert!(wire.contains("multipart/alternative"), "{wire}");
        assert!(
            wire.contains("text/plain") && wire.contains("text/html"),
            "{wire}"
        );
    }

    #[tokio::test]
    async fn a_bad_address_is_refused_for_good_and_bad_settings_are_named() {
        let sender = sender("shop@shop.example");
        assert!(matches!(
            sender.message(&email("not an address")),
            Err(SendError::Permanent(_))
        ));
        #[cfg(not(feature = "smtp-tls"))]
        {
            let err = SmtpSender::new("smtps://x", "a@b.c", Duration::from_secs(1))
                .err()
                .unwrap();
            assert!(format!("{err:#}").contains("smtp-tls feature"), "{err:#}");
        }
        let err = SmtpSender::new("http://x", "shop@shop.example", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("SHOP_SMTP_URL"), "{err:#}");
        let err = SmtpSender::new("smtp://x", "nobody", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("SHOP_SMTP_FROM"), "{err:#}");
    }
}
