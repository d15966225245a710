//! `NUMERIC` values read straight into [`Decimal`].
//!
//! rust_decimal's diesel conversion reads a value into diesel's `PgNumeric` (a vector of
//! base-10000 digits), copies the digits into another vector, and builds the decimal by one
//! checked multiplication or division per digit: about 1,500 instructions a value, most of
//! the orders list's decoding (`docs/benchmarks.md`, "The floor"). The amounts stored here
//! (`NUMERIC(20, 2)`) have at most six such digits, so their digits are summed into one
//! integer and scaled once, without allocating. Any value that does not fit that way (more
//! than 28 places, digits beyond its scale, a NaN or an infinity, more than 96 bits) is left to
//! rust_decimal's conversion, whose result or error it then is.

use diesel::{
    deserialize::{self, FromSql, FromSqlRow},
    pg::{Pg, PgValue},
    sql_types,
};
use rust_decimal::Decimal;

/// A `NUMERIC` read as an exact [`Decimal`], with the value's own scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromSqlRow)]
pub struct PgDecimal(pub Decimal);

impl FromSql<sql_types::Numeric, Pg> for PgDecimal {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match exact(value.as_bytes()) {
            Some(decimal) => Ok(Self(decimal)),
            None => <Decimal as FromSql<sql_types::Numeric, Pg>>::from_sql(value).map(Self),
        }
    }
}

/// The most base-10000 digits summed into one integer: 7 of them stay below 10²⁸, so the sum
/// and its scaling by at most 10²⁸ fit an `i128`.
const MAX_DIGITS: usize = 7;

/// The sign field of a negative value (positive is 0; NaN and the infinities have others).
const NEGATIVE: u16 = 0x4000;

