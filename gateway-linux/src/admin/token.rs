//! The admin token: generated at first start, printed once, stored as a hash.
//!
//! Layout in the data directory:
//! - `admin-token.sha256`: hex SHA-256 of the token; the only thing the
//!   server needs to check a bearer token. It is the commit point: it is
//!   written last, so a crash during first start simply generates a new
//!   token at the next start.
//! - `admin-token`: the plaintext token, mode 0600, so that client commands
//!   run by the same user on this host (`meshgate apply`, ...) work without
//!   a flag. Delete it after noting the token if the host is shared; the
//!   server never reads it. Delete `admin-token.sha256` to have a new token
//!   generated at the next start.
//!
//! The token is 256 random bits, so a plain SHA-256 (no salt, no slow hash)
//! is enough: there is nothing to brute-force. Comparison of the hashes is
//! constant-time anyway, so response timing says nothing about the hash.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::fsutil;

/// File holding the plaintext token (mode 0600) for local CLI use.
pub(crate) const TOKEN_FILE: &str = "admin-token";
/// File holding the hex SHA-256 of the token.
pub(crate) const HASH_FILE: &str = "admin-token.sha256";

/// Why the token could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokenError {
    /// Reading or writing a token file failed.
    #[error("admin token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The hash file exists but does not hold a SHA-256 in hex. It is not
    /// replaced silently: that would hand out admin access to whoever starts
    /// the gateway next.
    #[error(
        "admin token hash {path} is corrupt (expected 64 hex digits); delete it to generate a new token"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
    /// The operating system's random generator failed.
    #[error("cannot generate an admin token: the system random generator failed")]
    Random,
}

/// Checks bearer tokens against the stored hash.
#[derive(Clone)]
pub(crate) struct AdminAuth {
    hash: [u8; 32],
}

impl core::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AdminAuth(..)")
    }
}

impl AdminAuth {
    /// Loads the token hash from `data_dir`, or creates a new token there.
    /// Returns the plaintext token only when it was just created, so the
    /// caller can print it once.
    pub(crate) fn load_or_create(data_dir: &Path) -> Result<(Self, Option<String>), TokenError> {
        let hash_path = data_dir.join(HASH_FILE);
        match std::fs::read_to_string(&hash_path) {
            Ok(text) => {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut hash)
                    .map_err(|_| TokenError::Corrupt { path: hash_path })?;
                Ok((AdminAuth { hash }, None))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let token = generate_token()?;
                let hash = sha256(&token);
                let token_path = data_dir.join(TOKEN_FILE);
                fsutil::write_atomic(&token_path, format!("{token}\n").as_bytes(), 0o600).map_err(
                    |source| TokenError::Io {
                        path: token_path,
                        source,
                    },
                )?;
                fsutil::write_atomic(
                    &hash_path,
                    format!("{}\n", hex::encode(hash)).as_bytes(),
                    0o600,
                )
                .map_err(|source| TokenError::Io {
                    path: hash_path,
                    source,
                })?;
                Ok((AdminAuth { hash }, Some(token)))
            }
            Err(source) => Err(TokenError::Io {
                path: hash_path,
                source,
            }),
        }
    }

    /// Whether `presented` is the admin token.
    pub(crate) fn verify(&self, presented: &str) -> bool {
        let h = sha256(presented);
        // Constant-time: fold every byte difference instead of returning at
        // the first mismatch.
        let diff = h
            .iter()
            .zip(self.hash.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }

    /// Checks an `Authorization` header value (`Bearer <token>`).
    pub(crate) fn verify_header(&self, value: &str) -> bool {
        let mut parts = value.splitn(2, ' ');
        match (parts.next(), parts.next()) {
            (Some(scheme), Some(token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.verify(token.trim())
            }
            _ => false,
        }
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 256 random bits from the OS, base64url without padding, with a prefix
/// that makes a leaked token recognisable in logs and secret scanners.
fn generate_token() -> Result<String, TokenError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| TokenError::Random)?;
    Ok(format!(
        "mgt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn first_start_creates_then_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (auth, token) = AdminAuth::load_or_create(dir.path()).expect("create");
        let token = token.expect("new token on first start");
        assert!(auth.verify(&token));
        assert!(!auth.verify("mgt_wrong"));
        assert!(auth.verify_header(&format!("Bearer {token}")));
        assert!(auth.verify_header(&format!("bearer {token}")));
        assert!(!auth.verify_header(&format!("Basic {token}")));
        assert!(!auth.verify_header(&token));

        let hash_file = std::fs::read_to_string(dir.path().join(HASH_FILE)).expect("hash");
        assert!(!hash_file.contains(&token));
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let (again, none) = AdminAuth::load_or_create(dir.path()).expect("load");
        assert!(none.is_none(), "the token is handed out only once");
        assert!(again.verify(&token));
    }

    #[test]
    fn corrupt_hash_is_reported_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(HASH_FILE), "nothex").expect("write");
        let err = AdminAuth::load_or_create(dir.path()).expect_err("corrupt");
        assert!(matches!(err, TokenError::Corrupt { .. }));
        assert_eq!(
            std::fs::read_to_string(dir.path().join(HASH_FILE)).expect("read"),
            "nothex"
        );
    }

    #[test]
    fn tokens_are_distinct_and_long() {
        let a = generate_token().expect("token");
        let b = generate_token().expect("token");
        assert_ne!(a, b);
        assert!(a.len() >= 40);
    }
}
