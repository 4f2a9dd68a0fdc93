//! What the user is told, free of I/O: one message per fact (welcome, order confirmed,
//! order cancelled), with cancel reasons in words.

use std::fmt;

use uuid::Uuid;

/// The kinds of notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    OrderConfirmed,
    OrderCancelled,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Welcome => "welcome",
            Kind::OrderConfirmed => "order_confirmed",
            Kind::OrderCancelled => "order_cancelled",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message to send, before it is recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub user_id: Uuid,
    pub order_id: Option<Uuid>,
    pub subject: String,
    pub body: String,
}

pub fn welcome(user_id: Uuid, name: &str) -> Message {
    Message {
        kind: Kind::Welcome,
        user_id,
        order_id: None,
        subject: "Welcome to Shop".into(),
        body: format!("Hello {name}, your account is ready. Happy shopping!"),
    }
}

pub fn order_confirmed(user_id: Uuid, order_id: Uuid, total_cents: i64, currency: &str) -> Message {
    Message {
        kind: Kind::OrderConfirmed,
        user_id,
        order_id: Some(order_id),
        subject: "Your order is confirmed".into(),
        body: format!(
            "Thank you! Your order {order_id} is confirmed and paid ({currency} {} charged).",
            amount(total_cents)
        ),
    }
}

pub fn order_cancelled(user_id: Uuid, order_id: Uuid, reason: &str) -> Message {
    Message {
        kind: Kind::OrderCancelled,
        user_id,
        order_id: Some(order_id),
        subject: "Your order was cancelled".into(),
        body: format!(
            "We are sorry: your order {order_id} was cancelled because {}. \
             If any money was taken, it is refunded.",
            reason_in_words(reason)
        ),
    }
}

/// A cancel reason as a customer reads it.
pub fn reason_in_words(reason: &str) -> &'static str {
    match reason {
        "out_of_stock" => "some items are out of stock",
        "payment_failed" => "the payment was declined",
        "timeout" => "it could not be completed in time",
        _ => "it could not be completed",
    }
}

/// Cents as a decimal amount: 1234 -> "12.34".
pub fn amount(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_told_in_words() {
        let (u, o) = (Uuid::now_v7(), Uuid::now_v7());
        for (code, words) in [
            ("out_of_stock", "some items are out of stock"),
            ("payment_failed", "the payment was declined"),
            ("timeout", "could not be completed in time"),
            ("something_new", "could not be completed"),
        ] {
            let m = order_cancelled(u, o, code);
            assert!(m.body.contains(words), "{code}: {}", m.body);
            assert!(
                !m.body.contains(code),
                "no codes in a customer's message: {}",
                m.body
            );
            assert_eq!((m.kind, m.order_id), (Kind::OrderCancelled, Some(o)));
        }
    }

    #[test]
    fn amounts_are_decimal() {
        assert_eq!(amount(1234), "12.34");
        assert_eq!(amount(5), "0.05");
        assert_eq!(amount(0), "0.00");
        assert_eq!(amount(-150), "-1.50");
        assert_eq!(amount(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn messages_carry_their_facts() {
        let (u, o) = (Uuid::now_v7(), Uuid::now_v7());
        let m = order_confirmed(u, o, 4_250, "EUR");
        assert!(
            m.body.contains(&o.to_string()) && m.body.contains("42.50"),
            "{}",
            m.body
        );
        let w = welcome(u, "Ada");
        assert_eq!((w.kind.as_str(), w.order_id), ("welcome", None));
        assert!(w.body.contains("Ada"));
    }
}
