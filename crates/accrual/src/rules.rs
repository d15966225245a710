//! Reward rules and the accrual computation: which rule a good matches and what an order earns.
//! Pure code, no HTTP and no shared state.

use std::fmt;

use rust_decimal::{Decimal, RoundingStrategy};

/// How a rule's `reward` turns into points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RewardType {
    /// `reward` percent of the good's price (`"%"` on the wire).
    Percent,
    /// `reward` points flat, whatever the price (`"pt"` on the wire).
    Points,
}

impl RewardType {
    /// The wire name: `%` or `pt`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Percent => "%",
            Self::Points => "pt",
        }
    }
}

impl fmt::Display for RewardType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reward rule: a good whose description contains `pattern` earns `reward` of `reward_type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The text to look for in a good's description (plain, case-sensitive substring).
    pub pattern: String,
    /// The reward: a percentage or a number of points, never negative.
    pub reward: Decimal,
    /// How `reward` is applied.
    pub reward_type: RewardType,
}

impl Rule {
    /// Whether this rule applies to a good with `description`.
    #[must_use]
    pub fn matches(&self, description: &str) -> bool {
        description.contains(&self.pattern)
    }

    /// What this rule earns for a good of `price`, unrounded; `None` when it does not fit a
    /// decimal.
    #[must_use]
    pub fn reward_for(&self, price: Decimal) -> Option<Decimal> {
        match self.reward_type {
            RewardType::Percent => price
                .checked_mul(self.reward)
                .and_then(|product| product.checked_div(Decimal::ONE_HUNDRED)),
            RewardType::Points => Some(self.reward),
        }
    }
}

/// One purchased good of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Good {
    /// What the good is; rules are matched against it.
    pub description: String,
    /// What it cost, never negative.
    pub price: Decimal,
}

/// Why an order's accrual cannot be computed; such an order ends `INVALID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ComputationError {
    /// The order lists no goods at all.
    #[error("the order has no goods")]
    NoGoods,
    /// An intermediate amount does not fit a decimal.
    #[error("the accrual is too large to compute")]
    Overflow,
}

/// The first rule, in the order given (registration order), that applies to `description`.
#[must_use]
pub fn matching_rule<'a>(description: &str, rules: &'a [Rule]) -> Option<&'a Rule> {
    rules.iter().find(|rule| rule.matches(description))
}

/// The accrual of an order: for each good, the reward of the first rule that matches it (none
/// matching earns 0), summed exactly and rounded half away from zero to two places at the end.
/// The result carries no trailing zeros (`12.50` comes out as `12.5`).
///
/// # Errors
/// [`ComputationError::NoGoods`] for an empty list of goods, [`ComputationError::Overflow`]
/// when an amount does not fit a decimal.
pub fn compute_accrual(goods: &[Good], rules: &[Rule]) -> Result<Decimal, ComputationError> {
    if goods.is_empty() {
        return Err(ComputationError::NoGoods);
    }
    let mut total = Decimal::ZERO;
    for good in goods {
        if let Some(rule) = matching_rule(&good.description, rules) {
            let reward = rule
                .reward_for(good.price)
                .ok_or(ComputationError::Overflow)?;
            total = total
                .checked_add(reward)
                .ok_or(ComputationError::Overflow)?;
        }
    }
    Ok(round_points(total))
}

