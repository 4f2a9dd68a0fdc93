//! The order saga as a pure state machine.
//!
//! orders is the orchestrator of the saga described in docs/architecture.md ("The order saga"):
//!
//! ```text
//! PENDING --stock.reserved--> AWAITING_PAYMENT --payment.succeeded--> CONFIRMED
//!    |                              |
//!    | stock.rejected               | payment.failed / deadline
//!    v                              v
//! CANCELLED <--stock.released-- COMPENSATING <--deadline-- PENDING
//! ```
//!
//! This module holds no I/O and no clock. The I/O code loads the persisted [`SagaState`] of
//! an order, turns the incoming message (or an expired deadline) into a [`SagaEvent`], calls
//! [`decide`], and then, in ONE database transaction (with the inbox row of the event):
//!
//! * if [`Transition::changed`] is `false`, changes nothing (the event was stale, a duplicate
//!   or out of order) and just acks;
//! * otherwise stores [`Transition::state`], writes one outbox row per [`Command`] (see
//!   [`Command::event_type`]), and re-arms the order's deadline for [`Transition::deadline`]
//!   (or clears it when `None`).
//!
//! On creation an order gets the deadline [`pending_wait`]`(&SagaState::new())`, which is
//! `Some(Wait::Reservation)`.
//!
//! # Invariants kept by [`decide`] (checked by the tests below)
//!
//! * Status never moves backwards: `Pending < AwaitingPayment < Compensating | Confirmed <
//!   Cancelled`, and `Confirmed` is terminal (its status never changes).
//! * Commands are only emitted by transitions with `changed == true`; an ignored event returns
//!   the state unchanged, no commands and `deadline == pending_wait(state)`.
//! * `Transition::deadline == pending_wait(&transition.state)` for every transition, so every
//!   non-terminal order (and every cancelled order with an outstanding refund) always has a
//!   deadline: no order is left waiting forever.
//! * At most one `RequestPayment`, at most one of `Confirm` / `Cancel`, and each at most once.
//! * Money is never kept by a non-confirmed order: every captured payment that did not confirm
//!   the order is refunded.
//! * `payment_id`, once set, is never overwritten; `refund_requested` and `refunded` never go
//!   back to `false`; `cancel_reason`, once set, never changes.
//!
//! # Payment ids and the single refund slot
//!
//! A payment is unique per order (the payments service answers a repeated request with its
//! first result), so an order normally sees at most one payment id. [`SagaState`] therefore
//! tracks one payment: the one that confirmed the order, or the first one that must be
//! refunded (whose refund is retried on deadlines until `payment.refunded`). Should a second,
//! different payment id ever show up, it is refunded at once with a one-off
//! [`Command::RequestRefund`] that is not tracked (no retry; payments must treat refund
//! requests idempotently per payment id). `payment.refunded` carries no payment id, so it
//! always settles the tracked refund.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Order status and cancel reason
// ---------------------------------------------------------------------------------------------

/// Status of an order, as stored and as shown in the public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    /// Created; waiting for inventory to reserve the lines.
    Pending,
    /// Stock reserved; waiting for the payment.
    AwaitingPayment,
    /// Paid: terminal.
    Confirmed,
    /// Being cancelled: waiting for inventory to release the stock.
    Compensating,
    /// Cancelled: terminal (a late payment may still be refunded).
    Cancelled,
}

impl OrderStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::AwaitingPayment,
        OrderStatus::Confirmed,
        OrderStatus::Compensating,
        OrderStatus::Cancelled,
    ];

    /// The stored / public spelling: `"PENDING"`, `"AWAITING_PAYMENT"`, `"CONFIRMED"`,
    /// `"COMPENSATING"`, `"CANCELLED"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::AwaitingPayment => "AWAITING_PAYMENT",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Compensating => "COMPENSATING",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    /// `Confirmed` or `Cancelled`: the status will never change again.
    pub fn is_terminal(&self) -> bool {
        matches!(self, OrderStatus::Confirmed | OrderStatus::Cancelled)
    }
}

/// A string that is not one of [`OrderStatus::as_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown order status {0:?}")]
pub struct UnknownOrderStatus(pub String);

shop_platform::named_variants!(OrderStatus, UnknownOrderStatus, |s: &str| {
    UnknownOrderStatus(s.to_owned())
});

/// Why an order was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// Inventory could not reserve every line.
    OutOfStock,
    /// The payment was declined.
    PaymentFailed,
    /// A deadline passed while waiting for inventory or payments.
    Timeout,
}

impl CancelReason {
    /// Every reason.
    pub const ALL: [CancelReason; 3] = [
        CancelReason::OutOfStock,
        CancelReason::PaymentFailed,
        CancelReason::Timeout,
    ];

    /// The stored / public spelling: `"out_of_stock"`, `"payment_failed"`, `"timeout"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CancelReason::OutOfStock => "out_of_stock",
            CancelReason::PaymentFailed => "payment_failed",
            CancelReason::Timeout => "timeout",
        }
    }

    /// Human words for messages to the user, e.g. "your order was cancelled because
    /// {describe}".
    pub fn describe(&self) -> &'static str {
        match self {
            CancelReason::OutOfStock => "an item was out of stock",
            CancelReason::PaymentFailed => "the payment was declined",
            CancelReason::Timeout => "the order could not be completed in time",
        }
    }
}

/// A string that is not one of [`CancelReason::as_str`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown cancel reason {0:?}")]
pub struct UnknownCancelReason(pub String);

shop_platform::named_variants!(CancelReason, UnknownCancelReason, |s: &str| {
    UnknownCancelReason(s.to_owned())
});

// ---------------------------------------------------------------------------------------------
// State, events, commands
// ---------------------------------------------------------------------------------------------

/// The persisted saga state of one order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaState {
    pub status: OrderStatus,
    /// Set when compensation or cancellation starts; never changed afterwards.
    pub cancel_reason: Option<CancelReason>,
    /// We know inventory holds a reservation for this order (cleared once released).
    pub stock_reserved: bool,
    /// The captured payment we know of: the one that confirmed the order, or the one being
    /// refunded. Never overwritten once set.
    pub payment_id: Option<Uuid>,
    /// A refund of `payment_id` has been asked for (awaiting `payment.refunded`).
    pub refund_requested: bool,
    /// `payment.refunded` arrived for the refund of `payment_id`.
    pub refunded: bool,
}

