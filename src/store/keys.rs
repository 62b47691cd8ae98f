//! Identifying keys (`{"stripe_customer_id": "cus_1"}`) of companies and users: each key
//! value identifies at most one entity per environment.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Company,
    User,
}

impl Entity {
    pub fn noun(self) -> &'static str {
        match self {
            Entity::Company => "company",
            Entity::User => "user",
        }
    }
    pub(super) fn table(self) -> &'static str {
        match self {
            Entity::Company => "company_keys",
            Entity::User => "user_keys",
        }
    }
    pub(super) fn entity_table(self) -> &'static str {
        match self {
            Entity::Company => "companies",
            Entity::User => "users",
        }
    }
    fn id_prefix(self) -> &'static str {
        match self {
            Entity::Company => crate::ids::prefix::COMPANY,
            Entity::User => crate::ids::prefix::USER,
        }
    }
    pub(super) fn column(self) -> &'static str {
        match self {
            Entity::Company => "company_id",
            Entity::User => "user_id",
        }
    }
}

/// A `companies` or `users` row.
#[derive(Debug, sqlx::FromRow)]
pub struct EntityRow {
    pub id: String,
    pub name: String,
    pub traits: sqlx::types::Json<Map<String, Value>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A company's or user's key: `(owner_id, key, value, created_at)`.
pub type KeyRow = (String, String, String, DateTime<Utc>);

/// Companies or users found by id, with their keys.
#[derive(Debug)]
pub struct Found {
    /// In no particular order.
    pub rows: Vec<EntityRow>,
    /// Oldest first.
    pub keys: Vec<KeyRow>,
}

/// The environment's companies or users `ids`, and their keys.
pub async fn rows_and_keys(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    ids: &[String],
) -> Result<Found, sqlx::Error> {
    let rows = sqlx::query_as(&format!(
        "SELECT id, name, traits, created_at, updated_at FROM {}
         WHERE environment_id = $1 AND id = ANY($2)",
        entity.entity_table()
    ))
    .bind(env_id)
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let keys = sqlx::query_as(&format!(
        "SELECT {owner}, key, value, created_at FROM {table}
         WHERE {owner} = ANY($1) ORDER BY created_at, key",
        owner = entity.column(),
        table = entity.table()
    ))
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Found { rows, keys })
}

pub fn validate(field: &str, keys: &[(String, String)]) -> Result<(), Error> {
    if keys.is_empty() {
        return Err(Error::invalid(format!(
            "{field}: at least one key is required, e.g. {{\"id\": \"acme\"}}"
        )));
    }
    for (k, v) in keys {
        if k.is_empty() || k.len() > 255 {
            return Err(Error::invalid(format!(
                "{field}: key names must be 1 to 255 characters"
            )));
        }
        if v.is_empty() || v.len() > 1024 {
            return Err(Error::invalid(format!(
                "{field}.{k}: value must be 1 to 1024 characters"
            )));
        }
    }
    Ok(())
}

/// Serialises concurrent upserts touching the same keys for the rest of the transaction, so
/// two requests creating the same new entity cannot both create it.
pub async fn lock(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    keys: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let mut names: Vec<String> = keys
        .iter()
        .map(|(k, v)| format!("{}\u{1f}{env_id}\u{1f}{k}\u{1f}{v}", entity.noun()))
        .collect();
    names.sort();
    names.dedup();
    // One round trip, the locks taken in sorted order (no deadlock between two upserts
    // sharing keys).
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended(n, 0))
         FROM unnest($1::text[]) WITH ORDINALITY AS t (n, i) ORDER BY i",
    )
    .bind(&names)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The one entity `keys` identify; `Conflict` when they name several.
pub async fn find(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    keys: &[(String, String)],
) -> Result<Option<String>, Error> {
    let pairs: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut ids: Vec<String> = owners(conn, entity, env_id, &pairs)
        .await?
        .into_values()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    match ids.len() {
        0 => Ok(None),
        1 => Ok(ids.into_iter().next()),
        _ => Err(Error::Conflict(format!(
            "keys identify more than one {} ({}); send keys of one {}",
            entity.noun(),
            ids.join(", "),
            entity.noun()
        ))),
    }
}

