//! Money: an exact, non-negative amount of points with at most two decimal places.
//! One point is worth one rouble.

use std::fmt;

use rust_decimal::Decimal;

/// Amounts are stored as `NUMERIC(20, 2)`: at most 18 digits before the decimal point.
const MAX_INTEGER_DIGITS: u32 = 18;

/// An exact, non-negative amount with at most two decimal places that fits `NUMERIC(20, 2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(Decimal);

/// Why a decimal is not an amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("the amount is negative")]
    Negative,
    #[error("the amount has more than two decimal places")]
    TooPrecise,
    #[error("the amount is too large")]
    TooLarge,
}

impl Money {
    /// Zero points (`0.00`, with the scale of every amount).
    pub const ZERO: Self = Self(Decimal::from_parts(0, 0, 0, false, 2));

    /// Accepts a decimal that is non-negative, has at most two significant decimal places and
    /// fits `NUMERIC(20, 2)`. Trailing zeros do not count as places: `1.500` is `1.50`.
    ///
    /// # Errors
    /// Returns the rule the value breaks.
    pub fn new(value: Decimal) -> Result<Self, MoneyError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(MoneyError::Negative);
        }
        let normalized = value.normalize();
        if normalized.scale() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        if normalized.trunc() >= Decimal::from(10u64.pow(MAX_INTEGER_DIGITS)) {
            return Err(MoneyError::TooLarge);
        }
        let mut exact = normalized.abs();
        exact.rescale(2);
        Ok(Self(exact))
    }

    /// Rounds a computed amount half away from zero to two places (how the accrual system
    /// rounds), then validates it as [`Money::new`] does.
    ///
    /// # Errors
    /// As [`Money::new`], apart from precision.
    pub fn rounded(value: Decimal) -> Result<Self, MoneyError> {
        Self::new(
            value.round_dp_with_strategy(2, rust_decimal::RoundingStrategy::MidpointAwayFromZero),
        )
    }

    /// The exact amount, always with scale 2.
    #[must_use]
    pub fn amount(self) -> Decimal {
        self.0
    }

    /// Whether this is zero points.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }

    /// The sum of two amounts, or `None` when it would not fit.
    #[must_use]
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0
            .checked_add(other.0)
            .and_then(|sum| Self::new(sum).ok())
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl TryFrom<Decimal> for Money {
    type Error = MoneyError;

    fn try_from(value: Decimal) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl Default for Money {
    fn default() -> Self {
        Self::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    #[test]
    fn zero_has_the_scale_of_every_amount() {
        assert_eq!(Money::ZERO.amount().to_string(), "0.00");
        assert_eq!(Money::default(), Money::ZERO);
        assert_eq!(Money::default().amount().scale(), 2);
        assert_eq!(Money::new(Decimal::ZERO), Ok(Money::ZERO));
    }

    #[test]
    fn keeps_two_places_exactly() {
        let money = Money::new(dec!(729.98)).expect("valid");
        assert_eq!(money.amount().to_string(), "729.98");
        assert_eq!(
            Money::new(dec!(42)).expect("valid").amount().to_string(),
            "42.00"
        );
        assert_eq!(Money::new(dec!(1.500)).expect("valid").amount(), dec!(1.50));
    }

    #[test]
    fn rejects_negative_too_precise_and_too_large_amounts() {
        assert_eq!(Money::new(dec!(-0.01)), Err(MoneyError::Negative));
        assert_eq!(Money::new(dec!(0.001)), Err(MoneyError::TooPrecise));
        assert_eq!(
            Money::new(dec!(1000000000000000000)),
            Err(MoneyError::TooLarge)
        );
        assert!(Money::new(dec!(999999999999999999.99)).is_ok());
    }

    #[test]
    fn negative_zero_is_zero() {
        assert_eq!(Money::new(dec!(-0.00)), Ok(Money::ZERO));
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(
            Money::rounded(dec!(729.975)).map(Money::amount),
            Ok(dec!(729.98))
        );
        assert_eq!(
            Money::rounded(dec!(14.745)).map(Money::amount),
            Ok(dec!(14.75))
        );
        assert_eq!(
            Money::rounded(dec!(0.004)).map(Money::amount),
            Ok(dec!(0.00))
        );
    }

    proptest! {
        #[test]
        fn every_cent_amount_round_trips_through_its_text(cents in 0i64..=i64::MAX) {
            let value = Decimal::new(cents, 2);
            prop_assume!(value.trunc() < Decimal::from(10u64.pow(MAX_INTEGER_DIGITS)));
            let money = Money::new(value).expect("in range");
            let text = money.to_string();
            let back: Decimal = text.parse().expect("decimal text");
            prop_assert_eq!(Money::new(back), Ok(money));
            prop_assert_eq!(money.amount(), value);
        }

        #[test]
        fn addition_is_exact(a in 0i64..1_000_000_000_000, b in 0i64..1_000_000_000_000) {
            let sum = Money::new(Decimal::new(a, 2)).expect("valid")
                .checked_add(Money::new(Decimal::new(b, 2)).expect("valid"))
                .expect("fits");
            prop_assert_eq!(sum.amount(), Decimal::new(a + b, 2));
        }
    }
}
