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

/// A new id that sorts by creation time: `prefix_` + 9 base62 characters of milliseconds
/// since the epoch + 11 random ones. Appends to the end of an index instead of splitting
/// pages at random, for high-volume rows such as events.
pub fn new_sortable_id(prefix: &str) -> String {
    sortable_id_at(prefix, chrono::Utc::now().timestamp_millis().max(0) as u64)
}

fn sortable_id_at(prefix: &str, mut millis: u64) -> String {
    let mut rng = rand::rng();
    let mut time = [b'0'; 9];
    for slot in time.iter_mut().rev() {
        *slot = ALPHABET[(millis % 62) as usize];
        millis /= 62;
    }
    let mut id = String::with_capacity(prefix.len() + 21);
    id.push_str(prefix);
    id.push('_');
    id.push_str(std::str::from_utf8(&time).unwrap_or("000000000"));
    for _ in 0..11 {
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
    pub const RECONCILE_RUN: &str = "rcn";
    pub const CREDIT_TYPE: &str = "bcrd";
    pub const PLAN_CREDIT_GRANT: &str = "bcpg";
    pub const WEBHOOK: &str = "whk";
    pub const WEBHOOK_MESSAGE: &str = "msg";
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

    #[test]
    fn sortable_ids_sort_by_time() {
        let now = 1_795_000_000_000;
        for (earlier, later) in [(now, now + 1), (now, now + 62), (61, 62), (now, now * 2)] {
            let (a, b) = (
                sortable_id_at("evnt", earlier),
                sortable_id_at("evnt", later),
            );
            assert!(a < b, "{a} < {b}");
        }
        assert_eq!(new_sortable_id("evnt").len(), 5 + 20);
    }
}