/// Adds keys, replacing the value of a key name the entity already has. Returns whether
/// any key was added or changed.
pub async fn put(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    id: &str,
    keys: &[(String, String)],
) -> Result<bool, Error> {
    let mut changed = false;
    let sql = format!(
        "INSERT INTO {table} (environment_id, {col}, key, value) VALUES ($1, $2, $3, $4)
         ON CONFLICT ({col}, key) DO UPDATE SET value = EXCLUDED.value
         WHERE {table}.value IS DISTINCT FROM EXCLUDED.value",
        col = entity.column(),
        table = entity.table()
    );
    for (k, v) in keys {
        let res = sqlx::query(&sql)
            .bind(env_id)
            .bind(id)
            .bind(k)
            .bind(v)
            .execute(&mut *conn)
            .await;
        match res {
            Ok(done) => changed |= done.rows_affected() > 0,
            Err(e) => {
                if violated_constraint(&e, sqlstate::UNIQUE_VIOLATION).is_some() {
                    return Err(Error::Conflict(format!(
                        "key {k}={v:?} already belongs to another {}",
                        entity.noun()
                    )));
                }
                return Err(e.into());
            }
        }
    }
    Ok(changed)
}

/// What to create or update: the entity `keys` identify, with `name` and `traits` merged
/// (a `null` trait removes it); with `update_only`, an entity no key identifies is a 404
/// rather than created.
#[derive(Debug, Clone, Copy)]
pub struct Upsert<'a> {
    pub keys: &'a [(String, String)],
    pub name: Option<&'a str>,
    pub traits: Option<&'a serde_json::Map<String, serde_json::Value>>,
    pub update_only: bool,
}

/// An [`Upsert`] of a request with `keys`, `name`, `traits` and `update_only` fields
/// (invoked beside each request type, so `keys` imports neither).
macro_rules! upsert_of {
    ($($request:ty),+) => {$(
        impl<'a> From<&'a $request> for $crate::store::keys::Upsert<'a> {
            fn from(r: &'a $request) -> Self {
                $crate::store::keys::Upsert {
                    keys: &r.keys,
                    name: r.name.as_deref(),
                    traits: r.traits.as_ref(),
                    update_only: r.update_only,
                }
            }
        }
    )+};
}
pub(super) use upsert_of;

/// What [`upsert`] did.
#[derive(Debug)]
pub struct Upserted {
    pub id: String,
    pub created: bool,
    /// Keys, name or traits of an existing entity changed.
    pub changed: bool,
}

/// Finds the entity `u.keys` identify or creates it, adds the keys, and merges the name and
/// traits. Concurrent upserts of the same keys serialise on advisory locks.
pub async fn upsert(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    u: &Upsert<'_>,
) -> Result<Upserted, Error> {
    let Upsert {
        keys,
        name,
        traits,
        update_only,
    } = *u;
    validate("keys", keys)?;
    if let Some(t) = traits {
        validate_traits(t)?;
    }
    lock(conn, entity, env_id, keys).await?;
    let (id, created) = match find(conn, entity, env_id, keys).await? {
        Some(id) => (id, false),
        None if update_only => {
            return Err(Error::NotFound(format!(
                "no {} has these keys (update_only is set)",
                entity.noun()
            )))
        }
        None => {
            // Under the key locks nobody else can have taken these keys since `find`.
            let id = new_id(entity);
            let new = New {
                id: &id,
                name,
                traits,
                keys,
            };
            create_many(conn, entity, env_id, std::slice::from_ref(&new)).await?;
            return Ok(Upserted {
                id,
                created: true,
                changed: false,
            });
        }
    };
    let mut changed = put(conn, entity, env_id, &id, keys).await?;
    if !created && (name.is_some() || traits.is_some()) {
        changed |= sqlx::query(&format!(
            "UPDATE {} SET name = COALESCE($2, name),
                 traits = jsonb_strip_nulls(traits || $3), updated_at = now()
             WHERE id = $1
               AND (name, traits) IS DISTINCT FROM
                   (COALESCE($2, name), jsonb_strip_nulls(traits || $3))",
            entity.entity_table()
        ))
        .bind(&id)
        .bind(name)
        .bind(sqlx::types::Json(traits.cloned().unwrap_or_default()))
        .execute(&mut *conn)
        .await?
        .rows_affected()
            > 0;
    }
    Ok(Upserted {
        id,
        created,
        changed: changed && !created,
    })
}

/// An entity to create with [`create_many`].
#[derive(Debug, Clone, Copy)]
pub struct New<'a> {
    /// A fresh id ([`new_id`]).
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub traits: Option<&'a Map<String, Value>>,
    pub keys: &'a [(String, String)],
}

/// A fresh id for an entity to create.
pub fn new_id(entity: Entity) -> String {
    crate::ids::new_id(entity.id_prefix())
}

