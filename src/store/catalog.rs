//! Features, flags and flag rules: the SQL behind `/features` and `/flags`. Catalog objects
//! are shared by every environment. Every function takes the caller's connection or
//! transaction; the caller owns the boundary (and the cache invalidation).

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::PgConnection;

use super::error::{sqlstate, violated_constraint, Error};
use super::rows;
use crate::engine::{Condition, FeatureType, RuleKind};
use crate::ids;

/// The rule the schema's `key` CHECK enforces, in words.
pub const KEY_RULE: &str =
    "1 to 128 characters of letters, digits, '_', '.', ':' or '-', starting with a letter or digit";

/// A feature, flag or plan key as the schema accepts it.
pub fn validate_key(field: &str, key: &str) -> Result<(), Error> {
    let mut chars = key.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && key.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field}: {key:?} is not a valid key; use {KEY_RULE}"
        )))
    }
}

/// A display name: 1 to 255 characters.
pub fn validate_name(field: &str, name: &str) -> Result<(), Error> {
    let n = name.chars().count();
    if name.trim().is_empty() || n > 255 {
        return Err(Error::invalid(format!(
            "{field}: must be 1 to 255 characters"
        )));
    }
    Ok(())
}

/// A key derived from a name: lowercase ASCII letters and digits, every other run of
/// characters one '-', no leading or trailing '-'; at most 128 characters. May be empty.
pub fn slugify(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(128);
    out.trim_end_matches('-').to_string()
}

