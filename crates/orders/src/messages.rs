//! Where the saga meets the bus, in both directions: incoming events of inventory and
//! payments become [`SagaEvent`]s ([`translate`]), and the saga's [`Command`]s become the
//! events orders publishes ([`command_event`]). [`CONSUMES`] is the list of types the first
//! one understands, and so what the orders queue is bound to.

use shop_platform::{
    Envelope, Event as _,
    bus::HandlerError,
    events::{
        OrderCancelled, OrderConfirmed, OrderCreated, OrderLine, PaymentFailed,
        PaymentRefundRequested, PaymentRefunded, PaymentRequested, PaymentSucceeded, StockRejected,
        StockReleaseRequested, StockReleased, StockReserved,
    },
};
use uuid::Uuid;

use crate::{
    saga::{Command, SagaEvent},
    store::SagaRow,
};

/// The event types orders consumes: exactly those [`translate`] turns into saga events.
pub const CONSUMES: &[&str] = &[
    StockReserved::TYPE,
    StockRejected::TYPE,
    StockReleased::TYPE,
    PaymentSucceeded::TYPE,
    PaymentFailed::TYPE,
    PaymentRefunded::TYPE,
];

/// The event types orders publishes: the order's creation and every command's event.
pub const PUBLISHES: &[&str] = &[
    OrderCreated::TYPE,
    PaymentRequested::TYPE,
    StockReleaseRequested::TYPE,
    PaymentRefundRequested::TYPE,
    OrderConfirmed::TYPE,
    OrderCancelled::TYPE,
];

/// The order an event is about, and what it means to the saga.
pub fn translate(event: &Envelope) -> Result<(Uuid, SagaEvent), HandlerError> {
    Ok(match event.event_type.as_str() {
        StockReserved::TYPE => (
            event.decode::<StockReserved>()?.order_id,
            SagaEvent::StockReserved,
        ),
        StockRejected::TYPE => (
            event.decode::<StockRejected>()?.order_id,
            SagaEvent::StockRejected,
        ),
        StockReleased::TYPE => (
            event.decode::<StockReleased>()?.order_id,
            SagaEvent::StockReleased,
        ),
        PaymentSucceeded::TYPE => {
            let p = event.decode::<PaymentSucceeded>()?;
            (
                p.order_id,
                SagaEvent::PaymentSucceeded {
                    payment_id: p.payment_id,
                },
            )
        }
        PaymentFailed::TYPE => (
            event.decode::<PaymentFailed>()?.order_id,
            SagaEvent::PaymentFailed,
        ),
        PaymentRefunded::TYPE => (
            event.decode::<PaymentRefunded>()?.order_id,
            SagaEvent::PaymentRefunded,
        ),
        other => {
            return Err(HandlerError::Permanent(format!(
                "orders does not handle {other}"
            )));
        }
    })
}

/// The event a saga command publishes.
pub(crate) fn command_event(
    row: &SagaRow,
    command: &Command,
    cause: Option<&Envelope>,
    items: &[OrderLine],
) -> Envelope {
    let id = row.id;
    macro_rules! emit {
        ($payload:expr) => {
            match cause {
                Some(c) => c.caused(id, &$payload),
                None => Envelope::new(id, &$payload, row.correlation_id, row.correlation_id),
            }
        };
    }
    match command {
        Command::RequestPayment => emit!(PaymentRequested {
            order_id: id,
            user_id: row.user_id,
            amount_cents: row.total_cents,
            currency: row.currency.clone(),
            payment_token: row.payment_token.clone(),
        }),
        Command::ReleaseStock => emit!(StockReleaseRequested { order_id: id }),
        Command::RequestRefund { payment_id } => emit!(PaymentRefundRequested {
            order_id: id,
            payment_id: *payment_id
        }),
        Command::Confirm => emit!(OrderConfirmed {
            order_id: id,
            user_id: row.user_id,
            total_cents: row.total_cents,
            currency: row.currency.clone(),
            items: items.to_vec()
        }),
        Command::Cancel(reason) => {
            emit!(OrderCancelled {
                order_id: id,
                user_id: row.user_id,
                reason: reason.as_str().to_string()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::CancelReason;

    fn row() -> SagaRow {
        SagaRow {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            total_cents: 1200,
            currency: "EUR".into(),
            payment_token: "tok_visa".into(),
            correlation_id: Uuid::now_v7(),
            version: 1,
            state: crate::saga::SagaState::new(),
            created_at: chrono::Utc::now(),
            trace_context: None,
        }
    }

    #[test]
    fn every_consumed_type_translates_and_nothing_else_does() {
        for e in shop_platform::events::samples() {
            let translated = translate(&e);
            if CONSUMES.contains(&e.event_type.as_str()) {
                assert!(translated.is_ok(), "{} translates", e.event_type);
            } else {
                assert!(
                    matches!(translated, Err(HandlerError::Permanent(_))),
                    "{} is refused",
                    e.event_type
                );
            }
        }
    }

    #[test]
    fn each_command_publishes_its_event() {
        let r = row();
        let p = Uuid::now_v7();
        for (command, expected) in [
            (Command::RequestPayment, PaymentRequested::TYPE),
            (Command::ReleaseStock, StockReleaseRequested::TYPE),
            (
                Command::RequestRefund { payment_id: p },
                PaymentRefundRequested::TYPE,
            ),
            (Command::Confirm, OrderConfirmed::TYPE),
            (Command::Cancel(CancelReason::Timeout), OrderCancelled::TYPE),
        ] {
            let e = command_event(&r, &command, None, &[]);
            assert_eq!(e.event_type, expected);
            assert!(PUBLISHES.contains(&expected));
            assert_eq!(e.aggregate_id, r.id);
            assert_eq!(e.correlation_id, r.correlation_id);
        }
    }
}
