//! What the user is told, free of I/O: one message per fact (welcome, order confirmed,
//! order cancelled, payment refunded), with cancel reasons in words, each as a subject, a
//! text part and an HTML part rendered from the templates in `templates/` (the HTML one
//! escaped: a product called `<b>` stays text).

use std::{fmt, sync::LazyLock};

use minijinja::{Environment, value::Value};
use serde::Serialize;
use shop_platform::events::OrderLine;
use uuid::Uuid;

/// The kinds of notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Welcome,
    OrderConfirmed,
    OrderCancelled,
    PaymentRefunded,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Welcome => "welcome",
            Kind::OrderConfirmed => "order_confirmed",
            Kind::OrderCancelled => "order_cancelled",
            Kind::PaymentRefunded => "payment_refunded",
        }
    }

    /// The kinds that tell an order's outcome: exactly one of them per terminal order.
    pub const ORDER_OUTCOMES: [Kind; 2] = [Kind::OrderConfirmed, Kind::OrderCancelled];

    fn subject(self) -> &'static str {
        match self {
            Kind::Welcome => "Welcome to Shop",
            Kind::OrderConfirmed => "Your order is confirmed",
            Kind::OrderCancelled => "Your order was cancelled",
            Kind::PaymentRefunded => "Your money was returned",
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
    /// The plain-text part.
    pub body: String,
    /// The HTML part.
    pub html: String,
}

/// Every template, embedded at build time: `<kind>.txt` and `<kind>.html` per kind, and the
/// HTML layout they extend.
static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    macro_rules! add {
        ($($name:literal),*) => {
            $(env
                .add_template($name, include_str!(concat!("../templates/", $name)))
                .expect(concat!("template ", $name, " parses"));)*
        };
    }
    add!(
        "layout.html",
        "welcome.txt",
        "welcome.html",
        "order_confirmed.txt",
        "order_confirmed.html",
        "order_cancelled.txt",
        "order_cancelled.html",
        "payment_refunded.txt",
        "payment_refunded.html"
    );
    env
});

/// The message of `kind` with the template context `ctx`.
fn message<C: Serialize>(kind: Kind, user_id: Uuid, order_id: Option<Uuid>, ctx: C) -> Message {
    let subject = kind.subject();
    let ctx = minijinja::context! { subject, ..Value::from(minijinja::value::Serde(&ctx)) };
    let render = |ext: &str| {
        TEMPLATES
            .get_template(&format!("{kind}.{ext}"))
            .and_then(|t| t.render(&ctx))
            // The templates are fixed and checked by the tests below: a failure is a bug.
            .unwrap_or_else(|e| panic!("template {kind}.{ext}: {e:#}"))
    };
    Message {
        kind,
        user_id,
        order_id,
        subject: subject.into(),
        body: render("txt").trim().to_string() + "\n",
        html: render("html"),
    }
}

pub fn welcome(user_id: Uuid, name: &str) -> Message {
    #[derive(Serialize)]
    struct Ctx<'a> {
        name: &'a str,
    }
    message(Kind::Welcome, user_id, None, Ctx { name })
}

pub fn order_confirmed(
    user_id: Uuid,
    order_id: Uuid,
    lines: &[OrderLine],
    total_cents: i64,
    currency: &str,
) -> Message {
    #[derive(Serialize)]
    struct Line<'a> {
        name: &'a str,
        quantity: i32,
        unit_price: String,
        total: String,
    }
    #[derive(Serialize)]
    struct Ctx<'a> {
        order_id: Uuid,
        lines: Vec<Line<'a>>,
        total: String,
        currency: &'a str,
    }
    let lines = lines
        .iter()
        .map(|l| Line {
            name: if l.name.is_empty() {
                "item"
            } else {
                l.name.as_str()
            },
            quantity: l.quantity,
            unit_price: amount(l.unit_price_cents),
            total: amount(l.unit_price_cents.saturating_mul(i64::from(l.quantity))),
        })
        .collect();
    let ctx = Ctx {
        order_id,
        lines,
        total: amount(total_cents),
        currency,
    };
    message(Kind::OrderConfirmed, user_id, Some(order_id), ctx)
}

