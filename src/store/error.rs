//! The store's error: what went wrong in terms of data (not found, a conflict naming the
//! key, a reference to something that does not exist, a value the schema rejects, the
//! database unavailable). HTTP statuses are chosen at the edge (`crate::error`), never here.
//!
//! Database errors are classified here, once, by SQLSTATE and constraint name (never by
//! message text): the schema's constraint names live next to the SQL that relies on them.

/// SQLSTATE codes we act on.
pub mod sqlstate {
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const DEADLOCK_DETECTED: &str = "40P01";
    pub const SERIALIZATION_FAILURE: &str = "40001";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value the schema or a store rule rejects; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The object asked for (or one a field names) does not exist; the message names it.
    #[error("{0}")]
    NotFound(String),
    /// A unique key is taken; the message names the key.
    #[error("{0}")]
    Conflict(String),
    /// The error of one item of a batch, by its position.
    #[error("item {index}: {source}")]
    Item {
        index: usize,
        #[source]
        source: Box<Error>,
    },
    /// The database is down or unreachable; the operation may succeed later.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Anything else from the database: a bug or an operational problem, logged.
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }

    pub fn conflict(msg: impl Into<String>) -> Self {
        Error::Conflict(msg.into())
    }

    /// This error, attributed to item `index` of a batch.
    pub fn at(self, index: usize) -> Self {
        match self {
            e @ (Error::Unavailable(_) | Error::Database(_)) => e,
            e => Error::Item {
                index,
                source: Box::new(e),
            },
        }
    }

    /// A deadlock or serialization failure: the transaction may simply be retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(sqlx::Error::Database(db)) => matches!(
                db.code().as_deref(),
                Some(sqlstate::DEADLOCK_DETECTED) | Some(sqlstate::SERIALIZATION_FAILURE)
            ),
            _ => false,
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_))
    }
}

/// The constraint a database error names, when it is a violation of `code`.
pub fn violated_constraint<'e>(err: &'e sqlx::Error, code: &str) -> Option<&'e str> {
    match err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(code) => {
            Some(db.constraint().unwrap_or(""))
        }
        _ => None,
    }
}

/// A connection-level failure: the database is down or unreachable, not the query wrong.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            // 08: connection exception; 57P0x: shutdown; 53: insufficient resources.
            c.starts_with("08") || c.starts_with("57P") || c.starts_with("53")
        }),
        _ => false,
    }
}

/// Postgres rejected a value (SQLSTATE class 22), named without leaking its message.
fn data_exception(err: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(db) = err else {
        return None;
    };
    let code = db.code()?;
    Some(match code.as_ref() {
        // character_not_in_repertoire, untranslatable_character (a \u0000 in JSON)
        "22021" | "22P05" => "text must not contain NUL (\\u0000) characters",
        "22001" => "a text value is too long",
        "22003" => "a number is out of range",
        "22007" | "22008" => "a timestamp is out of range",
        c if c.starts_with("22") => "a value was rejected as invalid",
        _ => return None,
    })
}

/// The field a foreign key stands for, by constraint name, where a client can fix it.
fn reference_field(constraint: &str) -> Option<&'static str> {
    if constraint.ends_with("_credit_fk") {
        return Some("value_credit_id: no credit type with this id");
    }
    None
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        if is_unavailable(&err) {
            return Error::Unavailable(err);
        }
        if let Some(c) = violated_constraint(&err, sqlstate::CHECK_VIOLATION) {
            return Error::Invalid(format!("value rejected by constraint {c}"));
        }
        if let Some(c) = violated_constraint(&err, sqlstate::FOREIGN_KEY_VIOLATION) {
            return Error::NotFound(match reference_field(c) {
                Some(msg) => msg.to_string(),
                None => format!("a record this refers to does not exist ({c})"),
            });
        }
        if let Some(c) = violated_constraint(&err, sqlstate::UNIQUE_VIOLATION) {
            return Error::Conflict(format!("conflicts with an existing record ({c})"));
        }
        if let Some(msg) = data_exception(&err) {
            return Error::Invalid(msg.into());
        }
        Error::Database(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_items_wrap_client_errors_only() {
        let e = Error::invalid("quantity: must be positive").at(3);
        assert_eq!(e.to_string(), "item 3: quantity: must be positive");
        let e = Error::Unavailable(sqlx::Error::PoolTimedOut).at(3);
        assert!(e.is_unavailable());
    }

    #[test]
    fn connection_failures_are_unavailable() {
        assert!(Error::from(sqlx::Error::PoolTimedOut).is_unavailable());
        assert!(!Error::from(sqlx::Error::RowNotFound).is_unavailable());
    }
}
