//! How a password becomes the stored hash string, and how a stored string is checked against a
//! password. [`crate::BcryptHasher`] decides when and where this runs; this module only says
//! what runs.
//!
//! bcrypt reads at most 72 bytes of its input, and a password of 72 *characters* in Cyrillic,
//! CJK or emoji is 144 to 288 bytes. So the password is first reduced to a short, fixed-size
//! text that bcrypt reads whole:
//!
//! ```text
//! stored = "gm2:" + bcrypt(base64(HMAC-SHA256(PREHASH_KEY, NFC(password))), cost)
//! ```
//!
//! - **Keyed, not a bare digest.** A bare `SHA-256(password)` inside bcrypt can be "shucked":
//!   an attacker holding this table and a leak of unsalted SHA-256 hashes from elsewhere tests
//!   those leaked digests against bcrypt directly, and learns which customers reused a leaked
//!   password without cracking anything. An HMAC under a key of this application's own gives
//!   values that appear in no other leak. The key is a fixed constant, not a secret pepper: it
//!   defeats shucking without a secret that, once lost, would lose every password.
//! - **Encoded, not raw bytes.** Raw digest bytes may hold NULs, where many bcrypt
//!   implementations stop reading. Base64 of the 32-byte MAC is 44 ASCII characters: no NUL,
//!   under 72 bytes, all of it read.
//! - **NFC first.** The same password typed on two keyboards can arrive as different code
//!   point sequences (`й` as one code point, or `и` and a combining breve); Unicode
//!   normalization form C makes them one password (NIST SP 800-63B, 5.1.1.2).
//!
//! Hashes stored before this format are bare bcrypt strings (`$2b$…`) of passwords of at most
//! 72 bytes (the rule of the time), which bcrypt read whole. They verify as they always did and
//! are kept: they are exactly as strong as a new one of the same cost. The `gm2:` prefix is the
//! version marker that tells the two apart.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use unicode_normalization::UnicodeNormalization;

/// The version marker of hashes with the keyed pre-hash.
pub(crate) const V2_PREFIX: &str = "gm2:";

/// The HMAC key of the pre-hash: fixed, and this application's own (see the module docs).
/// Changing it makes every `gm2:` hash unverifiable.
const PREHASH_KEY: &[u8] = b"gophermart password pre-hash v2 (HMAC-SHA256, base64, bcrypt)";

/// The most bytes bcrypt reads; a stored bare bcrypt hash was made of no more.
const BCRYPT_MAX_BYTES: usize = 72;

/// The text bcrypt hashes for `password` in the `gm2:` format: 44 ASCII characters.
fn prehash(password: &str) -> String {
    let normalized: String = password.nfc().collect();
    let mut mac =
        Hmac::<Sha256>::new_from_slice(PREHASH_KEY).expect("HMAC takes keys of any length");
    mac.update(normalized.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// A new stored hash of `password`, in the current (`gm2:`) format.
///
/// # Errors
/// As [`bcrypt::hash`].
pub(crate) fn hash(password: &str, cost: u32) -> Result<String, bcrypt::BcryptError> {
    Ok(format!(
        "{V2_PREFIX}{}",
        bcrypt::hash(prehash(password), cost)?
    ))
}

/// Whether `password` is the one `stored` was made of, in either format. Every outcome costs one
/// bcrypt run at the stored hash's cost, so the time says nothing about why a password failed.
///
/// # Errors
/// [`bcrypt::BcryptError`] when `stored` is neither format.
pub(crate) fn verify(password: &str, stored: &str) -> Result<bool, bcrypt::BcryptError> {
    if let Some(bcrypt_hash) = stored.strip_prefix(V2_PREFIX) {
        return bcrypt::verify(prehash(password), bcrypt_hash);
    }
    // A bare bcrypt hash, from before the pre-hash: made of at most 72 bytes, which bcrypt read
    // whole. A longer password cannot be the one (bcrypt would compare only its first 72
    // bytes), but it still costs the same bcrypt run.
    if password.len() > BCRYPT_MAX_BYTES {
        bcrypt::verify(prehash(password), stored)?;
        return Ok(false);
    }
    bcrypt::verify(password, stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COST: u32 = 4;

    /// 72 characters of each script, and one more.
    fn passwords() -> Vec<(&'static str, String, String)> {
        [
            ("ASCII", "a"),
            ("Cyrillic", "ж"),
            ("CJK", "密"),
            ("emoji", "🦫"),
        ]
        .into_iter()
        .map(|(script, c)| (script, c.repeat(72), c.repeat(73)))
        .collect()
    }

    #[test]
    fn the_prehash_is_44_ascii_characters_without_nul_for_any_password() {
        for (script, at_limit, _) in passwords() {
            let text = prehash(&at_limit);
            assert_eq!(text.len(), 44, "{script}");
            assert!(
                text.bytes().all(|b| b.is_ascii_graphic()),
                "{script}: {text}"
            );
        }
        assert!(!prehash("\u{0}").contains('\u{0}'));
    }

    #[test]
    fn passwords_of_every_script_verify_in_the_new_format_and_differ_in_their_last_character() {
        for (script, at_limit, longer) in passwords() {
            let stored = hash(&at_limit, COST).expect("hashed");

            assert!(stored.starts_with("gm2:$2b$04$"), "{script}: {stored}");
            assert!(verify(&at_limit, &stored).expect("verified"), "{script}");
            assert!(!verify(&longer, &stored).expect("verified"), "{script}");
            // bcrypt alone would read only the first 72 bytes: 18 emoji, 24 CJK, 36 Cyrillic
            // characters. The last character still counts.
            let mut changed = at_limit.clone();
            changed.pop();
            changed.push('x');
            assert!(!verify(&changed, &stored).expect("verified"), "{script}");
        }
    }

    #[test]
    fn a_password_is_the_same_in_either_unicode_composition() {
        let composed = "пароль-й"; // U+0439
        let decomposed = "пароль-и\u{0306}"; // U+0438 U+0306
        let stored = hash(composed, COST).expect("hashed");

        assert!(verify(decomposed, &stored).expect("verified"));
    }

    #[test]
    fn an_old_bare_bcrypt_hash_still_verifies() {
        for password in ["s3cret", &"a".repeat(72), &"ж".repeat(36)] {
            let stored = bcrypt::hash(password, COST).expect("hashed the old way");

            assert!(verify(password, &stored).expect("verified"), "{password}");
            assert!(!verify("wrong", &stored).expect("verified"));
        }
    }

    #[test]
    fn an_old_hash_never_matches_a_longer_password_that_shares_its_first_72_bytes() {
        let old = "a".repeat(72);
        let stored = bcrypt::hash(&old, COST).expect("hashed the old way");

        assert!(!verify(&format!("{old}b"), &stored).expect("verified"));
    }

    #[test]
    fn a_stored_string_of_neither_format_is_an_error() {
        assert!(verify("p", "not a hash").is_err());
        assert!(verify("p", "gm2:not a hash").is_err());
    }
}
