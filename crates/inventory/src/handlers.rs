//! The events inventory consumes. Each runs inside the inbox transaction: its stock changes,
//! its reservation row and the events it emits commit together.
//!
//! Besides the inbox (which drops a redelivered event id), every handler is idempotent per
//! order: the reservation row, keyed by order id, records what was decided, so a copy with a
//! new id (the orchestrator retrying on its deadline) re-sends the first answer instead of
//! acting twice.

use async_trait::async_trait;
use shop_platform::{
    Envelope, Event,
    bus::{Handler, HandlerError},
    events::{
        OrderConfirmed, OrderCreated, ProductCreated, StockRejected, StockReleaseRequested,
        StockReleased, StockReserved,
    },
    outbox,
};
use sqlx::PgConnection;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    domain::{self, Coverage, Line, Outcome, REASON_OUT_OF_STOCK, ReservationStatus},
    store,
};

/// The event types inventory handles (its queue's bindings).
pub const HANDLED: &[&str] = &[
    ProductCreated::TYPE,
    OrderCreated::TYPE,
    StockReleaseRequested::TYPE,
    OrderConfirmed::TYPE,
];

pub struct InventoryHandler;

#[async_trait]
impl Handler for InventoryHandler {
    async fn handle(&self, event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
        match event.event_type.as_str() {
            ProductCreated::TYPE => product_created(event, tx).await,
            OrderCreated::TYPE => order_created(event, tx).await,
            StockReleaseRequested::TYPE => release_requested(event, tx).await,
            OrderConfirmed::TYPE => order_confirmed(event, tx).await,
            other => Err(HandlerError::Permanent(format!(
                "inventory does not handle {other}"
            ))),
        }
    }

    /// A batch's handlers share stock rows (several orders of one product) and reservation
    /// rows (an order's creation and its release): both are locked here first, reservations
    /// then stock as a handler alone takes them, each kind in key order, so two batches
    /// over the same rows cannot deadlock. (An event that does not decode locks nothing
    /// here; its handler refuses it.)
    async fn lock_batch(
        &self,
        events: &[&Envelope],
        tx: &mut PgConnection,
    ) -> Result<(), HandlerError> {
        let mut orders = Vec::new();
        let mut products = Vec::new();
        for e in events {
            match e.event_type.as_str() {
                OrderCreated::TYPE => {
                    if let Ok(o) = e.decode::<OrderCreated>() {
                        orders.push(o.order_id);
                        products.extend(o.items.iter().map(|l| l.product_id));
                    }
                }
                StockReleaseRequested::TYPE => {
                    if let Ok(r) = e.decode::<StockReleaseRequested>() {
                        orders.push(r.order_id);
                    }
                }
                OrderConfirmed::TYPE => {
                    if let Ok(c) = e.decode::<OrderConfirmed>() {
                        orders.push(c.order_id);
                    }
                }
                _ => {}
            }
        }
        if orders.is_empty() {
            return Ok(());
        }
        orders.sort_unstable();
        orders.dedup();
        products.extend(store::lock_reservations(tx, &orders).await?);
        products.sort_unstable();
        products.dedup();
        store::lock_stock(tx, &products).await?;
        Ok(())
    }
}

async fn product_created(event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
    let p: ProductCreated = event.decode()?;
    if p.initial_stock < 0 {
        return Err(HandlerError::Permanent(format!(
            "initial stock {} is negative",
            p.initial_stock
        )));
    }
    if !store::create_stock(tx, p.product_id, p.initial_stock).await? {
        info!(product_id = %p.product_id, "stock already exists; product.created ignored");
    }
    Ok(())
}

