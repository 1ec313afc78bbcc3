//! Secrets at rest: the token signing keys in the auth database are sealed (AES-256-GCM, a
//! fresh random nonce each) under a key derived from `INFERGATE_ENCRYPTION_KEY` (or
//! `[auth] encryption_key`), when one is given. A sealed value reads `sealed:v1:<base64 of
//! nonce and ciphertext>`; the row's key id is bound in as associated data, so a sealed value
//! moved to another row does not open. Without a key, values are stored as they are (base64)
//! and whoever can read the database can sign tokens; with one, they need the key too.

use base64::Engine as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use sha2::{Digest as _, Sha256};

const PREFIX: &str = "sealed:v1:";

/// Shortest encryption key accepted.
pub const MIN_KEY_CHARS: usize = 32;

/// Seals and opens values with one key.
pub struct Sealer {
    key: LessSafeKey,
}

impl Sealer {
    /// A sealer keyed by `secret` (at least [`MIN_KEY_CHARS`] characters: a random string, not
    /// a password, since the key is its SHA-256 with no stretching).
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.chars().count() >= MIN_KEY_CHARS,
            "the encryption key (INFERGATE_ENCRYPTION_KEY or [auth] encryption_key) must be at \
             least {MIN_KEY_CHARS} characters"
        );
        let digest = Sha256::digest(format!("infergate sealed v1\0{secret}").as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, &digest)
            .map_err(|_| anyhow::anyhow!("building the encryption key failed"))?;
        Ok(Self {
            key: LessSafeKey::new(key),
        })
    }

    /// `plain` sealed, bound to `row`.
    pub fn seal(&self, plain: &[u8], row: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness for a nonce"))?;
        let mut out = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(row.as_bytes()),
                &mut out,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut packed = nonce.to_vec();
        packed.extend_from_slice(&out);
        Ok(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(packed)
        ))
    }

    /// The plain value of a sealed `stored` of `row`.
    fn open(&self, stored: &str, row: &str) -> anyhow::Result<Vec<u8>> {
        let packed = base64::engine::general_purpose::STANDARD
            .decode(stored.strip_prefix(PREFIX).unwrap_or(stored))?;
        anyhow::ensure!(packed.len() > NONCE_LEN, "a sealed value is too short");
        let (nonce, sealed) = packed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| anyhow::anyhow!("a sealed value has a bad nonce"))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(row.as_bytes()), &mut buf)
            .map_err(|_| {
                anyhow::anyhow!(
                    "a sealed value does not open with this encryption key (was the key changed?)"
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// Whether `stored` is sealed.
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The plain bytes of a stored value of `row`: opened with `sealer` when sealed, base64 when
/// not.
pub fn read(stored: &str, row: &str, sealer: Option<&Sealer>) -> anyhow::Result<Vec<u8>> {
    if is_sealed(stored) {
        let sealer = sealer.ok_or_else(|| {
            anyhow::anyhow!(
                "the token signing keys are encrypted: set INFERGATE_ENCRYPTION_KEY (or \
                 [auth] encryption_key) to the key they were sealed with"
            )
        })?;
        sealer.open(stored, row)
    } else {
        Ok(base64::engine::general_purpose::STANDARD.decode(stored)?)
    }
}

/// How to store `plain` for `row`: sealed when there is a sealer.
pub fn write(plain: &[u8], row: &str, sealer: Option<&Sealer>) -> anyhow::Result<String> {
    match sealer {
        Some(s) => s.seal(plain, row),
        None => Ok(base64::engine::general_purpose::STANDARD.encode(plain)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "an-encryption-key-of-at-least-32-chars";

    #[test]
    fn sealed_values_open_only_with_their_key_and_row() {
        let s = Sealer::new(KEY).unwrap();
        let sealed = write(b"private key bytes", "kid1", Some(&s)).unwrap();
        assert!(is_sealed(&sealed));
        assert!(
            !sealed.contains("cHJpdmF0ZSBrZXkgYnl0ZXM"),
            "plain base64 inside"
        );
        assert_eq!(
            read(&sealed, "kid1", Some(&s)).unwrap(),
            b"private key bytes"
        );
        // A fresh nonce each time.
        assert_ne!(
            sealed,
            write(b"private key bytes", "kid1", Some(&s)).unwrap()
        );
        // Another row, another key, no key: refused.
        assert!(read(&sealed, "kid2", Some(&s)).is_err());
        let other = Sealer::new("another-encryption-key-of-32-chars!!").unwrap();
        assert!(read(&sealed, "kid1", Some(&other)).is_err());
        let e = read(&sealed, "kid1", None).unwrap_err().to_string();
        assert!(e.contains("INFERGATE_ENCRYPTION_KEY"), "{e}");
        // Values stored before a key was given still read.
        let plain = write(b"old", "kid0", None).unwrap();
        assert_eq!(read(&plain, "kid0", Some(&s)).unwrap(), b"old");
        assert!(Sealer::new("short").is_err());
    }
}
