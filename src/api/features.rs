//! `/features`. Creating a feature creates its flag, with the same key, in the same
//! transaction; deleting it deletes the flag (and its rules, entitlements and overrides).

use std::collections::HashMap;

use axum::extract::State;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::companies::Preview;
use super::emit;
use super::envelope;
use super::extract::{Json, Path, Query};
use super::flags::{self, FlagView};
use super::openapi::{Deleted, Enveloped, Errors};
use super::resource::{self, Edit, Resource};
use crate::api::error::{AppError, AppResult};
use crate::api::AppState;
use crate::changes::Change;
use crate::engine::FeatureType;
use crate::store::catalog::{self as store, FeatureFields, FeatureFilter, FeatureRow, FlagFields};
use crate::store::Conn;

/// `FeatureResponseData`: a feature without its flags and plans.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureSummary {
    pub id: String,
    pub key: String,
    pub name: String,
    pub description: String,
    pub feature_type: String,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
    pub event_source: &'static str,
    pub icon: &'static str,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&FeatureRow> for FeatureSummary {
    fn from(r: &FeatureRow) -> Self {
        FeatureSummary {
            id: r.id.clone(),
            key: r.key.clone(),
            name: r.name.clone(),
            description: r.description.clone(),
            feature_type: r.feature_type.clone(),
            event_subtype: r.event_subtype.clone(),
            trait_id: r.trait_id.clone(),
            event_source: "track",
            icon: "",
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `FeatureDetailResponseData`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeatureView {
    #[serde(flatten)]
    pub feature: FeatureSummary,
    pub flags: Vec<FlagView>,
    /// Plans with an entitlement to this feature.
    pub plans: Vec<Preview>,
}

/// Full views of `ids`, in that order (ids not found are skipped).
pub async fn details(conn: &mut Conn, env_id: &str, ids: &[String]) -> AppResult<Vec<FeatureView>> {
    let rows = store::features(conn, ids).await?;
    let flag_rows = store::flags_of_features(conn, ids).await?;
    let flag_views = flags::views(conn, env_id, flag_rows).await?;
    let plans = store::plans_of_features(conn, ids).await?;
    let mut by_id: HashMap<String, FeatureView> = rows
        .iter()
        .map(|r| {
            let view = FeatureView {
                feature: FeatureSummary::from(r),
                flags: Vec::new(),
                plans: Vec::new(),
            };
            (r.id.clone(), view)
        })
        .collect();
    for flag in flag_views {
        let owner = flag.flag.feature_id.clone().unwrap_or_default();
        if let Some(v) = by_id.get_mut(&owner) {
            v.flags.push(flag);
        }
    }
    for (feature_id, id, name, description) in plans {
        if let Some(v) = by_id.get_mut(&feature_id) {
            v.plans.push(Preview {
                id,
                name,
                description,
            });
        }
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

resource::resource!(Features: FeatureView, "feature", "features", Some(&emit::FEATURE),
    |conn, _state, auth, id| {
        Ok(details(conn, auth.env_id(), &[id.to_string()]).await?.pop())
    }
);

const FEATURE_TYPES: &str = "boolean, event or trait";

fn parse_feature_type(field: &str, v: &str) -> AppResult<FeatureType> {
    FeatureType::parse(v).ok_or_else(|| {
        AppError::bad_request(format!("{field}: must be {FEATURE_TYPES}, got {v:?}"))
    })
}

#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct ListParams {
    /// Only these feature ids.
    ids: Option<Vec<String>>,
    /// `boolean`, `event` or `trait`.
    feature_type: Option<Vec<String>>,
    /// Matches the name or key.
    q: Option<String>,
}

#[utoipa::path(get, path = "/features", tag = "features",
    params(super::openapi::PageParams, ListParams),
    responses((status = 200, description = "Features, newest first", body = Enveloped<Vec<FeatureView>>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn list(State(state): State<AppState>, auth: Auth, query: Query) -> AppResult<Response> {
    let page = query.page()?;
    let feature_types = query
        .get_all("feature_type")
        .iter()
        .map(|t| parse_feature_type("query parameter feature_type", t))
        .collect::<AppResult<Vec<_>>>()?;
    let filter = FeatureFilter {
        ids: query.get_all("ids"),
        feature_types,
        q: query.non_empty("q"),
    };
    let mut conn = state.pool.acquire().await?;
    let ids = store::list_feature_ids(&mut conn, &filter, page.limit, page.offset).await?;
    let data = details(&mut conn, auth.env_id(), &ids).await?;
    Ok(envelope::ok(data, query.params(Some(page))))
}

#[utoipa::path(get, path = "/features/{id}", tag = "features",
    params(("id" = String, Path, description = "A feature id, `feat_…`")),
    responses((status = 200, description = "The feature with its flag and plans", body = Enveloped<FeatureView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, feature_id = %id))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    resource::show::<Features>(&state, &auth, &id).await
}

/// `CreateFeatureRequestBody` / `UpdateFeatureRequestBody`. `null` and absent mean the same.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"name": "Exports", "feature_type": "event", "event_subtype": "export", "flag": {"key": "exports", "default_value": false}}))]
pub struct FeatureBody {
    pub name: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Option<super::openapi::FeatureType>)]
    pub feature_type: Option<String>,
    pub event_subtype: Option<String>,
    pub trait_id: Option<String>,
    /// Not sent by the SDK: derived from `flag.key` or the name when absent.
    pub key: Option<String>,
    pub flag: Option<FlagInput>,
}

/// `CreateOrUpdateFlagRequestBody`, nested in a feature body.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct FlagInput {
    pub key: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub default_value: Option<bool>,
    pub flag_type: Option<String>,
}

fn given(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| !s.is_empty())
}