/// A `LIKE` pattern matching `q` anywhere, with its wildcards taken literally.
pub fn contains_pattern(q: &str) -> String {
    let escaped = q
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FeatureRow {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub feature_type: String,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FlagRow {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub flag_type: String,
    pub default_value: bool,
    pub feature_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RuleRow {
    pub id: String,
    pub flag_id: String,
    pub name: String,
    pub rule_type: String,
    pub priority: i32,
    pub value: bool,
    pub conditions: Json<Vec<Condition>>,
    pub condition_groups: Json<Vec<Vec<Condition>>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A feature's columns joined into another table's row (`JOIN features f`), aliased `f_…`
/// by [`JOINED_FEATURE_COLUMNS`]; its id is the row's `feature_id`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JoinedFeature {
    #[sqlx(rename = "f_key")]
    pub key: String,
    #[sqlx(rename = "f_name")]
    pub name: String,
    #[sqlx(rename = "f_description")]
    pub description: String,
    #[sqlx(rename = "f_feature_type")]
    pub feature_type: String,
    #[sqlx(rename = "f_event_subtype")]
    pub event_subtype: Option<String>,
    #[sqlx(rename = "f_trait_id")]
    pub trait_id: Option<String>,
    #[sqlx(rename = "f_created_at")]
    pub created_at: DateTime<Utc>,
    #[sqlx(rename = "f_updated_at")]
    pub updated_at: DateTime<Utc>,
}

/// The select list of a [`JoinedFeature`], for a query joining `features f`.
pub const JOINED_FEATURE_COLUMNS: &str = "f.key AS f_key, f.name AS f_name, \
    f.description AS f_description, f.feature_type AS f_feature_type, \
    f.event_subtype AS f_event_subtype, f.trait_id AS f_trait_id, \
    f.created_at AS f_created_at, f.updated_at AS f_updated_at";

const FEATURE_COLUMNS: &str =
    "id, key, name, description, feature_type, event_subtype, trait_id, created_at, updated_at";
const FLAG_COLUMNS: &str =
    "id, key, name, description, flag_type, default_value, feature_id, created_at, updated_at";

/// The features with these ids, in no particular order.
pub async fn features(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<FeatureRow>, sqlx::Error> {
    rows::by_ids(conn, "features", FEATURE_COLUMNS, ids).await
}

/// Which features to list. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct FeatureFilter {
    pub ids: Vec<String>,
    pub feature_types: Vec<FeatureType>,
    /// Matches the name or key.
    pub q: Option<String>,
}

/// The ids of the features `filter` selects, newest first.
pub async fn list_feature_ids(
    conn: &mut PgConnection,
    filter: &FeatureFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let types: Vec<&str> = filter.feature_types.iter().map(|t| t.as_str()).collect();
    sqlx::query_scalar(
        "SELECT f.id FROM features f
         WHERE (cardinality($1::text[]) = 0 OR f.id = ANY($1))
           AND (cardinality($2::text[]) = 0 OR f.feature_type = ANY($2))
           AND ($3::text IS NULL OR f.name ILIKE $3 OR f.key ILIKE $3)
         ORDER BY f.created_at DESC, f.id DESC LIMIT $4 OFFSET $5",
    )
    .bind(&filter.ids)
    .bind(&types)
    .bind(filter.q.as_deref().map(contains_pattern))
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// One feature, locked for the rest of the transaction.
pub async fn feature_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<FeatureRow>, sqlx::Error> {
    rows::for_update(conn, "features", FEATURE_COLUMNS, id).await
}

/// The flags with these ids, in no particular order.
pub async fn flags(conn: &mut PgConnection, ids: &[String]) -> Result<Vec<FlagRow>, sqlx::Error> {
    rows::by_ids(conn, "flags", FLAG_COLUMNS, ids).await
}

/// Which flags to list. Empty lists do not filter.
#[derive(Debug, Default)]
pub struct FlagFilter {
    pub ids: Vec<String>,
    /// Only the flag of this feature.
    pub feature_id: Option<String>,
    /// Matches the name or key.
    pub q: Option<String>,
}

/// The ids of the flags `filter` selects, newest first.
pub async fn list_flag_ids(
    conn: &mut PgConnection,
    filter: &FlagFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT f.id FROM flags f
         WHERE (cardinality($1::text[]) = 0 OR f.id = ANY($1))
           AND ($2::text IS NULL OR f.feature_id = $2)
           AND ($3::text IS NULL OR f.name ILIKE $3 OR f.key ILIKE $3)
         ORDER BY f.created_at DESC, f.id DESC LIMIT $4 OFFSET $5",
    )
    .bind(&filter.ids)
    .bind(&filter.feature_id)
    .bind(filter.q.as_deref().map(contains_pattern))
    .bind(limit)
    .bind(offset)
    .fetch_all(conn)
    .await
}

/// One flag, locked for the rest of the transaction.
pub async fn flag_for_update(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<FlagRow>, sqlx::Error> {
    rows::for_update(conn, "flags", FLAG_COLUMNS, id).await
}

/// The flags belonging to these features.
pub async fn flags_of_features(
    conn: &mut PgConnection,
    feature_ids: &[String],
) -> Result<Vec<FlagRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {FLAG_COLUMNS} FROM flags WHERE feature_id = ANY($1) ORDER BY created_at, id"
    ))
    .bind(feature_ids)
    .fetch_all(conn)
    .await
}

/// The rules of these flags, in evaluation order per flag.
pub async fn rules_of_flags(
    conn: &mut PgConnection,
    flag_ids: &[String],
) -> Result<Vec<RuleRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, flag_id, name, rule_type, priority, value, conditions, condition_groups,
                created_at, updated_at
         FROM flag_rules WHERE flag_id = ANY($1) ORDER BY flag_id, priority, created_at, id",
    )
    .bind(flag_ids)
    .fetch_all(conn)
    .await
}

/// A plan that grants a feature: `(feature_id, plan_id, plan name, plan description)`.
pub type FeaturePlan = (String, String, String, String);

