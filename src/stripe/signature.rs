//! `Stripe-Signature` verification: HMAC-SHA256 over `"{t}.{raw body}"` with each configured
//! secret (several during a rotation), any `v1` may match (constant-time compare), `v0` and
//! unknown schemes are ignored, and `t` must be within the tolerance of now, in either
//! direction. Pure: the clock comes in as `now`.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header Stripe signs deliveries with.
pub const HEADER: &str = "stripe-signature";

/// Why a delivery was rejected. The messages are safe to send back: they name what is wrong
/// without revealing anything about the secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    MissingHeader,
    #[error("malformed Stripe-Signature header: {0}")]
    Malformed(&'static str),
    #[error("no webhook secret is configured for this environment (stripe_webhook_secrets)")]
    NoSecrets,
    #[error("no v1 signature matches any configured webhook secret")]
    Mismatch,
    #[error("signature timestamp is {0} s away from now, more than the tolerance of {1} s")]
    OutsideTolerance(i64, u64),
}

/// The parts of a `Stripe-Signature` header we use.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    timestamp: i64,
    v1: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<Parsed, SignatureError> {
    let mut timestamp = None;
    let mut v1 = Vec::new();
    for item in header.split(',') {
        let Some((key, value)) = item.trim().split_once('=') else {
            return Err(SignatureError::Malformed(
                "expected comma-separated key=value pairs",
            ));
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t="));
                }
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t= is not a Unix timestamp"))?,
                );
            }
            // A v1 that is not 32 bytes of hex can never match; skip it like an unknown scheme
            // would be skipped, rather than letting one bad entry hide a good one.
            "v1" => {
                if let Ok(sig) = hex::decode(value) {
                    if sig.len() == 32 {
                        v1.push(sig);
                    }
                }
            }
            _ => {} // v0 (test-mode legacy) and future schemes are ignored
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t= timestamp"))?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed("no v1= signature"));
    }
    Ok(Parsed { timestamp, v1 })
}

/// Verifies `payload` (the raw request body) against the header with any of `secrets`.
/// Returns the signed timestamp.
pub fn verify<S: AsRef<[u8]>>(
    payload: &[u8],
    header: Option<&str>,
    secrets: &[S],
    tolerance_secs: u64,
    now: i64,
) -> Result<i64, SignatureError> {
    let header = header
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or(SignatureError::MissingHeader)?;
    let parsed = parse(header)?;
    let secrets: Vec<&[u8]> = secrets
        .iter()
        .map(AsRef::as_ref)
        .filter(|s| !s.is_empty())
        .collect();
    if secrets.is_empty() {
        return Err(SignatureError::NoSecrets);
    }
    let prefix = format!("{}.", parsed.timestamp);
    let mut matched = false;
    for secret in secrets {
        // Infallible: HMAC takes keys of any length.
        let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
            continue;
        };
        mac.update(prefix.as_bytes());
        mac.update(payload);
        for sig in &parsed.v1 {
            // verify_slice compares in constant time.
            if mac.clone().verify_slice(sig).is_ok() {
                matched = true;
            }
        }
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let skew = now.saturating_sub(parsed.timestamp);
    if skew.unsigned_abs() > tolerance_secs {
        return Err(SignatureError::OutsideTolerance(skew, tolerance_secs));
    }
    Ok(parsed.timestamp)
}

