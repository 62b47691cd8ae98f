//! `/console/audit`: every write made in the console, newest first, filterable by company
//! and by person.

use askama::Template;
use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;

use super::error::{ConsoleError, ConsoleResult};
use super::session::Console;
use super::{param, query_pairs, render, when, Layout};
use crate::api::AppState;
use crate::store;

const PAGE_SIZE: i64 = 100;

pub struct Entry {
    pub at: String,
    pub actor: String,
    pub env: String,
    pub action: String,
    pub target: String,
    pub company: String,
    pub before: String,
    pub after: String,
}

#[derive(Template)]
#[template(path = "console/audit.html")]
struct Page {
    layout: Layout,
    company: String,
    person: String,
    entries: Vec<Entry>,
    prev_href: Option<String>,
    next_href: Option<String>,
}

fn pretty(v: Option<sqlx::types::Json<serde_json::Value>>) -> String {
    v.map_or_else(
        || "—".into(),
        |j| serde_json::to_string_pretty(&j.0).unwrap_or_default(),
    )
}

#[tracing::instrument(skip_all, fields(console_user))]
pub async fn page(
    State(state): State<AppState>,
    console: Console,
    uri: Uri,
) -> ConsoleResult<Response> {
    let pairs = query_pairs(&uri);
    let company = param(&pairs, "company").unwrap_or("").to_string();
    let person = param(&pairs, "person").unwrap_or("").to_lowercase();
    let offset = match param(&pairs, "offset") {
        None => 0,
        Some(o) => o.parse::<i64>().ok().filter(|o| *o >= 0).ok_or_else(|| {
            ConsoleError::BadRequest(format!("offset: {o:?} is not a number of 0 or more"))
        })?,
    };
    let mut conn = state.pool.acquire().await?;
    let mut rows = store::console::audit_entries(
        &mut conn,
        Some(company.as_str()).filter(|s| !s.is_empty()),
        Some(person.as_str()).filter(|s| !s.is_empty()),
        PAGE_SIZE + 1,
        offset,
    )
    .await?;
    let more = rows.len() as i64 > PAGE_SIZE;
    rows.truncate(PAGE_SIZE as usize);
    let href = |offset: i64| {
        format!(
            "/console/audit?{}",
            serde_urlencoded::to_string([
                ("company", company.as_str()),
                ("person", person.as_str()),
                ("offset", &offset.to_string()),
            ])
            .unwrap_or_default()
        )
    };
    render(&Page {
        layout: Layout::new(&state, &console),
        prev_href: (offset > 0).then(|| href((offset - PAGE_SIZE).max(0))),
        next_href: more.then(|| href(offset + PAGE_SIZE)),
        entries: rows
            .into_iter()
            .map(|r| Entry {
                at: when(Some(r.at)),
                actor: r.actor_email,
                env: r.environment_key.unwrap_or_default(),
                action: r.action,
                target: r.target,
                company: r.company_id.unwrap_or_default(),
                before: pretty(r.before),
                after: pretty(r.after),
            })
            .collect(),
        company,
        person,
    })
}
