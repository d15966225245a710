//! The in-memory state of the accrual system: reward rules in registration order and registered
//! orders. An order's status is a function of the time elapsed since its registration, so every
//! method that depends on time takes `now` and tests can pass any instant they like.
//!
//! The accrual is computed once, when the order is registered, from the rules known at that
//! moment: rules registered later never change what an earlier order earns.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;

use crate::luhn::is_valid_order_number;
use crate::rules::{compute_accrual, Good, Rule};

/// Where an order is in its life cycle, as `GET /api/orders/{number}` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Known, not computed yet.
    Registered,
    /// Being computed.
    Processing,
    /// Final: the accrual could not be computed (the order lists no goods).
    Invalid,
    /// Final: the accrual is known.
    Processed,
}

impl OrderStatus {
    /// The wire name: `REGISTERED`, `PROCESSING`, `INVALID` or `PROCESSED`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "REGISTERED",
            Self::Processing => "PROCESSING",
            Self::Invalid => "INVALID",
            Self::Processed => "PROCESSED",
        }
    }

    /// Whether the status never changes again.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, Self::Invalid | Self::Processed)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the accrual system says about one registered order at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    /// The order number.
    pub number: String,
    /// The status at that moment.
    pub status: OrderStatus,
    /// The reward; only for a `PROCESSED` order that earned more than zero.
    pub accrual: Option<Decimal>,
}

/// Why a reward rule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddRuleError {
    /// The `match` text is empty.
    #[error("the match text is empty")]
    EmptyMatch,
    /// The reward is below zero.
    #[error("the reward is negative")]
    NegativeReward,
    /// A rule with the same `match` text is already registered.
    #[error("a rule for {0:?} is already registered")]
    Duplicate(String),
}

/// Why an order was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterOrderError {
    /// The number is not all digits or fails the Luhn checksum.
    #[error("the order number {0:?} is not digits with a valid Luhn checksum")]
    InvalidNumber(String),
    /// A good has a price below zero.
    #[error("the price of {0:?} is negative")]
    NegativePrice(String),
    /// The order is already registered.
    #[error("the order {0} is already registered")]
    Duplicate(String),
}

/// How an order ends once processing is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Processed(Decimal),
    Invalid,
}

#[derive(Debug, Clone, Copy)]
struct OrderRecord {
    registered_at: Instant,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct RuleBook {
    rules: Vec<Rule>,
    patterns: HashSet<String>,
}

/// The rules and orders, safe to share between request handlers. Locks are held only for the
/// duration of one method call and never across an `.await`.
#[derive(Debug)]
pub struct Store {
    processing_delay: Duration,
    rules: Mutex<RuleBook>,
    orders: RwLock<HashMap<String, OrderRecord>>,
}

/// The status of an order registered at `registered_at`, at `now`: `REGISTERED` for the first
/// `delay`, `PROCESSING` for the next `delay`, then `final_status`. With a zero `delay` the
/// order is final from the start.
#[must_use]
pub fn status_at(
    registered_at: Instant,
    now: Instant,
    delay: Duration,
    final_status: OrderStatus,
) -> OrderStatus {
    let elapsed = now.saturating_duration_since(registered_at);
    if elapsed < delay {
        OrderStatus::Registered
    } else if elapsed < delay.saturating_mul(2) {
        OrderStatus::Processing
    } else {
        final_status
    }
}

impl Store {
    /// An empty store whose orders spend `processing_delay` as `REGISTERED`, then as long
    /// again as `PROCESSING`, before they are final.
    #[must_use]
    pub fn new(processing_delay: Duration) -> Self {
        Self {
            processing_delay,
            rules: Mutex::new(RuleBook::default()),
            orders: RwLock::new(HashMap::new()),
        }
    }

    /// How long an order stays in each of `REGISTERED` and `PROCESSING`.
    #[must_use]
    pub fn processing_delay(&self) -> Duration {
        self.processing_delay
    }

    /// Registers a reward rule after the ones already known.
    ///
    /// # Errors
    /// [`AddRuleError`] for an empty `match`, a negative reward, or a `match` already registered.
    pub fn add_rule(&self, rule: Rule) -> Result<(), AddRuleError> {
        if rule.pattern.is_empty() {
            return Err(AddRuleError::EmptyMatch);
        }
        if rule.reward < Decimal::ZERO {
            return Err(AddRuleError::NegativeReward);
        }
        let mut book = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        if !book.patterns.insert(rule.pattern.clone()) {
            return Err(AddRuleError::Duplicate(rule.pattern));
        }
        book.rules.push(rule);
        Ok(())
    }