impl FeatureBody {
    /// Applies this body over `current` (for updates; `None` for creates) and checks that
    /// the result is consistent: an event feature names its event, a trait feature its trait,
    /// and the others name neither.
    fn resolve(&self, current: Option<&FeatureRow>) -> AppResult<FeatureFields> {
        let bad = |m: String| Err(AppError::BadRequest(m));
        let name = match (given(&self.name), current) {
            (Some(n), _) => n.to_string(),
            (None, Some(c)) => c.name.clone(),
            (None, None) => return bad("name: required".into()),
        };
        store::validate_name("name", &name)?;
        let description = self
            .description
            .clone()
            .or_else(|| current.map(|c| c.description.clone()))
            .unwrap_or_default();
        let feature_type = match (given(&self.feature_type), current) {
            (Some(t), _) => parse_feature_type("feature_type", t)?,
            (None, Some(c)) => parse_feature_type("feature_type", &c.feature_type)?,
            (None, None) => return bad(format!("feature_type: required; {FEATURE_TYPES}")),
        };
        // A field carries over from the current row only while the type still uses it.
        let event_subtype = match (given(&self.event_subtype), feature_type) {
            (Some(e), FeatureType::Event) => Some(e.to_string()),
            (None, FeatureType::Event) => match current.and_then(|c| c.event_subtype.clone()) {
                Some(e) => Some(e),
                None => {
                    return bad(
                        "event_subtype: required for an event feature: the name of the event \
                         that counts usage"
                            .into(),
                    )
                }
            },
            (Some(_), t) => {
                return bad(format!(
                    "event_subtype: only event features have one; this one is {}",
                    t.as_str()
                ))
            }
            (None, _) => None,
        };
        let trait_id =
            match (given(&self.trait_id), feature_type) {
                (Some(t), FeatureType::Trait) => Some(t.to_string()),
                (None, FeatureType::Trait) => match current.and_then(|c| c.trait_id.clone()) {
                    Some(t) => Some(t),
                    None => return bad(
                        "trait_id: required for a trait feature: the name of the company trait, \
                         e.g. \"seats_used\""
                            .into(),
                    ),
                },
                (Some(_), t) => {
                    return bad(format!(
                        "trait_id: only trait features have one; this one is {}",
                        t.as_str()
                    ))
                }
                (None, _) => None,
            };
        let flag = self.flag.as_ref();
        if let Some(t) = flag.and_then(|f| given(&f.flag_type)) {
            if t != "boolean" {
                return bad(format!("flag.flag_type: must be boolean, got {t:?}"));
            }
        }
        if let Some(n) = flag.and_then(|f| given(&f.name)) {
            store::validate_name("flag.name", n)?;
        }
        let (field, wanted_key) = match (given(&self.key), flag.and_then(|f| given(&f.key))) {
            (Some(k), Some(fk)) if k != fk => {
                return bad(format!(
                "flag.key: a feature's flag has the feature's key; {fk:?} differs from key {k:?}"
            ))
            }
            (Some(k), _) => ("key", Some(k)),
            (None, fk) => ("flag.key", fk),
        };
        let key = match (current, wanted_key) {
            (Some(c), Some(k)) if k != c.key => {
                return bad(format!(
                    "{field}: a feature's key cannot change (it is {:?})",
                    c.key
                ))
            }
            (Some(c), _) => c.key.clone(),
            (None, Some(k)) => {
                store::validate_key(field, k)?;
                k.to_string()
            }
            (None, None) => {
                let slug = store::slugify(&name);
                if slug.is_empty() {
                    return bad(format!(
                        "key: cannot derive a key from name {name:?}; send key ({})",
                        store::KEY_RULE
                    ));
                }
                slug
            }
        };
        Ok(FeatureFields {
            key,
            name,
            description,
            feature_type,
            event_subtype,
            trait_id,
        })
    }
}

