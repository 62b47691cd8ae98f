//! The Postgres channel that carries snapshot changes between processes.

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};

/// The channel carrying invalidations.
pub const CHANNEL: &str = "entitled_changes";

/// Queues `payloads` in one statement; Postgres delivers them in order, after commit.
pub async fn queue(conn: &mut PgConnection, payloads: &[String]) -> super::Result<()> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS t(p)")
        .bind(CHANNEL)
        .bind(payloads)
        .execute(conn)
        .await?;
    Ok(())
}

/// A connection listening on the channel. Subscribe before loading the snapshot, so no
/// change falls between the load and the first notification.
pub async fn subscribe(pool: &PgPool) -> super::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Re-listens after a lost connection (a no-op while connected).
pub async fn relisten(listener: &mut PgListener) -> super::Result<()> {
    listener.listen(CHANNEL).await?;
    Ok(())
}