    /// The rules in registration order.
    #[must_use]
    pub fn rules(&self) -> Vec<Rule> {
        self.rules
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .rules
            .clone()
    }

    /// Registers an order at `now` and computes its accrual from the rules known now.
    ///
    /// # Errors
    /// [`RegisterOrderError`] for a malformed number, a negative price, or a number already
    /// registered.
    pub fn register_order(
        &self,
        number: String,
        goods: &[Good],
        now: Instant,
    ) -> Result<(), RegisterOrderError> {
        if !is_valid_order_number(&number) {
            return Err(RegisterOrderError::InvalidNumber(number));
        }
        if let Some(good) = goods.iter().find(|good| good.price < Decimal::ZERO) {
            return Err(RegisterOrderError::NegativePrice(good.description.clone()));
        }
        if self.order_exists(&number) {
            return Err(RegisterOrderError::Duplicate(number));
        }
        let outcome = {
            let book = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
            match compute_accrual(goods, &book.rules) {
                Ok(accrual) => Outcome::Processed(accrual),
                Err(_) => Outcome::Invalid,
            }
        };
        let mut orders = self.orders.write().unwrap_or_else(PoisonError::into_inner);
        match orders.entry(number) {
            Entry::Occupied(entry) => Err(RegisterOrderError::Duplicate(entry.key().clone())),
            Entry::Vacant(entry) => {
                entry.insert(OrderRecord {
                    registered_at: now,
                    outcome,
                });
                Ok(())
            }
        }
    }

    fn order_exists(&self, number: &str) -> bool {
        self.orders
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(number)
    }