#[utoipa::path(post, path = "/features", tag = "features", request_body = FeatureBody,
    responses((status = 200, description = "The feature and its flag, created", body = Enveloped<FeatureView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<FeatureBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Features>::begin(&state, &auth).await?;
    let written = create_in(&mut edit.tx, &state, &auth, &body, edit.watch).await?;
    let id = written.id.clone();
    edit.finish(written).await?;
    tracing::info!(feature_id = %id, "feature created");
    resource::show::<Features>(&state, &auth, &id).await
}

/// Creates a feature and its flag in `tx` with the API's validation; the caller commits.
pub async fn create_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    body: &FeatureBody,
    views: bool,
) -> AppResult<emit::Written> {
    let fields = body.resolve(None)?;
    let flag = body.flag.as_ref();
    let flag_fields = FlagFields {
        key: fields.key.clone(),
        name: flag
            .and_then(|f| given(&f.name))
            .unwrap_or(&fields.name)
            .to_string(),
        description: flag
            .and_then(|f| f.description.clone())
            .unwrap_or_else(|| fields.description.clone()),
        default_value: flag.and_then(|f| f.default_value).unwrap_or(false),
        feature_id: None,
    };
    let id = store::insert_feature(tx, &fields).await?;
    store::insert_flag(
        tx,
        &FlagFields {
            feature_id: Some(id.clone()),
            ..flag_fields
        },
    )
    .await?;
    let after = emit::view(views, Features::find_in(tx, state, auth, &id)).await?;
    Ok(emit::Written {
        id,
        company_id: None,
        before: None,
        after,
        changes: vec![Change::Catalog],
    })
}

#[utoipa::path(put, path = "/features/{id}", tag = "features", request_body = FeatureBody,
    params(("id" = String, Path, description = "A feature id, `feat_…`")),
    responses((status = 200, description = "The feature, updated", body = Enveloped<FeatureView>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, feature_id = %id))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<FeatureBody>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Features>::begin(&state, &auth).await?;
    let written = update_in(&mut edit.tx, &state, &auth, &id, &body, edit.watch).await?;
    edit.finish(written).await?;
    tracing::info!("feature updated");
    resource::show::<Features>(&state, &auth, &id).await
}

/// Updates feature `id` (and its flag) in `tx` with the API's validation; the caller commits.
pub async fn update_in(
    tx: &mut Conn,
    state: &AppState,
    auth: &Auth,
    id: &str,
    body: &FeatureBody,
    views: bool,
) -> AppResult<emit::Written> {
    let before = emit::view(views, Features::find_in(tx, state, auth, id)).await?;
    let current = store::feature_for_update(tx, id)
        .await?
        .ok_or_else(|| AppError::not_found("feature", id))?;
    let fields = body.resolve(Some(&current))?;
    store::update_feature(tx, id, &fields).await?;
    if let Some(flag) = &body.flag {
        store::update_flag_of_feature(
            tx,
            id,
            given(&flag.name),
            flag.description.as_deref(),
            flag.default_value,
        )
        .await?;
    }
    let after = emit::view(views, Features::find_in(tx, state, auth, id)).await?;
    Ok(emit::Written {
        id: id.to_string(),
        company_id: None,
        before,
        after,
        changes: vec![Change::Catalog],
    })
}

#[utoipa::path(delete, path = "/features/{id}", tag = "features",
    params(("id" = String, Path, description = "A feature id, `feat_…`")),
    responses((status = 200, description = "Deleted, with its flag", body = Enveloped<Deleted>), Errors))]
