//! API keys: `emit_` and 256 random bits, stored only as their SHA-256.
//! A hash of a high-entropy key needs no salt or slow KDF: it cannot be
//! guessed, only stolen, and the hash alone does not authenticate.

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub type KeyHash = [u8; 32];

const PREFIX: &str = "emit_";

pub fn generate_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| Error::internal(error.to_string()))?;
    let mut key = String::with_capacity(PREFIX.len() + 64);
    key.push_str(PREFIX);
    for byte in bytes {
        key.push_str(&format!("{byte:02x}"));
    }
    Ok(key)
}

/// Shortest admin key accepted from configuration: generated keys are 69.
pub const MIN_ADMIN_KEY_CHARS: usize = 32;
/// Fewer distinct characters than this is a pattern, not a secret.
const MIN_DISTINCT_CHARS: usize = 8;

/// Why a chosen admin key is too weak to guard every space, if it is.
pub fn check_admin_key(key: &str) -> std::result::Result<(), String> {
    if key.chars().count() < MIN_ADMIN_KEY_CHARS {
        return Err(format!(
            "it has {} characters, at least {MIN_ADMIN_KEY_CHARS} are needed \
             (for example `openssl rand -hex 32`)",
            key.chars().count()
        ));
    }
    if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("it must be printable ASCII without spaces (it travels in a header)".into());
    }
    let mut distinct: Vec<u8> = key.bytes().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < MIN_DISTINCT_CHARS {
        return Err(format!(
            "it uses only {} distinct characters, at least {MIN_DISTINCT_CHARS} are needed",
            distinct.len()
        ));
    }
    Ok(())
}

pub fn hash_key(key: &str) -> KeyHash {
    Sha256::digest(key.as_bytes()).into()
}

/// The key a caller presented, from `x-api-key` or `Authorization: Bearer`.
pub fn presented_key<'a>(
    x_api_key: Option<&'a str>,
    authorization: Option<&'a str>,
) -> Option<&'a str> {
    if let Some(key) = x_api_key.map(str::trim).filter(|key| !key.is_empty()) {
        return Some(key);
    }
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

pub fn hash_to_hex(hash: &KeyHash) -> String {
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

pub fn hash_from_hex(text: &str) -> Option<KeyHash> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_and_unique() {
        let (a, b) = (generate_key().unwrap(), generate_key().unwrap());
        assert!(a.starts_with("emit_") && a.len() == 69);
        assert_ne!(a, b);
        assert_ne!(hash_key(&a), hash_key(&b));
    }

    #[test]
    fn both_header_forms_are_read() {
        assert_eq!(presented_key(Some("emit_a"), None), Some("emit_a"));
        assert_eq!(presented_key(None, Some("Bearer emit_b")), Some("emit_b"));
        assert_eq!(presented_key(None, Some("bearer  emit_c ")), Some("emit_c"));
        assert_eq!(presented_key(None, Some("Basic abc")), None);
        assert_eq!(presented_key(Some(""), None), None);
    }
}

#[cfg(test)]
mod admin_key_tests {
    use super::*;

    #[test]
    fn weak_admin_keys_are_refused_with_the_reason() {
        assert!(
            check_admin_key("short")
                .unwrap_err()
                .contains("at least 32")
        );
        assert!(
            check_admin_key(&"a".repeat(40))
                .unwrap_err()
                .contains("distinct")
        );
        assert!(check_admin_key(&format!("{} x", "abcdefgh".repeat(5))).is_err());
        assert!(check_admin_key(&generate_key().unwrap()).is_ok());
    }
}