/// Rounds an amount half away from zero to two decimal places and drops trailing zeros.
#[must_use]
pub fn round_points(amount: Decimal) -> Decimal {
    amount
        .round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    use super::*;

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
    fn percent_rule_earns_share_of_price() {
        let rules = [rule("Bork", dec!(10), RewardType::Percent)];
        let accrual = compute_accrual(&[good("Bork kettle", dec!(7000))], &rules);
        assert_eq!(accrual, Ok(dec!(700)));
    }

    #[test]
    fn points_rule_earns_flat_reward_whatever_the_price() {
        let rules = [rule("Bork", dec!(42.5), RewardType::Points)];
        for price in [dec!(0), dec!(1), dec!(999999.99)] {
            assert_eq!(
                compute_accrual(&[good("Bork", price)], &rules),
                Ok(dec!(42.5))
            );
        }
    }

    #[test]
    fn good_matching_no_rule_earns_nothing() {
        let rules = [rule("Bork", dec!(10), RewardType::Percent)];
        assert_eq!(
            compute_accrual(&[good("LG fridge", dec!(50000))], &rules),
            Ok(Decimal::ZERO)
        );
        assert_eq!(
            compute_accrual(&[good("anything", dec!(50000))], &[]),
            Ok(Decimal::ZERO)
        );
    }

    #[test]
    fn rule_matches_a_substring_anywhere_in_the_description() {
        let bork = rule("Bork", dec!(1), RewardType::Points);
        assert!(bork.matches("Bork"));
        assert!(bork.matches("Чайник Bork S500"));
        assert!(bork.matches("xBorkx"));
        assert!(!bork.matches("bork kettle"));
        assert!(!bork.matches("BORK"));
        assert!(!bork.matches("Bor k"));
    }

    #[test]
    fn first_registered_matching_rule_wins() {
        let rules = [
            rule("Bork", dec!(10), RewardType::Percent),
            rule("Bork S500", dec!(100), RewardType::Points),
            rule("kettle", dec!(50), RewardType::Percent),
        ];
        let chosen = matching_rule("Bork S500 kettle", &rules).expect("a rule matches");
        assert_eq!(chosen.pattern, "Bork");
        assert_eq!(
            compute_accrual(&[good("Bork S500 kettle", dec!(1000))], &rules),
            Ok(dec!(100))
        );
        let reordered = [rules[1].clone(), rules[0].clone()];
        assert_eq!(
            compute_accrual(&[good("Bork S500 kettle", dec!(7))], &reordered),
            Ok(dec!(100))
        );
        assert_eq!(
            compute_accrual(&[good("Bork S500 kettle", dec!(7))], &rules),
            Ok(dec!(0.7))
        );
    }

    #[test]
    fn worked_example_with_percent_and_points_comes_to_27_25() {
        let rules = [
            rule("Pringles", dec!(10), RewardType::Percent),
            rule("Coca-Cola", dec!(12.5), RewardType::Points),
        ];
        let goods = [
            good("kettle", dec!(7000)),
            good("Pringles chips", dec!(147.5)),
            good("Coca-Cola", dec!(55)),
        ];
        let accrual = compute_accrual(&goods, &rules).expect("computable");
        assert_eq!(accrual, dec!(27.25));
        assert_eq!(accrual.to_string(), "27.25");
    }

    #[test]
    fn worked_example_at_five_percent_rounds_729_975_up_to_729_98() {
        let rules = [rule("Bork", dec!(5), RewardType::Percent)];
        let accrual =
            compute_accrual(&[good("Bork kettle", dec!(14599.50))], &rules).expect("computable");
        assert_eq!(accrual, dec!(729.98));
        assert_eq!(accrual.to_string(), "729.98");
    }

    #[test]
    fn rounding_is_half_away_from_zero_at_two_places() {
        assert_eq!(round_points(dec!(0.005)), dec!(0.01));
        assert_eq!(round_points(dec!(0.004999)), dec!(0));
        assert_eq!(round_points(dec!(2.345)), dec!(2.35));
        assert_eq!(round_points(dec!(2.355)), dec!(2.36));
        assert_eq!(round_points(dec!(2.3449)), dec!(2.34));
        assert_eq!(round_points(dec!(-2.345)), dec!(-2.35));
    }

    #[test]
    fn rounding_happens_once_on_the_exact_sum() {
        let rules = [rule("x", dec!(1), RewardType::Percent)];
        let goods = [good("x", dec!(0.5)), good("x", dec!(0.5))];
        assert_eq!(compute_accrual(&goods, &rules), Ok(dec!(0.01)));
        let goods = [
            good("x", dec!(0.4)),
            good("x", dec!(0.4)),
            good("x", dec!(0.4)),
        ];
        assert_eq!(compute_accrual(&goods, &rules), Ok(dec!(0.01)));
    }

    #[test]
    fn trailing_zeros_are_dropped() {
        let rules = [rule("x", dec!(12.50), RewardType::Points)];
        let accrual = compute_accrual(&[good("x", dec!(1))], &rules).expect("computable");
        assert_eq!(accrual.to_string(), "12.5");
        let rules = [rule("x", dec!(10), RewardType::Percent)];
        let accrual = compute_accrual(&[good("x", dec!(1000.00))], &rules).expect("computable");
        assert_eq!(accrual.to_string(), "100");
    }

    #[test]
    fn order_without_goods_cannot_be_computed() {
        let rules = [rule("x", dec!(1), RewardType::Points)];
        assert_eq!(compute_accrual(&[], &rules), Err(ComputationError::NoGoods));
    }

    #[test]
    fn amounts_too_large_for_a_decimal_cannot_be_computed() {
        let rules = [rule("x", Decimal::MAX, RewardType::Points)];
        let goods = [good("x", dec!(1)), good("x", dec!(1))];
        assert_eq!(
            compute_accrual(&goods, &rules),
            Err(ComputationError::Overflow)
        );
        let rules = [rule("x", Decimal::MAX, RewardType::Percent)];
        assert_eq!(
            compute_accrual(&[good("x", Decimal::MAX)], &rules),
            Err(ComputationError::Overflow)
        );
    }

    fn price() -> impl Strategy<Value = Decimal> {
        (0i64..100_000_000, 0u32..=2).prop_map(|(units, scale)| Decimal::new(units, scale))
    }

    fn goods() -> impl Strategy<Value = Vec<Good>> {
        let description = prop::sample::select(vec![
            "Bork kettle",
            "Pringles chips",
            "Coca-Cola",
            "LG fridge",
            "Bork Pringles",
            "",
        ]);
        prop::collection::vec(
            (description, price()).prop_map(|(description, price)| good(description, price)),
            1..20,
        )
    }

    proptest! {
        #[test]
        fn accrual_does_not_depend_on_the_order_of_goods(
            (goods, shuffled) in goods().prop_flat_map(|goods| {
                let shuffled = Just(goods.clone()).prop_shuffle();
                (Just(goods), shuffled)
            })
        ) {
            let rules = [
                rule("Bork", dec!(7.5), RewardType::Percent),
                rule("Pringles", dec!(12.5), RewardType::Points),
                rule("Coca", dec!(33.33), RewardType::Percent),
            ];
            prop_assert_eq!(compute_accrual(&goods, &rules), compute_accrual(&shuffled, &rules));
        }

        #[test]
        fn accrual_is_never_negative_and_has_at_most_two_places(goods in goods()) {
            let rules = [
                rule("Bork", dec!(7.5), RewardType::Percent),
                rule("Coca", dec!(0.333), RewardType::Points),
            ];
            let accrual = compute_accrual(&goods, &rules).expect("small amounts are computable");
            prop_assert!(accrual >= Decimal::ZERO);
            prop_assert!(accrual.scale() <= 2);
        }
    }
}
