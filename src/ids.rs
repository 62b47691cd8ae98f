//! Opaque prefixed identifiers (`comp_…`, `plan_…`), random and URL-safe.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 20; // 62^20 ≈ 2^119

/// A new id: `prefix` + `_` + 20 random base62 characters.
pub fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(prefix.len() + 1 + RANDOM_LEN);
    id.push_str(prefix);
    id.push('_');
    for _ in 0..RANDOM_LEN {
        id.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    id
}

/// A new secret API key: `prefix` + `_` + 40 random base62 characters.
pub fn new_secret(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut s = String::from(prefix);
    s.push('_');
    for _ in 0..40 {
        s.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    s
}

pub mod prefix {
    pub const ENVIRONMENT: &str = "env";
    pub const API_KEY: &str = "api";
    pub const COMPANY: &str = "comp";
    pub const USER: &str = "user";
    pub const FEATURE: &str = "feat";
    pub const FLAG: &str = "flag";
    pub const RULE: &str = "rule";
    pub const PLAN: &str = "plan";
    pub const PLAN_ENTITLEMENT: &str = "pltl";
    pub const COMPANY_PLAN: &str = "cpln";
    pub const OVERRIDE: &str = "cmov";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_distinct() {
        let a = new_id("comp");
        let b = new_id("comp");
        assert!(a.starts_with("comp_"));
        assert_eq!(a.len(), 5 + RANDOM_LEN);
        assert_ne!(a, b);
        assert!(a[5..].chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