impl SagaState {
    /// A freshly placed order: `Pending`, nothing reserved, paid or refunded.
    pub fn new() -> Self {
        SagaState {
            status: OrderStatus::Pending,
            cancel_reason: None,
            stock_reserved: false,
            payment_id: None,
            refund_requested: false,
            refunded: false,
        }
    }

    /// The payment whose refund was requested and not yet confirmed, if any.
    fn outstanding_refund(&self) -> Option<Uuid> {
        if self.refund_requested && !self.refunded {
            self.payment_id
        } else {
            None
        }
    }
}

impl Default for SagaState {
    fn default() -> Self {
        SagaState::new()
    }
}

/// What happened to an order: a message from another service, or its deadline expiring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SagaEvent {
    /// `stock.reserved`
    StockReserved,
    /// `stock.rejected`
    StockRejected,
    /// `stock.released`
    StockReleased,
    /// `payment.succeeded`
    PaymentSucceeded { payment_id: Uuid },
    /// `payment.failed`
    PaymentFailed,
    /// `payment.refunded`
    PaymentRefunded,
    /// The deadline of the current waiting state expired.
    DeadlinePassed,
}

/// An event for the orders service to publish (through its outbox).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Publish `payment.requested`.
    RequestPayment,
    /// Publish `stock.release_requested`.
    ReleaseStock,
    /// Publish `payment.refund_requested`.
    RequestRefund { payment_id: Uuid },
    /// Publish `order.confirmed`.
    Confirm,
    /// Publish `order.cancelled`.
    Cancel(CancelReason),
}

/// What another service is being waited on; each kind has its own deadline duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Inventory to reserve (or reject) the lines.
    Reservation,
    /// Payments to charge.
    Payment,
    /// Inventory to release the stock.
    Release,
    /// Payments to refund a payment.
    Refund,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub state: SagaState,
    pub commands: Vec<Command>,
    /// Whether the order needs a (new) deadline after this transition: Some(Wait) for states
    /// that wait on another service, None when nothing more is awaited.
    pub deadline: Option<Wait>,
    /// false when the event was ignored (stale, duplicate, out of order): caller changes nothing.
    pub changed: bool,
}

impl Transition {
    /// The event does not apply: nothing changes.
    fn ignored(state: &SagaState) -> Self {
        Transition {
            state: state.clone(),
            commands: Vec::new(),
            deadline: pending_wait(state),
            changed: false,
        }
    }

