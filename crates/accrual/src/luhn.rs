//! Order numbers: a non-empty string of ASCII digits whose Luhn checksum is valid.

/// Whether `number` is a well-formed order number: one or more ASCII digits and nothing else,
/// with a valid Luhn checksum (the last digit is the check digit).
#[must_use]
pub fn is_valid_order_number(number: &str) -> bool {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = number
        .bytes()
        .rev()
        .map(|b| u32::from(b - b'0'))
        .enumerate()
        .map(|(position, digit)| {
            if position % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::is_valid_order_number;

    #[test]
    fn numbers_with_a_valid_checksum_are_accepted() {
        for number in ["12345678903", "79927398713", "4561261212345467", "0", "18"] {
            assert!(is_valid_order_number(number), "{number} should be valid");
        }
    }

    #[test]
    fn numbers_with_a_wrong_check_digit_are_rejected() {
        for number in ["12345678902", "79927398710", "4561261212345464", "1", "19"] {
            assert!(!is_valid_order_number(number), "{number} should be invalid");
        }
    }

    #[test]
    fn anything_but_ascii_digits_is_rejected() {
        for number in [
            "",
            " 12345678903",
            "12345678903 ",
            "1234-5678-903",
            "١٢",
            "-18",
            "+18",
        ] {
            assert!(
                !is_valid_order_number(number),
                "{number:?} should be invalid"
            );
        }
    }

    #[test]
    fn every_single_digit_change_breaks_the_checksum() {
        let valid = "12345678903";
        for position in 0..valid.len() {
            for replacement in b'0'..=b'9' {
                let mut bytes = valid.as_bytes().to_vec();
                if bytes[position] == replacement {
                    continue;
                }
                bytes[position] = replacement;
                let changed = String::from_utf8(bytes).expect("digits are ASCII");
                assert!(
                    !is_valid_order_number(&changed),
                    "{changed} should be invalid"
                );
            }
        }
    }
}
