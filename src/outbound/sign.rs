//! Signing a delivery, both ways, with the endpoint's secret (`whsec_` + base64):
//! - Schematic's: `X-Schematic-Webhook-Signature` = hex HMAC-SHA256 of `body + "+" +
//!   timestamp`, keyed with the whole secret string, and `X-Schematic-Webhook-Timestamp`
//!   (what `schematic.webhook_utils.verify_webhook_signature` checks);
//! - Standard Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64>`
//!   over `id.timestamp.body`, keyed with the base64-decoded part of the secret; during a
//!   rotation both secrets sign, space-separated (what the `standardwebhooks` libraries check).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A new secret: `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    let bytes: [u8; 24] = rand::rng().random();
    format!("{PREFIX}{}", B64.encode(bytes))
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Schematic's signature: hex HMAC-SHA256 of `body + "+" + timestamp`.
pub fn schematic(secret: &str, body: &[u8], timestamp: &str) -> String {
    hex::encode(hmac(secret.as_bytes(), &[body, b"+", timestamp.as_bytes()]))
}

/// One Standard Webhooks signature, `v1,<base64>`, or `None` for a secret whose key part is
/// not base64.
pub fn standard(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = B64
        .decode(secret.strip_prefix(PREFIX).unwrap_or(secret))
        .ok()?;
    let sig = hmac(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    Some(format!("v1,{}", B64.encode(sig)))
}

/// The headers of one delivery: `(name, value)`. `previous` is a secret still signing
/// after a rotation.
pub fn headers(
    secret: &str,
    previous: Option<&str>,
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let ts = timestamp.to_string();
    let standard: Vec<String> = [Some(secret), previous]
        .into_iter()
        .flatten()
        .filter_map(|s| standard(s, message_id, &ts, body))
        .collect();
    vec![
        (
            "x-schematic-webhook-signature",
            schematic(secret, body, &ts),
        ),
        ("x-schematic-webhook-timestamp", ts.clone()),
        ("webhook-id", message_id.to_string()),
        ("webhook-timestamp", ts),
        ("webhook-signature", standard.join(" ")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed with the official libraries: schematichq 1.4.6's
    // `compute_hex_signature(body, "1700000000", secret)` and standardwebhooks 1.3.0's
    // `Webhook(secret).sign("msg_1", 1700000000, body)`.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const BODY: &str = r#"{"id":"msg_1","type":"test.send"}"#;

    #[test]
    fn schematic_signature_matches_the_sdk() {
        assert_eq!(
            schematic(SECRET, BODY.as_bytes(), "1700000000"),
            "b8b00e6be63d7351bd49586d8aea5506008ca5b5e656cd8db6fb5e4c3a80177f"
        );
    }

    #[test]
    fn standard_signature_matches_the_library() {
        assert_eq!(
            standard(SECRET, "msg_1", "1700000000", BODY.as_bytes()).as_deref(),
            Some("v1,65GOt6Cda25u4i+IFjOUxzXbu828ZJlgI1dWdkidaRs=")
        );
    }

    #[test]
    fn a_rotation_signs_with_both_secrets() {
        let old = new_secret();
        let h = headers(SECRET, Some(&old), "msg_1", 1_700_000_000, BODY.as_bytes());
        let sig = &h.iter().find(|(n, _)| *n == "webhook-signature").unwrap().1;
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], "v1,65GOt6Cda25u4i+IFjOUxzXbu828ZJlgI1dWdkidaRs=");
        assert_eq!(
            Some(parts[1].to_string()),
            standard(&old, "msg_1", "1700000000", BODY.as_bytes())
        );
    }

    #[test]
    fn new_secrets_decode_to_24_bytes() {
        let s = new_secret();
        assert!(s.starts_with("whsec_"));
        assert_eq!(B64.decode(&s[6..]).unwrap().len(), 24);
        assert_ne!(s, new_secret());
    }
}