/// The plans with an entitlement to any of these features, oldest plan first.
pub async fn plans_of_features(
    conn: &mut PgConnection,
    feature_ids: &[String],
) -> Result<Vec<FeaturePlan>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.feature_id, p.id, p.name, p.description
         FROM plan_entitlements e JOIN plans p ON p.id = e.plan_id
         WHERE e.feature_id = ANY($1) ORDER BY p.created_at, p.id",
    )
    .bind(feature_ids)
    .fetch_all(conn)
    .await
}

/// Of `plan_ids`, the ones no plan has.
pub async fn missing_plans(
    conn: &mut PgConnection,
    plan_ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM unnest($1::text[]) AS wanted(id)
         WHERE NOT EXISTS (SELECT 1 FROM plans p WHERE p.id = wanted.id)",
    )
    .bind(plan_ids)
    .fetch_all(conn)
    .await
}

/// A feature's columns as written.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureFields {
    pub key: String,
    pub name: String,
    pub description: String,
    pub feature_type: FeatureType,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
}

/// A flag's columns as written.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagFields {
    pub key: String,
    pub name: String,
    pub description: String,
    pub default_value: bool,
    pub feature_id: Option<String>,
}

/// Turns the violations a feature or flag write can hit into errors naming the field.
fn catalog_error(err: sqlx::Error, key: &str, feature_id: Option<&str>) -> Error {
    let feature = feature_id.unwrap_or("");
    if let Some(c) = violated_constraint(&err, sqlstate::UNIQUE_VIOLATION) {
        match c {
            "features_key_key" => {
                return Error::Conflict(format!("key: a feature with key {key:?} already exists"))
            }
            "flags_key_key" => {
                return Error::Conflict(format!("key: a flag with key {key:?} already exists"))
            }
            "flags_feature_id_key" => {
                return Error::Conflict(format!(
                    "feature_id: feature {feature:?} already has a flag"
                ))
            }
            _ => {}
        }
    }
    if violated_constraint(&err, sqlstate::FOREIGN_KEY_VIOLATION) == Some("flags_feature_id_fkey") {
        return Error::NotFound(format!("feature_id: feature {feature:?} not found"));
    }
    err.into()
}

