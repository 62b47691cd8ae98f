//! What every table's SQL shares: row lookups by primary key (the key column is `id`), and
//! the statement types that bind helpers (`BindValues`, …) extend.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::{Query, QueryAs};
use sqlx::{FromRow, PgConnection, Postgres};

/// A statement being built, to which a helper binds the next parameters.
pub type PgQuery<'q> = Query<'q, Postgres, PgArguments>;
/// [`PgQuery`] of `sqlx::query_as`, reading rows as `O`.
pub type PgQueryAs<'q, O> = QueryAs<'q, Postgres, O, PgArguments>;

/// The `columns` of the rows of `table` whose id is one of `ids`, in no particular order.
pub async fn by_ids<T>(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    ids: &[String],
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!("SELECT {columns} FROM {table} WHERE id = ANY($1)"))
        .bind(ids)
        .fetch_all(conn)
        .await
}

/// The `columns` of the row of `table` with this id, locked for the rest of the transaction.
pub async fn for_update<T>(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    id: &str,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    sqlx::query_as(&format!(
        "SELECT {columns} FROM {table} WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
}