pub fn order_cancelled(user_id: Uuid, order_id: Uuid, reason: &str) -> Message {
    #[derive(Serialize)]
    struct Ctx {
        order_id: Uuid,
        reason: &'static str,
    }
    let reason = reason_in_words(reason);
    message(
        Kind::OrderCancelled,
        user_id,
        Some(order_id),
        Ctx { order_id, reason },
    )
}

pub fn payment_refunded(
    user_id: Uuid,
    order_id: Uuid,
    amount_cents: i64,
    currency: &str,
) -> Message {
    #[derive(Serialize)]
    struct Ctx<'a> {
        order_id: Uuid,
        amount: String,
        currency: &'a str,
    }
    let ctx = Ctx {
        order_id,
        amount: amount(amount_cents),
        currency,
    };
    message(Kind::PaymentRefunded, user_id, Some(order_id), ctx)
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

    fn line(name: &str, quantity: i32, unit_price_cents: i64) -> OrderLine {
        OrderLine {
            product_id: Uuid::now_v7(),
            name: name.into(),
            quantity,
            unit_price_cents,
        }
    }

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
            for part in [&m.body, &m.html] {
                assert!(part.contains(words), "{code}: {part}");
                assert!(
                    !part.contains(code),
                    "no codes in a customer's message: {part}"
                );
            }
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
    fn a_confirmation_lists_lines_quantities_prices_and_the_total() {
        let (u, o) = (Uuid::now_v7(), Uuid::now_v7());
        let lines = [line("Mug", 2, 1_250), line("Tea", 1, 1_750)];
        let m = order_confirmed(u, o, &lines, 4_250, "EUR");
        assert_eq!(m.subject, "Your order is confirmed");
        for text in [
            o.to_string().as_str(),
            "  2 x Mug at EUR 12.50 = EUR 25.00\n",
            "  1 x Tea at EUR 17.50 = EUR 17.50\n",
            "Total: EUR 42.50 charged.",
        ] {
            assert!(m.body.contains(text), "{text}: {}", m.body);
        }
        for html in [
            "<td>Mug</td><td align=\"right\">2</td>",
            "EUR 42.50",
            "<title>Your order is confirmed</title>",
        ] {
            assert!(m.html.contains(html), "{html}: {}", m.html);
        }
        assert!(m.html.starts_with("<!DOCTYPE html>"), "{}", m.html);
    }

    #[test]
    fn the_html_part_escapes_what_came_from_users() {
        let (u, o) = (Uuid::now_v7(), Uuid::now_v7());
        let m = order_confirmed(u, o, &[line("<b>Mug</b> & \"Tea\"", 1, 100)], 100, "EUR");
        assert!(
            m.html
                .contains("&lt;b&gt;Mug&lt;&#x2f;b&gt; &amp; &quot;Tea&quot;"),
            "{}",
            m.html
        );
        assert!(!m.html.contains("<b>Mug"), "{}", m.html);
        assert!(
            m.body.contains("<b>Mug</b> & \"Tea\""),
            "the text part is text"
        );
        let w = welcome(u, "<script>alert(1)</script>");
        assert!(!w.html.contains("<script>"), "{}", w.html);
        assert!(w.body.contains("Hello <script>alert(1)</script>,"));
    }

    #[test]
    fn messages_carry_their_facts() {
        let (u, o) = (Uuid::now_v7(), Uuid::now_v7());
        let w = welcome(u, "Ada");
        assert_eq!((w.kind.as_str(), w.order_id), ("welcome", None));
        assert!(w.body.contains("Ada") && w.html.contains("Ada"));
        let r = payment_refunded(u, o, 1_999, "USD");
        assert_eq!((r.kind, r.order_id), (Kind::PaymentRefunded, Some(o)));
        assert!(
            r.body.contains("USD 19.99") && r.body.contains("returned to you"),
            "{}",
            r.body
        );
        // An order from before lines were carried still reads well.
        let m = order_confirmed(u, o, &[], 100, "EUR");
        assert!(m.body.contains("Total: EUR 1.00 charged."), "{}", m.body);
        assert!(!m.html.contains("<table"), "{}", m.html);
    }
}