    /// Move to `state`, publishing `commands`; the deadline follows from the new state.
    fn to(state: SagaState, commands: Vec<Command>) -> Self {
        Transition {
            deadline: pending_wait(&state),
            state,
            commands,
            changed: true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The rules
// ---------------------------------------------------------------------------------------------

/// Deadline the order should currently have given its state (used on creation: new() -> Some(Wait::Reservation)).
///
/// * `Pending` -> `Reservation`; `AwaitingPayment` -> `Payment`; `Compensating` -> `Release`
///   (the release wait takes priority over an outstanding refund, which is retried once the
///   order is cancelled);
/// * `Cancelled` with a refund requested and not yet confirmed -> `Refund`;
/// * otherwise (`Confirmed`, `Cancelled` with nothing outstanding) -> `None`.
pub fn pending_wait(state: &SagaState) -> Option<Wait> {
    match state.status {
        OrderStatus::Pending => Some(Wait::Reservation),
        OrderStatus::AwaitingPayment => Some(Wait::Payment),
        OrderStatus::Compensating => Some(Wait::Release),
        OrderStatus::Cancelled => state.outstanding_refund().map(|_| Wait::Refund),
        OrderStatus::Confirmed => None,
    }
}

/// Applies one event to the saga state. Pure and total: any state (even an inconsistent one
/// read from storage) and any event give a transition, never a panic.
///
/// In every transition `deadline == pending_wait(&state)`; an ignored event has
/// `changed == false`, no commands and the state unchanged.
///
/// Stock:
/// 1. `Pending` + `StockReserved` -> `AwaitingPayment`, `stock_reserved`, `[RequestPayment]`,
///    deadline `Payment`.
/// 2. `Pending` + `StockRejected` -> `Cancelled(OutOfStock)`, `[Cancel(OutOfStock)]`, no
///    deadline (`Refund` if a refund is outstanding).
/// 3. `Compensating` + `StockReleased` -> `Cancelled`, keeping the reason, stock no longer
///    reserved, `[Cancel(reason)]`, deadline `Refund` if a refund is outstanding, else none.
///    (A `Compensating` state without a reason, which [`decide`] never produces, cancels
///    with `Timeout`.)
/// 4. `StockReserved` in `Compensating` / `Cancelled` (the reservation raced with a
///    timeout) is ignored: the release was already requested and is idempotent.
///
/// Payment:
/// 5. `AwaitingPayment` + `PaymentSucceeded{id}` (no payment known yet) -> `Confirmed`,
///    `payment_id = id`, `[Confirm]`, no deadline.
/// 6. `AwaitingPayment` + `PaymentFailed` -> `Compensating(PaymentFailed)`,
///    `[ReleaseStock]`, deadline `Release`.
/// 7. `PaymentSucceeded{id}` when `Pending`, `Compensating` or `Cancelled` and no payment
///    known yet (money moved for an order not awaiting payment) -> status kept,
///    `payment_id = id`, `refund_requested`, `[RequestRefund{id}]`; deadline from the state:
///    `Reservation` while `Pending`, `Release` while `Compensating`, `Refund` when
///    `Cancelled`.
/// 8. `PaymentSucceeded{id}` with the payment id already known (the confirming payment, or
///    the one already being refunded) is a repeat: ignored.
/// 9. `PaymentSucceeded{id}` with a *different* id while a payment is already known (never
///    happens while payments keeps one payment per order) -> `[RequestRefund{id}]`, state
///    unchanged (one-off, untracked refund; a `Confirmed` order stays confirmed with its
///    own payment, and an order whose earlier payment is being refunded is not confirmed
///    by a later one).
/// 10. `PaymentRefunded` while a refund is outstanding -> `refunded`, no commands, deadline
///     from the state (`Release` if still `Compensating`, none when `Cancelled`). Otherwise
///     (no refund requested, or already refunded) it is ignored.
///
/// Deadlines:
/// 11. `Pending` + `DeadlinePassed` -> `Compensating(Timeout)`, `[ReleaseStock]` (inventory's
///     release is idempotent and tombstones an order it never reserved), deadline `Release`.
/// 12. `AwaitingPayment` + `DeadlinePassed` -> `Compensating(Timeout)`, `[ReleaseStock]`,
///     deadline `Release`.
/// 13. `Compensating` + `DeadlinePassed` -> stays `Compensating`, `[ReleaseStock]` again
///     (retried until done), deadline `Release`; `changed` is true.
/// 14. `Cancelled` with an outstanding refund + `DeadlinePassed` -> `[RequestRefund{id}]`
///     again (retried until done), deadline `Refund`; `changed` is true.
///
/// Everything else does not apply (duplicates and reorderings, e.g. `StockReserved` twice,
/// `StockRejected` after `AwaitingPayment`, `PaymentFailed` after `Confirmed`,
/// `StockReleased` when not `Compensating`, `DeadlinePassed` in `Confirmed` or in
/// `Cancelled` without an outstanding refund) and is ignored.
pub fn decide(state: &SagaState, event: &SagaEvent) -> Transition {
    use OrderStatus::{AwaitingPayment, Cancelled, Compensating, Pending};

    match (state.status, event) {
        // Rule 1.
        (Pending, SagaEvent::StockReserved) => Transition::to(
            SagaState {
                status: AwaitingPayment,
                stock_reserved: true,
                ..state.clone()
            },
            vec![Command::RequestPayment],
        ),
        // Rule 2.
        (Pending, SagaEvent::StockRejected) => cancel(state, CancelReason::OutOfStock),
        // Rule 3.
        (Compensating, SagaEvent::StockReleased) => {
            cancel(state, state.cancel_reason.unwrap_or(CancelReason::Timeout))
        }
        // Rules 5 to 9.
        (_, SagaEvent::PaymentSucceeded { payment_id }) => payment_succeeded(state, *payment_id),
        // Rule 6.
        (AwaitingPayment, SagaEvent::PaymentFailed) => {
            start_compensation(state, CancelReason::PaymentFailed)
        }
        // Rule 10.
        (_, SagaEvent::PaymentRefunded) if state.outstanding_refund().is_some() => Transition::to(
            SagaState {
                refunded: true,
                ..state.clone()
            },
            Vec::new(),
        ),
        // Rules 11 and 12.
        (Pending | AwaitingPayment, SagaEvent::DeadlinePassed) => {
            start_compensation(state, CancelReason::Timeout)
        }
        // Rule 13.
        (Compensating, SagaEvent::DeadlinePassed) => {
            Transition::to(state.clone(), vec![Command::ReleaseStock])
        }
        // Rule 14.
        (Cancelled, SagaEvent::DeadlinePassed) => match state.outstanding_refund() {
            Some(payment_id) => {
                Transition::to(state.clone(), vec![Command::RequestRefund { payment_id }])
            }
            None => Transition::ignored(state),
        },
        // Rule 4 and everything else that does not apply.
        _ => Transition::ignored(state),
    }
}

/// Rules 2 and 3: the order is cancelled for `reason`, its stock no longer held.
fn cancel(state: &SagaState, reason: CancelReason) -> Transition {
    let cancelled = SagaState {
        status: OrderStatus::Cancelled,
        cancel_reason: Some(reason),
        stock_reserved: false,
        ..state.clone()
    };
    Transition::to(cancelled, vec![Command::Cancel(reason)])
}

/// Rules 11, 12 and 6: ask inventory to release the stock and wait for it.
fn start_compensation(state: &SagaState, reason: CancelReason) -> Transition {
    Transition::to(
        SagaState {
            status: OrderStatus::Compensating,
            cancel_reason: Some(reason),
            ..state.clone()
        },
        vec![Command::ReleaseStock],
    )
}

/// Rules 5, 7, 8 and 9.
fn payment_succeeded(state: &SagaState, payment_id: Uuid) -> Transition {
    let refund = vec![Command::RequestRefund { payment_id }];
    match state.payment_id {
        // Rule 8: a repeat of the payment we already know.
        Some(known) if known == payment_id => Transition::ignored(state),
        // Rule 9: another payment while one is known: refund it, track nothing.
        Some(_) => Transition::to(state.clone(), refund),
        // Rule 5: the payment we asked for.
        None if state.status == OrderStatus::AwaitingPayment && !state.refund_requested => {
            Transition::to(
                SagaState {
                    status: OrderStatus::Confirmed,
                    payment_id: Some(payment_id),
                    ..state.clone()
                },
                vec![Command::Confirm],
            )
        }
        // Rule 7: money moved for an order that is not awaiting payment: refund and track it.
        None if !state.refund_requested && state.status != OrderStatus::Confirmed => {
            Transition::to(
                SagaState {
                    payment_id: Some(payment_id),
                    refund_requested: true,
                    refunded: false,
                    ..state.clone()
                },
                refund,
            )
        }
        // Inconsistent states (refund requested without a payment id, or confirmed without
        // one): never keep the money, but do not touch the state.
        None => Transition::to(state.clone(), refund),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet, VecDeque};

    use proptest::prelude::*;

    use super::*;
    use CancelReason::{OutOfStock, PaymentFailed, Timeout};
    use OrderStatus::{AwaitingPayment, Cancelled, Compensating, Confirmed, Pending};

    // ---- helpers ------------------------------------------------------------------------

    fn pid(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    const P1: u128 = 1;
    const P2: u128 = 2;
    const P3: u128 = 3;

    fn paid(n: u128) -> SagaEvent {
        SagaEvent::PaymentSucceeded { payment_id: pid(n) }
    }

    fn refund(n: u128) -> Command {
        Command::RequestRefund { payment_id: pid(n) }
    }

    /// Applies events in order, returning the final state (ignoring commands).
    fn run(events: &[SagaEvent]) -> SagaState {
        events
            .iter()
            .fold(SagaState::new(), |state, event| decide(&state, event).state)
    }

    fn awaiting_payment() -> SagaState {
        run(&[SagaEvent::StockReserved])
    }

    fn confirmed() -> SagaState {
        run(&[SagaEvent::StockReserved, paid(P1)])
    }

    fn compensating(reason: CancelReason) -> SagaState {
        match reason {
            PaymentFailed => run(&[SagaEvent::StockReserved, SagaEvent::PaymentFailed]),
            Timeout => run(&[SagaEvent::StockReserved, SagaEvent::DeadlinePassed]),
            OutOfStock => unreachable!("out of stock cancels without compensation"),
        }
    }

    fn cancelled(reason: CancelReason) -> SagaState {
        match reason {
            OutOfStock => run(&[SagaEvent::StockRejected]),
            _ => decide(&compensating(reason), &SagaEvent::StockReleased).state,
        }
    }

    fn assert_ignored(state: &SagaState, event: &SagaEvent) {
        let t = decide(state, event);
        assert_eq!(
            t,
            Transition {
                state: state.clone(),
                commands: vec![],
                deadline: pending_wait(state),
                changed: false,
            },
            "{event:?} in {state:?} should be ignored"
        );
    }

    /// Position in the lifecycle; a transition never lowers it. `Confirmed` and
    /// `Compensating` share a rank (neither can follow the other).
    fn rank(status: OrderStatus) -> u8 {
        match status {
            Pending => 0,
            AwaitingPayment => 1,
            Confirmed | Compensating => 2,
            Cancelled => 3,
        }
    }

    /// Whether status `to` may follow status `from` (`Confirmed` is terminal).
    fn may_follow(from: OrderStatus, to: OrderStatus) -> bool {
        if from == Confirmed {
            return to == Confirmed;
        }
        from == to || rank(to) > rank(from)
    }

    /// Consistency of a state produced by `decide` from `new()`.
    fn assert_consistent(s: &SagaState) {
        match s.status {
            Pending => {
                assert!(s.cancel_reason.is_none() && !s.stock_reserved, "{s:?}");
            }
            AwaitingPayment => assert!(s.cancel_reason.is_none() && s.stock_reserved, "{s:?}"),
            Confirmed => assert!(
                s.cancel_reason.is_none()
                    && s.stock_reserved
                    && s.payment_id.is_some()
                    && !s.refund_requested
                    && !s.refunded,
                "{s:?}"
            ),
            Compensating => assert!(s.cancel_reason.is_some(), "{s:?}"),
            Cancelled => assert!(s.cancel_reason.is_some() && !s.stock_reserved, "{s:?}"),
        }
        if s.status != Confirmed {
            assert_eq!(s.payment_id.is_some(), s.refund_requested, "{s:?}");
        }
        assert!(!s.refunded || s.refund_requested, "{s:?}");
        if s.cancel_reason == Some(OutOfStock) {
            assert_eq!(s.status, Cancelled, "{s:?}");
        }
    }

    /// Properties of one step, for any state.
    fn assert_step(state: &SagaState, event: &SagaEvent, t: &Transition) {
        let ctx = format!("{event:?} in {state:?} -> {t:?}");
        assert!(may_follow(state.status, t.state.status), "backwards: {ctx}");
        assert_eq!(t.deadline, pending_wait(&t.state), "deadline: {ctx}");
        if !t.changed {
            assert!(t.commands.is_empty(), "commands while unchanged: {ctx}");
            assert_eq!(&t.state, state, "state changed while unchanged: {ctx}");
        } else {
            assert!(
                &t.state != state || !t.commands.is_empty(),
                "changed without effect: {ctx}"
            );
        }
        if state.status != t.state.status {
            assert!(t.changed, "status changed while unchanged: {ctx}");
        }
        // Once set, never lost or rewritten.
        if let Some(known) = state.payment_id {
            assert_eq!(
                t.state.payment_id,
                Some(known),
                "payment id rewritten: {ctx}"
            );
        }
        if let Some(reason) = state.cancel_reason {
            assert_eq!(
                t.state.cancel_reason,
                Some(reason),
                "reason rewritten: {ctx}"
            );
        }
        assert!(!state.refund_requested || t.state.refund_requested, "{ctx}");
        assert!(!state.refunded || t.state.refunded, "{ctx}");
        // Commands match the change.
        let confirms = t.commands.contains(&Command::Confirm);
        assert_eq!(
            confirms,
            state.status != Confirmed && t.state.status == Confirmed,
            "{ctx}"
        );
        let cancels = t
            .commands
            .iter()
            .filter(|c| matches!(c, Command::Cancel(_)))
            .count();
        assert_eq!(
            cancels == 1,
            state.status != Cancelled && t.state.status == Cancelled,
            "{ctx}"
        );
        assert!(cancels <= 1, "{ctx}");
        if cancels == 1 {
            assert_eq!(
                t.commands,
                vec![Command::Cancel(t.state.cancel_reason.unwrap())],
                "{ctx}"
            );
        }
        assert_eq!(
            t.commands.contains(&Command::RequestPayment),
            state.status == Pending && t.state.status == AwaitingPayment,
            "{ctx}"
        );
        // A confirmed payment is never refunded.
        if t.state.status == Confirmed {
            assert!(
                !t.commands.contains(&Command::RequestRefund {
                    payment_id: t.state.payment_id.unwrap()
                }),
                "{ctx}"
            );
        }
        assert!(t.commands.len() <= 1, "{ctx}");
    }

    /// Every event, with payment ids from `ids`.
    fn all_events(ids: &[u128]) -> Vec<SagaEvent> {
        let mut events = vec![
            SagaEvent::StockReserved,
            SagaEvent::StockRejected,
            SagaEvent::StockReleased,
            SagaEvent::PaymentFailed,
            SagaEvent::PaymentRefunded,
            SagaEvent::DeadlinePassed,
        ];
        events.extend(ids.iter().map(|&n| paid(n)));
        events
    }

    /// Every state reachable from `new()` with payment ids `P1..=P3`.
    fn reachable_states() -> Vec<SagaState> {
        let events = all_events(&[P1, P2, P3]);
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        let mut queue = VecDeque::from([SagaState::new()]);
        while let Some(state) = queue.pop_front() {
            if !seen.insert(serde_json::to_string(&state).unwrap()) {
                continue;
            }
            for event in &events {
                queue.push_back(decide(&state, event).state);
            }
            order.push(state);
        }
        order
    }

    /// Every combination of fields, including states `decide` never produces.
    fn all_structural_states() -> Vec<SagaState> {
        let mut states = Vec::new();
        for status in OrderStatus::ALL {
            for cancel_reason in [None, Some(OutOfStock), Some(PaymentFailed), Some(Timeout)] {
                for payment_id in [None, Some(pid(P1))] {
                    for bits in 0..8u8 {
                        states.push(SagaState {
                            status,
                            cancel_reason,
                            stock_reserved: bits & 1 != 0,
                            payment_id,
                            refund_requested: bits & 2 != 0,
                            refunded: bits & 4 != 0,
                        });
                    }
                }
            }
        }
        states
    }

    // ---- strings and serde --------------------------------------------------------------

    /// `value` is `text` when displayed, parsed and (as a JSON string) serialised.
    fn assert_string_forms<T>(value: T, text: &str)
    where
        T: std::fmt::Display + std::str::FromStr + Serialize + serde::de::DeserializeOwned,
        T: PartialEq + std::fmt::Debug,
        T::Err: std::fmt::Debug,
    {
        assert_eq!(value.to_string(), text);
        assert_eq!(text.parse::<T>().unwrap(), value);
        let json = format!("\"{text}\"");
        assert_eq!(serde_json::to_string(&value).unwrap(), json);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
    }

    #[test]
    fn status_strings_parse_and_serde_agree() {
        let expected = [
            (Pending, "PENDING"),
            (AwaitingPayment, "AWAITING_PAYMENT"),
            (Confirmed, "CONFIRMED"),
            (Compensating, "COMPENSATING"),
            (Cancelled, "CANCELLED"),
        ];
        for (status, text) in expected {
            assert_eq!(status.as_str(), text);
            assert_string_forms(status, text);
        }
        assert_eq!(
            "pending".parse::<OrderStatus>(),
            Err(UnknownOrderStatus("pending".into()))
        );
        assert!("".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn only_confirmed_and_cancelled_are_terminal() {
        for status in OrderStatus::ALL {
            assert_eq!(
                status.is_terminal(),
                matches!(status, Confirmed | Cancelled)
            );
        }
    }

    #[test]
    fn cancel_reason_strings_parse_serde_and_words() {
        let expected = [
            (OutOfStock, "out_of_stock"),
            (PaymentFailed, "payment_failed"),
            (Timeout, "timeout"),
        ];
        for (reason, text) in expected {
            assert_eq!(reason.as_str(), text);
            assert_string_forms(reason, text);
            assert!(!reason.describe().is_empty());
            assert!(!reason.describe().contains('_'));
        }
        assert_eq!(OutOfStock.describe(), "an item was out of stock");
        assert_eq!(
            "OUT_OF_STOCK".parse::<CancelReason>(),
            Err(UnknownCancelReason("OUT_OF_STOCK".into()))
        );
    }

    #[test]
    fn saga_state_round_trips_through_json() {
        let state = SagaState {
            status: Compensating,
            cancel_reason: Some(Timeout),
            stock_reserved: true,
            payment_id: Some(pid(P2)),
            refund_requested: true,
            refunded: false,
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["status"], "COMPENSATING");
        assert_eq!(json["cancel_reason"], "timeout");
        assert_eq!(serde_json::from_value::<SagaState>(json).unwrap(), state);
        assert_eq!(SagaState::default(), SagaState::new());
    }

    // ---- creation and pending_wait ------------------------------------------------------

    #[test]
    fn new_order_is_pending_and_waits_for_reservation() {
        let s = SagaState::new();
        assert_eq!(s.status, Pending);
        assert_eq!(s.cancel_reason, None);
        assert!(!s.stock_reserved && !s.refund_requested && !s.refunded);
        assert_eq!(s.payment_id, None);
        assert_eq!(pending_wait(&s), Some(Wait::Reservation));
    }

    #[test]
    fn pending_wait_follows_the_state() {
        assert_eq!(pending_wait(&awaiting_payment()), Some(Wait::Payment));
        assert_eq!(pending_wait(&compensating(Timeout)), Some(Wait::Release));
        assert_eq!(pending_wait(&confirmed()), None);
        assert_eq!(pending_wait(&cancelled(OutOfStock)), None);
        let refunding = decide(&cancelled(Timeout), &paid(P1)).state;
        assert_eq!(pending_wait(&refunding), Some(Wait::Refund));
        let refunded = decide(&refunding, &SagaEvent::PaymentRefunded).state;
        assert_eq!(pending_wait(&refunded), None);
    }

    // ---- one test per rule --------------------------------------------------------------

    /// What a rule test states about a transition, in one line: whether it changed, the
    /// status, the cancel reason, the commands and the deadline.
    fn outcome(t: &Transition) -> String {
        let changed = if t.changed { "changed" } else { "unchanged" };
        let s = &t.state;
        let reason = s.cancel_reason;
        format!(
            "{changed} {:?} {reason:?} {:?} {:?}",
            s.status, t.commands, t.deadline
        )
    }

    #[test]
    fn rule_pending_stock_reserved_requests_payment() {
        let t = decide(&SagaState::new(), &SagaEvent::StockReserved);
        let expected = "changed AwaitingPayment None [RequestPayment] Some(Payment)";
        assert_eq!(outcome(&t), expected);
        assert!(t.state.stock_reserved);
    }

    #[test]
    fn rule_pending_stock_rejected_cancels_out_of_stock() {
        let t = decide(&SagaState::new(), &SagaEvent::StockRejected);
        let expected = "changed Cancelled Some(OutOfStock) [Cancel(OutOfStock)] None";
        assert_eq!(outcome(&t), expected);
        assert!(!t.state.stock_reserved);
    }

    #[test]
    fn rule_awaiting_payment_succeeded_confirms() {
        let t = decide(&awaiting_payment(), &paid(P1));
        assert_eq!(outcome(&t), "changed Confirmed None [Confirm] None");
        assert_eq!(t.state.payment_id, Some(pid(P1)));
        assert!(!t.state.refund_requested);
    }

    #[test]
    fn rule_awaiting_payment_failed_starts_compensation() {
        let t = decide(&awaiting_payment(), &SagaEvent::PaymentFailed);
        let expected = "changed Compensating Some(PaymentFailed) [ReleaseStock] Some(Release)";
        assert_eq!(outcome(&t), expected);
        assert!(t.state.stock_reserved, "still held until released");
    }

    #[test]
    fn rule_compensating_stock_released_cancels_keeping_reason() {
        for reason in [PaymentFailed, Timeout] {
            let t = decide(&compensating(reason), &SagaEvent::StockReleased);
            let expected = format!("changed Cancelled Some({reason:?}) [Cancel({reason:?})] None");
            assert_eq!(outcome(&t), expected);
            assert!(!t.state.stock_reserved);
        }
    }

    #[test]
    fn rule_compensating_stock_released_keeps_waiting_for_an_outstanding_refund() {
        let refunding = decide(&compensating(Timeout), &paid(P1)).state;
        let t = decide(&refunding, &SagaEvent::StockReleased);
        assert_eq!(t.state.status, Cancelled);
        assert_eq!(t.commands, vec![Command::Cancel(Timeout)]);
        assert_eq!(t.deadline, Some(Wait::Refund));

        let refunded = decide(&refunding, &SagaEvent::PaymentRefunded).state;
        let t = decide(&refunded, &SagaEvent::StockReleased);
        assert_eq!(t.state.status, Cancelled);
        assert_eq!(t.deadline, None);
    }

    #[test]
    fn rule_compensating_without_reason_cancels_with_timeout() {
        let odd = SagaState {
            status: Compensating,
            ..SagaState::new()
        };
        let t = decide(&odd, &SagaEvent::StockReleased);
        assert_eq!(t.state.status, Cancelled);
        assert_eq!(t.state.cancel_reason, Some(Timeout));
        assert_eq!(t.commands, vec![Command::Cancel(Timeout)]);
    }

    #[test]
    fn rule_pending_or_awaiting_payment_deadline_compensates_with_timeout() {
        for state in [SagaState::new(), awaiting_payment()] {
            let t = decide(&state, &SagaEvent::DeadlinePassed);
            let expected = "changed Compensating Some(Timeout) [ReleaseStock] Some(Release)";
            assert_eq!(outcome(&t), expected, "{state:?}");
        }
    }

    #[test]
    fn rule_compensating_deadline_retries_release() {
        for reason in [PaymentFailed, Timeout] {
            let state = compensating(reason);
            let t = decide(&state, &SagaEvent::DeadlinePassed);
            assert!(t.changed);
            assert_eq!(t.state, state);
            assert_eq!(t.commands, vec![Command::ReleaseStock]);
            assert_eq!(t.deadline, Some(Wait::Release));
            // And again.
            let again = decide(&t.state, &SagaEvent::DeadlinePassed);
            assert_eq!(again, t);
        }
    }

    /// The transition took payment `n` and asks for its refund, not yet refunded.
    fn assert_refund_requested(t: &Transition, n: u128) {
        assert_eq!(t.state.payment_id, Some(pid(n)));
        assert!(t.state.refund_requested && !t.state.refunded);
        assert_eq!(t.commands, vec![refund(n)]);
    }

    #[test]
    fn rule_late_payment_while_compensating_is_refunded_release_wait_first() {
        let t = decide(&compensating(Timeout), &paid(P1));
        assert!(t.changed && t.state.status == Compensating);
        assert_refund_requested(&t, P1);
        assert_eq!(t.deadline, Some(Wait::Release));
    }

    #[test]
    fn rule_late_payment_when_cancelled_is_refunded() {
        for reason in [OutOfStock, PaymentFailed, Timeout] {
            let t = decide(&cancelled(reason), &paid(P1));
            assert!(t.changed && t.state.status == Cancelled);
            assert_eq!(t.state.cancel_reason, Some(reason));
            assert_refund_requested(&t, P1);
            assert_eq!(t.deadline, Some(Wait::Refund));
        }
    }

    #[test]
    fn rule_repeated_payment_is_ignored() {
        // Confirmed with the same id.
        assert_ignored(&confirmed(), &paid(P1));
        // Already being refunded (cancelled or compensating), or refunded.
        let refunding = decide(&cancelled(Timeout), &paid(P1)).state;
        assert_ignored(&refunding, &paid(P1));
        let refunded = decide(&refunding, &SagaEvent::PaymentRefunded).state;
        assert_ignored(&refunded, &paid(P1));
        let compensating_refund = decide(&compensating(PaymentFailed), &paid(P1)).state;
        assert_ignored(&compensating_refund, &paid(P1));
        // The payment refunded while pending cannot later confirm the order.
        let pending_refund = decide(&SagaState::new(), &paid(P1)).state;
        let awaiting = decide(&pending_refund, &SagaEvent::StockReserved).state;
        assert_eq!(awaiting.status, AwaitingPayment);
        assert_ignored(&awaiting, &paid(P1));
    }

    #[test]
    fn rule_cancelled_deadline_retries_refund_until_refunded() {
        let refunding = decide(&cancelled(PaymentFailed), &paid(P2)).state;
        let t = decide(&refunding, &SagaEvent::DeadlinePassed);
        assert!(t.changed);
        assert_eq!(t.state, refunding);
        assert_eq!(t.commands, vec![refund(P2)]);
        assert_eq!(t.deadline, Some(Wait::Refund));

        let refunded = decide(&refunding, &SagaEvent::PaymentRefunded).state;
        assert_ignored(&refunded, &SagaEvent::DeadlinePassed);
    }

    #[test]
    fn rule_payment_refunded_settles_the_refund() {
        // Cancelled: nothing more awaited.
        let refunding = decide(&cancelled(Timeout), &paid(P1)).state;
        let t = decide(&refunding, &SagaEvent::PaymentRefunded);
        assert!(t.changed);
        assert_eq!(t.state.status, Cancelled);
        assert!(t.state.refund_requested && t.state.refunded);
        assert!(t.commands.is_empty());
        assert_eq!(t.deadline, None);
        // Compensating: the release wait continues.
        let refunding = decide(&compensating(Timeout), &paid(P1)).state;
        let t = decide(&refunding, &SagaEvent::PaymentRefunded);
        assert!(t.changed && t.state.refunded);
        assert_eq!(t.state.status, Compensating);
        assert!(t.commands.is_empty());
        assert_eq!(t.deadline, Some(Wait::Release));
        // Duplicate, or never requested: ignored.
        assert_ignored(&t.state, &SagaEvent::PaymentRefunded);
        assert_ignored(&cancelled(Timeout), &SagaEvent::PaymentRefunded);
        assert_ignored(&confirmed(), &SagaEvent::PaymentRefunded);
    }

    #[test]
    fn rule_pending_payment_succeeded_is_refunded_keeping_pending() {
        let t = decide(&SagaState::new(), &paid(P1));
        assert!(t.changed && t.state.status == Pending);
        assert_refund_requested(&t, P1);
        assert_eq!(t.deadline, Some(Wait::Reservation));
        // The saga then goes on as usual, and the refund is retried once cancelled.
        let t = decide(&t.state, &SagaEvent::DeadlinePassed);
        assert_eq!(t.state.status, Compensating);
        let t = decide(&t.state, &SagaEvent::StockReleased);
        assert_eq!(t.state.status, Cancelled);
        assert_eq!(t.deadline, Some(Wait::Refund));
        let t = decide(&t.state, &SagaEvent::DeadlinePassed);
        assert_eq!(t.commands, vec![refund(P1)]);
    }

    #[test]
    fn rule_stock_reserved_after_timeout_is_ignored() {
        let timed_out = decide(&SagaState::new(), &SagaEvent::DeadlinePassed).state;
        assert_ignored(&timed_out, &SagaEvent::StockReserved);
        let released = decide(&timed_out, &SagaEvent::StockReleased).state;
        assert_ignored(&released, &SagaEvent::StockReserved);
        assert_ignored(&cancelled(PaymentFailed), &SagaEvent::StockReserved);
        assert_ignored(&cancelled(OutOfStock), &SagaEvent::StockReserved);
    }

    #[test]
    fn rule_other_payment_id_is_refunded_without_tracking() {
        // Confirmed keeps its own payment and refunds a stray one.
        let state = confirmed();
        let t = decide(&state, &paid(P2));
        assert!(t.changed);
        assert_eq!(t.state, state);
        assert_eq!(t.commands, vec![refund(P2)]);
        assert_eq!(t.deadline, None);
        // A second payment while the first is being refunded.
        let refunding = decide(&cancelled(Timeout), &paid(P1)).state;
        let t = decide(&refunding, &paid(P2));
        assert!(t.changed);
        assert_eq!(t.state, refunding);
        assert_eq!(t.commands, vec![refund(P2)]);
        // A fresh payment does not confirm an order whose earlier payment is refunded.
        let pending_refund = decide(&SagaState::new(), &paid(P1)).state;
        let awaiting = decide(&pending_refund, &SagaEvent::StockReserved).state;
        let t = decide(&awaiting, &paid(P2));
        assert_eq!(t.state, awaiting);
        assert_eq!(t.commands, vec![refund(P2)]);
        assert_eq!(t.deadline, Some(Wait::Payment));
    }

    #[test]
    fn rule_inapplicable_events_are_ignored() {
        let awaiting = awaiting_payment();
        let cases: Vec<(SagaState, SagaEvent)> = vec![
            // Duplicates.
            (awaiting.clone(), SagaEvent::StockReserved),
            (cancelled(OutOfStock), SagaEvent::StockRejected),
            (cancelled(Timeout), SagaEvent::StockReleased),
            (compensating(PaymentFailed), SagaEvent::PaymentFailed),
            // Reorderings.
            (awaiting.clone(), SagaEvent::StockRejected),
            (awaiting.clone(), SagaEvent::StockReleased),
            (SagaState::new(), SagaEvent::StockReleased),
            (SagaState::new(), SagaEvent::PaymentFailed),
            (SagaState::new(), SagaEvent::PaymentRefunded),
            (confirmed(), SagaEvent::StockReserved),
            (confirmed(), SagaEvent::StockRejected),
            (confirmed(), SagaEvent::StockReleased),
            (confirmed(), SagaEvent::PaymentFailed),
            (compensating(Timeout), SagaEvent::StockRejected),
            (compensating(Timeout), SagaEvent::StockReserved),
            (cancelled(OutOfStock), SagaEvent::PaymentFailed),
            // Deadlines with nothing awaited.
            (confirmed(), SagaEvent::DeadlinePassed),
            (cancelled(OutOfStock), SagaEvent::DeadlinePassed),
            (cancelled(PaymentFailed), SagaEvent::DeadlinePassed),
            (cancelled(Timeout), SagaEvent::DeadlinePassed),
        ];
        for (state, event) in &cases {
            assert_ignored(state, event);
        }
    }

    #[test]
    fn rule_status_never_moves_backwards_on_the_happy_and_sad_paths() {
        let paths: [&[SagaEvent]; 4] = [
            &[SagaEvent::StockReserved, paid(P1)],
            &[SagaEvent::StockRejected],
            &[
                SagaEvent::StockReserved,
                SagaEvent::PaymentFailed,
                SagaEvent::StockReleased,
            ],
            &[
                SagaEvent::DeadlinePassed,
                SagaEvent::StockReleased,
                paid(P1),
                SagaEvent::PaymentRefunded,
            ],
        ];
        let finals = [Confirmed, Cancelled, Cancelled, Cancelled];
        for (path, expected) in paths.iter().zip(finals) {
            let mut state = SagaState::new();
            for event in path.iter() {
                let t = decide(&state, event);
                assert!(t.changed, "{event:?} in {state:?}");
                assert!(may_follow(state.status, t.state.status));
                state = t.state;
            }
            assert_eq!(state.status, expected);
            assert_eq!(pending_wait(&state), None);
        }
    }

    // ---- exhaustive ---------------------------------------------------------------------

    #[test]
    fn exhaustive_over_reachable_states_and_events() {
        let states = reachable_states();
        let statuses: HashSet<_> = states.iter().map(|s| s.status).collect();
        assert_eq!(
            statuses.len(),
            OrderStatus::ALL.len(),
            "every status reachable"
        );
        for state in &states {
            assert_consistent(state);
            // A deadline that fires while something is awaited always acts (retries or
            // compensates): waiting can never silently stall.
            if pending_wait(state).is_some() {
                let t = decide(state, &SagaEvent::DeadlinePassed);
                assert!(t.changed && !t.commands.is_empty(), "{state:?}");
            }
            for event in all_events(&[P1, P2, P3]) {
                let t = decide(state, &event);
                assert_step(state, &event, &t);
                assert_consistent(&t.state);
                if state.status == Confirmed {
                    assert_eq!(t.state, *state, "confirmed order changed: {event:?}");
                }
                // Non-terminal orders, and outstanding refunds, always have a deadline.
                if !t.state.status.is_terminal() || t.state.outstanding_refund().is_some() {
                    assert!(t.deadline.is_some(), "{event:?} in {state:?}");
                }
            }
        }
    }

    #[test]
    fn exhaustive_over_all_field_combinations_is_total_and_monotone() {
        for state in all_structural_states() {
            for event in all_events(&[P1, P2]) {
                let t = decide(&state, &event);
                assert!(
                    may_follow(state.status, t.state.status),
                    "{event:?} {state:?}"
                );
                assert_eq!(t.deadline, pending_wait(&t.state));
                if !t.changed {
                    assert!(t.commands.is_empty());
                    assert_eq!(t.state, state);
                }
                if state.status == Confirmed {
                    assert_eq!(t.state.status, Confirmed);
                }
                // Money is never kept by an order it did not confirm.
                if let SagaEvent::PaymentSucceeded { payment_id } = event {
                    let refunded = t.commands.contains(&Command::RequestRefund { payment_id });
                    let confirmed_by_it =
                        t.state.status == Confirmed && t.state.payment_id == Some(payment_id);
                    let already_known = state.payment_id == Some(payment_id);
                    assert!(refunded || confirmed_by_it || already_known, "{state:?}");
                }
            }
        }
    }

    // ---- property -----------------------------------------------------------------------

    fn event_strategy() -> impl Strategy<Value = SagaEvent> {
        prop_oneof![
            3 => Just(SagaEvent::StockReserved),
            1 => Just(SagaEvent::StockRejected),
            2 => Just(SagaEvent::StockReleased),
            3 => (1u128..=3).prop_map(paid),
            1 => Just(SagaEvent::PaymentFailed),
            2 => Just(SagaEvent::PaymentRefunded),
            3 => Just(SagaEvent::DeadlinePassed),
        ]
    }

    /// Answers the current wait the way a healthy system eventually would.
    fn cooperative_answer(state: &SagaState) -> Option<SagaEvent> {
        pending_wait(state).map(|wait| match wait {
            Wait::Reservation | Wait::Payment => SagaEvent::DeadlinePassed,
            Wait::Release => SagaEvent::StockReleased,
            Wait::Refund => SagaEvent::PaymentRefunded,
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn arbitrary_event_sequences_keep_the_saga_safe(
            events in proptest::collection::vec(event_strategy(), 0..=30)
        ) {
            let mut state = SagaState::new();
            let mut confirms = 0;
            let mut cancels = 0;
            let mut payment_requests = 0;
            // Payment ids that arrived while the order was not confirmed.
            let mut captured_unconfirmed: HashSet<Uuid> = HashSet::new();
            // RequestRefund in answer to PaymentSucceeded, and retries from DeadlinePassed.
            let mut refunds: HashMap<Uuid, usize> = HashMap::new();
            let mut retries: HashMap<Uuid, usize> = HashMap::new();
            let mut payment_events: HashMap<Uuid, usize> = HashMap::new();

            for event in &events {
                let t = decide(&state, event);
                assert_step(&state, event, &t);
                assert_consistent(&t.state);
                if let SagaEvent::PaymentSucceeded { payment_id } = event {
                    *payment_events.entry(*payment_id).or_default() += 1;
                    if state.status != Confirmed {
                        captured_unconfirmed.insert(*payment_id);
                    }
                }
                for command in &t.commands {
                    match command {
                        Command::Confirm => confirms += 1,
                        Command::Cancel(_) => cancels += 1,
                        Command::RequestPayment => payment_requests += 1,
                        Command::ReleaseStock => {}
                        Command::RequestRefund { payment_id } => {
                            match event {
                                SagaEvent::PaymentSucceeded { payment_id: paid_id } => {
                                    prop_assert_eq!(paid_id, payment_id);
                                    *refunds.entry(*payment_id).or_default() += 1;
                                }
                                SagaEvent::DeadlinePassed => {
                                    *retries.entry(*payment_id).or_default() += 1;
                                }
                                other => prop_assert!(false, "refund on {:?}", other),
                            }
                        }
                    }
                }
                state = t.state;
            }

            // (a) at most one Confirm, never both Confirm and Cancel.
            prop_assert!(confirms <= 1);
            prop_assert!(confirms == 0 || cancels == 0);
            // (b) Cancel at most once.
            prop_assert!(cancels <= 1);
            // (c) RequestPayment at most once.
            prop_assert!(payment_requests <= 1);
            // (d) Confirm emitted => ends Confirmed (and Cancel => ends Cancelled).
            prop_assert_eq!(confirms == 1, state.status == Confirmed);
            prop_assert_eq!(cancels == 1, state.status == Cancelled);
            // (e) every payment captured while not confirmed is refunded unless it confirmed
            // the order; the tracked payment exactly once (plus deadline retries); stray
            // other ids once per payment.succeeded event (untracked, idempotent at payments).
            let confirming = (state.status == Confirmed).then_some(state.payment_id).flatten();
            for id in &captured_unconfirmed {
                if Some(*id) == confirming {
                    prop_assert_eq!(refunds.get(id), None);
                    prop_assert_eq!(retries.get(id), None);
                    continue;
                }
                let n = refunds.get(id).copied().unwrap_or(0);
                prop_assert!(n >= 1, "payment {} never refunded", id);
                if state.refund_requested && state.payment_id == Some(*id) {
                    prop_assert_eq!(n, 1, "tracked payment {} refunded {} times", id, n);
                } else {
                    prop_assert!(n <= payment_events[id]);
                }
            }
            for (id, n) in &refunds {
                prop_assert!(*n >= 1);
                prop_assert!(Some(*id) != confirming);
            }
            for id in retries.keys() {
                prop_assert!(state.refund_requested && state.payment_id == Some(*id),
                    "retry for untracked payment {}", id);
            }
            // (f) final status legal, and consistent.
            prop_assert!(OrderStatus::ALL.contains(&state.status));
            assert_consistent(&state);

            // Liveness: answering each wait as a healthy system would ends the saga with
            // nothing outstanding, in a few steps.
            let mut steps = 0;
            while let Some(answer) = cooperative_answer(&state) {
                let t = decide(&state, &answer);
                prop_assert!(t.changed, "{:?} in {:?} made no progress", answer, state);
                state = t.state;
                steps += 1;
                prop_assert!(steps <= 4, "no end in sight: {:?}", state);
            }
            prop_assert!(state.status.is_terminal());
            prop_assert_eq!(state.outstanding_refund(), None);
        }
    }
}
