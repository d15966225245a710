//! [`TokenService`] as JWTs signed with HMAC-SHA256. The algorithm is pinned: a token that
//! claims another algorithm (including `none`) or was signed with another key is refused.

use std::time::Duration;

use application::ports::security::{HashingError, Token, TokenError, TokenService};
use chrono::Utc;
use domain::UserId;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The user's id.
    sub: String,
    iat: i64,
    exp: i64,
}

/// Issues and verifies HS256 JWTs.
#[derive(Clone)]
pub struct JwtTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: Duration,
}

impl std::fmt::Debug for JwtTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtTokens")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl JwtTokens {
    /// Tokens signed with `secret`, valid for `lifetime`.
    #[must_use]
    pub fn new(secret: &SecretString, lifetime: Duration) -> Self {
        let key = secret.expose_secret().as_bytes();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            lifetime,
        }
    }

    /// A random 256-bit secret, for a single instance run without a configured one.
    #[must_use]
    pub fn random_secret() -> SecretString {
        use rand::Rng;
        let bytes: [u8; 32] = rand::rng().random();
        SecretString::from(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }
}

impl TokenService for JwtTokens {
    fn issue(&self, user: UserId) -> Result<Token, HashingError> {
        let now = Utc::now().timestamp();
        let lifetime = i64::try_from(self.lifetime.as_secs()).unwrap_or(i64::MAX);
        let claims = Claims {
            sub: user.0.to_string(),
            iat: now,
            exp: now.saturating_add(lifetime),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map(Token)
            .map_err(|e| HashingError::Failed(Box::new(e)))
    }

    fn verify(&self, token: &str) -> Result<UserId, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        data.claims
            .sub
            .parse()
            .map(UserId)
            .map_err(|_| TokenError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

    use super::*;

    fn tokens(secret: &str) -> JwtTokens {
        JwtTokens::new(
            &SecretString::from(secret.to_owned()),
            Duration::from_secs(3600),
        )
    }

    #[test]
    fn an_issued_token_names_its_user() {
        let tokens = tokens("secret");

        let token = tokens.issue(UserId(42)).expect("issued");

        assert_eq!(tokens.verify(&token.0), Ok(UserId(42)));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = tokens("other key").issue(UserId(42)).expect("issued");

        assert_eq!(tokens("secret").verify(&token.0), Err(TokenError::Invalid));
    }

    #[test]
    fn an_unsigned_alg_none_token_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let exp = Utc::now().timestamp() + 3600;
        let claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"42","iat":0,"exp":{exp}}}"#));

        for forged in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
            assert_eq!(tokens("secret").verify(&forged), Err(TokenError::Invalid));
        }
    }

    #[test]
    fn a_token_claiming_another_algorithm_is_refused() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &Claims {
                sub: "42".into(),
                iat: 0,
                exp: Utc::now().timestamp() + 3600,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("encoded");

        assert_eq!(tokens("secret").verify(&token), Err(TokenError::Invalid));
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "42".into(),
                iat: 0,
                exp: Utc::now().timestamp() - 1,
            },
            &EncodingKey::from_secret(b"secret"),
        )
        .expect("encoded");

        assert_eq!(tokens("secret").verify(&token), Err(TokenError::Expired));
    }

    #[test]
    fn garbage_and_tampered_tokens_are_refused() {
        let tokens = tokens("secret");
        let token = tokens.issue(UserId(1)).expect("issued").0;
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(r#"{"sub":"2","iat":0,"exp":99999999999}"#);

        assert_eq!(tokens.verify(&parts.join(".")), Err(TokenError::Invalid));
        assert_eq!(tokens.verify(""), Err(TokenError::Invalid));
        assert_eq!(tokens.verify("not a token"), Err(TokenError::Invalid));
    }

    #[test]
    fn random_secrets_differ() {
        assert_ne!(
            JwtTokens::random_secret().expose_secret(),
            JwtTokens::random_secret().expose_secret()
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_is_never_a_valid_token(text in "\\PC{0,300}") {
            proptest::prop_assert!(tokens("secret").verify(&text).is_err());
        }

        #[test]
        fn arbitrary_three_part_tokens_are_refused(
            header in "[A-Za-z0-9_-]{0,60}",
            claims in "[A-Za-z0-9_-]{0,120}",
            signature in "[A-Za-z0-9_-]{0,60}",
        ) {
            let token = format!("{header}.{claims}.{signature}");
            proptest::prop_assert!(tokens("secret").verify(&token).is_err());
        }

        #[test]
        fn any_change_to_a_valid_token_is_refused(position in 0usize..200, byte in 0u8..128) {
            let tokens = tokens("secret");
            let token = tokens.issue(UserId(7)).expect("issued").0;
            let mut bytes = token.clone().into_bytes();
            let position = position % bytes.len();
            proptest::prop_assume!(bytes[position] != byte);
            bytes[position] = byte;
            let changed = String::from_utf8_lossy(&bytes).into_owned();
            // The last character of base64url carries unused low bits, so a few of its values
            // decode to the same signature; a change anywhere else must be refused.
            if tokens.verify(&changed).is_ok() {
                proptest::prop_assert_eq!(position, bytes.len() - 1);
            }
        }
    }
}
