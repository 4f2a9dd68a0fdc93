//! Simulated payment provider. The decision is a pure function of the configuration,
//! the payment token and one random draw, so every rule is unit-testable; the caller
//! sleeps for `Plan::delay` and then reports `Plan::outcome`.

use std::time::Duration;

/// Always declined with [`CODE_CARD_DECLINED`].
pub const TOKEN_DECLINE: &str = "tok_decline";
/// Succeeds, but only after [`ProviderConfig::timeout_token_delay`] (past the saga deadline).
pub const TOKEN_TIMEOUT: &str = "tok_timeout";
/// Decline code for [`TOKEN_DECLINE`].
pub const CODE_CARD_DECLINED: &str = "card_declined";
/// Decline code for declines injected by [`ProviderConfig::failure_rate`].
pub const CODE_RANDOM_DECLINE: &str = "random_decline";

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Probability in `0.0..=1.0` that an ordinary token is declined (load tests).
    pub failure_rate: f64,
    /// Fixed latency of every answer except `tok_timeout`.
    pub latency: Duration,
    /// How long `tok_timeout` takes; the caller passes the saga deadline plus a margin.
    pub timeout_token_delay: Duration,
}

impl ProviderConfig {
    /// Checks that `failure_rate` is a number in `0.0..=1.0`.
    pub fn validate(&self) -> Result<(), String> {
        if (0.0..=1.0).contains(&self.failure_rate) {
            Ok(())
        } else {
            Err(format!(
                "payment failure rate must be within 0.0..=1.0, got {}",
                self.failure_rate
            ))
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured,
    Declined { code: &'static str },
}

/// What the provider will do for one charge: wait `delay`, then answer `outcome`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub delay: Duration,
    pub outcome: ChargeOutcome,
}

/// Decide what the provider will do for a charge; pure given the random draw `roll` in [0,1).
///
/// * `tok_timeout`: captured after `timeout_token_delay` (never randomly declined);
/// * `tok_decline`: declined `card_declined` after `latency`;
/// * otherwise: declined `random_decline` if `roll < failure_rate`, else captured,
///   after `latency`. A rate of 0 never declines, a rate of 1 always does.
pub fn plan_charge(cfg: &ProviderConfig, token: &str, roll: f64) -> Plan {
    match token {
        TOKEN_TIMEOUT => Plan {
            delay: cfg.timeout_token_delay,
            outcome: ChargeOutcome::Captured,
        },
        TOKEN_DECLINE => Plan {
            delay: cfg.latency,
            outcome: ChargeOutcome::Declined {
                code: CODE_CARD_DECLINED,
            },
        },
        _ => Plan {
            delay: cfg.latency,
            outcome: if roll < cfg.failure_rate {
                ChargeOutcome::Declined {
                    code: CODE_RANDOM_DECLINE,
                }
            } else {
                ChargeOutcome::Captured
            },
        },
    }
}

/// A uniform draw in `[0, 1)` for [`plan_charge`].
pub fn random_roll() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(failure_rate: f64) -> ProviderConfig {
        ProviderConfig {
            failure_rate,
            latency: Duration::from_millis(25),
            timeout_token_delay: Duration::from_secs(40),
        }
    }

    #[test]
    fn ordinary_token_is_captured_after_latency() {
        let p = plan_charge(&cfg(0.0), "tok_visa", 0.0);
        assert_eq!(
            p,
            Plan {
                delay: Duration::from_millis(25),
                outcome: ChargeOutcome::Captured
            }
        );
        // Empty or unknown tokens are just "any other token".
        assert_eq!(
            plan_charge(&cfg(0.0), "", 0.5).outcome,
            ChargeOutcome::Captured
        );
    }

    #[test]
    fn decline_token_is_declined_card_declined() {
        for rate in [0.0, 0.5, 1.0] {
            for roll in [0.0, 0.99] {
                let p = plan_charge(&cfg(rate), TOKEN_DECLINE, roll);
                assert_eq!(
                    p.outcome,
                    ChargeOutcome::Declined {
                        code: "card_declined"
                    }
                );
                assert_eq!(p.delay, Duration::from_millis(25));
            }
        }
    }

    #[test]
    fn timeout_token_is_captured_late() {
        for rate in [0.0, 1.0] {
            let p = plan_charge(&cfg(rate), "tok_timeout", 0.0);
            assert_eq!(p.outcome, ChargeOutcome::Captured);
            assert_eq!(p.delay, Duration::from_secs(40));
        }
    }

    #[test]
    fn tokens_are_exact_matches() {
        for t in [
            "TOK_DECLINE",
            "tok_decline ",
            "tok_timeout2",
            "tok_declined",
        ] {
            let p = plan_charge(&cfg(0.0), t, 0.3);
            assert_eq!(p.outcome, ChargeOutcome::Captured, "{t:?}");
            assert_eq!(p.delay, Duration::from_millis(25));
        }
    }

    #[test]
    fn failure_rate_threshold() {
        let declined = ChargeOutcome::Declined {
            code: "random_decline",
        };
        let c = cfg(0.3);
        assert_eq!(plan_charge(&c, "tok_ok", 0.0).outcome, declined);
        assert_eq!(plan_charge(&c, "tok_ok", 0.29).outcome, declined);
        assert_eq!(
            plan_charge(&c, "tok_ok", 0.3).outcome,
            ChargeOutcome::Captured
        );
        assert_eq!(
            plan_charge(&c, "tok_ok", 0.99).outcome,
            ChargeOutcome::Captured
        );
        assert_eq!(plan_charge(&c, "tok_ok", 0.0).delay, c.latency);
    }

    #[test]
    fn failure_rate_extremes() {
        let rolls = [0.0, 0.25, 0.5, 0.999_999];
        for roll in rolls {
            assert_eq!(
                plan_charge(&cfg(0.0), "tok_ok", roll).outcome,
                ChargeOutcome::Captured
            );
            assert_eq!(
                plan_charge(&cfg(1.0), "tok_ok", roll).outcome,
                ChargeOutcome::Declined {
                    code: "random_decline"
                }
            );
        }
    }

    #[test]
    fn random_roll_in_unit_interval_and_rate_is_roughly_respected() {
        let c = cfg(0.25);
        let n = 20_000;
        let mut declined = 0;
        for _ in 0..n {
            let r = random_roll();
            assert!((0.0..1.0).contains(&r));
            if plan_charge(&c, "tok_ok", r).outcome != ChargeOutcome::Captured {
                declined += 1;
            }
        }
        let rate = declined as f64 / n as f64;
        assert!((0.2..0.3).contains(&rate), "observed rate {rate}");
    }

    #[test]
    fn validate_failure_rate() {
        assert!(cfg(0.0).validate().is_ok());
        assert!(cfg(1.0).validate().is_ok());
        assert!(cfg(0.5).validate().is_ok());
        assert!(cfg(-0.1).validate().is_err());
        assert!(cfg(1.01).validate().is_err());
        assert!(cfg(f64::NAN).validate().is_err());
    }
}
