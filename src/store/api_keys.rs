//! API keys: stored only as SHA-256 hashes of the secret.

use sqlx::PgConnection;

use sha2::{Digest, Sha256};

use crate::ids;

/// How a secret is stored and looked up: its SHA-256.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Creates a key for an environment and returns `(id, secret)`. The secret is shown once.
pub async fn create(
    conn: &mut PgConnection,
    environment_id: &str,
    name: &str,
    readonly: bool,
) -> Result<(String, String), sqlx::Error> {
    let id = ids::new_id(ids::prefix::API_KEY);
    let secret = ids::new_secret(if readonly { "sch_ro" } else { "sch" });
    let hash = hash_key(&secret);
    sqlx::query(
        "INSERT INTO api_keys (id, environment_id, name, key_hash, readonly) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(environment_id)
    .bind(name)
    .bind(&hash[..])
    .bind(readonly)
    .execute(conn)
    .await?;
    Ok((id, secret))
}
