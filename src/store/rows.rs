//! Row lookups by primary key that every catalog table answers the same way. `select` is a
//! `SELECT <columns> FROM <table>` without a `WHERE`; the table's key column is `id`.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs};
use sqlx::{FromRow, PgConnection, Postgres};

/// A statement being built, to which a helper binds the next parameters.
pub type PgQuery<'q> = Query<'q, Postgres, PgArguments>;
/// [`PgQuery`] of `sqlx::query_as`, reading rows as `O`.
pub type PgQueryAs<'q, O> = QueryAs<'q, Postgres, O, PgArguments>;

/// The rows whose id is one of `ids`, in no particular order.
pub async fn by_ids<T>(
    conn: &mut PgConnection,
    select: &str,
    ids: &[String],
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!("{select} WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// The row with this id, locked for the rest of the transaction.
pub async fn for_update<T>(
    conn: &mut PgConnection,
    select: &str,
    id: &str,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!("{select} WHERE id = $1 FOR UPDATE"))
        .bind(id)
        .fetch_optional(conn)
        .await
}