/// Reserves every line or none.
async fn order_created(event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
    let order: OrderCreated = event.decode()?;
    let lines = domain::merge_lines(&order.items).map_err(HandlerError::Permanent)?;
    if !store::claim_reservation(
        tx,
        order.order_id,
        ReservationStatus::Reserved,
        &lines,
        None,
    )
    .await?
    {
        // Seen before (or released before it arrived): answer as the first time.
        let existing = store::lock_reservation(tx, order.order_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("reservation of {} vanished", order.order_id))?;
        info!(order_id = %order.order_id, status = %existing.status, "order already known; re-sending its outcome");
        let outcome = domain::repeated_outcome(existing.status, existing.reason.as_deref());
        return emit_outcome(event, tx, order.order_id, outcome).await;
    }
    // This transaction owns the order's first decision; stock rows are locked in product id
    // order, so the check below holds until commit.
    let ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let available = store::lock_stock(tx, &ids).await?;
    let outcome = match domain::coverage(&lines, &available) {
        Coverage::Unknown(missing) => {
            // Rolled back with the claim above; retried until product.created has arrived.
            return Err(HandlerError::Transient(anyhow::anyhow!(
                "no stock yet for products {missing:?}"
            )));
        }
        Coverage::Short(short) => {
            info!(order_id = %order.order_id, ?short, "not enough stock; order rejected");
            store::set_reservation_status(
                tx,
                order.order_id,
                ReservationStatus::Rejected,
                Some(REASON_OUT_OF_STOCK),
            )
            .await?;
            Outcome::Rejected {
                reason: REASON_OUT_OF_STOCK.into(),
            }
        }
        Coverage::Covered => {
            for line in &lines {
                if !store::reserve(tx, line).await? {
                    // Impossible under the row locks; the transaction (and claim) rolls back.
                    return Err(HandlerError::Transient(anyhow::anyhow!(
                        "stock of {} changed under its lock",
                        line.product_id
                    )));
                }
            }
            info!(order_id = %order.order_id, lines = lines.len(), "stock reserved");
            Outcome::Reserved
        }
    };
    emit_outcome(event, tx, order.order_id, outcome).await
}

async fn emit_outcome(
    event: &Envelope,
    tx: &mut PgConnection,
    order_id: Uuid,
    outcome: Outcome,
) -> Result<(), HandlerError> {
    let out = match outcome {
        Outcome::Reserved => event.caused(order_id, &StockReserved { order_id }),
        Outcome::Rejected { reason } => event.caused(order_id, &StockRejected { order_id, reason }),
    };
    outbox::enqueue(tx, &out).await?;
    Ok(())
}

/// Returns an order's held stock; always answers `stock.released` unless the stock was sold.
async fn release_requested(event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
    let StockReleaseRequested { order_id } = event.decode()?;
    let released = event.caused(order_id, &StockReleased { order_id });
    // No reservation yet: leave a tombstone so that a late order.created is rejected.
    if store::claim_reservation(tx, order_id, ReservationStatus::Released, &[], None).await? {
        info!(%order_id, "release before the order was seen; tombstone written");
        outbox::enqueue(tx, &released).await?;
        return Ok(());
    }
    let reservation = store::lock_reservation(tx, order_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("reservation of {order_id} vanished"))?;
    match reservation.status {
        ReservationStatus::Reserved => {
            for line in &reservation.lines {
                ensure(store::release(tx, line).await?, order_id, line, "release")?;
            }
            store::set_reservation_status(tx, order_id, ReservationStatus::Released, None).await?;
            info!(%order_id, "stock released");
        }
        ReservationStatus::Released | ReservationStatus::Rejected => {
            info!(%order_id, status = %reservation.status, "nothing held; stock.released re-sent");
        }
        ReservationStatus::Sold => {
            warn!(%order_id, "release requested for an order whose stock was sold; ignored");
            return Ok(());
        }
    }
    outbox::enqueue(tx, &released).await?;
    Ok(())
}

/// Turns the order's reservation into a sale.
async fn order_confirmed(event: &Envelope, tx: &mut PgConnection) -> Result<(), HandlerError> {
    let OrderConfirmed { order_id, .. } = event.decode()?;
    let Some(reservation) = store::lock_reservation(tx, order_id).await? else {
        warn!(%order_id, "order confirmed without a reservation; ignored");
        return Ok(());
    };
    match reservation.status {
        ReservationStatus::Reserved => {
            for line in &reservation.lines {
                ensure(store::sell(tx, line).await?, order_id, line, "sell")?;
            }
            store::set_reservation_status(tx, order_id, ReservationStatus::Sold, None).await?;
            info!(%order_id, "reservation sold");
        }
        ReservationStatus::Sold => info!(%order_id, "reservation already sold"),
        other => {
            warn!(%order_id, status = %other, "order confirmed but its stock is not reserved; ignored")
        }
    }
    Ok(())
}

/// A reservation holds less than it records: the counters were changed behind inventory's
/// back. Parked for an operator rather than retried forever.
fn ensure(done: bool, order_id: Uuid, line: &Line, what: &str) -> Result<(), HandlerError> {
    if done {
        Ok(())
    } else {
        Err(HandlerError::Permanent(format!(
            "cannot {what} {} of product {} for order {order_id}: less is reserved than the reservation holds",
            line.quantity, line.product_id
        )))
    }
}
