//! Order numbers: strings of ASCII digits that pass the Luhn checksum.

use std::fmt;

/// The longest order number accepted. Real order numbers are far shorter; the bound keeps
/// storage and indexes sane.
pub const MAX_ORDER_NUMBER_LEN: usize = 64;

/// A syntactically valid order number: 1 to [`MAX_ORDER_NUMBER_LEN`] ASCII digits whose Luhn
/// checksum is correct.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderNumber(String);

/// Why a string is not an order number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OrderNumberError {
    #[error("the order number is empty")]
    Empty,
    #[error("the order number is longer than {MAX_ORDER_NUMBER_LEN} digits")]
    TooLong,
    #[error("the order number must consist of digits only")]
    NotDigits,
    #[error("the order number fails the Luhn checksum")]
    BadChecksum,
}

impl OrderNumber {
    /// Parses an order number exactly as given (no trimming).
    ///
    /// # Errors
    /// Returns the first rule the input breaks.
    pub fn parse(input: &str) -> Result<Self, OrderNumberError> {
        Self::check(input)?;
        Ok(Self(input.to_owned()))
    }

    /// As [`OrderNumber::parse`], keeping the string it is given.
    ///
    /// # Errors
    /// Returns the first rule the input breaks, and the input.
    pub fn parse_owned(input: String) -> Result<Self, (OrderNumberError, String)> {
        match Self::check(&input) {
            Ok(()) => Ok(Self(input)),
            Err(e) => Err((e, input)),
        }
    }

    fn check(input: &str) -> Result<(), OrderNumberError> {
        if input.is_empty() {
            return Err(OrderNumberError::Empty);
        }
        if !input.bytes().all(|b| b.is_ascii_digit()) {
            return Err(OrderNumberError::NotDigits);
        }
        if input.len() > MAX_ORDER_NUMBER_LEN {
            return Err(OrderNumberError::TooLong);
        }
        if !luhn_valid(input.as_bytes()) {
            return Err(OrderNumberError::BadChecksum);
        }
        Ok(())
    }

    /// The number as its digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<OrderNumber> for String {
    fn from(number: OrderNumber) -> Self {
        number.0
    }
}

impl AsRef<str> for OrderNumber {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Luhn checksum over ASCII digits (the caller has checked they are digits).
fn luhn_valid(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Appends the Luhn check digit to `payload` (digits only). Used to make valid numbers in tests
/// and tools.
#[must_use]
pub fn with_check_digit(payload: &str) -> String {
    (0..10u8)
        .map(|d| format!("{payload}{d}"))
        .find(|candidate| luhn_valid(candidate.as_bytes()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_the_specs_valid_example() {
        assert_eq!(
            OrderNumber::parse("12345678903").map(|n| n.to_string()),
            Ok("12345678903".to_owned())
        );
    }

    #[test]
    fn rejects_the_specs_invalid_example() {
        assert_eq!(
            OrderNumber::parse("12345678902"),
            Err(OrderNumberError::BadChecksum)
        );
    }

    #[test]
    fn rejects_empty_non_digit_and_overlong_input() {
        assert_eq!(OrderNumber::parse(""), Err(OrderNumberError::Empty));
        assert_eq!(
            OrderNumber::parse(" 12345678903"),
            Err(OrderNumberError::NotDigits)
        );
        assert_eq!(
            OrderNumber::parse("1234567890３"),
            Err(OrderNumberError::NotDigits)
        );
        assert_eq!(OrderNumber::parse("-0"), Err(OrderNumberError::NotDigits));
        let long = with_check_digit(&"1".repeat(MAX_ORDER_NUMBER_LEN));
        assert_eq!(OrderNumber::parse(&long), Err(OrderNumberError::TooLong));
        let longest = with_check_digit(&"1".repeat(MAX_ORDER_NUMBER_LEN - 1));
        assert!(OrderNumber::parse(&longest).is_ok());
    }

    #[test]
    fn accepts_known_card_and_order_numbers() {
        for n in [
            "0",
            "18",
            "79927398713",
            "4561261212345467",
            "2377225624",
            "9278923470",
        ] {
            assert!(OrderNumber::parse(n).is_ok(), "{n} should be valid");
        }
    }

    proptest! {
        #[test]
        fn exactly_one_check_digit_makes_a_payload_valid(payload in "[0-9]{0,40}") {
            let valid: Vec<u8> = (0..10u8)
                .filter(|d| OrderNumber::parse(&format!("{payload}{d}")).is_ok())
                .collect();
            prop_assert_eq!(valid.len(), 1);
        }

        #[test]
        fn changing_one_digit_breaks_the_checksum(payload in "[0-9]{1,40}", pos in 0usize..41, delta in 1u8..10) {
            let valid = with_check_digit(&payload);
            let pos = pos % valid.len();
            let mut bytes = valid.into_bytes();
            bytes[pos] = b'0' + (bytes[pos] - b'0' + delta) % 10;
            let changed = String::from_utf8(bytes).expect("digits are ASCII");
            prop_assert_eq!(OrderNumber::parse(&changed), Err(OrderNumberError::BadChecksum));
        }

        #[test]
        fn parse_never_panics_and_round_trips(input in "\\PC{0,80}") {
            if let Ok(n) = OrderNumber::parse(&input) {
                prop_assert_eq!(n.as_str(), input.as_str());
            }
        }

        #[test]
        fn parse_owned_decides_as_parse_and_gives_the_input_back(input in "[0-9]{0,40}|\\PC{0,20}") {
            let borrowed = OrderNumber::parse(&input);
            match OrderNumber::parse_owned(input.clone()) {
                Ok(n) => {
                    prop_assert_eq!(String::from(n), input.clone());
                    prop_assert!(borrowed.is_ok());
                }
                Err((e, back)) => {
                    prop_assert_eq!(back, input);
                    prop_assert_eq!(borrowed, Err(e));
                }
            }
        }
    }
}
