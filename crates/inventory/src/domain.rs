//! Inventory rules, free of I/O: an order's lines merged per product, whether the stock
//! covers them, what a reservation's status answers to a repeated `order.created`, and what
//! a valid stock adjustment is.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use shop_platform::events::OrderLine;
use uuid::Uuid;

/// `stock.rejected` reason when some line is short.
pub const REASON_OUT_OF_STOCK: &str = "out_of_stock";
/// `stock.rejected` reason when the order's stock was released (or never reserved because
/// the release came first) before this `order.created` was seen.
pub const REASON_RELEASED: &str = "released";

/// Largest stock change one adjustment may make, either way.
pub const MAX_ADJUSTMENT: i64 = 1_000_000;
/// Longest adjustment reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// One product's quantity in a reservation (the lines of one order merged per product).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// Merges an order's lines per product, sorted by product id: the order in which stock rows
/// are locked, so that concurrent reservations never deadlock. Empty orders and
/// non-positive quantities are errors (no valid order carries them).
pub fn merge_lines(items: &[OrderLine]) -> Result<Vec<Line>, String> {
    if items.is_empty() {
        return Err("the order has no lines".into());
    }
    let mut merged = BTreeMap::<Uuid, i64>::new();
    for item in items {
        if item.quantity <= 0 {
            return Err(format!(
                "quantity {} of product {} is not positive",
                item.quantity, item.product_id
            ));
        }
        *merged.entry(item.product_id).or_default() += i64::from(item.quantity);
    }
    Ok(merged
        .into_iter()
        .map(|(product_id, quantity)| Line {
            product_id,
            quantity,
        })
        .collect())
}

/// Whether the stock covers every line.
#[derive(Debug, PartialEq, Eq)]
pub enum Coverage {
    /// Every line can be reserved.
    Covered,
    /// These products have too little available stock.
    Short(Vec<Uuid>),
    /// These products have no stock row yet (their `product.created` is still on its way).
    Unknown(Vec<Uuid>),
}

/// Checks `lines` against the available quantity of each product. Unknown products win over
/// short ones: their stock may yet arrive, so the decision must wait.
pub fn coverage(lines: &[Line], available: &HashMap<Uuid, i64>) -> Coverage {
    let unknown: Vec<Uuid> = lines
        .iter()
        .filter(|l| !available.contains_key(&l.product_id))
        .map(|l| l.product_id)
        .collect();
    if !unknown.is_empty() {
        return Coverage::Unknown(unknown);
    }
    let short: Vec<Uuid> = lines
        .iter()
        .filter(|l| available[&l.product_id] < l.quantity)
        .map(|l| l.product_id)
        .collect();
    if short.is_empty() {
        Coverage::Covered
    } else {
        Coverage::Short(short)
    }
}

/// Where an order's reservation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Stock is held for the order.
    Reserved,
    /// The held stock was returned, or the release came before the order (a tombstone).
    Released,
    /// The reservation became a sale (the order was confirmed).
    Sold,
    /// The stock did not cover the order; nothing was held.
    Rejected,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 4] = [
        ReservationStatus::Reserved,
        ReservationStatus::Released,
        ReservationStatus::Sold,
        ReservationStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Released => "released",
            ReservationStatus::Sold => "sold",
            ReservationStatus::Rejected => "rejected",
        }
    }
}

shop_platform::named_variants!(ReservationStatus, String, |s: &str| format!(
    "unknown reservation status {s:?}"
));

/// The answer to an `order.created`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Reserved,
    Rejected { reason: String },
}

/// What a repeated (or late) `order.created` answers, given the reservation already there:
/// the same outcome as the first time, so the orchestrator can rely on any copy.
pub fn repeated_outcome(status: ReservationStatus, reason: Option<&str>) -> Outcome {
    match status {
        ReservationStatus::Reserved | ReservationStatus::Sold => Outcome::Reserved,
        ReservationStatus::Rejected => Outcome::Rejected {
            reason: reason.unwrap_or(REASON_OUT_OF_STOCK).to_string(),
        },
        ReservationStatus::Released => Outcome::Rejected {
            reason: reason.unwrap_or(REASON_RELEASED).to_string(),
        },
    }
}

/// A valid stock adjustment: a non-zero change of at most [`MAX_ADJUSTMENT`] either way, with
/// a reason of 1 to [`MAX_REASON_CHARS`] characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Adjustment {
    delta: i64,
    reason: String,
}

/// Why an adjustment is invalid.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdjustmentError {
    #[error("must not be zero")]
    ZeroDelta,
    #[error("must be between -{MAX_ADJUSTMENT} and {MAX_ADJUSTMENT}")]
    DeltaTooLarge,
    #[error("must not be blank")]
    BlankReason,
    #[error("must be at most {MAX_REASON_CHARS} characters")]
    ReasonTooLong,
    /// Control characters (NUL among them, which PostgreSQL cannot store in text) or
    /// bidirectional controls.
    #[error("must not contain control or bidirectional control characters")]
    ReasonUnprintable,
}

impl AdjustmentError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            AdjustmentError::ZeroDelta | AdjustmentError::DeltaTooLarge => "delta",
            AdjustmentError::BlankReason
            | AdjustmentError::ReasonTooLong
            | AdjustmentError::ReasonUnprintable => "reason",
        }
    }
}

