//! Session advisory locks held on a connection of their own: for work that must run on
//! one replica at a time for as long as it lasts (a job run, a reconcile run). Closing the
//! connection releases the lock whatever happens to the task that held it, and a crashed
//! process's locks go with its connections.

use sqlx::{Connection, PgConnection, PgPool};

/// A held lock and its connection. Release it with [`SessionLock::release`]; dropping it
/// also releases the lock, when the connection is closed in the background.
pub struct SessionLock {
    conn: PgConnection,
}

impl SessionLock {
    /// Takes the lock named `name` if no session holds it; `None` when one does.
    pub async fn try_acquire(pool: &PgPool, name: &str) -> super::Result<Option<SessionLock>> {
        let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                .bind(name)
                .fetch_one(&mut conn)
                .await?;
        if locked {
            Ok(Some(SessionLock { conn }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// The lock's own connection, for statements that should not wait for the pool.
    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Closes the connection, releasing the lock.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}
