//! Payment rules, free of I/O: the states of a payment and what a repeated request or a
//! refund request does in each.

/// Where a payment stands. `Pending` only while a slow provider has not answered yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentStatus {
    Pending,
    Captured,
    Declined,
    Refunded,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 4] = [
        PaymentStatus::Pending,
        PaymentStatus::Captured,
        PaymentStatus::Declined,
        PaymentStatus::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Captured => "captured",
            PaymentStatus::Declined => "declined",
            PaymentStatus::Refunded => "refunded",
        }
    }
}

shop_platform::named_variants!(PaymentStatus, String, |s: &str| format!(
    "unknown payment status {s:?}"
));

/// What a repeated `payment.requested` answers for an order that already has a payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RepeatAnswer {
    /// Re-send `payment.succeeded` (the first result).
    Succeeded,
    /// Re-send `payment.failed` with the decline code.
    Failed { reason: String },
    /// Say nothing: still pending (the capture will answer), or refunded (the money went
    /// back; announcing a success again would be a lie).
    Nothing,
}

pub fn repeated_request(status: PaymentStatus, decline_code: Option<&str>) -> RepeatAnswer {
    match status {
        PaymentStatus::Captured => RepeatAnswer::Succeeded,
        PaymentStatus::Declined => RepeatAnswer::Failed {
            reason: decline_code
                .unwrap_or(crate::provider::CODE_CARD_DECLINED)
                .to_string(),
        },
        PaymentStatus::Pending | PaymentStatus::Refunded => RepeatAnswer::Nothing,
    }
}

/// What a `payment.refund_requested` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundDecision {
    /// Captured: refund it and announce `payment.refunded`.
    Refund,
    /// Refunded before: announce `payment.refunded` again, move no money.
    AlreadyRefunded,
    /// Not captured yet: a capture cannot be undone before it happened; try again later.
    NotYetCaptured,
    /// Declined: no money was taken, there is nothing to refund.
    NothingTaken,
}

pub fn refund(status: PaymentStatus) -> RefundDecision {
    match status {
        PaymentStatus::Captured => RefundDecision::Refund,
        PaymentStatus::Refunded => RefundDecision::AlreadyRefunded,
        PaymentStatus::Pending => RefundDecision::NotYetCaptured,
        PaymentStatus::Declined => RefundDecision::NothingTaken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        shop_platform::testkit::assert_named_variants(&PaymentStatus::ALL);
    }

    #[test]
    fn a_repeated_request_gets_the_first_final_answer_only() {
        use PaymentStatus::*;
        assert_eq!(repeated_request(Captured, None), RepeatAnswer::Succeeded);
        assert_eq!(
            repeated_request(Declined, Some("random_decline")),
            RepeatAnswer::Failed {
                reason: "random_decline".into()
            }
        );
        assert_eq!(repeated_request(Pending, None), RepeatAnswer::Nothing);
        assert_eq!(
            repeated_request(Refunded, None),
            RepeatAnswer::Nothing,
            "never a success after a refund"
        );
    }

    #[test]
    fn only_captured_money_is_refunded_and_only_once() {
        use PaymentStatus::*;
        assert_eq!(refund(Captured), RefundDecision::Refund);
        assert_eq!(refund(Refunded), RefundDecision::AlreadyRefunded);
        assert_eq!(refund(Pending), RefundDecision::NotYetCaptured);
        assert_eq!(refund(Declined), RefundDecision::NothingTaken);
    }
}
