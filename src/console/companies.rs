//! `/console/companies`: search by name prefix, any key (value prefix) or id; filter by
//! plan; paginated.

use askama::Template;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;

use super::error::{ConsoleError, ConsoleResult};
use super::session::Console;
use super::{param, query_pairs, render, when, Layout};
use crate::api::AppState;
use crate::store;
use crate::store::console::CompanySearch;

pub const PAGE_SIZE: i64 = 50;

pub struct Hit {
    pub id: String,
    pub name: String,
    pub keys: Vec<String>,
    pub plans: Vec<String>,
    pub created: String,
}

#[derive(Template)]
#[template(path = "console/companies.html")]
struct Page {
    layout: Layout,
    q: String,
    plan: String,
    /// `(id, name)`, by name.
    plans: Vec<(String, String)>,
    hits: Vec<Hit>,
    prev_href: Option<String>,
    next_href: Option<String>,
}

fn href(q: &str, plan: &str, offset: i64) -> String {
    let pairs = [
        ("q", q.to_string()),
        ("plan", plan.to_string()),
        ("offset", offset.to_string()),
    ];
    format!(
        "/console/companies?{}",
        serde_urlencoded::to_string(pairs).unwrap_or_default()
    )
}

#[tracing::instrument(skip_all, fields(console_user, env = %console.env.environment.key))]
pub async fn page(
    State(state): State<AppState>,
    console: Console,
    uri: Uri,
) -> ConsoleResult<Response> {
    let pairs = query_pairs(&uri);
    let q = param(&pairs, "q").unwrap_or("").to_string();
    if q.chars().count() > 255 {
        return Err(ConsoleError::BadRequest("q: at most 255 characters".into()));
    }
    let plan = param(&pairs, "plan").unwrap_or("").to_string();
    let offset = match param(&pairs, "offset") {
        None => 0,
        Some(o) => o
            .parse::<i64>()
            .ok()
            .filter(|o| (0..=1_000_000).contains(o))
            .ok_or_else(|| {
                ConsoleError::BadRequest(format!("offset: {o:?} is not a number from 0 to 1000000"))
            })?,
    };
    let catalog = state.cache.catalog();
    if !plan.is_empty() && !catalog.plans.contains_key(&plan) {
        return Err(ConsoleError::BadRequest(format!(
            "plan: no plan has id {plan:?}"
        )));
    }
    let mut plans: Vec<(String, String)> = catalog
        .plans
        .values()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    plans.sort_by(|a, b| a.1.cmp(&b.1));
    let search = CompanySearch {
        q: q.clone(),
        plan_id: (!plan.is_empty()).then(|| plan.clone()),
        limit: PAGE_SIZE + 1,
        offset,
    };
    let mut conn = state.pool.acquire().await?;
    let mut rows = store::console::search_companies(&mut conn, console.env_id(), &search).await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let hits = rows
        .into_iter()
        .map(|r| Hit {
            id: r.id,
            name: r.name,
            keys: r.keys,
            plans: r.plans,
            created: when(Some(r.created_at)),
        })
        .collect();
    render(&Page {
        layout: Layout::new(&state, &console).with_notice(param(&pairs, "done")),
        prev_href: (offset > 0).then(|| href(&q, &plan, (offset - PAGE_SIZE).max(0))),
        next_href: more.then(|| href(&q, &plan, offset + PAGE_SIZE)),
        q,
        plan,
        plans,
        hits,
    })
}