/// Decodes PostgreSQL's binary `NUMERIC` (digit count, weight, sign and display scale as
/// 16-bit integers, then the base-10000 digits, most significant first: the value is
/// Σ digitᵢ × 10000^(weight − i)), or `None` when it does not fit the fast way.
fn exact(bytes: &[u8]) -> Option<Decimal> {
    let field = |i: usize| {
        bytes
            .get(2 * i..2 * i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let count = usize::from(field(0)?);
    let weight = i32::from(field(1)?.cast_signed());
    let sign = field(2)?;
    let scale = u32::from(field(3)?);
    if count > MAX_DIGITS || bytes.len() != 8 + 2 * count || scale > Decimal::MAX_SCALE {
        return None;
    }
    if sign != 0 && sign != NEGATIVE {
        return None;
    }
    let mut sum: i128 = 0;
    for i in 0..count {
        let digit = field(4 + i)?;
        if digit > 9999 {
            return None;
        }
        sum = sum * 10_000 + i128::from(digit);
    }
    // The value is sum × 10^exponent; in units of 10^-scale it is sum × 10^(exponent + scale).
    let count = i32::try_from(count).ok()?;
    let shift = 4 * (weight - count + 1) + i32::try_from(scale).ok()?;
    let units = if shift >= 0 {
        sum.checked_mul(10_i128.checked_pow(shift.unsigned_abs())?)?
    } else {
        let divisor = 10_i128.checked_pow(shift.unsigned_abs())?;
        if sum % divisor != 0 {
            return None;
        }
        sum / divisor
    };
    let mut decimal = Decimal::try_from_i128_with_scale(units, scale).ok()?;
    decimal.set_sign_negative(sign == NEGATIVE);
    Some(decimal)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use diesel::pg::data_types::PgNumeric;
    use proptest::prelude::*;

    use super::*;

    /// A `PgNumeric` in PostgreSQL's binary form.
    fn binary(numeric: &PgNumeric) -> Vec<u8> {
        let (sign, weight, scale, digits) = match numeric {
            PgNumeric::Positive {
                weight,
                scale,
                digits,
            } => (0, *weight, *scale, digits.as_slice()),
            PgNumeric::Negative {
                weight,
                scale,
                digits,
            } => (NEGATIVE, *weight, *scale, digits.as_slice()),
            PgNumeric::NaN => (0xC000, 0, 0, &[][..]),
        };
        let count = u16::try_from(digits.len()).expect("few digits");
        let mut out = Vec::new();
        for field in [count, weight.cast_unsigned(), sign, scale] {
            out.extend_from_slice(&field.to_be_bytes());
        }
        for digit in digits {
            out.extend_from_slice(&digit.to_be_bytes());
        }
        out
    }

    /// What rust_decimal's conversion makes of the same value.
    fn reference(numeric: &PgNumeric) -> Option<Decimal> {
        Decimal::try_from(numeric).ok()
    }

    /// Equal as values and in scale and sign, as the bytes of the decimals say.
    fn same(a: Option<Decimal>, b: Option<Decimal>) -> bool {
        a.map(|d| d.serialize()) == b.map(|d| d.serialize())
    }

    #[test]
    fn amounts_read_as_rust_decimal_reads_them() {
        for text in [
            "0",
            "0.00",
            "0.01",
            "0.10",
            "1",
            "1.50",
            "42.00",
            "729.98",
            "10000",
            "10000.00",
            "9999.99",
            "100000000",
            "12345678.9",
            "999999999999999999.99",
            "-5",
            "-0.01",
            "0.0001",
            "1e-28",
        ] {
            let decimal = Decimal::from_str(text)
                .or_else(|_| Decimal::from_scientific(text))
                .expect("decimal");
            let numeric = PgNumeric::from(&decimal);
            let read = exact(&binary(&numeric));
            assert!(read.is_some(), "{text} is read the fast way");
            assert!(same(read, reference(&numeric)), "{text}");
            assert_eq!(read, Some(decimal), "{text}");
        }
    }

    #[test]
    fn what_does_not_fit_is_left_to_rust_decimal() {
        let nan = binary(&PgNumeric::NaN);
        assert_eq!(exact(&nan), None);
        // Eight digits, a digit beyond the scale, a scale beyond 28, a digit above 9999.
        let eight = PgNumeric::Positive {
            weight: 7,
            scale: 0,
            digits: vec![1; 8],
        };
        let beyond_scale = PgNumeric::Positive {
            weight: -1,
            scale: 2,
            digits: vec![1234],
        };
        let too_fine = PgNumeric::Positive {
            weight: -8,
            scale: 29,
            digits: vec![1],
        };
        let bad_digit = PgNumeric::Positive {
            weight: 0,
            scale: 0,
            digits: vec![10_000],
        };
        for numeric in [eight, beyond_scale, too_fine, bad_digit] {
            assert_eq!(exact(&binary(&numeric)), None, "{numeric:?}");
        }
        assert_eq!(exact(&[0, 1, 0, 0]), None, "truncated");
    }

    proptest! {
        /// Any decimal, as PostgreSQL would send it, reads back as itself.
        #[test]
        fn decimals_read_back_as_themselves(
            raw: i128,
            bits in 0u32..=96,
            scale in 0u32..=28,
        ) {
            // Magnitudes of every size up to 96 bits, the small ones as often as the large.
            let mantissa = if bits == 0 { 0 } else { raw % (1i128 << bits) };
            let decimal = Decimal::from_i128_with_scale(mantissa, scale);
            let numeric = PgNumeric::from(&decimal);
            let read = exact(&binary(&numeric));
            prop_assert_eq!(read.or(reference(&numeric)), Some(decimal));
            // Up to 20 digits, as many as an amount has, the fast way.
            prop_assert!(bits > 64 || read.is_some(), "{:?}", numeric);
            prop_assert!(read.is_none() || same(read, reference(&numeric)));
        }

        /// Any value in the binary form, including shapes PostgreSQL does not send (trailing
        /// zero digits, a scale wider than the digits), reads as rust_decimal reads it. (Its
        /// conversion panics on values of 10³² and more, out of reach of `NUMERIC(20, 2)`, so
        /// the weight stays below that.)
        #[test]
        fn any_binary_value_reads_as_rust_decimal_reads_it(
            digits in proptest::collection::vec(0i16..10_000, 0..=9),
            weight in -12i16..7,
            scale in 0u16..=32,
            negative: bool,
        ) {
            let numeric = if negative {
                PgNumeric::Negative { weight, scale, digits }
            } else {
                PgNumeric::Positive { weight, scale, digits }
            };
            if let Some(read) = exact(&binary(&numeric)) {
                prop_assert!(same(Some(read), reference(&numeric)), "{:?}", numeric);
            }
        }
    }
}