/// The header Stripe would send for `payload` signed with `secret` at `timestamp`. For tests,
/// the benchmark's load generator and tools; the server only verifies.
pub fn sign(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(payload);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Produced once by the official `stripe` Python library (see the file's `library`).
    const VECTOR: &str = include_str!("../../tests/data/stripe_signature_vector.json");

    struct Vector {
        secret: String,
        timestamp: i64,
        payload: String,
        header: String,
    }

    fn vector() -> Vector {
        let v: serde_json::Value = serde_json::from_str(VECTOR).unwrap();
        Vector {
            secret: v["secret"].as_str().unwrap().into(),
            timestamp: v["timestamp"].as_i64().unwrap(),
            payload: v["payload"].as_str().unwrap().into(),
            header: v["header"].as_str().unwrap().into(),
        }
    }

    #[test]
    fn official_library_vector_verifies() {
        let v = vector();
        let got = verify(
            v.payload.as_bytes(),
            Some(&v.header),
            &[v.secret.as_str()],
            300,
            v.timestamp + 10,
        );
        assert_eq!(got, Ok(v.timestamp));
        // And our signer agrees with the library byte for byte.
        assert_eq!(sign(v.payload.as_bytes(), &v.secret, v.timestamp), v.header);
    }

    #[test]
    fn any_secret_and_any_v1_may_match_and_v0_is_ignored() {
        let v = vector();
        let sig = v.header.split_once("v1=").unwrap().1;
        let header = format!(
            "t={},v0={sig},v1={},v1={sig},future=x",
            v.timestamp,
            "ab".repeat(32)
        );
        let secrets = ["whsec_old", v.secret.as_str()];
        assert!(verify(
            v.payload.as_bytes(),
            Some(&header),
            &secrets,
            300,
            v.timestamp
        )
        .is_ok());
        // A v0 alone is not enough.
        let only_v0 = format!("t={},v0={sig}", v.timestamp);
        assert_eq!(
            verify(
                v.payload.as_bytes(),
                Some(&only_v0),
                &secrets,
                300,
                v.timestamp
            ),
            Err(SignatureError::Malformed("no v1= signature"))
        );
    }

    #[test]
    fn rejections() {
        let v = vector();
        let p = v.payload.as_bytes();
        let secrets = [v.secret.as_str()];
        let at = |now| verify(p, Some(&v.header), &secrets, 300, now);
        // Tampered body.
        let mut tampered = v.payload.clone().into_bytes();
        tampered[10] ^= 1;
        assert_eq!(
            verify(&tampered, Some(&v.header), &secrets, 300, v.timestamp),
            Err(SignatureError::Mismatch)
        );
        // Wrong secret.
        assert_eq!(
            verify(p, Some(&v.header), &["whsec_wrong"], 300, v.timestamp),
            Err(SignatureError::Mismatch)
        );
        // Too old and too far in the future; the edges are inside.
        assert!(matches!(
            at(v.timestamp + 301),
            Err(SignatureError::OutsideTolerance(301, 300))
        ));
        assert!(matches!(
            at(v.timestamp - 301),
            Err(SignatureError::OutsideTolerance(-301, 300))
        ));
        assert!(at(v.timestamp + 300).is_ok());
        assert!(at(v.timestamp - 300).is_ok());
        // Missing and garbled headers.
        assert_eq!(
            verify(p, None, &secrets, 300, v.timestamp),
            Err(SignatureError::MissingHeader)
        );
        assert_eq!(
            verify(p, Some("  "), &secrets, 300, v.timestamp),
            Err(SignatureError::MissingHeader)
        );
        for garbled in [
            "garbage",
            "t=abc,v1=00",
            "v1=00",
            "t=1,t=2,v1=00",
            "t=1790000000",
        ] {
            assert!(
                matches!(
                    verify(p, Some(garbled), &secrets, 300, v.timestamp),
                    Err(SignatureError::Malformed(_))
                ),
                "{garbled}"
            );
        }
        // A v1 that is not hex can never match.
        let bad_hex = format!("t={},v1=zz", v.timestamp);
        assert_eq!(
            verify(p, Some(&bad_hex), &secrets, 300, v.timestamp),
            Err(SignatureError::Malformed("no v1= signature"))
        );
        // No secrets configured.
        let none: [&str; 0] = [];
        assert_eq!(
            verify(p, Some(&v.header), &none, 300, v.timestamp),
            Err(SignatureError::NoSecrets)
        );
        assert_eq!(
            verify(p, Some(&v.header), &[""], 300, v.timestamp),
            Err(SignatureError::NoSecrets)
        );
    }
}