    /// What is known about order `number` at `now`, or `None` when it is not registered.
    #[must_use]
    pub fn order(&self, number: &str, now: Instant) -> Option<OrderView> {
        let record = *self
            .orders
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(number)?;
        let final_status = match record.outcome {
            Outcome::Processed(_) => OrderStatus::Processed,
            Outcome::Invalid => OrderStatus::Invalid,
        };
        let status = status_at(
            record.registered_at,
            now,
            self.processing_delay,
            final_status,
        );
        let accrual = match (status, record.outcome) {
            (OrderStatus::Processed, Outcome::Processed(accrual)) if !accrual.is_zero() => {
                Some(accrual)
            }
            _ => None,
        };
        Some(OrderView {
            number: number.to_owned(),
            status,
            accrual,
        })
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;
    use crate::rules::RewardType;

    const DELAY: Duration = Duration::from_millis(100);

    fn rule(pattern: &str, reward: Decimal, reward_type: RewardType) -> Rule {
        Rule {
            pattern: pattern.to_owned(),
            reward,
            reward_type,
        }
    }

    fn good(description: &str, price: Decimal) -> Good {
        Good {
            description: description.to_owned(),
            price,
        }
    }

    #[test]
    fn status_goes_registered_then_processing_then_final_as_time_passes() {
        let start = Instant::now();
        let status = |after| status_at(start, start + after, DELAY, OrderStatus::Processed);
        assert_eq!(status(Duration::ZERO), OrderStatus::Registered);
        assert_eq!(status(Duration::from_millis(99)), OrderStatus::Registered);
        assert_eq!(status(Duration::from_millis(100)), OrderStatus::Processing);
        assert_eq!(status(Duration::from_millis(199)), OrderStatus::Processing);
        assert_eq!(status(Duration::from_millis(200)), OrderStatus::Processed);
        assert_eq!(status(Duration::from_secs(3600)), OrderStatus::Processed);
    }

    #[test]
    fn zero_delay_makes_orders_final_at_once() {
        let start = Instant::now();
        assert_eq!(
            status_at(start, start, Duration::ZERO, OrderStatus::Invalid),
            OrderStatus::Invalid
        );
    }

    #[test]
    fn registered_order_reports_its_accrual_only_once_processed() {
        let store = Store::new(DELAY);
        store
            .add_rule(rule("Bork", dec!(10), RewardType::Percent))
            .expect("new rule");
        let start = Instant::now();
        store
            .register_order(
                "12345678903".to_owned(),
                &[good("Bork kettle", dec!(7000))],
                start,
            )
            .expect("new order");
        let at = |millis| {
            store
                .order("12345678903", start + Duration::from_millis(millis))
                .expect("registered")
        };
        assert_eq!(at(0).status, OrderStatus::Registered);
        assert_eq!(at(0).accrual, None);
        assert_eq!(at(150).status, OrderStatus::Processing);
        assert_eq!(at(150).accrual, None);
        assert_eq!(
            at(200),
            OrderView {
                number: "12345678903".to_owned(),
                status: OrderStatus::Processed,
                accrual: Some(dec!(700)),
            }
        );
    }

    #[test]
    fn unknown_order_is_absent() {
        let store = Store::new(DELAY);
        assert_eq!(store.order("12345678903", Instant::now()), None);
    }

    #[test]
    fn order_without_goods_ends_invalid() {
        let store = Store::new(Duration::ZERO);
        let now = Instant::now();
        store
            .register_order("12345678903".to_owned(), &[], now)
            .expect("new order");
        let view = store.order("12345678903", now).expect("registered");
        assert_eq!(view.status, OrderStatus::Invalid);
        assert_eq!(view.accrual, None);
    }

    #[test]
    fn order_matching_no_rule_is_processed_without_accrual() {
        let store = Store::new(Duration::ZERO);
        store
            .add_rule(rule("Bork", dec!(10), RewardType::Percent))
            .expect("new rule");
        let now = Instant::now();
        store
            .register_order("12345678903".to_owned(), &[good("LG", dec!(100))], now)
            .expect("new order");
        let view = store.order("12345678903", now).expect("registered");
        assert_eq!(view.status, OrderStatus::Processed);
        assert_eq!(view.accrual, None);
    }

    #[test]
    fn rules_registered_after_an_order_do_not_change_its_accrual() {
        let store = Store::new(DELAY);
        let start = Instant::now();
        store
            .register_order("12345678903".to_owned(), &[good("Bork", dec!(100))], start)
            .expect("new order");
        store
            .add_rule(rule("Bork", dec!(10), RewardType::Percent))
            .expect("new rule");
        let view = store
            .order("12345678903", start + DELAY * 2)
            .expect("registered");
        assert_eq!(view.status, OrderStatus::Processed);
        assert_eq!(view.accrual, None);
    }

    #[test]
    fn rule_with_an_existing_match_is_refused() {
        let store = Store::new(DELAY);
        store
            .add_rule(rule("Bork", dec!(10), RewardType::Percent))
            .expect("new rule");
        assert_eq!(
            store.add_rule(rule("Bork", dec!(5), RewardType::Points)),
            Err(AddRuleError::Duplicate("Bork".to_owned()))
        );
        store
            .add_rule(rule("bork", dec!(5), RewardType::Points))
            .expect("matches are compared exactly");
        assert_eq!(store.rules().len(), 2);
        assert_eq!(store.rules()[0].reward, dec!(10));
    }

    #[test]
    fn rule_with_empty_match_or_negative_reward_is_refused() {
        let store = Store::new(DELAY);
        assert_eq!(
            store.add_rule(rule("", dec!(10), RewardType::Percent)),
            Err(AddRuleError::EmptyMatch)
        );
        assert_eq!(
            store.add_rule(rule("Bork", dec!(-0.01), RewardType::Points)),
            Err(AddRuleError::NegativeReward)
        );
        store
            .add_rule(rule("Bork", dec!(0), RewardType::Points))
            .expect("a zero reward is allowed");
    }

    #[test]
    fn order_registered_twice_is_refused_and_keeps_the_first_goods() {
        let store = Store::new(Duration::ZERO);
        store
            .add_rule(rule("x", dec!(1), RewardType::Points))
            .expect("new rule");
        let now = Instant::now();
        store
            .register_order("12345678903".to_owned(), &[good("x", dec!(1))], now)
            .expect("new order");
        assert_eq!(
            store.register_order("12345678903".to_owned(), &[], now),
            Err(RegisterOrderError::Duplicate("12345678903".to_owned()))
        );
        assert_eq!(
            store.order("12345678903", now).expect("registered").accrual,
            Some(dec!(1))
        );
    }

    #[test]
    fn order_with_bad_number_or_negative_price_is_refused() {
        let store = Store::new(DELAY);
        let now = Instant::now();
        assert_eq!(
            store.register_order("12345678902".to_owned(), &[], now),
            Err(RegisterOrderError::InvalidNumber("12345678902".to_owned()))
        );
        assert_eq!(
            store.register_order("abc".to_owned(), &[], now),
            Err(RegisterOrderError::InvalidNumber("abc".to_owned()))
        );
        assert_eq!(
            store.register_order("12345678903".to_owned(), &[good("x", dec!(-1))], now),
            Err(RegisterOrderError::NegativePrice("x".to_owned()))
        );
        assert_eq!(store.order("12345678903", now), None);
    }
}