/// Creates entities and their keys in one statement. The caller holds the locks of the keys
/// ([`lock`]) and found none of them taken, so a unique violation means two of `new` share
/// a key: `Conflict`. A key name given twice: the last value wins, as in [`put`].
pub async fn create_many(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    new: &[New<'_>],
) -> Result<(), Error> {
    let ids: Vec<&str> = new.iter().map(|n| n.id).collect();
    let names: Vec<&str> = new.iter().map(|n| n.name.unwrap_or("")).collect();
    let traits: Vec<sqlx::types::Json<Map<String, Value>>> = new
        .iter()
        .map(|n| sqlx::types::Json(n.traits.cloned().unwrap_or_default()))
        .collect();
    let (mut owners, mut key_names, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for n in new {
        let mut unique: Vec<(&str, &str)> = Vec::with_capacity(n.keys.len());
        for (k, v) in n.keys {
            match unique.iter_mut().find(|(name, _)| *name == k.as_str()) {
                Some(slot) => slot.1 = v.as_str(),
                None => unique.push((k.as_str(), v.as_str())),
            }
        }
        for (k, v) in unique {
            owners.push(n.id);
            key_names.push(k);
            values.push(v);
        }
    }
    let res = sqlx::query(&format!(
        "WITH e AS (
             INSERT INTO {entity_table} (id, environment_id, name, traits)
             SELECT n.id, $1, n.name, jsonb_strip_nulls(n.traits)
             FROM unnest($2::text[], $3::text[], $4::jsonb[]) AS n (id, name, traits)
             RETURNING id
         )
         INSERT INTO {table} (environment_id, {col}, key, value)
         SELECT $1, e.id, k.key, k.value
         FROM unnest($5::text[], $6::text[], $7::text[]) AS k (owner, key, value)
         JOIN e ON e.id = k.owner",
        entity_table = entity.entity_table(),
        table = entity.table(),
        col = entity.column(),
    ))
    .bind(env_id)
    .bind(&ids)
    .bind(&names)
    .bind(&traits)
    .bind(&owners)
    .bind(&key_names)
    .bind(&values)
    .execute(&mut *conn)
    .await;
    match res {
        Ok(_) => Ok(()),
        Err(e) if violated_constraint(&e, sqlstate::UNIQUE_VIOLATION).is_some() => {
            Err(Error::Conflict(format!(
                "keys identify more than one {}; send keys of one {}",
                entity.noun(),
                entity.noun()
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// The owner of each of `pairs` (`(key, value)`) that has one, in one query.
pub async fn owners(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    pairs: &[(&str, &str)],
) -> Result<std::collections::HashMap<(String, String), String>, sqlx::Error> {
    let (names, values): (Vec<&str>, Vec<&str>) = pairs.iter().copied().unzip();
    let rows: Vec<(String, String, String)> = sqlx::query_as(&format!(
        "SELECT key, value, {col} FROM {table}
         WHERE environment_id = $1
           AND (key, value) IN (SELECT * FROM unnest($2::text[], $3::text[]))",
        col = entity.column(),
        table = entity.table()
    ))
    .bind(env_id)
    .bind(&names)
    .bind(&values)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(k, v, id)| ((k, v), id)).collect())
}

/// Sets the names of entities (`(id, name)`, ids distinct) in one statement; returns the ids
/// whose name changed.
pub async fn rename_many(
    conn: &mut PgConnection,
    entity: Entity,
    env_id: &str,
    names: &[(&str, &str)],
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    let (ids, names): (Vec<&str>, Vec<&str>) = names.iter().copied().unzip();
    let changed: Vec<String> = sqlx::query_scalar(&format!(
        "UPDATE {table} AS t SET name = n.name, updated_at = now()
         FROM unnest($2::text[], $3::text[]) AS n (id, name)
         WHERE t.environment_id = $1 AND t.id = n.id AND t.name IS DISTINCT FROM n.name
         RETURNING t.id",
        table = entity.entity_table()
    ))
    .bind(env_id)
    .bind(&ids)
    .bind(&names)
    .fetch_all(conn)
    .await?;
    Ok(changed.into_iter().collect())
}

/// `value` → company id, for the companies with key `key` set to one of `values`.
pub async fn companies_by_key_values(
    conn: &mut PgConnection,
    env_id: &str,
    key: &str,
    values: &[&str],
) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT value, company_id FROM company_keys
         WHERE environment_id = $1 AND key = $2 AND value = ANY($3)",
    )
    .bind(env_id)
    .bind(key)
    .bind(values)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Trait values must read back as they were written: Postgres keeps any number exactly, but
/// one past ±1e300 does not come back as a 64-bit float, so it is refused here, by name.
pub fn validate_traits(traits: &serde_json::Map<String, serde_json::Value>) -> Result<(), Error> {
    fn too_big(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Number(n) => {
                n.as_f64().is_none_or(|f| !f.is_finite() || f.abs() > 1e300)
            }
            serde_json::Value::Array(a) => a.iter().any(too_big),
            serde_json::Value::Object(o) => o.values().any(too_big),
            _ => false,
        }
    }
    match traits.iter().find(|(_, v)| too_big(v)) {
        Some((name, _)) => Err(Error::invalid(format!(
            "traits.{name}: a number is out of range (at most ±1e300)"
        ))),
        None => Ok(()),
    }
}