#[tracing::instrument(skip_all, fields(env = %auth.env.environment.key, feature_id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> AppResult<Response> {
    auth.require_write()?;
    let mut edit = Edit::<Features>::of(&state, &auth, &id).await?;
    let companies = store::delete_feature(&mut edit.tx, &id)
        .await?
        .ok_or_else(|| AppError::not_found("feature", &id))?;
    // Overrides on the feature went with it; those companies' snapshots change too.
    let mut changes = vec![Change::Catalog];
    changes.extend(
        companies
            .into_iter()
            .map(|(environment_id, id)| Change::Company { environment_id, id }),
    );
    let overrides_removed_for = changes.len() - 1;
    edit.commit(None, changes).await?;
    tracing::info!(overrides_removed_for, "feature deleted");
    Ok(envelope::deleted())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> FeatureBody {
        serde_json::from_value(v).unwrap()
    }

    fn err(v: serde_json::Value, current: Option<&FeatureRow>) -> String {
        body(v).resolve(current).unwrap_err().to_string()
    }

    fn row(feature_type: &str, event: Option<&str>, tr: Option<&str>) -> FeatureRow {
        FeatureRow {
            id: "feat_1".into(),
            key: "api-calls".into(),
            name: "API calls".into(),
            description: "d".into(),
            feature_type: feature_type.into(),
            event_subtype: event.map(Into::into),
            trait_id: tr.map(Into::into),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn keys_come_from_key_flag_key_or_name() {
        let f = body(serde_json::json!({"name": "API Calls", "feature_type": "boolean"}))
            .resolve(None)
            .unwrap();
        assert_eq!(f.key, "api-calls");
        assert_eq!(f.description, "");
        let f = body(serde_json::json!({"name": "x", "feature_type": "boolean",
            "flag": {"key": "from-flag", "name": "n"}}))
        .resolve(None)
        .unwrap();
        assert_eq!(f.key, "from-flag");
        assert!(err(
            serde_json::json!({"name": "x", "feature_type": "boolean", "key": "a", "flag": {"key": "b"}}),
            None
        )
        .starts_with("flag.key:"));
        assert!(err(
            serde_json::json!({"name": "x", "feature_type": "boolean", "key": "a b"}),
            None
        )
        .starts_with("key:"));
        assert!(err(
            serde_json::json!({"name": "!!!", "feature_type": "boolean"}),
            None
        )
        .starts_with("key:"));
    }

    #[test]
    fn types_need_their_fields_and_only_theirs() {
        let cases = [
            (serde_json::json!({"name": "x"}), "feature_type:"),
            (
                serde_json::json!({"name": "x", "feature_type": "license"}),
                "feature_type:",
            ),
            (
                serde_json::json!({"name": "x", "feature_type": "event"}),
                "event_subtype:",
            ),
            (
                serde_json::json!({"name": "x", "feature_type": "event", "event_subtype": ""}),
                "event_subtype:",
            ),
            (
                serde_json::json!({"name": "x", "feature_type": "trait"}),
                "trait_id:",
            ),
            (
                serde_json::json!({"name": "x", "feature_type": "boolean", "trait_id": "t"}),
                "trait_id:",
            ),
            (serde_json::json!({"feature_type": "boolean"}), "name:"),
            (
                serde_json::json!({"name": "x", "feature_type": "boolean", "flag": {"flag_type": "string"}}),
                "flag.flag_type:",
            ),
        ];
        for (v, want) in cases {
            let e = err(v.clone(), None);
            assert!(e.starts_with(want), "{v} → {e}");
        }
        let f = body(serde_json::json!({"name": "x", "feature_type": "event",
            "event_subtype": "api-call", "trait_id": null}))
        .resolve(None)
        .unwrap();
        assert_eq!(f.event_subtype.as_deref(), Some("api-call"));
        assert_eq!(f.trait_id, None);
    }

    #[test]
    fn updates_merge_over_the_current_row() {
        let event = row("event", Some("api-call"), None);
        let f = body(serde_json::json!({"name": "Renamed"}))
            .resolve(Some(&event))
            .unwrap();
        assert_eq!(f.name, "Renamed");
        assert_eq!(f.event_subtype.as_deref(), Some("api-call"));
        assert_eq!(f.description, "d");
        // Switching type drops the old type's field and needs the new one's.
        let f = body(serde_json::json!({"feature_type": "boolean"}))
            .resolve(Some(&event))
            .unwrap();
        assert_eq!(f.event_subtype, None);
        assert!(
            err(serde_json::json!({"feature_type": "trait"}), Some(&event))
                .starts_with("trait_id:")
        );
        let f = body(serde_json::json!({"feature_type": "trait", "trait_id": "seats"}))
            .resolve(Some(&event))
            .unwrap();
        assert_eq!(
            (f.trait_id.as_deref(), f.event_subtype),
            (Some("seats"), None)
        );
        // The key stays; sending the same one is fine, a different one is not.
        assert!(body(serde_json::json!({"key": "api-calls"}))
            .resolve(Some(&event))
            .is_ok());
        assert!(err(serde_json::json!({"key": "other"}), Some(&event)).starts_with("key:"));
        assert!(
            err(serde_json::json!({"flag": {"key": "other"}}), Some(&event))
                .starts_with("flag.key:")
        );
    }
}
