//! E-mail under faults, through a real SMTP server (aiosmtpd) the harness starts: the mail
//! server stopped while orders flow, and the notifications service killed between delivering
//! a message and marking it sent. Every notification the audit sees sent arrived, none was
//! lost, and a resend carries the same `Message-ID`.

use std::{collections::BTreeMap, os::unix::process::ExitStatusExt as _, time::Duration};

use shop_platform::testkit::smtp::Smtpd;
use sqlx::{Connection as _, PgConnection};
use uuid::Uuid;

use crate::{
    cluster::free_port,
    harness::{Chaos, Expect},
};

const FROM: &str = "Shop <shop@chaos.test>";

/// A scenario with e-mail on, through `smtpd`.
async fn begin(name: &str, smtpd: &Smtpd) -> (tokio::sync::MutexGuard<'static, ()>, Chaos) {
    let url = smtpd.url();
    Chaos::begin(
        name,
        &[
            ("SHOP_SMTP_URL", url.as_str()),
            ("SHOP_SMTP_FROM", FROM),
            ("SHOP_SMTP_TIMEOUT_SECS", "2"),
        ],
    )
    .await
}

/// Lets the shop take orders again after the heal, then waits until it is quiet: the audit
/// clean (so no notification pending) and no dead letter.
async fn settle(c: &mut Chaos) {
    c.accepted_more(10, Duration::from_secs(60), "orders after the heal")
        .await;
    c.stop_trickle().await;
    c.wait_clean(Duration::from_secs(150)).await;
}

/// Holds what arrived to what the shop recorded: each sent notification arrived (at least
/// once), nothing arrived that no notification explains. Returns (messages received,
/// notifications sent, messages received more than once).
async fn check_mail(c: &mut Chaos, smtpd: &Smtpd) -> (usize, usize, usize) {
    let mut db = PgConnection::connect(&c.cluster.config.database_url)
        .await
        .unwrap();
    let sent: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM notifications.notifications WHERE status = 'sent'")
            .fetch_all(&mut db)
            .await
            .unwrap();
    let _ = db.close().await;
    let mail = smtpd.mail();
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for m in &mail {
        *by_id.entry(m.message_id.clone()).or_default() += 1;
    }
    for id in &sent {
        if by_id.remove(&format!("<{id}@chaos.test>")).is_none() {
            c.violation(format!(
                "notification {id} is marked sent and never arrived"
            ));
        }
    }
    for (message_id, n) in &by_id {
        c.violation(format!(
            "{n} messages {message_id} arrived that no sent notification explains"
        ));
    }
    let repeated = mail.len() - sent.len().min(mail.len());
    c.note(format!(
        "{} messages received for {} notifications sent ({repeated} repeats)",
        mail.len(),
        sent.len()
    ));
    (mail.len(), sent.len(), repeated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mail_server_stopped_while_orders_flow() {
    let mut smtpd = Smtpd::start(free_port()).await;
    let (_turn, mut c) = begin("mail server stopped for 15 orders", &smtpd).await;
    c.fault("the SMTP server stopped");
    smtpd.pause();
    c.accepted_more(
        15,
        Duration::from_secs(60),
        "orders while the mail server is away",
    )
    .await;
    let waiting = c.metric_sum("shop_notifications_pending").await;
    let failed = c.metric_sum("shop_notifications_retried_total").await;
    c.note(format!(
        "while it was away: {waiting} notifications waiting, {failed} failed attempts"
    ));
    if failed == 0 {
        c.violation("no delivery attempt failed while the mail server was away");
    }
    smtpd.resume().await;
    c.healed("the SMTP server started again");
    settle(&mut c).await;
    let (_, _, repeated) = check_mail(&mut c, &smtpd).await;
    if repeated > 0 {
        c.violation(format!(
            "{repeated} messages sent twice although nothing crashed"
        ));
    }
    c.finish(Expect::normal()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notifications_crash_after_sending_before_marking_sent() {
    let smtpd = Smtpd::start(free_port()).await;
    let point = "notifications.after_send:5";
    let (_turn, mut c) = begin(&format!("notifications crash point {point}"), &smtpd).await;
    c.fault(&format!(
        "notifications restarted with SHOP_CRASH_POINT={point}"
    ));
    c.cluster.kill("notifications");
    c.cluster
        .spawn_with("notifications", &[("SHOP_CRASH_POINT", point)]);
    let status = c
        .cluster
        .wait_exit("notifications", Duration::from_secs(90))
        .await;
    assert_eq!(
        status.signal(),
        Some(6),
        "aborted at the crash point ({status})"
    );
    c.note(format!("notifications aborted at {point} ({status})"));
    c.cluster.spawn("notifications");
    c.healed("notifications started again without the crash point");
    settle(&mut c).await;
    let (_, _, repeated) = check_mail(&mut c, &smtpd).await;
    if repeated == 0 {
        c.violation("the message delivered before the crash was not sent again");
    }
    c.finish(Expect::normal()).await;
}