pub async fn insert_feature(conn: &mut PgConnection, f: &FeatureFields) -> Result<String, Error> {
    let id = ids::new_id(ids::prefix::FEATURE);
    sqlx::query(
        "INSERT INTO features (id, key, name, description, feature_type, event_subtype, trait_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&f.key)
    .bind(&f.name)
    .bind(&f.description)
    .bind(f.feature_type.as_str())
    .bind(&f.event_subtype)
    .bind(&f.trait_id)
    .execute(conn)
    .await
    .map_err(|e| catalog_error(e, &f.key, None))?;
    Ok(id)
}

/// Rewrites a feature's columns (its key never changes).
pub async fn update_feature(
    conn: &mut PgConnection,
    id: &str,
    f: &FeatureFields,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE features SET name = $2, description = $3, feature_type = $4, event_subtype = $5,
             trait_id = $6, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&f.name)
    .bind(&f.description)
    .bind(f.feature_type.as_str())
    .bind(&f.event_subtype)
    .bind(&f.trait_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a feature; its flag, rules, entitlements and overrides go with it.
/// Returns the `(environment_id, company_id)` of every company that had an override on it,
/// or `None` when there was no such feature.
pub async fn delete_feature(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<Vec<(String, String)>>, sqlx::Error> {
    let companies: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT environment_id, company_id FROM company_overrides WHERE feature_id = $1",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let n = sqlx::query("DELETE FROM features WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok((n > 0).then_some(companies))
}

pub async fn insert_flag(conn: &mut PgConnection, f: &FlagFields) -> Result<String, Error> {
    let id = ids::new_id(ids::prefix::FLAG);
    sqlx::query(
        "INSERT INTO flags (id, key, name, description, flag_type, default_value, feature_id)
         VALUES ($1, $2, $3, $4, 'boolean', $5, $6)",
    )
    .bind(&id)
    .bind(&f.key)
    .bind(&f.name)
    .bind(&f.description)
    .bind(f.default_value)
    .bind(&f.feature_id)
    .execute(conn)
    .await
    .map_err(|e| catalog_error(e, &f.key, f.feature_id.as_deref()))?;
    Ok(id)
}

pub async fn update_flag(conn: &mut PgConnection, id: &str, f: &FlagFields) -> Result<(), Error> {
    sqlx::query(
        "UPDATE flags SET key = $2, name = $3, description = $4, default_value = $5,
             feature_id = $6, updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .bind(&f.key)
    .bind(&f.name)
    .bind(&f.description)
    .bind(f.default_value)
    .bind(&f.feature_id)
    .execute(conn)
    .await
    .map_err(|e| catalog_error(e, &f.key, f.feature_id.as_deref()))?;
    Ok(())
}

/// Changes the given columns of a feature's flag (`None` keeps a column as it is).
pub async fn update_flag_of_feature(
    conn: &mut PgConnection,
    feature_id: &str,
    name: Option<&str>,
    description: Option<&str>,
    default_value: Option<bool>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE flags SET name = COALESCE($2, name), description = COALESCE($3, description),
             default_value = COALESCE($4, default_value), updated_at = now()
         WHERE feature_id = $1",
    )
    .bind(feature_id)
    .bind(name)
    .bind(description)
    .bind(default_value)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a flag and its rules; false when there was no such flag.
pub async fn delete_flag(conn: &mut PgConnection, id: &str) -> Result<bool, sqlx::Error> {
    let n = sqlx::query("DELETE FROM flags WHERE id = $1")
        .bind(id)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// A validated rule to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRule {
    pub name: String,
    pub kind: RuleKind,
    pub priority: i32,
    pub value: bool,
    pub conditions: Vec<Condition>,
    pub condition_groups: Vec<Vec<Condition>>,
}

/// Replaces all of a flag's rules. Call with the flag locked (`flag_for_update`), inside
/// one transaction, so concurrent replacements serialise and readers never see a mix.
pub async fn replace_rules(
    conn: &mut PgConnection,
    flag_id: &str,
    rules: &[NewRule],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM flag_rules WHERE flag_id = $1")
        .bind(flag_id)
        .execute(&mut *conn)
        .await?;
    for r in rules {
        sqlx::query(
            "INSERT INTO flag_rules (id, flag_id, name, rule_type, priority, value, conditions,
                 condition_groups)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(ids::new_id(ids::prefix::RULE))
        .bind(flag_id)
        .bind(&r.name)
        .bind(r.kind.as_str())
        .bind(r.priority)
        .bind(r.value)
        .bind(Json(&r.conditions))
        .bind(Json(&r.condition_groups))
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query("UPDATE flags SET updated_at = now() WHERE id = $1")
        .bind(flag_id)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_valid_keys() {
        assert_eq!(slugify("API Calls"), "api-calls");
        assert_eq!(slugify("  Seats (used) -- v2!  "), "seats-used-v2");
        assert_eq!(slugify("Ünïcode ✓ ok"), "n-code-ok");
        assert_eq!(slugify("!!!"), "");
        let long = slugify(&"ab ".repeat(100));
        assert!(long.len() <= 128 && !long.ends_with('-'), "{long}");
        for name in ["API Calls", "x", "Seats (used)", &"ab ".repeat(100)] {
            validate_key("key", &slugify(name)).unwrap();
        }
    }

    #[test]
    fn keys_follow_the_schema() {
        for ok in ["a", "api-calls", "A1_b.c:d-e", &"x".repeat(128)] {
            assert!(validate_key("key", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "a b", "a/b", "é", &"x".repeat(129)] {
            let err = validate_key("key", bad).unwrap_err().to_string();
            assert!(err.starts_with("key:"), "{bad}: {err}");
        }
    }

    #[test]
    fn like_patterns_are_literal() {
        assert_eq!(contains_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
    }
}
