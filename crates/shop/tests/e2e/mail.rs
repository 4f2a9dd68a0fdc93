//! E-mail end to end: every program as its own process, the notifications service sending
//! through a real SMTP server (aiosmtpd). A confirmed, a declined and an out-of-stock order
//! each deliver exactly one message, to the customer's address, saying what happened.

use std::time::Duration;

use reqwest::StatusCode;
use shop::client::NewProduct;
use shop_platform::testkit::{WAIT, smtp::Smtpd};
use uuid::Uuid;

use crate::cluster::{Cluster, free_port};

#[tokio::test]
async fn each_order_outcome_is_mailed_once_to_its_customer() {
    let smtpd = Smtpd::start(free_port()).await;
    let url = smtpd.url();
    let c = Cluster::start(&[
        ("SHOP_SMTP_URL", url.as_str()),
        ("SHOP_SMTP_FROM", "Shop <orders@shop.test>"),
    ])
    .await;
    let admin = c.admin().await;
    let api = c.api();
    let sku = format!("MUG-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let created = api
        .create_product(
            &admin,
            &NewProduct {
                sku: &sku,
                name: "Blue <Mug>",
                description: "Holds tea",
                price_cents: 1_250,
                initial_stock: 3,
            },
        )
        .await
        .unwrap();
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let mug = created.id().unwrap();
    let scarce = c.product(&admin, 500, 1).await;
    shop_platform::testkit::eventually("inventory knows the mug", WAIT, || async {
        api.stock(mug).await.unwrap().status == StatusCode::OK
    })
    .await;

    let email = format!(
        "ada{}@example.com",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let (s, body) = c.register(&email, "correct-horse-battery").await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let token = c.login(&email, "correct-horse-battery").await;

    let mut ids = Vec::new();
    for (items, payment) in [
        (vec![(mug, 2)], "tok_visa"),
        (vec![(mug, 1)], "tok_decline"),
        (vec![(scarce, 2)], "tok_visa"),
    ] {
        let order = c.order(&token, &items, payment).await;
        let id = order["id"].as_str().unwrap().to_string();
        c.settled(&token, &id, Duration::from_secs(30)).await;
        ids.push(id);
    }

    // The administrator's welcome (created at start-up), the customer's, and one message
    // per order.
    smtpd.wait_mail(5, WAIT).await;
    let report = c.audit_clean().await;
    assert_eq!(report.notifications_sent, 5, "{}", report.table());
    let all = smtpd.mail();
    assert_eq!(all.len(), 5, "nothing more arrived: {all:?}");
    let mail: Vec<_> = all.iter().filter(|m| m.to == email).cloned().collect();
    assert_eq!(mail.len(), 4, "{all:?}");
    let about = |id: &str| {
        let found: Vec<_> = mail.iter().filter(|m| m.text.contains(id)).collect();
        assert_eq!(found.len(), 1, "exactly one message about {id}: {mail:?}");
        found[0].clone()
    };
    let confirmed = about(&ids[0]);
    assert_eq!(confirmed.subject, "Your order is confirmed");
    assert!(
        confirmed
            .text
            .contains("2 x Blue <Mug> at EUR 12.50 = EUR 25.00")
            && confirmed.text.contains("Total: EUR 25.00 charged."),
        "{}",
        confirmed.text
    );
    assert!(
        confirmed.html.contains("<td>Blue &lt;Mug&gt;</td>"),
        "escaped in HTML: {}",
        confirmed.html
    );
    let declined = about(&ids[1]);
    assert_eq!(declined.subject, "Your order was cancelled");
    assert!(
        declined.text.contains("the payment was declined"),
        "{}",
        declined.text
    );
    let out_of_stock = about(&ids[2]);
    assert!(
        out_of_stock.text.contains("some items are out of stock"),
        "{}",
        out_of_stock.text
    );
    assert!(
        mail.iter().all(|m| m.message_id.ends_with("@shop.test>")),
        "{mail:?}"
    );
    let welcome: Vec<_> = mail
        .iter()
        .filter(|m| m.subject == "Welcome to Shop")
        .collect();
    assert_eq!(welcome.len(), 1);
}