impl Adjustment {
    /// Validates an adjustment; the reason is trimmed.
    pub fn parse(delta: i64, reason: &str) -> Result<Adjustment, AdjustmentError> {
        if delta == 0 {
            return Err(AdjustmentError::ZeroDelta);
        }
        if delta.unsigned_abs() > MAX_ADJUSTMENT.unsigned_abs() {
            return Err(AdjustmentError::DeltaTooLarge);
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(AdjustmentError::BlankReason);
        }
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(AdjustmentError::ReasonTooLong);
        }
        if reason.chars().any(char::is_control)
            || shop_platform::validation::has_bidi_controls(reason)
        {
            return Err(AdjustmentError::ReasonUnprintable);
        }
        Ok(Adjustment {
            delta,
            reason: reason.to_string(),
        })
    }

    pub fn delta(&self) -> i64 {
        self.delta
    }

    pub fn reason(&self) -> &str {
        &self.reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(product_id: Uuid, quantity: i32) -> OrderLine {
        OrderLine {
            product_id,
            name: String::new(),
            quantity,
            unit_price_cents: 100,
        }
    }

    #[test]
    fn lines_are_merged_per_product_in_id_order() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let merged = merge_lines(&[line(b, 1), line(a, 2), line(b, 3)]).unwrap();
        assert_eq!(
            merged,
            vec![
                Line {
                    product_id: a,
                    quantity: 2
                },
                Line {
                    product_id: b,
                    quantity: 4
                }
            ]
        );
    }

    #[test]
    fn empty_orders_and_non_positive_quantities_are_refused() {
        assert!(merge_lines(&[]).is_err());
        assert!(merge_lines(&[line(Uuid::now_v7(), 0)]).is_err());
        assert!(merge_lines(&[line(Uuid::now_v7(), -1)]).is_err());
    }

    #[test]
    fn merged_quantities_do_not_overflow() {
        let a = Uuid::now_v7();
        let merged = merge_lines(&[line(a, i32::MAX), line(a, i32::MAX)]).unwrap();
        assert_eq!(merged[0].quantity, 2 * i64::from(i32::MAX));
    }

    #[test]
    fn coverage_needs_every_line() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let lines = [
            Line {
                product_id: a,
                quantity: 2,
            },
            Line {
                product_id: b,
                quantity: 5,
            },
        ];
        let stock = HashMap::from([(a, 2), (b, 5)]);
        assert_eq!(coverage(&lines, &stock), Coverage::Covered);
        let stock = HashMap::from([(a, 2), (b, 4)]);
        assert_eq!(coverage(&lines, &stock), Coverage::Short(vec![b]));
        let stock = HashMap::from([(b, 0)]);
        assert_eq!(
            coverage(&lines, &stock),
            Coverage::Unknown(vec![a]),
            "unknown wins over short"
        );
    }

    #[test]
    fn repeated_orders_get_the_first_answer() {
        use ReservationStatus::*;
        assert_eq!(repeated_outcome(Reserved, None), Outcome::Reserved);
        assert_eq!(repeated_outcome(Sold, None), Outcome::Reserved);
        assert_eq!(
            repeated_outcome(Rejected, Some("out_of_stock")),
            Outcome::Rejected {
                reason: "out_of_stock".into()
            }
        );
        assert_eq!(
            repeated_outcome(Released, None),
            Outcome::Rejected {
                reason: "released".into()
            }
        );
    }

    #[test]
    fn statuses_round_trip() {
        shop_platform::testkit::assert_named_variants(&ReservationStatus::ALL);
    }

    #[test]
    fn unprintable_reasons_are_refused() {
        for reason in ["a\u{0}b", "tab\tbed", "x\u{202E}y"] {
            assert_eq!(
                Adjustment::parse(1, reason),
                Err(AdjustmentError::ReasonUnprintable),
                "{reason:?}"
            );
        }
    }

    #[test]
    fn adjustments_are_validated() {
        assert_eq!(Adjustment::parse(0, "x"), Err(AdjustmentError::ZeroDelta));
        assert_eq!(
            Adjustment::parse(1_000_001, "x"),
            Err(AdjustmentError::DeltaTooLarge)
        );
        assert_eq!(
            Adjustment::parse(-1_000_001, "x"),
            Err(AdjustmentError::DeltaTooLarge)
        );
        assert_eq!(
            Adjustment::parse(i64::MIN, "x"),
            Err(AdjustmentError::DeltaTooLarge)
        );
        assert_eq!(
            Adjustment::parse(5, "   "),
            Err(AdjustmentError::BlankReason)
        );
        assert_eq!(
            Adjustment::parse(5, &"é".repeat(201)),
            Err(AdjustmentError::ReasonTooLong)
        );
        let ok = Adjustment::parse(-1_000_000, &format!(" {} ", "é".repeat(200))).unwrap();
        assert_eq!((ok.delta(), ok.reason().chars().count()), (-1_000_000, 200));
        assert_eq!(AdjustmentError::BlankReason.field(), "reason");
        assert_eq!(AdjustmentError::ZeroDelta.field(), "delta");
    }
}
