//! Bearer secrets kept only as hashes: the admin token, one-time edge
//! enrollment tokens.
//!
//! This module owns how such secrets are generated, hashed for the store
//! and checked. Tokens are 256 random bits, so a single SHA-256 is enough
//! (a slow password hash only helps low-entropy secrets); the store never
//! sees a token, only its [`TokenHash`].

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::store::{hex, sha256_hex};

/// The random number generator failed.
#[derive(Debug, thiserror::Error)]
#[error("system random number generator failed")]
pub struct RandomError;

/// Generates a new token: 32 random bytes as 64 lowercase hex characters.
pub fn generate_token(rng: &SystemRandom) -> Result<String, RandomError> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes).map_err(|_| RandomError)?;
    Ok(hex(&bytes))
}

/// The SHA-256 of a token, stored in place of the token.
/// Serialised as `"sha256:<hex>"`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash(String);

impl TokenHash {
    /// Hashes a token.
    pub fn of(token: &str) -> Self {
        TokenHash(sha256_hex(token.as_bytes()))
    }

    /// Whether `token` hashes to this value. The comparison takes the same
    /// time wherever the hashes differ.
    pub fn matches(&self, token: &str) -> bool {
        let candidate = sha256_hex(token.as_bytes());
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl core::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "TokenHash(sha256:{})", &self.0)
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("sha256:{}", self.0))
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(TokenHash(h.to_owned()))
            }
            _ => Err(serde::de::Error::custom(
                "expected \"sha256:<64 hex digits>\"",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_matches_only_its_token() {
        let rng = SystemRandom::new();
        let t = generate_token(&rng).expect("rng");
        assert_eq!(t.len(), 64);
        assert_ne!(t, generate_token(&rng).expect("rng"));
        let h = TokenHash::of(&t);
        assert!(h.matches(&t));
        assert!(!h.matches(&t[1..]));
        assert!(!h.matches(""));
        let json = serde_json::to_string(&h).expect("ser");
        assert!(json.starts_with("\"sha256:") && !json.contains(&t));
        assert_eq!(serde_json::from_str::<TokenHash>(&json).expect("de"), h);
        assert!(serde_json::from_str::<TokenHash>("\"sha256:abc\"").is_err());
        assert!(serde_json::from_str::<TokenHash>(&format!("\"{t}\"")).is_err());
    }
}
